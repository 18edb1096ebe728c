"""The worker's one Kafka producer and the emitter over it (both engines).

* aiokafka's producer: acks=all, idempotent, Kafka's partitioner in C. (faust's ``app.producer``
  is not used: it wraps broker errors in ``ProducerSendError``.)
* Decisions keyed by alert id; dead letters keyed by nothing, their reason in a header.
* A record the broker would refuse for its size is refused here instead, with
  :class:`~stream_engine.pipeline.RecordTooLarge` (a problem of that record): the limits are the
  topics' ``max.message.bytes``, read from the broker at start and again when a record was
  refused (the operator may have raised them), and the producer's own request size. The broker
  must not see such a record: a refused batch breaks aiokafka's idempotent producer (every later
  batch to that partition fails with ``OutOfOrderSequenceNumber``). For the same reason batches
  stay under the smallest limit.
* Should the broker refuse a batch anyway (a limit lowered while running) or the producer lose its
  sequence, those sends fail as an outage (retried) and the next send starts with a new producer
  and fresh limits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RecordListTooLargeError,
)
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from stream_engine.kafka.partitioner import kafka_partitioner
from stream_engine.models import DeadLetter, Decision
from stream_engine.pipeline import RecordTooLarge

if TYPE_CHECKING:
    from stream_engine.settings import Settings

log = logging.getLogger(__name__)

# A dead letter carries its original base64-encoded (+1/3): a 1 MiB alert must still fit.
MAX_REQUEST_BYTES = 4 * 1024 * 1024
BATCH_BYTES = 16384  # aiokafka's default batch size, lowered to the smallest topic limit
# After a refusal, the topics' limits are read again at most this often.
LIMITS_REFRESH_S = 5.0
# Errors after which this producer cannot go on (its idempotent sequence is lost).
PRODUCER_BROKEN = (MessageSizeTooLargeError, RecordListTooLargeError, OutOfOrderSequenceNumber, InvalidProducerEpoch, ProducerFenced)


def create_producer(settings: Settings, batch_bytes: int = BATCH_BYTES) -> AIOKafkaProducer:
    """One producer (call it inside the event loop: aiokafka binds to it)."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=settings.producer_linger_ms,
        max_request_size=MAX_REQUEST_BYTES,
        max_batch_size=batch_bytes,
        partitioner=kafka_partitioner,
    )


async def read_limits(bootstrap: str, topics: Sequence[str]) -> dict[str, int]:
    """``max.message.bytes`` of each of ``topics`` that exists."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
    finally:
        await admin.close()
    limits: dict[str, int] = {}
    for response in responses:
        for error, _message, _type, name, entries in response.resources:
            value = {entry[0]: entry[1] for entry in entries}.get("max.message.bytes")
            if not error and value is not None:
                limits[name] = int(value)
    return limits


class KafkaEmitter:
    """Owns the producer: :meth:`start`, :meth:`send` (one ack per record), :meth:`stop`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.decisions_topic = settings.topic_decisions
        self.dlq_topic = settings.topic_dlq
        self.limits: dict[str, int] = {}
        self.producer: AIOKafkaProducer | None = None
        self.restarts = 0
        self._broken: BaseException | None = None
        self._restart_lock = asyncio.Lock()
        self._limits_read_at = float("-inf")
        self._refreshing: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self._read_limits()
        self.producer = self._new_producer()
        await self.producer.start()

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.producer is not None:
            await self.producer.stop()

    async def send(self, decisions: Sequence[Decision], dead: Sequence[DeadLetter]) -> list[asyncio.Future[Any]]:
        if self._broken is not None:
            await self._restart()
        acks = [await self._send(self.decisions_topic, d.to_json(), d.alert_id.encode(), None) for d in decisions]
        for dl in dead:
            acks.append(await self._send(self.dlq_topic, dl.to_json(), None, [("reason", dl.reason.encode())]))
        return acks

    async def _send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]] | None,
        producer: AIOKafkaProducer | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> asyncio.Future[Any]:
        """One record through ``producer`` (default: the emitter's own); ``on_failure`` hears of an
        acknowledgement that failed (default: a broken producer is replaced before the next send)."""
        producer = producer or self.producer
        assert producer is not None, "send() before start()"
        limit = min(self.limits.get(topic, MAX_REQUEST_BYTES), MAX_REQUEST_BYTES)
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers or [])
        if size > limit:
            self._refresh_limits_soon()  # the operator may have raised it
            return refused(RecordTooLarge(topic, size, limit))
        try:
            ack = await producer.send(topic, value, key, headers=headers)
        except MessageSizeTooLargeError:  # the producer's own check (max_request_size)
            return refused(RecordTooLarge(topic, size, limit))
        ack.add_done_callback(self._watch if on_failure is None else _on_failure(on_failure))
        return ack

    def _watch(self, ack: asyncio.Future[Any]) -> None:
        if not ack.cancelled() and isinstance(ack.exception(), PRODUCER_BROKEN):
            self._broken = ack.exception()

    async def _restart(self) -> None:
        async with self._restart_lock:
            if self._broken is None:  # another batch restarted it meanwhile
                return
            reason, self._broken = self._broken, None
            log.warning("the broker refused a batch (%r): reading the topics' limits again and starting a new producer", reason)
            await self._read_limits()
            old, self.producer = self.producer, self._new_producer()
            await self.producer.start()
            self.restarts += 1
            if old is not None:
                self._in_background(old.stop())  # flushes what it still holds; those sends fail or land

    def _new_producer(self) -> AIOKafkaProducer:
        smallest = min(self.limits.values(), default=BATCH_BYTES)
        return create_producer(self.settings, min(BATCH_BYTES, smallest))

    async def _read_limits(self) -> None:
        self._limits_read_at = time.monotonic()
        try:
            limits = await read_limits(self.settings.kafka_bootstrap, [self.decisions_topic, self.dlq_topic])
        except Exception as exc:  # the broker may be down: the producer's request size still applies
            log.warning("could not read the topics' max.message.bytes (%s); keeping %s", exc, self.limits)
            return
        if limits != self.limits:
            log.info("topic limits (max.message.bytes): %s", limits)
        self.limits = limits

    def _refresh_limits_soon(self) -> None:
        if time.monotonic() - self._limits_read_at >= LIMITS_REFRESH_S and (self._refreshing is None or self._refreshing.done()):
            self._limits_read_at = time.monotonic()
            self._refreshing = self._in_background(self._read_limits())

    def _in_background(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task


def _on_failure(callback: Callable[[BaseException], None]) -> Callable[[asyncio.Future[Any]], None]:
    def watch(ack: asyncio.Future[Any]) -> None:
        if ack.cancelled():
            callback(asyncio.CancelledError())
        elif ack.exception() is not None:
            callback(ack.exception())  # type: ignore[arg-type]

    return watch


def refused(exc: BaseException) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(exc)
    return future
