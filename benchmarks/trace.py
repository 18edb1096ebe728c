"""Workload traces for benchmarks: size, rate and bursts on top of ``stream_engine.workload``,
the key trace the engine will see, and the best hit ratio any cache could reach on it.

Bounds, all on the exact proposition keys the engine computes (``KeyBuilder.key_for_dict`` is the
same function the worker applies to the decoded alert) and the partitions keyed publishing
sends them to (Kafka's murmur2 partitioner, 6 partitions like ``alerts``):

* ``ttl_optimum``: an unbounded cache whose entries live ``ttl_s`` from their fill (the LRU's
  semantics: a hit does not extend life). Its misses are the compulsory ones — first sight of a
  key, or first sight after its entry expired. No cache can do better.
* ``belady``: Belady's OPT (evict the key reused furthest in the future) with a capacity per
  partition: the best any cache of that size can do (TTL ignored, so it bounds from above).
* ``lru``: an exact simulation of the engine's partition-local ``TTLCache`` of that capacity.
* ``lru_batched``: the same LRU looked up a whole micro-batch at a time, as ``Triage`` does:
  a key repeated inside one batch misses for every copy (the copies share one service call,
  but all count as ``service`` tier). This is what the engine can actually show.
* ``tiers``: both of the engine's tiers — the partition-local TTL-LRU, looked up a batch at a
  time, in front of Redis (shared, unbounded, entries live ``redis_ttl_s`` from the service
  answer that wrote them; a Redis hit refills the LRU). With unbounded capacity and one lookup
  at a time it is the **TTL-aware optimum** of the whole cache: no engine with these TTLs can hit
  more often; at the LRU's capacity and the run's batch size it is the engine's expected split.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from murmurhash2 import murmurhash2

from stream_engine.kafka.partitioner import KAFKA_MURMUR2_SEED
from stream_engine.keys import KeyBuilder, message_key
from stream_engine.settings import Settings
from stream_engine.workload import Workload

PARTITIONS = 6  # topics/alerts.yaml
CAPACITY_SWEEP = (10, 30, 100, 300, 1000, 3000, 10_000)  # LRU entries per partition


@dataclass(frozen=True, slots=True)
class TraceSpec:
    """``size`` alerts of ``profile`` arriving at ``rate``/s on average.

    Bursts: every ``burst_period_s`` the rate is ``burst`` × ``rate`` for ``burst_duty`` of the
    period and correspondingly lower the rest of the time, so the mean stays ``rate``.
    """

    profile: str = "typical"
    size: int = 10_000
    rate: float = 1000.0
    burst: float = 1.0
    burst_period_s: float = 10.0
    burst_duty: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size < 0 or self.rate <= 0 or self.burst < 1 or not 0 < self.burst_duty < 1:
            raise ValueError("need size >= 0, rate > 0, burst >= 1, 0 < burst_duty < 1")
        if self.burst * self.burst_duty > 1:
            raise ValueError("burst × burst_duty must be <= 1 (the quiet phase cannot go below zero)")

    def rates(self) -> tuple[float, float]:
        """(peak, quiet) alerts/s."""
        peak = self.rate * self.burst
        quiet = self.rate * (1 - self.burst * self.burst_duty) / (1 - self.burst_duty)
        return peak, quiet


@dataclass(slots=True)
class Trace:
    spec: TraceSpec
    alerts: list[dict[str, Any]]
    keys: list[str]
    partitions: list[int]
    times: list[float]  # seconds after the start at which each alert is due

    @property
    def distinct_keys(self) -> int:
        return len(set(self.keys))


def arrival_times(spec: TraceSpec) -> list[float]:
    """Deterministic arrival offsets following the (possibly bursty) rate."""
    peak, quiet = spec.rates()
    burst_len = spec.burst_period_s * spec.burst_duty
    times = []
    t = 0.0
    for _ in range(spec.size):
        times.append(t)
        in_burst = spec.burst > 1 and (t % spec.burst_period_s) < burst_len
        rate = peak if in_burst or spec.burst == 1 else quiet
        # A zero quiet rate (burst × duty == 1) means: jump to the next burst.
        t = t + 1.0 / rate if rate > 0 else (t // spec.burst_period_s + 1) * spec.burst_period_s
    return times


def partition_of(key: bytes, partitions: int = PARTITIONS) -> int:
    return (murmurhash2(key, KAFKA_MURMUR2_SEED) & 0x7FFFFFFF) % partitions


def make_trace(spec: TraceSpec, settings: Settings | None = None, partitions: int = PARTITIONS) -> Trace:
    settings = settings or Settings()
    alerts = Workload(spec.profile, seed=spec.seed).alerts(spec.size)
    for a in alerts:  # `seq` is the generator's, not part of an alert
        a.pop("seq", None)
    builder = KeyBuilder.from_settings(settings)
    keys = [builder.key_for_dict(a) for a in alerts]
    parts = [partition_of(message_key(a, settings.key_fields), partitions) for a in alerts]
    return Trace(spec, alerts, keys, parts, arrival_times(spec))


# --- bounds -----------------------------------------------------------------------------------------
def ttl_optimum(keys: Sequence[str], times: Sequence[float], ttl_s: float) -> float:
    """Hit ratio of an unbounded cache with fill-time TTL: 1 − compulsory misses / N."""
    if not keys:
        return 0.0
    expires: dict[str, float] = {}
    hits = 0
    for key, t in zip(keys, times):
        if expires.get(key, -1.0) > t:
            hits += 1
        else:
            expires[key] = t + ttl_s
    return hits / len(keys)


def _by_partition(keys: Sequence[str], partitions: Sequence[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(partitions):
        groups.setdefault(p, []).append(i)
    return groups


def lru(keys: Sequence[str], times: Sequence[float], partitions: Sequence[int], capacity: int, ttl_s: float) -> float:
    """The engine's partition-local TTL-LRU, one lookup at a time (fill on miss)."""
    if not keys:
        return 0.0
    caches: dict[int, OrderedDict[str, float]] = {}
    hits = 0
    for key, t, p in zip(keys, times, partitions):
        cache = caches.setdefault(p, OrderedDict())
        expires = cache.get(key)
        if expires is not None and expires > t:
            cache.move_to_end(key)
            hits += 1
            continue
        if expires is not None:
            del cache[key]
        cache[key] = t + ttl_s
        if len(cache) > capacity:
            cache.popitem(last=False)
    return hits / len(keys)


