"""Fixtures for the reliability drills, and the session-end accounting table.

Every drill runs once per stream engine (``drill_settings`` is parametrised over
``stream_engine.engines.ENGINES``: the default aiokafka and faust). Every drill gets unique topics
and consumer group (``topics``), its own data dir, Redis namespace and proposition-service port;
drills that break a service start a private one, never the shared stack's Kafka or Redis.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from harness.drills import RESULTS_ENV
from stream_engine.engines import ENGINES
from stream_engine.settings import Settings

# make_topics(partitions=…, configs={"topic_decisions": {"max.message.bytes": "2048"}}) -> Settings
MakeTopics = Callable[..., Settings]


@pytest.fixture(scope="session", autouse=True)
def drill_results() -> Path:
    """Where each drill writes its row (set by tests/conftest.py's pytest_configure, shared by every
    test process); printed as one table when the session ends."""
    return Path(os.environ[RESULTS_ENV])


@pytest.fixture(params=ENGINES)
def drill_settings(worker_settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """``worker_settings`` (tests/conftest.py; ``propositions`` starts its service) on one engine."""
    return worker_settings.with_overrides(engine=request.param)


@pytest.fixture
def make_topics(drill_settings: Settings, unique: Callable[[str], str]) -> Iterator[MakeTopics]:
    """Fresh topics shaped for one drill (fewer partitions, a small ``max.message.bytes`` …):
    ``drill_settings`` with the new names. Deleted after the test."""
    from harness.kafka import create_topics
    from stream_engine.kafka import TOPIC_SETTINGS, delete_topics, prefixed_settings
    from stream_engine.stack.sync import run_coroutine

    made: list[Settings] = []

    def make(*, partitions: int | None = None, configs: Mapping[str, Mapping[str, str]] | None = None) -> Settings:
        settings = prefixed_settings(drill_settings, unique("drill") + ".")
        run_coroutine(lambda: create_topics(settings, partitions=partitions, configs=configs), timeout_s=60)
        made.append(settings)
        return settings

    yield make
    for settings in made:
        try:
            run_coroutine(lambda: delete_topics(settings, [getattr(settings, n) for n in TOPIC_SETTINGS]), timeout_s=30)
        except Exception:  # cleanup only
            pass


@pytest.fixture
def one_partition_settings(make_topics: MakeTopics) -> Settings:
    """``drill_settings`` on one-partition topics: every batch of the stream is in one order."""
    return make_topics(partitions=1)

