"""Hit ratio where the TTLs and the LRU's capacity bind: the real engine beside the optimum.

For each alert type (profiles ``ci_failures``, ``scam``, ``infra``) and each arrival rate from
1/s to 1000/s, one seeded trace covers ``horizon_s`` of modelled time (at most ``max_alerts``
alerts). Production runs for hours and the TTLs are minutes (LRU 300 s, Redis 3600 s), so a
run that lasted as long as its trace could not be benchmarked. Time is therefore **compressed**
by a factor f: the trace is published f times faster, and the worker runs with
``lru_ttl_s / f`` and ``redis_ttl_s / f`` and a proposition service f times faster. Hit ratios
depend on how many arrivals fall within a TTL, which f leaves unchanged. f is chosen so a cell
lasts about ``target_run_s`` (publishing at most ``max_played_rate`` alerts/s) and divides
``redis_ttl_s`` exactly (Redis takes whole seconds). What f does not compress: the engine's own
delays (batching window, Kafka round trips), which at f = 720 stretch a 10 ms delay to 7 s of
modelled time — small against a 300 s TTL.

Per cell, side by side (``benchmarks.trace``):

* **optimum** — the TTL-aware bound: both tiers unbounded, one lookup at a time. No cache with
  these TTLs hits more often (capacity and batching only lower it);
* **Belady** — Belady's OPT at the LRU's capacity: the most the LRU tier can answer;
* **model** — both tiers at the LRU's capacity and the run's batch size: the engine's expected
  lru / redis / service split;
* **engine** — the decisions' ``cache_tier`` counts from a fresh worker on the real stack, and
  the share of alerts that cost no service lookup (the service's own count of distinct keys).

The engine runs at its default settings except the two compressed TTLs. The workloads have at
most ~18k keys, so the default LRU (10,000 entries per partition) never fills; a **capacity
variant** at the top rate therefore shrinks the LRU to a share of the keys each partition sees
(``--capacity-share``, default a quarter), so capacity binds: the LRU tier falls towards its
Belady bound and Redis answers the rest.

    python -m benchmarks.hitratio --rates 1 10 100 1000 --max-alerts 40000
"""

from __future__ import annotations

import argparse
import asyncio
import math
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import BenchResult, Progress, Stopwatch, bench_settings, create_topics, drop_topics, require_kafka
from benchmarks.services import (
    SERVICE,
    ServiceModel,
    proposition_service,
    reset_service_stats,
    service_stats,
    with_private_service_and_data,
    worker,
    workspace,
)
from benchmarks.streamio import DecisionCollector, publish_paced
from benchmarks.trace import CAPACITY_SWEEP, PARTITIONS, Trace, TraceSpec, belady, lru, make_trace, optimum, tiers
from stream_engine.keys import message_key
from stream_engine.settings import Settings

PROFILES = ("ci_failures", "scam", "infra")  # one alert type each
RATES = (1.0, 10.0, 100.0, 1000.0)


def compression(rate: float, alerts: int, target_run_s: float, max_played_rate: float, redis_ttl_s: int) -> int:
    """The time factor f: the cell lasts ~``target_run_s``, publishes ≤ ``max_played_rate``/s, and
    ``redis_ttl_s / f`` is a whole number of seconds."""
    wanted = min(max(1.0, alerts / (rate * target_run_s)), max(1.0, max_played_rate / rate))
    return max(d for d in range(1, redis_ttl_s + 1) if redis_ttl_s % d == 0 and d <= wanted)


def expected_batch(settings: Settings, rate: float) -> int:
    """Alerts per micro-batch when publishing at ``rate``: a fetch returns what arrived within
    ``batch_within_s``, at most ``batch_max``."""
    return max(1, min(settings.batch_max, round(rate * settings.batch_within_s)))


