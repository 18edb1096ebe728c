"""Redis: the proposition cache shared by every worker — one Redis, or a Redis Cluster.

``STREAM_ENGINE_REDIS_URL`` picks the client: ``redis://host:port/db`` (or ``rediss://``) is one
Redis; ``redis+cluster://host:port,host:port`` (or ``rediss+cluster://``, optional
``user:password@`` before the first node) is a cluster, reached through redis-py's cluster
client from any of the listed nodes (the others are discovered).

Layout. Keys are grouped in *buckets* by a hash tag, so that everything one read or write needs
is in one slot: one Redis has one bucket, ``{ns}``; a cluster has 64, ``{ns:0}`` … ``{ns:63}``,
a key's bucket being ``crc32(key) % 64`` (``ns`` = namespace, default ``se:p``)::

    {B}:all           the bucket's floor of everything: sequence of the latest "all" invalidation
    {B}:t:<type>      the bucket's floor of one alert type (type part of the key)
    {B}:<prop key>    a value, orjson {"s": tag, "e": expires at (epoch ms), "v": rules version?,
                      "p": [[action, confidence, rationale], ...]}, or the tombstone of a key
                      invalidation, {"s": its sequence}; both with the TTL redis_ttl_s
    {ns}:applied      the sequence up to which invalidations were all applied here

Sequences, tags and floors are explained in :mod:`stream_engine.cache.invalidation`. A value is
**served** iff it is not a tombstone and its tag is at least its bucket's floor of everything,
its type's floor, and this worker's own floors for the key. It is **written** by a Lua script
(one per bucket, atomic with what it checks) iff its tag is at least both bucket floors and the
``"s"`` of what the key holds now — so a key invalidation's tombstone keeps out every answer
fetched before it, and nothing replaces a newer answer. Floors and ``applied`` only ever rise
(a script takes the max), which makes every invalidation idempotent: retried after a lost reply,
or applied by every worker, it changes nothing the second time.

Control state cannot be evicted: floors and ``applied`` have no TTL and every value and tombstone
has one, so a ``volatile-*`` maxmemory policy only ever evicts cache entries. The local stack and
docker-compose run ``volatile-ttl`` (the entries closest to expiring go first; a fresh tombstone
goes last). Under an ``allkeys-*`` policy a floor could be evicted and read as 0, bringing old
answers back: the worker warns at start (:meth:`RedisTier.check_eviction_policy`).

TTLs are not extended by tier hops: a value carries its expiry, and a Redis hit lives in the LRU
no longer than it has left in Redis.

Round trips per batch: ``get_many`` is one MGET per bucket touched (one Redis: one MGET), with
the bucket's floors in the same MGET; ``put_many`` one EVALSHA per bucket. On a cluster those go
as one pipeline per node, the nodes in parallel. Hash-tagged buckets rather than per-slot
pipelines of the plain keys: fewer, larger commands (a 500-key batch touches ~64 buckets but ~490
slots), and the floors share each bucket's slot, so reads and the write script need no second
command — measured in ``benchmarks/redis_cluster_layout.py``.

Redis is an optimisation, never a dependency: any error or timeout is counted, the call returns
empty / does nothing, and the tier is skipped for ``retry_after_s``; after that it is simply
tried again, so it recovers by itself (invalidations are retried by their owner until applied).
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import orjson
import redis.asyncio as redis_asyncio
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from stream_engine.cache.invalidation import Coherence, type_part
from stream_engine.keys import type_prefix
from stream_engine.models import Proposition

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from stream_engine.propositions.updates import Invalidation

log = logging.getLogger(__name__)

# RedisClusterException: e.g. a slot no live node serves (not a RedisError subclass).
OUTAGE_ERRORS = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)
CLUSTER_BUCKETS = 64
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")

RedisClient = redis_asyncio.Redis | RedisCluster

# "s" of a stored value or tombstone: orjson keeps insertion order, so it is always first.
_SEQ_OF = "(tonumber(string.match(redis.call('GET', KEYS[i]) or '', '^{\"s\":(%d+)')) or -1)"

# KEYS: the bucket's all-floor, its type floors (ARGV[3] of them), then the value keys.
# ARGV: tag, ttl ms, number of type floors, per value key the index of its type floor, the values.
WRITE_SCRIPT = """
local tag = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[1]) or '0') > tag then return 0 end
local n_types = tonumber(ARGV[3])
local current = {}
for t = 1, n_types do current[t] = tonumber(redis.call('GET', KEYS[1 + t]) or '0') <= tag end
local n = #KEYS - 1 - n_types
local written = 0
for j = 1, n do
  local i = 1 + n_types + j
  if current[tonumber(ARGV[3 + j])] and SEQ_OF <= tag then
    redis.call('SET', KEYS[i], ARGV[3 + n + j], 'PX', ARGV[2])
    written = written + 1
  end