def lru_batched(
    keys: Sequence[str], times: Sequence[float], partitions: Sequence[int], capacity: int, ttl_s: float, batch: int
) -> float:
    """The LRU as ``Triage.resolve`` uses it: all of a batch's lookups first, then the fills."""
    if not keys:
        return 0.0
    caches: dict[int, OrderedDict[str, float]] = {}
    hits = 0
    for start in range(0, len(keys), batch):
        missed: list[tuple[str, float, int]] = []
        for key, t, p in zip(keys[start : start + batch], times[start : start + batch], partitions[start : start + batch]):
            cache = caches.setdefault(p, OrderedDict())
            expires = cache.get(key)
            if expires is not None and expires > t:
                cache.move_to_end(key)
                hits += 1
            else:
                missed.append((key, t, p))
        for key, t, p in missed:
            cache = caches[p]
            cache.pop(key, None)
            cache[key] = t + ttl_s
            if len(cache) > capacity:
                cache.popitem(last=False)
    return hits / len(keys)


def belady(keys: Sequence[str], partitions: Sequence[int], capacity: int) -> float:
    """Belady's OPT per partition: on a miss with a full cache, evict the key needed furthest ahead."""
    if not keys:
        return 0.0
    hits = 0
    for indices in _by_partition(keys, partitions).values():
        seq = [keys[i] for i in indices]
        never = len(seq)
        next_use = [never] * len(seq)
        last_seen: dict[str, int] = {}
        for i in range(len(seq) - 1, -1, -1):
            next_use[i] = last_seen.get(seq[i], never)
            last_seen[seq[i]] = i
        cached: dict[str, int] = {}  # key -> its next use (the heap holds stale entries too)
        heap: list[tuple[int, str]] = []
        for i, key in enumerate(seq):
            if key in cached:
                hits += 1
            elif len(cached) >= capacity:
                while True:
                    neg_next, victim = heapq.heappop(heap)
                    if cached.get(victim) == -neg_next:
                        del cached[victim]
                        break
            cached[key] = next_use[i]
            heapq.heappush(heap, (-next_use[i], key))
    return hits / len(keys)


def tiers(
    keys: Sequence[str],
    times: Sequence[float],
    partitions: Sequence[int],
    capacity: float,
    lru_ttl_s: float,
    redis_ttl_s: float,
    batch: int = 1,
) -> dict[str, float]:
    """Shares of lookups answered by ``lru``, ``redis`` and ``service`` (they sum to 1), and
    ``hit`` = lru + redis. ``capacity=math.inf`` and ``batch=1`` give the TTL-aware optimum."""
    if not keys:
        return {"lru": 0.0, "redis": 0.0, "service": 0.0, "hit": 0.0}
    caches: dict[int, OrderedDict[str, float]] = {}
    redis: dict[str, float] = {}  # key -> expiry
    counts = {"lru": 0, "redis": 0, "service": 0}
    for start in range(0, len(keys), batch):
        end = min(start + batch, len(keys))
        now = times[end - 1]  # a batch is looked up once it is complete
        missed: dict[str, list[int]] = {}
        for i in range(start, end):
            cache = caches.setdefault(partitions[i], OrderedDict())
            expires = cache.get(keys[i])
            if expires is not None and expires > now:
                cache.move_to_end(keys[i])
                counts["lru"] += 1
            else:
                missed.setdefault(keys[i], []).append(i)
        for key, copies in missed.items():
            tier = "redis" if redis.get(key, -1.0) > now else "service"
            if tier == "service":
                redis[key] = now + redis_ttl_s
            counts[tier] += len(copies)
            cache = caches[partitions[copies[0]]]  # keyed publishing: a key has one partition
            cache.pop(key, None)
            cache[key] = now + lru_ttl_s
            if len(cache) > capacity:
                cache.popitem(last=False)
    out = {tier: n / len(keys) for tier, n in counts.items()}
    out["hit"] = out["lru"] + out["redis"]
    return out


def optimum(trace: Trace, lru_ttl_s: float, redis_ttl_s: float) -> dict[str, float]:
    """The TTL-aware optimum: both tiers unbounded, every lookup on its own."""
    return tiers(trace.keys, trace.times, trace.partitions, math.inf, lru_ttl_s, redis_ttl_s, 1)


def bounds(trace: Trace, capacity: int, ttl_s: float, batch: int | None = None) -> dict[str, float]:
    out = {
        "ttl_optimum": ttl_optimum(trace.keys, trace.times, ttl_s),
        "belady": belady(trace.keys, trace.partitions, capacity),
        "lru": lru(trace.keys, trace.times, trace.partitions, capacity, ttl_s),
    }
    out["best_achievable"] = min(out["ttl_optimum"], out["belady"])
    if batch:
        out["lru_batched"] = lru_batched(trace.keys, trace.times, trace.partitions, capacity, ttl_s, batch)
    return {k: round(v, 4) for k, v in out.items()}
