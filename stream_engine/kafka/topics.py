"""Topic definitions (one YAML file per topic in `settings.topics_dir`) and applying them.

`apply_topics` only ever creates: a topic that exists with other partitions or configs is
reported as drift and left alone (adding partitions would move keys between partitions, and
config changes deserve a human).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from stream_engine.settings import Settings

# The Settings fields that name a topic; definitions refer to their topic through one of them.
TOPIC_SETTINGS: tuple[str, ...] = ("topic_alerts", "topic_decisions", "topic_dlq", "topic_updates", "topic_outcomes")
_DEFINITION_KEYS = {"name_setting", "partitions", "replication_factor", "value_schema", "config"}
TOPIC_ALREADY_EXISTS = 36


class TopicDefinitionError(ValueError):
    """A topics/*.yaml file is not a valid definition."""


@dataclass(frozen=True, slots=True)
class TopicDefinition:
    name: str  # resolved from settings
    name_setting: str
    partitions: int
    replication_factor: int
    value_schema: str  # file name in topics_dir/schemas
    config: dict[str, str]
    source: Path


def _parse_definition(path: Path, settings: Settings) -> TopicDefinition:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise TopicDefinitionError(f"{path}: not YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise TopicDefinitionError(f"{path}: expected a mapping")
    unknown = set(raw) - _DEFINITION_KEYS
    missing = {"name_setting", "partitions", "replication_factor", "value_schema"} - set(raw)
    if unknown or missing:
        raise TopicDefinitionError(f"{path}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    if raw["name_setting"] not in TOPIC_SETTINGS:
        raise TopicDefinitionError(f"{path}: name_setting must be one of {TOPIC_SETTINGS}")
    for key in ("partitions", "replication_factor"):
        if not isinstance(raw[key], int) or isinstance(raw[key], bool) or raw[key] < 1:
            raise TopicDefinitionError(f"{path}: {key} must be a positive integer")
    config = raw.get("config") or {}
    if not isinstance(config, dict):
        raise TopicDefinitionError(f"{path}: config must be a mapping")
    schema = settings.topics_dir / "schemas" / str(raw["value_schema"])
    if not schema.is_file():
        raise TopicDefinitionError(f"{path}: value_schema {schema} does not exist")
    return TopicDefinition(
        name=getattr(settings, raw["name_setting"]),
        name_setting=raw["name_setting"],
        partitions=raw["partitions"],
        replication_factor=raw["replication_factor"],
        value_schema=str(raw["value_schema"]),
        # Kafka configs are strings on the wire; YAML may have given ints/bools.
        config={str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in config.items()},
        source=path,
    )


def load_topic_definitions(settings: Settings) -> list[TopicDefinition]:
    """Every topics_dir/*.yaml, with names resolved from settings; each topic setting exactly once."""
    definitions = [_parse_definition(p, settings) for p in sorted(settings.topics_dir.glob("*.yaml"))]
    seen = [d.name_setting for d in definitions]
    duplicated = sorted({s for s in seen if seen.count(s) > 1})
    absent = sorted(set(TOPIC_SETTINGS) - set(seen))
    if duplicated or absent:
        raise TopicDefinitionError(
            f"{settings.topics_dir}: topic settings defined twice {duplicated}, not defined {absent}"
        )
    return definitions


def prefixed_settings(settings: Settings, prefix: str) -> Settings:
    """`settings` with every topic name prefixed, e.g. unique names for a test."""
    return settings.with_overrides(**{name: prefix + getattr(settings, name) for name in TOPIC_SETTINGS})


@dataclass(frozen=True, slots=True)
class TopicDrift:
    topic: str
    setting: str  # "partitions", "replication_factor" or a config name
    expected: str
    actual: str

    def line(self) -> str:
        return f"drift   {self.topic}: {self.setting} is {self.actual}, definition says {self.expected} (left as is)"


@dataclass(slots=True)
class TopicReport:
    created: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)  # exists and matches its definition
    missing: list[str] = field(default_factory=list)  # absent and not created (create=False)
    drift: list[TopicDrift] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created)

    @property
    def in_sync(self) -> bool:
        return not self.missing and not self.drift

    def lines(self) -> list[str]:
        out = [f"created {t}" for t in self.created]
        out += [f"ok      {t}" for t in self.unchanged]
        out += [f"missing {t}" for t in self.missing]
        out += [d.line() for d in self.drift]
        if not self.changed:
            out.append("no changes")
        return out


async def apply_topics(settings: Settings, *, create: bool = True) -> TopicReport:
    """Create the topics of `settings` that do not exist (unless `create=False`); report drift.

    Idempotent: a second run creates nothing and reports every topic as unchanged.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    definitions = load_topic_definitions(settings)
    report = TopicReport()
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        absent = [d for d in definitions if d.name not in existing]
        present = [d for d in definitions if d.name in existing]
        if absent and create:
            response = await admin.create_topics(
                [NewTopic(d.name, d.partitions, d.replication_factor, topic_configs=d.config) for d in absent]
            )
            for topic, error_code, error_message in response.topic_errors:
                if error_code == TOPIC_ALREADY_EXISTS:  # created concurrently by someone else
                    present += [d for d in absent if d.name == topic]
                elif error_code != 0:
                    raise RuntimeError(f"creating topic {topic} failed: error {error_code} {error_message}")
                else:
                    report.created.append(topic)
            await _wait_for_leaders(admin, report.created)
        elif absent:
            report.missing = [d.name for d in absent]
        if present:
            await _compare(admin, present, report)
    finally:
        await admin.close()
    return report


async def _compare(admin: object, definitions: list[TopicDefinition], report: TopicReport) -> None:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    described = {t["topic"]: t for t in await admin.describe_topics([d.name for d in definitions])}  # type: ignore[attr-defined]
    responses = await admin.describe_configs(  # type: ignore[attr-defined]
        [ConfigResource(ConfigResourceType.TOPIC, d.name) for d in definitions]
    )
    configs: dict[str, dict[str, str]] = {}
    for response in responses:
        for _error, _message, _type, name, entries in response.resources:
            configs[name] = {entry[0]: entry[1] for entry in entries}
    for d in definitions:
        partitions = described.get(d.name, {}).get("partitions", [])
        drift: list[TopicDrift] = []
        if len(partitions) != d.partitions:
            drift.append(TopicDrift(d.name, "partitions", str(d.partitions), str(len(partitions))))
        replication = max((len(p["replicas"]) for p in partitions), default=0)
        if replication != d.replication_factor:
            drift.append(TopicDrift(d.name, "replication_factor", str(d.replication_factor), str(replication)))
        actual = configs.get(d.name, {})
        for key, value in d.config.items():
            if actual.get(key) != value:
                drift.append(TopicDrift(d.name, key, value, str(actual.get(key))))
        if drift:
            report.drift += drift
        else:
            report.unchanged.append(d.name)


async def _wait_for_leaders(admin: object, topics: list[str], timeout_s: float = 10.0) -> None:
    """Return once every partition of `topics` has a leader, so producers can use them at once."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while topics and asyncio.get_running_loop().time() < deadline:
        described = await admin.describe_topics(topics)  # type: ignore[attr-defined]
        if all(t["error_code"] == 0 and t["partitions"] and all(p["leader"] >= 0 for p in t["partitions"])
               for t in described):  # fmt: skip
            return
        await asyncio.sleep(0.1)


async def delete_topics(settings: Settings, names: list[str]) -> None:
    """Delete `names` where they exist (test cleanup); never touches other topics."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [n for n in names if n in existing]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()
