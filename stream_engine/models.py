"""The records that flow through the engine.

Plain slotted dataclasses: cheap to build on the hot path, and orjson serialises them natively.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field, fields
from typing import Any, Literal, NamedTuple

import orjson

__version__ = "0.1.0"
ENGINE_VERSION = __version__

Severity = Literal["critical", "high", "medium", "low", "info"]
Mode = Literal["auto", "review", "escalate"]
CacheTier = Literal["lru", "redis", "service", "none"]


@dataclass(slots=True)
class Alert:
    id: str
    type: str
    timestamp: str | float
    severity: str
    source: str
    attributes: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None


@dataclass(slots=True)
class Envelope:
    """An alert with where it came from and when we first saw it (for latency and ClickHouse)."""

    alert: Alert
    key: str
    partition: int
    offset: int
    received_ns: int  # time.time_ns() when the batch was taken off the stream
    topic: str = ""  # the topic it was consumed from; "" = not from a topic (the HTTP API)


@dataclass(slots=True, frozen=True)
class Proposition:
    action: str
    confidence: float
    rationale: str = ""


class Resolved(NamedTuple):
    """What the cache tiers found for one alert's key: its propositions and the tier that
    answered, or ``None`` with the reason there are none (``timeout``, ``breaker_open`` …)."""

    propositions: list[Proposition] | None
    tier: CacheTier
    reason: str | None = None


@dataclass(slots=True)
class StageTimes:
    """Nanoseconds spent per stage of one batch, in data-path order (the stage names are these
    fields: :data:`STAGES`)."""

    decode: int = 0
    lru: int = 0
    redis: int = 0
    service: int = 0
    decide: int = 0
    produce: int = 0
    sink: int = 0

    def add(self, other: StageTimes) -> None:
        for name in STAGES:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_ms(self) -> dict[str, float]:
        return {name: getattr(self, name) / 1e6 for name in STAGES}


# The one list of stage names: a stream batch goes through all of them; an HTTP API call parses
# its own body and publishes nothing (no decode, no produce). Latency per alert is END_TO_END.
STAGES: tuple[str, ...] = tuple(f.name for f in fields(StageTimes))
API_STAGES: tuple[str, ...] = tuple(s for s in STAGES if s not in ("decode", "produce"))
END_TO_END = "end_to_end"


@dataclass(slots=True)
class Decision:
    alert_id: str
    alert_type: str
    key: str
    mode: Mode
    action: str | None
    confidence: float | None
    propositions: list[Proposition]
    cache_tier: CacheTier
    latency_ms: float
    decided_at: float  # epoch seconds
    engine_version: str = ENGINE_VERSION
    reason: str | None = None  # why escalate / review

    def to_json(self) -> bytes:
        return orjson.dumps(self)


@dataclass(slots=True)
class DeadLetter:
    reason: str
    error: str
    source_topic: str
    partition: int
    offset: int
    original: bytes  # exactly as received, unless redacted (secret fields masked)
    received_at: float
    redacted: bool = False

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "reason": self.reason,
                "error": self.error,
                "source_topic": self.source_topic,
                "partition": self.partition,
                "offset": self.offset,
                "original_b64": base64.b64encode(self.original).decode("ascii"),
                "received_at": self.received_at,
                "redacted": self.redacted,
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> DeadLetter:
        d = orjson.loads(data)
        return cls(
            reason=d["reason"],
            error=d["error"],
            source_topic=d["source_topic"],
            partition=d["partition"],
            offset=d["offset"],
            original=base64.b64decode(d["original_b64"]),
            received_at=d["received_at"],
            redacted=d.get("redacted", False),
        )


def decision_from_json(data: bytes) -> Decision:
    d = orjson.loads(data)
    d["propositions"] = [Proposition(**p) for p in d["propositions"]]
    return Decision(**d)
