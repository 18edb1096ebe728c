"""The project's ClickHouse HTTP code path, run through the chDB-backed TEST DOUBLE.

``harness/chdb_http_double.py`` is NOT a ClickHouse server: it implements just enough of the HTTP
interface over chDB (in its own process) for clickhouse-connect's HTTP client. These tests prove
the HTTP path (URL → urllib3 transport → wire formats → error mapping → reconnect) works end to
end here; ``test_clickhouse_http.py`` runs against a real server when one is configured.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import lz4.frame
import numpy as np
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from harness.chdb_http_double import RunningDouble, start_double
from stream_engine.sinks.clickhouse import queries
from stream_engine.sinks.clickhouse.client import connect
from stream_engine.sinks.clickhouse.schema import MIGRATIONS, migrate
from stream_engine.sinks.clickhouse.sink import ClickHouseSink
from tests.integration.clickhouse_data import make_metrics, make_rows, unique_database

pytestmark = pytest.mark.integration

T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)  # an hour boundary
T0_MS = int(T0.timestamp() * 1000)
WINDOW = (T0, T0 + timedelta(hours=1))


@pytest.fixture
def http_url(chdb_http_double: RunningDouble) -> str:
    return chdb_http_double.url


@pytest.fixture
def database(http_url: str) -> Iterator[str]:
    """A fresh, migrated database on the double; dropped afterwards."""
    name = unique_database("dbl")
    admin = connect(http_url, None)
    migrate(admin, name, ttl_days=3650)
    yield name
    admin.command(f"DROP DATABASE IF EXISTS {name}")


def _count(client: Any, table: str = "proposition_log") -> int:
    return int(client.query(f"SELECT count() FROM {table} FINAL").result_rows[0][0])


async def _eventually(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def _sink(url: str, database: str, journal: Path, **kw: Any) -> ClickHouseSink:
    params: dict[str, Any] = {"flush_rows": 1000, "flush_interval_s": 0.05, "retry_initial_s": 0.01, "retry_max_s": 0.1}
    params.update(kw)
    return ClickHouseSink(lambda: connect(url, database), journal, **params)


# --- the protocol ---------------------------------------------------------------------------


def test_connect_ping_command_and_bound_parameters(http_url: str) -> None:
    client = connect(http_url, None)
    assert client.ping()
    assert client.server_version.startswith("26.")  # chDB's engine version, learnt from the startup query
    assert client.command("SELECT 41 + 1") == 42
    assert client.command("SELECT 'a', 'b'") == ["a", "b"]
    tricky = "a'b\\c\n\t}{x:String}"
    result = client.query(
        "SELECT {s:String} AS s, {ids:Array(String)} AS ids, {n:UInt32} AS n",
        parameters={"s": tricky, "ids": ["x' OR 1=1 --", "y"], "n": 7},
    )
    assert result.column_names == ("s", "ids", "n")
    assert result.result_rows == [(tricky, ["x' OR 1=1 --", "y"], 7)]


def test_server_errors_reach_the_client_with_their_code(http_url: str) -> None:
    client = connect(http_url, None)
    with pytest.raises(DatabaseError) as raised:
        client.query("SELECT * FROM no_such_database.no_such_table")
    assert "UNKNOWN" in str(raised.value)
    with pytest.raises(DatabaseError) as raised:
        client.command("SELEKT 1")
    assert "SYNTAX_ERROR" in str(raised.value)
    with pytest.raises(ValueError):  # the product refuses non-identifiers before any request
        connect(http_url, "x; DROP DATABASE default")


def test_raw_http_contract(chdb_http_double: RunningDouble) -> None:
    """The headers and encodings clickhouse-connect relies on, checked on the wire."""
    base = f"http://{chdb_http_double.host}:{chdb_http_double.port}"
    with urllib.request.urlopen(f"{base}/ping") as response:
        assert response.read() == b"Ok.\n"
    request = urllib.request.Request(
        f"{base}/?query_id=q-123&enable_http_compression=1",
        data=b"SELECT number FROM numbers(3) FORMAT TabSeparated",
        headers={"Accept-Encoding": "lz4"},
    )
    with urllib.request.urlopen(request) as response:
        assert response.headers["X-ClickHouse-Query-Id"] == "q-123"
        assert response.headers["X-ClickHouse-Format"] == "TabSeparated"
        assert response.headers["X-ClickHouse-Timezone"]
        assert '"read_rows"' in response.headers["X-ClickHouse-Summary"]
        assert response.headers["Content-Encoding"] == "lz4"
        assert lz4.frame.decompress(response.read()) == b"0\n1\n2\n"
    ddl = urllib.request.Request(f"{base}/", data=b"CREATE DATABASE IF NOT EXISTS default")
    with urllib.request.urlopen(ddl) as response:
        assert response.headers["X-ClickHouse-Format"] is None  # no result set: command() returns a summary
        assert response.read() == b""
    bad = urllib.request.Request(f"{base}/", data=b"SELECT * FROM default.no_such_table")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(bad)
    assert raised.value.code == 404
    assert raised.value.headers["X-ClickHouse-Exception-Code"] == "60"
    assert raised.value.read().startswith(b"Code: 60. DB::Exception:")


def test_compressed_native_insert_and_long_parameters(http_url: str, database: str) -> None:
    client = connect(http_url, database)  # compress on: the Native insert body goes lz4-encoded
    ts = datetime(2026, 1, 1, 12, 0, 0, 123456)
    summary = client.insert(
        "latency_metrics",
        [[ts, "decode", "scam", "w1", 3, 1.5, 2.0], [ts, "redis", "scam", "w1", 4, 2.5, 3.0]],
        column_names=["ts", "stage", "alert_type", "worker", "count", "sum_ms", "max_ms"],
    )
    assert summary.written_rows == 2
    rows = client.query("SELECT ts, stage, count, sum_ms FROM latency_metrics ORDER BY stage").result_rows
    assert rows == [(ts, "decode", 3, 1.5), (ts, "redis", 4, 2.5)]
    # > 4 KiB of bound parameters: clickhouse-connect switches to a multipart form body
    client.insert_arrow("proposition_log", _arrow(make_rows(5)))
    wanted = [f"missing-{i:05d}" for i in range(1000)] + ["a1", "a4"]
    assert set(queries.get_proposition_logs_batch(client, wanted)) == {"a1", "a4"}


# --- the project's code paths -----------------------------------------------------------------


def test_migrate_applies_then_nothing(http_url: str) -> None:
    name = unique_database("mig")
    admin = connect(http_url, None)
    try:
        assert migrate(admin, name, ttl_days=30) == [m.version for m in MIGRATIONS]
        assert migrate(admin, name, ttl_days=30) == []
        tables = {r[0] for r in admin.query(f"SELECT name FROM system.tables WHERE database = '{name}'").result_rows}
        assert tables == {"schema_migrations", "proposition_log", "latency_metrics", "proposition_minute", "proposition_minute_mv",
                          "decision_audit", "decision_audit_mv"}  # fmt: skip
        versions = admin.query(f"SELECT version, name FROM {name}.schema_migrations ORDER BY version").result_rows
        assert versions == [(m.version, m.name) for m in MIGRATIONS]
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {name}")


async def test_sink_writes_500_rows_over_http(http_url: str, database: str, tmp_path: Path) -> None:
    sink = _sink(http_url, database, tmp_path / "j", flush_rows=200)
    await sink.start()
    rows, metrics = make_rows(500), make_metrics(20)
    for i in range(0, 500, 100):
        await sink.write(rows[i : i + 100], metrics[i // 25 : i // 25 + 4])
    await sink.stop()
    client = connect(http_url, database)
    assert _count(client) == 500
    assert _count(client, "latency_metrics") == 20
    assert int(client.query("SELECT countMerge(decisions) FROM proposition_minute").result_rows[0][0]) == 500
    stored = {r[0]: r[1:] for r in client.query("SELECT alert_id, action, confidence, offset FROM proposition_log").result_rows}
    assert stored["a0"] == (None, None, 0) and stored["a1"][0] == "rerun" and stored["a1"][1] == pytest.approx(0.51)
    stats = sink.stats()
    assert stats["rows_inserted"] == 500 and stats["failures"] == 0 and stats["journal_segments"] == 0


@pytest.fixture
async def loaded(http_url: str, database: str, tmp_path: Path) -> list[Any]:
    rows = [r._replace(received_at_ms=T0_MS + i * 1000, decided_at_ms=T0_MS + i * 1000 + 4) for i, r in enumerate(make_rows(600))]
    sink = _sink(http_url, database, tmp_path / "j")
    await sink.start()
    await sink.write(rows, make_metrics(10, start_us=T0_MS * 1000))
    await sink.write(rows[:50], [])  # at-least-once duplicates: the exact queries must not count them
    await sink.stop()
    return rows


def test_query_functions_match_python(loaded: list[Any], http_url: str, database: str) -> None:
    client = connect(http_url, database)
    latency = queries.latency_percentiles(client, *WINDOW, interval="1h")
    assert [b["alert_type"] for b in latency] == ["ci_failure", "infra", "scam"]
    for bucket in latency:
        assert bucket["bucket"] == T0.replace(tzinfo=None)
        values = np.array([r.latency_ms for r in loaded if r.alert_type == bucket["alert_type"]], dtype=np.float32)
        assert bucket["count"] == len(values) == 200
        expected = np.percentile(values.astype(np.float64), [50, 95, 99])
        assert [bucket["p50"], bucket["p95"], bucket["p99"]] == pytest.approx(list(expected), rel=1e-6)

    tiers = queries.cache_hit_ratio(client, *WINDOW, interval="1h")
    assert {(t["alert_type"], t["cache_tier"]): t["count"] for t in tiers} == dict(Counter((r.alert_type, r.cache_tier) for r in loaded))
    modes = queries.decisions_by_mode(client, *WINDOW, interval="1h", alert_type="scam")
    assert {m["mode"]: m["count"] for m in modes} == dict(Counter(r.mode for r in loaded if r.alert_type == "scam"))

    slowest = queries.slowest_alerts(client, *WINDOW, limit=5)
    by_latency = sorted(loaded, key=lambda r: (-np.float32(r.latency_ms), r.alert_id))[:5]
    assert [s["alert_id"] for s in slowest] == [r.alert_id for r in by_latency]

    logs = queries.get_proposition_logs_batch(client, ["a3", "a42", "nope"])
    assert set(logs) == {"a3", "a42"}
    assert logs["a42"]["offset"] == 42 and logs["a42"]["propositions"][0]["action"] == "rerun"

    stages = queries.stage_latency(client, *WINDOW, interval="1h")
    assert [(s["stage"], s["samples"]) for s in stages] == [("decode", 100)]  # 10 rows x count 10
    assert stages[0]["max_ms"] == pytest.approx(1.5)

    # outside the window: nothing
    assert queries.latency_percentiles(client, T0 - timedelta(hours=3), T0, interval="1h") == []


def test_injection_strings_return_nothing_and_drop_nothing(loaded: list[Any], http_url: str, database: str) -> None:
    client = connect(http_url, database)
    hostile = [
        "x' OR 1=1 --",
        "a1'); DROP TABLE proposition_log; --",
        "a1\\' OR '1'='1",
        "{ids:Array(String)}') OR 1=1 --",
    ]
    assert queries.get_proposition_logs_batch(client, hostile) == {}
    for alert_type in hostile + ["scam' OR '1'='1", "scam\\"]:
        assert queries.latency_percentiles(client, *WINDOW, interval="1h", alert_type=alert_type) == []
        assert queries.cache_hit_ratio(client, *WINDOW, interval="1h", alert_type=alert_type) == []
        assert queries.slowest_alerts(client, *WINDOW, alert_type=alert_type) == []
    assert _count(client) == 600
    assert {r[0] for r in client.query("SHOW TABLES").result_rows} >= {"proposition_log", "latency_metrics"}


# --- outage: the double is killed mid-run and restarted on the same data directory -----------


def test_a_worker_writing_over_http_does_not_load_pandas(http_url: str, database: str, tmp_path: Path) -> None:
    """clickhouse-connect probes inserts for DataFrames, which imported pandas + pyarrow (+85 MB RSS)."""
    import subprocess
    import sys

    script = f"""
