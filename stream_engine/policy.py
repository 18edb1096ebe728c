"""From propositions to a decision: act automatically, ask a human to review, or escalate.

* top proposition (highest confidence) >= the alert type's threshold → ``auto`` with its action;
* below → ``review``: the ranked list goes to a human, the top action as a suggestion
  (reason ``below_threshold``);
* nothing to go on (no propositions, or the service could not be asked) → ``escalate`` with the
  reason: ``no_propositions`` or the fetch failure (``timeout``, ``breaker_open`` …).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stream_engine.models import CacheTier, Decision, Envelope, Proposition


class DecisionPolicy:
    def __init__(self, default_threshold: float, thresholds: Mapping[str, float]) -> None:
        self.default_threshold = default_threshold
        self.thresholds = dict(thresholds)

    @classmethod
    def from_settings(cls, settings: Any) -> DecisionPolicy:
        return cls(settings.auto_threshold, settings.auto_thresholds)

    def threshold_for(self, alert_type: str) -> float:
        return self.thresholds.get(alert_type, self.default_threshold)

    def decide(
        self, envelope: Envelope, propositions: list[Proposition] | None, tier: CacheTier, reason: str | None, now_ns: int
    ) -> Decision:
        """The decision for ``envelope``'s alert from what ``tier`` answered (``reason``: why
        there are no propositions, when there are none); latency runs from its receipt to ``now_ns``."""
        alert, key = envelope.alert, envelope.key
        latency_ms = (now_ns - envelope.received_ns) / 1e6
        decided_at = now_ns / 1e9
        if not propositions:
            return Decision(
                alert_id=alert.id,
                alert_type=alert.type,
                key=key,
                mode="escalate",
                action=None,
                confidence=None,
                propositions=[],
                cache_tier=tier,
                latency_ms=latency_ms,
                decided_at=decided_at,
                reason=reason or "no_propositions",
            )
        # Stable sort: among equal confidences the service's own order is kept.
        ranked = sorted(propositions, key=lambda p: p.confidence, reverse=True)
        top = ranked[0]
        auto = top.confidence >= self.threshold_for(alert.type)
        return Decision(
            alert_id=alert.id,
            alert_type=alert.type,
            key=key,
            mode="auto" if auto else "review",
            action=top.action,
            confidence=top.confidence,
            propositions=ranked,
            cache_tier=tier,
            latency_ms=latency_ms,
            decided_at=decided_at,
            reason=None if auto else "below_threshold",
        )
