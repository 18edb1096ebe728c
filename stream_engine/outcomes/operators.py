"""Simulated operators for ``stream-engine demo``: they judge every decision that names an action
against their own rule book, which disagrees with the proposition service on exactly one rule.

The service proposes ``retry_job`` at 0.92 for a CI ``Timeout`` (auto); these operators know the
timeouts here are deterministic and reject that action every time (``BAD_RULE``). Every other
action the engine names, they accept. So at the start of a run every auto ``retry_job`` on a
Timeout is wrong, and auto precision (share of judged auto decisions not rejected) rises as the
engine learns to stop auto-retrying those keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stream_engine.outcomes.decoder import Outcome


@dataclass(frozen=True, slots=True)
class BadRule:
    alert_type: str
    key_contains: str  # a proposition key field, as the key spells it
    action: str

    def matches(self, decision: dict[str, Any]) -> bool:
        return (
            decision["alert_type"] == self.alert_type
            and self.key_contains in decision["key"].split("|")
            and decision.get("action") == self.action
        )


BAD_RULE = BadRule("ci_failure", "error_class=Timeout", "retry_job")


def verdict(decision: dict[str, Any], bad: BadRule = BAD_RULE) -> Outcome | None:
    """The operators' verdict on a decision (None: nothing to judge, an escalation without action)."""
    if not decision.get("action"):
        return None
    outcome = "rejected" if bad.matches(decision) else "accepted"
    return Outcome(decision["alert_id"], outcome, actor="demo-operators")
