"""One TTLCache per assigned Kafka partition.

Alerts are keyed by proposition key, so one key always arrives on one partition: a per-partition
cache loses nothing to sharing, needs no lock across partitions, and can be dropped whole when
the partition is revoked in a rebalance (its keys now belong to another worker).

Coherence (:mod:`stream_engine.cache.invalidation`): :meth:`PartitionedLRU.put` admits only a
value whose tag is current, and an invalidation drops every entry it covers in the same step as
it raises the floors, so an entry present is current: ``get`` needs no check.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from stream_engine.cache.invalidation import Coherence
from stream_engine.cache.ttl_cache import CacheCounters, TTLCache
from stream_engine.keys import type_prefix
from stream_engine.models import Proposition

PropositionCache = TTLCache[str, list[Proposition]]


class PartitionedLRU:
    def __init__(
        self,
        maxsize: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        coherence: Coherence | None = None,
    ) -> None:
        self.maxsize = maxsize  # per partition
        self.ttl_s = ttl_s
        self._clock = clock
        self.coherence = coherence if coherence is not None else Coherence()
        self.refused = 0  # values older than an invalidation covering them
        self._caches: dict[int, PropositionCache] = {}
        self._revoked_counters = CacheCounters()  # so stats() never go backwards after a rebalance

    def for_partition(self, partition: int) -> PropositionCache:
        cache = self._caches.get(partition)
        if cache is None:
            cache = self._caches[partition] = TTLCache(self.maxsize, self.ttl_s, self._clock)
        return cache

    def put(self, partition: int, key: str, propositions: list[Proposition], tag: int, ttl_s: float | None = None) -> bool:
        """Store a value fetched under ``tag`` (for ``ttl_s`` at most) unless an invalidation
        covering it was applied since."""
        if not self.coherence.admits(key, tag):
            self.refused += 1
            return False
        self.for_partition(partition).put(key, propositions, ttl_s)
        return True

    def assign(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self.for_partition(partition)

    def revoke(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            cache = self._caches.pop(partition, None)
            if cache is not None:
                retired, counters = self._revoked_counters, cache.counters
                retired.hits += counters.hits
                retired.misses += counters.misses
                retired.expired += counters.expired
                retired.evicted += counters.evicted

    @property
    def partitions(self) -> list[int]:
        return sorted(self._caches)

    def invalidate_key(self, key: str) -> int:
        # Normally in one partition, but a changed partition count can move keys: check all.
        return sum(cache.pop(key) is not None for cache in self._caches.values())

    def invalidate_type(self, alert_type: str) -> int:
        prefix = type_prefix(alert_type)
        return sum(cache.drop_where(lambda key: key.startswith(prefix)) for cache in self._caches.values())

    def clear(self) -> int:
        return sum(cache.clear() for cache in self._caches.values())

    def stats(self) -> dict[str, int]:
        """Entries now, and counters since creation (including revoked partitions)."""
        caches = self._caches.values()
        retired = self._revoked_counters
        return {
            "partitions": len(self._caches),
            "entries": sum(len(c) for c in caches),
            "hits": retired.hits + sum(c.counters.hits for c in caches),
            "misses": retired.misses + sum(c.counters.misses for c in caches),
            "expired": retired.expired + sum(c.counters.expired for c in caches),
            "evicted": retired.evicted + sum(c.counters.evicted for c in caches),
            "refused": self.refused,
        }
