"""RedisTier against the real Redis (the ``stack`` fixture: STREAM_ENGINE_REDIS_URL, started if absent).

Commands are counted by a Connection subclass (the client's own seam), outages are made by a
small TCP forwarder in front of the real Redis that can be stopped, black-holed and restarted.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import redis.asyncio as redis_asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from stream_engine.cache.redis_tier import RedisTier
from stream_engine.models import Proposition
from stream_engine.settings import Settings

pytestmark = pytest.mark.integration

P1 = [Proposition("rerun", 0.91, "flaky test"), Proposition("page", 0.2, "")]
P2 = [Proposition("block", 0.99, "known scam")]


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


class RedisProxy:
    """TCP forwarder to the real Redis: ``stop()`` is an outage, ``blackhole`` a hung server."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.blackhole = False
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._writers.add(client_writer)
        if self.blackhole:
            await client_reader.read()  # swallow everything, answer nothing
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self._writers.add(upstream_writer)

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        await asyncio.gather(pump(client_reader, upstream_writer), pump(upstream_reader, client_writer))


def make_client(url: str, connection_class: type[redis_asyncio.Connection] = redis_asyncio.Connection) -> redis_asyncio.Redis:
    pool = redis_asyncio.ConnectionPool.from_url(
        url, connection_class=connection_class, socket_timeout=0.3, socket_connect_timeout=0.3, retry=Retry(NoBackoff(), 0)
    )
    return redis_asyncio.Redis(connection_pool=pool)


