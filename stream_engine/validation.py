"""Bytes off the ``alerts`` topic → a validated :class:`Alert`, or :class:`InvalidAlert` with a reason.

The decoder is the worker's only defence against poison pills, so for *any* input it either
returns an Alert or raises InvalidAlert; never anything else (a hypothesis test holds it to that).

Reasons are short stable codes (they become DLQ ``reason`` values and metric labels):

``too_large``   more than ``max_bytes``; checked before parsing so a huge message costs nothing.
``not_utf8``    the bytes are not UTF-8 (orjson validates while parsing; no separate decode pass).
``not_json``    not a JSON document (includes an empty or null message value, lone surrogates,
                numbers out of double range).
``too_deep``    nested deeper than orjson's limit of 1024 levels (orjson refuses it itself).
``not_object``  valid JSON whose top level is not an object.
``schema``      fails ``topics/schemas/alert.schema.json``; detail is ``"<field>: <what is wrong>"``.

Duplicate keys are *not* a reason: orjson keeps the last value, like most parsers, and RFC 8259
only says names SHOULD be unique. Detecting them would need a second, slow parse of every alert.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson

from stream_engine.models import Alert

REDACTED = "[REDACTED]"


class InvalidAlert(Exception):
    """Why an alert was rejected: ``reason`` is a stable code, ``detail`` is for humans."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# orjson parses up to 1024 levels, but orjson.dumps (the service request, the DLQ) and our
# recursive redaction stop near 255: an accepted alert must survive every later step.
MAX_ATTRIBUTE_DEPTH = 64


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value, walking no deeper than ``limit`` (iterative: no recursion)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if level > deepest:
            deepest = level
            if deepest > limit:
                return deepest
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


class AlertDecoder:
    def __init__(self, max_bytes: int, schema_path: Path) -> None:
        self.max_bytes = max_bytes
        self.schema_path = schema_path
        self._validate = fastjsonschema.compile(orjson.loads(schema_path.read_bytes()))

    @classmethod
    def from_settings(cls, settings: Any) -> AlertDecoder:
        return cls(settings.max_alert_bytes, settings.topics_dir / "schemas" / "alert.schema.json")

    def decode(self, raw: bytes | bytearray | memoryview | None) -> Alert:
        data = decode_object(raw, self.max_bytes, self._validate)
        attributes = data.get("attributes")
        # Flat attributes (the norm) cost one pass over the values; only nested ones are walked.
        if attributes and any(isinstance(v, (dict, list)) for v in attributes.values()):
            if _depth(attributes, MAX_ATTRIBUTE_DEPTH) > MAX_ATTRIBUTE_DEPTH:
                raise InvalidAlert("too_deep", f"attributes: nested deeper than {MAX_ATTRIBUTE_DEPTH} levels")
        return Alert(
            id=data["id"],
            type=data["type"],
            timestamp=data["timestamp"],
            severity=data["severity"],
            source=data["source"],
            attributes=attributes if attributes is not None else {},
            fingerprint=data.get("fingerprint"),
        )


def decode_object(raw: bytes | bytearray | memoryview | None, max_bytes: int, validate: Any) -> dict[str, Any]:
    """The checks every JSON message of ours passes (size, UTF-8, JSON, object, ``validate``: a
    compiled JSON Schema), in that order; raises :class:`InvalidAlert` with the first that fails.
    Shared by the alerts' and the outcomes' decoders, so both dead-letter with the same reasons."""
    if raw is None:  # a Kafka tombstone / null value
        raise InvalidAlert("not_json", "message value is null")
    if len(raw) > max_bytes:
        raise InvalidAlert("too_large", f"{len(raw)} bytes > max {max_bytes}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _parse_error(exc) from None
    if not isinstance(data, dict):
        raise InvalidAlert("not_object", f"top level is {_json_type(data)}, expected object")
    try:
        validate(data)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise InvalidAlert("schema", _schema_detail(exc, data)) from None
    except Exception as exc:  # noqa: BLE001 - a validator bug must not kill the worker
        raise InvalidAlert("schema", f"validator error: {type(exc).__name__}") from None
    return data


def _parse_error(exc: orjson.JSONDecodeError) -> InvalidAlert:
    message = str(exc)
    # orjson reports these as JSONDecodeError; its messages are the only way to tell them apart
    # (tests pin each mapping, so an orjson upgrade that rewords them fails loudly).
    if "UTF-8" in message:
        return InvalidAlert("not_utf8", message)
    if "recursion limit" in message or "depth limit" in message:
        return InvalidAlert("too_deep", message)
    return InvalidAlert("not_json", message)


def _schema_detail(exc: fastjsonschema.JsonSchemaValueException, data: dict[str, Any]) -> str:
    path = exc.path if isinstance(exc.path, list) else []
    field = ".".join(str(p) for p in path[1:]) or "(root)"
    if exc.rule == "required" and isinstance(exc.rule_definition, list) and field == "(root)":
        missing = [name for name in exc.rule_definition if name not in data]
        return f"{', '.join(map(str, missing))}: required field missing"
    if exc.rule in ("oneOf", "anyOf") and isinstance(exc.rule_definition, list):
        # The validator's "valid exactly by one definition" says nothing useful: list the options.
        options = ", ".join(_describe(option) for option in exc.rule_definition)
        return f"{field}: must be one of: {options}"
    message = str(exc.message)
    prefix = str(exc.name) + " "
    if message.startswith(prefix):
        message = message[len(prefix) :]
    return f"{field}: {message}"


def _describe(schema: object) -> str:
    if not isinstance(schema, dict):
        return str(schema)
    words = [str(schema.get("type", "value"))]
    if "format" in schema:
        words.append(f"({schema['format']})")
    if "minimum" in schema:
        words.append(f">= {schema['minimum']}")
    return " ".join(words)


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def redact(attributes: Mapping[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    """A copy of ``attributes`` with secret values replaced, for logs and the DLQ.

    Keys match ``fields`` case-insensitively at any depth (dicts, and dicts inside lists).
    The input is never modified.
    """
    secret = frozenset(f.lower() for f in fields)
    return _redact_dict(attributes, secret)


def redact_json(value: Any, fields: Iterable[str]) -> Any:
    """:func:`redact` for any JSON value (a top-level array can hold secrets too)."""
    return _redact_value(value, frozenset(f.lower() for f in fields))


def _redact_dict(mapping: Mapping[str, Any], secret: frozenset[str]) -> dict[str, Any]:
    return {
        key: REDACTED if isinstance(key, str) and key.lower() in secret else _redact_value(value, secret)
        for key, value in mapping.items()
    }


def _redact_value(value: Any, secret: frozenset[str]) -> Any:
    if isinstance(value, Mapping):
        return _redact_dict(value, secret)
    if isinstance(value, list):
        return [_redact_value(item, secret) for item in value]
    return value
