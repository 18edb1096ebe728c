"""A bounded LRU with per-entry time-to-live; every operation O(1) except ``drop_where``.

Expired entries are removed when they are looked up, and otherwise age out of the LRU end as
new entries push them: memory stays bounded by ``maxsize`` without a sweeper task.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


@dataclass(slots=True)
class CacheCounters:
    hits: int = 0
    misses: int = 0  # includes lookups that found an expired entry
    expired: int = 0
    evicted: int = 0


class TTLCache(Generic[K, V]):
    def __init__(self, maxsize: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        self.maxsize = maxsize
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self.counters = CacheCounters()

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            self.counters.misses += 1
            return None
        expires_at, value = entry
        if expires_at <= self._clock():
            del self._entries[key]
            self.counters.expired += 1
            self.counters.misses += 1
            return None
        self._entries.move_to_end(key)
        self.counters.hits += 1
        return value

    def put(self, key: K, value: V, ttl_s: float | None = None) -> None:
        """Store for ``ttl_s`` (at most the cache's own TTL: an entry from a slower tier keeps
        only the lifetime it has left)."""
        entries = self._entries
        if key in entries:
            entries.move_to_end(key)
        entries[key] = (self._clock() + (self.ttl_s if ttl_s is None else min(ttl_s, self.ttl_s)), value)
        if len(entries) > self.maxsize:
            entries.popitem(last=False)
            self.counters.evicted += 1

    def pop(self, key: K) -> V | None:
        entry = self._entries.pop(key, None)
        return None if entry is None else entry[1]

    def drop_where(self, predicate: Callable[[K], bool]) -> int:
        """Remove every key the predicate accepts (O(n): for rare invalidations); returns the count."""
        doomed = [key for key in self._entries if predicate(key)]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    def clear(self) -> int:
        removed = len(self._entries)
        self._entries.clear()
        return removed

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        """Presence without touching recency or counters (expired entries still count)."""
        return key in self._entries
