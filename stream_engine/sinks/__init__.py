"""Where decisions and latency samples go after the hot path: the sink contract.

A sink's ``write`` returns once the rows are durable (in the store, or in a local journal that
is replayed later), so the caller may commit its Kafka offsets right after it.

For an engine that commits offsets inside a Kafka transaction, ``write(..., transaction=T)``
makes the rows durable but holds them back from the store until ``settle(T, committed)``: a
committed transaction's rows are stored, an aborted one's are not (see the ClickHouse sink's
module docstring for what happens to rows whose settlement a crash lost).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from stream_engine.sinks.clickhouse.rows import LogRow, MetricRow

__all__ = ["LogRow", "MemorySink", "MetricRow", "Sink"]


@runtime_checkable
class Sink(Protocol):
    async def start(self) -> None: ...

    async def write(self, rows: Sequence[LogRow], metrics: Sequence[MetricRow], *, transaction: str | None = None) -> None:
        """Return once the rows are durable (in the store or its on-disk journal)."""
        ...

    async def settle(self, transaction: str, committed: bool) -> None:
        """The held rows of ``transaction`` are stored (committed) or dropped (aborted)."""
        ...

    async def stop(self) -> None:
        """Flush everything that can be flushed; what cannot stays in the journal."""
        ...

    def stats(self) -> dict[str, Any]: ...


class MemorySink:
    """Keeps rows in lists: the typed seam for tests of callers (the worker) without ClickHouse."""

    def __init__(self) -> None:
        self.rows: list[LogRow] = []
        self.metrics: list[MetricRow] = []
        self.held: dict[str, list[tuple[Sequence[LogRow], Sequence[MetricRow]]]] = {}
        self.started = False
        self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def write(self, rows: Sequence[LogRow], metrics: Sequence[MetricRow], *, transaction: str | None = None) -> None:
        if transaction is not None:
            self.held.setdefault(transaction, []).append((rows, metrics))
            return
        self.rows.extend(rows)
        self.metrics.extend(metrics)

    async def settle(self, transaction: str, committed: bool) -> None:
        for rows, metrics in self.held.pop(transaction, []):
            if committed:
                self.rows.extend(rows)
                self.metrics.extend(metrics)

    async def stop(self) -> None:
        self.stopped = True

    def stats(self) -> dict[str, Any]:
        return {"rows_written": len(self.rows), "metrics_written": len(self.metrics)}
