"""Exactly-once delivery (``delivery=exactly_once``, aiokafka engine): one Kafka transaction per
batch and partition of the alerts topic.

    fetch ──▶ EngineCore splits the batch by partition; per partition, in fetch order (a Turn):
        begin ──▶ decisions and dead letters sent in the transaction ──▶ rows journaled, held
        (sink.write(..., transaction=T)) ──▶ the partition's next offset sent to the transaction
        ──▶ commit ──▶ sink.settle(T, committed)

* **Fencing: one transactional producer per partition**, id ``{app_id}.{topic_alerts}.{partition}``,
  the same on every worker. Whoever is assigned a partition starts a producer with its id before
  reading the committed offset; that fences the partition's previous producer (a worker that
  crashed, or a zombie that has not noticed yet that it lost the partition): the broker aborts its
  open transaction and refuses its later sends and commits. An id per worker cannot do that here:
  aiokafka 0.14 sends ``TxnOffsetCommit`` v0, without the group generation of KIP-447, so the
  broker would accept a zombie's commit of a batch the new owner commits too.
* **Turns**: a partition's transactions follow fetch order, one at a time (a producer has one
  transaction at a time). A transaction holds one completed batch of one partition, so the offset
  it commits follows the last committed one; batches of other partitions, and each batch's
  decoding and first decisions, run concurrently. A batch opens its transaction (waits for its
  turn) at its first send.
* **Failure**: a send or a commit that fails breaks the transaction (:class:`TransactionBroken`,
  an outage for the engine's retry loop); the batch's next pass aborts it — its records never
  reach a ``read_committed`` consumer, its rows are dropped by ``settle`` — and publishes and logs
  the same decisions again in a new one. A producer that is fenced, or broken for good, means
  another worker took the partition: every batch of that partition in flight is abandoned
  (:class:`PartitionLost`) and the engine, if the partition is still its own, starts a new
  producer (fencing in turn) and reads again from the committed offset.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import IllegalOperation, KafkaError
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from stream_engine.engines.emitter import MAX_REQUEST_BYTES, KafkaEmitter
from stream_engine.kafka.partitioner import kafka_partitioner

if TYPE_CHECKING:
    from stream_engine.models import DeadLetter, Decision
    from stream_engine.pipeline import BatchProgress
    from stream_engine.settings import Settings
    from stream_engine.sinks import LogRow

log = logging.getLogger(__name__)

SETTLE_BACKOFF_MAX_S = 5.0
# The offset commit's metadata names the partition's last transactions that committed (newest
# first): what a journal replay asks when a transaction's settle marker was lost (see
# :func:`committed_transactions`). 64 x 17 bytes, well under the broker's offset.metadata.max.bytes (4096).
RECENT_TRANSACTIONS = 64
# At a revocation or stop, how long a commit already under way may still take.
COMMIT_UNDER_WAY_S = 30.0

Settle = Callable[[str, bool], Awaitable[None]]
Committed = Callable[[TopicPartition], Awaitable[int | None]]

_turn: ContextVar[Turn | None] = ContextVar("stream_engine_transaction_turn", default=None)


def current_turn() -> Turn | None:
    """The turn of the batch this task runs (None: at-least-once, or outside a batch)."""
    return _turn.get()


def transaction_of_this_batch() -> str | None:
    """The open transaction of the batch this task runs, if any (for its ClickHouse rows)."""
    turn = _turn.get()
    return turn.transaction if turn is not None else None


def transactional_id(group_id: str, tp: TopicPartition) -> str:
    """The same on every worker: whoever owns the partition fences its previous owner."""
    return f"{group_id}.{tp.topic}.{tp.partition}"


class TransactionBroken(KafkaError):
    """The batch's transaction failed: the next pass aborts it and redoes it in a new one."""


class PartitionLost(BaseException):
    """The partition's producer was fenced (or the partition revoked): abandon the batch, commit
    nothing. A BaseException, like cancellation: no retry loop of the engine may catch it."""


def create_transactional_producer(settings: Settings, tid: str, batch_bytes: int) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=f"{settings.app_id}-{tid}",
        transactional_id=tid,
        acks="all",
        linger_ms=settings.producer_linger_ms,
        max_request_size=MAX_REQUEST_BYTES,
        max_batch_size=batch_bytes,
        partitioner=kafka_partitioner,
    )


