"""Cache coherence: an invalidation always wins, in both tiers, on every worker.

**One sequence.** Invalidations travel on ``proposition-updates``, a one-partition topic, so its
offsets are a single total order that every worker reads identically without asking anyone:
the invalidation at offset ``o`` has sequence ``o + 1``. A worker's ``seq`` is the sequence of
the latest invalidation it has applied.

**Tags and floors.** Every fetch is tagged with the worker's ``seq`` when it starts
(:meth:`Coherence.begin`) and every cached value carries the tag of the fetch that produced it
(Redis stores it in the value; see :mod:`stream_engine.cache.redis_tier`). Every invalidation
raises a *floor* — of everything, of one alert type or of one key — to its sequence. A value is
current iff ``tag >= floor(key)``, the largest floor covering it: it was fetched after every
invalidation covering it had been applied. Anything else is never served and never written
back: the LRU refuses it at the door (:meth:`Coherence.admits`) and drops what an invalidation
covers; Redis refuses it in the write script and when it is read. So an answer fetched before an
invalidation can only serve the alerts of its own batch, which were taken before it too.

**Order is irrelevant.** :meth:`Invalidations.apply` raises this worker's floors and drops the
covered LRU entries in one step, with no ``await`` in between, *then* asks Redis. While Redis
lags (or is down) this worker filters what it reads from Redis through its own floors and writes
nothing older; Redis' own floors protect the workers that have not read the invalidation yet
(a worker that starts later, for one).

**Idempotent, so retried until applied.** Redis floors only ever rise (``max``), keyed by the
sequence itself: a bump retried after a lost reply, or the same invalidation applied by every
worker, changes nothing the second time, and no marker can swallow a later invalidation (it has
a larger sequence). A failed bump stays pending and is retried every ``retry_s`` until Redis
takes it; failures are counted (``invalidation_redis_failures``). Redis also keeps the sequence
applied so far (``applied``): a worker that starts replays what nobody applied (every worker
was down), see :meth:`Invalidations.resume`.

**Single-flight** shares a fetch only between callers with the same tag: a batch that starts
after an invalidation never joins a fetch made before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from stream_engine.keys import type_prefix

if TYPE_CHECKING:
    from stream_engine.cache.partitioned import PartitionedLRU
    from stream_engine.cache.redis_tier import RedisTier
    from stream_engine.propositions.updates import Invalidation

log = logging.getLogger(__name__)


def type_part(key: str) -> str:
    """The alert-type part of a proposition key (keys start with ``type_prefix(type)``)."""
    return key.partition("|")[0]


class Coherence:
    """This worker's invalidation state: its sequence, its floors, the tags of fetches in flight."""

    def __init__(self) -> None:
        self.seq = 0
        self.all = 0
        self.types: dict[str, int] = {}  # by type part
        # Key floors, oldest first. Kept only while a fetch in flight is older than one, or its
        # Redis tombstone is not in place yet (see prune): a handful at any time.
        self.keys: OrderedDict[str, int] = OrderedDict()
        self._fetching: Counter[int] = Counter()

    # --- fetches ----------------------------------------------------------------------------
    def begin(self) -> int:
        """The tag of a fetch starting now; pair with :meth:`end`."""
        tag = self.seq
        self._fetching[tag] += 1
        return tag

    def end(self, tag: int) -> None:
        left = self._fetching[tag] - 1
        if left:
            self._fetching[tag] = left
        else:
            del self._fetching[tag]

    # --- the rule ---------------------------------------------------------------------------
    def floor(self, key: str) -> int:
        return max(self.all, self.types.get(type_part(key), 0), self.keys.get(key, 0))

    def admits(self, key: str, tag: int) -> bool:
        """Whether a value fetched under ``tag`` is current for ``key``."""
        return tag >= self.seq or tag >= self.floor(key)

    def raise_floor(self, inv: Invalidation, seq: int) -> None:
        if inv.scope == "all":
            self.all = max(self.all, seq)
        elif inv.scope == "type" and inv.alert_type:
            part = type_part(type_prefix(inv.alert_type))
            self.types[part] = max(self.types.get(part, 0), seq)
        elif inv.scope == "key" and inv.key:
            self.keys[inv.key] = max(self.keys.pop(inv.key, 0), seq)
        self.seq = max(self.seq, seq)

    def prune(self, unapplied_from: float) -> None:
        """Forget key floors no fetch in flight is older than and that Redis has applied."""
        oldest = min(self._fetching, default=self.seq)
        while self.keys:
            key, floor = next(iter(self.keys.items()))
            if floor > oldest or floor >= unapplied_from:
                return
            del self.keys[key]


