"""Temporal queries against rows inserted through the sink, checked against Python arithmetic."""

from __future__ import annotations

import statistics
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from stream_engine.sinks.clickhouse import queries
from stream_engine.sinks.clickhouse.client import connect
from stream_engine.sinks.clickhouse.sink import ClickHouseSink
from tests.integration.clickhouse_data import make_rows

pytestmark = pytest.mark.integration

# Two minutes of rows, starting on a minute boundary, so the per-minute buckets are known.
# HH:10 of the previous hour: the 2 minutes of rows lie inside one hour and one day whenever the
# suite runs (T0 = now - 10 min split them across two hour buckets when run at hh:08-hh:10).
T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(minutes=50)
T0_MS = int(T0.timestamp() * 1000)
N = 3000  # rows 40 ms apart: 0..1499 in minute 0, 1500..2999 in minute 1


@pytest.fixture
async def loaded(ch_url: str, ch_database: str, ch_client: Any, tmp_path: Path) -> list[Any]:
    rows = [r._replace(received_at_ms=T0_MS + i * 40, decided_at_ms=T0_MS + i * 40 + 5) for i, r in enumerate(make_rows(N))]
    sink = ClickHouseSink(lambda: connect(ch_url, ch_database), tmp_path / "j", flush_rows=1000, flush_interval_s=0.05)
    await sink.start()
    await sink.write(rows, [])
    await sink.write(rows[:100], [])  # at-least-once duplicates: exact queries must not count them
    await sink.stop()
    return rows


WINDOW = (T0, T0 + timedelta(minutes=5))


