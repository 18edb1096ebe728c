"""The API cannot hurt the stream (issue 14 item 4), on the real stack: a real worker subprocess,
Kafka, Redis, the proposition service, chDB."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.http_load import post_concurrently, raise_fd_limit
from harness.kafka import collect, publish
from harness.procs import Proc, start_worker, wait_until
from stream_engine.api.server import CONNECTION_LIMIT_ROUTE
from stream_engine.settings import Settings
from stream_engine.workload import Workload

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

API_URL = re.compile(r"api listening on (http://[0-9.]+:\d+)")
CONNECTIONS = 10_000
ALERTS_PER_REQUEST = 20
# RSS one connection aiohttp holds costs: ~15.5 KB measured (slope of the peak RSS over
# api_max_connections 100 / 1000 / 3000 under this load), rounded up.
PER_CONNECTION = 20 << 10
# Everything else the load may hold at its peak: refused connections lingering until their client
# closes, the admitted requests' bodies, alerts and decisions, the stream's batch, allocator slack.
TRANSIENT = 16 << 20


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


class PeakRss:
    """Samples a process's RSS every 20 ms in a thread (the event loop is busy with the load)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = rss_kib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_kib = max(self.peak_kib, rss_kib(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def flushed(url: str) -> bool:
    sink = httpx.get(f"{url}/api/v1/stats").json()["sink"]
    return sink["rows_written"] > 0 and sink["rows_inserted"] == sink["rows_written"]


@pytest.fixture
def worker(e2e_settings: Settings, propositions: Proc, tmp_path: Path) -> Iterator[tuple[Proc, str]]:
    raise_fd_limit(4 * CONNECTIONS)  # before the worker starts: it inherits the limit
    proc = start_worker(e2e_settings.with_overrides(sink_flush_interval_s=0.2), tmp_path)
    try:
        url = wait_until(lambda: API_URL.search(proc.log()), 30, "api listening", proc).group(1)
        wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, 60, "healthz 200", proc)
        yield proc, url
    finally:
        proc.stop()


def refused_connections(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "stream_engine_api_requests"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels == {"route": CONNECTION_LIMIT_ROUTE, "status": "503"}
    )


async def test_10k_concurrent_requests_are_refused_with_retry_after_and_the_worker_stays_small(
    worker: tuple[Proc, str], e2e_settings: Settings
) -> None:
    proc, url = worker
    s = e2e_settings
    body = orjson.dumps(Workload("typical", seed=3).alerts(ALERTS_PER_REQUEST))
    # Warm up every path the load takes (decisions, 429s, refused connections, sink flushes into
    # chDB, whose native allocations would otherwise count as the API's), then measure.
    warm = await post_concurrently(f"{url}/api/v1/alerts/process", body, 2000)
    assert warm.statuses[200] > 0, warm
    await publish(s.kafka_bootstrap, s.topic_alerts, Workload("typical", seed=5).alerts(200))
    wait_until(lambda: flushed(url), 60, "the warm-up rows in ClickHouse", proc)
    before = httpx.get(f"{url}/api/v1/stats").json()["api"]["refused"]
    refused_before = refused_connections(url)
    idle_kib = rss_kib(proc.popen.pid)
    stream = Workload("typical", seed=4).alerts(200)

    with PeakRss(proc.popen.pid) as rss:
        load = asyncio.create_task(post_concurrently(f"{url}/api/v1/alerts/process", body, CONNECTIONS))
        await publish(s.kafka_bootstrap, s.topic_alerts, stream)  # the stream, during the load
        result = await load
    grew = (rss.peak_kib - idle_kib) * 1024
    print(f"\nRSS idle {idle_kib} KiB, peak {rss.peak_kib} KiB; answers {dict(result.statuses)}, errors {dict(result.errors)}")

    assert result.answered == CONNECTIONS, (result.statuses, result.errors)
    assert set(result.statuses) == {200, 429, 503}, result.statuses  # decided, request refused, connection refused
    assert result.retry_after == {"1": result.statuses[429] + result.statuses[503]}, "every refusal says when to retry"
    after = httpx.get(f"{url}/api/v1/stats").json()["api"]
    refused_requests = sum(after["refused"][k] - before[k] for k in ("requests", "queued_alerts"))
    assert refused_requests == result.statuses[429]
    assert refused_connections(url) - refused_before == result.statuses[503]
    assert after["requests_in_progress"] == 0 and after["queued_alerts"] == 0

    budget = s.api_max_connections * PER_CONNECTION + TRANSIENT
    assert grew <= budget, f"RSS grew {grew / 2**20:.0f} MiB under the load, budget {budget / 2**20:.0f} MiB"

    expected = {a["id"] for a in stream}
    decisions = await collect(s.kafka_bootstrap, s.topic_decisions, lambda r: expected <= {d["alert_id"] for d in r}, timeout=120)
    assert expected <= {d["alert_id"] for d in decisions}, "the stream was decided while the API was flooded"
