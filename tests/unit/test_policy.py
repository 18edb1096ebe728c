from __future__ import annotations

import pytest

from stream_engine.models import Alert, Decision, Envelope, Proposition, decision_from_json
from stream_engine.outcomes.evidence import Counts, Evidence
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


# --- learning from outcomes --------------------------------------------------------------------

SERVICE = [Proposition("retry_job", 0.92, "transient"), Proposition("notify_owner", 0.35)]


def decide_with(
    propositions: list[Proposition], own: dict[str, Counts] | None, types: dict[str, Evidence] | None = None
) -> Decision:
    policy = DecisionPolicy(0.8, {}, prior_weight=10, type_evidence=types or {})
    evidence = Evidence(sum(c.judged for c in own.values()), own) if own is not None else None
    return policy.decide(Envelope(alert(), "ci_failure|k", 0, 0, RECEIVED_NS), propositions, "redis", None, NOW_NS, evidence)


def test_without_verdicts_on_its_actions_the_decision_is_the_service_only_one() -> None:
    assert decide_with(SERVICE, None) == decide([*SERVICE])
    plain = decide_with(SERVICE, {"some_other_action": Counts(rejected=5)})
    assert plain == decide([*SERVICE]) and plain.evidence is None


def test_an_auto_action_operators_keep_rejecting_is_demoted_and_says_why() -> None:
    d = decide_with(SERVICE, {"retry_job": Counts(rejected=10)})
    assert (d.mode, d.action, d.reason) == ("review", "retry_job", "outcome_demoted")
    assert d.confidence == pytest.approx(0.46)
    assert d.evidence is not None
    assert d.evidence["service"] == {"mode": "auto", "action": "retry_job", "confidence": 0.92}
    assert d.evidence["actions"]["retry_job"]["key"] == {"accepted": 0, "rejected": 10, "false_positive": 0, "resolved": 0}
    assert "10 rejected" in d.evidence["why"] and "0.92 -> 0.46" in d.evidence["why"]


def test_an_action_operators_keep_accepting_is_promoted_to_auto() -> None:
    d = decide_with([Proposition("increase_memory", 0.72)], {"increase_memory": Counts(accepted=10)})
    assert (d.mode, d.action, d.reason) == ("auto", "increase_memory", "outcome_promoted")
    assert d.confidence == pytest.approx(0.86)


def test_a_rejected_first_choice_can_hand_the_first_rank_to_another_action() -> None:
    d = decide_with(
        [Proposition("retry_job", 0.6), Proposition("notify_owner", 0.55)],
        {"retry_job": Counts(rejected=10), "notify_owner": Counts(accepted=3)},
    )
    assert (d.mode, d.action, d.reason) == ("review", "notify_owner", "outcome_reranked")
    assert [p.action for p in d.propositions] == ["notify_owner", "retry_job"]
    assert "notify_owner ranks first" in d.evidence["why"]  # type: ignore[index]


def test_the_type_level_prior_applies_to_a_key_without_evidence_of_its_own() -> None:
    nudged = decide_with(SERVICE, None, {"ci_failure": Evidence(10, {"retry_job": Counts(rejected=10)})})
    assert (nudged.mode, nudged.reason) == ("auto", None) and 0.8 < nudged.confidence < 0.92  # type: ignore[operator]
    assert nudged.evidence is not None and nudged.evidence["actions"]["retry_job"]["type"]["rejected"] == 10
    many = decide_with(SERVICE, None, {"ci_failure": Evidence(200, {"retry_job": Counts(rejected=200)})})
    assert (many.mode, many.reason) == ("review", "outcome_demoted")
    # The key's own verdicts are taken out of the type's: they are not counted twice.
    own = decide_with(SERVICE, {"retry_job": Counts(rejected=10)}, {"ci_failure": Evidence(10, {"retry_job": Counts(rejected=10)})})
    assert own.confidence == pytest.approx(0.46)


def test_new_evidence_for_the_same_answer_is_not_served_from_the_memo() -> None:
    policy = DecisionPolicy(0.8, {}, prior_weight=10)
    env = Envelope(alert(), "ci_failure|k", 0, 0, RECEIVED_NS)
    props = list(SERVICE)
    before = policy.decide(env, props, "lru", None, NOW_NS, Evidence(1, {"retry_job": Counts(rejected=1)}))
    after = policy.decide(env, props, "lru", None, NOW_NS, Evidence(10, {"retry_job": Counts(rejected=10)}))
    assert before.mode == "auto" and after.mode == "review"


def test_a_decision_with_evidence_round_trips_through_json() -> None:
    d = decide_with(SERVICE, {"retry_job": Counts(rejected=10)})
    assert decision_from_json(d.to_json()) == d
