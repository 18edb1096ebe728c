"""The plain-aiokafka stream engine (`stream-engine worker --engine aiokafka`).

Same Pipeline, same Runtime as the faust engine, without faust's per-event machinery
(conductor, channel queues, per-event futures), which caps a do-nothing faust agent at a few
thousand events/s on two cores. The loop:

    getmany(≤ batch_max) ──▶ process_until_done (emit + await acks, sink durable) ──▶ commit

Up to ``batch_concurrency`` batches are in flight. At-least-once holds because a partition's
commit point only passes a batch once that batch *and every batch fetched before it from the
same partition* are done (:class:`OffsetTracker`); a revocation waits for in-flight batches
and commits before giving partitions away; records fetched while a revocation is under way
are dropped uncommitted, so the next owner (maybe us again) reads them from the committed offset.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections import deque
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from stream_engine.batching import batch_context, consumer_offsets_probe, log_dead_letters, process_until_done
from stream_engine.kafka.partitioner import kafka_partitioner
from stream_engine.models import DeadLetter, Decision
from stream_engine.pipeline import RawMessage
from stream_engine.runtime import Runtime
from stream_engine.settings import Settings

log = logging.getLogger(__name__)

# A dead letter carries its original base64-encoded (+1/3): a 1 MiB alert must still fit.
MAX_REQUEST_BYTES = 4 * 1024 * 1024
# On SIGTERM, how long in-flight batches may take to finish before they are cancelled
# (uncommitted, so redelivered). Below tests' and container runtimes' usual 20 s kill grace.
STOP_GRACE_S = 15.0


class KafkaEmitter:
    """Decisions keyed by alert id; dead letters keyed by nothing, reason in a header."""

    def __init__(self, producer: AIOKafkaProducer, decisions_topic: str, dlq_topic: str) -> None:
        self.producer = producer
        self.decisions_topic = decisions_topic
        self.dlq_topic = dlq_topic

    async def send(self, decisions: Sequence[Decision], dead: Sequence[DeadLetter]) -> Awaitable[Any]:
        send = self.producer.send
        acks: list[asyncio.Future[object]] = []
        for d in decisions:
            acks.append(await send(self.decisions_topic, d.to_json(), d.alert_id.encode()))
        for dl in dead:
            acks.append(await send(self.dlq_topic, dl.to_json(), None, headers=[("reason", dl.reason.encode())]))
        return asyncio.gather(*acks)


@dataclass(eq=False, slots=True)
class InFlight:
    """One fetched batch: the last offset it holds per partition, and whether it is done."""

    last: dict[TopicPartition, int]
    done: bool = False


@dataclass(slots=True)
class OffsetTracker:
    """Per partition, in-flight batches in fetch order. A finished batch moves a partition's
    commit point only across the finished prefix, so a commit never passes an unprocessed offset."""

    _queues: dict[TopicPartition, deque[InFlight]] = field(default_factory=dict)

    def started(self, last: dict[TopicPartition, int]) -> InFlight:
        batch = InFlight(last)
        for tp in last:
            self._queues.setdefault(tp, deque()).append(batch)
        return batch

    def finished(self, batch: InFlight) -> dict[TopicPartition, int]:
        """Mark ``batch`` done; return the next offset to commit for partitions that moved."""
        batch.done = True
        ready: dict[TopicPartition, int] = {}
        for tp in batch.last:
            queue = self._queues.get(tp)
            while queue and queue[0].done:
                ready[tp] = queue.popleft().last[tp] + 1
        return ready

    def in_flight(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self._queues.pop(tp, None)


def to_messages(records: Iterable[ConsumerRecord[bytes, bytes]]) -> list[RawMessage]:
    return [RawMessage(r.value, r.partition, r.offset, r.topic) for r in records]


class BatchWorker(ConsumerRebalanceListener):  # type: ignore[misc]
    """One consumer-group member: fetch, process, commit, until :meth:`stop`."""

    def __init__(self, settings: Settings, runtime: Runtime | None = None) -> None:
        self.settings = settings
        self.runtime = runtime or Runtime(settings)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=settings.app_id,
            client_id=f"{settings.app_id}-{self.runtime.worker}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.batch_max,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            session_timeout_ms=int(settings.session_timeout_s * 1000),
            heartbeat_interval_ms=int(settings.heartbeat_interval_s * 1000),
        )
        self.producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=settings.producer_linger_ms,
            max_request_size=MAX_REQUEST_BYTES,
            partitioner=kafka_partitioner,
        )
        self.tracker = OffsetTracker()
        self._slots = asyncio.Semaphore(settings.batch_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()  # set while no batch is in flight
        self._idle.set()
        self._to_commit: dict[TopicPartition, int] = {}
        self._commit_lock = asyncio.Lock()
        self._revoking = False
        self._stopping = asyncio.Event()

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Start everything, fetch until :meth:`stop`, then drain, commit and stop everything."""
        topic = self.settings.topic_alerts
        self.runtime.consumer_offsets = consumer_offsets_probe(lambda: self.consumer, topic)
        await self.producer.start()
        try:
            await self.runtime.start(KafkaEmitter(self.producer, self.settings.topic_decisions, self.settings.topic_dlq))
            self.consumer.subscribe([topic], listener=self)
            await self.consumer.start()
            self.runtime.announce_ready()
            await self._fetch_loop()
            await self._drain(STOP_GRACE_S)
            await self._commit_pending()
        finally:
            await self._shutdown()

    def stop(self) -> None:
        self._stopping.set()

    async def _shutdown(self) -> None:
        for step in (self.consumer.stop, self.producer.stop, self.runtime.stop):
            try:
                await step()
            except Exception:  # one failing step must not keep the others from running
                log.exception("error while stopping (%s)", getattr(step, "__qualname__", step))

    async def _drain(self, timeout: float | None) -> None:
        """Wait for in-flight batches; past ``timeout`` cancel them (their offsets stay uncommitted)."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("cancelled %d unfinished batch(es) at stop; they will be redelivered", len(pending))
            await asyncio.wait(pending)

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
        report = await process_until_done(self.runtime, messages)
        self.runtime.monitor.observe_batch(report, messages)
        if report.dead:
            log_dead_letters(report.dead)
        for tp, offset in self.tracker.finished(batch).items():
            self._to_commit[tp] = max(offset, self._to_commit.get(tp, offset))
        try:
            await self._commit_pending()
        except Exception:
            log.exception("commit after a batch failed", extra=batch_context(messages))

    async def _commit_pending(self) -> None:
        """Commit every finished offset not yet committed. Serialized, so offsets only move forward;
        a commit that arrives while another runs is picked up by the next one."""
        async with self._commit_lock:
            if not self._to_commit:
                return
            pending, self._to_commit = self._to_commit, {}
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
                for tp, offset in pending.items():  # keep them for the next commit, unless overtaken
                    self._to_commit[tp] = max(offset, self._to_commit.get(tp, offset))
                log.warning("commit failed, will retry with the next batch: %s", exc)

    # --- rebalance (ConsumerRebalanceListener) -------------------------------------------------

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._revoking = True
        # Finish what we hold and commit it, so the next owner starts right after it.
        await self._idle.wait()
        await self._commit_pending()
        self.tracker.forget(revoked)
        for tp in revoked:  # a failed commit's leftovers must not land after another owner's
            self._to_commit.pop(tp, None)
        ours = [tp for tp in revoked if tp.topic == self.settings.topic_alerts]
        self.runtime.lru.revoke([tp.partition for tp in ours])
        self.runtime.monitor.partitions_revoked((tp.topic, tp.partition) for tp in ours)
        if ours:
            log.info("partitions revoked: %s", sorted(tp.partition for tp in ours))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        ours = [tp for tp in assigned if tp.topic == self.settings.topic_alerts]
        self.runtime.lru.assign([tp.partition for tp in ours])
        self.runtime.monitor.partitions_assigned((tp.topic, tp.partition) for tp in ours)
        self._revoking = False
        log.info("partitions assigned: %s", sorted(tp.partition for tp in ours))
        self.runtime.announce_ready()


async def serve(settings: Settings) -> int:
    """Run one worker until SIGTERM/SIGINT."""
    worker = BatchWorker(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    await worker.run()
    log.info("worker %s stopped", worker.runtime.worker)
    return 0


def run_worker(settings: Settings) -> int:
    return asyncio.run(serve(settings))
