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
