"""Redis: the proposition cache shared by every worker.

One round trip per batch each way: ``get_many`` is a single ``MGET``, ``put_many`` a single
non-transactional pipeline of ``SET key value EX ttl``.

Layout (``ns`` = namespace, default ``se:p``)::

    ns:gen                 current generation, an integer (missing = 0)
    ns:tgen:<alert type>   current generation of one alert type, an integer (missing = 0)
    ns:<gen>:<prop key>    orjson {"v": version?, "t": type generation?, "p": [[action, confidence, rationale], ...]}
    ns:seen:<version>      marker: this rules version already bumped the generation

Invalidating *everything* (new rules version) increments ``ns:gen`` instead of deleting keys:
old entries become unreachable at once and expire by TTL. Every ``MGET`` also reads ``ns:gen``
(same round trip), so each worker notices a bump on its next batch even if it never sees the
updates message; a batch that read an outdated generation is treated as all misses.
``invalidate_all(version)`` bumps once per version however many workers call it (the ``seen``
marker), so N workers handling one updates message cost one cold cache, not N.

Invalidating one *alert type* is O(1) too: ``INCR ns:tgen:<type>``. Every value carries the type
generation it was written under, the same ``MGET`` reads the current type generations of the
batch's types, and a value whose tag differs is a miss (counted as ``stale_type``). A batch writes
back with the type generations it believed *before* its ``MGET`` (``type_generations``), so an
answer fetched before an invalidation is never tagged as current.

Redis is an optimisation, never a dependency: any error or timeout is counted, the call returns
empty / does nothing, and the tier is skipped for ``retry_after_s``; after that it is simply
tried again, so it recovers by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import redis.asyncio as redis_asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from stream_engine.keys import encode_part, type_prefix
from stream_engine.models import Proposition

log = logging.getLogger(__name__)

OUTAGE_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
SEEN_VERSION_TTL_S = 7 * 24 * 3600


@dataclass(slots=True)
class RedisCounters:
    hits: int = 0
    misses: int = 0
    errors: int = 0
    skipped: int = 0  # calls not attempted because the tier was degraded
    corrupt: int = 0  # undecodable values, treated as misses
    stale_generation: int = 0  # get_many batches discarded because the generation moved
    stale_type: int = 0  # values discarded because their alert type was invalidated since


class RedisTier:
    def __init__(
        self,
        client: redis_asyncio.Redis,
        ttl_s: int,
        namespace: str = "se:p",
        retry_after_s: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.namespace = namespace
        self.retry_after_s = retry_after_s
        self._clock = clock
        self._gen_key = f"{namespace}:gen"
        self._generation = 0
        self._type_generations: dict[str, int] = {}  # believed, per alert-type key prefix
        self._skip_until = float("-inf")
        self.counters = RedisCounters()

    @classmethod
    def from_settings(cls, settings: Any, namespace: str | None = None) -> RedisTier:
        client = redis_asyncio.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            # redis-py retries with backoff by default; we degrade instead of stalling a batch.
            retry=Retry(NoBackoff(), 0),
        )
        return cls(client, settings.redis_ttl_s, namespace or settings.redis_namespace, settings.redis_retry_after_s)

    # --- state ----------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """The generation this worker last saw. Snapshot it *before* ``get_many`` and pass it
        to ``put_many`` so answers fetched before an invalidation never land in the new one."""
        return self._generation

    @property
    def type_generations(self) -> dict[str, int]:
        """A snapshot of the type generations this worker believes; pass it to ``put_many``
        with ``generation`` (both taken before ``get_many``)."""
        return dict(self._type_generations)

    @property
    def degraded(self) -> bool:
        return self._clock() < self._skip_until

    def stats(self) -> dict[str, Any]:
        return {**asdict(self.counters), "degraded": self.degraded, "generation": self._generation}

    def data_key(self, key: str, generation: int | None = None) -> str:
        return f"{self.namespace}:{self._generation if generation is None else generation}:{key}"

    def _failed(self, operation: str, exc: BaseException) -> None:
        self.counters.errors += 1
        self._skip_until = self._clock() + self.retry_after_s
        log.warning(
            "redis %s failed (%s: %s); skipping the tier for %.1fs", operation, type(exc).__name__, exc, self.retry_after_s
        )

    # --- hot path -------------------------------------------------------------------------

    async def get_many(self, keys: list[str]) -> dict[str, list[Proposition]]:
        """Cached propositions for the keys found; absent keys are misses. One MGET."""
        if not keys:
            return {}
        if self.degraded:
            self.counters.skipped += 1
            return {}
        generation = self._generation
        types = list(dict.fromkeys(_type_of(k) for k in keys))
        try:
            values = await self.client.mget(
                [self._gen_key, *(self._tgen_key(t) for t in types), *(f"{self.namespace}:{generation}:{k}" for k in keys)]
            )
        except OUTAGE_ERRORS as exc:
            self._failed("MGET", exc)
            return {}
        current = _parse_generation(values[0])
        type_generations = {t: _parse_generation(raw) for t, raw in zip(types, values[1 : 1 + len(types)])}
        self._type_generations.update(type_generations)
        if current != generation:
            self._generation = current
            self.counters.stale_generation += 1
            self.counters.misses += len(keys)
            return {}
        found: dict[str, list[Proposition]] = {}
        for key, raw in zip(keys, values[1 + len(types) :]):
            if raw is None:
                self.counters.misses += 1
                continue
            decoded = _decode(raw)
            if decoded is None:
                self.counters.corrupt += 1
                self.counters.misses += 1
                continue
            propositions, tag = decoded
            if tag != type_generations[_type_of(key)]:
                self.counters.stale_type += 1
                self.counters.misses += 1
                continue
            found[key] = propositions
            self.counters.hits += 1
        return found

    async def put_many(
        self,
        items: dict[str, list[Proposition]],
        *,
        generation: int | None = None,
        type_generations: dict[str, int] | None = None,
        version: str | None = None,
    ) -> bool:
        """Store under ``generation`` and ``type_generations`` (default: the current ones). One
        pipelined round trip.

        Returns False if Redis was skipped or failed (nothing to do for the caller).
        """
        if not items:
            return True
        if self.degraded:
            self.counters.skipped += 1
            return False
        prefix = f"{self.namespace}:{self._generation if generation is None else generation}:"
        tags = self._type_generations if type_generations is None else type_generations
        pipe = self.client.pipeline(transaction=False)
        for key, propositions in items.items():
            pipe.set(prefix + key, _encode(propositions, version, tags.get(_type_of(key), 0)), ex=self.ttl_s)
        try:
            await pipe.execute()
        except OUTAGE_ERRORS as exc:
            self._failed("SET pipeline", exc)
            return False
        return True

    # --- invalidation (rare; tried even while degraded) ------------------------------------

    async def refresh_generation(self) -> int | None:
        """Re-read the generation (e.g. when an updates message arrives). None if unreachable."""
        try:
            self._generation = _parse_generation(await self.client.get(self._gen_key))
        except OUTAGE_ERRORS as exc:
            self._failed("GET generation", exc)
            return None
        return self._generation

    async def invalidate_key(self, key: str) -> int | None:
        """Delete one key in the current generation; the number removed, None if unreachable."""
        if await self.refresh_generation() is None:
            return None
        try:
            return int(await self.client.unlink(self.data_key(key)))
        except OUTAGE_ERRORS as exc:
            self._failed("UNLINK", exc)
            return None

    async def invalidate_type(self, alert_type: str) -> int | None:
        """Move one alert type to a new type generation (one INCR); returns it, None if unreachable."""
        prefix = _type_of(type_prefix(alert_type))
        try:
            self._type_generations[prefix] = int(await self.client.incr(self._tgen_key(prefix)))
        except OUTAGE_ERRORS as exc:
            self._failed("INCR type generation", exc)
            return None
        return self._type_generations[prefix]

    def _tgen_key(self, type_part: str) -> str:
        return f"{self.namespace}:tgen:{type_part}"

    async def invalidate_all(self, version: str | None = None) -> int | None:
        """Move every worker to a new, empty generation; returns it (None if unreachable).

        With a version, only the first call for that version bumps; later calls (other workers,
        redelivered messages within a week) just adopt the current generation.
        """
        try:
            if version is None or await self.client.set(
                f"{self.namespace}:seen:{encode_part(version)}", b"1", nx=True, ex=SEEN_VERSION_TTL_S
            ):
                self._generation = int(await self.client.incr(self._gen_key))
            else:
                self._generation = _parse_generation(await self.client.get(self._gen_key))
        except OUTAGE_ERRORS as exc:
            self._failed("invalidate_all", exc)
            return None
        return self._generation

    async def close(self) -> None:
        await self.client.aclose()


def _type_of(key: str) -> str:
    """The alert-type part of a proposition key (keys start with ``type_prefix(type)``)."""
    return key.partition("|")[0]


def _encode(propositions: list[Proposition], version: str | None, type_generation: int) -> bytes:
    value: dict[str, Any] = {"p": [[p.action, p.confidence, p.rationale] for p in propositions]}
    if version is not None:
        value["v"] = version
    if type_generation:
        value["t"] = type_generation
    return orjson.dumps(value)


def _decode(raw: bytes) -> tuple[list[Proposition], int] | None:
    """(propositions, type generation tag) or None if the value is not ours."""
    try:
        value = orjson.loads(raw)
        props = [Proposition(str(action), float(confidence), str(rationale)) for action, confidence, rationale in value["p"]]
        return props, int(value.get("t", 0))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


def _parse_generation(raw: bytes | str | None) -> int:
    try:
        return int(raw) if raw is not None else 0
    except ValueError:
        return 0
