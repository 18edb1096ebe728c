"""Analytics queries under their limits on the real engine (chDB): a query that would scan the
whole table (``FINAL`` included) or return too many rows is stopped, and every limit reaches
ClickHouse as a setting of the query."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from multidict import MultiDict

from stream_engine.settings import Settings
from stream_engine.sinks.clickhouse.analytics import LimitedClient, QueryLimitExceeded, QueryLimits, build_query
from stream_engine.sinks.clickhouse.client import connect
from stream_engine.sinks.clickhouse.sink import ClickHouseSink
from tests.integration.clickhouse_data import make_rows

pytestmark = pytest.mark.integration

N = 5000
DEFAULTS = QueryLimits.from_settings(Settings())
EVERYTHING = MultiDict({"from": "0", "interval": "1d"})  # 1970 to now: every partition, FINAL


@pytest.fixture
async def loaded(ch_url: str, ch_database: str, tmp_path: Path) -> list[Any]:
    start = datetime.now(UTC) - timedelta(days=3)
    rows = make_rows(N, start_ms=int(start.timestamp() * 1000))
    # Three days apart: three daily partitions, which FINAL reads and merges together.
    rows = [r._replace(received_at_ms=r.received_at_ms + (i % 3) * 86_400_000) for i, r in enumerate(rows)]
    sink = ClickHouseSink(lambda: connect(ch_url, ch_database), tmp_path / "j", flush_rows=N, flush_interval_s=0.05)
    await sink.start()
    await sink.write(rows, [])
    await sink.stop()
    return rows


def test_a_query_over_the_whole_table_is_stopped_by_the_rows_it_would_read(loaded: list[Any], ch_client: Any) -> None:
    # With room enough the same query answers, so it is the limit that stops it below.
    rows = build_query("modes", EVERYTHING, DEFAULTS)(ch_client)
    assert sum(r["count"] for r in rows) == N

    tight = replace(DEFAULTS, max_rows_to_read=N // 2)
    for name in ("latency", "modes", "cache", "slowest"):
        with pytest.raises(QueryLimitExceeded, match="max_rows_to_read"):
            build_query(name, EVERYTHING, tight)(ch_client)


def test_a_result_larger_than_the_limit_is_refused_not_truncated(loaded: list[Any], ch_client: Any) -> None:
    params = MultiDict({"from": "0", "limit": "1000"})
    assert len(build_query("slowest", params, DEFAULTS)(ch_client)) == 1000
    with pytest.raises(QueryLimitExceeded, match="result"):
        build_query("slowest", params, replace(DEFAULTS, max_result_rows=100))(ch_client)


def test_a_query_that_needs_more_memory_than_allowed_is_stopped(loaded: list[Any], ch_client: Any) -> None:
    params = MultiDict({"ids": ",".join(f"a{i}" for i in range(N))})
    assert len(build_query("logs", params, DEFAULTS)(ch_client)) == N
    with pytest.raises(QueryLimitExceeded, match="memory"):
        build_query("logs", params, replace(DEFAULTS, max_memory_bytes=1 << 20))(ch_client)


def test_every_limit_reaches_clickhouse_and_only_selects_run(ch_client: Any) -> None:
    limits = QueryLimits(max_execution_s=7, max_rows_to_read=1234, max_result_rows=567, max_memory_bytes=89 << 20, max_threads=1)
    limited = LimitedClient(ch_client, limits.clickhouse_settings())
    got = dict(limited.query("SELECT name, value FROM system.settings WHERE changed").result_rows)
    assert {k: got.get(k) for k in ("readonly", "max_execution_time", "max_rows_to_read", "max_result_rows",
                                    "max_memory_usage", "max_threads", "result_overflow_mode")} == {
        "readonly": "2", "max_execution_time": "7", "max_rows_to_read": "1234", "max_result_rows": "567",
        "max_memory_usage": str(89 << 20), "max_threads": "1", "result_overflow_mode": "throw",
    }  # fmt: skip
    with pytest.raises(ValueError, match="SELECT statements only"):
        limited.query("CREATE TABLE nope (x UInt8) ENGINE = Memory")
    # The sink's session keeps none of it: its next statement still writes.
    ch_client.command("CREATE TABLE still_writable (x UInt8) ENGINE = Memory")
    assert dict(ch_client.query("SELECT name, value FROM system.settings WHERE name = 'readonly'").result_rows) == {"readonly": "0"}
