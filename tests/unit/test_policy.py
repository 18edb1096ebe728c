from __future__ import annotations

import pytest

from stream_engine.models import Alert, Decision, Envelope, Proposition, decision_from_json
from stream_engine.policy import DecisionPolicy
from stream_engine.settings import Settings

POLICY = DecisionPolicy(0.8, {"scam": 0.95})
RECEIVED_NS = 1_700_000_000_000_000_000
NOW_NS = RECEIVED_NS + 12_500_000  # 12.5 ms later


def alert(type: str = "ci_failure") -> Alert:
    return Alert(id="a-1", type=type, timestamp=0, severity="high", source="s")


def decide(
    propositions: list[Proposition] | None, failure: str | None = None, type: str = "ci_failure"
) -> Decision:
    return POLICY.decide(Envelope(alert(type), f"{type}|k", 0, 0, RECEIVED_NS), propositions, "redis", failure, NOW_NS)


def test_top_proposition_at_threshold_is_auto_whatever_the_input_order() -> None:
    decision = decide([Proposition("page", 0.3), Proposition("rerun", 0.8, "flaky"), Proposition("ignore", 0.5)])
    assert decision.mode == "auto"
    assert (decision.action, decision.confidence, decision.reason) == ("rerun", 0.8, None)
    assert [p.action for p in decision.propositions] == ["rerun", "ignore", "page"]


def test_below_threshold_is_review_with_the_top_action_as_suggestion() -> None:
    decision = decide([Proposition("rerun", 0.79), Proposition("page", 0.6)])
    assert decision.mode == "review"
    assert (decision.action, decision.confidence, decision.reason) == ("rerun", 0.79, "below_threshold")
    assert [p.action for p in decision.propositions] == ["rerun", "page"]


def test_per_type_threshold_overrides_the_default() -> None:
    assert decide([Proposition("block", 0.9)], type="scam").mode == "review"
    assert decide([Proposition("block", 0.95)], type="scam").mode == "auto"
    assert decide([Proposition("restart", 0.9)], type="infra").mode == "auto"
    assert POLICY.threshold_for("scam") == 0.95 and POLICY.threshold_for("infra") == 0.8


def test_ties_keep_the_service_order() -> None:
    decision = decide([Proposition("first", 0.9), Proposition("second", 0.9)])
    assert decision.action == "first"


@pytest.mark.parametrize("propositions", [None, []])
def test_nothing_to_go_on_escalates_with_no_propositions(propositions: list[Proposition] | None) -> None:
    decision = decide(propositions)
    assert decision.mode == "escalate"
    assert (decision.action, decision.confidence, decision.propositions) == (None, None, [])
    assert decision.reason == "no_propositions"


@pytest.mark.parametrize("reason", ["timeout", "breaker_open", "unavailable", "service_error:503"])
def test_fetch_failure_escalates_with_its_reason(reason: str) -> None:
    decision = decide(None, reason)
    assert decision.mode == "escalate" and decision.reason == reason


def test_propositions_win_over_a_stale_failure_reason() -> None:
    assert decide([Proposition("rerun", 0.99)], "timeout").mode == "auto"


def test_identity_tier_latency_and_time() -> None:
    decision = decide([Proposition("rerun", 0.9)])
    assert (decision.alert_id, decision.alert_type, decision.key, decision.cache_tier) == (
        "a-1",
        "ci_failure",
        "ci_failure|k",
        "redis",
    )
    assert decision.latency_ms == 12.5
    assert decision.decided_at == NOW_NS / 1e9
    assert decision_from_json(decision.to_json()) == decision


def test_from_settings() -> None:
    policy = DecisionPolicy.from_settings(Settings().with_overrides(auto_threshold=0.5, auto_thresholds={"x": 0.1}))
    assert (policy.default_threshold, policy.thresholds) == (0.5, {"x": 0.1})
