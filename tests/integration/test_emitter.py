"""The engines' emitter against a real broker whose topic refuses records too large for it
(``max.message.bytes``): a refused record is a problem of its own (``RecordTooLarge``), and the
producer keeps working for every other record, also when the limit changes while it runs.

Without the emitter's own size check the broker refuses the batch, and aiokafka's idempotent
producer then fails every later send to that partition with ``OutOfOrderSequenceNumber``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiokafka.errors import KafkaError

from harness.kafka import alter_topic_config, create_topics
from stream_engine.engines import emitter as emitter_module
from stream_engine.engines.emitter import KafkaEmitter
from stream_engine.kafka import TOPIC_SETTINGS, delete_topics, prefixed_settings
from stream_engine.models import DeadLetter, Decision
from stream_engine.pipeline import RecordTooLarge
from stream_engine.settings import Settings

pytestmark = pytest.mark.integration


def decision(alert_id: str, key_bytes: int = 10) -> Decision:
    return Decision(alert_id, "ci_failure", "k" * key_bytes, "escalate", None, None, [], "none", 1.0, time.time(), reason="none")


async def outcomes(emitter: KafkaEmitter, decisions: list[Decision], dead: list[DeadLetter] | None = None) -> list[Any]:
    acks = await emitter.send(decisions, dead or [])
    return await asyncio.gather(*acks, return_exceptions=True)


@pytest.fixture
async def small_topics(stack: Settings, unique: Callable[[str], str]) -> AsyncIterator[Settings]:
    settings = prefixed_settings(stack, unique("emit") + ".")
    # One partition: every record shares the producer's sequence of that partition.
    await create_topics(settings, partitions=1, configs={"topic_decisions": {"max.message.bytes": "2000"}})
    yield settings
    await delete_topics(settings, [getattr(settings, name) for name in TOPIC_SETTINGS])


async def test_a_record_too_large_for_its_topic_is_refused_alone_and_the_producer_goes_on(small_topics: Settings) -> None:
    emitter = KafkaEmitter(small_topics)
    await emitter.start()
    try:
        assert emitter.limits[small_topics.topic_decisions] == 2000
        first, big, after = await outcomes(emitter, [decision("a"), decision("big", 3000), decision("b")])
        assert not isinstance(first, BaseException) and not isinstance(after, BaseException), (first, after)
        assert isinstance(big, RecordTooLarge) and big.limit == 2000
        # Ten records of ~600 bytes: together larger than the topic takes; batches stay under it.
        assert not any(isinstance(r, BaseException) for r in await outcomes(emitter, [decision(f"m{i}", 500) for i in range(10)]))
        # A dead letter larger than its topic's limit (2 MiB here) stays under the producer's.
        (dl,) = await outcomes(emitter, [], [DeadLetter("schema", "e", "alerts", 0, 1, b"x" * 1000, 0.0)])
        assert not isinstance(dl, BaseException)
    finally:
        await emitter.stop()


async def test_a_limit_lowered_while_running_is_an_outage_then_the_producer_starts_anew(
    small_topics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(emitter_module, "LIMITS_REFRESH_S", 0.0)
    emitter = KafkaEmitter(small_topics)
    await emitter.start()
    try:
        assert not any(isinstance(r, BaseException) for r in await outcomes(emitter, [decision("a", 1500)]))
        await alter_topic_config(small_topics, small_topics.topic_decisions, {"max.message.bytes": "1000"})
        deadline = time.monotonic() + 30
        while True:  # the broker applies the new config within a moment
            (result,) = await outcomes(emitter, [decision("b", 1500)])
            if not isinstance(result, BaseException) and time.monotonic() < deadline:
                continue
            break
        assert isinstance(result, KafkaError), f"the broker refused it ({result!r}): an outage for this attempt"
        (again,) = await outcomes(emitter, [decision("b", 1500)])
        assert isinstance(again, RecordTooLarge) and again.limit == 1000, again
        (small,) = await outcomes(emitter, [decision("c")])
        assert not isinstance(small, BaseException), f"a new producer serves the partition again: {small!r}"
        assert emitter.restarts == 1
    finally:
        await emitter.stop()


async def test_a_limit_raised_while_running_lets_the_refused_record_through(
    small_topics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(emitter_module, "LIMITS_REFRESH_S", 0.0)
    emitter = KafkaEmitter(small_topics)
    await emitter.start()
    try:
        (refused,) = await outcomes(emitter, [decision("big", 3000)])
        assert isinstance(refused, RecordTooLarge)
        await alter_topic_config(small_topics, small_topics.topic_decisions, {"max.message.bytes": "1048588"})
        deadline = time.monotonic() + 30
        while isinstance(result := (await outcomes(emitter, [decision("big", 3000)]))[0], RecordTooLarge):
            assert time.monotonic() < deadline, "the raised limit was never read"
            await asyncio.sleep(0.2)
        assert not isinstance(result, BaseException), result
    finally:
        await emitter.stop()