end
return written
""".replace("SEQ_OF", _SEQ_OF)

# Every key becomes max(its value, ARGV[1]).
RAISE_SCRIPT = """
local seq = tonumber(ARGV[1])
local raised = 0
for i = 1, #KEYS do
  if tonumber(redis.call('GET', KEYS[i]) or '0') < seq then
    redis.call('SET', KEYS[i], ARGV[1])
    raised = raised + 1
  end
end
return raised
"""

# KEYS[1]: a value key; ARGV: the key invalidation's sequence, the ttl ms. What the key holds
# stays if it is at least as new (an answer fetched after this invalidation was applied).
TOMBSTONE_SCRIPT = """
local i = 1
if SEQ_OF >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], '{"s":' .. ARGV[1] .. '}', 'PX', ARGV[2])
return 1
""".replace("SEQ_OF", _SEQ_OF)


# A current value read from Redis: (propositions, tag, seconds left of its lifetime). A plain
# tuple: one is built per hit on the hot path.
Cached = tuple[list[Proposition], int, float]


@dataclass(slots=True)
class RedisCounters:
    hits: int = 0
    misses: int = 0
    errors: int = 0
    skipped: int = 0  # calls not attempted because the tier was degraded
    corrupt: int = 0  # undecodable values, treated as misses
    stale: int = 0  # values read but older than an invalidation covering them
    refused: int = 0  # values the write refused: older than an invalidation, or than what was stored


def client_from_url(url: str, timeout_s: float) -> RedisClient:
    """A single-Redis or cluster client that fails fast (we degrade instead of retrying)."""
    common: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 0),
    }
    scheme, _, rest = url.partition("://")
    if scheme not in CLUSTER_SCHEMES:
        return redis_asyncio.Redis.from_url(url, **common)
    userinfo, _, hosts = rest.rpartition("@")
    username, _, password = userinfo.partition(":")
    nodes = []
    for host in hosts.split("/", 1)[0].split(","):
        name, _, port = host.strip().rpartition(":")
        nodes.append(ClusterNode(name.strip("[]") or "127.0.0.1", int(port or 6379)))
    return RedisCluster(
        startup_nodes=nodes,
        username=unquote(username) or None,
        password=unquote(password) or None,
        ssl=scheme.startswith("rediss"),
        require_full_coverage=False,  # a node down takes its slots, not the whole tier
        **common,
    )


class RedisTier:
    def __init__(
        self,
        client: RedisClient,
        ttl_s: int,
        namespace: str = "se:p",
        retry_after_s: float = 1.0,
        *,
        coherence: Coherence | None = None,
        buckets: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.namespace = namespace
        self.retry_after_s = retry_after_s
        self.coherence = coherence if coherence is not None else Coherence()
        self.cluster = isinstance(client, RedisCluster)
        self.buckets = buckets or (CLUSTER_BUCKETS if self.cluster else 1)
        self._tags = [f"{{{namespace}}}"] if self.buckets == 1 else [f"{{{namespace}:{b}}}" for b in range(self.buckets)]
        self._applied_key = f"{{{namespace}}}:applied"
        # Cluster: the slot of every hash tag, so commands go straight to the node serving it
        # (redis-py would otherwise hash every key of every command to find it).
        self._slots = {tag: key_slot(tag[1:-1].encode()) for tag in [*self._tags, f"{{{namespace}}}"]}
        self._clock = clock
        self._wall = wall
        self._skip_until = float("-inf")
        self._write: AsyncScript = client.register_script(WRITE_SCRIPT)
        self._raise: AsyncScript = client.register_script(RAISE_SCRIPT)
        self._tombstone: AsyncScript = client.register_script(TOMBSTONE_SCRIPT)
        self.counters = RedisCounters()

    @classmethod
    def from_settings(cls, settings: Any, namespace: str | None = None, coherence: Coherence | None = None) -> RedisTier:
        return cls(
            client_from_url(settings.redis_url, settings.redis_timeout_s),
            settings.redis_ttl_s,
            namespace or settings.redis_namespace,
            settings.redis_retry_after_s,
            coherence=coherence,
        )

    # --- state ----------------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        return self._clock() < self._skip_until

    def stats(self) -> dict[str, Any]:
        return {**asdict(self.counters), "degraded": self.degraded, "buckets": self.buckets}

    def bucket_of(self, key: str) -> str:
        return self._tags[zlib.crc32(key.encode()) % self.buckets] if self.buckets > 1 else self._tags[0]

    def data_key(self, key: str) -> str:
        return f"{self.bucket_of(key)}:{key}"

    def _by_bucket(self, keys: Iterable[str]) -> dict[str, list[str]]:
        if self.buckets == 1:
            return {self._tags[0]: list(keys)}
        groups: dict[str, list[str]] = {}
        for key in keys:
            groups.setdefault(self.bucket_of(key), []).append(key)
        return groups

    def _failed(self, operation: str, exc: BaseException) -> None:
        self.counters.errors += 1
        self._skip_until = self._clock() + self.retry_after_s
        log.warning(
            "redis %s failed (%s: %s); skipping the tier for %.1fs", operation, type(exc).__name__, exc, self.retry_after_s
        )

    # --- hot path -------------------------------------------------------------------------

    async def get_many(self, keys: list[str]) -> dict[str, Cached]:
        """Current values for the keys found; absent, stale or expired keys are misses."""
        if not keys:
            return {}
        if self.degraded:
            self.counters.skipped += 1
            return {}
        reads = []
        for tag, group in self._by_bucket(keys).items():
            types = list(dict.fromkeys(type_part(k) for k in group))
            reads.append((group, types, [f"{tag}:all", *(f"{tag}:t:{t}" for t in types), *(f"{tag}:{k}" for k in group)]))
        try:
            if len(reads) == 1 and not self.cluster:
                replies = [await self.client.mget(reads[0][2])]
            else:
                replies = await self._pipeline([("MGET", *names) for _, _, names in reads])
        except OUTAGE_ERRORS as exc:
            self._failed("MGET", exc)
            return {}
        now_ms = self._wall() * 1000.0
        admits = self.coherence.admits
        counters = self.counters
        found: dict[str, Cached] = {}
        for (group, types, _), values in zip(reads, replies):
            floor_all = _int(values[0])
            floors = {t: max(floor_all, _int(raw)) for t, raw in zip(types, values[1 : 1 + len(types)])}
            for key, raw in zip(group, values[1 + len(types) :]):
                if raw is None:
                    counters.misses += 1
                    continue
                decoded = _decode(raw)
                if decoded is None:
                    counters.corrupt += 1
                    counters.misses += 1
                    continue
                tag, expires_ms, propositions = decoded
                if propositions is None or expires_ms <= now_ms:  # a tombstone, or expiring right now
                    counters.misses += 1
                elif tag < floors[type_part(key)] or not admits(key, tag):
                    counters.stale += 1
                    counters.misses += 1
                else:
                    found[key] = (propositions, tag, (expires_ms - now_ms) / 1000.0)
                    counters.hits += 1
        return found

    async def put_many(self, items: dict[str, list[Proposition]], tag: int, *, version: str | None = None) -> bool:
        """Store answers fetched under ``tag``: those an invalidation has overtaken meanwhile, here
        or in Redis, are refused. Returns False if Redis was skipped or failed."""
        admits = self.coherence.admits
        current = {key: props for key, props in items.items() if admits(key, tag)}
        self.counters.refused += len(items) - len(current)
        if not current:
            return True
        if self.degraded:
            self.counters.skipped += 1
            return False
        ttl_ms = int(self.ttl_s * 1000)
        expires_ms = int(self._wall() * 1000) + ttl_ms
        calls = []
        for bucket, group in self._by_bucket(current).items():
            types = list(dict.fromkeys(type_part(k) for k in group))
            index = {t: i for i, t in enumerate(types, start=1)}
            names = [f"{bucket}:all", *(f"{bucket}:t:{t}" for t in types), *(f"{bucket}:{k}" for k in group)]
            args: list[Any] = [tag, ttl_ms, len(types), *(index[type_part(k)] for k in group)]
            args.extend(_encode(current[k], tag, expires_ms, version) for k in group)
            calls.append((self._write, names, args))
        try:
            written = sum(await self._run(calls))
        except OUTAGE_ERRORS as exc:
            self._failed("write", exc)
            return False
        self.counters.refused += len(current) - written
        return True

    # --- invalidation (rare; tried even while degraded) ------------------------------------

    async def apply_invalidation(self, inv: Invalidation, seq: int) -> None:
        """Raise the floors ``inv`` covers (or tombstone its key) to ``seq`` in every bucket, and
        ``applied`` with them. Idempotent; raises on failure (the caller retries)."""
        raised: list[str] = [self._applied_key]
        calls: list[tuple[AsyncScript, list[str], list[Any]]] = []
        if inv.scope == "key" and inv.key:
            calls.append((self._tombstone, [self.data_key(inv.key)], [seq, int(self.ttl_s * 1000)]))
        elif inv.scope == "type" and inv.alert_type:
            part = type_part(type_prefix(inv.alert_type))
            raised += [f"{tag}:t:{part}" for tag in self._tags]
        else:
            raised += [f"{tag}:all" for tag in self._tags]
        by_slot: dict[str, list[str]] = {}
        for name in raised:  # one script per hash tag: a script's keys must share a slot
            by_slot.setdefault(name[: name.index("}") + 1], []).append(name)
        calls += [(self._raise, names, [seq]) for names in by_slot.values()]
        try:
            await self._run(calls)
        except OUTAGE_ERRORS as exc:
            self._failed(f"invalidation seq={seq}", exc)
            raise

    async def applied_through(self) -> int | None:
        """The sequence up to which every invalidation was applied here (0: none); None if unreachable."""
        try:
            return _int(await self.client.get(self._applied_key))
        except OUTAGE_ERRORS as exc:
            self._failed("GET applied", exc)
            return None

    async def check_eviction_policy(self) -> str | None:
        """Warn if Redis may evict keys without a TTL (our floors). Returns the policy (None if
        it cannot be read, e.g. CONFIG is disabled on a managed Redis)."""
        try:
            answer = await self.client.config_get("maxmemory-policy")
        except OUTAGE_ERRORS as exc:
            log.info("cannot read Redis maxmemory-policy (%s): make sure it is a volatile-* one", exc)
            return None
        policies = set(_policies(answer))
        unsafe = sorted(p for p in policies if not p.startswith("volatile") and p != "noeviction")
        if unsafe:
            log.warning(
                "Redis maxmemory-policy %s can evict the cache's invalidation floors (keys without a TTL) and "
                "bring old answers back: use volatile-ttl (or any volatile-* policy)", ",".join(unsafe),
            )  # fmt: skip
        return ",".join(sorted(policies)) or None

    async def _pipeline(self, commands: list[tuple[Any, ...]], raise_on_error: bool = True) -> list[Any]:
        """Commands whose keys share one hash tag (the first key's) as one pipeline; on a cluster
        each goes to the node serving that tag's slot: one pipeline per node, in parallel."""
        client = self.client
        if not isinstance(client, RedisCluster):
            pipe = client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute(raise_on_error=raise_on_error))
        await client.initialize()  # a no-op once the slot table is known
        node_of = client.nodes_manager.get_node_from_slot
        pipe = client.pipeline(transaction=False)
        for command in commands:
            key = command[3] if command[0] == "EVALSHA" else command[1]
            slot = self._slots[key[: key.index("}") + 1]]
            # execute_command: the cluster pipeline refuses .mget()/.evalsha() by name, for keys
            # it cannot tell share a slot; ours do, and the node is given.
            pipe.execute_command(*command, target_nodes=[node_of(slot)])
        return list(await pipe.execute(raise_on_error=raise_on_error))

    async def _run(self, calls: list[tuple[AsyncScript, list[str], list[Any]]]) -> list[Any]:
        """Run scripts: one directly, several as one pipeline (per node on a cluster). A node
        that forgot a script (restarted) gets it loaded again."""
        if len(calls) == 1 and not self.cluster:
            script, keys, args = calls[0]
            return [await script(keys, args)]
        commands = [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args in calls]
        results = await self._pipeline(commands, raise_on_error=False)
        for i, result in enumerate(results):
            if isinstance(result, NoScriptError):
                script, keys, args = calls[i]
                results[i] = await script(keys, args)  # loads it and runs it
            elif isinstance(result, Exception):
                raise result
        return results

    async def close(self) -> None:
        await self.client.aclose()


