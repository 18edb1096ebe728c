"""Shared chDB fixtures: ONE embedded engine path per test process, one database per test.

chDB allows a single data directory per process, so every test that needs ClickHouse in this
process must use ``chdb_session_url()``; isolation comes from a unique database name.
Import the fixtures into a test module with ``from tests.clickhouse_fixtures import *``.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

_SESSION_DIR: str | None = None


def chdb_session_url() -> str:
    """The process-wide chDB URL (a temp directory, removed with the OS temp dir)."""
    global _SESSION_DIR
    if _SESSION_DIR is None:
        _SESSION_DIR = tempfile.mkdtemp(prefix="se-chdb-")
    return f"chdb://{_SESSION_DIR}"


def http_clickhouse_url() -> str | None:
    """An http(s) ClickHouse named by STREAM_ENGINE_CLICKHOUSE_URL, if any."""
    url = os.environ.get("STREAM_ENGINE_CLICKHOUSE_URL", "")
    return url if url.startswith(("http://", "https://")) else None


REAL_HTTP_SKIP_REASON = (
    "HTTP ClickHouse backend NOT TESTED against a real server: "
    "set STREAM_ENGINE_CLICKHOUSE_URL=http(s)://user:pass@host:port"
)


@pytest.fixture(scope="module")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A private `stream-engine clickhouse serve` (its own directory and port) for the module."""
    from tests.support.clickhouse import start_server

    server = start_server(tmp_path_factory.mktemp("clickhouse-server") / "data")
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["real-server", "chdb-server"])
def http_clickhouse(request: pytest.FixtureRequest) -> str:
    """An http(s) ClickHouse URL: the real server if configured (else SKIPPED), and the chDB endpoint."""
    if request.param == "real-server":
        url = http_clickhouse_url()
        if url is None:
            pytest.skip(REAL_HTTP_SKIP_REASON)
        return url
    return str(request.getfixturevalue("clickhouse_server").url)


def unique_database(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def ch_url() -> str:
    return chdb_session_url()


@pytest.fixture
def ch_database(ch_url: str) -> Iterator[str]:
    """A fresh, migrated database on the session engine; dropped afterwards."""
    from stream_engine.sinks.clickhouse.client import connect
    from stream_engine.sinks.clickhouse.schema import migrate

    database = unique_database()
    admin = connect(ch_url, None)
    migrate(admin, database, ttl_days=3650)
    yield database
    admin.command(f"DROP DATABASE IF EXISTS {database}")


@pytest.fixture
def ch_client(ch_url: str, ch_database: str) -> Any:
    from stream_engine.sinks.clickhouse.client import connect

    return connect(ch_url, ch_database)


def make_rows(n: int, *, start_ms: int | None = None, prefix: str = "a", worker: str = "w1") -> list[Any]:
    """``n`` varied proposition-log rows, one millisecond apart from ``start_ms`` (default now)."""
    import time

    from stream_engine.sinks.clickhouse.rows import LogRow

    base = int(time.time() * 1000) if start_ms is None else start_ms
    types = ("ci_failure", "scam", "infra")
    tiers = ("lru", "redis", "service", "none")
    modes = ("auto", "review", "escalate")
    return [
        LogRow(
            f"{prefix}{i}", types[i % 3], f"k{i % 50}", "high", "ci", base + i, base + i + 3, modes[i % 3 if i % 7 else 2],
            None if i % 11 == 0 else "rerun", None if i % 11 == 0 else 0.5 + (i % 50) / 100, tiers[(i // 3) % 4],
            float((i * 7919) % 1000) / 7.0, 500, i % 16, i, worker,
            '[{"action":"rerun","confidence":0.9,"rationale":"x"}]', None if i % 5 else "low confidence", "0.1.0",
        )
        for i in range(n)
    ]


def make_metrics(n: int, *, start_us: int | None = None) -> list[Any]:
    import time

    from stream_engine.sinks.clickhouse.rows import MetricRow

    base = int(time.time() * 1_000_000) if start_us is None else start_us
    return [MetricRow(base + i, "decode", "scam", "w1", 10, 5.0 + i, 1.5) for i in range(n)]
