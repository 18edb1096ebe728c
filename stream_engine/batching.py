"""What both stream engines (faust and plain aiokafka) do around one micro-batch: run it through
the Pipeline until it succeeds, and log about it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from stream_engine.models import DeadLetter
from stream_engine.pipeline import BatchReport, RawMessage

if TYPE_CHECKING:
    from stream_engine.runtime import Runtime

log = logging.getLogger(__name__)


async def process_until_done(runtime: Runtime, messages: list[RawMessage]) -> BatchReport:
    """A failed batch (broker or sink trouble) is retried, never skipped: its offsets stay
    uncommitted meanwhile, so nothing is committed past it. Retries may duplicate decisions,
    which at-least-once allows and ClickHouse collapses."""
    delay = 0.1
    while True:
        try:
            assert runtime.pipeline is not None
            return await runtime.pipeline.process(messages)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            runtime.monitor.batch_failed(exc)
            log.exception(
                "batch of %d failed; retrying in %.1fs", len(messages), delay, extra=batch_context(messages)
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


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
