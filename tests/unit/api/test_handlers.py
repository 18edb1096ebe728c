"""The API app before the worker started, /healthz, /analytics without ClickHouse, /metrics text,
and the API's own bounds (429 + Retry-After; bounded metric series)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from stream_engine.api import create_api_app
from stream_engine.models import DeadLetter, Decision, Envelope, Proposition, StageTimes
from stream_engine.pipeline import BatchReport, DecisionLog, RawMessage
from stream_engine.runtime import Runtime
from stream_engine.settings import Settings
from stream_engine.sinks import MemorySink
from stream_engine.sinks.clickhouse.analytics import QueryLimitExceeded
from stream_engine.workload import Workload


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    rt = Runtime(Settings(data_dir=tmp_path, api_max_body_bytes=2048), sink=MemorySink())
    yield rt
    await rt.stop()


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    async with TestClient(TestServer(create_api_app(runtime))) as c:
        yield c


async def test_not_started_worker_is_unhealthy_and_refuses_alerts(client: TestClient) -> None:  # type: ignore[type-arg]
    health = await client.get("/healthz")
    assert health.status == 503
    assert (await health.json())["why"] == "runtime not started"
    process = await client.post("/api/v1/alerts/process", json={"id": "x"})
    assert process.status == 503 and (await process.json())["error"] == "not_ready"


async def test_oversized_body_is_413_before_anything_else(client: TestClient, runtime: Runtime) -> None:  # type: ignore[type-arg]
    response = await client.post("/api/v1/alerts/process", data=b"x" * 4096)
    assert response.status == 413
    assert runtime.monitor.api_requests[("/api/v1/alerts/process", 413)] == 1


async def test_healthz_waits_for_a_partition_assignment_when_consuming(client: TestClient, runtime: Runtime) -> None:  # type: ignore[type-arg]
    async def no_offsets() -> list[tuple[str, int, int | None, int | None]]:
        return []

    runtime.started = True
    runtime.consumer_offsets = no_offsets
    assert (await (await client.get("/healthz")).json())["why"] == "waiting for a partition assignment"
    runtime.monitor.partitions_assigned([])  # joined the group, no partitions: idle is healthy
    assert (await client.get("/healthz")).status == 200


async def test_analytics_needs_a_queryable_sink(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.get("/api/v1/analytics/latency")
    assert response.status == 501 and (await response.json())["error"] == "no_clickhouse"


async def test_metrics_expose_the_monitor_as_prometheus_text(client: TestClient, runtime: Runtime) -> None:  # type: ignore[type-arg]
    d = Decision("a", "scam", "k", "auto", "block", 0.95, [Proposition("block", 0.95)], "redis", 3.0, 0.0)
    dead = DeadLetter("schema", "id: required field missing", "alerts", 0, 1, b"{}", 0.0)
    messages = [RawMessage(b"", 0, 0, "alerts"), RawMessage(b"", 0, 1, "alerts")]
    runtime.monitor.observe_batch(BatchReport([d], [dead], StageTimes(decode=1000, redis=2_000_000)), messages)
    response = await client.get("/metrics")
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    [decision] = [s for s in families["stream_engine_decisions"].samples if s.name.endswith("_total")]
    assert decision.labels == {"source": "stream", "mode": "auto", "tier": "redis", "alert_type": "scam"}
    assert decision.value == 1
    buckets = {
        s.labels["le"]: s.value
        for s in families["stream_engine_stage_latency_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["stage"] == "redis"
    }
    assert buckets["0.001"] == 0 and buckets["0.0025"] == 1 and buckets["+Inf"] == 1
    assert families["stream_engine_dead_letters"].samples[0].labels == {"reason": "schema"}
    assert families["stream_engine_rss_bytes"].samples[0].value > 0
    runtime.redis.counters.stale = 4
    runtime.invalidations.counters.redis_failures = 2
    families = {f.name: f for f in text_string_to_metric_families(await (await client.get("/metrics")).text())}
    assert families["stream_engine_redis_stale"].samples[0].value == 4
    assert families["stream_engine_invalidation_redis_failures"].samples[0].value == 2
    assert families["stream_engine_invalidation_redis_pending"].samples[0].value == 0


async def test_metric_series_per_alert_type_stay_bounded(tmp_path: Path) -> None:
    runtime = Runtime(Settings(data_dir=tmp_path, metrics_max_alert_types=3), sink=MemorySink())
    try:
        for i in range(500):
            d = Decision(f"a{i}", f"invented_{i}", "k", "review", None, None, [], "service", 1.0, 0.0)
            runtime.monitor.observe_batch(BatchReport([d], [], StageTimes()), [RawMessage(b"", 0, i, "alerts")])
        async with TestClient(TestServer(create_api_app(runtime))) as c:
            families = {f.name: f for f in text_string_to_metric_families(await (await c.get("/metrics")).text())}
        types = {s.labels["alert_type"] for s in families["stream_engine_decisions"].samples}
        assert types == {"invented_0", "invented_1", "invented_2", "other"}
        assert sum(s.value for s in families["stream_engine_decisions"].samples if s.name.endswith("_total")) == 500
    finally:
        await runtime.stop()


class Held:
    """Stands in for the runtime's decide/run_query: every call waits until ``release``."""

    def __init__(self) -> None:
        self.entered = 0
        self.gate = asyncio.Event()

    async def decide(self, envelopes: Sequence[Envelope], times: StageTimes) -> list[Decision]:
        self.entered += 1
        await self.gate.wait()
        return [Decision(e.alert.id, e.alert.type, e.key, "review", None, None, [], "none", 1.0, 0.0) for e in envelopes]

    async def run_query(self, query: object) -> list[object]:
        self.entered += 1
        await self.gate.wait()
        return []


