"""Learning from outcomes: operators' verdicts on decisions re-rank what the engine proposes.

    outcomes topic ─▶ OutcomeLearning (decode, resolve the alert id, count once, ClickHouse row, DLQ)
                      └─▶ OutcomeStore (Redis: decision records, counts) ─▶ OutcomeBook (LRU + type level)
    Triage reads a key's evidence with its propositions ─▶ DecisionPolicy adjusts confidences

Public names load lazily: the cache tiers import :mod:`.evidence` while :mod:`.learning` imports
the pipeline, which imports the cache tiers.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stream_engine.outcomes.book import OutcomeBook
    from stream_engine.outcomes.decoder import UNKNOWN_ALERT, Outcome, OutcomeDecoder
    from stream_engine.outcomes.evidence import OUTCOMES, Counts, Evidence, adjusted_confidence
    from stream_engine.outcomes.learning import OutcomeLearning
    from stream_engine.outcomes.store import DecisionRecord, OutcomeStore, Verdict

__all__ = [
    "OUTCOMES",
    "UNKNOWN_ALERT",
    "Counts",
    "DecisionRecord",
    "Evidence",
    "Outcome",
    "OutcomeBook",
    "OutcomeDecoder",
    "OutcomeLearning",
    "OutcomeStore",
    "Verdict",
    "adjusted_confidence",
]

_WHERE = {
    "OutcomeBook": "book",
    "UNKNOWN_ALERT": "decoder",
    "Outcome": "decoder",
    "OutcomeDecoder": "decoder",
    "OUTCOMES": "evidence",
    "Counts": "evidence",
    "Evidence": "evidence",
    "adjusted_confidence": "evidence",
    "OutcomeLearning": "learning",
    "DecisionRecord": "store",
    "OutcomeStore": "store",
    "Verdict": "store",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)
