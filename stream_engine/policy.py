"""From propositions to a decision: act automatically, ask a human to review, or escalate.

* top proposition (highest confidence) >= the alert type's threshold → ``auto`` with its action;
* below → ``review``: the ranked list goes to a human, the top action as a suggestion
  (reason ``below_threshold``);
* nothing to go on (no propositions, or the service could not be asked) → ``escalate`` with the
  reason: ``no_propositions`` or the fetch failure (``timeout``, ``breaker_open`` …).

**Outcomes.** When operators have judged the key's actions (or the same actions on other keys of
its alert type), each proposition's confidence is replaced by the outcome-adjusted one
(:func:`stream_engine.outcomes.evidence.adjusted_confidence`), the list is re-ranked by it, and
the threshold applies to the new top. The decision then carries ``evidence`` (the service's
confidences, the counts, the adjusted confidences, what the service alone would have decided)
and, when that changed the outcome, a reason saying so: ``outcome_demoted`` (would have been
``auto``, is ``review``: operators reject the action), ``outcome_promoted`` (would have been
``review``, is ``auto``: they keep accepting it) or ``outcome_reranked`` (same mode, another
action ranks first). With no verdict on any of its actions the decision is exactly the
service-only one, without ``evidence``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stream_engine.cache.invalidation import type_part
from stream_engine.models import CacheTier, Decision, Envelope, Proposition
from stream_engine.outcomes.evidence import Counts, Evidence, adjusted_confidence, counts_json

DEMOTED, PROMOTED, RERANKED = "outcome_demoted", "outcome_promoted", "outcome_reranked"
OUTCOME_REASONS = (DEMOTED, PROMOTED, RERANKED)
MEMO_MAX = 10_000


class DecisionPolicy:
    def __init__(
        self,
        default_threshold: float,
        thresholds: Mapping[str, float],
        prior_weight: float = 10.0,
        type_evidence: Mapping[str, Evidence] | None = None,
    ) -> None:
        self.default_threshold = default_threshold
        self.thresholds = dict(thresholds)
        self.prior_weight = prior_weight
        # type part -> evidence of the alert type; the worker's OutcomeBook keeps it current.
        self.type_evidence: Mapping[str, Evidence] = type_evidence if type_evidence is not None else {}
        # Alerts of one key share one answer and one evidence: rank them once.
        self._memo: dict[tuple[int, int, int, float], tuple[Any, ...]] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> DecisionPolicy:
        return cls(settings.auto_threshold, settings.auto_thresholds, settings.outcome_prior_weight)

    def threshold_for(self, alert_type: str) -> float:
        return self.thresholds.get(alert_type, self.default_threshold)

    def decide(
        self,
        envelope: Envelope,
        propositions: list[Proposition] | None,
        tier: CacheTier,
        reason: str | None,
        now_ns: int,
        evidence: Evidence | None = None,
    ) -> Decision:
        """The decision for ``envelope``'s alert from what ``tier`` answered (``reason``: why
        there are no propositions, when there are none; ``evidence``: the verdicts on its key);
        latency runs from its receipt to ``now_ns``."""
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
        threshold = self.threshold_for(alert.type)
        types = self.type_evidence
        ranked_by_outcomes = None
        if evidence is not None or (types and type_part(key) in types):
            ranked_by_outcomes = self._rank(propositions, evidence, types.get(type_part(key)), threshold)
        if ranked_by_outcomes is not None:
            ranked, auto, why, detail = ranked_by_outcomes
        else:
            # Stable sort: among equal confidences the service's own order is kept.
            ranked = sorted(propositions, key=lambda p: p.confidence, reverse=True)
            auto = ranked[0].confidence >= threshold
            why, detail = (None if auto else "below_threshold"), None
        top = ranked[0]
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
            reason=why,
            evidence=detail,
        )

    def _rank(
        self, propositions: list[Proposition], own: Evidence | None, of_type: Evidence | None, threshold: float
    ) -> tuple[list[Proposition], bool, str | None, dict[str, Any]] | None:
        """(re-ranked propositions with adjusted confidences, auto, reason, evidence field), or
        None when no verdict concerns any of these actions."""
        memo_key = (id(propositions), id(own), id(of_type), threshold)
        held = self._memo.get(memo_key)
        # The memo holds the objects themselves, so their ids cannot be reused while it does.
        if held is not None and held[0] is propositions and held[1] is own and held[2] is of_type:
            return held[3]  # type: ignore[no-any-return]
        result = self._rank_uncached(propositions, own, of_type, threshold)
        if len(self._memo) >= MEMO_MAX:
            self._memo.clear()
        self._memo[memo_key] = (propositions, own, of_type, result)
        return result

    def _rank_uncached(
        self, propositions: list[Proposition], own: Evidence | None, of_type: Evidence | None, threshold: float
    ) -> tuple[list[Proposition], bool, str | None, dict[str, Any]] | None:
        weight = self.prior_weight
        service = sorted(propositions, key=lambda p: p.confidence, reverse=True)
        counts: list[tuple[Counts | None, Counts | None]] = []
        for p in service:
            key_counts = own.get(p.action) if own is not None else None
            type_counts = of_type.get(p.action) if of_type is not None else None
            counts.append((key_counts, type_counts.minus(key_counts) if type_counts is not None else None))
        if not any((k is not None and k.judged) or (o is not None and o.judged) for k, o in counts):
            return None
        adjusted = [
            Proposition(p.action, round(adjusted_confidence(p.confidence, k, o, weight), 4), p.rationale)
            for p, (k, o) in zip(service, counts)
        ]
        ranked = sorted(adjusted, key=lambda p: p.confidence, reverse=True)  # stable: the service's order on ties
        was_auto = service[0].confidence >= threshold
        auto = ranked[0].confidence >= threshold
        if auto != was_auto:
            reason: str | None = PROMOTED if auto else DEMOTED
        elif ranked[0].action != service[0].action:
            reason = RERANKED
        else:
            reason = None if auto else "below_threshold"
        top_counts = dict(zip((p.action for p in service), counts))
        key_counts, type_counts = top_counts[ranked[0].action]
        first = service[0]
        first_key, _ = top_counts[first.action]
        detail = {
            "prior_weight": weight,
            "service": {"mode": "auto" if was_auto else "review", "action": first.action, "confidence": first.confidence},
            "actions": {
                p.action: {"service_confidence": p.confidence, "confidence": a.confidence, "key": counts_json(k),
                           "type": counts_json(o)}
                for p, a, (k, o) in zip(service, adjusted, counts)
            },  # fmt: skip
            "why": _why(first, adjusted[0], first_key, ranked[0], threshold, auto),
        }
        return ranked, auto, reason, detail


def _why(first: Proposition, first_adjusted: Proposition, first_key: Counts | None, top: Proposition, threshold: float, auto: bool) -> str:
    """One sentence for a human: what the verdicts did to the service's first choice."""
    k = first_key or Counts()
    text = (f"{first.action}: {k.accepted} accepted, {k.rejected} rejected, {k.false_positive} false positive on this key; "
            f"confidence {first.confidence:.2f} -> {first_adjusted.confidence:.2f}")
    if top.action != first.action:
        text += f"; {top.action} ranks first at {top.confidence:.2f}"
    return text + f" ({'auto' if auto else 'review'}: auto needs {threshold:.2f})"
