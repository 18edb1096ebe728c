"""The API cannot hurt the stream (issue 14 item 4), on the real stack: a real worker subprocess,
Kafka, Redis, the proposition service, ClickHouse.

* 10,000 concurrent API requests are refused (503/429 + Retry-After) with the worker's RSS bounded
  (harness.api_flood: the load, the RSS sampling and the budget, shared with benchmarks/api_isolation.py);
* a proposition service that fails every API request opens the API's breaker only: the stream's
  alerts keep their ``auto`` decisions, and an API call with a stream alert's id does not
  replace its logged row;
* an analytics query over everything is stopped by the limits while the stream goes on.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from harness.api_flood import CONNECTIONS, flood, refused_connections, rss_budget
from harness.http_load import raise_fd_limit
from harness.kafka import collect, publish
from harness.procs import Proc, free_port, start_worker, wait_until
from stream_engine.settings import Settings
from stream_engine.workload import Workload

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

API_URL = re.compile(r"api listening on (http://[0-9.]+:\d+)")


@pytest.fixture
def worker(e2e_settings: Settings, propositions: Proc, tmp_path: Path) -> Iterator[tuple[Proc, str]]:
    # Before the worker starts (it inherits the limit): 10,000 client sockets here, the worker's own.
    fds = raise_fd_limit(4 * CONNECTIONS)
    assert fds >= 2 * CONNECTIONS, f"this test opens {CONNECTIONS} connections at once: raise the hard `ulimit -n` ({fds})"
    proc = start_worker(e2e_settings.with_overrides(sink_flush_interval_s=0.2), tmp_path)
    try:
        url = wait_until(lambda: API_URL.search(proc.log()), 30, "api listening", proc).group(1)
        wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, 60, "healthz 200", proc)
        yield proc, url
    finally:
        proc.stop()


async def test_10k_concurrent_requests_are_refused_with_retry_after_and_the_worker_stays_small(
    worker: tuple[Proc, str], e2e_settings: Settings
) -> None:
    proc, url = worker
    s = e2e_settings
    flooded = await flood(url, proc, s)
    result, before, grew = flooded.load, flooded.refused_before, flooded.growth_bytes
    print(f"\nRSS idle {flooded.idle_kib} KiB, peak {flooded.peak_kib} KiB; answers {dict(result.statuses)}, errors {dict(result.errors)}")

    assert result.answered == CONNECTIONS, (result.statuses, result.errors)
    assert set(result.statuses) == {200, 429, 503}, result.statuses  # decided, request refused, connection refused
    assert result.retry_after == {"1": result.statuses[429] + result.statuses[503]}, "every refusal says when to retry"
    after = httpx.get(f"{url}/api/v1/stats").json()["api"]
    refused_requests = sum(after["refused"][k] - before[k] for k in ("requests", "queued_alerts"))
    assert refused_requests == result.statuses[429]
    assert refused_connections(url) - flooded.refused_connections_before == result.statuses[503]
    assert after["request_bytes_in_progress"] == 0 and after["queued_alerts"] == 0

    budget = rss_budget(s)
    assert grew <= budget, f"RSS grew {grew / 2**20:.0f} MiB under the load, budget {budget / 2**20:.0f} MiB"

    expected = {a["id"] for a in flooded.stream}
    decisions = await collect(s.kafka_bootstrap, s.topic_decisions, lambda r: expected <= {d["alert_id"] for d in r}, timeout=120)
    assert expected <= {d["alert_id"] for d in decisions}, "the stream was decided while the API was flooded"


# --- a service that fails the API's requests only ------------------------------------------------


class FailingApiRequests:
    """A proxy in front of the real proposition service that answers 503 to every batch holding an
    alert whose id starts with ``api-`` (what an API caller sends here) and forwards the rest."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.failed = 0
        self.forwarded = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 << 20)
        app.router.add_post("/v1/propositions/batch", self.batch)
        app.router.add_get("/healthz", self.healthz)
        return app

    async def batch(self, request: web.Request) -> web.Response:
        body = await request.read()
        if any(item["alert"]["id"].startswith("api-") for item in orjson.loads(body)["items"]):
            self.failed += 1
            return web.json_response({"error": "injected: API requests fail"}, status=503)
        self.forwarded += 1
        async with httpx.AsyncClient(base_url=self.target) as client:
            r = await client.post("/v1/propositions/batch", content=body, headers={"content-type": "application/json"})
        return web.Response(body=r.content, status=r.status_code, content_type="application/json")

    async def healthz(self, request: web.Request) -> web.Response:
        async with httpx.AsyncClient(base_url=self.target) as client:
            r = await client.get("/healthz")
        return web.Response(body=r.content, status=r.status_code, content_type="application/json")


