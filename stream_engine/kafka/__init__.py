"""Kafka administration: topic definitions (topics/*.yaml) and `stream-engine topics apply`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    # Lazy: a worker imports this package for its engine and partitioner, never for topic
    # administration (PyYAML and the admin client: 1 MB of its RSS).
    if name in __all__:
        from stream_engine.kafka import topics

        return getattr(topics, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