@pytest.fixture
def namespace() -> str:
    return f"test:{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_url(stack: Settings) -> str:
    return stack.redis_url


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[redis_asyncio.Redis]:
    client = make_client(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def tier(namespace: str, raw: redis_asyncio.Redis, redis_url: str) -> AsyncIterator[RedisTier]:
    tier = RedisTier(make_client(redis_url, CountingConnection), ttl_s=60, namespace=namespace)
    yield tier
    await tier.close()
    keys = [k async for k in raw.scan_iter(match=f"{namespace}:*", count=1000)]
    if keys:
        await raw.unlink(*keys)


async def test_roundtrip_with_ttl_and_compact_value(tier: RedisTier, raw: redis_asyncio.Redis) -> None:
    assert await tier.put_many({"ci_failure|repo=a": P1, "scam|fp=1": P2, "infra|fp=none": []}, version="r7") is True
    found = await tier.get_many(["ci_failure|repo=a", "scam|fp=1", "infra|fp=none", "absent"])
    assert found == {"ci_failure|repo=a": P1, "scam|fp=1": P2, "infra|fp=none": []}
    stored = await raw.get(tier.data_key("ci_failure|repo=a"))
    assert orjson.loads(stored) == {"v": "r7", "p": [["rerun", 0.91, "flaky test"], ["page", 0.2, ""]]}
    ttl = await raw.ttl(tier.data_key("scam|fp=1"))
    assert 0 < ttl <= 60
    assert tier.stats() | {} == {
        "hits": 3,
        "misses": 1,
        "errors": 0,
        "skipped": 0,
        "corrupt": 0,
        "stale_generation": 0,
        "stale_type": 0,
        "degraded": False,
        "generation": 0,
    }


async def test_one_mget_per_get_many_and_one_round_trip_per_put_many(tier: RedisTier) -> None:
    keys = [f"ci_failure|repo=r{i}" for i in range(50)]
    await tier.get_many(["warm-up"])  # opens the connection (handshake commands are not ours)
    CountingConnection.reset()
    await tier.put_many({key: P1 for key in keys})
    assert CountingConnection.commands == ["SET"] * 50
    assert len(CountingConnection.round_trips) == 1
    CountingConnection.reset()
    found = await tier.get_many(keys + ["missing"])
    assert len(found) == 50
    assert CountingConnection.commands == ["MGET"]
    assert len(CountingConnection.round_trips) == 1


async def test_empty_calls_do_not_touch_redis(tier: RedisTier) -> None:
    CountingConnection.reset()
    assert await tier.get_many([]) == {}
    assert await tier.put_many({}) is True
    assert CountingConnection.commands == []


async def test_corrupt_values_are_misses(tier: RedisTier, raw: redis_asyncio.Redis) -> None:
    await raw.set(tier.data_key("bad|json"), b"{not json")
    await raw.set(tier.data_key("bad|shape"), orjson.dumps({"p": [["only-action"]]}))
    await tier.put_many({"good|1": P2})
    assert await tier.get_many(["bad|json", "bad|shape", "good|1"]) == {"good|1": P2}
    assert tier.stats()["corrupt"] == 2
    assert tier.stats()["misses"] == 2


async def test_invalidate_key_and_type(tier: RedisTier) -> None:
    await tier.put_many({"ci_failure|repo=a": P1, "ci_failure|repo=b": P1, "ci_failure_x|repo=a": P1, "scam|fp=1": P2})
    assert await tier.invalidate_key("scam|fp=1") == 1
    assert await tier.invalidate_key("scam|fp=1") == 0
    assert await tier.invalidate_type("ci_failure") == 1  # the type's new generation
    found = await tier.get_many(["ci_failure|repo=a", "ci_failure|repo=b", "ci_failure_x|repo=a", "scam|fp=1"])
    assert found == {"ci_failure_x|repo=a": P1}  # a type whose name starts alike is untouched
    assert tier.stats()["stale_type"] == 2
    await tier.put_many({"ci_failure|repo=a": P2})  # written under the new type generation
    assert await tier.get_many(["ci_failure|repo=a"]) == {"ci_failure|repo=a": P2}


async def test_invalidate_type_is_one_command_however_many_keys(tier: RedisTier, raw: redis_asyncio.Redis) -> None:
    await tier.put_many({f"infra|fp={i}": [] for i in range(500)})
    CountingConnection.reset()
    assert await tier.invalidate_type("infra") == 1
    assert CountingConnection.commands == ["INCRBY"]  # redis-py sends INCR as INCRBY 1
    assert await tier.get_many([f"infra|fp={i}" for i in range(500)]) == {}
    assert tier.stats()["stale_type"] == 500
    assert orjson.loads(await raw.get(tier.data_key("infra|fp=0")))["p"] == []  # left to expire by TTL


async def test_another_worker_sees_a_type_invalidation_on_its_next_mget(tier: RedisTier, namespace: str, redis_url: str) -> None:
    other_worker = RedisTier(make_client(redis_url), ttl_s=60, namespace=namespace)
    try:
        await tier.put_many({"scam|fp=1": P2, "infra|fp=1": P1})
        assert await other_worker.get_many(["scam|fp=1", "infra|fp=1"]) == {"scam|fp=1": P2, "infra|fp=1": P1}
        assert await tier.invalidate_type("scam") == 1
        assert await other_worker.get_many(["scam|fp=1", "infra|fp=1"]) == {"infra|fp=1": P1}
        assert other_worker.type_generations["scam"] == 1
    finally:
        await other_worker.close()


async def test_a_type_answer_fetched_before_its_invalidation_is_never_current(tier: RedisTier) -> None:
    snapshot_gen, snapshot_types = tier.generation, tier.type_generations
    await tier.get_many(["scam|fp=9"])  # miss: the batch asks the service ...
    await tier.invalidate_type("scam")  # ... while the scam rules change
    await tier.put_many({"scam|fp=9": P2}, generation=snapshot_gen, type_generations=snapshot_types)
    assert await tier.get_many(["scam|fp=9"]) == {}


async def test_invalidate_all_moves_every_worker_to_a_new_generation(tier: RedisTier, namespace: str, redis_url: str) -> None:
    other_worker = RedisTier(make_client(redis_url), ttl_s=60, namespace=namespace)
    try:
        await tier.put_many({"k|1": P1})
        assert await other_worker.get_many(["k|1"]) == {"k|1": P1}

        assert await tier.invalidate_all("rules-2") == 1
        assert await tier.get_many(["k|1"]) == {}
        # The other worker still believes in generation 0: its next MGET reads the new one,
        # discards the batch as stale and from then on uses generation 1.
        assert await other_worker.get_many(["k|1"]) == {}
        assert other_worker.generation == 1
        assert other_worker.stats()["stale_generation"] == 1
        await other_worker.put_many({"k|1": P2})
        assert await tier.get_many(["k|1"]) == {"k|1": P2}

        # The same version from another worker (or redelivered) does not bump again.
        assert await other_worker.invalidate_all("rules-2") == 1
        assert await tier.get_many(["k|1"]) == {"k|1": P2}
        # A new version, or an unversioned flush, does.
        assert await other_worker.invalidate_all("rules-3") == 2
        assert await other_worker.invalidate_all() == 3
        assert await tier.refresh_generation() == 3
    finally:
        await other_worker.close()


async def test_put_many_with_a_snapshot_generation_never_pollutes_a_newer_one(tier: RedisTier) -> None:
    snapshot = tier.generation
    await tier.get_many(["k|1"])
    await tier.invalidate_all()  # rules changed while this batch asked the service
    await tier.put_many({"k|1": P1}, generation=snapshot)
    assert await tier.get_many(["k|1"]) == {}


async def test_from_settings_connects_and_works(namespace: str, redis_url: str) -> None:
    tier = RedisTier.from_settings(Settings(redis_url=redis_url, redis_ttl_s=30), namespace=namespace)
    try:
        assert tier.ttl_s == 30 and tier.retry_after_s == Settings().redis_retry_after_s
        await tier.put_many({"a|b": P2})
        assert await tier.get_many(["a|b"]) == {"a|b": P2}
        await tier.invalidate_key("a|b")
    finally:
        await tier.close()


# --- outages -----------------------------------------------------------------------------


async def closed_port() -> int:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port


async def test_unreachable_redis_degrades_without_raising(namespace: str) -> None:
    clock = FakeClock()
    url = f"redis://127.0.0.1:{await closed_port()}/0"
    tier = RedisTier(make_client(url), ttl_s=60, namespace=namespace, retry_after_s=5, clock=clock)
    try:
        assert await tier.get_many(["k|1"]) == {}
        assert tier.stats()["errors"] == 1 and tier.degraded
        # While degraded nothing is attempted.
        assert await tier.get_many(["k|1"]) == {}
        assert await tier.put_many({"k|1": P1}) is False
        assert tier.stats()["skipped"] == 2 and tier.stats()["errors"] == 1
        clock.now += 5
        assert not tier.degraded
        assert await tier.put_many({"k|1": P1}) is False
        assert tier.stats()["errors"] == 2
        # Invalidations are always attempted, and say they did not happen.
        assert await tier.invalidate_key("k|1") is None
        assert await tier.invalidate_type("k") is None
        assert await tier.invalidate_all("v") is None
        assert await tier.refresh_generation() is None
        assert tier.stats()["errors"] == 6
    finally:
        await tier.close()


async def test_outage_then_recovery_through_a_proxy(namespace: str, raw: redis_asyncio.Redis, redis_url: str) -> None:
    target = urlsplit(redis_url)
    proxy = RedisProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    clock = FakeClock()
    db = target.path or "/0"
    tier = RedisTier(make_client(f"redis://127.0.0.1:{proxy.port}{db}"), ttl_s=60, namespace=namespace, retry_after_s=2, clock=clock)
    try:
        await tier.put_many({"k|1": P1})
        assert await tier.get_many(["k|1"]) == {"k|1": P1}

        await proxy.stop()  # Redis goes away mid-life: pooled connections die too
        assert await tier.get_many(["k|1"]) == {}
        assert tier.stats()["errors"] == 1 and tier.degraded

        await proxy.start()  # back on the same port, but we are still inside retry_after_s
        assert await tier.get_many(["k|1"]) == {}
        assert tier.stats()["skipped"] == 1

        clock.now += 2
        assert await tier.get_many(["k|1"]) == {"k|1": P1}  # recovered by itself
        assert not tier.degraded and tier.stats()["errors"] == 1
    finally:
        await tier.close()
        await proxy.stop()


async def test_hung_redis_times_out_and_degrades(namespace: str, redis_url: str) -> None:
    target = urlsplit(redis_url)
    proxy = RedisProxy(target.hostname or "127.0.0.1", target.port or 6379)
    proxy.blackhole = True
    await proxy.start()
    tier = RedisTier(make_client(f"redis://127.0.0.1:{proxy.port}/0"), ttl_s=60, namespace=namespace, clock=FakeClock())
    try:
        assert await tier.get_many(["k|1"]) == {}
        assert tier.stats()["errors"] == 1 and tier.degraded
    finally:
        await tier.close()
        await proxy.stop()
