"""Concurrent API calls share the cache tiers' round trips, as alerts in one stream batch do.

Each request's envelopes wait in a queue; a drain takes everything queued (up to
``max_batch`` alerts) and runs ONE ``Triage.decide`` for it, so N concurrent cold requests make
one service call, not N. At most ``slots`` drains run at once; requests arriving meanwhile form
the next, larger, batch — the stream's self-tuning batching. A lone request is decided at once.

The queue is bounded: alerts queued or being decided stay under ``max_queued``; a request that
would pass it is refused with :class:`~stream_engine.api.admission.Busy` (unless nothing is
queued: a request larger than the bound is decided alone rather than never).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from stream_engine.api.admission import Busy
from stream_engine.models import Decision, Envelope, StageTimes

Decide = Callable[[Sequence[Envelope], StageTimes], Awaitable[list[Decision]]]


@dataclass(slots=True)
class _Request:
    envelopes: Sequence[Envelope]
    times: StageTimes
    future: asyncio.Future[list[Decision]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Coalescer:
    def __init__(self, decide: Decide, slots: int = 2, max_batch: int = 1000, max_queued: int = 10_000) -> None:
        self._decide = decide
        self.slots = slots
        self.max_batch = max_batch
        self.max_queued = max_queued
        self.queued = 0  # alerts of admitted requests not answered yet
        self.refused = 0
        self.drains = 0
        self._queue: list[_Request] = []
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def refuse_if_full(self, n: int | None = None) -> None:
        """Raise :class:`Busy` if ``n`` more alerts would not fit; with ``n`` unknown (a body not
        parsed yet), if the queue is full already. An empty queue takes any request."""
        full = self.queued >= self.max_queued if n is None else self.queued + n > self.max_queued
        if self.queued and full:
            self.refused += 1
            raise Busy(f"the API queue holds {self.queued} alerts (api_max_queued_alerts={self.max_queued})")

    async def decide(self, envelopes: Sequence[Envelope], times: StageTimes) -> list[Decision]:
        """The decisions of ``envelopes`` in order; raises :class:`Busy` when the queue is full."""
        n = len(envelopes)
        self.refuse_if_full(n)
        self.queued += n
        try:
            request = _Request(envelopes, times)
            self._queue.append(request)
            if self._running < self.slots:
                self._running += 1
                try:
                    while self._queue and not request.future.done():
                        await self._drain()
                finally:
                    self._running -= 1
                    self._hand_over()
            return await request.future
        finally:
            self.queued -= n

    def _hand_over(self) -> None:
        """Requests still queued when a drainer leaves get a drainer of their own."""
        if self._queue and self._running < self.slots:
            self._running += 1
            task = asyncio.create_task(self._drain_all())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drain_all(self) -> None:
        try:
            while self._queue:
                await self._drain()
        finally:
            self._running -= 1
            self._hand_over()

    async def _drain(self) -> None:
        batch: list[_Request] = []
        size = 0
        while self._queue and (not batch or size + len(self._queue[0].envelopes) <= self.max_batch):
            batch.append(self._queue.pop(0))
            size += len(batch[-1].envelopes)
        self.drains += 1
        times = StageTimes()
        try:
            decisions = await self._decide([env for r in batch for env in r.envelopes], times)
        except BaseException as exc:  # cancelled too: the waiting requests must not hang
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        start = 0
        for r in batch:
            r.times.add(times)
            if not r.future.done():
                r.future.set_result(decisions[start : start + len(r.envelopes)])
            start += len(r.envelopes)
