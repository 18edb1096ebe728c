"""Plain aiokafka publishing and collecting, as a user's service would do it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream_engine.keys import message_key


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
