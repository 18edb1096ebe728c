"""A message round-trips through the real broker; a consumer group resumes from its commit."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream_engine.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def produce(settings: Settings, topic: str, items: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(topic, value, key=key) for key, value in items])
    finally:
        await producer.stop()


async def consume(settings: Settings, topic: str, group: str, count: int, *, commit: bool) -> list[tuple[bytes, bytes]]:
    """Read `count` records in `group` (plus whatever arrives within a grace period), optionally commit."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.kafka_bootstrap, group_id=group, auto_offset_reset="earliest",
        enable_auto_commit=False, session_timeout_ms=6000, heartbeat_interval_ms=1000,
    )  # fmt: skip
    await consumer.start()
    records: list[tuple[bytes, bytes]] = []
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while len(records) < count and asyncio.get_running_loop().time() < deadline:
            for messages in (await consumer.getmany(timeout_ms=300)).values():
                records += [(m.key, m.value) for m in messages]
        for messages in (await consumer.getmany(timeout_ms=500)).values():
            records += [(m.key, m.value) for m in messages]
        if commit:
            await consumer.commit()
    finally:
        await consumer.stop()
    return records


async def test_round_trip_and_resume_from_committed_offset(topics: Settings) -> None:
    topic, group = topics.topic_alerts, topics.app_id
    first = [(f"k{i % 4}".encode(), f"first-{i}".encode()) for i in range(12)]
    await produce(topics, topic, first)

    got = await consume(topics, topic, group, len(first), commit=True)
    assert sorted(got) == sorted(first)  # all of it, once, across the 6 partitions

    second = [(f"k{i % 4}".encode(), f"second-{i}".encode()) for i in range(5)]
    await produce(topics, topic, second)
    # A new consumer in the same group starts at the committed offsets: only the new records.
    assert sorted(await consume(topics, topic, group, len(second), commit=True)) == sorted(second)


async def test_uncommitted_records_are_delivered_again(topics: Settings) -> None:
    topic, group = topics.topic_decisions, topics.app_id
    items = [(b"k", f"v{i}".encode()) for i in range(3)]
    await produce(topics, topic, items)
    assert await consume(topics, topic, group, 3, commit=False) == items  # one key: one partition, in order
    assert await consume(topics, topic, group, 3, commit=False) == items  # nothing committed: again
