"""Operators' verdicts as evidence, and the confidence they adjust.

**Counts.** Per (proposition key, action) the engine keeps how often operators ``accepted``,
``rejected`` or marked a decision a ``false_positive``, and how often the alert was ``resolved``.
``accepted`` counts for the action; ``rejected`` and ``false_positive`` count against it (a false
positive means acting was wrong, whatever the action); ``resolved`` counts as neither: the alert
went away, which says nothing about whether the action was the right one. It is kept (and
reported) but does not move the confidence.

**Posterior.** The service's confidence ``c`` for an action is the centre of a Beta prior of weight
``w`` (``STREAM_ENGINE_OUTCOME_PRIOR_WEIGHT``): ``Beta(w·c, w·(1 − c))``, i.e. ``w`` pseudo-verdicts
at the service's rate. The key's own verdicts update it; the adjusted confidence is the posterior
mean::

    p = (w·m + accepted) / (w + accepted + rejected + false_positive)

where ``m`` is the prior centre. For a key with little evidence of its own, similar alerts
share theirs: ``m`` is first moved towards the acceptance rate of the same action on the *other*
keys of the alert type (the type's counts less the key's own, so no verdict counts twice), each
of those verdicts weighing :data:`TYPE_DISCOUNT` times less than one on the key itself, and all
of them together at most as much as ``w`` verdicts::

    m = (w·c + e·accepted_o / judged_o) / (w + e),   e = min(w, judged_o / TYPE_DISCOUNT)

So one key's bad rule (10 rejections) only nudges its siblings (0.92 → 0.84 with ``w`` = 10),
while an action operators reject on many keys (100+ verdicts) is pulled half way to their rate
on every key of the type. A key's own verdicts then outweigh the prior as soon as there are more
than ``w`` of them. With no verdicts at all, ``p = c``: the engine decides exactly as without outcomes.

**Versions.** Every stored evidence carries ``n``, the number of outcomes applied to it: counts
only grow, so of two readings of one key the one with the larger ``n`` is the newer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

OUTCOMES: tuple[str, ...] = ("accepted", "rejected", "false_positive", "resolved")
OUTCOME_INDEX: dict[str, int] = {name: i for i, name in enumerate(OUTCOMES)}
# A verdict on another key of the alert type weighs this many times less than one on the key.
TYPE_DISCOUNT = 10.0


class Counts(NamedTuple):
    accepted: int = 0
    rejected: int = 0
    false_positive: int = 0
    resolved: int = 0

    @property
    def against(self) -> int:
        return self.rejected + self.false_positive

    @property
    def judged(self) -> int:
        """Verdicts that say whether the action was right (``resolved`` does not)."""
        return self.accepted + self.rejected + self.false_positive

    def minus(self, other: Counts | None) -> Counts:
        """These counts less ``other``'s, never below 0 (two readings need not be simultaneous)."""
        if other is None:
            return self
        return Counts(*(max(0, a - b) for a, b in zip(self, other, strict=True)))

    def as_dict(self) -> dict[str, int]:
        return self._asdict()


NO_COUNTS = Counts()


@dataclass(frozen=True, slots=True)
class Evidence:
    """The counts of one key (or of one alert type) per action, and their version ``n``."""

    n: int
    actions: Mapping[str, Counts]

    def get(self, action: str) -> Counts | None:
        return self.actions.get(action)

    def newer_than(self, other: Evidence | None) -> bool:
        return other is None or self.n > other.n

    def to_json(self) -> bytes:
        return orjson.dumps({"n": self.n, "a": {a: list(c) for a, c in self.actions.items()}})

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> Evidence | None:
        """The stored form (``{"n": 3, "a": {"retry_job": [1, 2, 0, 0]}}``); None if absent or not ours."""
        if raw is None:
            return None
        try:
            value = orjson.loads(raw)
            actions = value["a"]
            return cls(int(value["n"]), {str(a): Counts(*(int(x) for x in c[: len(OUTCOMES)])) for a, c in actions.items()}
                       if isinstance(actions, dict) else {})  # fmt: skip  # Lua's cjson writes an empty table as {}
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return None


def prior_centre(confidence: float, others: Counts | None, weight: float) -> float:
    """The Beta prior's centre for an action: the service's confidence, moved by the verdicts on
    the other keys of the alert type (each worth 1/TYPE_DISCOUNT of the key's own, at most
    ``weight`` verdicts' worth in all)."""
    if others is None or not others.judged:
        return confidence
    worth = min(weight, others.judged / TYPE_DISCOUNT)
    return (weight * confidence + worth * others.accepted / others.judged) / (weight + worth)


def adjusted_confidence(confidence: float, own: Counts | None, others: Counts | None, weight: float) -> float:
    """The posterior mean of the action being right (module docstring)."""
    centre = prior_centre(confidence, others, weight)
    if own is None or not own.judged:
        return centre
    return (weight * centre + own.accepted) / (weight + own.judged)


def counts_json(counts: Counts | None) -> dict[str, Any]:
    return (counts or NO_COUNTS).as_dict()
