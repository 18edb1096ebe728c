"""The ClickHouse endpoint of the local stack (`stream-engine clickhouse serve`, chDB behind
ClickHouse's HTTP interface), driven by the project's own HTTP code path (clickhouse-connect) and
by raw HTTP requests for the parts of the protocol clients rely on.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import lz4.frame
import numpy as np
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from harness.clickhouse import RunningServer, start_server
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
def http_url(clickhouse_server: RunningServer) -> str:
    return clickhouse_server.url


@pytest.fixture
def database(http_url: str) -> Iterator[str]:
    """A fresh, migrated database on the endpoint; dropped afterwards."""
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


def test_raw_http_contract(clickhouse_server: RunningServer) -> None:
    """The headers and encodings clickhouse-connect relies on, checked on the wire."""
    base = clickhouse_server.base
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
    with urllib.request.urlopen(f"{base}/?query=" + urllib.parse.quote("SELECT 1")) as response:  # curl's GET
        assert response.read() == b"1\n"


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
                          "decision_audit", "decision_audit_mv", "outcomes", "decision_lookup", "decision_lookup_mv"}  # fmt: skip
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


# --- outage: the server is killed mid-run and restarted on the same data directory -----------


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


async def test_sink_survives_the_server_being_killed_and_replays_into_the_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "chdb"
    server = start_server(data_dir)
    database = unique_database("out")
    try:
        migrate(connect(server.url, None), database, ttl_days=3650)
        url = server.url  # the restart listens on the same port, so the sink's URL stays valid
        journal = tmp_path / "j"
        sink = _sink(url, database, journal, stop_timeout_s=0.5)
        await sink.start()
        rows = make_rows(500)
        await sink.write(rows[:200], [])
        await _eventually(lambda: sink.stats()["rows_inserted"] == 200)

        server.kill()
        with pytest.raises(OperationalError):
            connect(url, database, connect_timeout_s=1.0)  # really down
        for i in range(200, 500, 50):
            await sink.write(rows[i : i + 50], [])  # accepted: durable in the journal
        await _eventually(lambda: sink.stats()["failures"] > 0)
        await sink.stop()  # gives up at the deadline: what is left stays on disk
        stats = sink.stats()
        assert stats["rows_inserted"] == 200 and stats["journal_segments"] >= 1 and stats["journal_bytes"] > 0
        assert "OperationalError" in stats["last_error"]

        server = start_server(data_dir, port=server.port)
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
        server.stop()


# --- the HTTP interface itself ------------------------------------------------------------------


def _post(base: str, sql: bytes | str, *, headers: dict[str, str] | None = None, **args: str) -> tuple[int, dict[str, str], bytes]:
    """POST a statement (or data, with the statement in ``query=``); never raises on HTTP errors."""
    url = f"{base}/?{urllib.parse.urlencode(args)}" if args else f"{base}/"
    body = sql.encode() if isinstance(sql, str) else sql
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _get(base: str, **args: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(f"{base}/?{urllib.parse.urlencode(args)}", timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _code(headers: dict[str, str]) -> int:
    return int(headers["X-ClickHouse-Exception-Code"])


def test_the_configured_database_exists_at_start(clickhouse_server: RunningServer) -> None:
    # like the server image's CLICKHOUSE_DB: analysts can query before any worker migrated
    assert _get(clickhouse_server.base, query="EXISTS DATABASE stream_engine")[2] == b"1\n"


def test_get_is_read_only_and_readonly_1_refuses_writes(clickhouse_server: RunningServer, database: str) -> None:
    base = clickhouse_server.base
    status, headers, _ = _get(base, query=f"CREATE TABLE {database}.g (a UInt8) ENGINE = Memory")
    assert (status, _code(headers)) == (500, 164)  # READONLY: only POST writes
    assert _get(base, query="SELECT getSetting('readonly')")[2] == b"2\n"  # GET implies readonly=2
    status, headers, _ = _post(base, f"CREATE TABLE {database}.g (a UInt8) ENGINE = Memory", readonly="1")
    assert (status, _code(headers)) == (500, 164)
    # a stricter readonly together with other settings, as clickhouse-server allows
    assert _post(base, "SELECT getSetting('readonly'), getSetting('max_threads')", readonly="1", max_threads="1")[2] == b"1\t1\n"
    assert _post(base, f"CREATE TABLE {database}.g (a UInt8) ENGINE = Memory")[0] == 200


def test_settings_apply_to_their_request_only(clickhouse_server: RunningServer, database: str) -> None:
    """Every request runs on its own engine handle: a setting (here a dedup token) cannot leak."""
    base = clickhouse_server.base
    _post(base, f"CREATE TABLE {database}.d (a UInt32) ENGINE = MergeTree ORDER BY a "
                "SETTINGS non_replicated_deduplication_window = 100")  # fmt: skip
    statement = f"INSERT INTO {database}.d FORMAT CSV"
    assert _post(base, b"1\n2\n", query=statement, insert_deduplication_token="t1")[0] == 200
    assert _post(base, b"1\n2\n", query=statement, insert_deduplication_token="t1")[0] == 200  # a retry: collapses
    assert _post(base, b"3\n", query=statement)[0] == 200  # no token: must not inherit t1 and vanish
    assert _post(base, f"SELECT count(), sum(a) FROM {database}.d")[2] == b"3\t6\n"
    assert _post(base, "SELECT getSetting('max_threads') = 3", max_threads="3")[2] == b"1\n"
    assert _post(base, "SELECT getSetting('max_threads') = 3")[2] == b"0\n"


def test_sessions_keep_their_settings_and_take_one_request_at_a_time(clickhouse_server: RunningServer) -> None:
    base = clickhouse_server.base
    assert _post(base, "SET max_threads = 3", session_id="s1")[0] == 200
    assert _post(base, "SELECT getSetting('max_threads')", session_id="s1")[2] == b"3\n"
    assert _post(base, "SELECT getSetting('max_threads') = 3")[2] == b"0\n"
    status, headers, _ = _post(base, "SELECT 1", session_id="nope", session_check="1")
    assert (status, _code(headers)) == (500, 372)  # SESSION_NOT_FOUND

    slow = threading.Thread(target=_post, args=(base, _SLOW.format(tag="locked")), kwargs={"session_id": "s2"})
    slow.start()
    try:
        _wait(lambda: _running(base, "locked"))
        status, headers, body = _post(base, "SELECT 1", session_id="s2")
        assert (status, _code(headers)) == (500, 373), body  # SESSION_IS_LOCKED, as clickhouse-server answers
    finally:
        _kill(base, "locked")
        slow.join()
    assert _post(base, "SELECT 1", session_id="s2")[0] == 200  # free again


def test_statement_errors_carry_clickhouse_codes_and_statuses(clickhouse_server: RunningServer) -> None:
    base = clickhouse_server.base
    cases = {
        "multi-statement": (_post(base, "SELECT 1; SELECT 2"), 400, 62),
        "syntax": (_post(base, "SELEKT 1"), 400, 62),
        "empty": (_post(base, b""), 400, 62),
        "unknown setting": (_post(base, "SELECT 1", no_such_setting="1"), 404, 115),
        "unknown format": (_post(base, "SELECT 1", default_format="NoSuchFormat"), 404, 73),
        "python-only format": (_post(base, "SELECT 1", default_format="DataFrame"), 404, 73),
        "unknown database": (_post(base, "SELECT 1", database="no_such_db"), 404, 81),
        "block compression": (_post(base, "SELECT 1", compress="1"), 501, 48),
        "unknown encoding": (_post(base, b"SELECT 1", headers={"Content-Encoding": "snappy-ish"}), 500, 89),
    }
    for what, ((status, headers, body), want_status, want_code) in cases.items():
        assert (status, _code(headers)) == (want_status, want_code), (what, body)
        assert body.startswith(f"Code: {want_code}. DB::Exception:".encode()), (what, body)
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"{base}/no/such/handler")
    assert raised.value.code == 404


def test_an_error_after_the_first_block(clickhouse_server: RunningServer) -> None:
    base = clickhouse_server.base
    sql = "SELECT throwIf(number = 150000, 'boom') FROM numbers(200000) SETTINGS max_block_size = 10000"
    status, _, body = _post(base, sql)
    assert status == 200 and b"Code: 395. DB::Exception: boom" in body  # streamed: the error ends the body
    assert body.startswith(b"0\n0\n")
    status, headers, body = _post(base, sql, wait_end_of_query="1")
    assert (status, _code(headers)) == (500, 395)  # buffered: the error gets its status


def test_results_stream_in_row_formats_and_come_whole_in_the_others(clickhouse_server: RunningServer) -> None:
    import orjson

    base = clickhouse_server.base
    many = "SELECT number AS n FROM numbers(300000)"  # several engine blocks
    status, headers, body = _post(base, many)
    assert headers.get("Transfer-Encoding") == "chunked" and headers["X-ClickHouse-Format"] == "TabSeparated"
    assert body == b"".join(b"%d\n" % i for i in range(300000))
    body = _post(base, many + " FORMAT CSVWithNames")[2]
    assert body.count(b'"n"') == 1 and len(body.splitlines()) == 300001  # one header, not one per block
    document = orjson.loads(_post(base, many, default_format="JSON")[2])
    assert document["rows"] == 300000 and document["data"][-1] == {"n": 299999}
    assert _post(base, "SELECT 1 AS a WHERE 0", default_format="JSON")[1]["X-ClickHouse-Format"] == "JSON"
    # clickhouse-connect reads Native: the streamed blocks concatenate into one result
    client = connect(clickhouse_server.url, None)
    assert client.query(many).result_rows[-1] == (299999,) and len(client.query(many).result_rows) == 300000


def test_http_compression_both_ways(clickhouse_server: RunningServer, database: str) -> None:
    from backports import zstd

    base = clickhouse_server.base
    _post(base, f"CREATE TABLE {database}.c (a UInt32, s String) ENGINE = MergeTree ORDER BY a")
    rows = b"".join(b"%d,row %d\n" % (i, i) for i in range(5000))
    insert = f"INSERT INTO {database}.c FORMAT CSV"
    assert _post(base, zstd.compress(rows), query=insert, headers={"Content-Encoding": "zstd"})[0] == 200
    assert _post(base, gzip.compress(rows), query=insert, headers={"Content-Encoding": "gzip"})[0] == 200
    sql = f"SELECT a, s FROM {database}.c ORDER BY a, s FORMAT CSV"
    expected = b"".join(b'%d,"row %d"\n%d,"row %d"\n' % (i, i, i, i) for i in range(5000))
    for encoding, decode in (("zstd", zstd.decompress), ("gzip", gzip.decompress), ("lz4", lz4.frame.decompress)):
        status, headers, body = _post(base, sql, enable_http_compression="1", headers={"Accept-Encoding": encoding})
        assert headers["Content-Encoding"] == encoding and decode(body) == expected
    _, headers, body = _post(base, sql, enable_http_compression="0", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in headers and body == expected  # turned off: plain


def test_insert_data_in_any_input_format(clickhouse_server: RunningServer, database: str) -> None:
    base = clickhouse_server.base
    _post(base, f"CREATE TABLE {database}.f (a UInt32, s String) ENGINE = MergeTree ORDER BY a")
    assert _post(base, f'INSERT INTO {database}.f FORMAT JSONEachRow\n{{"a": 1, "s": "x"}}\n{{"a": 2, "s": "y"}}')[0] == 200
    assert _post(base, b"3\tz\n", query=f"INSERT INTO {database}.f (a, s) FORMAT TabSeparated")[0] == 200
    assert _post(base, f"INSERT INTO {database}.f VALUES (4, 'w')")[0] == 200
    status, headers, body = _post(base, b"5,v\n", query=f"INSERT INTO {database}.f FORMAT CSV", readonly="1")
    assert (status, _code(headers)) == (500, 164), body
    status, headers, body = _post(base, b"not a number,v\n", query=f"INSERT INTO {database}.f FORMAT CSV")
    assert status == 400 and _code(headers) in (6, 27, 72, 117), body  # the engine's parse error, nothing written
    assert _post(base, f"SELECT groupArray(a), groupArray(s) FROM (SELECT * FROM {database}.f ORDER BY a)")[2] == (
        b"[1,2,3,4]\t['x','y','z','w']\n"
    )


def test_authentication(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", user="analyst", password="s3cret")
    try:
        base = server.base
        status, headers, _ = _post(base, "SELECT 1")  # no credentials = user default
        assert (status, _code(headers)) == (403, 516)
        assert _post(base, "SELECT 1", user="analyst", password="wrong")[0] == 403
        assert _post(base, "SELECT 1", user="analyst", password="s3cret")[2] == b"1\n"
        assert _post(base, "SELECT 1", headers={"X-ClickHouse-User": "analyst", "X-ClickHouse-Key": "s3cret"})[2] == b"1\n"
        assert connect(server.url, None).command("SELECT 2") == 2  # Basic auth from the URL
        assert "s3cret" not in server.log()
    finally:
        server.stop()


def test_concurrent_readers_and_writers(clickhouse_server: RunningServer, database: str) -> None:
    """Writers, readers and a slow query at once: nothing waits for the slow query, nothing is lost."""
    base = clickhouse_server.base
    _post(base, f"CREATE TABLE {database}.w (writer UInt8, n UInt32) ENGINE = MergeTree ORDER BY (writer, n)")
    slow = threading.Thread(target=_post, args=(base, _SLOW.format(tag="concurrent")))
    slow.start()
    _wait(lambda: _running(base, "concurrent"))

    def write(writer: int) -> None:
        client = connect(clickhouse_server.url, database)
        for batch in range(20):
            client.insert("w", [[writer, batch * 100 + i] for i in range(100)], column_names=["writer", "n"])

    def read() -> list[int]:
        client = connect(clickhouse_server.url, database)
        return [int(client.command("SELECT count() FROM w")) for _ in range(20)]

    with ThreadPoolExecutor(8) as pool:
        writers = [pool.submit(write, w) for w in range(4)]
        readers = [pool.submit(read) for _ in range(4)]
        for future in writers:
            future.result()
        counts = [future.result() for future in readers]
    # Still running after all of them: they ran alongside it, none waited for it.
    assert _running(base, "concurrent"), "the slow query ended first: this run proves nothing"
    _kill(base, "concurrent")
    slow.join()
    assert _post(base, f"SELECT count(), uniqExact(writer, n) FROM {database}.w")[2] == b"8000\t8000\n"
    for seen in counts:
        assert seen == sorted(seen)  # readers see a growing table, never a torn one


def test_sigterm_lets_the_request_in_flight_finish(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    result: dict[str, Any] = {}
    query = "SELECT sleepEachRow(0.5), number FROM numbers(6) SETTINGS max_block_size = 1"
    running = threading.Thread(target=lambda: result.update(reply=_post(server.base, query, wait_end_of_query="1")))
    running.start()
    try:
        _wait(lambda: _post(server.base, "SELECT count() FROM system.processes WHERE query LIKE '%sleepEachRow(0.5), number%' "
                                         "AND query NOT LIKE '%system.processes%'")[2] == b"1\n")  # fmt: skip
        assert server.stop() == 0
    finally:
        running.join()
    status, _, body = result["reply"]
    assert status == 200 and body == b"".join(b"0\t%d\n" % i for i in range(6))
    assert '"stopped"' in server.log()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{server.base}/ping", timeout=2)


# A query that runs until killed (30 s at most): the tag finds it in system.processes.
_SLOW = "SELECT sleepEachRow(0.5), '{tag}' FROM numbers(60) SETTINGS max_block_size = 1"


def _running(base: str, tag: str) -> bool:
    sql = f"SELECT count() FROM system.processes WHERE query LIKE '%sleepEachRow%{tag}%' AND query NOT LIKE '%processes%'"
    return _post(base, sql)[2] == b"1\n"


def _kill(base: str, tag: str) -> None:
    _post(base, f"KILL QUERY WHERE query LIKE '%sleepEachRow%{tag}%' AND query NOT LIKE '%KILL%' SYNC")


def _wait(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def _arrow(rows: list[Any]) -> Any:
    """LogRows as an Arrow table: the Arrow input path (the sink itself inserts Native)."""
    import pyarrow as pa

    from stream_engine.sinks.clickhouse.rows import LOG_COLUMNS

    ms = pa.timestamp("ms", tz="UTC")
    types = (pa.string(), pa.string(), pa.string(), pa.string(), pa.string(), ms, ms, pa.string(), pa.string(),
             pa.float32(), pa.string(), pa.float32(), pa.uint32(), pa.uint16(), pa.uint64(), pa.string(),
             pa.string(), pa.string(), pa.string(), pa.string(), pa.string(), pa.string())  # fmt: skip
    cols = list(zip(*rows, strict=True))
    return pa.table([pa.array(c, t) for c, t in zip(cols, types, strict=True)], names=list(LOG_COLUMNS))
