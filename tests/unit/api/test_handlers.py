"""The API app before the worker started, /healthz, /analytics without ClickHouse, /metrics text."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from stream_engine.api import create_api_app
from stream_engine.models import DeadLetter, Decision, Proposition, StageTimes
from stream_engine.pipeline import BatchReport, RawMessage
from stream_engine.runtime import Runtime
from stream_engine.settings import Settings
from stream_engine.sinks import MemorySink


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    rt = Runtime(Settings(data_dir=tmp_path, api_max_body_bytes=2048), sink=MemorySink())
    yield rt
    await rt.client.close()
    await rt.redis.close()


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
