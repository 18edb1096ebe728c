"""`topics apply` against the real broker: creates, is idempotent, reports drift, destroys nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream_engine.cli import main
from stream_engine.kafka import TOPIC_SETTINGS, apply_topics, delete_topics, load_topic_definitions, prefixed_settings
from stream_engine.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def scoped(stack: Settings, unique: Callable[[str], str]) -> Iterator[Settings]:
    """Unique topic names, not created yet; deleted afterwards."""
    s = prefixed_settings(stack, unique("apply") + ".")
    yield s
    from stream_engine.stack.sync import run_coroutine

    run_coroutine(lambda: delete_topics(s, [getattr(s, n) for n in TOPIC_SETTINGS]))


async def describe(settings: Settings, names: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names) if t["error_code"] == 0}
    finally:
        await admin.close()


async def test_apply_creates_then_changes_nothing(scoped: Settings) -> None:
    definitions = load_topic_definitions(scoped)
    names = sorted(d.name for d in definitions)

    first = await apply_topics(scoped)
    assert sorted(first.created) == names and first.in_sync
    assert await describe(scoped, names) == {d.name: d.partitions for d in definitions}

    second = await apply_topics(scoped)
    assert second.created == [] and not second.changed
    assert sorted(second.unchanged) == names
    assert second.lines()[-1] == "no changes"


async def test_check_mode_creates_nothing(scoped: Settings) -> None:
    report = await apply_topics(scoped, create=False)
    assert sorted(report.missing) == sorted(getattr(scoped, n) for n in TOPIC_SETTINGS)
    assert not report.in_sync
    assert await describe(scoped, report.missing) == {}


async def test_drift_is_reported_and_left_alone(scoped: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=scoped.kafka_bootstrap)
    await admin.start()
    try:  # someone made `alerts` by hand: 2 partitions, 1 h retention
        await admin.create_topics([NewTopic(scoped.topic_alerts, 2, 1, topic_configs={"retention.ms": "3600000"})])
    finally:
        await admin.close()

    report = await apply_topics(scoped)
    drift = {(d.topic, d.setting): (d.expected, d.actual) for d in report.drift}
    assert drift == {
        (scoped.topic_alerts, "partitions"): ("6", "2"),
        (scoped.topic_alerts, "retention.ms"): ("604800000", "3600000"),
    }
    assert scoped.topic_alerts not in report.created and len(report.created) == len(TOPIC_SETTINGS) - 1
    assert (await describe(scoped, [scoped.topic_alerts]))[scoped.topic_alerts] == 2  # untouched


def test_cli_apply_twice_says_no_changes(stack: Settings, unique: Callable[[str], str], capsys: pytest.CaptureFixture[str]) -> None:
    prefix = unique("cli") + "."
    flags = ["--kafka-bootstrap", stack.kafka_bootstrap, "topics", "apply", "--prefix", prefix]
    try:
        assert main(flags) == 0
        assert capsys.readouterr().out.count("created") == len(TOPIC_SETTINGS)
        assert main(flags) == 0
        out = capsys.readouterr().out
        assert "created" not in out and out.strip().endswith("no changes")
        assert main([*flags, "--check"]) == 0
    finally:
        from stream_engine.stack.sync import run_coroutine

        s = prefixed_settings(stack, prefix)
        run_coroutine(lambda: delete_topics(s, [getattr(s, n) for n in TOPIC_SETTINGS]))


def test_cli_check_fails_when_topics_are_missing(stack: Settings, unique: Callable[[str], str], capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--kafka-bootstrap", stack.kafka_bootstrap, "topics", "apply", "--prefix", unique("none") + ".", "--check"]
    assert main(flags) == 1
    assert capsys.readouterr().out.count("missing") == len(TOPIC_SETTINGS)


def test_cli_names_an_unreachable_broker(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--kafka-bootstrap", "127.0.0.1:1", "topics", "apply"]) == 1
    assert "Kafka at 127.0.0.1:1" in capsys.readouterr().out