async def measure_engine(settings: Settings, work: Path, trace: Trace, service: ServiceModel, label: str) -> dict[str, Any]:
    s = with_private_service_and_data(bench_settings(settings, f"hit-{label}"), work / f"data-{label}")
    records = [(a["id"], message_key(a, s.key_fields), orjson.dumps(a)) for a in trace.alerts]
    ids = {a["id"] for a in trace.alerts}
    await create_topics(s)
    try:
        with proposition_service(s, work, service), worker(s, work, f"worker-{label}"):
            reset_service_stats(s)
            collector = DecisionCollector(s.kafka_bootstrap, s.topic_decisions)
            await collector.start()
            try:
                with Progress(f"{label} publish", len(records)) as bar:
                    published = await publish_paced(s.kafka_bootstrap, s.topic_alerts, records, trace.times, bar.update)
                complete = await collector.wait_for(ids, timeout_s=120)
            finally:
                collected = await collector.stop()
            stats = service_stats(s)
    finally:
        await drop_topics(s)
    counts: dict[str, int] = {}
    for alert_id in ids:
        got = collected.decisions.get(alert_id)
        if got is not None:
            counts[got[2]] = counts.get(got[2], 0) + 1
    decided = sum(counts.values())
    share = lambda n: round(n / decided, 4) if decided else None  # noqa: E731
    return {
        "complete": complete,
        "decided": decided,
        "tiers": counts,
        "lru": share(counts.get("lru", 0)),
        "redis": share(counts.get("redis", 0)),
        "hit": share(counts.get("lru", 0) + counts.get("redis", 0)),
        "achieved_publish_rate": round(published.achieved_rate, 1),
        "publisher_behind_max_ms": round(published.behind_max_s * 1000, 1),
        # The service answered each distinct key of a batch once: alerts that cost no lookup,
        # whatever tier their decision names (copies of a key inside one batch say "service").
        "service_avoided": share(decided - stats.get("unique_keys", 0)),
        "service_requests": stats.get("requests"),
    }


async def cell(settings: Settings, work: Path, profile: str, rate: float, *, horizon_s: float, max_alerts: int,
               target_run_s: float, max_played_rate: float, capacity_share: float | None, service: ServiceModel,
               engine: bool, seed: int) -> dict[str, Any]:
    """One (type, rate) cell; ``capacity_share`` set: the capacity variant, LRU = that share of
    the keys a partition sees."""
    alerts = max(1, min(int(rate * horizon_s), max_alerts))
    factor = compression(rate, alerts, target_run_s, max_played_rate, settings.redis_ttl_s)
    played = rate * factor
    trace = make_trace(TraceSpec(profile, size=alerts, rate=played, seed=seed), settings)
    lru_size = settings.lru_size
    if capacity_share is not None:
        lru_size = max(1, math.ceil(capacity_share * trace.distinct_keys / PARTITIONS))
    s = settings.with_overrides(lru_ttl_s=settings.lru_ttl_s / factor, redis_ttl_s=settings.redis_ttl_s // factor,
                                lru_size=lru_size)
    batch = expected_batch(s, played)
    best = optimum(trace, s.lru_ttl_s, s.redis_ttl_s)
    model = tiers(trace.keys, trace.times, trace.partitions, lru_size, s.lru_ttl_s, s.redis_ttl_s, batch)
    row: dict[str, Any] = {
        "profile": profile,
        "rate": rate,
        "variant": "default" if capacity_share is None else f"capacity ({capacity_share:g} of the keys)",
        "alerts": alerts,
        "distinct_keys": trace.distinct_keys,
        "horizon_s": round(alerts / rate, 1),
        "compression": factor,
        "played_rate": played,
        "lru_size": lru_size,
        "lru_ttl_s_run": s.lru_ttl_s,
        "redis_ttl_s_run": s.redis_ttl_s,
        "expected_batch": batch,
        "optimum": {k: round(v, 4) for k, v in best.items()},
        "belady_lru": round(belady(trace.keys, trace.partitions, lru_size), 4),
        "model": {k: round(v, 4) for k, v in model.items()},
        "service": service.scaled(factor).describe(),
    }
    if engine:
        label = f"{profile.replace('_', '')}-{rate:g}-{lru_size}"
        row["engine"] = await measure_engine(s, work, trace, service.scaled(factor), label)
    return row


def capacity_sweep(profile: str, rate: float, alerts: int, settings: Settings) -> dict[str, Any]:
    """Trace only: LRU and Belady at each capacity, at the top rate (TTLs as modelled)."""
    trace = make_trace(TraceSpec(profile, size=alerts, rate=rate, seed=6), settings)
    return {
        "profile": profile, "rate": rate, "alerts": alerts, "capacities": list(CAPACITY_SWEEP),
        "lru": [round(lru(trace.keys, trace.times, trace.partitions, c, settings.lru_ttl_s), 4) for c in CAPACITY_SWEEP],
        "belady": [round(belady(trace.keys, trace.partitions, c), 4) for c in CAPACITY_SWEEP],
    }  # fmt: skip