@pytest.fixture
async def failing_api(e2e_settings: Settings, propositions: Proc) -> AsyncIterator[tuple[FailingApiRequests, str]]:
    proxy = FailingApiRequests(e2e_settings.propositions_url)
    runner = web.AppRunner(proxy.app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield proxy, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def compile_error(alert_id: str, repo: str) -> dict[str, Any]:
    """A cold key (its own repo) whose rule is notify_owner at 0.97: auto (ci_failure threshold 0.75)."""
    return {"id": alert_id, "type": "ci_failure", "timestamp": 1893456000, "severity": "high", "source": "ci",
            "attributes": {"repo": repo, "job": "build", "error_class": "CompileError"}}  # fmt: skip


async def poll(predicate: Callable[[], Any], timeout: float, what: str, proc: Proc) -> Any:
    """wait_until for a test whose event loop also serves the proxy (never block it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        assert proc.alive, f"{proc.name} exited while waiting for {what}:\n{proc.log()[-4000:]}"
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{proc.log()[-4000:]}")


async def test_an_api_failing_every_call_opens_its_own_breaker_and_stream_alerts_stay_auto(
    e2e_settings: Settings, failing_api: tuple[FailingApiRequests, str], tmp_path: Path
) -> None:
    proxy, proxy_url = failing_api
    s = e2e_settings.with_overrides(propositions_url=proxy_url, sink_flush_interval_s=0.2)
    proc = Proc("worker", ["worker"], s, tmp_path)  # started here: this loop must serve the proxy meanwhile
    try:
        url = (await poll(lambda: API_URL.search(proc.log()), 60, "api listening", proc)).group(1)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            await poll(lambda: _ok(http, "/healthz"), 60, "healthz 200", proc)

            # The API hammers the service with cold keys until ITS breaker opens (the condition).
            async def hammer(i: int) -> dict[str, Any]:
                r = await http.post("/api/v1/alerts/process", json=compile_error(f"api-{i}", f"api-repo-{i}"))
                assert r.status_code == 200, r.text
                return r.json()["decisions"][0]

            i = 0
            while (d := await hammer(i))["reason"] != "breaker_open":
                assert d["mode"] == "escalate" and i < 50, d
                i += 1
            assert proxy.failed >= s.breaker_fail_max

            # The stream, while the API keeps failing: cold keys, answered by the service.
            keep_hammering = asyncio.create_task(_forever(hammer, i + 1))
            stream = [compile_error(f"s-{n}", f"stream-repo-{n}") for n in range(40)]
            await publish(s.kafka_bootstrap, s.topic_alerts, stream)
            expected = {a["id"] for a in stream}
            decisions = await collect(s.kafka_bootstrap, s.topic_decisions, lambda r: expected <= {d["alert_id"] for d in r}, timeout=120)
            keep_hammering.cancel()
            mine = [d for d in decisions if d["alert_id"] in expected]
            assert {(d["mode"], d["action"], d["cache_tier"]) for d in mine} == {("auto", "notify_owner", "service")}, mine

            families = {f.name: f for f in text_string_to_metric_families((await http.get("/metrics")).text)}
            assert families["stream_engine_api_service_breaker_open"].samples[0].value == 1
            assert families["stream_engine_service_breaker_open"].samples[0].value == 0
            assert families["stream_engine_service_breaker_rejections"].samples[0].value == 0

            # An API call with a stream alert's id (another key, so a decision of its own: escalate,
            # the API's breaker is open) is logged as the API's; the stream's row stays. A second
            # alert of the same call, an id of its own, tells when that call's rows are in.
            forged = await http.post(
                "/api/v1/alerts/process", json=[compile_error("s-0", "forged-repo"), compile_error("api-marker", "x")]
            )
            assert [d["reason"] for d in forged.json()["decisions"]] == ["breaker_open", "breaker_open"]

            async def logged(alert_id: str) -> dict[str, Any] | None:
                r = await http.get("/api/v1/analytics/logs", params={"ids": alert_id})
                return r.json()["rows"].get(alert_id)

            marker = await poll(lambda: logged("api-marker"), 60, "the API call's rows in ClickHouse", proc)
            assert (marker["origin"], marker["partition"]) == ("api", 65535)
            slowest = (await http.get("/api/v1/analytics/slowest", params={"from": "0", "limit": "10000"})).json()["rows"]
            assert [(r["mode"], r["partition"] == 65535) for r in slowest if r["alert_id"] == "s-0"] == [("auto", False)]  # FINAL
            row = await logged("s-0")
            assert row is not None and (row["origin"], row["mode"], row["action"]) == ("stream", "auto", "notify_owner")
    finally:
        proc.stop()


async def _ok(http: httpx.AsyncClient, path: str) -> bool:
    try:
        return (await http.get(path)).status_code == 200
    except httpx.HTTPError:
        return False


async def _forever(call: Callable[[int], Any], start: int) -> None:
    i = start
    while True:
        await call(i)
        i += 1


async def test_an_analytics_query_over_everything_is_stopped_and_the_stream_goes_on(
    e2e_settings: Settings, propositions: Proc, tmp_path: Path
) -> None:
    s = e2e_settings.with_overrides(analytics_max_rows_to_read=500, sink_flush_interval_s=0.2)
    proc = start_worker(s, tmp_path)
    try:
        url = wait_until(lambda: API_URL.search(proc.log()), 30, "api listening", proc).group(1)
        first = Workload("typical", seed=21).alerts(1000)
        await publish(s.kafka_bootstrap, s.topic_alerts, first)
        inserted = lambda: httpx.get(f"{url}/api/v1/stats").json()["sink"]["rows_inserted"]  # noqa: E731
        wait_until(lambda: inserted() >= 1000, 120, "1000 rows in ClickHouse", proc)

        r = httpx.get(f"{url}/api/v1/analytics/modes", params={"from": "0", "interval": "1d"}, timeout=60)
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "query_limit" and "max_rows_to_read" in r.json()["detail"]

        later = Workload("typical", seed=22).alerts(100)
        await publish(s.kafka_bootstrap, s.topic_alerts, later)
        expected = {a["id"] for a in later}
        decisions = await collect(s.kafka_bootstrap, s.topic_decisions, lambda rs: expected <= {d["alert_id"] for d in rs}, timeout=120)
        assert expected <= {d["alert_id"] for d in decisions}
        wait_until(lambda: inserted() >= 1100, 60, "the later rows in ClickHouse", proc)
    finally:
        proc.stop()
