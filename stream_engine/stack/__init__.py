"""The local stack (`stream-engine stack up|down|status`): Kafka, Redis, ClickHouse, the proposition service.

    from stream_engine.stack import Stack
    report = Stack(settings).up()         # StackReport; raises StackUpError if a part fails
    Stack(settings).status()              # list[PartStatus]
    Stack(settings).down()                # stops only what `up` started
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stream_engine.stack.clickhouse import clickhouse_answers
    from stream_engine.stack.component import Component, StackError, StackLayout
    from stream_engine.stack.core import COMPONENT_TYPES, PartResult, PartStatus, Stack, StackReport, StackUpError
    from stream_engine.stack.kafka import ensure_kafka_libs, kafka_answers, libs_dir
    from stream_engine.stack.redis import redis_answers

# Lazy, so that `stream-engine <anything>` (whose parser registers `stack`) loads no stack code.
_HOMES = {
    "clickhouse_answers": "clickhouse", "Component": "component", "StackError": "component", "StackLayout": "component",
    "COMPONENT_TYPES": "core", "PartResult": "core", "PartStatus": "core", "Stack": "core", "StackReport": "core",
    "StackUpError": "core", "ensure_kafka_libs": "kafka", "kafka_answers": "kafka", "libs_dir": "kafka",
    "redis_answers": "redis",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(f"stream_engine.stack.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "COMPONENT_TYPES",
    "Component",
    "PartResult",
    "PartStatus",
    "Stack",
    "StackError",
    "StackLayout",
    "StackReport",
    "StackUpError",
    "clickhouse_answers",
    "ensure_kafka_libs",
    "kafka_answers",
    "libs_dir",
    "redis_answers",
]
