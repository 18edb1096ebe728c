"""Worker memory: RSS (``VmRSS`` of the worker subprocess) idle, with 1000 cached propositions,
and its growth while ``steps`` × ``step_alerts`` alerts flow through.

    python -m benchmarks.memory --step-alerts 100000 --steps 3 [--engine aiokafka] [--clickhouse embedded]
        [--before OLD_RESULT.json]

``--clickhouse http`` (default) is the worker as it runs by default and in production: it writes to
ClickHouse over HTTP, here a private `stream-engine clickhouse serve` (the stack's endpoint: chDB in
its own process), whose RSS is reported separately, so the worker's figure is the worker alone.
``--clickhouse embedded`` puts the engine in the worker (``chdb://``, ~270 MB).
The first step includes one-off allocations (buffers grow to their working size);
``growth_per_100k_steady`` is the median growth of the later steps and ``growth_per_100k_slope``
the least-squares slope over every reading after the first step: the number to hold against
"growth < 1 MB per 100k alerts after warm-up" (a single reading moves by a megabyte or two).
``--before`` puts an earlier run (another commit) beside this one in the result file:
``params.before`` is the whole earlier result (command, commit, settings, load, points),
``metrics.before_*`` its headlines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import BenchResult, Progress, Stopwatch, bench_settings, create_topics, drop_topics, fill_topic, require_kafka
from benchmarks.services import NO_LATENCY, proposition_service, rss_kb, with_private_service_and_data, worker, workspace
from benchmarks.streamio import DecisionCollector
from stream_engine.keys import message_key
from stream_engine.settings import Settings
from stream_engine.workload import Workload

SETTLE_S = 2.0  # let the worker finish flushes and timers before reading RSS


def distinct_key_alerts(n: int, seed: int = 3) -> list[dict[str, Any]]:
    """``n`` scam alerts with ``n`` different proposition keys (one merchant each)."""
    alerts = Workload("scam", seed=seed).alerts(n)
    for i, a in enumerate(alerts):
        a.pop("seq", None)
        a["attributes"] = {"pattern": "card_testing", "merchant": f"mem-merchant-{i:06d}", "amount": 10.0 + i}
    return alerts


async def _flow(s: Settings, alerts: list[dict[str, Any]], label: str) -> bool:
    ids = {a["id"] for a in alerts}
    collector = DecisionCollector(s.kafka_bootstrap, s.topic_decisions)
    await collector.start()
    try:
        records = [(message_key(a, s.key_fields), orjson.dumps(a)) for a in alerts]
        with Progress(f"{label}: publish", len(records)) as bar:
            await fill_topic(s.kafka_bootstrap, s.topic_alerts, records, bar.update)
        with Progress(f"{label}: decisions", len(ids)) as bar:
            return await collector.wait_for(ids, timeout_s=120 + len(ids) / 500, progress=bar.update)
    finally:
        await collector.stop()


async def _settled_rss_mb(pid: int) -> float:
    await asyncio.sleep(SETTLE_S)
    return round(rss_kb(pid) / 1024, 1)


@contextlib.contextmanager
def clickhouse_server(s: Settings, work: Path, clickhouse: str) -> Iterator[tuple[Settings, int | None]]:
    """``s`` pointed at the ClickHouse to use, and the pid of a separate ClickHouse process (if any).
    Both explicit, whatever the default ClickHouse URL is."""
    if clickhouse == "embedded":
        yield s.with_overrides(clickhouse_url=f"chdb://{(s.data_dir / 'clickhouse').resolve()}"), None
        return
    from harness.clickhouse import start_server

    server = start_server(work / "clickhouse")
    try:
        yield s.with_overrides(clickhouse_url=server.url), server.process.pid
    finally:
        server.stop()


async def run(settings: Settings | None = None, step_alerts: int = 100_000, steps: int = 3, cached: int = 1000,
              work_dir: Path | None = None, clickhouse: str = "http", engine: str | None = None,
              before: Path | None = None) -> BenchResult:
    watch = Stopwatch()
    points: list[dict[str, Any]] = []
    complete = True
    base = settings or Settings()
    engine = engine or base.engine
    with workspace(work_dir) as work:
        s = with_private_service_and_data(bench_settings(base.with_overrides(engine=engine), "mem"), work / "data")
        await create_topics(s)
        try:
            with clickhouse_server(s, work, clickhouse) as (s, server_pid), proposition_service(s, work, NO_LATENCY), \
                    worker(s, work, "worker-mem") as proc:
                pid = proc.popen.pid
                t0 = time.monotonic()
                points.append({"stage": "idle", "alerts": 0, "rss_mb": await _settled_rss_mb(pid)})
                complete &= await _flow(s, distinct_key_alerts(cached), f"{cached} keys")
                points.append({"stage": f"{cached}_cached", "alerts": cached, "rss_mb": await _settled_rss_mb(pid),
                               "lru_entries_expected": cached})
                generator = Workload("ci_failures", seed=4)
                total = cached
                for step in range(steps):
                    batch = generator.alerts(step_alerts)
                    complete &= await _flow(s, batch, f"step {step + 1}/{steps}")
                    total += step_alerts
                    points.append({"stage": f"after_step_{step + 1}", "alerts": total, "rss_mb": await _settled_rss_mb(pid),
                                   "t_s": round(time.monotonic() - t0, 1)})
                server_rss = round(rss_kb(server_pid) / 1024, 1) if server_pid else None
        finally:
            await drop_topics(s)
    idle = points[0]["rss_mb"]
    with_cache = points[1]["rss_mb"]
    step_growth = [points[i]["rss_mb"] - points[i - 1]["rss_mb"] for i in range(2, len(points))]
    per_100k = lambda mb: round(mb * 100_000 / step_alerts, 2)  # noqa: E731
    steady = [per_100k(g) for g in step_growth[1:]]
    slope = growth_slope_per_100k(points[2:])
    embedded = clickhouse == "embedded"
    result = BenchResult(
        name=("memory" if embedded else f"memory_{clickhouse}") + ("" if engine == "faust" else f"_{engine}"),
        command="",
        params={"step_alerts": step_alerts, "steps": steps, "cached": cached, "profile_steps": "ci_failures",
                "clickhouse": clickhouse, "engine": engine, "service": NO_LATENCY.describe()},
        metrics={
            "rss_idle_mb": idle,
            f"rss_with_{cached}_cached_mb": with_cache,
            "growth_first_step_per_100k_mb": per_100k(step_growth[0]) if step_growth else None,
            "growth_per_100k_steady_mb": round(statistics.median(steady), 2) if steady else None,
            "growth_per_100k_slope_mb": slope,
            "clickhouse_process_rss_mb": server_rss,
            "complete": complete,
        },
        runs=points,
        notes=["RSS read from /proc/<worker pid>/status after a 2 s settle. " + (
            "The worker runs chDB (embedded ClickHouse) in its own process, opened when its sink starts."
            if embedded else
            "The worker writes over HTTP to the stack's ClickHouse endpoint (clickhouse serve: chDB) in another "
            "process (its RSS: clickhouse_process_rss_mb); a ClickHouse server stands there in production.")],
    )
    if before is not None:
        attach_before(result, BenchResult.load(before))
    return watch.finish(result, settings=s)


HEADLINES = ("rss_idle_mb", "growth_first_step_per_100k_mb", "growth_per_100k_steady_mb", "growth_per_100k_slope_mb")


def growth_slope_per_100k(points: list[dict[str, Any]]) -> float | None:
    """Least-squares slope of RSS over alerts after the first step, per 100k alerts.

    One reading moves by a megabyte or two (allocator, GC timing); a difference of two readings
    carries that noise whole, a slope over every reading after warm-up averages it out.
    """
    if len(points) < 2:
        return None
    xs, ys = [p["alerts"] for p in points], [p["rss_mb"] for p in points]
    return round(statistics.linear_regression(xs, ys).slope * 100_000, 2)


def attach_before(result: BenchResult, old: BenchResult) -> None:
    """Side by side: an earlier run of this benchmark (another commit) inside this result.

    ``params.before`` is the whole earlier result (its command, commit, settings, load and points);
    ``metrics.before_*`` repeat its headlines next to this run's."""
    if old.params.get("clickhouse") != result.params["clickhouse"] or old.params.get("cached") != result.params["cached"]:
        raise ValueError(f"--before must be the same benchmark: {old.params} vs {result.params}")
    cached_key = f"rss_with_{result.params['cached']}_cached_mb"
    if "growth_per_100k_slope_mb" not in old.metrics:  # runs from before the slope existed: from their points
        old.metrics["growth_per_100k_slope_mb"] = growth_slope_per_100k(old.runs[2:])
    before = asdict(old)
    before["params"].pop("before", None)  # one generation back only
    result.params["before"] = before
    for key in (*HEADLINES, cached_key):
        if key in old.metrics:
            result.metrics[f"before_{key}"] = old.metrics[key]
    commit = (old.git.get("commit") or "not recorded")[:10]
    result.notes.append(
        f"before = {old.name}.json of commit {commit} ({old.started_at or 'start not recorded'}), same sizes: "
        + ", ".join(f"{k} {old.metrics.get(k)} -> {result.metrics.get(k)}" for k in ("rss_idle_mb", cached_key))
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step-alerts", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--cached", type=int, default=1000)
    parser.add_argument("--clickhouse", choices=("http", "embedded"), default="http")
    parser.add_argument("--engine", choices=("faust", "aiokafka"), default=None, help="default: STREAM_ENGINE_ENGINE")
    parser.add_argument("--before", type=Path, default=None, help="an earlier result of this benchmark to compare with")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    settings = Settings()
    require_kafka(settings)
    result = asyncio.run(run(settings, args.step_alerts, args.steps, args.cached, clickhouse=args.clickhouse,
                             engine=args.engine, before=args.before))
    path = result.write(args.results_dir)
    print(f"memory: {result.metrics} -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
