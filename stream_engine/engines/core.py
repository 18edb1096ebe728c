"""What both stream engines share: one micro-batch's step, the emitter, the rebalance hooks, the
worker's start and stop.

    engine fetches a batch ──▶ EngineCore.process: Pipeline.process until the batch is done
                               (outages retried, poison isolated and dead-lettered) ──▶ observed, logged
                           ──▶ the engine commits what is done (engines/runner.py, engines/offsets.py)

* The step retries a failure from the stage that failed (``BatchProgress``): what the broker
  acknowledged is not sent again, a decision is never made twice. It returns only when the batch
  is done; it never raises (but for cancellation), so a batch is never left unfinished.
* Outages (broker, producer, disk, sink: :func:`is_outage`) are retried however long they last.
  Anything else is a fault of some message: after :data:`ATTEMPTS_BEFORE_ISOLATING` failures the
  messages are processed one by one and those that keep failing are dead-lettered
  (``processing_error``), as are those whose decision no topic would take (``decision_too_large``)
  — unless too many fail on their own (:class:`PoisonGauge`): then it is an outage after all.
* Rebalance hooks: a revoked partition of the alerts topic drops its LRU and its progress
  (another worker owns its keys now); an assigned one is recorded and may make the worker ready.
* Start: emitter (the one producer), runtime (sink, invalidation listener, pipeline), then the
  worker's HTTP API. Stop (after the engine drained its batches): the API, the runtime, the emitter.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError

from stream_engine.engines.emitter import KafkaEmitter
from stream_engine.engines.transactions import (
    PartitionLost,
    TransactionalEmitter,
    Turn,
    _turn,
    committed_transactions,
    current_turn,
    group_offsets,
    split_by_partition,
    transaction_of_this_batch,
)
from stream_engine.models import DeadLetter, StageTimes
from stream_engine.pipeline import BatchProgress, BatchReport, DecisionsTooLarge, Position, RawMessage
from stream_engine.runtime import Runtime
from stream_engine.sinks.clickhouse.sink import SinkStopped

if TYPE_CHECKING:
    from stream_engine.api import ApiServer
    from stream_engine.monitor import PositionsProbe
    from stream_engine.pipeline import Emitter
    from stream_engine.settings import Settings

log = logging.getLogger(__name__)


class PoisonRateExceeded(Exception):
    """Too many messages failed on their own: rather an outage than poison (see :class:`PoisonGauge`)."""


# Outages: wait them out, however long. Anything else is a fault of some message in the batch.
INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (KafkaError, OSError, TimeoutError, SinkStopped, PoisonRateExceeded)
ATTEMPTS_BEFORE_ISOLATING = 3
# poison_max_ratio applies to batches of at least this many messages (one bad alert alone is 100 %).
POISON_RATIO_MIN_BATCH = 10
# On SIGTERM, how long in-flight batches may take to finish before they are cancelled
# (uncommitted, so redelivered). Below tests' and container runtimes' usual 20 s kill grace.
STOP_GRACE_S = 15.0
MAX_BACKOFF_S = 5.0


def is_outage(exc: BaseException) -> bool:
    """An infrastructure error, or an error raised *from* one (faust's ``ProducerSendError`` wraps
    the producer's ``KafkaError`` that way)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, INFRASTRUCTURE_ERRORS):
            return True
        seen.add(id(current))
        current = current.__cause__
    return False


class Backoff:
    """0.1 s, doubling, at most :data:`MAX_BACKOFF_S`."""

    def __init__(self) -> None:
        self.delay = 0.1

    async def sleep(self) -> float:
        delay = self.delay
        self.delay = min(self.delay * 2, MAX_BACKOFF_S)
        await asyncio.sleep(delay)
        return delay


class PoisonGauge:
    """How much of the stream fails on its own. A message that fails alone is poison and is
    dead-lettered; but when more than ``max_ratio`` of a batch (of :data:`POISON_RATIO_MIN_BATCH`
    or more) or more than ``max_per_minute`` messages a minute do, the fault is rather the
    worker's or the broker's (a bad deploy, a topic whose limit is too small): dead-lettering them
    would divert the stream into the DLQ, so the batch is retried as an outage instead. Counted:
    every message found failing, also while capped, so a storm keeps the cap on."""

    def __init__(self, max_ratio: float, max_per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_ratio = max_ratio
        self.max_per_minute = max_per_minute
        self._clock = clock
        self._window: deque[tuple[float, int]] = deque()

    def check(self, failed: int, batch: int) -> None:
        """Count ``failed`` poison messages of a batch of ``batch``; raise PoisonRateExceeded if
        they must not be dead-lettered."""
        now = self._clock()
        while self._window and self._window[0][0] <= now - 60:
            self._window.popleft()
        self._window.append((now, failed))
        if batch >= POISON_RATIO_MIN_BATCH and failed > self.max_ratio * batch:
            raise PoisonRateExceeded(f"{failed} of {batch} messages of one batch failed on their own (cap {self.max_ratio:.0%})")
        in_minute = sum(n for _, n in self._window)
        if in_minute > self.max_per_minute:
            raise PoisonRateExceeded(f"{in_minute} messages failed on their own within a minute (cap {self.max_per_minute})")


class EngineCore:
    """The engine-independent half of a worker; an engine feeds it batches and rebalances."""

    def __init__(
        self,
        settings: Settings,
        runtime: Runtime | None = None,
        positions: PositionsProbe | None = None,
        emitter: Emitter | None = None,
    ) -> None:
        self.settings = settings
        self.runtime = runtime or Runtime(settings)
        self.runtime.consumer_offsets = positions
        self.emitter = emitter
        self.poison = PoisonGauge(settings.poison_max_ratio, settings.poison_max_per_minute)
        self.api: ApiServer | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        exactly_once = self.settings.delivery == "exactly_once"
        emitter = self.emitter or (TransactionalEmitter if exactly_once else KafkaEmitter)(self.settings)
        self.emitter = emitter
        if isinstance(emitter, KafkaEmitter):
            await emitter.start()
        if isinstance(emitter, TransactionalEmitter):
            # Rows of a transaction whose settle marker a crash lost: kept iff the group committed it.
            if hasattr(self.runtime.sink, "replay_filter"):
                self.runtime.sink.replay_filter = committed_transactions(group_offsets(self.settings))
        await self.runtime.start(emitter)
        if isinstance(emitter, TransactionalEmitter):
            emitter.settle = self.runtime.sink.settle
            assert self.runtime.decision_log is not None
            self.runtime.decision_log.transaction_of = transaction_of_this_batch
        await self._start_api()
        self.runtime.announce_ready()

    async def stop(self) -> None:
        """Close everything (the engine drained or abandoned its batches first); one failing step
        must not keep the others from running."""
        self.runtime.started = False  # the API answers 503 from here on
        steps = [self.api.stop] if self.api is not None else []
        steps.append(self.runtime.stop)
        if isinstance(self.emitter, KafkaEmitter):
            steps.append(self.emitter.stop)
        for step in steps:
            try:
                await step()
            except Exception:
                log.exception("error while stopping (%s)", getattr(step, "__qualname__", step))

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
        broker, log rows durable): the engine may then commit its offsets. Never raises but
        ``CancelledError``: a failure outside the pipeline's own retries (say, while
        dead-lettering) is logged and the batch goes on from where it stopped.

        With ``delivery=exactly_once`` the batch is split by partition, each part committed in its
        own transaction together with its offset (engines/transactions.py): then the batch is done
        once every part is committed (or abandoned: fenced or revoked)."""
        emitter = self.emitter
        if not isinstance(emitter, TransactionalEmitter):
            return await self._process(messages)
        # Turns are taken here, before any await: a batch's task starts in fetch order, so do its turns.
        parts = [(emitter.ticket(tp), part) for tp, part in split_by_partition(messages).items()]
        reports = await asyncio.gather(*(self._process_in_turn(turn, part) for turn, part in parts))
        return merge_reports([r for r in reports if r is not None])

    async def _process_in_turn(self, turn: Turn, messages: list[RawMessage]) -> BatchReport | None:
        token = _turn.set(turn)
        try:
            return await self._process(messages)
        except PartitionLost as exc:
            log.warning("batch abandoned, not committed: %s", exc, extra=batch_context(messages))
            return None
        finally:
            _turn.reset(token)
            await asyncio.shield(turn.close())

    async def _process(self, messages: list[RawMessage]) -> BatchReport:
        progress = BatchProgress()
        backoff = Backoff()
        while True:
            try:
                report = await self._until_done(messages, progress)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.runtime.monitor.batch_failed(exc)
                delay = backoff.delay
                log.exception("batch of %d: unexpected failure; going on in %.1fs", len(messages), delay, extra=batch_context(messages))
                await backoff.sleep()
        try:
            self.runtime.monitor.observe_batch(report, messages)
            log_dead_letters(report.dead)
        except Exception:  # the batch is done: its offsets commit whatever the monitor thinks
            log.exception("observing a finished batch failed", extra=batch_context(messages))
        return report

    async def _until_done(self, messages: list[RawMessage], progress: BatchProgress) -> BatchReport:
        """A failed batch is retried, never skipped: its offsets stay uncommitted meanwhile."""
        pipeline = self.runtime.pipeline
        assert pipeline is not None, "process() before start()"
        backoff = Backoff()
        failures = 0
        turn = current_turn()
        while True:
            try:
                if turn is not None:
                    await turn.ready(progress)  # a broken transaction is aborted: all of it is done again
                report = await pipeline.process(messages, progress)
                if turn is not None:
                    await turn.commit(messages[-1].offset + 1)  # one partition, in offset order
                return report
            except asyncio.CancelledError:
                raise
            except DecisionsTooLarge as exc:  # a problem of those records: no retry can help them
                poison = {p: (m, "decision_too_large", str(exc.failures[p])) for m in messages if (p := position(m)) in exc.failures}
                failure: Exception | None = await self._dead_letter(messages, progress, poison)
            except Exception as exc:
                failure = exc
                if not is_outage(exc):
                    failures += 1
                    if failures >= ATTEMPTS_BEFORE_ISOLATING:
                        failures = 0
                        failure = await self._isolate(messages, progress, exc)
            if failure is not None:
                self.runtime.monitor.batch_failed(failure)
                log.warning(
                    "batch of %d failed (%s: %s); retrying in %.1fs",
                    len(messages), type(failure).__name__, failure, backoff.delay, extra=batch_context(messages),
                    exc_info=None if is_outage(failure) else failure,  # a bug's traceback, not an outage's
                )  # fmt: skip
                await backoff.sleep()

    async def _isolate(self, messages: list[RawMessage], progress: BatchProgress, exc: Exception) -> Exception | None:
        """Each unsettled message alone; those that keep failing are dead-lettered. Returns why the
        batch must be retried instead (an outage), or None."""
        log.error("batch of %d keeps failing (%r): processing its messages one by one", len(messages), exc)
        poison: dict[Position, tuple[RawMessage, str, str]] = {}
        for m in messages:
            if not progress.settled(m):
                why = await self._alone(m, progress)
                if why is not None:
                    poison[position(m)] = (m, *why)
        return await self._dead_letter(messages, progress, poison)

    async def _alone(self, message: RawMessage, progress: BatchProgress) -> tuple[str, str] | None:
        """Process one message until it is done (None) or found poison: (reason, detail)."""
        pipeline = self.runtime.pipeline
        assert pipeline is not None
        backoff = Backoff()
        failures = 0
        turn = current_turn()
        while True:
            try:
                if turn is not None:
                    await turn.ready(progress)
                await pipeline.process([message], progress)
                return None
            except asyncio.CancelledError:
                raise
            except DecisionsTooLarge as exc:
                return "decision_too_large", str(next(iter(exc.failures.values())))
            except Exception as exc:
                self.runtime.monitor.batch_failed(exc)
                if not is_outage(exc):
                    failures += 1
                    if failures >= ATTEMPTS_BEFORE_ISOLATING:
                        log.error("message failed %d times: dead-lettered", failures, extra=batch_context([message]))
                        return "processing_error", f"{type(exc).__name__}: {exc}"[:1000]
                await backoff.sleep()

    async def _dead_letter(
        self, messages: list[RawMessage], progress: BatchProgress, poison: dict[Position, tuple[RawMessage, str, str]]
    ) -> PoisonRateExceeded | None:
        """Divert the poison messages to the DLQ (sent by the next pass of the batch), unless the
        poison rate is capped: then the batch is an outage (returned, to be retried)."""
        if not poison:
            return None
        try:
            self.poison.check(len(poison), len(messages))
        except PoisonRateExceeded as exc:
            log.error(
                "poison rate over the cap: %s; not dead-lettering them, retrying the batch as an outage", exc,
                extra={**batch_context(messages), "poison": len(poison)},
            )  # fmt: skip
            return exc
        pipeline = self.runtime.pipeline
        assert pipeline is not None
        for p, (m, reason, detail) in poison.items():
            progress.divert(p, pipeline.dead_letter(m, reason, detail, time.time()))
        return None

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


def merge_reports(reports: Sequence[BatchReport]) -> BatchReport:
    """One report of a batch processed in parts (one per partition)."""
    if len(reports) == 1:
        return reports[0]
    merged = BatchReport([], [], reports[0].times if reports else StageTimes())
    for r in reports:
        merged.decisions += r.decisions
        merged.dead += r.dead
        merged.dropped += r.dropped
        for tier, n in r.tiers.items():
            merged.tiers[tier] = merged.tiers.get(tier, 0) + n
    return merged


def position(message: RawMessage) -> Position:
    return message.partition, message.offset


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
