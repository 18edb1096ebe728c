"""The practical ceiling: a bare aiokafka consume→produce loop that does no work.

getmany → send every record to the output topic → await the acks → commit, with everything
the engine's own Kafka path has and nothing else:

* the engine's producer (``stream_engine.engines.emitter.create_producer``: acks=all, idempotent,
  ``producer_linger_ms``, Kafka's partitioner in C — ``stream_engine.kafka.partitioner``);
* the engine's consumer settings (``batch_max`` records per fetch, ``fetch_max_wait_ms``,
  ``batch_within_s`` as the fetch timeout, session and heartbeat);
* the engine's in-flight depth: up to ``batch_concurrency`` batches between fetch and commit,
  committed in fetch order;
* the engine's measurement: records / (last − first CreateTime on the output topic).

So whatever the engine reaches is best read as a fraction of this number.

    python -m benchmarks.baseline_bare --messages 100000 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

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
from stream_engine.engines.emitter import create_producer
from stream_engine.settings import Settings
from stream_engine.workload import Workload

IDLE_GIVE_UP_S = 30.0  # no record for this long after the first one: the run is broken


def consumer_for(settings: Settings, topic: str, group: str | None) -> AIOKafkaConsumer:
    """A consumer configured as the aiokafka engine configures its own."""
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.batch_max,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        session_timeout_ms=int(settings.session_timeout_s * 1000),
        heartbeat_interval_ms=int(settings.heartbeat_interval_s * 1000),
    )


def producer_facts(settings: Settings, partitioner: Any) -> dict[str, Any]:
    """What the engine's producer is configured with; ``partitioner`` read back from the one that ran."""
    return {
        "producer": "stream_engine.engines.emitter.create_producer",
        "partitioner": f"{partitioner.__module__}.{getattr(partitioner, '__qualname__', type(partitioner).__name__)}",
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": settings.producer_linger_ms,
    }


async def consume_produce(settings: Settings, group: str, expected: int, progress: Progress | None = None) -> dict[str, Any]:
    """One pass over the input topic with a fresh group, ``batch_concurrency`` batches in flight."""
    consumer = consumer_for(settings, settings.topic_alerts, group)
    producer = create_producer(settings)
    await producer.start()
    await consumer.start()
    slots = asyncio.Semaphore(settings.batch_concurrency)
    timeout_ms = max(1, int(settings.batch_within_s * 1000))
    fetched = committed = batches = max_in_flight = 0
    previous: asyncio.Task[None] | None = None  # commits go out in fetch order, as the engine's do
    tasks: set[asyncio.Task[None]] = set()

    async def finish(acks: list[asyncio.Future[Any]], offsets: dict[TopicPartition, int], before: asyncio.Task[None] | None) -> None:
        nonlocal committed
        try:
            await asyncio.gather(*acks)
            if before is not None:
                await before
            await consumer.commit(offsets)
            committed += len(acks)
            if progress is not None:
                progress.update(committed)
        finally:
            slots.release()

    try:
        idle_since = time.monotonic()
        while fetched < expected:
            await slots.acquire()
            batch = await consumer.getmany(timeout_ms=timeout_ms, max_records=settings.batch_max)
            if not batch:
                slots.release()
                if fetched and time.monotonic() - idle_since > IDLE_GIVE_UP_S:
                    raise RuntimeError(f"stalled after {fetched}/{expected} records")
                continue
            acks = [await producer.send(settings.topic_decisions, r.value, key=r.key)
                    for records in batch.values() for r in records]
            offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
            previous = asyncio.create_task(finish(acks, offsets, previous))
            tasks.add(previous)
            previous.add_done_callback(tasks.discard)
            max_in_flight = max(max_in_flight, len(tasks))
            fetched += len(acks)
            batches += 1
            idle_since = time.monotonic()
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await consumer.stop()
        await producer.stop()
    return {"messages": committed, "batches": batches, "mean_batch": round(fetched / batches, 1) if batches else 0,
            "max_in_flight": max_in_flight,
            "partitioner": producer._partitioner}  # noqa: SLF001 - the one way to show which partitioner ran


async def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    consumer = consumer_for(settings, topic, None)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return {tp.partition: offset for tp, offset in (await consumer.end_offsets(parts)).items()}
    finally:
        await consumer.stop()


async def create_time_span(settings: Settings, topic: str, start: dict[int, int], end: dict[int, int]) -> tuple[float, int]:
    """(last − first CreateTime in seconds, records) of the records between two sets of offsets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50)
    await consumer.start()
    first, last, count = float("inf"), float("-inf"), 0
    try:
        wanted = {TopicPartition(topic, p): (start.get(p, 0), stop) for p, stop in end.items() if stop > start.get(p, 0)}
        consumer.assign(list(wanted))
        for tp, (begin, _) in wanted.items():
            consumer.seek(tp, begin)
        remaining = set(wanted)
        while remaining:
            for tp, records in (await consumer.getmany(timeout_ms=500, max_records=5000)).items():
                stop = wanted[tp][1]
                for r in records:
                    if r.offset < stop:
                        first, last, count = min(first, r.timestamp), max(last, r.timestamp), count + 1
                if records and records[-1].offset >= stop - 1:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return (last - first) / 1000.0 if count > 1 else 0.0, count


async def run(
    settings: Settings | None = None, messages: int = 100_000, runs: int = 3, profile: str = "ci_failures"
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
            before = await end_offsets(s, s.topic_decisions)
            with Progress(f"bare loop run {i + 1}/{runs}", messages) as bar:
                row = await consume_produce(s, f"{s.app_id}-run{i}", messages, bar)
            partitioner = row.pop("partitioner")
            span, counted = await create_time_span(s, s.topic_decisions, before, await end_offsets(s, s.topic_decisions))
            per_run.append(row | {"seconds": round(span, 4), "records_timed": counted,
                                  "msgs_per_s": round(counted / span, 1) if span > 0 else None})
    finally:
        await drop_topics(s)
    result = BenchResult(
        name="baseline_bare",
        command="",
        params={"messages": messages, "runs": runs, "profile": profile, "partitions": 6, "batch_max": s.batch_max,
                "batch_within_s": s.batch_within_s, "fetch_max_wait_ms": s.fetch_max_wait_ms,
                "in_flight_batches": s.batch_concurrency, "commits": "per batch, in fetch order",
                "timing": "output CreateTime span, as the engine's throughput"} | producer_facts(s, partitioner),
        metrics={"msgs_per_s_median": median_of(per_run, "msgs_per_s"), "fill_msgs_per_s": round(messages / fill_s, 1)},
        runs=per_run,
        notes=["msgs_per_s = records / (last - first CreateTime on the output topic): the engine's throughput measure.",
               "Same producer (create_producer), consumer settings and in-flight depth as the aiokafka engine."],
    )
    return watch.finish(result, settings=s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", default="ci_failures", help="workload of the records (their size and keys)")
    parser.add_argument("--results-dir", type=Path, default=None, help="Where the JSON goes (default benchmarks/results).")
    args = parser.parse_args(argv)
    settings = Settings()
    require_kafka(settings)
    result = asyncio.run(run(settings, args.messages, args.runs, args.profile))
    path = result.write(args.results_dir)
    print(f"bare loop: {result.metrics['msgs_per_s_median']:.0f} msg/s (median of {args.runs}) -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
