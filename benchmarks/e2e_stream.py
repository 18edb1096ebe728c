"""Streaming end to end on the real stack: a worker subprocess at its default settings, the
proposition service with the shared simulated latency (``benchmarks.services.SERVICE``: per request
median 20 / p99 50 ms plus a per-item cost), real Kafka and Redis, embedded ClickHouse.

Two measurements:

* **latency at fixed rates** — a paced publisher sends ``rate`` alerts/s for ``seconds``; per alert,
  publish → decision latency (see ``benchmarks.streamio``), overall and per cache tier.
* **maximum sustained throughput** — a backlog of ``backlog`` alerts is in ``alerts`` before the
  worker starts; throughput = alerts / (last decision − first decision), CreateTimes on the
  decisions topic. Repeated ``runs`` times with fresh topics, group and Redis namespace; medians.

    python -m benchmarks.e2e_stream latency --rates 100 1000 5000 --seconds 10
    python -m benchmarks.e2e_stream throughput --backlog 100000 --runs 3 --profile ci_failures
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import (
    BenchResult,
    Progress,
    Stopwatch,
    bench_settings,
    create_topics,
    drop_topics,
    fill_topic,
    latency_summary,
    median_of,
    require_kafka,
)
from benchmarks.services import SERVICE, ServiceModel, cpu_seconds, proposition_service, with_private_service_and_data, worker, workspace
from benchmarks.streamio import DecisionCollector, publish_paced
from benchmarks.trace import TraceSpec, make_trace
from harness.procs import Proc
from stream_engine.engines import ENGINES
from stream_engine.keys import message_key
from stream_engine.settings import Settings

WorkerObserver = Callable[[Proc], contextlib.AbstractContextManager[Any]]


def engine_result_name(name: str, engine: str) -> str:
    """faust's results keep the bare names (``e2e_latency``); other engines' get a suffix."""
    return name if engine == "faust" else f"{name}_{engine}"


def isolation_level(settings: Settings) -> str:
    """exactly_once: a decision counts (and its latency ends) when a read_committed consumer sees it."""
    return "read_committed" if settings.delivery == "exactly_once" else "read_uncommitted"


def _records(alerts: list[dict[str, Any]], settings: Settings) -> list[tuple[str, bytes, bytes]]:
    return [(a["id"], message_key(a, settings.key_fields), orjson.dumps(a)) for a in alerts]


def _tier_counts(decisions: dict[str, tuple[float, float, str]], ids: set[str]) -> dict[str, int]:
    return dict(Counter(decisions[i][2] for i in ids if i in decisions))


async def _latency_run(settings: Settings, rate: int, seconds: float, profile: str, burst: float) -> dict[str, Any]:
    trace = make_trace(TraceSpec(profile, size=max(1, int(rate * seconds)), rate=rate, burst=burst, seed=rate), settings)
    records = _records(trace.alerts, settings)
    ids = {a["id"] for a in trace.alerts}
    collector = DecisionCollector(settings.kafka_bootstrap, settings.topic_decisions, isolation_level(settings))
    await collector.start()
    try:
        with Progress(f"publish {rate}/s", len(records)) as bar:
            published = await publish_paced(settings.kafka_bootstrap, settings.topic_alerts, records, trace.times, bar.update)
        with Progress(f"decisions {rate}/s", len(ids)) as bar:
            complete = await collector.wait_for(ids, timeout_s=60 + seconds, progress=bar.update)
    finally:
        collected = await collector.stop()
    decisions = collected.decisions
    record_ms: list[float] = []
    seen_ms: list[float] = []
    by_tier: dict[str, list[float]] = {}
    for alert_id, sent in published.sent_at.items():
        got = decisions.get(alert_id)
        if got is None:
            continue
        created, seen, tier = got
        record_ms.append(max(0.0, (created - sent) * 1000))
        seen_ms.append((seen - sent) * 1000)
        by_tier.setdefault(tier, []).append(record_ms[-1])
    return {
        "rate": rate,
        "burst": burst,
        "alerts": len(ids),
        "decided": len(record_ms),
        "complete": complete,
        "duplicates": collected.duplicates,
        "achieved_publish_rate": round(published.achieved_rate, 1),
        "publisher_behind_max_ms": round(published.behind_max_s * 1000, 1),
        "record": latency_summary(record_ms),
        "seen": latency_summary(seen_ms),
        "by_tier": {tier: latency_summary(v) for tier, v in sorted(by_tier.items())},
        "tiers": _tier_counts(decisions, ids),
    }


async def latency(
    settings: Settings | None = None,
    rates: tuple[int, ...] = (100, 1000, 5000),
    seconds: float = 10.0,
    profile: str = "typical",
    burst: float = 1.0,
    service: ServiceModel = SERVICE,
    work_dir: Path | None = None,
) -> BenchResult:
    watch = Stopwatch()
    per_rate = []
    with workspace(work_dir) as work:
        s = with_private_service_and_data(bench_settings(settings, "lat"), work / "data")
        await create_topics(s)
        try:
            with proposition_service(s, work, service), worker(s, work):
                for rate in rates:
                    per_rate.append(await _latency_run(s, rate, seconds, profile, burst))
        finally:
            await drop_topics(s)
    result = BenchResult(
        name="e2e_latency",
        command="",
        params={"rates": list(rates), "seconds": seconds, "profile": profile, "burst": burst, "engine": s.engine,
                "service": service.describe()},
        metrics={f"p99_ms_at_{r['rate']}": r["record"].get("p99_ms") for r in per_rate}
        | {f"lru_p99_ms_at_{r['rate']}": r["by_tier"].get("lru", {}).get("p99_ms") for r in per_rate},
        runs=per_rate,
        notes=[
            "One worker serves all rates in order (its caches stay warm from rate to rate).",
            "record = decision CreateTime - publish time; seen = when our consumer received it - publish time.",
        ],
    )
    return watch.finish(result, settings=s)


async def _throughput_run(base: Settings, work: Path, backlog: int, profile: str, run: int, service: ServiceModel,
                          observe: WorkerObserver | None = None) -> dict[str, Any]:
    s = with_private_service_and_data(bench_settings(base, f"tput{run}"), work / f"data-{run}")
    trace = make_trace(TraceSpec(profile, size=backlog, seed=100 + run), s)
    ids = {a["id"] for a in trace.alerts}
    await create_topics(s)
    try:
        with Progress("fill backlog", backlog) as bar:
            await fill_topic(s.kafka_bootstrap, s.topic_alerts, [(k, v) for _, k, v in _records(trace.alerts, s)], bar.update)
        collector = DecisionCollector(s.kafka_bootstrap, s.topic_decisions, isolation_level(s))
        with contextlib.ExitStack() as stack:
            stack.enter_context(proposition_service(s, work, service))
            proc = stack.enter_context(worker(s, work, f"worker-tput{run}"))
            if observe is not None:  # e.g. a profiler attached while the backlog drains
                stack.enter_context(observe(proc))
            cpu_before = cpu_seconds(proc.popen.pid)
            await collector.start()
            try:
                with Progress(f"throughput run {run + 1}", backlog) as bar:
                    complete = await collector.wait_for(ids, timeout_s=120 + backlog / 500, progress=bar.update)
                cpu_used = cpu_seconds(proc.popen.pid) - cpu_before
            finally:
                collected = await collector.stop()
    finally:
        await drop_topics(s)
    created = sorted(collected.decisions[i][0] for i in ids if i in collected.decisions)
    span = created[-1] - created[0] if len(created) > 1 else 0.0
    return {
        "backlog": backlog,
        "decided": len(created),
        "complete": complete,
        "duplicates": collected.duplicates,
        "seconds": round(span, 3),
        "msgs_per_s": round(len(created) / span, 1) if span > 0 else None,
        "tiers": _tier_counts(collected.decisions, ids),
        # CPU seconds of the worker while the backlog drained, per wall second: < 1 means it waited.
        "worker_cpu_s": round(cpu_used, 2),
        "worker_cpu_per_wall_s": round(cpu_used / span, 2) if span > 0 else None,
    }


async def throughput(
    settings: Settings | None = None,
    backlog: int = 100_000,
    runs: int = 3,
    profile: str = "ci_failures",
    service: ServiceModel = SERVICE,
    work_dir: Path | None = None,
) -> BenchResult:
    watch = Stopwatch()
    settings = settings or Settings()
    per_run = []
    with workspace(work_dir) as work:
        for run in range(runs):
            per_run.append(await _throughput_run(settings, work, backlog, profile, run, service))
    result = BenchResult(
        name=f"e2e_throughput_{profile}",
        command="",
        params={"backlog": backlog, "runs": runs, "profile": profile, "engine": settings.engine,
                "service": service.describe()},
        metrics={"msgs_per_s_median": median_of(per_run, "msgs_per_s")},
        runs=per_run,
        notes=["Backlog published before the worker starts; span = first to last decision CreateTime.",
               "Fresh topics, consumer group, Redis namespace and worker per run (cold caches)."],
    )
    return watch.finish(result, settings=settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    lat = sub.add_parser("latency", help="publish→decision latency at fixed rates")
    lat.add_argument("--rates", type=int, nargs="+", default=[100, 1000, 5000])
    lat.add_argument("--seconds", type=float, default=10.0)
    lat.add_argument("--profile", default="typical")
    lat.add_argument("--burst", type=float, default=1.0, help="peak/mean rate factor (10%% duty, 10 s period)")
    tput = sub.add_parser("throughput", help="maximum sustained throughput on a backlog")
    tput.add_argument("--backlog", type=int, default=100_000)
    tput.add_argument("--runs", type=int, default=3)
    tput.add_argument("--profile", default="ci_failures")
    for p in (lat, tput):
        p.add_argument("--service-median-ms", type=float, default=SERVICE.median_ms)
        p.add_argument("--service-p99-ms", type=float, default=SERVICE.p99_ms)
        p.add_argument("--service-per-item-ms", type=float, default=SERVICE.per_item_ms)
        p.add_argument("--results-dir", type=Path, default=None)
        p.add_argument("--keep", type=Path, default=None, help="keep logs and worker data here")
        p.add_argument("--engine", choices=ENGINES, default=None,
                       help="worker engine (default: STREAM_ENGINE_ENGINE); non-faust results get a name suffix")
    args = parser.parse_args(argv)
    settings = Settings()
    if args.engine is not None:
        settings = settings.with_overrides(engine=args.engine)
    require_kafka(settings)
    service = ServiceModel(args.service_median_ms, args.service_p99_ms, args.service_per_item_ms)
    t0 = time.monotonic()
    if args.what == "latency":
        result = asyncio.run(latency(settings, tuple(args.rates), args.seconds, args.profile, args.burst, service, args.keep))
    else:
        result = asyncio.run(throughput(settings, args.backlog, args.runs, args.profile, service, args.keep))
    result.name = engine_result_name(result.name, settings.engine)
    path = result.write(args.results_dir)
    print(f"{result.name}: {orjson.dumps(result.metrics).decode()} ({time.monotonic() - t0:.0f}s) -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
