"""One TTLCache per assigned partition: separate, dropped whole on revocation, invalidated across."""

from __future__ import annotations

from stream_engine.cache.invalidation import Coherence
from stream_engine.cache.partitioned import PartitionedLRU
from stream_engine.models import Proposition
from stream_engine.propositions.updates import Invalidation
from tests.unit.fakes import FakeClock

P = [Proposition("rerun", 0.9, "flaky")]


def test_partitions_are_separate_and_lazily_created() -> None:
    lru = PartitionedLRU(2, 10)
    lru.for_partition(0).put("k", P)
    assert lru.for_partition(1).get("k") is None
    assert lru.for_partition(0).get("k") == P
    assert lru.for_partition(0) is lru.for_partition(0)
    assert lru.partitions == [0, 1]
    assert lru.for_partition(3).maxsize == 2


def test_assign_and_revoke() -> None:
    lru = PartitionedLRU(2, 10)
    lru.assign([0, 1, 2])
    lru.for_partition(1).put("k", P)
    lru.for_partition(1).get("k")
    lru.revoke([1, 7])
    assert lru.partitions == [0, 2]
    assert lru.for_partition(1).get("k") is None  # a fresh, empty cache
    stats = lru.stats()
    assert stats["hits"] == 1  # counters of the revoked cache are kept
    assert stats["misses"] == 1
    assert stats["entries"] == 0


def test_invalidate_key_and_type_across_partitions() -> None:
    lru = PartitionedLRU(10, 10)
    lru.for_partition(0).put("ci_failure|repo=a", P)
    lru.for_partition(1).put("ci_failure|repo=b", P)
    lru.for_partition(1).put("ci_failure_x|repo=b", P)  # another type sharing the prefix text
    lru.for_partition(2).put("scam|fp=1", [])
    assert lru.invalidate_key("scam|fp=1") == 1
    assert lru.invalidate_key("scam|fp=1") == 0
    assert lru.invalidate_type("ci_failure") == 2
    assert lru.stats()["entries"] == 1
    assert lru.for_partition(1).get("ci_failure_x|repo=b") == P


def test_clear_and_stats(clock: FakeClock) -> None:
    lru = PartitionedLRU(1, 10, clock)
    lru.for_partition(0).put("a", P)
    lru.for_partition(0).put("b", P)  # evicts a
    clock.now += 11
    assert lru.for_partition(0).get("b") is None  # expired
    lru.for_partition(1).put("c", P)
    assert lru.stats() == {"partitions": 2, "entries": 1, "hits": 0, "misses": 1, "expired": 1, "evicted": 1, "refused": 0}
    assert lru.clear() == 1
    assert lru.stats()["entries"] == 0
    assert lru.partitions == [0, 1]


def test_put_admits_only_values_fetched_after_the_invalidations_covering_them() -> None:
    coherence = Coherence()
    lru = PartitionedLRU(10, 10, coherence=coherence)
    before = coherence.begin()  # a fetch starts ...
    coherence.raise_floor(Invalidation("type", "v", alert_type="scam"), 1)  # ... an invalidation lands
    assert lru.put(0, "scam|fp=1", P, before) is False  # its answer is refused
    assert lru.put(0, "infra|fp=1", P, before) is True  # not covered: still current
    assert lru.put(0, "scam|fp=1", P, coherence.begin()) is True  # fetched after: fine
    assert lru.stats()["refused"] == 1
