"""Which offsets a worker may commit, and where its consumer stands (for lag).

The commit-safety rule, for any engine that processes several batches of one partition at once:
a partition's commit point only passes a batch once that batch *and every batch fetched before
it from the same partition* are done. :class:`OffsetTracker` keeps the rule in pure code (no
Kafka client, no event loop): an engine tells it when a batch is fetched (:meth:`started`) and
done (:meth:`finished`), takes what became committable (:meth:`take`), gives back what a failed
commit could not store (:meth:`restore`), and forgets revoked partitions (:meth:`forget`).
Partitions are any hashable value (aiokafka's and faust's ``TopicPartition`` both work).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stream_engine.monitor import Positions, PositionsProbe


@dataclass(eq=False, slots=True)
class InFlight:
    """One fetched batch: the last offset it holds per partition, and whether it is done."""

    last: dict[Hashable, int]
    done: bool = False


@dataclass(slots=True)
class OffsetTracker:
    """Per partition, in-flight batches in fetch order, and the commit points they released."""

    _queues: dict[Hashable, deque[InFlight]] = field(default_factory=dict)
    _committable: dict[Hashable, int] = field(default_factory=dict)

    def started(self, last: Mapping[Hashable, int]) -> InFlight:
        """A batch was fetched holding offsets up to ``last[tp]`` of each partition ``tp``."""
        batch = InFlight(dict(last))
        for tp in batch.last:
            self._queues.setdefault(tp, deque()).append(batch)
        return batch

    def finished(self, batch: InFlight) -> dict[Hashable, int]:
        """Mark ``batch`` done; return the next offset to commit for partitions that moved (also
        kept for :meth:`take`). A batch that finishes before an earlier one moves nothing yet."""
        batch.done = True
        ready: dict[Hashable, int] = {}
        for tp in batch.last:
            queue = self._queues.get(tp)
            while queue and queue[0].done:
                ready[tp] = queue.popleft().last[tp] + 1
        self._merge(ready)
        return ready

    def take(self) -> dict[Hashable, int]:
        """The commit points not yet handed out; the caller commits them (or :meth:`restore`)."""
        taken, self._committable = self._committable, {}
        return taken

    def restore(self, offsets: Mapping[Hashable, int]) -> None:
        """Give back offsets whose commit failed, unless a newer commit point overtook them."""
        self._merge(offsets)

    def in_flight(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def forget(self, tps: Iterable[Hashable]) -> None:
        """Revoked partitions: their late batches commit nothing, and a failed commit's leftovers
        must not land after another owner's."""
        for tp in tps:
            self._queues.pop(tp, None)
            self._committable.pop(tp, None)

    def _merge(self, offsets: Mapping[Hashable, int]) -> None:
        for tp, offset in offsets.items():
            self._committable[tp] = max(offset, self._committable.get(tp, offset))


def positions_probe(consumer: Callable[[], Any], topic: str) -> PositionsProbe:
    """(topic, partition, high-watermark, fetch position) per assigned partition of ``topic``.
    ``consumer()`` returns the live consumer (faust's or aiokafka's: same three calls)."""

    async def probe() -> Positions:
        live = consumer()
        out: Positions = []
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
