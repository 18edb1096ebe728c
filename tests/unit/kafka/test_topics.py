"""topics/*.yaml definitions and the value schemas they name."""

from __future__ import annotations

import json
from pathlib import Path

import fastjsonschema
import orjson
import pytest

from stream_engine.kafka import TOPIC_SETTINGS, TopicDefinitionError, load_topic_definitions, prefixed_settings
from stream_engine.models import DeadLetter, Decision, Proposition
from stream_engine.settings import PROJECT_ROOT, Settings

TOPICS_DIR = PROJECT_ROOT / "topics"
DAY_MS = 86_400_000


def validator(schema_file: str):  # type: ignore[no-untyped-def]
    return fastjsonschema.compile(json.loads((TOPICS_DIR / "schemas" / schema_file).read_text()))


def by_setting(settings: Settings) -> dict[str, object]:
    return {d.name_setting: d for d in load_topic_definitions(settings)}


def test_every_topic_setting_has_one_definition_named_from_settings() -> None:
    s = Settings(topic_alerts="a1", topic_decisions="d1", topic_dlq="q1", topic_updates="u1", topic_outcomes="o1")
    definitions = load_topic_definitions(s)
    assert sorted(d.name_setting for d in definitions) == sorted(TOPIC_SETTINGS)
    assert sorted(d.name for d in definitions) == ["a1", "d1", "o1", "q1", "u1"]
    assert all(d.replication_factor == 1 for d in definitions)


def test_partitions_and_retention_follow_the_design() -> None:
    d = by_setting(Settings())
    alerts, decisions, dlq, updates, outcomes = (d[n] for n in TOPIC_SETTINGS)
    assert (alerts.partitions, alerts.config["retention.ms"]) == (6, str(7 * DAY_MS))  # type: ignore[attr-defined]
    assert (decisions.partitions, decisions.config["retention.ms"]) == (6, str(7 * DAY_MS))  # type: ignore[attr-defined]
    assert 1 <= dlq.partitions <= 3 and dlq.config["retention.ms"] == str(30 * DAY_MS)  # type: ignore[attr-defined]
    # Every worker reads all of proposition-updates: one partition, short-lived events.
    assert updates.partitions == 1 and updates.config["cleanup.policy"] == "delete"  # type: ignore[attr-defined]
    assert int(updates.config["retention.ms"]) > Settings().lru_ttl_s * 1000  # type: ignore[attr-defined]
    # Verdicts older than the outcome window find no decision record: keeping them longer is useless.
    assert outcomes.config["retention.ms"] == str(Settings().outcome_window_s * 1000)  # type: ignore[attr-defined]
    # A 1 MiB alert base64-encoded still fits in the DLQ.
    assert int(dlq.config["max.message.bytes"]) >= 4 * 1_048_576 // 3 + 1024  # type: ignore[attr-defined]


def test_every_value_schema_compiles() -> None:
    for definition in load_topic_definitions(Settings()):
        validator(definition.value_schema)


def test_decision_json_matches_its_schema() -> None:
    validate = validator("decision.schema.json")
    decision = Decision(
        alert_id="a1", alert_type="ci_failure", key="ci_failure|r|j|E", mode="auto", action="retry",
        confidence=0.91, propositions=[Proposition("retry", 0.91, "flaky"), Proposition("page", 0.2)],
        cache_tier="redis", latency_ms=3.2, decided_at=1_700_000_000.5,
    )  # fmt: skip
    validate(orjson.loads(decision.to_json()))
    escalated = Decision("a2", "scam", "k", "escalate", None, None, [], "none", 1.0, 1.0, reason="service down")
    validate(orjson.loads(escalated.to_json()))
    bad = orjson.loads(decision.to_json()) | {"mode": "maybe"}
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        validate(bad)


def test_dead_letter_json_matches_its_schema() -> None:
    validate = validator("dead_letter.schema.json")
    letter = DeadLetter("invalid_json", "Expecting value", "alerts", 3, 42, b"\xff{not json", 1_700_000_000.0)
    document = orjson.loads(letter.to_json())
    validate(document)
    del document["original_b64"]
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        validate(document)