import asyncio, sys
from pathlib import Path
from stream_engine.sinks.clickhouse.client import connect
from stream_engine.sinks.clickhouse.sink import ClickHouseSink
from tests.integration.clickhouse_data import make_metrics, make_rows
async def main():
    sink = ClickHouseSink(lambda: connect({http_url!r}, {database!r}), Path({str(tmp_path / "j")!r}), flush_rows=1)
    await sink.start()
    await sink.write(make_rows(5), make_metrics(2))
    while sink.stats()["rows_inserted"] < 5:
        await asyncio.sleep(0.02)
    await sink.stop()
    print(sink.stats()["rows_inserted"], "pandas" in sys.modules, "pyarrow" in sys.modules)

asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["5", "False", "False"], out.stderr[-2000:]


async def test_sink_survives_the_double_being_killed_and_replays_into_the_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "chdb"
    double = start_double(data_dir)
    database = unique_database("out")
    try:
        migrate(connect(double.url, None), database, ttl_days=3650)
        url = double.url  # the restart listens on the same port, so the sink's URL stays valid
        journal = tmp_path / "j"
        sink = _sink(url, database, journal, stop_timeout_s=0.5)
        await sink.start()
        rows = make_rows(500)
        await sink.write(rows[:200], [])
        await _eventually(lambda: sink.stats()["rows_inserted"] == 200)

        double.kill()
        with pytest.raises(OperationalError):
            connect(url, database, connect_timeout_s=1.0)  # really down
        for i in range(200, 500, 50):
            await sink.write(rows[i : i + 50], [])  # accepted: durable in the journal
        await _eventually(lambda: sink.stats()["failures"] > 0)
        await sink.stop()  # gives up at the deadline: what is left stays on disk
        stats = sink.stats()
        assert stats["rows_inserted"] == 200 and stats["journal_segments"] >= 1 and stats["journal_bytes"] > 0
        assert "OperationalError" in stats["last_error"]

        double = start_double(data_dir, port=double.port)
        client = connect(url, database)
        assert _count(client) == 200  # the first 200 survived the kill in the same chDB directory

        replay = _sink(url, database, journal)
        await replay.start()  # replays the segments left by the first sink
        await _eventually(lambda: replay.stats()["journal_segments"] == 0)
        await replay.stop()
        assert replay.stats()["replayed_rows"] == 300
        assert _count(client) == 500
        assert {r[0] for r in client.query("SELECT alert_id FROM proposition_log FINAL").result_rows} == {r.alert_id for r in rows}
    finally:
        double.stop()


def _arrow(rows: list[Any]) -> Any:
    """LogRows as an Arrow table: the double's Arrow input path (the sink itself inserts Native)."""
    import pyarrow as pa

    from stream_engine.sinks.clickhouse.rows import LOG_COLUMNS

    ms = pa.timestamp("ms", tz="UTC")
    types = (pa.string(), pa.string(), pa.string(), pa.string(), pa.string(), ms, ms, pa.string(), pa.string(),
             pa.float32(), pa.string(), pa.float32(), pa.uint32(), pa.uint16(), pa.uint64(), pa.string(),
             pa.string(), pa.string(), pa.string(), pa.string(), pa.string(), pa.string())  # fmt: skip
    cols = list(zip(*rows, strict=True))
    return pa.table([pa.array(c, t) for c, t in zip(cols, types, strict=True)], names=list(LOG_COLUMNS))
