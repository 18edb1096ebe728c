"""The API's bounds under a flood: a worker's peak RSS growth under 10,000 concurrent API requests
(20 alerts each) while the stream runs, against the budget priced from the bounds.

    python -m benchmarks.api_isolation                  # 3 runs at the defaults -> api_isolation.json
    python -m benchmarks.api_isolation --runs 1 --api-max-connections 100000 --name api_isolation_unbounded

The procedure is the e2e test's (``harness.api_flood``, shared with
``tests/e2e/test_api_isolation.py``, which asserts the same budget): a real worker subprocess on
the running Kafka, Redis and ClickHouse endpoint, a proposition service of its own with the
benchmarks' simulated latency, every path warmed first, then ``CONNECTIONS`` connections opened at
once while ``STREAM_ALERTS`` alerts are published to the stream. Each run has a fresh worker.
*growth* = peak RSS during the load - RSS just before it. The second command lifts the connection
bound (the one the budget depends on most) to show what it holds back. Needs ``ulimit -n`` of at
least 20000 (this process and the worker each hold a socket per connection).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from pathlib import Path
from typing import Any

from benchmarks.api import api_url
from benchmarks.common import BenchResult, Stopwatch, bench_settings, create_topics, drop_topics, require_kafka
from benchmarks.services import SERVICE, ServiceModel, proposition_service, with_private_service_and_data, worker, workspace
from harness.api_flood import ALERTS_PER_REQUEST, CONNECTIONS, STREAM_ALERTS, flood, rss_budget
from harness.http_load import raise_fd_limit
from harness.kafka import collect
from stream_engine.settings import Settings

MIB = 1 << 20
FLUSH_INTERVAL_S = 0.2  # as the test: the warm-up's rows reach ClickHouse quickly


def drop_database(s: Settings) -> None:
    from stream_engine.sinks.clickhouse.client import connect

    try:
        connect(s.effective_clickhouse_url, None, connect_timeout_s=2.0).command(f"DROP DATABASE IF EXISTS {s.clickhouse_database}")
    except Exception:  # noqa: BLE001 - cleanup must not hide the measurement
        pass


async def one_run(s: Settings, work: Path, service: ServiceModel, label: str) -> dict[str, Any]:
    await create_topics(s)
    try:
        with proposition_service(s, work, service), worker(s, work, f"worker-{label}") as proc:
            url = api_url(proc)
            flooded = await flood(url, proc, s)
            expected = {a["id"] for a in flooded.stream}
            decisions = await collect(
                s.kafka_bootstrap, s.topic_decisions, lambda r: expected <= {d["alert_id"] for d in r}, timeout=120
            )
    finally:
        await drop_topics(s)
        drop_database(s)
    load = flooded.load
    return {
        "rss_idle_mib": round(flooded.idle_kib / 1024, 1),
        "rss_peak_mib": round(flooded.peak_kib / 1024, 1),
        "growth_mib": round(flooded.growth_bytes / MIB, 1),
        "answers": {str(k): v for k, v in sorted(load.statuses.items())},
        "retry_after": dict(load.retry_after),
        "errors": dict(load.errors),
        "unanswered": CONNECTIONS - load.answered,
        "stream_alerts": len(expected),
        "stream_decided": len(expected & {d["alert_id"] for d in decisions}),
    }


async def run(settings: Settings | None = None, runs: int = 3, api_max_connections: int | None = None,
              name: str = "api_isolation", service: ServiceModel = SERVICE, work_dir: Path | None = None) -> BenchResult:
    watch = Stopwatch()
    fds = raise_fd_limit(4 * CONNECTIONS)
    if fds < 2 * CONNECTIONS:
        raise SystemExit(f"this benchmark opens {CONNECTIONS} connections at once: raise the hard `ulimit -n` ({fds})")
    overrides: dict[str, Any] = {"api_port": 0, "sink_flush_interval_s": FLUSH_INTERVAL_S}
    if api_max_connections is not None:
        overrides["api_max_connections"] = api_max_connections
    rows: list[dict[str, Any]] = []
    with workspace(work_dir) as work:
        for i in range(runs):
            s = with_private_service_and_data(bench_settings(settings, "isolation"), work / f"data-{i}").with_overrides(**overrides)
            rows.append(await one_run(s, work, service, str(i)))
            print(f"run {i + 1}: {rows[-1]}", flush=True)
    growth = [r["growth_mib"] for r in rows]
    result = BenchResult(
        name=name,
        command="",
        params={"connections": CONNECTIONS, "alerts_per_request": ALERTS_PER_REQUEST, "stream_alerts": STREAM_ALERTS,
                "runs": runs, "engine": s.engine, "clickhouse": "http" if s.effective_clickhouse_url.startswith("http") else "chdb",
                "service": service.describe(), "open_files_limit": fds},
        metrics={"growth_mib_median": statistics.median(growth), "growth_mib_max": max(growth),
                 "budget_mib": round(rss_budget(s) / MIB, 1),
                 "within_budget": all(g * MIB <= rss_budget(s) for g in growth),
                 "stream_decided_all": all(r["stream_decided"] == r["stream_alerts"] for r in rows)},
        runs=rows,
        notes=["growth = peak RSS during the load (sampled every 20 ms) - RSS just before it, after a warm-up of "
               "2000 requests and 200 stream alerts.",
               "budget = harness.api_flood.rss_budget: api_max_connections x 20 KiB + (api_max_request_bytes + "
               "api_max_body_bytes) x 8 + api_max_queued_alerts x 2 KiB + 8 MiB (the e2e test asserts growth <= budget)."],
    )
    return watch.finish(result, settings=s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs, each with a fresh worker")
    parser.add_argument("--api-max-connections", type=int, default=None, help="override the worker's connection bound")
    parser.add_argument("--name", default="api_isolation", help="result file name (without .json)")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    settings = Settings()
    require_kafka(settings)
    result = asyncio.run(run(settings, args.runs, args.api_max_connections, args.name))
    path = result.write(args.results_dir)
    print(f"{args.name}: {result.metrics} -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
