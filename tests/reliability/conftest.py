"""Fixtures for the reliability drills, and the session-end accounting table.

Every drill runs once per stream engine (``drill_settings`` is parametrised over
``stream_engine.engines.ENGINES``: the default aiokafka and faust). Every drill gets unique topics
and consumer group (``topics``), its own data dir, Redis namespace and proposition-service port;
drills that break a service start a private one, never the shared stack's Kafka or Redis.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.drills import RESULTS_ENV
from stream_engine.engines import ENGINES
from stream_engine.settings import Settings


@pytest.fixture(scope="session", autouse=True)
def drill_results() -> Path:
    """Where each drill writes its row (set by tests/conftest.py's pytest_configure, shared by every
    test process); printed as one table when the session ends."""
    return Path(os.environ[RESULTS_ENV])


@pytest.fixture(params=ENGINES)
def drill_settings(worker_settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """``worker_settings`` (tests/conftest.py; ``propositions`` starts its service) on one engine."""
    return worker_settings.with_overrides(engine=request.param)
