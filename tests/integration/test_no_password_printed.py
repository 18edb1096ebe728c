"""No command and no error detail shows a password (issue 14, item 5).

The ClickHouse URL carries its password (``http://user:PASSWORD@host:8123``): ``clickhouse
migrate`` used to print it. Every command that prints a URL or settings runs here with a URL
whose password is unique, against the stack's ClickHouse endpoint (`clickhouse serve`) with that
login, and the sink's last error (shown by ``/api/v1/stats`` and logged) is checked with a client
error that quotes the URL.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stream_engine.settings import Settings
from stream_engine.sinks.clickhouse.sink import ClickHouseSink
from tests.integration.clickhouse_data import make_metrics, make_rows, unique_database

pytestmark = pytest.mark.integration

PASSWORD = "pw-never-printed-7c1e"


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream_engine", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Any]:
    from harness.clickhouse import start_server

    running = start_server(tmp_path / "clickhouse", user="analyst", password=PASSWORD)
    yield running
    running.stop()


def test_commands_that_print_a_url_or_settings_mask_the_password(server: Any, tmp_path: Path) -> None:
    host = f"{server.host}:{server.port}"
    env = {
        "STREAM_ENGINE_CLICKHOUSE_URL": f"http://analyst:{PASSWORD}@{host}",
        "STREAM_ENGINE_CLICKHOUSE_DATABASE": unique_database("pw"),
        "STREAM_ENGINE_REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:1/0",
        "STREAM_ENGINE_API_TOKEN": PASSWORD,
        "STREAM_ENGINE_ADMIN_TOKEN": PASSWORD,
        "STREAM_ENGINE_STACK_DIR": str(tmp_path / "stack"),
        "STREAM_ENGINE_DATA_DIR": str(tmp_path / "data"),
    }
    migrate = run("clickhouse", "migrate", env=env)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    assert f"http://analyst:***@{host}" in migrate.stdout  # it still says where
    outputs = [migrate]
    for command in (
        ("clickhouse", "migrate"),  # again: "up to date on …"
        ("clickhouse", "info"),
        ("query", "latency", "--json"),
        ("sql", "SELECT 1"),
        ("sql", "SELECT * FROM no_such_table"),  # the server's error text
        ("--api-port", "not-a-port", "worker"),  # a settings error must not echo the other values
        ("--api-host", "0.0.0.0", "--api-token", "", "worker"),  # the refusal names no value
        ("stack", "status", "--only", "redis"),
    ):
        outputs.append(run(*command, env=env))
    # An unreachable server: the error a user sees must not carry the password either.
    unreachable = {**env, "STREAM_ENGINE_CLICKHOUSE_URL": f"http://analyst:{PASSWORD}@127.0.0.1:1"}
    outputs.append(run("clickhouse", "migrate", env=unreachable))
    assert outputs[-1].returncode != 0
    outputs.append(run("sql", "SELECT 1", env=unreachable))
    assert outputs[-1].returncode == 1 and "analyst:***@127.0.0.1:1" in outputs[-1].stderr
    assert PASSWORD not in server.log()  # nor the endpoint's request log
    for result in outputs:
        assert PASSWORD not in result.stdout + result.stderr, (result.args, result.stdout, result.stderr[-2000:])


class _QuotesItsUrl(Exception):
    pass


async def test_the_sinks_last_error_never_carries_a_password(tmp_path: Path) -> None:
    def down() -> Any:  # a client error that quotes the URL it was given, password included
        raise _QuotesItsUrl(f"cannot reach http://stream:{PASSWORD}@clickhouse:8123 ({{'password': '{PASSWORD}'}})")

    settings = Settings(data_dir=tmp_path, redact_fields=["password"])
    sink = ClickHouseSink.from_settings(settings)
    sink._client_factory = down  # the one seam: what the driver raises  # noqa: SLF001
    sink.retry_initial_s = sink.retry_max_s = 0.01
    sink.stop_timeout_s = 0.3
    sink.flush_interval_s = 0.02
    await sink.start()
    await sink.write(make_rows(3), make_metrics(1))
    deadline = time.monotonic() + 20
    while sink.stats()["failures"] == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await sink.stop()
    error = sink.stats()["last_error"]
    assert "_QuotesItsUrl" in error and "stream:***@clickhouse" in error, error
    assert PASSWORD not in error
