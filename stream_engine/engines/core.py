"""What both stream engines share: one micro-batch's step, one producer, the rebalance hooks,
the worker's start and its drain on stop.

    engine fetches a batch ──▶ EngineCore.process: Pipeline.process until it succeeds
                               (outages retried, a poison message isolated) ──▶ observed, logged
                           ──▶ the engine commits what is done (engines/offsets.py)

* ONE Kafka producer (aiokafka's, acks=all, idempotent, Kafka's partitioner in C) and ONE
  :class:`KafkaEmitter` over it, for both engines. (faust's own ``app.producer`` is not used: it
  wraps broker errors in ``ProducerSendError``, which an outage check cannot tell apart.)
* Rebalance hooks: a revoked partition of the alerts topic drops its LRU and its progress
  (another worker owns its keys now); an assigned one is recorded and may make the worker ready.
* Start: producer, runtime (sink, invalidation listener, pipeline), then the worker's HTTP API.
  Stop: batches in flight get :data:`STOP_GRACE_S` to finish (their offsets then commit), then
  the API, the runtime and the producer close.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Awaitable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from stream_engine.kafka.partitioner import kafka_partitioner
from stream_engine.models import DeadLetter, Decision, StageTimes
from stream_engine.pipeline import BatchReport, RawMessage, emit
from stream_engine.runtime import Runtime
from stream_engine.sinks.clickhouse.sink import SinkStopped

if TYPE_CHECKING:
    from stream_engine.api import ApiServer
    from stream_engine.monitor import PositionsProbe
    from stream_engine.settings import Settings

log = logging.getLogger(__name__)

# Outages: wait them out, however long. Anything else is a fault of some message in the batch.
INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (KafkaError, OSError, TimeoutError, SinkStopped)
ATTEMPTS_BEFORE_ISOLATING = 3
# A dead letter carries its original base64-encoded (+1/3): a 1 MiB alert must still fit.
MAX_REQUEST_BYTES = 4 * 1024 * 1024
# On SIGTERM, how long in-flight batches may take to finish before they are cancelled
# (uncommitted, so redelivered). Below tests' and container runtimes' usual 20 s kill grace.
STOP_GRACE_S = 15.0


def create_producer(settings: Settings) -> AIOKafkaProducer:
    """The worker's one producer (call it inside the event loop: aiokafka binds to it)."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=settings.producer_linger_ms,
        max_request_size=MAX_REQUEST_BYTES,
        partitioner=kafka_partitioner,
    )


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


