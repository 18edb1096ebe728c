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
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.partitioner import murmur2

from stream_engine.keys import KeyBuilder, message_key
from stream_engine.settings import Settings
from stream_engine.workload import Workload

PARTITIONS = 6  # topics/alerts.yaml


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
    return (murmur2(key) & 0x7FFFFFFF) % partitions


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