class PartitionProducer:
    """One partition's transactional producer and the queue of its batches' turns."""

    def __init__(self, tp: TopicPartition, tid: str, make: Callable[[str], AIOKafkaProducer]) -> None:
        self.tp = tp
        self.tid = tid
        self._make = make
        self.producer: AIOKafkaProducer | None = None
        self.generation = 0
        self.lost = True  # until started; then on fencing or revocation
        self.recent: deque[str] = deque(maxlen=RECENT_TRANSACTIONS)  # committed transactions, newest first
        self._tail: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """A new producer (InitProducerId fences the id's previous one and aborts its open
        transaction). The turns taken before are stale; :meth:`resume` accepts new ones."""
        self.lost = True
        producer = self._make(self.tid)
        await producer.start()
        old, self.producer = self.producer, producer
        if old is not None:
            await stop_quietly(old)

    def resume(self, metadata: str | None) -> None:
        """Accept new turns; ``metadata``: that of the partition's committed offset (its recent transactions)."""
        self.recent = deque(recent_transactions(metadata), maxlen=RECENT_TRANSACTIONS)
        self.generation += 1
        self.lost = False

    async def stop(self) -> None:
        self.lost = True
        if self.producer is not None:
            await stop_quietly(self.producer)

    def fatal(self) -> bool:
        producer = self.producer
        return producer is None or producer._txn_manager.is_fatal_error()

    def ticket(self, group_id: str, settle: Settle, committed: Committed) -> Turn:
        previous, self._tail = self._tail, asyncio.get_running_loop().create_future()
        return Turn(self, previous, self._tail, -1 if self.lost else self.generation, group_id, settle, committed)


class Turn:
    """One batch of one partition in its partition's transaction order."""

    def __init__(
        self,
        owner: PartitionProducer,
        previous: asyncio.Future[None] | None,
        done: asyncio.Future[None],
        generation: int,
        group_id: str,
        settle: Settle,
        committed: Committed,
    ) -> None:
        self.owner = owner
        self.tp = owner.tp
        self.transaction: str | None = None  # the open transaction (also the sink's name for it)
        self.broken: BaseException | None = None
        self.transactions = 0  # opened, over the batch's passes
        self._previous = previous
        self._done = done
        self._generation = generation
        self._group_id = group_id
        self._settle = settle
        self._committed = committed
        self._committing: asyncio.Task[None] | None = None
        self.on_lost: Callable[[TopicPartition], None] | None = None

    # --- the batch's side -------------------------------------------------------------------

    async def open(self) -> AIOKafkaProducer:
        """The partition's producer with this batch's transaction begun; the first call waits until
        the partition's earlier batches are committed or abandoned."""
        if self.transaction is None:
            if self._previous is not None:
                await asyncio.shield(self._previous)  # cancelling this batch must not cancel the one before
                self._previous = None
            self._check()
            producer = self.owner.producer
            assert producer is not None
            try:
                await producer.begin_transaction()
            except AssertionError as exc:  # aiokafka asserts the state machine: a fatal state
                self._lose(exc)
            self.transactions += 1
            self.transaction = f"{self.owner.tid}:{uuid.uuid4().hex[:16]}"
        assert self.owner.producer is not None
        return self.owner.producer

    def failed(self, exc: BaseException) -> None:
        """A record of this transaction was not acknowledged: the transaction cannot commit."""
        if self.broken is None:
            self.broken = exc

    async def ready(self, progress: BatchProgress) -> None:
        """Before each pass of the batch: a broken transaction is aborted and everything it carried
        (records acknowledged, rows written) is to be done again in a new one."""
        self._check()
        if self.broken is not None:
            log.warning("transaction of %s broken (%r): aborting it; the batch is published again", self.tp, self.broken)
            await self._abort()
            progress.acked.clear()
            progress.logged.clear()
            self.broken = None

    async def commit(self, next_offset: int) -> None:
        """Commit the batch's records with ``next_offset`` (the partition's next offset to consume),
        then settle its rows. Raises TransactionBroken if it did not commit (retry the batch)."""
        await self.open()  # a batch without records commits its offset all the same
        self._committing = asyncio.ensure_future(self._commit(next_offset))
        try:
            await asyncio.shield(self._committing)  # a cancelled batch lets a commit under way finish (close waits)
        finally:
            if self._committing.done():
                self._committing = None

    async def close(self) -> None:
        """After the batch (done, abandoned or cancelled): a commit under way may finish, an open
        transaction is aborted, and the partition's next batch gets its turn."""
        try:
            if self._committing is not None:
                await asyncio.wait({self._committing}, timeout=COMMIT_UNDER_WAY_S)
            if self.transaction is not None:
                await asyncio.wait_for(self._abort(), COMMIT_UNDER_WAY_S)
        except BaseException as exc:  # PartitionLost, a timeout, a second cancellation: the turn passes on anyway
            log.warning("closing the transaction of %s: %r", self.tp, exc)
        finally:
            if not self._done.done():
                self._done.set_result(None)

    # --- inside -----------------------------------------------------------------------------

    def _check(self) -> None:
        if self._generation != self.owner.generation or self.owner.lost:
            raise PartitionLost(f"{self.tp}: the partition was fenced or revoked since this batch was fetched")

    def _lose(self, exc: BaseException) -> None:
        """The producer is fenced or broken for good: this partition's batches in flight are abandoned."""
        if not self.owner.lost:
            self.owner.lost = True
            log.warning("the transactional producer of %s is fenced or broken (%r): abandoning its batches in flight", self.tp, exc)
            if self.on_lost is not None:
                self.on_lost(self.tp)
        raise PartitionLost(f"{self.tp}: {exc!r}") from exc

    async def _commit(self, next_offset: int) -> None:
        producer = self.owner.producer
        transaction = self.transaction
        assert producer is not None and transaction is not None
        if self.broken is not None:
            raise TransactionBroken(f"a record of the transaction failed: {self.broken!r}")
        name = short_name(transaction)
        metadata = " ".join([name, *list(self.owner.recent)[: RECENT_TRANSACTIONS - 1]])
        try:
            await producer.send_offsets_to_transaction({self.tp: OffsetAndMetadata(next_offset, metadata)}, self._group_id)
            await producer.commit_transaction()
        except (KafkaError, IllegalOperation, AssertionError) as exc:
            self.failed(exc)
            if self.owner.fatal():
                # Fenced while committing: the commit may have completed before the fencing (the new
                # owner's InitProducerId completes a prepared commit first). The group's offset tells.
                self.transaction = None
                committed = await self._committed(self.tp)
                await self._settle_until_done(transaction, committed is not None and committed >= next_offset)
                self._lose(exc)
            raise TransactionBroken(f"commit of the transaction of {self.tp} failed: {exc!r}") from exc
        self.transaction = None
        self.owner.recent.appendleft(name)
        await self._settle_until_done(transaction, True)

    async def _abort(self) -> None:
        transaction, self.transaction = self.transaction, None
        if transaction is None:
            return
        producer = self.owner.producer
        if not self.owner.fatal() and producer is not None:
            try:
                await producer.abort_transaction()
            except (KafkaError, AssertionError) as exc:
                if not self.owner.fatal():
                    self.transaction = transaction  # try again with the next pass
                    raise TransactionBroken(f"abort of the transaction of {self.tp} failed: {exc!r}") from exc
        # A fenced producer's open transaction was aborted by the producer that fenced it.
        await self._settle_until_done(transaction, False)
        if self.owner.fatal():
            self._lose(self.broken or ConnectionError("producer fenced"))

    async def _settle_until_done(self, transaction: str, committed: bool) -> None:
        delay = 0.1
        while True:
            try:
                await self._settle(transaction, committed)
                return
            except Exception:
                log.exception("settling transaction %s (committed=%s) failed; retrying in %.1fs", transaction, committed, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, SETTLE_BACKOFF_MAX_S)


