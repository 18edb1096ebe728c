"""`stream-engine sql`: one statement, the server's bytes on stdout, read-only unless --write."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from harness.clickhouse import RunningServer
from stream_engine.sinks.clickhouse.sql import SqlError, execute
from tests.integration.clickhouse_data import unique_database

pytestmark = pytest.mark.integration


@pytest.fixture
def database(clickhouse_server: RunningServer) -> Iterator[str]:
    name = unique_database("sql")
    out = io.BytesIO()
    execute(clickhouse_server.url, f"CREATE DATABASE {name}", database="default", write=True, out=out)
    execute(clickhouse_server.url, "CREATE TABLE t (k String, n UInt32) ENGINE = MergeTree ORDER BY k",
            database=name, write=True, out=out)  # fmt: skip
    execute(clickhouse_server.url, "INSERT INTO t VALUES ('a', 1), ('b', 2)", database=name, write=True, out=out)
    yield name
    execute(clickhouse_server.url, f"DROP DATABASE {name}", database="default", write=True, out=out)


def cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "stream_engine", *args], input=stdin.encode() if stdin is not None else None,
        capture_output=True, timeout=120, env={**os.environ, **(env or {})}, check=False,
    )  # fmt: skip


def test_prints_tab_separated_rows_like_clickhouse_client(clickhouse_server: RunningServer, database: str) -> None:
    flags = ["--clickhouse-url", clickhouse_server.url, "--clickhouse-database", database]
    done = cli(*flags, "sql", "SELECT k, n FROM t ORDER BY k")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"a\t1\nb\t2\n" and done.stderr == b""
    piped = cli(*flags, "sql", stdin="SELECT sum(n) FROM t")
    assert piped.stdout == b"3\n"
    bound = cli(*flags, "sql", "SELECT n FROM t WHERE k = {k:String}", "--param", "k=b' OR 1=1 --")
    assert bound.stdout == b""  # bound, not spliced: no row has that key
    assert cli(*flags, "sql", "SELECT n FROM t WHERE k = {k:String}", "--param", "k=b").stdout == b"2\n"


def test_any_output_format(clickhouse_server: RunningServer, database: str) -> None:
    out = io.BytesIO()
    execute(clickhouse_server.url, "SELECT k, n FROM t ORDER BY k", database=database, fmt="JSONEachRow", out=out)
    assert [orjson.loads(line) for line in out.getvalue().splitlines()] == [{"k": "a", "n": 1}, {"k": "b", "n": 2}]
    out = io.BytesIO()
    execute(clickhouse_server.url, "SELECT k, n FROM t ORDER BY k", database=database, fmt="CSVWithNames", out=out)
    assert out.getvalue() == b'"k","n"\n"a",1\n"b",2\n'


def test_read_only_unless_write(clickhouse_server: RunningServer, database: str) -> None:
    out = io.BytesIO()
    with pytest.raises(SqlError, match=r"Code: 164\..*\n.*pass --write"):
        execute(clickhouse_server.url, "INSERT INTO t VALUES ('c', 3)", database=database, out=out)
    with pytest.raises(SqlError, match=r"Code: 164\."):
        execute(clickhouse_server.url, "DROP TABLE t", database=database, out=out)
    execute(clickhouse_server.url, "SELECT count() FROM t", database=database, out=out)
    assert out.getvalue() == b"2\n"  # nothing changed
    execute(clickhouse_server.url, "INSERT INTO t VALUES ('c', 3)", database=database, write=True, out=out)
    done = cli("--clickhouse-url", clickhouse_server.url, "--clickhouse-database", database, "sql", "DROP TABLE t")
    assert done.returncode == 1 and b"READONLY" in done.stderr and b"--write" in done.stderr


def test_errors_name_the_problem(clickhouse_server: RunningServer, database: str, tmp_path: Path) -> None:
    with pytest.raises(SqlError, match=r"Code: 60\..*UNKNOWN_TABLE"):
        execute(clickhouse_server.url, "SELECT * FROM nope", database=database, out=io.BytesIO())
    with pytest.raises(SqlError, match="does not answer.*stack up"):
        execute("http://127.0.0.1:9", "SELECT 1", database=database, out=io.BytesIO())
    with pytest.raises(SqlError, match="no query"):
        execute(clickhouse_server.url, "  ", database=database, out=io.BytesIO())


def test_an_embedded_directory_when_no_worker_holds_it(tmp_path: Path) -> None:
    url = f"chdb://{tmp_path / 'chdb'}"
    created = cli("--clickhouse-url", url, "--clickhouse-database", "default", "sql", "--write",
                  "CREATE TABLE t ENGINE = MergeTree ORDER BY n AS SELECT number AS n FROM numbers(5)")  # fmt: skip
    assert created.returncode == 0, created.stderr
    done = cli("--clickhouse-url", url, "--clickhouse-database", "default", "sql", "SELECT sum(n) FROM t")
    assert done.returncode == 0 and done.stdout == b"10\n", done.stderr
    refused = cli("--clickhouse-url", url, "--clickhouse-database", "default", "sql", "DROP TABLE t")
    assert refused.returncode == 1 and b"READONLY" in refused.stderr
