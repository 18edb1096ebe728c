"""A worker's HTTP API flooded while its stream runs, and what that costs the worker's RSS.

One procedure for the e2e test that asserts the bounds (tests/e2e/test_api_isolation.py) and the
benchmark that publishes the figures (benchmarks/api_isolation.py), so both measure the same thing:
warm every path the load takes, read the idle RSS, then open ``connections`` requests of
``alerts_per_request`` alerts at once while ``stream_alerts`` alerts are published to the stream,
sampling the RSS every 20 ms. The budget prices each API bound by its measured unit cost.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from harness.http_load import LoadResult, post_concurrently
from harness.kafka import publish
from harness.procs import Proc, wait_until
from stream_engine.api.server import CONNECTION_LIMIT_ROUTE
from stream_engine.settings import Settings
from stream_engine.workload import Workload

CONNECTIONS = 10_000
ALERTS_PER_REQUEST = 20
STREAM_ALERTS = 200
WARM_CONNECTIONS = 2000
# What the API may hold at the load's peak, per unit of each bound (measured, rounded up):
PER_CONNECTION = 20 << 10  # ~15.5 KB: slope of peak RSS over api_max_connections 100/1000/3000
PER_BODY_BYTE = 8  # a body parsed into dicts plus its Alerts and Envelopes: 7.8x its JSON (tracemalloc)
PER_QUEUED_ALERT = 2 << 10  # ~1.9 KB: an envelope and its parsed alert
SLACK = 8 << 20  # refused connections lingering until their client closes, the allocator's own


def rss_budget(s: Settings) -> int:
    """The API's bounds priced: connections, bodies in progress (plus the one being parsed), queue."""
    bodies = (s.api_max_request_bytes + s.api_max_body_bytes) * PER_BODY_BYTE
    return s.api_max_connections * PER_CONNECTION + bodies + s.api_max_queued_alerts * PER_QUEUED_ALERT + SLACK


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


def refused_connections(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "stream_engine_api_requests"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels == {"route": CONNECTION_LIMIT_ROUTE, "status": "503"}
    )


@dataclass
class Flood:
    idle_kib: int
    peak_kib: int
    load: LoadResult
    stream: list[dict[str, Any]]  # the alerts published during the load
    refused_before: dict[str, int]  # /api/v1/stats api.refused before the load
    refused_connections_before: float  # the 503 counter of /metrics before the load

    @property
    def growth_bytes(self) -> int:
        return (self.peak_kib - self.idle_kib) * 1024


async def flood(
    url: str,
    proc: Proc,
    s: Settings,
    connections: int = CONNECTIONS,
    alerts_per_request: int = ALERTS_PER_REQUEST,
    stream_alerts: int = STREAM_ALERTS,
) -> Flood:
    """Warm up, then the load with the stream running; the worker ``proc`` serves the API at ``url``."""
    body = orjson.dumps(Workload("typical", seed=3).alerts(alerts_per_request))
    # Warm up every path the load takes (decisions, 429s, refused connections, sink flushes, whose
    # allocations would otherwise count as the API's), then measure.
    warm = await post_concurrently(f"{url}/api/v1/alerts/process", body, WARM_CONNECTIONS)
    assert warm.statuses[200] > 0, warm
    await publish(s.kafka_bootstrap, s.topic_alerts, Workload("typical", seed=5).alerts(stream_alerts))
    wait_until(lambda: flushed(url), 60, "the warm-up rows in ClickHouse", proc)
    before = httpx.get(f"{url}/api/v1/stats").json()["api"]["refused"]
    refused_before = refused_connections(url)
    idle_kib = rss_kib(proc.popen.pid)
    stream = Workload("typical", seed=4).alerts(stream_alerts)
    with PeakRss(proc.popen.pid) as rss:
        load = asyncio.create_task(post_concurrently(f"{url}/api/v1/alerts/process", body, connections))
        await publish(s.kafka_bootstrap, s.topic_alerts, stream)  # the stream, during the load
        result = await load
    return Flood(idle_kib, rss.peak_kib, result, stream, before, refused_before)
