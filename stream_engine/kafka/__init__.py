"""Kafka administration: topic definitions (topics/*.yaml) and `stream-engine topics apply`."""

from __future__ import annotations

from stream_engine.kafka.topics import (
    TOPIC_SETTINGS,
    TopicDefinition,
    TopicDefinitionError,
    TopicDrift,
    TopicReport,
    apply_topics,
    delete_topics,
    load_topic_definitions,
    prefixed_settings,
)

__all__ = [
    "TOPIC_SETTINGS",
    "TopicDefinition",
    "TopicDefinitionError",
    "TopicDrift",
    "TopicReport",
    "apply_topics",
    "delete_topics",
    "load_topic_definitions",
    "prefixed_settings",
]
