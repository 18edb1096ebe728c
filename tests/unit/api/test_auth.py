"""The worker API's token (stream_engine.api.auth) on the real app, through real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from stream_engine.api import create_api_app
from stream_engine.auth import TokenRequired
from stream_engine.runtime import Runtime
from stream_engine.settings import Settings
from stream_engine.sinks import MemorySink

TOKEN = "worker-api-token"
PROTECTED = [
    ("POST", "/api/v1/alerts/process"),
    ("GET", "/api/v1/stats"),
    ("GET", "/api/v1/analytics/latency"),
    ("GET", "/api/v1/analytics/logs?ids=a"),
    ("GET", "/api/v1/nope"),
    ("GET", "/api/v2/anything"),
]


async def runtime_for(tmp_path: Path, **overrides: object) -> Runtime:
    return Runtime(Settings(data_dir=tmp_path, **overrides), sink=MemorySink())  # type: ignore[arg-type]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[TestClient, Runtime]]:  # type: ignore[type-arg]
    runtime = await runtime_for(tmp_path, api_token=TOKEN)
    async with TestClient(TestServer(create_api_app(runtime))) as c:
        yield c, runtime
    await runtime.stop()


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Bearer {TOKEN}-and-more", TOKEN])
async def test_api_routes_without_the_right_token_are_401(client, method: str, path: str, authorization: str | None) -> None:  # type: ignore[no-untyped-def]
    c, _ = client
    headers = {"Authorization": authorization} if authorization else {}
    response = await c.request(method, path, headers=headers, json={})
    assert response.status == 401, await response.text()
    assert (await response.json())["error"] == "unauthorized"


async def test_api_routes_with_the_token_reach_their_handlers(client) -> None:  # type: ignore[no-untyped-def]
    c, runtime = client
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert (await c.get("/api/v1/stats", headers=headers)).status == 200
    # past auth: the handler's own answer (the worker is not started in this test)
    assert (await c.post("/api/v1/alerts/process", headers=headers, json={})).status == 503
    assert (await c.get("/api/v1/analytics/latency", headers=headers)).status == 501
    assert runtime.monitor.api_requests[("/api/v1/stats", 200)] == 1


async def test_healthz_and_metrics_stay_open(client) -> None:  # type: ignore[no-untyped-def]
    c, runtime = client
    assert (await c.get("/healthz")).status == 503  # open, and honest: not started
    assert (await c.get("/metrics")).status == 200
    await c.get("/api/v1/stats")
    assert runtime.monitor.api_requests[("/api/v1/stats", 401)] == 1  # refusals are counted


async def test_without_a_token_the_api_is_open_on_loopback(tmp_path: Path) -> None:
    runtime = await runtime_for(tmp_path)
    async with TestClient(TestServer(create_api_app(runtime))) as c:
        assert (await c.get("/api/v1/stats")).status == 200
    await runtime.stop()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.168.7.7", "worker.example"])
async def test_the_app_is_not_built_beyond_loopback_without_a_token(tmp_path: Path, host: str) -> None:
    runtime = await runtime_for(tmp_path, api_host=host)
    with pytest.raises(TokenRequired, match="STREAM_ENGINE_API_TOKEN"):
        create_api_app(runtime)
    create_api_app(await runtime_for(tmp_path, api_host=host, api_token=TOKEN))
    await runtime.stop()
