"""The local stack (`stream-engine stack up|down|status`): Kafka, Redis, ClickHouse, the proposition service.

    from stream_engine.stack import Stack
    report = Stack(settings).up()         # StackReport; raises StackUpError if a part fails
    Stack(settings).status()              # list[PartStatus]
    Stack(settings).down()                # stops only what `up` started
"""

from __future__ import annotations

from stream_engine.stack.clickhouse import clickhouse_answers
from stream_engine.stack.component import Component, StackError, StackLayout
from stream_engine.stack.core import COMPONENT_TYPES, PartResult, PartStatus, Stack, StackReport, StackUpError
from stream_engine.stack.kafka import ensure_kafka_libs, kafka_answers, libs_dir
from stream_engine.stack.redis import redis_answers

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
