"""The default engine: a plain aiokafka consumer group (`stream-engine worker`).

Same Pipeline, same core as the faust engine, without faust's per-event machinery (conductor,
channel queues, per-event futures), which caps a do-nothing faust agent at a few thousand
events/s on two cores. The loop:

    slot ──▶ getmany(≤ batch_max) ──▶ BatchRunner: EngineCore.process (emit + await acks, rows durable)
                                                   ──▶ commit what the OffsetTracker released

Up to ``batch_concurrency`` batches are in flight (engines/runner.py). At-least-once holds because
a partition's commit point only passes a batch once that batch *and every batch fetched before it
from the same partition* are done; a revocation waits ``revoke_grace_s`` for the batches in
flight, abandons the rest uncommitted and commits what is done before giving partitions away;
records fetched while a revocation is under way are dropped uncommitted, so the next owner (maybe
us again) reads them from the committed offset.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from stream_engine.engines.core import STOP_GRACE_S, EngineCore
from stream_engine.engines.offsets import positions_probe
from stream_engine.engines.runner import BatchRunner
from stream_engine.engines.transactions import TransactionalEmitter
from stream_engine.pipeline import RawMessage
from stream_engine.runtime import Runtime
from stream_engine.settings import Settings

log = logging.getLogger(__name__)


def to_messages(records: Iterable[ConsumerRecord[bytes, bytes]]) -> list[RawMessage]:
    return [RawMessage(r.value, r.partition, r.offset, r.topic) for r in records]


class AiokafkaEngine(ConsumerRebalanceListener):  # type: ignore[misc]
    """One consumer-group member: fetch, process, commit, until :meth:`stop`."""

    def __init__(self, settings: Settings, runtime: Runtime | None = None) -> None:
        self.settings = settings
        self.core = EngineCore(settings, runtime, positions_probe(lambda: self.consumer, settings.topic_alerts))
        self.exactly_once = settings.delivery == "exactly_once"
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=settings.app_id,
            client_id=f"{settings.app_id}-{self.core.runtime.worker_name}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.batch_max,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            session_timeout_ms=int(settings.session_timeout_s * 1000),
            heartbeat_interval_ms=int(settings.heartbeat_interval_s * 1000),
            # exactly_once: alerts published in transactions count once they commit (and never if aborted)
            isolation_level="read_committed" if self.exactly_once else "read_uncommitted",
        )
        self.runner = BatchRunner(self.core, settings.batch_concurrency, settings.revoke_grace_s, self._commit_pending)
        self.tracker = self.runner.tracker
        self._commit_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._recover_lock = asyncio.Lock()
        self._recovering: set[asyncio.Task[None]] = set()

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Start everything, fetch until :meth:`stop`, then drain, commit and stop everything."""
        await self.core.start()
        if isinstance(self.core.emitter, TransactionalEmitter):
            self.core.emitter.on_lost = self._partition_lost
            self.core.emitter.committed = self.consumer.committed
        try:
            self.consumer.subscribe([self.settings.topic_alerts], listener=self)
            await self.consumer.start()
            await self._fetch_loop()
            if not await self.runner.drain(STOP_GRACE_S):
                cancelled = await self.runner.cancel()
                log.warning("cancelled %d unfinished batch(es) at stop; they will be redelivered", cancelled)
            await self._commit_pending()
        finally:
            try:
                await self.consumer.stop()
            except Exception:  # the core must still close the sink and the producer
                log.exception("error while stopping the consumer")
            await self.core.stop()

    def stop(self) -> None:
        self._stopping.set()

    # --- the loop ----------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        timeout_ms = max(1, int(self.settings.batch_within_s * 1000))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                slot = asyncio.ensure_future(self.runner.slot())
                await asyncio.wait({slot, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not slot.done():
                    slot.cancel()
                    break
                try:
                    fetched = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=self.settings.batch_max)
                except KafkaError as exc:  # aiokafka reconnects by itself; don't spin meanwhile
                    self.runner.release()
                    log.warning("fetch failed: %s", exc)
                    await asyncio.sleep(0.5)
                    continue
                # No await from the fetch to here: a revocation sees this batch in flight. While
                # partitions are being revoked, the runner drops it uncommitted.
                last = {tp: records[-1].offset for tp, records in fetched.items()}
                self.runner.start(last, [m for records in fetched.values() for m in to_messages(records)])
        finally:
            stopping.cancel()

    async def _commit_pending(self) -> None:
        """Commit every finished offset not yet committed. Serialized, so offsets only move forward;
        a commit that arrives while another runs is picked up by the next one. (exactly_once: each
        batch committed its offsets in its own transactions.)"""
        async with self._commit_lock:
            pending = self.tracker.take()
            if self.exactly_once:
                return
            assigned = self.consumer.assignment()
            offsets = {tp: OffsetAndMetadata(offset, "") for tp, offset in pending.items() if tp in assigned}
            if not offsets:
                return
            try:
                await self.consumer.commit(offsets)
            except (CommitFailedError, IllegalStateError) as exc:
                # The group moved on: those partitions are (or will be) re-read by their new owner.
                log.warning("commit of %d partition(s) dropped: %s", len(offsets), exc)
            except KafkaError as exc:
                self.tracker.restore(pending)  # for the next commit, unless overtaken
                log.warning("commit failed, will retry with the next batch: %s", exc)

    # --- rebalance (ConsumerRebalanceListener) -------------------------------------------------

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Finish what we hold (bounded) and commit it, so the next owner starts right after it.
        kept = await self.runner.revoke(revoked, self._commit_pending)
        if kept:
            await self._seek_to_committed(kept)
        if isinstance(self.core.emitter, TransactionalEmitter):
            await self.core.emitter.revoke(revoked)
        self.core.partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        emitter = self.core.emitter
        if isinstance(emitter, TransactionalEmitter):
            # The partitions' producers first: they fence the previous owners, whose open
            # transactions (offsets included) are aborted; only then is the committed offset final.
            # Paused meanwhile, so no fetch reads from a position taken before the fencing.
            ours = [tp for tp in assigned if tp.topic == self.settings.topic_alerts]
            self.consumer.pause(*ours)
            try:
                await emitter.assign(ours)
                emitter.resume(await self._seek_to_committed(ours))
            finally:
                self.consumer.resume(*ours)
        self.runner.assigned()
        self.core.partitions_assigned(assigned)

    async def _seek_to_committed(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, str | None]:
        """Fetch from the committed offset (from the beginning if none: auto_offset_reset earliest).
        Returns the committed offsets' metadata (exactly_once: the partition's recent transactions)."""
        tps = list(tps)
        if not tps:
            return {}
        committed = await self.consumer._coordinator.fetch_committed_offsets(tps)  # offset and metadata in one call
        never = [tp for tp in tps if tp not in committed or committed[tp].offset < 0]
        beginning = await self.consumer.beginning_offsets(never) if never else {}
        metadata: dict[TopicPartition, str | None] = {}
        for tp in tps:
            found = committed.get(tp)
            if tp in beginning:
                self.consumer.seek(tp, beginning[tp])
                metadata[tp] = None
            else:
                assert found is not None
                self.consumer.seek(tp, found.offset)
                metadata[tp] = found.metadata
        return metadata

    def _partition_lost(self, tp: TopicPartition) -> None:
        """exactly_once: the partition's producer was fenced; if the partition is still ours (say,
        its transaction timed out), a new producer fences in turn and we read from the committed offset."""
        task = asyncio.ensure_future(self._recover(tp))
        self._recovering.add(task)
        task.add_done_callback(self._recovering.discard)

    async def _recover(self, tp: TopicPartition) -> None:
        emitter = self.core.emitter
        assert isinstance(emitter, TransactionalEmitter)
        async with self._recover_lock:
            backoff = 0.5
            while tp in self.consumer.assignment() and tp in emitter.partitions and not self._stopping.is_set():
                try:
                    await emitter.restart(tp)
                    emitter.resume(await self._seek_to_committed([tp]))
                    log.warning("partition %s: new transactional producer, reading again from the committed offset", tp)
                    return
                except Exception as exc:
                    log.warning("partition %s: restarting its transactional producer failed (%r); retrying", tp, exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)


def serve(settings: Settings) -> int:
    """Run one worker until SIGTERM/SIGINT."""
    return asyncio.run(_serve(settings))


async def _serve(settings: Settings) -> int:
    engine = AiokafkaEngine(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, engine.stop)
    await engine.run()
    log.info("worker %s stopped", engine.core.runtime.worker_name)
    return 0
