"""Deterministic, rule-based propositions: the reference "model" behind the proposition service.

A rule book is a JSON document (see ``rules.json`` next to this file)::

    {"version": "2025.1",                      # optional label
     "description": "...",                     # optional
     "severity_factors": {"low": 0.9},         # optional: confidence multiplier per alert severity
     "types": {"ci_failure": [{"match": {"error_class": "Timeout", "job": "*"},
                               "propositions": [{"action": "retry_job", "confidence": 0.92,
                                                 "rationale": "..."}]}]}}

Matching: a rule matches when every ``match`` field equals the alert's attribute of that name
(looked up in ``alert["attributes"]``, then in the alert itself; non-string values compare by
``str()``); ``"*"`` matches anything, including an absent attribute. Of the matching rules of the
alert's type, the most specific (most non-``*`` fields) wins; ties go to the earlier rule. The
winner's propositions come back best first. No matching rule -> ``[]`` (the engine escalates).

Rules should only match on the proposition-key fields (settings.key_fields) and the shipped book
leaves ``severity_factors`` empty: the engine caches answers per key, so anything else that
changed the answer would make a cached answer depend on which alert came first.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from stream_engine.models import Proposition

DEFAULT_RULES_PATH = Path(__file__).with_name("rules.json")
WILDCARD = "*"
_TOP_LEVEL_KEYS = {"version", "description", "severity_factors", "types"}
_RULE_KEYS = {"match", "propositions"}
_PROPOSITION_KEYS = {"action", "confidence", "rationale"}


class RuleBookError(ValueError):
    """The rule book document is invalid; the message says where."""


@dataclass(slots=True, frozen=True)
class Rule:
    # Only the non-wildcard fields: matching is then a plain all-equal check.
    exact: tuple[tuple[str, str], ...]
    propositions: tuple[Proposition, ...]
    match: dict[str, str]  # as written, for to_dict()

    @property
    def specificity(self) -> int:
        return len(self.exact)


def _attribute(alert: dict[str, Any], attributes: dict[str, Any], name: str) -> Any:
    value = attributes.get(name)
    return alert.get(name) if value is None else value


def _rule_matches(rule: Rule, alert: dict[str, Any], attributes: dict[str, Any]) -> bool:
    for name, expected in rule.exact:
        value = _attribute(alert, attributes, name)
        if value is None:
            return False
        if value != expected and (isinstance(value, str) or str(value) != expected):
            return False
    return True


class RuleBook:
    """An immutable, validated rule book. Build with ``load``/``from_dict``; share freely."""

    __slots__ = ("_document", "_rules_by_type", "_severity_factors", "version")

    def __init__(self, document: dict[str, Any]) -> None:
        # Own a private copy: a caller mutating its dict must not change live rules.
        self._document = document = orjson.loads(orjson.dumps(document))
        self._severity_factors: dict[str, float] = dict(document.get("severity_factors") or {})
        self._rules_by_type: dict[str, tuple[Rule, ...]] = {}
        for alert_type, raw_rules in document["types"].items():
            rules = [
                Rule(
                    exact=tuple((k, v) for k, v in raw["match"].items() if v != WILDCARD),
                    propositions=tuple(
                        sorted(
                            (Proposition(p["action"], float(p["confidence"]), p.get("rationale", "")) for p in raw["propositions"]),
                            key=lambda p: -p.confidence,
                        )
                    ),
                    match=dict(raw["match"]),
                )
                for raw in raw_rules
            ]
            # Stable sort: most specific first, file order among equals; the first match wins.
            self._rules_by_type[alert_type] = tuple(sorted(rules, key=lambda r: -r.specificity))
        label = document.get("version")
        digest = hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]
        # The hash is always part of the version so that any content change changes it, even if
        # whoever edited the rules forgot to bump the label.
        self.version: str = f"{label}+{digest}" if label else digest

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path = DEFAULT_RULES_PATH) -> RuleBook:
        try:
            document = orjson.loads(Path(path).read_bytes())
        except orjson.JSONDecodeError as exc:
            raise RuleBookError(f"{path}: not JSON: {exc}") from exc
        return cls.from_dict(document)

    @classmethod
    def from_dict(cls, document: Any) -> RuleBook:
        validate_document(document)
        return cls(document)

    def to_dict(self) -> dict[str, Any]:
        """A copy of the document (safe to edit and load as a new book)."""
        return orjson.loads(orjson.dumps(self._document))

    # --- queries -----------------------------------------------------------------------------
    @property
    def alert_types(self) -> frozenset[str]:
        return frozenset(self._rules_by_type)

    def rules_for(self, alert_type: str) -> tuple[Rule, ...]:
        return self._rules_by_type.get(alert_type, ())

    def propose(self, alert: dict[str, Any]) -> list[Proposition]:
        """Ranked propositions for one alert (a dict shaped like models.Alert); [] if no rule."""
        rules = self._rules_by_type.get(alert.get("type"))  # type: ignore[arg-type]
        if not rules:
            return []
        attributes = alert.get("attributes")
        if not isinstance(attributes, dict):
            attributes = {}
        for rule in rules:
            if _rule_matches(rule, alert, attributes):
                return self._modulate(rule.propositions, alert.get("severity"))
        return []

    def _modulate(self, propositions: tuple[Proposition, ...], severity: Any) -> list[Proposition]:
        factor = self._severity_factors.get(severity) if self._severity_factors else None
        if factor is None or factor == 1.0:
            return list(propositions)
        scaled = [
            Proposition(p.action, round(min(1.0, max(0.0, p.confidence * factor)), 4), p.rationale) for p in propositions
        ]
        scaled.sort(key=lambda p: -p.confidence)
        return scaled

    def changed_types(self, other: RuleBook) -> set[str] | None:
        """Alert types whose rules differ between the two books; None if a change affects all
        types (severity factors changed)."""
        if (self._document.get("severity_factors") or {}) != (other._document.get("severity_factors") or {}):
            return None
        mine, theirs = self._document["types"], other._document["types"]
        return {t for t in set(mine) | set(theirs) if mine.get(t) != theirs.get(t)}


def validate_document(document: Any) -> None:
    """Raise RuleBookError naming the first problem in a rule book document."""
    if not isinstance(document, dict):
        raise RuleBookError("rule book must be a JSON object")
    unknown = set(document) - _TOP_LEVEL_KEYS
    if unknown:
        raise RuleBookError(f"unknown top-level keys: {sorted(unknown)}")
    for key in ("version", "description"):
        if key in document and not isinstance(document[key], str):
            raise RuleBookError(f"{key} must be a string")
    factors = document.get("severity_factors", {})
    if not isinstance(factors, dict) or not all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for k, v in factors.items()
    ):
        raise RuleBookError("severity_factors must map severity names to non-negative numbers")
    types = document.get("types")
    if not isinstance(types, dict):
        raise RuleBookError("types must be an object: alert type -> list of rules")
    for alert_type, rules in types.items():
        if not isinstance(rules, list):
            raise RuleBookError(f"types.{alert_type} must be a list of rules")
        for index, rule in enumerate(rules):
            _validate_rule(rule, f"types.{alert_type}[{index}]")


def _validate_rule(rule: Any, where: str) -> None:
    if not isinstance(rule, dict) or set(rule) != _RULE_KEYS:
        raise RuleBookError(f"{where}: a rule is exactly {{'match': {{...}}, 'propositions': [...]}}")
    match = rule["match"]
    if not isinstance(match, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in match.items()):
        raise RuleBookError(f"{where}.match must map attribute names to strings (or '*')")
    propositions = rule["propositions"]
    if not isinstance(propositions, list) or not propositions:
        raise RuleBookError(f"{where}.propositions must be a non-empty list")
    for index, proposition in enumerate(propositions):
        at = f"{where}.propositions[{index}]"
        if not isinstance(proposition, dict) or not set(proposition) <= _PROPOSITION_KEYS:
            raise RuleBookError(f"{at}: keys must be among {sorted(_PROPOSITION_KEYS)}")
        action = proposition.get("action")
        if not isinstance(action, str) or not action:
            raise RuleBookError(f"{at}.action must be a non-empty string")
        confidence = proposition.get("confidence")
        if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.0 <= confidence <= 1.0:
            raise RuleBookError(f"{at}.confidence must be a number in [0, 1]")
        if not isinstance(proposition.get("rationale", ""), str):
            raise RuleBookError(f"{at}.rationale must be a string")


class RuleStore:
    """Where ``PUT /v1/rules`` keeps the live rule book, so a restarted service answers with it:
    one JSON document, replaced atomically (written beside, fsynced, renamed)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self, default: RuleBook) -> RuleBook:
        """The stored book, or ``default`` if none was stored yet (RuleBookError if it is bad)."""
        return RuleBook.load(self.path) if self.path.exists() else default

    def save(self, book: RuleBook) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".rules-", suffix=".json")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(orjson.dumps(book.to_dict(), option=orjson.OPT_INDENT_2))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