class EngineCore:
    """The engine-independent half of a worker; an engine feeds it batches and rebalances."""

    def __init__(self, settings: Settings, runtime: Runtime | None = None, positions: PositionsProbe | None = None) -> None:
        self.settings = settings
        self.runtime = runtime or Runtime(settings)
        self.runtime.consumer_offsets = positions
        self.producer: AIOKafkaProducer | None = None
        self.api: ApiServer | None = None
        self._in_flight = 0  # batches inside process()
        self._idle = asyncio.Event()
        self._idle.set()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.producer = create_producer(self.settings)
        await self.producer.start()
        await self.runtime.start(KafkaEmitter(self.producer, self.settings.topic_decisions, self.settings.topic_dlq))
        await self._start_api()
        self.runtime.announce_ready()

    async def stop(self) -> None:
        """Drain (batches still running past the grace period are left to the engine), then close
        everything; one failing step must not keep the others from running."""
        if not await self.drain(STOP_GRACE_S):
            log.warning("%d batch(es) still in flight after %.0f s; stopping anyway", self._in_flight, STOP_GRACE_S)
        self.runtime.started = False  # the API answers 503 from here on
        steps = [self.api.stop] if self.api is not None else []
        steps.append(self.runtime.stop)
        if self.producer is not None:
            steps.append(self.producer.stop)
        for step in steps:
            try:
                await step()
            except Exception:
                log.exception("error while stopping (%s)", getattr(step, "__qualname__", step))

    async def drain(self, timeout: float) -> bool:
        """Wait until no batch is inside :meth:`process`; False if some still are after
        ``timeout`` (cancelling them is safe: their offsets are not committed, so they are
        redelivered)."""
        await asyncio.sleep(0)  # a batch handed to a new task just now enters process() first
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _start_api(self) -> None:
        """The API is a side door: a taken port is logged loudly but does not stop the stream
        (docker-compose's healthcheck on the port then reports the worker unhealthy)."""
        from stream_engine.api import ApiServer

        api = ApiServer(self.runtime)
        try:
            await api.start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            log.error(
                "api disabled: cannot bind %s:%s (%s)", self.settings.api_host, self.settings.api_port, exc.strerror
            )
            return
        self.api = api

    # --- one batch ---------------------------------------------------------------------------

    async def process(self, messages: list[RawMessage]) -> BatchReport:
        """One micro-batch, until it is done (decisions and dead letters acknowledged by the
        broker, log rows durable): the engine may then commit its offsets."""
        self._in_flight += 1
        self._idle.clear()
        try:
            report = await self._until_done(messages)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
        self.runtime.monitor.observe_batch(report, messages)
        if report.dead:
            log_dead_letters(report.dead)
        return report

    async def _until_done(self, messages: list[RawMessage]) -> BatchReport:
        """A failed batch is retried, never skipped: its offsets stay uncommitted meanwhile, so
        nothing is committed past it. Retries may duplicate decisions, which at-least-once allows
        and ClickHouse collapses. Outages are retried forever; after a few failures that are not
        an outage, the batch is split to isolate the poison message, which goes to the dead-letter
        topic (reason ``processing_error``) instead of stalling its partition for good."""
        pipeline = self.runtime.pipeline
        assert pipeline is not None, "process() before start()"
        delay = 0.1
        attempts = 0
        while True:
            try:
                return await pipeline.process(messages)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.runtime.monitor.batch_failed(exc)
                attempts += 1
                if not isinstance(exc, INFRASTRUCTURE_ERRORS) and attempts >= ATTEMPTS_BEFORE_ISOLATING:
                    return await self._isolate_poison(messages, exc)
                log.exception("batch of %d failed; retrying in %.1fs", len(messages), delay, extra=batch_context(messages))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _isolate_poison(self, messages: list[RawMessage], exc: Exception) -> BatchReport:
        pipeline = self.runtime.pipeline
        assert pipeline is not None
        if len(messages) == 1:
            log.error("message failed %d times: dead-lettered", ATTEMPTS_BEFORE_ISOLATING, extra=batch_context(messages))
            dead = pipeline.dead_letter(messages[0], "processing_error", f"{type(exc).__name__}: {exc}"[:1000], time.time())
            await emit(pipeline.emitter, [], [dead])
            return BatchReport([], [dead], StageTimes())
        log.error("batch of %d keeps failing (%r): processing its messages one by one", len(messages), exc)
        reports = [await self._until_done([m]) for m in messages]
        merged = BatchReport([d for r in reports for d in r.decisions], [d for r in reports for d in r.dead], StageTimes())
        for r in reports:
            for tier, n in r.tiers.items():
                merged.tiers[tier] = merged.tiers.get(tier, 0) + n
        return merged

    # --- rebalance ---------------------------------------------------------------------------

    def partitions_assigned(self, assigned: Iterable[Any]) -> None:
        """``assigned``: the consumer's new assignment (aiokafka's or faust's TopicPartitions)."""
        ours = self._alerts_partitions(assigned)
        self.runtime.lru.assign(p for _, p in ours)
        self.runtime.monitor.partitions_assigned(ours)
        log.info("partitions assigned: %s", [p for _, p in ours])
        self.runtime.announce_ready()

    def partitions_revoked(self, revoked: Iterable[Any]) -> None:
        ours = self._alerts_partitions(revoked)
        self.runtime.lru.revoke(p for _, p in ours)
        self.runtime.monitor.partitions_revoked(ours)
        if ours:
            log.info("partitions revoked: %s (their LRU caches dropped)", [p for _, p in ours])

    def _alerts_partitions(self, tps: Iterable[Any]) -> list[tuple[str, int]]:
        topic = self.settings.topic_alerts
        return sorted((tp.topic, tp.partition) for tp in tps if tp.topic == topic)


def batch_context(messages: Sequence[RawMessage]) -> dict[str, Any]:
    """``extra=`` for a log line about a batch: its size and where it starts."""
    first = messages[0] if messages else None
    return {
        "batch_size": len(messages),
        "partition": first.partition if first else None,
        "offset": first.offset if first else None,
    }


def log_dead_letters(dead: Sequence[DeadLetter]) -> None:
    # The payload is never logged: it may hold secrets, and the DLQ keeps it anyway.
    for dl in dead:
        log.warning(
            "dead letter: %s",
            dl.reason,
            extra={"reason": dl.reason, "error": dl.error[:300], "partition": dl.partition, "offset": dl.offset},
        )