def test_exact_percentiles_equal_numpy(loaded: list[Any], ch_client: Any) -> None:
    result = queries.latency_percentiles(ch_client, *WINDOW, interval="1m")
    assert len(result) == 6  # 2 minutes x 3 types
    for bucket in result:
        minute = int((bucket["bucket"].replace(tzinfo=UTC) - T0).total_seconds() // 60)
        values = np.array(
            [r.latency_ms for i, r in enumerate(loaded) if i // 1500 == minute and r.alert_type == bucket["alert_type"]],
            dtype=np.float32,  # the column is Float32
        )
        assert bucket["count"] == len(values) == 500
        expected = np.percentile(values.astype(np.float64), [50, 95, 99])  # linear interpolation
        assert [bucket["p50"], bucket["p95"], bucket["p99"]] == pytest.approx(list(expected), rel=1e-6)
        # statistics.quantiles' inclusive method is the same definition
        assert bucket["p50"] == pytest.approx(statistics.quantiles(values.tolist(), n=100, method="inclusive")[49], rel=1e-6)


def test_rollup_percentiles_are_tdigest_close(loaded: list[Any], ch_client: Any) -> None:
    approx = queries.latency_percentiles(ch_client, *WINDOW, interval="1h", exact=False)
    exact = queries.latency_percentiles(ch_client, *WINDOW, interval="1h")
    assert [(a["bucket"], a["alert_type"]) for a in approx] == [(e["bucket"], e["alert_type"]) for e in exact]
    for a, e in zip(approx, exact, strict=True):
        assert a["count"] == e["count"] + sum(1 for r in loaded[:100] if r.alert_type == e["alert_type"])  # dups count
        values = np.array([r.latency_ms for r in loaded if r.alert_type == e["alert_type"]], dtype=np.float64)
        for key, q in (("p50", 50), ("p95", 95)):
            # TDigest tolerance: within 2 percentile ranks of the exact value
            rank = (values <= a[key]).mean() * 100
            assert abs(rank - q) <= 2, (key, a[key], rank)


def test_cache_and_mode_shares_match_counts(loaded: list[Any], ch_client: Any) -> None:
    tiers = queries.cache_hit_ratio(ch_client, *WINDOW, interval="1h")
    expected = Counter((r.alert_type, r.cache_tier) for r in loaded)
    assert {(t["alert_type"], t["cache_tier"]): t["count"] for t in tiers} == dict(expected)
    per_type = Counter(r.alert_type for r in loaded)
    for t in tiers:
        assert t["ratio"] == pytest.approx(expected[(t["alert_type"], t["cache_tier"])] / per_type[t["alert_type"]])

    modes = queries.decisions_by_mode(ch_client, *WINDOW, interval="1d", alert_type="scam")
    assert {m["mode"]: m["count"] for m in modes} == dict(Counter(r.mode for r in loaded if r.alert_type == "scam"))
    assert sum(m["ratio"] for m in modes) == pytest.approx(1.0)


def test_window_is_half_open(loaded: list[Any], ch_client: Any) -> None:
    first_minute = queries.latency_percentiles(ch_client, T0, T0 + timedelta(minutes=1), interval="1h")
    assert sum(b["count"] for b in first_minute) == 1500


def test_get_proposition_logs_batch_returns_exactly_the_ids_asked(loaded: list[Any], ch_client: Any) -> None:
    asked = ["a3", "a11", "a2999", "missing", "a50"]  # a50 is duplicated in the table
    got = queries.get_proposition_logs_batch(ch_client, asked)
    assert set(got) == {"a3", "a11", "a2999", "a50"}
    assert got["a11"]["action"] is None and got["a3"]["offset"] == 3
    assert got["a3"]["propositions"] == [{"action": "rerun", "confidence": 0.9, "rationale": "x"}]
    assert queries.get_proposition_logs_batch(ch_client, []) == {}


def test_slowest_alerts(loaded: list[Any], ch_client: Any) -> None:
    top = queries.slowest_alerts(ch_client, *WINDOW, limit=5)
    expected = sorted(loaded, key=lambda r: (-np.float32(r.latency_ms), r.alert_id))[:5]
    assert [t["alert_id"] for t in top] == [r.alert_id for r in expected]
    with pytest.raises(ValueError):
        queries.slowest_alerts(ch_client, *WINDOW, limit=0)


INJECTIONS = ["scam' OR '1'='1", "x'; DROP TABLE proposition_log; --", "a1') OR 1=1 --", "\\' OR 1=1 #"]


@pytest.mark.parametrize("evil", INJECTIONS)
def test_injection_strings_match_nothing_and_drop_nothing(loaded: list[Any], ch_client: Any, evil: str) -> None:
    assert queries.latency_percentiles(ch_client, *WINDOW, alert_type=evil) == []
    assert queries.cache_hit_ratio(ch_client, *WINDOW, alert_type=evil) == []
    assert queries.slowest_alerts(ch_client, *WINDOW, alert_type=evil) == []
    assert queries.get_proposition_logs_batch(ch_client, [evil, "a1"]).keys() == {"a1"}
    with pytest.raises(ValueError):
        queries.latency_percentiles(ch_client, *WINDOW, interval=evil)
    assert ch_client.query("SELECT count() FROM proposition_log FINAL").result_rows[0][0] == N


def test_cli_query_json_and_table(loaded: list[Any], ch_url: str, ch_database: str, capsys: pytest.CaptureFixture[str]) -> None:
    from stream_engine.cli import main

    base = ["--clickhouse-url", ch_url, "--clickhouse-database", ch_database, "query"]
    window = ["--from", WINDOW[0].isoformat(), "--until", WINDOW[1].isoformat()]
    assert main([*base, "latency", *window, "--interval", "1h", "--type", "infra", "--json"]) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert [(r["alert_type"], r["count"]) for r in out] == [("infra", 1000)]
    assert main([*base, "logs", "--ids", "a1,a2,nope", "--json"]) == 0
    assert sorted(r["alert_id"] for r in orjson.loads(capsys.readouterr().out)) == ["a1", "a2"]
    assert main([*base, "slowest", *window, "--limit", "3"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["alert_id", "alert_type", "latency_ms"] and len(table) == 5
    assert main([*base, "cache", *window, "--interval", "7m"]) == 2
    assert "interval must be one of" in capsys.readouterr().out
