"""ClickHouse fixtures of the integration tests: ONE embedded engine path per test process, one
database per test.

chDB allows a single data directory per process, so every test that needs ClickHouse in this
process must use ``chdb_session_url()``; isolation comes from a unique database name. Rows to
write come from ``tests/integration/clickhouse_data.py``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.clickhouse_data import unique_database

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
    from harness.clickhouse import start_server

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
