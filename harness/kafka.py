"""Plain aiokafka publishing and collecting, as a user's service would do it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream_engine.keys import message_key
from stream_engine.settings import Settings


async def publish(bootstrap: str, topic: str, alerts: Iterable[dict[str, Any] | bytes]) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        futures = []
        for alert in alerts:
            if isinstance(alert, bytes):
                futures.append(await producer.send(topic, alert))
            else:
                futures.append(await producer.send(topic, orjson.dumps(alert), key=message_key(alert)))
        await asyncio.gather(*futures)
        return len(futures)
    finally:
        await producer.stop()


async def collect(
    bootstrap: str,
    topic: str,
    done: Callable[[list[Any]], bool],
    timeout: float,
    decode: Callable[[bytes], Any] = orjson.loads,
) -> list[Any]:
    """Read ``topic`` from the beginning until ``done(records)`` or the timeout."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not done(records):
            batch = await consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                records.extend(decode(m.value) for m in msgs)
    finally:
        await consumer.stop()
    return records


async def create_topics(
    settings: Settings,
    *,
    partitions: int | None = None,
    replication_factor: int | None = None,
    configs: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """The four topics of ``settings`` from topics/*.yaml, with some of the definitions changed for
    a drill: every topic's ``partitions`` and ``replication_factor``, and per topic setting
    (``"topic_decisions"``, …) extra configs, e.g. a small ``max.message.bytes``."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from stream_engine.kafka.topics import load_topic_definitions

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=30000)
    await admin.start()
    try:
        topics = [
            NewTopic(
                d.name,
                partitions or d.partitions,
                replication_factor or d.replication_factor,
                topic_configs={**d.config, **(configs or {}).get(d.name_setting, {})},
            )
            for d in load_topic_definitions(settings)
        ]
        response = await admin.create_topics(topics)
        errors = [(t, code, message) for t, code, message in response.topic_errors if code]
        assert not errors, f"creating topics failed: {errors}"
        names = [t.name for t in topics]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            described = await admin.describe_topics(names)
            if all(t["error_code"] == 0 and t["partitions"] and all(p["leader"] >= 0 for p in t["partitions"]) for t in described):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"topics {names} have no leader after 30 s")
    finally:
        await admin.close()


async def alter_topic_config(settings: Settings, topic: str, config: Mapping[str, str]) -> None:
    """Change a topic's configs (what an operator does to end an outage of their own making)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=30000)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, dict(config))])
    finally:
        await admin.close()


async def committed_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """The consumer group's (``settings.app_id``) committed offset per partition of ``topic``."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=30000)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(settings.app_id)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0}