class TransactionalEmitter(KafkaEmitter):
    """The emitter of ``delivery=exactly_once``: each batch's records go through its partition's
    producer, in its turn's transaction (:func:`current_turn`)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.partitions: dict[TopicPartition, PartitionProducer] = {}
        self.settle: Settle = _settle_nothing
        self.committed: Committed = _nothing_committed
        self.on_lost: Callable[[TopicPartition], None] | None = None

    async def start(self) -> None:
        await self._read_limits()  # the producers come with the partitions (assign)

    async def stop(self) -> None:
        await self.revoke(list(self.partitions))
        await super().stop()

    # --- partitions -----------------------------------------------------------------------------

    async def assign(self, tps: Iterable[TopicPartition]) -> None:
        """Start the producers of newly assigned partitions: fences their previous owners. Call it
        before reading the partitions' committed offsets; then :meth:`resume` them."""
        new = [tp for tp in tps if tp not in self.partitions]
        for tp in new:
            self.partitions[tp] = PartitionProducer(tp, transactional_id(self.settings.app_id, tp), self._make)
        await asyncio.gather(*(self.partitions[tp].start() for tp in new))

    async def restart(self, tp: TopicPartition) -> None:
        """After a fencing, while the partition is still ours: a new producer (fencing in turn)."""
        await self.partitions[tp].start()

    def resume(self, committed: Mapping[TopicPartition, str | None]) -> None:
        """Accept turns again for these partitions, given their committed offsets' metadata."""
        for tp, metadata in committed.items():
            if tp in self.partitions:
                self.partitions[tp].resume(metadata)

    async def revoke(self, tps: Iterable[TopicPartition]) -> None:
        gone = [self.partitions.pop(tp) for tp in list(tps) if tp in self.partitions]
        await asyncio.gather(*(p.stop() for p in gone))

    def ticket(self, tp: TopicPartition) -> Turn:
        """The next turn of ``tp``; take them in fetch order (stale if the partition is not ours)."""
        owner = self.partitions.get(tp)
        if owner is None:  # revoked since the fetch: a turn that can only be abandoned
            owner = PartitionProducer(tp, "", self._make)
        turn = owner.ticket(self.settings.app_id, self.settle, self.committed)
        turn.on_lost = self.on_lost
        return turn

    def _make(self, tid: str) -> AIOKafkaProducer:
        smallest = min(self.limits.values(), default=16384)
        return create_transactional_producer(self.settings, tid, min(16384, smallest))

    # --- sending ----------------------------------------------------------------------------------

    async def send(self, decisions: Sequence[Decision], dead: Sequence[DeadLetter]) -> list[asyncio.Future[Any]]:
        turn = current_turn()
        if turn is None:
            raise RuntimeError("exactly_once: records are sent only inside a batch's transaction turn")
        producer = await turn.open()
        if turn.broken is not None:
            raise TransactionBroken(f"the transaction of {turn.tp} is broken: {turn.broken!r}")
        acks = []
        try:
            for d in decisions:
                acks.append(await self._send(self.decisions_topic, d.to_json(), d.alert_id.encode(), None, producer, turn.failed))
            for dl in dead:
                headers = [("reason", dl.reason.encode())]
                acks.append(await self._send(self.dlq_topic, dl.to_json(), None, headers, producer, turn.failed))
        except IllegalOperation as exc:  # the transaction left IN_TRANSACTION (an error came back meanwhile)
            turn.failed(exc)
            raise TransactionBroken(f"the transaction of {turn.tp} is no longer open: {exc}") from exc
        return acks


