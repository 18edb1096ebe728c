"""The default engine: a plain aiokafka consumer group (`stream-engine worker`).

Same Pipeline, same core as the faust engine, without faust's per-event machinery (conductor,
channel queues, per-event futures), which caps a do-nothing faust agent at a few thousand
events/s on two cores. The loop:

    getmany(≤ batch_max) ──▶ EngineCore.process (emit + await acks, rows durable) ──▶ commit

Up to ``batch_concurrency`` batches are in flight. At-least-once holds because a partition's
commit point only passes a batch once that batch *and every batch fetched before it from the
same partition* are done (:class:`~stream_engine.engines.offsets.OffsetTracker`); a revocation
waits for in-flight batches and commits before giving partitions away; records fetched while a
revocation is under way are dropped uncommitted, so the next owner (maybe us again) reads them
from the committed offset.
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

from stream_engine.engines.core import STOP_GRACE_S, EngineCore, batch_context
from stream_engine.engines.offsets import InFlight, OffsetTracker, positions_probe
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
        )
        self.tracker = OffsetTracker()
        self._slots = asyncio.Semaphore(settings.batch_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()  # set while no fetched batch is unfinished
        self._idle.set()
        self._commit_lock = asyncio.Lock()
        self._revoking = False
        self._stopping = asyncio.Event()

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Start everything, fetch until :meth:`stop`, then drain, commit and stop everything."""
        await self.core.start()
        try:
            self.consumer.subscribe([self.settings.topic_alerts], listener=self)
            await self.consumer.start()
            await self._fetch_loop()
            if not await self.core.drain(STOP_GRACE_S):
                for task in self._tasks:
                    task.cancel()
                log.warning("cancelled %d unfinished batch(es) at stop; they will be redelivered", len(self._tasks))
            await asyncio.gather(*self._tasks, return_exceptions=True)  # their commits
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
                slot = asyncio.ensure_future(self._slots.acquire())
                await asyncio.wait({slot, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not slot.done():
                    slot.cancel()
                    break
                try:
                    fetched = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=self.settings.batch_max)
                except KafkaError as exc:  # aiokafka reconnects by itself; don't spin meanwhile
                    self._slots.release()
                    log.warning("fetch failed: %s", exc)
                    await asyncio.sleep(0.5)
                    continue
                if not fetched or self._revoking:
                    # While partitions are being revoked, records are dropped uncommitted: the
                    # next owner reads them again from the committed offset.
                    self._slots.release()
                    continue
                self._start_batch(fetched)
        finally:
            stopping.cancel()

    def _start_batch(self, fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        # No await between the fetch and here: a revocation sees this batch as in flight.
        batch = self.tracker.started({tp: records[-1].offset for tp, records in fetched.items()})
        messages = [m for records in fetched.values() for m in to_messages(records)]
        task = asyncio.create_task(self._process(batch, messages))
        self._tasks.add(task)
        self._idle.clear()
        task.add_done_callback(self._batch_ended)

    def _batch_ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not self._tasks:
            self._idle.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("batch task failed", exc_info=task.exception())

    async def _process(self, batch: InFlight, messages: list[RawMessage]) -> None:
        await self.core.process(messages)
        self.tracker.finished(batch)
        try:
            await self._commit_pending()
        except Exception:
            log.exception("commit after a batch failed", extra=batch_context(messages))

    async def _commit_pending(self) -> None:
        """Commit every finished offset not yet committed. Serialized, so offsets only move forward;
        a commit that arrives while another runs is picked up by the next one."""
        async with self._commit_lock:
            pending = self.tracker.take()
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
        self._revoking = True
        # Finish what we hold and commit it, so the next owner starts right after it.
        await self._idle.wait()
        await self._commit_pending()
        self.tracker.forget(revoked)
        self.core.partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._revoking = False
        self.core.partitions_assigned(assigned)


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
