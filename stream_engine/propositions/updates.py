"""The invalidation channel: "cached propositions for X are stale" on ``settings.topic_updates``.

Every worker keeps its own partition-local LRUs, so every worker must see every invalidation:
the listener reads all partitions without a consumer group (no partition sharing, no commits)
and starts at the end of the topic (an invalidation older than the worker's own cache is moot
for it), or where ``resume`` says (what Redis has not applied yet), and then hands every
message on with its sequence, ``offset + 1``. The topic has one partition, so those sequences
are one total order, the same on every worker (stream_engine.cache.invalidation).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

log = logging.getLogger(__name__)

Scope = Literal["key", "type", "all"]
SCOPES: frozenset[str] = frozenset(("key", "type", "all"))


class InvalidInvalidation(ValueError):
    """A message on the updates topic that is not a valid Invalidation."""


@dataclass(slots=True)
class Invalidation:
    """``key``: drop that proposition key; ``type``: drop every key of ``alert_type``;
    ``all``: drop everything. ``version`` is the rule book version the publisher had."""

    scope: Scope
    version: str
    key: str | None = None
    alert_type: str | None = None
    published_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        _validate(self.scope, self.version, self.key, self.alert_type, self.published_at)

    def to_json(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> Invalidation:
        try:
            d = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise InvalidInvalidation(f"not JSON: {exc}") from exc
        if not isinstance(d, dict):
            raise InvalidInvalidation("not a JSON object")
        unknown = set(d) - {"scope", "version", "key", "alert_type", "published_at"}
        if unknown:
            raise InvalidInvalidation(f"unknown fields {sorted(unknown)}")
        if "published_at" not in d:
            raise InvalidInvalidation("published_at is required")
        return cls(
            scope=d.get("scope"),  # type: ignore[arg-type]  # validated in __post_init__
            version=d.get("version"),  # type: ignore[arg-type]
            key=d.get("key"),
            alert_type=d.get("alert_type"),
            published_at=d["published_at"],
        )


def _validate(scope: Any, version: Any, key: Any, alert_type: Any, published_at: Any) -> None:
    if scope not in SCOPES:
        raise InvalidInvalidation(f"scope must be one of {sorted(SCOPES)}, got {scope!r}")
    if not isinstance(version, str):
        raise InvalidInvalidation("version must be a string")
    if key is not None and not isinstance(key, str):
        raise InvalidInvalidation("key must be a string")
    if alert_type is not None and not isinstance(alert_type, str):
        raise InvalidInvalidation("alert_type must be a string")
    if scope == "key" and not key:
        raise InvalidInvalidation("scope 'key' needs a key")
    if scope == "type" and not alert_type:
        raise InvalidInvalidation("scope 'type' needs an alert_type")
    if isinstance(published_at, bool) or not isinstance(published_at, (int, float)):
        raise InvalidInvalidation("published_at must be epoch seconds")


class InvalidationPublisher(Protocol):
    """What the proposition service needs to announce an invalidation (UpdatesPublisher is one)."""

    async def publish(self, invalidation: Invalidation) -> None: ...


class UpdatesPublisher:
    """Publishes invalidations and waits for the broker's ack.

    ``start()`` may fail (broker down); ``publish`` then retries the start, so a service that
    came up before Kafka can still publish later.
    """

    def __init__(self, bootstrap: str, topic: str, *, timeout_s: float = 10.0) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.timeout_s = timeout_s
        self._producer: Any = None
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._start_lock:
            if self._producer is not None:
                return
            from aiokafka import AIOKafkaProducer

            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap, acks="all", request_timeout_ms=int(self.timeout_s * 1000)
            )
            try:
                await asyncio.wait_for(producer.start(), self.timeout_s)
            except BaseException:
                await _quietly(producer.stop())
                raise
            self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def publish(self, invalidation: Invalidation) -> None:
        if self._producer is None:
            await self.start()
        # Keyed by scope target so that invalidations of one key stay ordered on one partition.
        target = invalidation.key or invalidation.alert_type or "*"
        await asyncio.wait_for(
            self._producer.send_and_wait(self.topic, invalidation.to_json(), key=target.encode()), self.timeout_s
        )


async def _quietly(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception:  # noqa: BLE001 - cleanup after a failure already being reported
        log.debug("cleanup failed", exc_info=True)


class UpdatesListener:
    """Calls ``on_invalidation(invalidation, sequence)`` for every valid invalidation published
    after ``start()`` (or after the offset ``resume(first, end)`` returns, given the topic's first
    and end offsets; ``start()`` then returns once it has handed on everything up to the end).

    Bad messages and callback errors are logged and skipped; the loop never dies of them.
    aiokafka reconnects on its own after a broker hiccup.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        on_invalidation: Callable[[Invalidation, int], Awaitable[None]],
        *,
        resume: Callable[[int, int], Awaitable[int]] | None = None,
        start_timeout_s: float = 30.0,
        fetch_max_wait_ms: int = 100,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.on_invalidation = on_invalidation
        self.resume = resume
        self.start_timeout_s = start_timeout_s
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.received = 0
        self.skipped = 0
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Return once all partitions are assigned and positioned at their end."""
        from aiokafka import AIOKafkaConsumer

        # group_id=None + a subscription: aiokafka assigns EVERY partition of the topic to this
        # consumer (and follows partitions added later); nothing is committed anywhere.
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=self.fetch_max_wait_ms,
        )
        try:
            await asyncio.wait_for(self._start_positioned(consumer), self.start_timeout_s)
        except BaseException:
            await _quietly(consumer.stop())
            raise
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name=f"updates-listener:{self.topic}")

    async def _start_positioned(self, consumer: Any) -> None:
        await consumer.start()
        while not consumer.assignment():
            await asyncio.sleep(0.05)
        partitions = sorted(consumer.assignment())
        if self.resume is None:
            await consumer.seek_to_end(*partitions)
            # position() resolves the lazy seek now, so a message published after start() is seen.
            for tp in partitions:
                await consumer.position(tp)
            log.info("updates listener on %s: %d partitions at end", self.topic, len(partitions))
            return
        if len(partitions) != 1:
            raise ValueError(
                f"{self.topic} has {len(partitions)} partitions; it must have exactly one: its offsets are the "
                "invalidation sequence every worker must see in the same order (topics/proposition-updates.yaml)"
            )
        (tp,) = partitions
        first, end = (await consumer.beginning_offsets([tp]))[tp], (await consumer.end_offsets([tp]))[tp]
        consumer.seek(tp, await self.resume(first, end))
        while await consumer.position(tp) < end:  # hand on what was not applied before we return
            for messages in (await consumer.getmany(tp, timeout_ms=1000)).values():
                for message in messages:
                    await self._handle(message.value, message.partition, message.offset)
        log.info("updates listener on %s: at offset %d", self.topic, end)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def _run(self) -> None:
        consumer = self._consumer
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=1000)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep listening; aiokafka reconnects underneath
                log.exception("updates listener: fetch failed; retrying")
                await asyncio.sleep(1.0)
                continue
            for messages in batches.values():
                for message in messages:
                    await self._handle(message.value, message.partition, message.offset)

    async def _handle(self, value: bytes | None, partition: int, offset: int) -> None:
        try:
            invalidation = Invalidation.from_json(value or b"")
        except InvalidInvalidation as exc:
            self.skipped += 1
            log.warning("skipping bad invalidation at %s[%d]@%d: %s", self.topic, partition, offset, exc)
            return
        self.received += 1
        try:
            await self.on_invalidation(invalidation, offset + 1)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one failing callback must not stop invalidations
            log.exception("invalidation callback failed for %s", invalidation)
