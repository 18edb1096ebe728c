"""Fixtures for the reliability drills, and the session-end accounting table.

Every drill gets unique topics and consumer group (``topics``), its own data dir, Redis namespace
and proposition-service port; drills that break a service start a private one, never the dev
Kafka at 127.0.0.1:19092 or the dev Redis.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stream_engine.settings import Settings
from tests.support.drills import RESULTS_ENV, format_table, load_rows
from tests.support.procs import Proc, free_port, start_propositions

_results: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def drill_results() -> Path:
    """Where each drill writes its row; printed as one table when the session ends."""
    if not os.environ.get(RESULTS_ENV):
        os.environ[RESULTS_ENV] = tempfile.mkdtemp(prefix="stream-engine-drills-")
    path = Path(os.environ[RESULTS_ENV])
    _results.append(path)
    return path


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    rows = load_rows(_results[0]) if _results else []
    if rows:
        terminalreporter.section("reliability drills")
        terminalreporter.write_line(format_table(rows))
        terminalreporter.write_line(f"(rows in {_results[0]})")


@pytest.fixture
def drill_settings(topics: Settings, tmp_path: Path, unique: Callable[[str], str]) -> Settings:
    return topics.with_overrides(
        app_id=unique("group"),
        data_dir=tmp_path / "data",
        redis_namespace=unique("se"),
        propositions_url=f"http://127.0.0.1:{free_port()}",
        batch_within_s=0.01,
        api_port=0,  # every worker its own ephemeral API port (logged as "api listening on …")
    )


@pytest.fixture
def propositions(drill_settings: Settings, tmp_path: Path) -> Iterator[Proc]:
    proc = start_propositions(drill_settings, tmp_path)
    yield proc
    proc.stop()
