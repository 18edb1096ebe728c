"""The practical ceiling: a bare aiokafka consume→produce loop that does no work.

getmany → send every record to the output topic → await the acks → commit. Same broker, same
partitions (6), same producer acks (all) and consumer fetch wait as the worker, so whatever the
engine reaches is best read as a fraction of this number.

    python -m benchmarks.baseline_bare --messages 100000 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from benchmarks.common import (
    BenchResult,
    Progress,
    Stopwatch,
    bench_settings,
    create_topics,
    drop_topics,
    encoded_alerts,
    fill_topic,
    median_of,
    require_kafka,
)
from stream_engine.settings import Settings
from stream_engine.workload import Workload

IDLE_GIVE_UP_S = 30.0  # no record for this long after the first one: the run is broken


async def consume_produce(
    settings: Settings, group: str, expected: int, batch_max: int, progress: Progress | None = None
) -> dict[str, Any]:
    """One pass over the input topic with a fresh group; timing starts at the first record."""
    consumer = AIOKafkaConsumer(
        settings.topic_alerts,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        max_poll_records=batch_max,
        session_timeout_ms=int(settings.session_timeout_s * 1000),
        heartbeat_interval_ms=int(settings.heartbeat_interval_s * 1000),
    )
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=settings.producer_linger_ms, acks="all")
    await producer.start()
    await consumer.start()
    done = 0
    batches = 0
    first = last = 0.0
    try:
        idle_since = time.monotonic()
        while done < expected:
            batch = await consumer.getmany(timeout_ms=200, max_records=batch_max)
            if not batch:
                if first and time.monotonic() - idle_since > IDLE_GIVE_UP_S:
                    raise RuntimeError(f"stalled after {done}/{expected} records")
                continue
            if not first:
                first = time.perf_counter()
            acks = []
            for records in batch.values():
                for r in records:
                    acks.append(await producer.send(settings.topic_decisions, r.value, key=r.key))
            await asyncio.gather(*acks)
            await consumer.commit()
            done += len(acks)
            batches += 1
            last = time.perf_counter()
            idle_since = time.monotonic()
            if progress is not None:
                progress.update(done)
    finally:
        await consumer.stop()
        await producer.stop()
    elapsed = last - first
    return {
        "messages": done,
        "seconds": round(elapsed, 4),
        "msgs_per_s": round(done / elapsed, 1) if elapsed > 0 else None,
        "mean_batch": round(done / batches, 1) if batches else 0,
    }


async def run(
    settings: Settings | None = None, messages: int = 100_000, runs: int = 3, batch_max: int = 500, profile: str = "typical"
) -> BenchResult:
    watch = Stopwatch()
    s = bench_settings(settings, "bare")
    await create_topics(s)
    try:
        records = encoded_alerts(Workload(profile, seed=11).alerts(messages))
        with Progress("fill", messages) as bar:
            fill_s = await fill_topic(s.kafka_bootstrap, s.topic_alerts, records, bar.update)
        per_run = []
        for i in range(runs):
            with Progress(f"bare loop run {i + 1}/{runs}", messages) as bar:
                per_run.append(await consume_produce(s, f"{s.app_id}-run{i}", messages, batch_max, bar))
    finally:
        await drop_topics(s)
    result = BenchResult(
        name="baseline_bare",
        command="",
        params={"messages": messages, "runs": runs, "batch_max": batch_max, "profile": profile, "partitions": 6,
                "producer_acks": "all", "linger_ms": s.producer_linger_ms, "fetch_max_wait_ms": s.fetch_max_wait_ms},
        metrics={"msgs_per_s_median": median_of(per_run, "msgs_per_s"), "fill_msgs_per_s": round(messages / fill_s, 1)},
        runs=per_run,
        notes=["Timing runs from the first record consumed to the last produce ack; group join excluded."],
    )
    return watch.finish(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-max", type=int, default=500)
    parser.add_argument("--profile", default="typical")
    parser.add_argument("--results-dir", default=None, help="Where the JSON goes (default benchmarks/results).")
    args = parser.parse_args(argv)
    settings = Settings()
    require_kafka(settings)
    result = asyncio.run(run(settings, args.messages, args.runs, args.batch_max, args.profile))
    path = result.write(*([] if args.results_dir is None else [__import__("pathlib").Path(args.results_dir)]))
    print(f"bare loop: {result.metrics['msgs_per_s_median']:.0f} msg/s (median of {args.runs}) -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
