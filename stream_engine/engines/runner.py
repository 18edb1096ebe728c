"""Batches in flight: how both engines pipeline ``batch_concurrency`` batches and commit only
what is done.

    engine takes a slot, fetches a batch ──▶ BatchRunner.start ──▶ EngineCore.process (until done)
                                        ──▶ OffsetTracker.finished ──▶ on_done (the engine commits)

* At most ``batch_concurrency`` batches are in flight: the engine takes a slot (:meth:`slot`)
  before it fetches (aiokafka) or hands over (faust) the next batch, in fetch order.
* Commit points come from the :class:`~stream_engine.engines.offsets.OffsetTracker` only: a
  partition's point passes a batch once that batch and every batch fetched before it from the
  same partition are done, whatever order they finish in.
* Revocation (:meth:`revoke`): the batches holding a revoked partition get ``revoke_grace_s`` to
  finish; those still running are cancelled — abandoned, their offsets not committed, so the
  partition's next owner redoes them — and one stuck batch cannot stall the group's rebalance.
  Then the engine commits what is done and the partitions are forgotten: a late batch of theirs
  commits nothing. Until the next assignment, new batches are refused (their records are re-read
  from the committed offset by whoever owns them next).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping

from stream_engine.engines.core import EngineCore, batch_context
from stream_engine.engines.offsets import InFlight, OffsetTracker
from stream_engine.pipeline import RawMessage

log = logging.getLogger(__name__)


class BatchRunner:
    def __init__(
        self,
        core: EngineCore,
        concurrency: int,
        revoke_grace_s: float,
        on_done: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.core = core
        self.tracker = OffsetTracker()
        self.revoke_grace_s = revoke_grace_s
        self.revoking = False
        self._on_done = on_done
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: dict[asyncio.Task[None], InFlight] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    # --- feeding -----------------------------------------------------------------------------

    async def slot(self) -> None:
        """Wait for room for one more batch; :meth:`start` or :meth:`release` gives it back."""
        await self._slots.acquire()

    def release(self) -> None:
        """The slot taken was not used (nothing fetched)."""
        self._slots.release()

    def start(self, last: Mapping[Hashable, int], messages: list[RawMessage]) -> bool:
        """Process a batch in the slot taken: ``last[tp]`` is its last offset of partition ``tp``.
        Call it right after the fetch, with no ``await`` between (a revocation must see the batch).
        False, and the slot released, while partitions are being revoked: the batch is dropped."""
        if self.revoking or not messages:
            self._slots.release()
            return False
        batch = self.tracker.started(last)
        task = asyncio.create_task(self._run(batch, messages))
        self._tasks[task] = batch
        self._idle.clear()
        task.add_done_callback(self._ended)
        return True

    async def _run(self, batch: InFlight, messages: list[RawMessage]) -> None:
        await self.core.process(messages)  # returns only when the batch is done
        self.tracker.finished(batch)
        if self._on_done is not None:
            try:
                await self._on_done()
            except Exception:
                log.exception("commit after a batch failed", extra=batch_context(messages))

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._slots.release()
        if not self._tasks:
            self._idle.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("batch task failed", exc_info=task.exception())

    def in_flight(self) -> int:
        return len(self._tasks)

    # --- rebalance and stop -------------------------------------------------------------------

    async def revoke(self, revoked: Iterable[Hashable], commit: Callable[[], Awaitable[object]]) -> set[Hashable]:
        """Wait (bounded) for the batches holding ``revoked`` partitions, abandon the rest, commit
        what is done (``commit``), forget the partitions. Returns the partitions an abandoned
        batch held that were *not* revoked: the engine must seek them back to their committed
        offsets (never happens with eager rebalancing, which revokes every partition)."""
        self.revoking = True
        revoked = set(revoked)
        holding = [task for task, batch in self._tasks.items() if revoked & batch.last.keys()]
        kept: set[Hashable] = set()
        if holding:
            _, abandoned = await asyncio.wait(holding, timeout=self.revoke_grace_s)
            for task in abandoned:
                kept |= self._tasks[task].last.keys() - revoked
                task.cancel()
            await asyncio.gather(*abandoned, return_exceptions=True)
            if abandoned:
                log.warning(
                    "abandoned %d batch(es) still running %.1f s after the revocation: not committed, the partitions' "
                    "next owner redoes them",
                    len(abandoned), self.revoke_grace_s,
                )  # fmt: skip
        try:
            await commit()
        except Exception:
            log.exception("commit at revocation failed (the partitions' next owner redoes what it missed)")
        self.tracker.forget(revoked | kept)  # a late batch of theirs commits nothing
        return kept

    def assigned(self) -> None:
        self.revoking = False

    async def drain(self, timeout: float) -> bool:
        """Wait until no batch is in flight; False if some still are after ``timeout``."""
        await asyncio.sleep(0)  # a batch handed to a new task just now starts first
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def cancel(self) -> int:
        """Cancel every batch in flight (stopping): uncommitted, so redelivered. Returns how many."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return len(tasks)
