"""Secrets out of everything that leaves the worker: service requests, dead letters, logs, error text.

The configured secret fields (``settings.redact_fields``: attribute names, any depth, any case)
are masked by name, three ways, depending on what we hold:

* a parsed alert or payload: :func:`stream_engine.validation.redact` replaces the values;
* bytes that do not parse (not UTF-8, not JSON, nested too deep, truncated): a byte-level
  pattern masks ``"field": <value>`` wherever it appears, however deep (:meth:`Masker.raw`);
* free text (exception messages, log lines): the same pattern for JSON and Python reprs
  (``'field': 'value'``), ``field=value``, passwords in URLs (``scheme://user:PASSWORD@``), and
  the exact secret values found in the message being handled (:meth:`Masker.text`).

Everything here runs on cold paths (dead letters, failures, log lines), never per alert.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from stream_engine.validation import REDACTED, redact, redact_json

# scheme://user:PASSWORD@host — the password is the part between the last ':' of the userinfo and '@'.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)(?P<password>[^\s@/]+)(?=@)")
MASKED_PASSWORD = "***"
# Shorter values are not searched for as plain text: masking every "ab" would garble the text.
MIN_VALUE_LENGTH = 3


def mask_url_passwords(text: str) -> str:
    """``redis://:s3cret@host`` → ``redis://:***@host`` (for commands and logs that show a URL)."""
    return _URL_PASSWORD.sub(lambda m: m["head"] + MASKED_PASSWORD, text)


class Masker:
    def __init__(self, fields: Iterable[str]) -> None:
        self.fields = tuple(dict.fromkeys(f for f in fields if f))
        self._secret = frozenset(f.lower() for f in self.fields)
        self._raw: re.Pattern[bytes] | None = None
        self._text: re.Pattern[str] | None = None
        if self.fields:
            names = "|".join(re.escape(f) for f in sorted(self.fields, key=len, reverse=True))
            # "field" : "string with \" escapes" (or unterminated, to the end) | a bare scalar
            self._raw = re.compile(
                rb'(?P<key>"(?:' + names.encode() + rb')"\s*:\s*)(?P<value>"(?:[^"\\]|\\.)*(?:"|$)|[^\s,}\]]+)',
                re.IGNORECASE | re.DOTALL,
            )
            self._text = re.compile(
                r"(?P<key>(?P<q>[\"']?)(?<![\w-])(?:" + names + r")(?P=q)\s*[:=]\s*)"
                r"(?P<value>\"(?:[^\"\\]|\\.)*(?:\"|$)|'(?:[^'\\]|\\.)*(?:'|$)|[^\s,;&}\])'\"]+)",
                re.IGNORECASE | re.DOTALL,
            )

    def __bool__(self) -> bool:
        return bool(self.fields)

    # --- parsed values ----------------------------------------------------------------------

    def attributes(self, attributes: Mapping[str, Any]) -> Mapping[str, Any]:
        """``attributes`` with secret values replaced (the same object when there is nothing to mask)."""
        if not self.fields or not attributes:
            return attributes
        if not any(isinstance(v, (dict, list)) for v in attributes.values()) and not any(
            isinstance(k, str) and k.lower() in self._secret for k in attributes
        ):
            return attributes  # flat and clean: the common case costs one pass over the keys
        return redact(attributes, self.fields)

    def values(self, data: Any) -> set[str]:
        """The values (as text) held under secret keys anywhere in a parsed JSON value."""
        found: set[str] = set()
        stack: list[tuple[Any, bool]] = [(data, False)]
        while stack:
            node, secret = stack.pop()
            if isinstance(node, Mapping):
                stack.extend((v, secret or (isinstance(k, str) and k.lower() in self._secret)) for k, v in node.items())
            elif isinstance(node, list):
                stack.extend((v, secret) for v in node)
            elif secret and node is not None:
                found.add(node if isinstance(node, str) else orjson.dumps(node).decode())
        return found

    # --- bytes ------------------------------------------------------------------------------

    def payload(self, raw: bytes) -> tuple[bytes, bool]:
        """A message for the DLQ: (bytes, whether anything was masked).

        JSON is parsed, masked by key and re-encoded (only when it held a secret: clean payloads
        keep their exact bytes); whatever does not survive that round trip (not UTF-8, not JSON,
        too deep for the parser, the re-encoder or Python's stack) is masked byte-wise.
        """
        if not self.fields:
            return raw, False
        try:
            data = orjson.loads(raw)
            if not self._has_secret_key(data):
                return raw, False
            return orjson.dumps(redact_json(data, self.fields)), True
        except (orjson.JSONDecodeError, orjson.JSONEncodeError, RecursionError, TypeError):
            return self.raw(raw)

    def raw(self, raw: bytes) -> tuple[bytes, bool]:
        """Byte-level mask of ``"field": value`` for bytes that do not parse."""
        if self._raw is None:
            return raw, False
        masked, count = self._raw.subn(rb'\g<key>"' + REDACTED.encode() + rb'"', raw)
        return masked, count > 0

    def raw_values(self, raw: bytes) -> set[str]:
        """The values the byte-level pattern would mask, as text (for masking error details)."""
        if self._raw is None:
            return set()
        found = set()
        for match in self._raw.finditer(raw):
            value = match["value"].decode("utf-8", "replace")
            found.add(value[1:-1] if value.startswith('"') and value.endswith('"') and len(value) > 1 else value.lstrip('"'))
        return found

    # --- text -------------------------------------------------------------------------------

    def text(self, text: str, values: Iterable[str] = ()) -> str:
        """Free text with secret fields, URL passwords and the given secret values masked."""
        if self._text is not None:
            text = self._text.sub(_mask_match, text)
        for value in sorted((v for v in values if len(v) >= MIN_VALUE_LENGTH), key=len, reverse=True):
            text = text.replace(value, REDACTED)
        return mask_url_passwords(text)

    def detail(self, text: str, raw: bytes | None) -> str:
        """An error message about the message ``raw`` (e.g. a processing_error's detail), masked
        with that message's own secret values as well as by pattern."""
        if not self.fields or not raw:
            return self.text(text)
        try:
            values = self.values(orjson.loads(raw))
        except (orjson.JSONDecodeError, RecursionError):
            values = set()
        return self.text(text, values | self.raw_values(raw))

    # --- internals --------------------------------------------------------------------------

    def _has_secret_key(self, data: Any) -> bool:
        stack = [data]
        while stack:
            node = stack.pop()
            if isinstance(node, Mapping):
                if any(isinstance(k, str) and k.lower() in self._secret for k in node):
                    return True
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
        return False


def _mask_match(match: re.Match[str]) -> str:
    value = match["value"]
    quote = value[0] if value[:1] in ('"', "'") else ""
    return f"{match['key']}{quote}{REDACTED}{quote}"
