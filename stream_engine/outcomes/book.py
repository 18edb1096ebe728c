"""This worker's view of the verdicts, as the decision policy reads it.

* **Type level**: every outcome reaches every worker (each one's listener), so each keeps the
  evidence of every alert type in memory (``types``), loaded from Redis when it starts.
* **Key level** lives with the key's propositions: in the LRU entry (:class:`Answer`) and in Redis
  beside the cached value, read in the same MGET. When a verdict is counted, every worker's
  listener writes the key's new evidence into its LRU entry for that key (if it has one), so the
  worker that owns the key's partition decides its next batch with it.
* ``recent``: the key evidence this worker saw lately. An LRU fill from a Redis read made just
  before a verdict was counted must not put the older evidence back: a fill takes the newer of
  what it read and what is here (evidence versions only grow).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from stream_engine.cache.partitioned import PartitionedLRU
from stream_engine.outcomes.evidence import Evidence

RECENT_MAX = 10_000
RECENT_S = 60.0  # far longer than a Redis read takes; shorter than any evidence's TTL


class OutcomeBook:
    def __init__(self, lru: PartitionedLRU, clock: Callable[[], float] = time.monotonic) -> None:
        self.lru = lru
        self.types: dict[str, Evidence] = {}  # type part -> evidence (the policy reads this dict)
        self._recent: OrderedDict[str, tuple[float, Evidence]] = OrderedDict()
        self._clock = clock
        self.lru_refreshed = 0  # LRU entries given newer evidence by a verdict

    def saw_key(self, key: str, evidence: Evidence) -> None:
        now = self._clock()
        held = self._recent.pop(key, None)
        if held is not None and not evidence.newer_than(held[1]):
            evidence = held[1]
        self._recent[key] = (now, evidence)
        while len(self._recent) > RECENT_MAX or (self._recent and next(iter(self._recent.values()))[0] < now - RECENT_S):
            self._recent.popitem(last=False)
        self.lru_refreshed += self.lru.refresh_evidence(key, evidence)

    def saw_type(self, part: str, evidence: Evidence) -> None:
        if evidence.newer_than(self.types.get(part)):
            self.types[part] = evidence

    def newest(self, key: str, read: Evidence | None) -> Evidence | None:
        """The newer of what a Redis read found for ``key`` and what a verdict brought lately."""
        if not self._recent:
            return read
        held = self._recent.get(key)
        if held is None or (read is not None and read.n >= held[1].n):
            return read
        return held[1]
