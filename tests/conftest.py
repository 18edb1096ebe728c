"""Shared fixtures.

* ``settings`` (session): ``Settings()`` from the environment, so ``STREAM_ENGINE_KAFKA_BOOTSTRAP``,
  ``STREAM_ENGINE_REDIS_URL`` … point the whole suite at running services.
* ``stack`` (session): makes sure Kafka, Redis and ClickHouse answer at ``settings.kafka_bootstrap``
  / ``settings.redis_url`` / ``settings.effective_clickhouse_url``. What already answers is reused
  and never stopped; the rest is started as the local stack would (``Stack(...).up()``) and only
  what it started is stopped at the end of the session. Returns the settings.
* ``redis_cluster`` (session): the URL of a 3-master Redis Cluster: ``STREAM_ENGINE_TEST_REDIS_CLUSTER_URL``
  if set, else the local stack's (``stack up --only redis-cluster``: reused if it runs, else
  started, and then stopped at the end of the session).
* ``unique`` (session): ``unique("alerts")`` -> ``"alerts-3f9c2a1b"``, a fresh name on every call.
* ``worker_settings`` (function): ``topics`` plus a unique consumer group, data dir, Redis
  namespace, ClickHouse database (dropped afterwards), proposition-service port and admin token,
  and an ephemeral API port: what a test needs to run real worker processes without meeting another
  test's state. ``propositions`` starts a reference proposition service at that port, with that
  token, for the test (``harness.procs.admin_headers(settings)`` for its admin routes).
* ``topics`` (function): a fresh set of uniquely named topics (alerts, decisions, DLQ, updates)
  created from topics/*.yaml; returns ``settings`` with ``topic_*`` and ``app_id`` (the consumer
  group) overridden to those unique names. The topics are deleted after the test.

    async def test_something(topics: Settings) -> None:
        await publish(topics.kafka_bootstrap, topics.topic_alerts, [...])
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

from stream_engine.settings import Settings

if TYPE_CHECKING:
    from harness.procs import Proc

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def unique() -> Callable[[str], str]:
    def make(prefix: str = "t") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:8]}"

    return make


def _stack_settings_for(settings: Settings) -> Settings:
    """The local stack that would serve `settings`' Kafka and Redis addresses (same ports)."""
    kafka_host, _, kafka_port = settings.kafka_bootstrap.split(",")[0].rpartition(":")
    redis = urlsplit(settings.redis_url)
    if kafka_host not in LOOPBACK or (redis.hostname or "") not in LOOPBACK:
        pytest.fail(
            f"Kafka ({settings.kafka_bootstrap}) or Redis ({settings.redis_url}) does not answer and is not on "
            "this machine, so the test stack cannot stand in for it"
        )
    return settings.with_overrides(kafka_port=int(kafka_port), redis_port=redis.port or 6379)


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[Settings]:
    from stream_engine.stack import Stack, clickhouse_answers, kafka_answers, redis_answers

    redis = urlsplit(settings.redis_url)
    missing = []
    if not (kafka_answers(settings.kafka_bootstrap) and redis_answers(redis.hostname or "127.0.0.1", redis.port or 6379)):
        missing += ["kafka", "redis"]
    if settings.effective_clickhouse_url.startswith("http") and not clickhouse_answers(settings.effective_clickhouse_url):
        missing.append("clickhouse")  # workers write to the stack's ClickHouse endpoint by default
    if not missing:
        yield settings
        return
    local = Stack(_stack_settings_for(settings) if "kafka" in missing else settings, only=missing)
    report = local.up()
    try:
        yield settings
    finally:
        local.down(only=report.started())


@pytest.fixture(scope="session")
def redis_cluster(settings: Settings) -> Iterator[str]:
    import os

    from stream_engine.stack import Stack
    from stream_engine.stack.redis_cluster import cluster_url

    url = os.environ.get("STREAM_ENGINE_TEST_REDIS_CLUSTER_URL")
    if url:
        yield url
        return
    local = Stack(settings, only=["redis-cluster"])
    report = local.up()
    try:
        yield cluster_url([settings.redis_cluster_port + i for i in range(3)])
    finally:
        local.down(only=report.started())


@pytest.fixture
def topics(stack: Settings, unique: Callable[[str], str]) -> Iterator[Settings]:
    from stream_engine.kafka import TOPIC_SETTINGS, apply_topics, delete_topics, prefixed_settings
    from stream_engine.stack.sync import run_coroutine

    scoped = prefixed_settings(stack, unique("test") + ".").with_overrides(app_id=unique("group"))
    report = run_coroutine(lambda: apply_topics(scoped))
    assert report.in_sync, report.lines()
    yield scoped
    names = [getattr(scoped, name) for name in TOPIC_SETTINGS]
    try:
        run_coroutine(lambda: delete_topics(scoped, names), timeout_s=30)
    except Exception:  # cleanup only: a stopped broker must not turn a passing test into an error
        pass


@pytest.fixture
def worker_settings(topics: Settings, tmp_path: Path, unique: Callable[[str], str]) -> Iterator[Settings]:
    from harness.procs import free_port

    scoped = topics.with_overrides(
        app_id=unique("group"),
        data_dir=tmp_path / "data",
        redis_namespace=unique("se"),
        propositions_url=f"http://127.0.0.1:{free_port()}",
        admin_token=unique("admin-token"),
        batch_within_s=0.01,
        api_port=0,  # every worker gets its own API port (logged as "api listening on …")
        clickhouse_database=unique("t").replace("-", "_"),  # on the shared ClickHouse endpoint
    )
    yield scoped
    drop_database(scoped)


def drop_database(settings: Settings) -> None:
    """Cleanup only: a test that stopped ClickHouse must not fail here."""
    from stream_engine.sinks.clickhouse.client import connect

    if not settings.effective_clickhouse_url.startswith("http"):
        return
    try:
        connect(settings.effective_clickhouse_url, None, connect_timeout_s=1.0).command(
            f"DROP DATABASE IF EXISTS {settings.clickhouse_database}"
        )
    except Exception:
        pass


@pytest.fixture
def propositions(worker_settings: Settings, tmp_path: Path) -> Iterator[Proc]:
    from harness.procs import start_propositions

    proc = start_propositions(worker_settings, tmp_path)
    yield proc
    proc.stop()
