"""Coherence: tags, floors and the rule "a value is current iff fetched after every invalidation
covering it"; Invalidations against a stand-in Redis tier at its seam (what it is asked to do)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stream_engine.cache.invalidation import Coherence, Invalidations
from stream_engine.cache.partitioned import PartitionedLRU
from stream_engine.models import Proposition
from stream_engine.propositions.updates import Invalidation

P = [Proposition("rerun", 0.9, "flaky")]


def test_a_value_is_current_iff_fetched_after_every_invalidation_covering_it() -> None:
    c = Coherence()
    t0 = c.begin()
    c.raise_floor(Invalidation("key", "v", key="scam|fp=1"), 1)
    c.raise_floor(Invalidation("type", "v", alert_type="infra"), 2)
    t2 = c.begin()
    c.raise_floor(Invalidation("all", "v"), 3)
    t3 = c.begin()
    assert (t0, t2, t3, c.seq) == (0, 2, 3, 3)
    assert [c.floor(k) for k in ("scam|fp=1", "scam|fp=2", "infra|fp=1", "ci_failure|x")] == [3, 3, 3, 3]
    assert not c.admits("ci_failure|x", t2) and c.admits("ci_failure|x", t3)
    c2 = Coherence()
    c2.raise_floor(Invalidation("key", "v", key="scam|fp=1"), 1)
    c2.raise_floor(Invalidation("type", "v", alert_type="infra"), 2)
    assert not c2.admits("scam|fp=1", 0) and c2.admits("scam|fp=2", 0)
    assert not c2.admits("infra|fp=9", 1) and c2.admits("infra_x|fp=9", 0)  # a type whose name starts alike
    assert c2.admits("infra|fp=9", 2)


def test_key_floors_are_kept_while_an_older_fetch_is_in_flight_or_redis_lags() -> None:
    c = Coherence()
    old = c.begin()
    c.raise_floor(Invalidation("key", "v", key="k|1"), 1)
    c.prune(float("inf"))
    assert "k|1" in c.keys  # the old fetch could still write k|1 back
    c.end(old)
    c.prune(1)  # Redis has not taken seq 1 yet: its old value may still be read there
    assert "k|1" in c.keys
    c.prune(float("inf"))
    assert not c.keys


class StandInRedis:
    """The seam Invalidations uses; fails the first ``fail`` calls like an outage."""

    namespace = "t"

    def __init__(self, fail: int = 0, applied: int | None = 0) -> None:
        self.fail = fail
        self.applied = applied
        self.taken: list[tuple[str, int]] = []

    async def apply_invalidation(self, inv: Invalidation, seq: int) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("redis down")
        self.taken.append((inv.scope, seq))

    async def applied_through(self) -> int | None:
        return self.applied

    async def check_eviction_policy(self) -> Any:
        return "volatile-ttl"


async def test_an_invalidation_redis_does_not_take_is_retried_until_it_does() -> None:
    coherence = Coherence()
    lru = PartitionedLRU(10, 10, coherence=coherence)
    redis = StandInRedis(fail=2)
    inv = Invalidations(coherence, lru, redis, retry_s=0.01)  # type: ignore[arg-type]
    lru.put(0, "k|1", P, coherence.begin())
    await inv.apply(Invalidation("all", "v"), 5)
    assert lru.stats()["entries"] == 0 and coherence.all == 5  # this worker: at once
    assert inv.stats()["pending"] == 1 and redis.taken == []
    await inv.start()
    try:
        for _ in range(500):
            if not inv.stats()["pending"]:
                break
            await asyncio.sleep(0.01)
    finally:
        await inv.stop()
    assert redis.taken == [("all", 5)]
    assert inv.stats() | {} == {"applied": 1, "redis_applied": 1, "redis_failures": 2, "lru_removed": 1, "pending": 0, "seq": 5}


@pytest.mark.parametrize(
    ("applied", "first", "end", "offset", "taken"),
    [
        (7, 0, 7, 7, []),  # Redis has everything: start at the end
        (4, 0, 7, 4, []),  # nobody applied 5..7: read them again from offset 4
        (1, 3, 7, 3, [("all", 3)]),  # 2..3 left the topic: everything up to 3 is invalidated instead
        (None, 0, 7, 7, []),  # Redis unreachable: nothing to resume
    ],
)
async def test_resume_replays_what_redis_has_not_applied(
    applied: int | None, first: int, end: int, offset: int, taken: list[tuple[str, int]]
) -> None:
    coherence = Coherence()
    redis = StandInRedis(applied=applied)
    inv = Invalidations(coherence, PartitionedLRU(10, 10, coherence=coherence), redis)  # type: ignore[arg-type]
    assert await inv.resume(first, end) == offset
    assert redis.taken == taken and coherence.seq == end
