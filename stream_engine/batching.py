"""What both stream engines (faust and plain aiokafka) do around one micro-batch: run it through
the Pipeline until it succeeds, and log about it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError

from stream_engine.models import DeadLetter
from stream_engine.pipeline import BatchReport, RawMessage, StageTimes, emit
from stream_engine.sinks.clickhouse.sink import SinkStopped

if TYPE_CHECKING:
    from stream_engine.runtime import OffsetsProbe, Runtime

log = logging.getLogger(__name__)


# Outages: wait them out, however long. Anything else is a fault of some message in the batch.
INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (KafkaError, OSError, TimeoutError, SinkStopped)
ATTEMPTS_BEFORE_ISOLATING = 3


async def process_until_done(runtime: Runtime, messages: list[RawMessage]) -> BatchReport:
    """A failed batch is retried, never skipped: its offsets stay uncommitted meanwhile, so
    nothing is committed past it. Retries may duplicate decisions, which at-least-once allows
    and ClickHouse collapses. Outages are retried forever; after a few failures that are not an
    outage, the batch is split to isolate the poison message, which goes to the dead-letter
    topic (reason ``processing_error``) instead of stalling its partition for good."""
    runtime.in_flight += 1
    try:
        return await _process_until_done(runtime, messages)
    finally:
        runtime.in_flight -= 1


async def _process_until_done(runtime: Runtime, messages: list[RawMessage]) -> BatchReport:
    delay = 0.1
    attempts = 0
    while True:
        try:
            assert runtime.pipeline is not None
            return await runtime.pipeline.process(messages)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            runtime.monitor.batch_failed(exc)
            attempts += 1
            if not isinstance(exc, INFRASTRUCTURE_ERRORS) and attempts >= ATTEMPTS_BEFORE_ISOLATING:
                return await isolate_poison(runtime, messages, exc)
            log.exception("batch of %d failed; retrying in %.1fs", len(messages), delay, extra=batch_context(messages))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def isolate_poison(runtime: Runtime, messages: list[RawMessage], exc: Exception) -> BatchReport:
    assert runtime.pipeline is not None
    if len(messages) == 1:
        (m,) = messages
        log.error("message failed %d times: dead-lettered", ATTEMPTS_BEFORE_ISOLATING, extra=batch_context(messages))
        original, redacted = runtime.pipeline.scrub(m.value or b"", "processing_error")
        # An exception's text may quote the alert (a bug formatting it): mask this message's secrets.
        detail = runtime.pipeline.masker.detail(f"{type(exc).__name__}: {exc}", m.value)[:1000]
        dead = DeadLetter("processing_error", detail, m.topic, m.partition, m.offset, original, time.time(), redacted)
        await emit(runtime.pipeline.emitter, [], [dead])
        return BatchReport([], [dead], StageTimes())
    log.error("batch of %d keeps failing (%r): processing its messages one by one", len(messages), exc)
    reports = [await _process_until_done(runtime, [m]) for m in messages]
    merged = BatchReport([d for r in reports for d in r.decisions], [d for r in reports for d in r.dead], StageTimes())
    for r in reports:
        for tier, n in r.tiers.items():
            merged.tiers[tier] = merged.tiers.get(tier, 0) + n
    return merged


def consumer_offsets_probe(consumer: Callable[[], Any], topic: str) -> OffsetsProbe:
    """(topic, partition, high-watermark, fetch position) per assigned partition of ``topic``,
    for lag. ``consumer()`` returns the live consumer (faust's or aiokafka's: same three calls)."""

    async def probe() -> list[tuple[str, int, int | None, int | None]]:
        live = consumer()
        out: list[tuple[str, int, int | None, int | None]] = []
        for tp in sorted(live.assignment()):
            if tp.topic != topic:
                continue
            highwater = live.highwater(tp)  # None until the first fetch response
            try:
                position: int | None = await asyncio.wait_for(live.position(tp), 1.0)
            except Exception:  # mid-rebalance (or a timeout): the position is unknown for now
                position = None
            out.append((tp.topic, tp.partition, highwater, position))
        return out

    return probe


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
