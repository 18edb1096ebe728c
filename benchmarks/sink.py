"""ClickHouse sink throughput: rows/s durable (journal written) and rows/s in ClickHouse.

The worker's own path, without Kafka: ``ClickHouseSink.write`` in batches the size of a worker's
micro-batch (500 decisions + their stage metrics), into a fresh chDB directory (embedded) and,
with ``--http``, through a private `stream-engine clickhouse serve` (the stack's ClickHouse
endpoint: chDB in its own process behind the HTTP interface, the workers' default path).

    python -m benchmarks.sink --rows 200000 --repeats 3 [--http]

Each (backend, fsync) pair runs ``--repeats`` times, alternating fsync off and on, so the two
see the same disk and the same neighbours; the report gives the range over the repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import BenchResult, Progress, Stopwatch, latency_summary, median_of
from benchmarks.services import workspace
from stream_engine.settings import Settings
from stream_engine.sinks.clickhouse.client import connect
from stream_engine.sinks.clickhouse.rows import LogRow, MetricRow
from stream_engine.sinks.clickhouse.schema import migrate
from stream_engine.sinks.clickhouse.sink import ClickHouseSink

BATCH = 500
DATABASE = "stream_engine"
TYPES = ("ci_failure", "scam", "infra")


def decisions(n: int, start_ms: int) -> list[LogRow]:
    props = '[{"action":"rerun","confidence":0.91,"rationale":"flaky test in the last 20 runs"}]'
    return [
        LogRow(f"bench-{i:09d}", TYPES[i % 3], f"{TYPES[i % 3]}|repo=r{i % 300}|job=build", "high", "github",
               start_ms + i, start_ms + i + 2, "auto", "rerun", 0.91, "lru", 1.5, BATCH, i % 6, i, "w1", props, None, "0.1")
        for i in range(n)
    ]  # fmt: skip


def metrics_for(batch_index: int, start_us: int) -> list[MetricRow]:
    ts = start_us + batch_index * 1000
    return [MetricRow(ts, stage, t, "w1", BATCH // 3, 150.0, 2.5) for stage in ("decode", "lru", "sink") for t in TYPES]


@contextlib.contextmanager
def clickhouse_url(work: Path, backend: str) -> Iterator[str]:
    if backend == "embedded":
        yield f"chdb://{work / 'chdb'}"
        return
    from harness.clickhouse import start_server

    server = start_server(work / "clickhouse")
    try:
        yield server.url
    finally:
        server.stop()


async def one_run(url: str, work: Path, rows: int, fsync: bool, label: str) -> dict[str, Any]:
    migrate(connect(url, None), DATABASE, ttl_days=3650)
    settings = Settings()  # the worker's sink settings (flush rows and interval, buffer bound), fsync aside
    sink = ClickHouseSink(lambda: connect(url, DATABASE), work / f"journal-{label}", flush_rows=settings.sink_flush_rows,
                          flush_interval_s=settings.sink_flush_interval_s, max_buffer_rows=settings.sink_max_buffer_rows,
                          fsync=fsync)
    now_ms = int(time.time() * 1000)
    data = decisions(rows, now_ms)
    await sink.start()
    write_ms: list[float] = []  # one worker batch's time in write(): the hot path's share of the sink
    t0 = time.perf_counter()
    with Progress(label, rows) as bar:
        for b, i in enumerate(range(0, rows, BATCH)):
            started = time.perf_counter()
            await sink.write(data[i : i + BATCH], metrics_for(b, now_ms * 1000))
            write_ms.append((time.perf_counter() - started) * 1000)
            bar.update(min(BATCH, rows - i))
    written_s = time.perf_counter() - t0
    while sink.stats()["rows_inserted"] < rows:
        await asyncio.sleep(0.005)
    inserted_s = time.perf_counter() - t0
    stats = sink.stats()
    await sink.stop()
    return {
        "label": label, "rows": rows, "fsync": fsync,
        "durable_rows_per_s": round(rows / written_s), "inserted_rows_per_s": round(rows / inserted_s),
        "flushes": stats["flushes"], "flush_rows_avg": round(stats["flush_rows_avg"]),
        "flush_seconds_avg": round(stats["flush_seconds_avg"], 4), "journal_fsyncs": stats["journal_fsyncs"],
        "write": latency_summary(write_ms), "write_wait_seconds": round(stats["write_wait_seconds"], 3),
    }  # fmt: skip


async def run(rows: int = 200_000, backends: tuple[str, ...] = ("embedded", "http"), work_dir: Path | None = None,
              repeats: int = 1) -> BenchResult:
    watch = Stopwatch()
    runs = []
    with workspace(work_dir) as work:
        for backend in backends:
            with clickhouse_url(work, backend) as url:
                await one_run(url, work, min(BATCH * 20, rows), False, f"{backend}, warm-up")  # engine load, first parts
                for repeat in range(repeats):
                    for fsync in (False, True):
                        label = f"{backend}, fsync {'on' if fsync else 'off'}, run {repeat + 1}"
                        runs.append(await one_run(url, work, rows, fsync, label) | {"backend": backend, "repeat": repeat})
    result = BenchResult(
        name="sink",
        command="",
        params={"rows": rows, "batch": BATCH, "metrics_per_batch": 9, "backends": list(backends), "repeats": repeats,
                "sink": "the worker's sink settings (flush rows and interval, buffer bound); fsync off and on"},
        metrics={f"{backend}_fsync_{'on' if fsync else 'off'}_{what}_median": median_of(
                     [r if what == "inserted_rows_per_s" else {what: r["write"].get("p50_ms")} for r in runs
                      if r["backend"] == backend and r["fsync"] == fsync], what)
                 for backend in backends for fsync in (False, True) for what in ("inserted_rows_per_s", "write_p50_ms")},
        runs=runs,
        notes=["durable = every write() returned (rows in the journal, fsynced when fsync is on); "
               "inserted = rows_inserted reached the total (one columnar insert per journal segment into decision_audit, "
               "whose view copies it into proposition_log, and one into latency_metrics).",
               "write = time of each 500-row write(), backpressure waits included (write_wait_seconds in total).",
               "http = the stack's ClickHouse endpoint (stream-engine clickhouse serve: chDB in its own process behind "
               "the HTTP interface), not a clickhouse-server."],
    )
    return watch.finish(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--http", action="store_true", help="also through the stack's ClickHouse endpoint (clickhouse serve)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (backend, fsync) pair")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    backends = ("embedded", "http") if args.http else ("embedded",)
    result = asyncio.run(run(args.rows, backends, repeats=args.repeats))
    path = result.write(args.results_dir)
    for r in result.runs:
        w = r["write"]
        print(f"{r['label']:24s} durable {r['durable_rows_per_s']:>9,} rows/s  in ClickHouse {r['inserted_rows_per_s']:>9,} rows/s"
              f"  write() p50 {w['p50_ms']:.2f} ms p99 {w['p99_ms']:.2f} ms (waiting for room {r['write_wait_seconds']} s)")
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
