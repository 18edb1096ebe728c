"""Worker memory: RSS (``VmRSS`` of the worker subprocess) idle, with 1000 cached propositions,
and its growth while ``steps`` × ``step_alerts`` alerts flow through.

    python -m benchmarks.memory --step-alerts 100000 --steps 3 [--clickhouse http]

``--clickhouse embedded`` (default) is the worker as `./run demo` runs it: the chDB engine lives
in the worker process (imported when the sink starts, ~270 MB). ``--clickhouse http`` is the
worker as docker-compose runs it, writing to ClickHouse over HTTP: here the server is the chDB
HTTP test double (``harness/chdb_http_double.py``) in its own process, whose RSS is reported
separately, so the worker's figure is the worker alone.
The first step includes one-off allocations (buffers grow to their working size);
``growth_per_100k_steady`` is the median growth of the later steps, the number to hold against
"growth < 1 MB per 100 requests".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import Iterator
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
    from harness.chdb_http_double import start_double

    double = start_double(work / "clickhouse-double")
    try:
        yield s.with_overrides(clickhouse_url=double.url), double.process.pid
    finally:
        double.stop()


async def run(settings: Settings | None = None, step_alerts: int = 100_000, steps: int = 3, cached: int = 1000,
              work_dir: Path | None = None, clickhouse: str = "embedded") -> BenchResult:
    watch = Stopwatch()
    points: list[dict[str, Any]] = []
    complete = True
    with workspace(work_dir) as work:
        s = with_private_service_and_data(bench_settings(settings, "mem"), work / "data")
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
    embedded = clickhouse == "embedded"
    result = BenchResult(
        name="memory" if embedded else f"memory_{clickhouse}",
        command="",
        params={"step_alerts": step_alerts, "steps": steps, "cached": cached, "profile_steps": "ci_failures",
                "clickhouse": clickhouse, "engine": s.engine, "service": NO_LATENCY.describe()},
        metrics={
            "rss_idle_mb": idle,
            f"rss_with_{cached}_cached_mb": with_cache,
            "growth_first_step_per_100k_mb": per_100k(step_growth[0]) if step_growth else None,
            "growth_per_100k_steady_mb": round(statistics.median(steady), 2) if steady else None,
            "clickhouse_process_rss_mb": server_rss,
            "complete": complete,
        },
        runs=points,
        notes=["RSS read from /proc/<worker pid>/status after a 2 s settle. " + (
            "The worker runs chDB (embedded ClickHouse) in its own process, opened when its sink starts."
            if embedded else
            "The worker writes over HTTP to the chDB HTTP test double in another process (its RSS: "
            "clickhouse_process_rss_mb); a real ClickHouse server stands there in production.")],
    )
    return watch.finish(result, settings=s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step-alerts", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--cached", type=int, default=1000)
    parser.add_argument("--clickhouse", choices=("embedded", "http"), default="embedded")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    settings = Settings()
    require_kafka(settings)
    result = asyncio.run(run(settings, args.step_alerts, args.steps, args.cached, clickhouse=args.clickhouse))
    path = result.write(args.results_dir)
    print(f"memory: {result.metrics} -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
