"""The worker's HTTP API on the real stack: a real worker subprocess, Kafka, Redis, chDB."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.kafka import collect, publish
from harness.procs import Proc, free_port, start_worker, wait_until
from stream_engine.settings import Settings
from stream_engine.workload import Workload

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

MAX_BODY = 16_384
API_URL = re.compile(r"api listening on (http://[0-9.]+:\d+)")


@pytest.fixture
def api_settings(e2e_settings: Settings) -> Settings:
    return e2e_settings.with_overrides(api_port=free_port(), api_max_body_bytes=MAX_BODY, sink_flush_interval_s=0.2)


@pytest.fixture
def worker(api_settings: Settings, propositions: Proc, tmp_path: Path) -> Iterator[tuple[Proc, str]]:
    proc = start_worker(api_settings, tmp_path)
    try:
        match = wait_until(lambda: API_URL.search(proc.log()), 30, "api listening", proc)
        url = match.group(1)
        assert url.endswith(f":{api_settings.api_port}")
        wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, 60, "healthz 200", proc)
        yield proc, url
    finally:
        proc.stop()


def alert(i: int, **changes: object) -> dict[str, object]:
    a = Workload("typical", seed=i).alerts(1)[0]
    a["id"] = f"api-{i}"
    a.update(changes)
    return a


def poll_rows(url: str, query: str, params: dict[str, str], until, proc: Proc):  # type: ignore[no-untyped-def]
    def fetch():  # type: ignore[no-untyped-def]
        r = httpx.get(f"{url}/api/v1/analytics/{query}", params=params, timeout=30)
        assert r.status_code == 200, r.text
        rows = r.json()["rows"]
        return rows if until(rows) else None

    return wait_until(fetch, 60, f"analytics/{query} caught up", proc, interval=0.3)


async def test_process_contract_valid_list_invalid_oversized(worker: tuple[Proc, str]) -> None:
    proc, url = worker
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        one = await http.post("/api/v1/alerts/process", json=alert(1))
        assert one.status_code == 200, one.text
        [decision] = one.json()["decisions"]
        assert decision["alert_id"] == "api-1" and decision["mode"] in {"auto", "review", "escalate"}
        assert decision["cache_tier"] in {"redis", "service"}

        # The same key again: the API's own LRU pseudo-partition answers it.
        again = await http.post("/api/v1/alerts/process", json=alert(1, id="api-1b"))
        assert again.json()["decisions"][0]["cache_tier"] == "lru"
        assert again.json()["decisions"][0]["key"] == decision["key"]

        batch = [alert(i) for i in range(10, 20)]
        many = await http.post("/api/v1/alerts/process", json=batch)
        assert many.status_code == 200
        assert [d["alert_id"] for d in many.json()["decisions"]] == [a["id"] for a in batch]

        missing = alert(2)
        del missing["severity"]
        bad = await http.post("/api/v1/alerts/process", json=[alert(3), missing])
        assert bad.status_code == 400
        assert bad.json() == {"error": "schema", "detail": "severity: required field missing", "index": 1}

        wrong_type = await http.post("/api/v1/alerts/process", json=alert(4, severity=7))
        assert wrong_type.status_code == 400 and wrong_type.json()["detail"].startswith("severity:")

        not_json = await http.post("/api/v1/alerts/process", content=b"{nope")
        assert not_json.status_code == 400 and not_json.json()["error"] == "not_json"

        huge = await http.post("/api/v1/alerts/process", json=alert(5, attributes={"blob": "x" * MAX_BODY}))
        assert huge.status_code == 413

        empty = await http.post("/api/v1/alerts/process", json=[])
        assert empty.json() == {"decisions": []}

        health = await http.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"

        # Bad analytics parameters are the caller's error, never SQL.
        for query, params in (
            ("latency", {"interval": "7m"}),
            ("latency", {"from": "yesterday"}),
            ("slowest", {"limit": "0"}),
            ("cache", {"from": "2030-01-02T00:00:00", "to": "2030-01-01T00:00:00"}),
            ("logs", {}),
            ("drop_table", {}),
        ):
            r = await http.get(f"/api/v1/analytics/{query}", params=params)
            assert r.status_code == 400, (query, params, r.text)
            assert r.json()["error"] == "params"

    # API decisions are logged to ClickHouse with the API marker partition.
    ids = ["api-1", "api-1b", *(a["id"] for a in batch)]
    rows = poll_rows(url, "logs", {"ids": ",".join(ids)}, lambda rows: len(rows) == len(ids), proc)
    assert {r["partition"] for r in rows.values()} == {65535}
    assert rows["api-1b"]["cache_tier"] == "lru"

    stats = httpx.get(f"{url}/api/v1/stats").json()
    assert stats["batches"]["api"] == 3 and stats["alerts"]["api"] == 12
    assert stats["decisions"]["by_source"] == {"api": 12}
    assert stats["latency_ms"]["lru"]["count"] == 3


async def test_stats_and_metrics_agree_with_clickhouse(worker: tuple[Proc, str], api_settings: Settings) -> None:
    proc, url = worker
    s = api_settings
    alerts = Workload("typical", seed=11).alerts(300)
    expected = {a["id"] for a in alerts}
    await publish(s.kafka_bootstrap, s.topic_alerts, [*alerts, b"not json at all"])
    decisions = await collect(
        s.kafka_bootstrap, s.topic_decisions, lambda r: expected <= {d["alert_id"] for d in r}, timeout=90
    )
    assert len(decisions) == len(alerts)

    def stats_caught_up():  # type: ignore[no-untyped-def]
        body = httpx.get(f"{url}/api/v1/stats").json()
        return body if body["decisions"]["total"] == len(alerts) and body["errors"]["dead_letters"] else None

    stats = wait_until(stats_caught_up, 30, "stats count every decision", proc)
    assert stats["errors"]["dead_letters"] == {"not_json": 1}
    assert stats["alerts"]["stream"] == len(alerts) + 1
    assert stats["latency_ms"]["end_to_end"]["count"] == len(alerts)
    assert stats["latency_ms"]["decode"]["count"] == stats["batches"]["stream"]
    assert stats["rss_bytes"] > 0 and stats["uptime_s"] > 0
    assert stats["http_pool"]["max_connections"] == s.service_pool_size
    lag = stats["consumer_lag"]
    assert lag and all(row["lag"] == 0 for row in lag.values()), lag

    # The same numbers, read back from ClickHouse through the worker's own client.
    def total(rows) -> int:  # type: ignore[no-untyped-def]
        return sum(r["count"] for r in rows)

    modes = poll_rows(url, "modes", {"interval": "1h"}, lambda rows: total(rows) == len(alerts), proc)
    cache = poll_rows(url, "cache", {"interval": "1h"}, lambda rows: total(rows) == len(alerts), proc)
    ch_modes: Counter[str] = Counter()
    for r in modes:
        ch_modes[r["mode"]] += r["count"]
    ch_tiers: Counter[str] = Counter()
    ch_type_tier: dict[str, Counter[str]] = {}
    for r in cache:
        ch_tiers[r["cache_tier"]] += r["count"]
        ch_type_tier.setdefault(r["alert_type"], Counter())[r["cache_tier"]] += r["count"]
    assert stats["decisions"]["by_mode"] == dict(ch_modes)
    assert stats["decisions"]["by_tier"] == dict(ch_tiers)
    assert stats["decisions"]["by_type_and_tier"] == {t: dict(c) for t, c in ch_type_tier.items()}
    assert dict(Counter(d["mode"] for d in decisions)) == dict(ch_modes)

    slowest = httpx.get(f"{url}/api/v1/analytics/slowest", params={"limit": "1"}).json()["rows"][0]
    hdr_max = stats["latency_ms"]["end_to_end"]["max_ms"]
    assert abs(hdr_max - slowest["latency_ms"]) <= 0.002 * slowest["latency_ms"] + 0.01, (hdr_max, slowest)

    latency = httpx.get(f"{url}/api/v1/analytics/latency", params={"interval": "1h"}).json()["rows"]
    assert sum(r["count"] for r in latency) == len(alerts)

    metrics = httpx.get(f"{url}/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
    by_mode: Counter[str] = Counter()
    for sample in families["stream_engine_decisions"].samples:
        if sample.name.endswith("_total"):
            by_mode[sample.labels["mode"]] += int(sample.value)
    assert dict(by_mode) == dict(ch_modes)
    dead = [x for x in families["stream_engine_dead_letters"].samples if x.name.endswith("_total")]
    assert [(x.labels["reason"], x.value) for x in dead] == [("not_json", 1.0)]
    e2e_count = [
        x.value
        for x in families["stream_engine_stage_latency_seconds"].samples
        if x.name.endswith("_count") and x.labels["stage"] == "end_to_end"
    ]
    assert e2e_count == [len(alerts)]
    assert families["stream_engine_rss_bytes"].samples[0].value > 0
    sink_rows = families["stream_engine_sink_rows_written"].samples[0].value
    assert sink_rows == len(alerts)

    # Log lines are JSON objects (faust's own lines included) with the worker's name.
    lines = [line for line in proc.log().splitlines() if line.startswith("{")]
    parsed = [orjson.loads(line) for line in lines]
    assert any(p["msg"].startswith("api listening on") for p in parsed)
    dead_lines = [p for p in parsed if p["msg"].startswith("dead letter")]
    assert dead_lines and dead_lines[0]["reason"] == "not_json" and "offset" in dead_lines[0]
