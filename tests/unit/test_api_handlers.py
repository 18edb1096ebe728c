"""The API app before the worker started, analytics parameter checks, and /metrics text."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from multidict import MultiDict
from prometheus_client.parser import text_string_to_metric_families

from stream_engine.api import create_api_app
from stream_engine.api.analytics import BadParams, build_query
from stream_engine.models import DeadLetter, Decision, Proposition
from stream_engine.pipeline import BatchReport, RawMessage, StageTimes
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
    runtime.monitor.observe_batch(
        BatchReport([d], [dead], StageTimes(decode=1000, redis=2_000_000)), [RawMessage(b"", 0, 0, "alerts"), RawMessage(b"", 0, 1, "alerts")]
    )
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


NOW = datetime(2030, 1, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("name", "params", "complaint"),
    [
        ("latency", {"interval": "7m"}, "interval"),
        ("latency", {"from": "yesterday"}, "from"),
        ("latency", {"exact": "maybe"}, "exact"),
        ("modes", {"from": "2030-01-02", "to": "2030-01-01"}, "from"),
        ("slowest", {"limit": "0"}, "limit"),
        ("slowest", {"limit": "ten"}, "limit"),
        ("logs", {}, "ids"),
        ("logs", {"ids": ","}, "ids"),
        ("nope", {}, "unknown query"),
    ],
)
def test_bad_analytics_params_are_refused_with_the_reason(name: str, params: dict[str, str], complaint: str) -> None:
    with pytest.raises(BadParams, match=complaint):
        build_query(name, MultiDict(params), now=NOW)


def test_good_analytics_params_build_a_query() -> None:
    assert callable(build_query("latency", MultiDict({"from": "1893456000", "interval": "5m", "exact": "false"}), now=NOW))
    assert callable(build_query("logs", MultiDict([("ids", "a,b"), ("ids", "c")]), now=NOW))
    assert callable(build_query("slowest", MultiDict({"limit": "5", "type": "scam"}), now=NOW))
