"""A bounded LRU with per-entry TTL: hits, misses, eviction, expiry, counters."""

from __future__ import annotations

import pytest

from stream_engine.cache.ttl_cache import TTLCache
from stream_engine.models import Proposition
from tests.unit.fakes import FakeClock

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


def test_put_existing_key_refreshes_value_recency_and_ttl(clock: FakeClock) -> None:
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


def test_expired_entries_are_removed_on_access(clock: FakeClock) -> None:
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
    assert cache.clear() == 1  # how many it dropped (an invalidation reports it)
    assert len(cache) == 0 and cache.get("z") is None


def test_put_with_a_ttl_keeps_the_shorter_lifetime(clock: FakeClock) -> None:
    cache: TTLCache[str, int] = TTLCache(5, 10, clock)
    cache.put("from-redis", 1, ttl_s=3)  # what it has left in the slower tier
    cache.put("longer", 2, ttl_s=60)  # never beyond the cache's own TTL
    clock.now += 3
    assert cache.get("from-redis") is None
    clock.now += 7
    assert cache.get("longer") is None


@pytest.mark.parametrize(("maxsize", "ttl"), [(0, 1.0), (1, 0.0)])
def test_invalid_configuration_is_rejected(maxsize: int, ttl: float) -> None:
    with pytest.raises(ValueError):
        TTLCache(maxsize, ttl)
