"""RedisTier against real Redis: the stack's single Redis and (``redis_cluster`` fixture) a local
3-master Redis Cluster. Both run every behaviour test; command counts and outages (a TCP proxy in
front of the real Redis that can stop, hang, or lose a reply) are single-Redis tests.

Sequences, tags and floors: stream_engine.cache.invalidation. A "worker" here is a RedisTier with
its own Coherence (its own local floors), as in a real worker.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import redis.asyncio as redis_asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from stream_engine.cache.invalidation import Coherence, Invalidations
from stream_engine.cache.partitioned import PartitionedLRU
from stream_engine.cache.redis_tier import CLUSTER_BUCKETS, RedisTier, client_from_url
from stream_engine.models import Proposition
from stream_engine.propositions.updates import Invalidation
from stream_engine.settings import Settings
from tests.redis_proxy import RedisProxy

pytestmark = pytest.mark.integration

P1 = [Proposition("rerun", 0.91, "flaky test"), Proposition("page", 0.2, "")]
P2 = [Proposition("block", 0.99, "known scam")]
ALL = Invalidation("all", "v")


def by_type(alert_type: str) -> Invalidation:
    return Invalidation("type", "v", alert_type=alert_type)


def by_key(key: str) -> Invalidation:
    return Invalidation("key", "v", key=key)


class CountingConnection(redis_asyncio.Connection):
    """Records command names and socket writes (= round trips) of every command sent."""

    commands: list[str] = []
    round_trips: list[int] = []

    def pack_command(self, *args: Any) -> list[bytes]:
        name = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
        type(self).commands.append(name.split()[0].upper())
        return super().pack_command(*args)

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).round_trips.append(1)
        await super().send_packed_command(command, check_health)

    @classmethod
    def reset(cls) -> None:
        cls.commands.clear()
        cls.round_trips.clear()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_client(url: str, connection_class: type[redis_asyncio.Connection] = redis_asyncio.Connection) -> redis_asyncio.Redis:
    pool = redis_asyncio.ConnectionPool.from_url(
        url, connection_class=connection_class, socket_timeout=0.3, socket_connect_timeout=0.3, retry=Retry(NoBackoff(), 0)
    )
    return redis_asyncio.Redis(connection_pool=pool)


@pytest.fixture
def namespace() -> str:
    return f"test:{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest) -> str:
    if request.param == "single":
        return request.getfixturevalue("stack").redis_url
    return request.getfixturevalue("redis_cluster")


@pytest.fixture
def single_url(stack: Settings) -> str:
    return stack.redis_url


Workers = Callable[[], RedisTier]


@pytest.fixture
async def workers(redis_url: str, namespace: str) -> AsyncIterator[Workers]:
    """``workers()`` -> a new RedisTier (own Coherence) on the namespace; all closed and the
    namespace deleted afterwards."""
    made: list[RedisTier] = []

    def make() -> RedisTier:
        client = make_client(redis_url, CountingConnection) if not redis_url.startswith("redis+") else client_from_url(redis_url, 0.5)
        made.append(RedisTier(client, ttl_s=60, namespace=namespace))
        return made[-1]

    yield make
    raw = client_from_url(redis_url, 2.0)
    try:
        for pattern in (f"{{{namespace}}}*", f"{{{namespace}:*"):
            if isinstance(raw, redis_asyncio.Redis):
                keys = [k async for k in raw.scan_iter(match=pattern, count=1000)]
                if keys:
                    await raw.unlink(*keys)
            else:
                for node in raw.get_primaries():
                    keys = [k async for k in raw.scan_iter(match=pattern, count=1000, target_nodes=node)]
                    for key in keys:
                        await raw.unlink(key)
    finally:
        await raw.aclose()
    for tier in made:
        await tier.close()


async def apply(tier: RedisTier, inv: Invalidation, seq: int) -> None:
    """What a worker does: its own floors first, then Redis."""
    tier.coherence.raise_floor(inv, seq)
    await tier.apply_invalidation(inv, seq)


async def found(tier: RedisTier, keys: list[str]) -> dict[str, list[Proposition]]:
    return {key: props for key, (props, _, _) in (await tier.get_many(keys)).items()}


async def raw_value(tier: RedisTier, key: str) -> Any:
    raw = await tier.client.get(tier.data_key(key))
    return None if raw is None else orjson.loads(raw)


# --- reading and writing ---------------------------------------------------------------------


async def test_roundtrip_with_ttl_tag_and_compact_value(workers: Workers) -> None:
    tier = workers()
    assert await tier.put_many({"ci_failure|repo=a": P1, "scam|fp=1": P2, "infra|fp=none": []}, 0, version="r7") is True
    hits = await tier.get_many(["ci_failure|repo=a", "scam|fp=1", "infra|fp=none", "absent|x"])
    assert {k: props for k, (props, _, _) in hits.items()} == {"ci_failure|repo=a": P1, "scam|fp=1": P2, "infra|fp=none": []}
    assert {tag for _, tag, _ in hits.values()} == {0} and all(59 < ttl_s <= 60 for _, _, ttl_s in hits.values())
    stored = await raw_value(tier, "ci_failure|repo=a")
    assert stored == {"s": 0, "e": stored["e"], "v": "r7", "p": [["rerun", 0.91, "flaky test"], ["page", 0.2, ""]]}
    assert 0 < await tier.client.ttl(tier.data_key("scam|fp=1")) <= 60
    assert tier.stats() == {
        "hits": 3, "misses": 1, "errors": 0, "skipped": 0, "corrupt": 0, "stale": 0, "refused": 0,
        "degraded": False, "buckets": tier.buckets,
    }  # fmt: skip


async def test_one_mget_per_get_many_and_one_script_call_per_put_many(single_url: str, namespace: str) -> None:
    tier = RedisTier(make_client(single_url, CountingConnection), ttl_s=60, namespace=namespace)
    try:
        keys = [f"ci_failure|repo=r{i}" for i in range(50)]
        await tier.put_many({"warm|up": P1}, 0)  # opens the connection and loads the script
        CountingConnection.reset()
        await tier.put_many({key: P1 for key in keys}, 0)
        assert CountingConnection.commands == ["EVALSHA"] and len(CountingConnection.round_trips) == 1
        CountingConnection.reset()
        assert len(await tier.get_many(keys + ["missing|x"])) == 50
        assert CountingConnection.commands == ["MGET"] and len(CountingConnection.round_trips) == 1
        CountingConnection.reset()
        assert await tier.get_many([]) == {} and await tier.put_many({}, 0) is True
        assert CountingConnection.commands == []
    finally:
        await tier.close()


async def test_a_cluster_spreads_keys_over_buckets_and_reads_them_back(redis_url: str, workers: Workers) -> None:
    tier = workers()
    keys = [f"ci_failure|repo=r{i}" for i in range(300)]
    await tier.put_many({key: P1 for key in keys}, 0)
    assert await found(tier, keys) == {key: P1 for key in keys}
    buckets = {tier.bucket_of(k) for k in keys}
    assert len(buckets) == (CLUSTER_BUCKETS if redis_url.startswith("redis+cluster") else 1)


async def test_corrupt_values_are_misses(workers: Workers) -> None:
    tier = workers()
    await tier.client.set(tier.data_key("bad|json"), b"{not json")
    await tier.client.set(tier.data_key("bad|shape"), orjson.dumps({"s": 0, "e": 1e15, "p": [["only-action"]]}))
    await tier.put_many({"good|1": P2}, 0)
    assert await found(tier, ["bad|json", "bad|shape", "good|1"]) == {"good|1": P2}
    assert (tier.stats()["corrupt"], tier.stats()["misses"]) == (2, 2)


async def test_a_newer_answer_is_not_replaced_by_an_older_one(workers: Workers) -> None:
    tier = workers()
    await tier.put_many({"k|1": P2}, 7)
    await tier.put_many({"k|1": P1}, 3)  # still current (no invalidation covers it), but older
    assert await found(tier, ["k|1"]) == {"k|1": P2}
    assert tier.stats()["refused"] == 1


async def test_a_redis_hit_lives_in_the_lru_no_longer_than_it_has_left_in_redis(redis_url: str, namespace: str) -> None:
    """Through Triage: tier hops do not extend a TTL."""
    from stream_engine.keys import KeyBuilder
    from stream_engine.models import Alert
    from stream_engine.pipeline import StageTimes, Triage
    from stream_engine.policy import DecisionPolicy
    from stream_engine.propositions.client import PropositionClient

    wall, lru_clock = FakeClock(), FakeClock()
    lru = PartitionedLRU(10, 300, lru_clock)
    tier = RedisTier(client_from_url(redis_url, 0.5), ttl_s=60, namespace=namespace, coherence=lru.coherence, wall=wall)
    settings = Settings()
    triage = Triage(
        KeyBuilder.from_settings(settings), lru, tier, PropositionClient.from_settings(settings), DecisionPolicy.from_settings(settings)
    )
    alert = Alert("a1", "ci_failure", 1.0, "high", "ci", {"repo": "web", "job": "build", "error_class": "Timeout"})
    envelope = triage.envelope(alert, 0, 0, 0)
    try:
        await tier.put_many({envelope.key: P1}, 0)  # written at wall 100 s, 60 s to live
        wall.now += 50  # read with 10 s left
        [decision] = await triage.decide([envelope], StageTimes())
        assert decision.cache_tier == "redis"
        lru_clock.now += 9
        assert lru.for_partition(0).get(envelope.key).propositions == P1
        lru_clock.now += 2  # 11 s later: past its Redis lifetime, well within lru_ttl_s (300 s)
        assert lru.for_partition(0).get(envelope.key) is None
    finally:
        await tier.close()
        await triage.service.close()


# --- invalidation ----------------------------------------------------------------------------


async def test_key_invalidation_keeps_out_answers_fetched_before_it(workers: Workers) -> None:
    worker, late = workers(), workers()  # late: has not read the invalidation yet
    await worker.put_many({"scam|fp=1": P2, "scam|fp=2": P2}, 0)
    await apply(worker, by_key("scam|fp=1"), 1)
    assert await found(worker, ["scam|fp=1", "scam|fp=2"]) == {"scam|fp=2": P2}
    assert await raw_value(worker, "scam|fp=1") == {"s": 1}  # a tombstone, with the TTL of a value
    assert 0 < await worker.client.ttl(worker.data_key("scam|fp=1")) <= 60
    # A write-back of an answer fetched before it, from a worker that has not applied it yet:
    await late.put_many({"scam|fp=1": P1}, 0)
    assert await raw_value(worker, "scam|fp=1") == {"s": 1}
    assert late.stats()["refused"] == 1
    # An answer fetched after it is stored and served, to every worker.
    await worker.put_many({"scam|fp=1": P1}, 1)
    assert await found(late, ["scam|fp=1"]) == {"scam|fp=1": P1}
    # Applying the same invalidation again (a retry, another worker) changes nothing.
    await apply(late, by_key("scam|fp=1"), 1)
    assert await found(worker, ["scam|fp=1"]) == {"scam|fp=1": P1}


async def test_type_invalidation_reaches_every_worker_on_its_next_read(workers: Workers) -> None:
    worker, other = workers(), workers()
    await worker.put_many({"ci_failure|repo=a": P1, "ci_failure|repo=b": P1, "ci_failure_x|repo=a": P1, "scam|fp=1": P2}, 0)
    await apply(worker, by_type("ci_failure"), 1)
    keys = ["ci_failure|repo=a", "ci_failure|repo=b", "ci_failure_x|repo=a", "scam|fp=1"]
    expected = {"ci_failure_x|repo=a": P1, "scam|fp=1": P2}  # a type whose name starts alike is untouched
    assert await found(other, keys) == expected  # Redis' floors: other has no floor of its own
    assert other.stats()["stale"] == 2
    await other.put_many({"ci_failure|repo=a": P2}, 0)  # fetched before it: refused by Redis
    await worker.put_many({"ci_failure|repo=b": P2}, 1)  # fetched after it: fine
    assert await found(other, keys) == {**expected, "ci_failure|repo=b": P2}


async def test_two_invalidations_of_everything_in_a_row_both_take_effect(workers: Workers) -> None:
    worker, other = workers(), workers()
    await worker.put_many({"k|1": P1}, 0)
    await apply(worker, ALL, 1)
    assert await found(other, ["k|1"]) == {}
    await other.put_many({"k|1": P2}, 1)
    assert await found(worker, ["k|1"]) == {"k|1": P2}
    await apply(other, ALL, 1)  # the same one again (another worker, a retry): no effect
    assert await found(worker, ["k|1"]) == {"k|1": P2}
    await apply(worker, ALL, 2)  # the next one: its own effect, whatever its version says
    assert await found(other, ["k|1"]) == {}
    assert await worker.applied_through() == 2


async def test_an_answer_from_before_an_invalidation_is_never_written(workers: Workers) -> None:
    worker, late = workers(), workers()
    tag = late.coherence.begin()  # late asks the service ...
    await apply(worker, by_type("scam"), 1)  # ... while the scam rules change
    assert await late.put_many({"scam|fp=9": P2, "infra|fp=9": P1}, tag) is True
    assert await raw_value(worker, "scam|fp=9") is None and await raw_value(worker, "infra|fp=9") is not None
    assert late.stats()["refused"] == 1


async def test_a_worker_reads_redis_through_its_own_floors_while_redis_lags(workers: Workers) -> None:
    worker = workers()
    await worker.put_many({"k|1": P1, "j|1": P1}, 0)
    worker.coherence.raise_floor(by_key("k|1"), 1)  # applied here; Redis not told yet (or down)
    worker.coherence.raise_floor(by_type("j"), 2)
    assert await found(worker, ["k|1", "j|1"]) == {}
    assert worker.stats()["stale"] == 2
    await worker.put_many({"k|1": P2}, 0)  # nor written
    assert (await raw_value(worker, "k|1"))["p"] == [["rerun", 0.91, "flaky test"], ["page", 0.2, ""]]


async def test_applied_only_rises(workers: Workers) -> None:
    worker = workers()
    assert await worker.applied_through() == 0
    await worker.apply_invalidation(ALL, 5)
    await worker.apply_invalidation(by_key("k|1"), 3)  # a late retry of an older one
    assert await worker.applied_through() == 5


async def test_eviction_policy_is_checked(workers: Workers, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    policy = await workers().check_eviction_policy()
    assert policy
    assert ("can evict the cache's invalidation floors" in caplog.text) == policy.startswith("allkeys")


# --- lost replies and outages (single Redis, through a proxy) -------------------------------------


@pytest.fixture
async def proxy(single_url: str) -> AsyncIterator[RedisProxy]:
    target = urlsplit(single_url)
    proxy = RedisProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    yield proxy
    await proxy.stop()


async def test_a_lost_reply_to_the_bump_still_invalidates(proxy: RedisProxy, single_url: str, namespace: str) -> None:
    worker = RedisTier(make_client(proxy.url), ttl_s=60, namespace=namespace)
    other = RedisTier(make_client(single_url), ttl_s=60, namespace=namespace)
    try:
        await worker.put_many({"k|1": P1}, 0)
        proxy.drop_next_reply()
        with pytest.raises(Exception):
            await worker.apply_invalidation(ALL, 1)
        assert proxy.dropped == ["EVALSHA"]
        assert await found(other, ["k|1"]) == {}  # Redis took it all the same
        await worker.apply_invalidation(ALL, 1)  # the retry: harmless
        await other.put_many({"k|1": P2}, 1)
        assert await found(other, ["k|1"]) == {"k|1": P2}
    finally:
        await worker.close()
        await other.close()


async def test_a_lost_reply_from_one_cluster_node_still_invalidates(redis_cluster: str, namespace: str) -> None:
    """The same on the cluster: every node is reached through its own proxy (the client remaps
    the node addresses the cluster announces); one node executes its part of the bump but its
    reply is lost."""
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    ports = [int(node.rsplit(":", 1)[1]) for node in redis_cluster.split("://", 1)[1].split(",")]
    proxies = {port: RedisProxy("127.0.0.1", port) for port in ports}
    for proxy in proxies.values():
        await proxy.start()
    client = RedisCluster(
        startup_nodes=[ClusterNode("127.0.0.1", proxies[ports[0]].port)],
        address_remap=lambda addr: ("127.0.0.1", proxies[addr[1]].port) if addr[1] in proxies else addr,
        socket_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
        require_full_coverage=False,
    )
    worker = RedisTier(client, ttl_s=60, namespace=namespace)
    other = RedisTier(client_from_url(redis_cluster, 0.5), ttl_s=60, namespace=namespace)
    keys = [f"k|{i}" for i in range(200)]
    try:
        await worker.put_many({key: P1 for key in keys}, 0)
        assert len(await found(other, keys)) == 200
        proxies[ports[1]].drop_next_reply("EVALSHA")
        with pytest.raises(Exception):
            await worker.apply_invalidation(ALL, 1)
        assert proxies[ports[1]].dropped == ["EVALSHA"]
        assert await found(other, keys) == {}  # every node took it all the same
        await worker.apply_invalidation(ALL, 1)  # the retry: harmless
        assert await other.applied_through() == 1
    finally:
        await worker.close()
        await other.close()
        for proxy in proxies.values():
            await proxy.stop()


async def test_a_lost_request_is_retried_until_redis_takes_it(proxy: RedisProxy, single_url: str, namespace: str) -> None:
    coherence = Coherence()
    worker = RedisTier(make_client(proxy.url), ttl_s=60, namespace=namespace, retry_after_s=0.05, coherence=coherence)
    other = RedisTier(make_client(single_url), ttl_s=60, namespace=namespace)
    invalidations = Invalidations(coherence, PartitionedLRU(10, 10, coherence=coherence), worker, retry_s=0.05)
    try:
        await worker.put_many({"k|1": P1}, 0)
        await invalidations.start()
        proxy.drop_next_request()
        await invalidations.apply(ALL, 1)
        assert proxy.dropped == ["EVALSHA"]
        for _ in range(200):
            if invalidations.stats()["redis_applied"]:
                break
            await asyncio.sleep(0.05)
        assert invalidations.stats()["pending"] == 0 and invalidations.stats()["redis_failures"] >= 1
        assert await found(other, ["k|1"]) == {}
    finally:
        await invalidations.stop()
        await worker.close()
        await other.close()


async def closed_port() -> int:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port


async def test_unreachable_redis_degrades_without_raising(namespace: str) -> None:
    clock = FakeClock()
    tier = RedisTier(make_client(f"redis://127.0.0.1:{await closed_port()}/0"), ttl_s=60, namespace=namespace, retry_after_s=5, clock=clock)
    try:
        assert await tier.get_many(["k|1"]) == {}
        assert tier.stats()["errors"] == 1 and tier.degraded
        # While degraded nothing is attempted.
        assert await tier.get_many(["k|1"]) == {}
        assert await tier.put_many({"k|1": P1}, 0) is False
        assert tier.stats()["skipped"] == 2 and tier.stats()["errors"] == 1
        clock.now += 5
        assert not tier.degraded
        assert await tier.put_many({"k|1": P1}, 0) is False
        assert tier.stats()["errors"] == 2
        # Invalidations are always attempted, and raise so that their owner retries them.
        with pytest.raises(Exception):
            await tier.apply_invalidation(ALL, 1)
        assert await tier.applied_through() is None
        assert tier.stats()["errors"] == 4
    finally:
        await tier.close()


async def test_outage_then_recovery_through_a_proxy(proxy: RedisProxy, namespace: str) -> None:
    clock = FakeClock()
    tier = RedisTier(make_client(proxy.url), ttl_s=60, namespace=namespace, retry_after_s=2, clock=clock)
    try:
        await tier.put_many({"k|1": P1}, 0)
        assert await found(tier, ["k|1"]) == {"k|1": P1}

        await proxy.stop()  # Redis goes away mid-life: pooled connections die too
        assert await tier.get_many(["k|1"]) == {}
        assert tier.stats()["errors"] == 1 and tier.degraded

        await proxy.start()  # back on the same port, but we are still inside retry_after_s
        assert await tier.get_many(["k|1"]) == {}
        assert tier.stats()["skipped"] == 1

        clock.now += 2
        assert await found(tier, ["k|1"]) == {"k|1": P1}  # recovered by itself
        assert not tier.degraded and tier.stats()["errors"] == 1
    finally:
        await tier.close()


async def test_hung_redis_times_out_and_degrades(proxy: RedisProxy, namespace: str) -> None:
    proxy.blackhole = True
    tier = RedisTier(make_client(proxy.url), ttl_s=60, namespace=namespace, clock=FakeClock())
    try:
        assert await tier.get_many(["k|1"]) == {}
        assert tier.stats()["errors"] == 1 and tier.degraded
    finally:
        await tier.close()


def test_from_settings_picks_the_client_by_url() -> None:
    single = RedisTier.from_settings(Settings(redis_url="redis://127.0.0.1:1/0", redis_ttl_s=30))
    cluster = RedisTier.from_settings(Settings(redis_url="redis+cluster://127.0.0.1:1,127.0.0.1:2"))
    assert (single.cluster, single.buckets, single.ttl_s) == (False, 1, 30)
    assert (cluster.cluster, cluster.buckets) == (True, CLUSTER_BUCKETS)
    assert sorted(n.port for n in cluster.client.startup_nodes) == [1, 2]