def test_invalidations_match_the_update_schema() -> None:
    from stream_engine.propositions.updates import Invalidation

    validate = validator("proposition_update.schema.json")
    for invalidation in (
        Invalidation(scope="key", version="v2", key="ci_failure|r|j|E"),
        Invalidation(scope="type", version="v2", alert_type="scam"),
        Invalidation(scope="all", version="v2"),
    ):
        validate(orjson.loads(invalidation.to_json()))
    for bad in (
        {"scope": "key", "version": "v2", "published_at": 1.0},  # no key
        {"scope": "type", "version": "v2", "alert_type": None, "published_at": 1.0},
        {"scope": "some", "version": "v2", "published_at": 1.0},
        {"scope": "all", "version": "v2"},  # no published_at
    ):
        with pytest.raises(fastjsonschema.JsonSchemaValueException):
            validate(bad)


def test_prefixed_settings_prefix_every_topic_and_nothing_else() -> None:
    s = prefixed_settings(Settings(), "t-1.")
    assert [getattr(s, n) for n in TOPIC_SETTINGS] == [
        "t-1.alerts", "t-1.decisions", "t-1.alerts.dlq", "t-1.proposition-updates", "t-1.outcomes",
    ]  # fmt: skip
    assert s.app_id == Settings().app_id


def write_topics_dir(tmp_path: Path, files: dict[str, str]) -> Settings:
    (tmp_path / "schemas").mkdir(parents=True, exist_ok=True)
    (tmp_path / "schemas" / "x.json").write_text("{}")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return Settings(topics_dir=tmp_path)


VALID = "name_setting: {s}\npartitions: 1\nreplication_factor: 1\nvalue_schema: x.json\n"


def all_valid() -> dict[str, str]:
    return {f"{s}.yaml": VALID.format(s=s) for s in TOPIC_SETTINGS}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"topic_alerts.yaml": VALID.format(s="topic_alerts") + "colour: red\n"}, "unknown keys"),
        ({"topic_alerts.yaml": VALID.format(s="topic_alerts").replace("partitions: 1", "partitions: 0")}, "partitions"),
        ({"topic_alerts.yaml": VALID.format(s="topic_alerts").replace("x.json", "nope.json")}, "does not exist"),
        ({"topic_alerts.yaml": VALID.format(s="topic_bogus")}, "name_setting must be one of"),
        ({"topic_alerts.yaml": "- a list\n"}, "expected a mapping"),
        ({"topic_alerts.yaml": "a: [unclosed\n"}, "not YAML"),
        ({"topic_alerts.yaml": VALID.format(s="topic_decisions")}, "defined twice"),
        ({"topic_alerts.yaml": VALID.format(s="topic_alerts") + "config: [1]\n"}, "config must be a mapping"),
    ],
)
def test_invalid_definitions_are_rejected(tmp_path: Path, change: dict[str, str], message: str) -> None:
    settings = write_topics_dir(tmp_path, all_valid() | change)
    with pytest.raises(TopicDefinitionError, match=message):
        load_topic_definitions(settings)


def test_valid_temporary_definitions_load_and_stringify_config(tmp_path: Path) -> None:
    files = all_valid()
    files["topic_alerts.yaml"] += "config:\n  retention.ms: 1000\n  unclean.leader.election.enable: false\n"
    definitions = {d.name_setting: d for d in load_topic_definitions(write_topics_dir(tmp_path, files))}
    assert definitions["topic_alerts"].config == {"retention.ms": "1000", "unclean.leader.election.enable": "false"}


def test_a_missing_definition_is_rejected(tmp_path: Path) -> None:
    files = all_valid()
    del files["topic_updates.yaml"]
    with pytest.raises(TopicDefinitionError, match=r"not defined \['topic_updates'\]"):
        load_topic_definitions(write_topics_dir(tmp_path, files))
