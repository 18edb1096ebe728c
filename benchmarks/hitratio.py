"""Hit ratio per workload profile: the real engine against the trace's optimum and the targets.

For each profile one seeded trace is (a) analysed offline — TTL optimum (compulsory misses
only), Belady OPT and LRU at the worker's LRU capacity, and the batched LRU that mirrors how
``Triage`` looks a micro-batch up — and (b) published at a fixed rate to a fresh worker on the
real stack, whose decisions' ``cache_tier`` counts give the measured hit ratio
((lru + redis) / decided). A second, trace-only pass sweeps the LRU capacity for the plot.

    python -m benchmarks.hitratio --size 20000 --rate 2000
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import BenchResult, Progress, Stopwatch, bench_settings, create_topics, drop_topics, require_kafka
from benchmarks.services import proposition_service, reset_service_stats, service_stats, with_private_service_and_data, worker, workspace
from benchmarks.streamio import DecisionCollector, publish_paced
from benchmarks.trace import Trace, TraceSpec, belady, bounds, lru, make_trace, ttl_optimum
from stream_engine.keys import message_key
from stream_engine.settings import Settings

PROFILES = ("ci_failures", "typical", "scam", "infra")
# (low, high) of the hit-ratio targets we were given; high None = "or more".
TARGETS: dict[str, tuple[float, float | None]] = {
    "ci_failures": (0.75, None),
    "typical": (0.60, 0.70),
    "scam": (0.40, 0.50),
}
CAPACITY_SWEEP = (10, 30, 100, 300, 1000, 3000, 10_000)


async def measure_engine(settings: Settings, work: Path, trace: Trace, service_median_ms: float) -> dict[str, Any]:
    s = with_private_service_and_data(bench_settings(settings, f"hit-{trace.spec.profile.replace('_', '')}"),
                                      work / f"data-{trace.spec.profile}")
    records = [(a["id"], message_key(a, s.key_fields), orjson.dumps(a)) for a in trace.alerts]
    ids = {a["id"] for a in trace.alerts}
    await create_topics(s)
    try:
        with proposition_service(s, work, service_median_ms, service_median_ms * 2.5 or None), \
                worker(s, work, f"worker-{trace.spec.profile}"):
            reset_service_stats(s)
            collector = DecisionCollector(s.kafka_bootstrap, s.topic_decisions)
            await collector.start()
            try:
                with Progress(f"{trace.spec.profile} publish", len(records)) as bar:
                    await publish_paced(s.kafka_bootstrap, s.topic_alerts, records, trace.times, bar.update)
                complete = await collector.wait_for(ids, timeout_s=120)
            finally:
                collected = await collector.stop()
            stats = service_stats(s)
    finally:
        await drop_topics(s)
    tiers: dict[str, int] = {}
    for alert_id in ids:
        got = collected.decisions.get(alert_id)
        if got is not None:
            tiers[got[2]] = tiers.get(got[2], 0) + 1
    decided = sum(tiers.values())
    hits = tiers.get("lru", 0) + tiers.get("redis", 0)
    return {
        "complete": complete,
        "decided": decided,
        "tiers": tiers,
        "hit_ratio": round(hits / decided, 4) if decided else None,
        "service_keys_requested": stats.get("unique_keys"),
        "service_requests": stats.get("requests"),
        # The service saw each distinct key of a batch once: this is the fraction of alerts that
        # did NOT cost a service lookup, whatever tier they are labelled with.
        "service_avoided_ratio": round(1 - stats.get("unique_keys", 0) / decided, 4) if decided else None,
    }


def expected_batch(settings: Settings, rate: float) -> int:
    """Alerts per micro-batch when publishing at ``rate``: take() closes a batch after
    ``batch_within_s`` or at ``batch_max``, whichever comes first."""
    return max(1, min(settings.batch_max, round(rate * settings.batch_within_s)))


def capacity_sweep(trace: Trace, ttl_s: float) -> dict[str, Any]:
    return {
        "capacities": list(CAPACITY_SWEEP),
        "lru": [round(lru(trace.keys, trace.times, trace.partitions, c, ttl_s), 4) for c in CAPACITY_SWEEP],
        "belady": [round(belady(trace.keys, trace.partitions, c), 4) for c in CAPACITY_SWEEP],
        "ttl_optimum": round(ttl_optimum(trace.keys, trace.times, ttl_s), 4),
    }


def verdict(profile: str, value: float | None) -> str:
    if value is None or profile not in TARGETS:
        return "n/a"
    low, high = TARGETS[profile]
    if value < low:
        return "below target"
    # Above the range is not a failure: the range describes the seed's workloads, ours repeat more.
    return "meets target" if high is None or value <= high else "meets target (above the range)"


async def run(
    settings: Settings | None = None,
    size: int = 20_000,
    rate: float = 2000.0,
    profiles: tuple[str, ...] = PROFILES,
    sweep_size: int = 100_000,
    engine: bool = True,
    service_median_ms: float = 20.0,
    work_dir: Path | None = None,
) -> BenchResult:
    watch = Stopwatch()
    settings = settings or Settings()
    rows: list[dict[str, Any]] = []
    with workspace(work_dir) as work:
        for profile in profiles:
            trace = make_trace(TraceSpec(profile, size=size, rate=rate, seed=5), settings)
            row: dict[str, Any] = {
                "profile": profile,
                "size": size,
                "rate": rate,
                "distinct_keys": trace.distinct_keys,
                "bounds": bounds(trace, settings.lru_size, settings.lru_ttl_s, batch=expected_batch(settings, rate)),
                "expected_batch": expected_batch(settings, rate),
                "target": TARGETS.get(profile),
            }
            if engine:
                row["engine"] = await measure_engine(settings, work, trace, service_median_ms)
                row["verdict"] = verdict(profile, row["engine"]["hit_ratio"])
            sweep_trace = make_trace(TraceSpec(profile, size=sweep_size, rate=rate, seed=6), settings)
            row["sweep"] = capacity_sweep(sweep_trace, settings.lru_ttl_s) | {"size": sweep_size}
            # What the TTL does at slow, realistic production rates (trace-only).
            row["ttl_optimum_by_rate"] = {
                str(r): round(ttl_optimum(sweep_trace.keys, [i / r for i in range(sweep_size)], settings.lru_ttl_s), 4)
                for r in (1, 10, 100, 1000)
            }
            rows.append(row)
    result = BenchResult(
        name="hitratio",
        command="",
        params={"size": size, "rate": rate, "profiles": list(profiles), "sweep_size": sweep_size,
                "lru_size_per_partition": settings.lru_size, "lru_ttl_s": settings.lru_ttl_s,
                "batch_max": settings.batch_max, "engine_measured": engine, "service_median_ms": service_median_ms},
        metrics={r["profile"]: {"engine": r.get("engine", {}).get("hit_ratio"), "best_achievable": r["bounds"]["best_achievable"]}
                 for r in rows},
        runs=rows,
        notes=[
            "Hit = decision cache_tier lru or redis. Within one micro-batch, copies of a missing key share one "
            "service call but all count as tier 'service' (see bounds.lru_batched and service_avoided_ratio).",
            "ttl_optimum_by_rate: the same trace spread over time at that many alerts/s, TTL = lru_ttl_s.",
        ],
    )
    return watch.finish(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--profiles", nargs="+", default=list(PROFILES))
    parser.add_argument("--sweep-size", type=int, default=100_000)
    parser.add_argument("--trace-only", action="store_true", help="bounds only, no worker")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    settings = Settings()
    if not args.trace_only:
        require_kafka(settings)
    result = asyncio.run(run(settings, args.size, args.rate, tuple(args.profiles), args.sweep_size, not args.trace_only))
    path = result.write(args.results_dir)
    for row in result.runs:
        print(f"{row['profile']:12s} engine={row.get('engine', {}).get('hit_ratio')} bounds={row['bounds']} {row.get('verdict', '')}")
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