def short_name(transaction: str) -> str:
    """The unique part of a transaction's name (after the transactional id)."""
    return transaction.rpartition(":")[2]


def recent_transactions(metadata: str | None) -> list[str]:
    return (metadata or "").split()[:RECENT_TRANSACTIONS]


def committed_transactions(
    offsets: Callable[[Sequence[TopicPartition]], Awaitable[Mapping[TopicPartition, OffsetAndMetadata]]],
) -> Callable[[Sequence[LogRow]], Awaitable[Sequence[LogRow]]]:
    """The ClickHouse sink's replay filter for rows of a transaction whose settle marker a crash
    lost: kept iff their transaction (the rows' ``attempt``) is among those the consumer group's
    committed offset of their partition names. Exact while the partition has committed fewer than
    :data:`RECENT_TRANSACTIONS` transactions since; an older one is taken for aborted (a worker
    dies far more often with a transaction open than in the instant between a commit and its
    marker). Rows without a source offset (API) are kept."""

    async def keep(rows: Sequence[LogRow]) -> Sequence[LogRow]:
        tps = sorted({TopicPartition(r.topic, r.partition) for r in rows if r.origin == "stream"})
        committed = await offsets(tps) if tps else {}
        named = {tp: set(recent_transactions(m.metadata)) for tp, m in committed.items()}
        return [
            r for r in rows
            if r.origin != "stream" or short_name(r.attempt) in named.get(TopicPartition(r.topic, r.partition), ())
        ]  # fmt: skip

    return keep


def group_offsets(settings: Settings) -> Callable[[Sequence[TopicPartition]], Awaitable[dict[TopicPartition, OffsetAndMetadata]]]:
    """The workers' consumer group's committed offsets (with metadata), read with an admin client."""

    async def read(tps: Sequence[TopicPartition]) -> dict[TopicPartition, OffsetAndMetadata]:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10000)
        await admin.start()
        try:
            return await admin.list_consumer_group_offsets(settings.app_id, partitions=list(tps))
        finally:
            await admin.close()

    return read


def split_by_partition(messages: Sequence[Any]) -> dict[TopicPartition, list[Any]]:
    """The batch's messages per (topic, partition), in order."""
    parts: dict[TopicPartition, list[Any]] = {}
    for m in messages:
        parts.setdefault(TopicPartition(m.topic, m.partition), []).append(m)
    return parts


async def stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await producer.stop()
    except Exception as exc:  # a fenced producer's pending sends fail; nothing to keep
        log.debug("stopping a transactional producer: %r", exc)


async def _settle_nothing(transaction: str, committed: bool) -> None:
    return None


async def _nothing_committed(tp: TopicPartition) -> int | None:
    return None