def api_alert(i: int) -> dict[str, object]:
    alert = Workload("typical", seed=i).alerts(1)[0]
    alert["id"] = f"q{i}"
    return alert


async def started(runtime: Runtime, held: Held) -> Runtime:
    runtime.decide = held.decide  # type: ignore[method-assign]
    runtime.run_query = held.run_query  # type: ignore[method-assign]
    runtime.decision_log = DecisionLog(MemorySink(), "w")
    runtime.started = True
    return runtime


async def wait_for(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_request_bytes_past_the_bound_get_429_with_retry_after_and_the_rest_are_answered(tmp_path: Path) -> None:
    held = Held()
    bodies = [orjson.dumps([api_alert(2 * i), api_alert(2 * i + 1)]) for i in range(4)]
    limit = sum(len(b) for b in bodies[:3])  # room for exactly three of them
    settings = Settings(data_dir=tmp_path, api_max_request_bytes=limit, batch_concurrency=1)
    runtime = await started(Runtime(settings, sink=MemorySink()), held)
    post = lambda c, body: c.post("/api/v1/alerts/process", data=body, headers={"Content-Type": "application/json"})  # noqa: E731
    try:
        async with TestClient(TestServer(create_api_app(runtime))) as c:
            admitted = [asyncio.create_task(post(c, b)) for b in bodies[:3]]
            await wait_for(lambda: held.entered == 1)  # one drain holds the only slot; two requests queue behind it
            refused = await post(c, bodies[3])
            assert refused.status == 429 and refused.headers["Retry-After"] == "1"
            assert (await refused.json())["error"] == "busy"
            stats = await (await c.get("/api/v1/stats")).json()
            assert stats["api"]["request_bytes_in_progress"] == limit and stats["api"]["refused"]["requests"] == 1
            held.gate.set()
            assert [r.status for r in await asyncio.gather(*admitted)] == [200, 200, 200]
            assert (await post(c, bodies[3])).status == 200  # room again
        assert runtime.monitor.api_requests[("/api/v1/alerts/process", 429)] == 1
    finally:
        await runtime.stop()


async def test_alerts_past_the_queue_bound_get_429(tmp_path: Path) -> None:
    held = Held()
    settings = Settings(data_dir=tmp_path, api_max_queued_alerts=5, batch_concurrency=1)
    runtime = await started(Runtime(settings, sink=MemorySink()), held)
    try:
        async with TestClient(TestServer(create_api_app(runtime))) as c:
            first = asyncio.create_task(c.post("/api/v1/alerts/process", json=[api_alert(i) for i in range(4)]))
            await wait_for(lambda: held.entered == 1)
            refused = await c.post("/api/v1/alerts/process", json=[api_alert(i) for i in range(10, 12)])  # 4 + 2 > 5
            assert refused.status == 429 and refused.headers["Retry-After"] == "1"
            assert "api_max_queued_alerts=5" in (await refused.json())["detail"]
            held.gate.set()
            assert (await first).status == 200
    finally:
        await runtime.stop()


async def test_one_analytics_query_at_a_time_and_limits_are_a_422(tmp_path: Path) -> None:
    held = Held()
    runtime = await started(Runtime(Settings(data_dir=tmp_path, api_max_queries=1), sink=MemorySink()), held)
    try:
        async with TestClient(TestServer(create_api_app(runtime))) as c:
            running = asyncio.create_task(c.get("/api/v1/analytics/modes"))
            await wait_for(lambda: held.entered == 1)
            refused = await c.get("/api/v1/analytics/latency")
            assert refused.status == 429 and refused.headers["Retry-After"] == "1"
            held.gate.set()
            assert (await running).status == 200

            async def too_big(query: object) -> None:
                raise QueryLimitExceeded("modes: stopped by the analytics limits (max_rows_to_read)")

            runtime.run_query = too_big  # type: ignore[method-assign]
            limited = await c.get("/api/v1/analytics/modes")
            assert limited.status == 422 and (await limited.json())["error"] == "query_limit"
    finally:
        await runtime.stop()