def _policies(answer: Any) -> Iterable[str]:
    """maxmemory-policy values from CONFIG GET: one dict, or one per node on a cluster."""
    if isinstance(answer, dict):
        for name, value in answer.items():
            if isinstance(value, dict):
                yield from _policies(value)
            elif (name.decode() if isinstance(name, bytes) else name) == "maxmemory-policy":
                yield value.decode() if isinstance(value, bytes) else str(value)


def _encode(propositions: list[Proposition], tag: int, expires_ms: int, version: str | None) -> bytes:
    value: dict[str, Any] = {"s": tag, "e": expires_ms}  # "s" first: the scripts read it
    if version is not None:
        value["v"] = version
    value["p"] = [[p.action, p.confidence, p.rationale] for p in propositions]
    return orjson.dumps(value)


def _decode(raw: bytes) -> tuple[int, float, list[Proposition] | None] | None:
    """(tag, expires at ms, propositions or None for a tombstone), or None if not ours."""
    try:
        value = orjson.loads(raw)
        tag = int(value["s"])
        if "p" not in value:
            return tag, float("inf"), None
        props = [Proposition(str(action), float(confidence), str(rationale)) for action, confidence, rationale in value["p"]]
        return tag, float(value["e"]), props
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


def _int(raw: bytes | str | None) -> int:
    try:
        return int(raw) if raw is not None else 0
    except ValueError:
        return 0
