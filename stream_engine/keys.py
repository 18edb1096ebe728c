"""Proposition keys: which alerts share one cached answer.

A key is the alert type plus the configured attribute fields, in configured order::

    ci_failure|repo=acme/web|job=test|error_class=Timeout

If the type has no configured fields, or a configured field is missing/empty, the key falls
back to ``type|fp=<fingerprint>`` and, without a fingerprint, ``type|id=<alert id>``. The id
fallback never hits a cache (every alert is unique) but is still correct: the alert gets its
own propositions instead of someone else's.

Keys are used verbatim as Redis keys and Kafka message keys, so they are:

* unambiguous: values are percent-encoded so ``|``, ``=``, ``%``, whitespace, glob characters
  (``*?[]``) and non-ASCII never appear raw; a value cannot forge another field;
* bounded: anything longer than :data:`MAX_KEY_LENGTH` becomes ``type|h=<blake2b-128 hex>``,
  still starting with ``type|`` so invalidation by type keeps working.

Publishers call :func:`message_key` so that every alert with one proposition key lands on one
partition, and so in one worker's partition-local cache.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import orjson

from stream_engine.models import Alert
from stream_engine.settings import DEFAULT_KEY_FIELDS

MAX_KEY_LENGTH = 200
# Characters left readable in keys; everything else is %XX (UTF-8). Excludes | = % * ? [ ] \ space.
_SAFE = "/:@.,+-_~"
_PLAIN = re.compile(r"[A-Za-z0-9/:@.,+\-_~]*")


def encode_part(value: Any) -> str:
    """A key component: strings stripped, other JSON values as canonical JSON, then escaped."""
    if isinstance(value, str):
        text = value.strip()
    else:
        try:
            text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        except TypeError:  # e.g. an integer beyond 64 bits in a publisher's dict: still a stable key
            text = str(value)
    return text if _PLAIN.fullmatch(text) else quote(text, safe=_SAFE)


def type_prefix(alert_type: str) -> str:
    """Every key of ``alert_type`` starts with this (used by invalidation by type)."""
    return encode_part(alert_type) + "|"


def build_key(
    alert_type: str,
    attributes: Mapping[str, Any] | None,
    fingerprint: Any,
    alert_id: Any,
    fields: list[str] | None,
) -> str:
    prefix = type_prefix(alert_type)
    key = None
    if fields and isinstance(attributes, Mapping):
        parts = []
        for name in fields:
            value = attributes.get(name)
            part = encode_part(value) if value is not None else ""
            if not part:
                break
            parts.append(f"{encode_part(name)}={part}")
        else:
            key = prefix + "|".join(parts)
    if key is None:
        fallback = encode_part(fingerprint) if fingerprint is not None else ""
        key = f"{prefix}fp={fallback}" if fallback else f"{prefix}id={encode_part(alert_id)}"
    if len(key) > MAX_KEY_LENGTH:
        digest = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
        key = f"{prefix}h={digest}"
    return key


class KeyBuilder:
    # Keys repeat (that is why caching pays): remember the key per (type, field values) so the
    # hot path skips escaping. Only all-str values are memoised: 1, 1.0 and True compare equal
    # in a tuple but encode differently.
    MEMO_MAX = 100_000

    def __init__(self, key_fields: Mapping[str, list[str]]) -> None:
        self.key_fields = {alert_type: list(fields) for alert_type, fields in key_fields.items()}
        self._memo: dict[tuple[str, ...], str] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> KeyBuilder:
        return cls(settings.key_fields)

    def key_for(self, alert: Alert) -> str:
        fields = self.key_fields.get(alert.type)
        attributes = alert.attributes
        if fields and type(attributes) is dict:
            values = [attributes.get(name) for name in fields]
            if all(type(v) is str and v.strip() for v in values):  # else the key falls back to fp/id
                memo_key = (alert.type, *values)
                key = self._memo.get(memo_key)
                if key is None:
                    if len(self._memo) >= self.MEMO_MAX:
                        self._memo.clear()
                    key = self._memo[memo_key] = build_key(alert.type, attributes, None, alert.id, fields)
                return key
        return build_key(alert.type, attributes, alert.fingerprint, alert.id, fields)

    def key_for_dict(self, alert: Mapping[str, Any]) -> str:
        """The same key from an alert as published (a JSON object), before validation."""
        alert_type = str(alert.get("type", ""))
        fields = self.key_fields.get(alert_type)
        return build_key(alert_type, alert.get("attributes"), alert.get("fingerprint"), alert.get("id"), fields)


_DEFAULT_BUILDER = KeyBuilder(DEFAULT_KEY_FIELDS)


def message_key(alert_dict: Mapping[str, Any], key_fields: Mapping[str, list[str]] = DEFAULT_KEY_FIELDS) -> bytes:
    """Kafka message key for a published alert: its proposition key, UTF-8 (ASCII in practice)."""
    builder = _DEFAULT_BUILDER if key_fields is DEFAULT_KEY_FIELDS else KeyBuilder(key_fields)
    return builder.key_for_dict(alert_dict).encode()
