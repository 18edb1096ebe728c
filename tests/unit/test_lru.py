from __future__ import annotations

import pytest

from stream_engine.cache.lru import TTLCache
from stream_engine.cache.partitioned import PartitionedLRU
from stream_engine.models import Proposition


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


P = [Proposition("rerun", 0.9, "flaky")]


def test_get_put_hit_and_miss_counters() -> None:
    cache: TTLCache[str, int] = TTLCache(3, 10)
    assert cache.get("a") is None
    cache.put("a", 1)
    assert cache.get("a") == 1
    assert (cache.counters.hits, cache.counters.misses) == (1, 1)
    assert len(cache) == 1


def test_least_recently_used_is_evicted() -> None:
    cache: TTLCache[str, int] = TTLCache(2, 10)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.get("a")  # a is now the most recent
    cache.put("c", 3)
    assert "b" not in cache
    assert cache.get("a") == 1 and cache.get("c") == 3
    assert cache.counters.evicted == 1
    assert len(cache) == 2


def test_put_existing_key_refreshes_value_recency_and_ttl() -> None:
    clock = FakeClock()
    cache: TTLCache[str, int] = TTLCache(2, 10, clock)
    cache.put("a", 1)
    cache.put("b", 2)
    clock.now += 8
    cache.put("a", 11)  # a becomes most recent, expires at +18
    cache.put("c", 3)  # evicts b, not a
    assert "b" not in cache
    clock.now += 5
    assert cache.get("a") == 11
    assert cache.counters.evicted == 1


def test_expired_entries_are_removed_on_access() -> None:
    clock = FakeClock()
    cache: TTLCache[str, int] = TTLCache(5, 10, clock)
    cache.put("a", 1)
    clock.now += 9.999
    assert cache.get("a") == 1
    clock.now += 0.001
    assert cache.get("a") is None
    assert "a" not in cache
    assert (cache.counters.expired, cache.counters.misses, cache.counters.hits) == (1, 1, 1)


def test_empty_list_is_a_cached_value_not_a_miss() -> None:
    cache: TTLCache[str, list[Proposition]] = TTLCache(2, 10)
    cache.put("no-rule", [])
    assert cache.get("no-rule") == []
    assert cache.counters.hits == 1


def test_pop_drop_where_and_clear() -> None:
    cache: TTLCache[str, int] = TTLCache(10, 10)
    for key in ("x|1", "x|2", "y|1"):
        cache.put(key, 1)
    assert cache.pop("y|1") == 1
    assert cache.pop("y|1") is None
    assert cache.drop_where(lambda key: key.startswith("x|")) == 2
    assert len(cache) == 0
    cache.put("z", 1)
    cache.clear()
    assert len(cache) == 0 and cache.get("z") is None


@pytest.mark.parametrize(("maxsize", "ttl"), [(0, 1.0), (1, 0.0)])
def test_invalid_configuration_is_rejected(maxsize: int, ttl: float) -> None:
    with pytest.raises(ValueError):
        TTLCache(maxsize, ttl)


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


def test_clear_and_stats() -> None:
    clock = FakeClock()
    lru = PartitionedLRU(1, 10, clock)
    lru.for_partition(0).put("a", P)
    lru.for_partition(0).put("b", P)  # evicts a
    clock.now += 11
    assert lru.for_partition(0).get("b") is None  # expired
    lru.for_partition(1).put("c", P)
    assert lru.stats() == {"partitions": 2, "entries": 1, "hits": 0, "misses": 1, "expired": 1, "evicted": 1, "refused": 0}
    lru.clear()
    assert lru.stats()["entries"] == 0
    assert lru.partitions == [0, 1]


def test_put_with_a_ttl_keeps_the_shorter_lifetime() -> None:
    clock = FakeClock()
    cache: TTLCache[str, int] = TTLCache(5, 10, clock)
    cache.put("from-redis", 1, ttl_s=3)  # what it has left in the slower tier
    cache.put("longer", 2, ttl_s=60)  # never beyond the cache's own TTL
    clock.now += 3
    assert cache.get("from-redis") is None
    clock.now += 7
    assert cache.get("longer") is None


def test_put_admits_only_values_fetched_after_the_invalidations_covering_them() -> None:
    from stream_engine.cache.invalidation import Coherence
    from stream_engine.propositions.updates import Invalidation

    coherence = Coherence()
    lru = PartitionedLRU(10, 10, coherence=coherence)
    before = coherence.begin()  # a fetch starts ...
    coherence.raise_floor(Invalidation("type", "v", alert_type="scam"), 1)  # ... an invalidation lands
    assert lru.put(0, "scam|fp=1", P, before) is False  # its answer is refused
    assert lru.put(0, "infra|fp=1", P, before) is True  # not covered: still current
    assert lru.put(0, "scam|fp=1", P, coherence.begin()) is True  # fetched after: fine
    assert lru.stats()["refused"] == 1
