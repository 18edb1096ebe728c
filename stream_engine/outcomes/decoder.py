"""Bytes off the ``outcomes`` topic (or an item of ``POST /api/v1/outcomes``) → an :class:`Outcome`.

The same checks and reason codes as alerts (:func:`stream_engine.validation.decode_object`: size,
UTF-8, JSON, object, JSON Schema ``topics/schemas/outcome.schema.json``), so an invalid outcome is
dead-lettered on ``alerts.dlq`` exactly like an invalid alert. One reason is the outcomes' own:
``unknown_alert``, an outcome whose alert the engine never decided (or decided longer ago than
the outcome window), decided later, when its alert id is looked up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson

from stream_engine.validation import InvalidAlert, decode_object

UNKNOWN_ALERT = "unknown_alert"


@dataclass(frozen=True, slots=True)
class Outcome:
    alert_id: str
    outcome: str  # one of evidence.OUTCOMES
    action: str | None = None  # None: the action the decision named
    actor: str | None = None
    at: float | None = None  # epoch seconds; None: when the engine read it
    note: str | None = None

    def to_json(self) -> bytes:
        return orjson.dumps({k: v for k, v in (("alert_id", self.alert_id), ("outcome", self.outcome), ("action", self.action),
                                               ("actor", self.actor), ("at", self.at), ("note", self.note)) if v is not None})  # fmt: skip


def epoch_seconds(value: str | float) -> float:
    """RFC 3339 (the schema's ``date-time``) or epoch seconds → epoch seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    text = value.strip()
    if text[-1:] in ("z", "Z"):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text.replace("t", "T", 1) if "t" in text[:11] else text)
    if parsed.tzinfo is None:
        raise ValueError("an RFC 3339 date-time needs its offset (Z or ±hh:mm)")
    return parsed.timestamp()


class OutcomeDecoder:
    def __init__(self, max_bytes: int, schema_path: Path) -> None:
        self.max_bytes = max_bytes
        self._validate = fastjsonschema.compile(orjson.loads(schema_path.read_bytes()))

    @classmethod
    def from_settings(cls, settings: Any) -> OutcomeDecoder:
        return cls(settings.max_alert_bytes, settings.topics_dir / "schemas" / "outcome.schema.json")

    def decode(self, raw: bytes | bytearray | memoryview | None) -> Outcome:
        """An :class:`Outcome`, or :class:`~stream_engine.validation.InvalidAlert` with the reason."""
        data = decode_object(raw, self.max_bytes, self._validate)
        at = data.get("at")
        if at is not None:
            try:
                at = epoch_seconds(at)
            except ValueError as exc:
                raise InvalidAlert("schema", f"at: {exc}") from None
        return Outcome(data["alert_id"], data["outcome"], data.get("action"), data.get("actor"), at, data.get("note"))
