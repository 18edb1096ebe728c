"""Fixtures for the reliability drills, and the session-end accounting table.

Every drill runs once per stream engine (``drill_settings`` is parametrised over
``stream_engine.engines.ENGINES``: the default aiokafka and faust). Every drill gets unique topics
and consumer group (``topics``), its own data dir, Redis namespace and proposition-service port;
drills that break a service start a private one, never the shared stack's Kafka or Redis.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from harness.drills import RESULTS_ENV, format_table, load_rows
from stream_engine.engines import ENGINES
from stream_engine.settings import Settings

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


@pytest.fixture(params=ENGINES)
def drill_settings(worker_settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """``worker_settings`` (tests/conftest.py; ``propositions`` starts its service) on one engine."""
    return worker_settings.with_overrides(engine=request.param)