async def run(
    settings: Settings | None = None,
    profiles: tuple[str, ...] = PROFILES,
    rates: tuple[float, ...] = RATES,
    horizon_s: float = 7200.0,
    max_alerts: int = 40_000,
    target_run_s: float = 10.0,
    max_played_rate: float = 4000.0,
    capacity_share: float | None = 0.25,
    engine: bool = True,
    service: ServiceModel = SERVICE,
    work_dir: Path | None = None,
) -> BenchResult:
    watch = Stopwatch()
    settings = settings or Settings()
    knobs = {"horizon_s": horizon_s, "max_alerts": max_alerts, "target_run_s": target_run_s,
             "max_played_rate": max_played_rate, "service": service, "engine": engine}
    rows: list[dict[str, Any]] = []
    sweeps: list[dict[str, Any]] = []
    with workspace(work_dir) as work:
        for profile in profiles:
            for i, rate in enumerate(rates):
                rows.append(await cell(settings, work, profile, rate, capacity_share=None, seed=10 + i, **knobs))
            if capacity_share is not None:
                rows.append(await cell(settings, work, profile, max(rates), capacity_share=capacity_share, seed=9, **knobs))
            sweeps.append(capacity_sweep(profile, max(rates), min(max_alerts, int(max(rates) * horizon_s)), settings))
    result = BenchResult(
        name="hitratio",
        command="",
        params={"profiles": list(profiles), "rates": list(rates), "horizon_s": horizon_s, "max_alerts": max_alerts,
                "target_run_s": target_run_s, "max_played_rate": max_played_rate, "capacity_share": capacity_share,
                "lru_size": settings.lru_size, "lru_ttl_s": settings.lru_ttl_s, "redis_ttl_s": settings.redis_ttl_s,
                "engine_measured": engine, "service": service.describe(), "engine": settings.engine},
        metrics={f"{r['profile']}@{r['rate']:g}/s" + ("" if r["variant"] == "default" else f",lru={r['lru_size']}"):
                 {"optimum": r["optimum"]["hit"], "model": r["model"]["hit"], "engine": r.get("engine", {}).get("hit")}
                 for r in rows},
        runs=rows + sweeps,  # cells first (they have "variant"), then one capacity sweep per type
        notes=[
            "Time compressed by each cell's factor f: arrivals, lru_ttl_s, redis_ttl_s and the service latency divided "
            "by f (hit ratios depend on arrivals per TTL, which f keeps); the engine's own delays are not compressed.",
            "optimum = both tiers unbounded, one lookup at a time (TTL-aware bound); belady_lru = Belady's OPT at the "
            "LRU capacity (bound of the LRU tier); model = both tiers at the capacity and batch size of the run.",
            "Hit = decision cache_tier lru or redis; copies of a missing key inside one batch share one service call "
            "but all say 'service' (service_avoided counts them as avoided).",
        ],
    )
    return watch.finish(result, settings=settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", nargs="+", default=list(PROFILES))
    parser.add_argument("--rates", type=float, nargs="+", default=list(RATES), help="modelled arrival rates, alerts/s")
    parser.add_argument("--horizon-s", type=float, default=7200.0, help="modelled time each trace covers (at most --max-alerts)")
    parser.add_argument("--max-alerts", type=int, default=40_000)
    parser.add_argument("--target-run-s", type=float, default=10.0, help="how long a compressed cell should take")
    parser.add_argument("--max-played-rate", type=float, default=4000.0)
    parser.add_argument("--capacity-share", type=float, default=0.25,
                        help="capacity variant: LRU entries per partition as a share of the keys a partition sees")
    parser.add_argument("--no-capacity-variant", action="store_true")
    parser.add_argument("--trace-only", action="store_true", help="bounds and model only, no worker")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    settings = Settings()
    if not args.trace_only:
        require_kafka(settings)
    result = asyncio.run(run(settings, tuple(args.profiles), tuple(args.rates), args.horizon_s, args.max_alerts,
                             args.target_run_s, args.max_played_rate,
                             None if args.no_capacity_variant else args.capacity_share, not args.trace_only))
    path = result.write(args.results_dir)
    for name, m in result.metrics.items():
        print(f"{name:32s} optimum {m['optimum']:.3f}  model {m['model']:.3f}  engine {m['engine']}")
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