@dataclass(slots=True)
class InvalidationCounters:
    applied: int = 0  # invalidations applied by this worker (LRU + floors)
    redis_applied: int = 0  # ... and taken by Redis
    redis_failures: int = 0  # attempts Redis did not take (each is retried)
    lru_removed: int = 0


class Invalidations:
    """What ``Runtime.on_invalidation`` does: apply each invalidation to this worker's floors and
    LRU at once, and to Redis until it is taken."""

    def __init__(self, coherence: Coherence, lru: PartitionedLRU, redis: RedisTier, retry_s: float = 1.0) -> None:
        self.coherence = coherence
        self.lru = lru
        self.redis = redis
        self.retry_s = retry_s
        self.counters = InvalidationCounters()
        self._pending: dict[int, Invalidation] = {}  # seq -> invalidation Redis has not taken
        self._flushing = asyncio.Lock()
        self._retrying: asyncio.Task[None] | None = None

    async def resume(self, first: int, end: int) -> int:
        """Called by the updates listener before it starts, with the topic's first and end
        offsets; returns the offset to read from. Everything before ``end`` is applied or moot for
        this worker's empty LRU, but maybe not for Redis: if no worker applied some of it (all
        were down), it is replayed; if part of it is gone from the topic, one invalidation of
        everything stands in for it."""
        self.coherence.seq = max(self.coherence.seq, end)
        applied = await self.redis.applied_through()
        if applied is None or applied >= end:
            if applied is not None and applied > end:
                log.error(
                    "Redis namespace %s has applied invalidation %d but the updates topic ends at %d: was the topic "
                    "recreated? Use a fresh STREAM_ENGINE_REDIS_NAMESPACE with it, or delete the namespace's keys",
                    self.redis.namespace, applied, end,
                )  # fmt: skip
            return end
        if applied < first:
            from stream_engine.propositions.updates import Invalidation

            log.warning("invalidations %d..%d left the topic before Redis applied them: invalidating everything", applied + 1, first)
            await self.apply(Invalidation("all", "replay"), first)
            return first
        log.info("replaying invalidations %d..%d that Redis has not applied", applied + 1, end)
        return applied

    async def apply(self, inv: Invalidation, seq: int) -> None:
        started = time.perf_counter()
        self.coherence.raise_floor(inv, seq)
        if inv.scope == "key" and inv.key:
            removed = self.lru.invalidate_key(inv.key)
        elif inv.scope == "type" and inv.alert_type:
            removed = self.lru.invalidate_type(inv.alert_type)
        else:
            removed = self.lru.clear()
        self.counters.applied += 1
        self.counters.lru_removed += removed
        self._pending[seq] = inv
        in_redis = await self.flush()
        log.info(
            "invalidation applied scope=%s key=%s type=%s version=%s seq=%d lru_removed=%d redis=%s in %.0f ms",
            inv.scope, inv.key, inv.alert_type, inv.version, seq, removed, "applied" if in_redis else "pending",
            (time.perf_counter() - started) * 1000,
        )  # fmt: skip

    async def flush(self) -> bool:
        """Hand Redis what it has not taken yet, oldest first; True when nothing is left."""
        async with self._flushing:
            for seq in sorted(self._pending):
                inv = self._pending[seq]
                try:
                    await self.redis.apply_invalidation(inv, seq)
                except Exception as exc:  # noqa: BLE001 - an outage: kept, retried, counted
                    self.counters.redis_failures += 1
                    log.warning("invalidation seq=%d not taken by Redis (%r); retrying every %.1fs", seq, exc, self.retry_s)
                    break
                del self._pending[seq]
                self.counters.redis_applied += 1
            self.coherence.prune(min(self._pending, default=float("inf")))
            return not self._pending

    async def start(self) -> None:
        await self.redis.check_eviction_policy()
        self._retrying = asyncio.create_task(self._retry(), name="invalidations-retry")

    async def stop(self) -> None:
        task, self._retrying = self._retrying, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._pending:
            await self.flush()  # one last try: a worker going away should not leave Redis behind

    async def _retry(self) -> None:
        while True:
            await asyncio.sleep(self.retry_s)
            if self._pending:
                await self.flush()
            else:
                self.coherence.prune(float("inf"))  # key floors of fetches that have ended since

    def stats(self) -> dict[str, Any]:
        return {**asdict(self.counters), "pending": len(self._pending), "seq": self.coherence.seq}
