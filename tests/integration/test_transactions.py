"""exactly_once against a real broker (engines/transactions.py): a batch's records and offset
commit together or not at all, and a zombie is fenced.

The zombie: worker A still holds a partition's open transaction (records sent, acknowledged,
not committed) when worker B is assigned the partition. B's producer uses the partition's
transactional id, so starting it fences A: A's transaction is aborted — its records are never
seen by a ``read_committed`` consumer, though a ``read_uncommitted`` one sees them — and A's
commit fails (the batch is abandoned), leaving the group's offset where it was. With an id per
worker instead, A's commit would go through next to B's (TxnOffsetCommit v0 carries no
generation): this test then fails.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from harness.kafka import committed_offsets, create_topics
from stream_engine.engines.transactions import PartitionLost, TransactionalEmitter, Turn, _turn
from stream_engine.kafka import TOPIC_SETTINGS, delete_topics, prefixed_settings
from stream_engine.models import Decision
from stream_engine.settings import Settings

pytestmark = pytest.mark.integration


def decision(alert_id: str) -> Decision:
    return Decision(alert_id, "ci_failure", "k", "escalate", None, None, [], "none", 1.0, time.time(), reason="none")


@pytest.fixture
async def eos_topics(stack: Settings, unique: Callable[[str], str]) -> AsyncIterator[Settings]:
    settings = prefixed_settings(stack, unique("txn") + ".").with_overrides(app_id=unique("group"), delivery="exactly_once")
    await create_topics(settings, partitions=1)
    yield settings
    await delete_topics(settings, [getattr(settings, name) for name in TOPIC_SETTINGS])


async def read_all(settings: Settings, isolation_level: str) -> list[str]:
    consumer = AIOKafkaConsumer(
        settings.topic_decisions, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
        isolation_level=isolation_level, enable_auto_commit=False,
    )  # fmt: skip
    await consumer.start()
    try:
        out: list[str] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                out.extend(orjson.loads(r.value)["alert_id"] for r in records)
        return out
    finally:
        await consumer.stop()


async def worker(settings: Settings) -> tuple[TransactionalEmitter, TopicPartition]:
    emitter = TransactionalEmitter(settings)
    await emitter.start()
    tp = TopicPartition(settings.topic_alerts, 0)
    await emitter.assign([tp])
    emitter.resume({tp: None})
    return emitter, tp


async def send_in(turn: Turn, emitter: TransactionalEmitter, ids: list[str]) -> None:
    token = _turn.set(turn)
    try:
        await asyncio.gather(*await emitter.send([decision(i) for i in ids], []))
    finally:
        _turn.reset(token)


async def test_a_batch_commits_its_records_and_offset_in_one_transaction(eos_topics: Settings) -> None:
    emitter, tp = await worker(eos_topics)
    settled: list[tuple[str, bool]] = []

    async def settle(transaction: str, committed: bool) -> None:
        settled.append((transaction, committed))

    emitter.settle = settle
    try:
        turn = emitter.ticket(tp)
        await send_in(turn, emitter, ["c1", "c2"])
        transaction = turn.transaction
        await turn.commit(next_offset=2)
        await turn.close()
    finally:
        await emitter.stop()
    assert await read_all(eos_topics, "read_committed") == ["c1", "c2"]
    assert await committed_offsets(eos_topics, eos_topics.topic_alerts) == {0: 2}
    assert settled == [(transaction, True)]


async def test_a_zombie_is_fenced_by_the_partitions_next_owner(eos_topics: Settings) -> None:
    zombie, tp = await worker(eos_topics)
    settled: list[tuple[str, bool]] = []

    async def settle(transaction: str, committed: bool) -> None:
        settled.append((transaction, committed))

    zombie.settle = settle
    successor: TransactionalEmitter | None = None
    try:
        turn = zombie.ticket(tp)
        await send_in(turn, zombie, ["z1", "z2"])  # acknowledged inside the zombie's open transaction
        transaction = turn.transaction
        assert transaction is not None

        successor, _ = await worker(eos_topics)  # the partition's next owner: same transactional id
        with pytest.raises(PartitionLost):
            await turn.commit(next_offset=2)
        await turn.close()
        assert zombie.partitions[tp].lost, "the zombie's later batches of the partition are abandoned too"

        # The successor publishes the same alerts again, in its own transaction.
        redo = successor.ticket(tp)
        await send_in(redo, successor, ["z1", "z2"])
        await redo.commit(next_offset=2)
        await redo.close()
    finally:
        await zombie.stop()
        if successor is not None:
            await successor.stop()

    assert sorted(await read_all(eos_topics, "read_uncommitted")) == ["z1", "z1", "z2", "z2"], "the zombie's records reached the log"
    assert await read_all(eos_topics, "read_committed") == ["z1", "z2"], "only the successor's transaction committed"
    assert await committed_offsets(eos_topics, eos_topics.topic_alerts) == {0: 2}
    assert settled == [(transaction, False)], "the zombie's rows are dropped, never stored"
