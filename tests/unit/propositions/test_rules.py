from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from stream_engine.models import Proposition
from stream_engine.propositions.rules import DEFAULT_RULES_PATH, RuleBook, RuleBookError


def alert(alert_type: str, severity: str = "high", **attributes: Any) -> dict[str, Any]:
    return {"id": "a1", "type": alert_type, "timestamp": 1.0, "severity": severity, "source": "test", "attributes": attributes}


@pytest.fixture(scope="module")
def book() -> RuleBook:
    return RuleBook.load()


def minimal(**types: list[dict[str, Any]]) -> dict[str, Any]:
    return {"types": types}


def rule(match: dict[str, str], *props: tuple[str, float]) -> dict[str, Any]:
    return {"match": match, "propositions": [{"action": a, "confidence": c, "rationale": a} for a, c in props]}


# --- the shipped book ----------------------------------------------------------------------------


def test_shipped_book_covers_the_three_alert_types(book: RuleBook) -> None:
    assert book.alert_types == {"ci_failure", "scam", "infra"}


def test_version_is_stable_across_loads_and_carries_the_label(book: RuleBook) -> None:
    again = RuleBook.load(DEFAULT_RULES_PATH)
    assert again.version == book.version
    assert book.version.startswith("2025.1+")


def test_any_content_change_changes_the_version_even_with_the_same_label(book: RuleBook) -> None:
    document = book.to_dict()
    document["types"]["ci_failure"][0]["propositions"][0]["confidence"] = 0.5
    changed = RuleBook.from_dict(document)
    assert changed.version != book.version
    assert changed.version.split("+")[0] == book.version.split("+")[0]


def test_version_without_label_is_the_content_hash() -> None:
    book = RuleBook.from_dict(minimal(infra=[rule({"check": "x"}, ("page_oncall", 0.5))]))
    assert "+" not in book.version and len(book.version) == 12


def test_propose_is_deterministic(book: RuleBook) -> None:
    a = alert("ci_failure", repo="web", job="unit", error_class="FlakyTest")
    first = book.propose(a)
    assert all(book.propose(copy.deepcopy(a)) == first for _ in range(20))
    assert RuleBook.load().propose(a) == first


def test_spread_auto_review_and_escalate(book: RuleBook) -> None:
    auto = book.propose(alert("ci_failure", repo="web", job="build", error_class="Timeout"))
    review = book.propose(alert("scam", pattern="velocity", merchant="corner-shop"))
    empty = book.propose(alert("infra", service="api", check="quantum_flux"))
    assert auto[0] == Proposition("retry_job", 0.92, auto[0].rationale) and auto[0].confidence >= 0.9
    assert review[0].action == "hold_transaction" and 0.5 <= review[0].confidence <= 0.8
    assert empty == []


def test_every_shipped_proposition_has_a_rationale_and_a_valid_confidence(book: RuleBook) -> None:
    for alert_type in book.alert_types:
        for r in book.rules_for(alert_type):
            confidences = [p.confidence for p in r.propositions]
            assert confidences == sorted(confidences, reverse=True)
            assert all(0.0 <= c <= 1.0 for c in confidences)
            assert all(p.rationale for p in r.propositions)


def test_most_specific_rule_wins(book: RuleBook) -> None:
    general = book.propose(alert("ci_failure", repo="web", job="unit", error_class="OOMKilled"))
    specific = book.propose(alert("ci_failure", repo="web", job="integration-tests", error_class="OOMKilled"))
    assert general[0].action == specific[0].action == "increase_memory"
    assert general[0].confidence == 0.72 and specific[0].confidence == 0.95


def test_wildcard_matches_any_value(book: RuleBook) -> None:
    result = book.propose(alert("scam", pattern="never-seen", merchant="shady-electronics-ltd"))
    assert [p.action for p in result] == ["flag_merchant", "hold_transaction"]


def test_equal_specificity_goes_to_the_earlier_rule(book: RuleBook) -> None:
    # disk_full (check) and legacy-billing (service) both have one exact field; disk_full is first.
    result = book.propose(alert("infra", service="legacy-billing", check="disk_full"))
    assert result[0].action == "expand_volume"
    assert book.propose(alert("infra", service="legacy-billing", check="odd"))[0].action == "page_oncall"


def test_unknown_type_missing_attributes_and_absent_fields_give_no_rule(book: RuleBook) -> None:
    assert book.propose(alert("weather", region="eu")) == []
    assert book.propose({"type": "ci_failure"}) == []
    assert book.propose({"type": "ci_failure", "attributes": "not-a-dict"}) == []
    assert book.propose({}) == []


def test_attributes_fall_back_to_top_level_fields_and_compare_as_strings() -> None:
    book = RuleBook.from_dict(minimal(infra=[rule({"service": "api", "port": "443"}, ("renew_cert", 0.9))]))
    assert book.propose({"type": "infra", "service": "api", "attributes": {"port": 443}})[0].action == "renew_cert"
    assert book.propose({"type": "infra", "service": "api", "attributes": {"port": 80}}) == []


def test_propositions_come_back_best_first_whatever_the_file_order() -> None:
    book = RuleBook.from_dict(minimal(infra=[rule({"check": "x"}, ("a", 0.2), ("b", 0.9), ("c", 0.5))]))
    assert [p.action for p in book.propose(alert("infra", check="x"))] == ["b", "c", "a"]


def test_severity_factors_scale_clamp_and_rerank() -> None:
    document = minimal(infra=[rule({"check": "x"}, ("a", 0.9), ("b", 0.6))])
    document["severity_factors"] = {"low": 0.5, "critical": 2.0}
    book = RuleBook.from_dict(document)
    assert [(p.action, p.confidence) for p in book.propose(alert("infra", "low", check="x"))] == [("a", 0.45), ("b", 0.3)]
    assert [(p.action, p.confidence) for p in book.propose(alert("infra", "critical", check="x"))] == [("a", 1.0), ("b", 1.0)]
    assert [p.confidence for p in book.propose(alert("infra", "medium", check="x"))] == [0.9, 0.6]


def test_propose_returns_a_fresh_list(book: RuleBook) -> None:
    a = alert("infra", service="api", check="disk_full")
    book.propose(a).clear()
    assert book.propose(a) != []


def test_caller_mutations_do_not_reach_live_rules() -> None:
    document = minimal(infra=[rule({"check": "x"}, ("a", 0.9))])
    book = RuleBook.from_dict(document)
    document["types"]["infra"][0]["propositions"][0]["confidence"] = 0.1
    book.to_dict()["types"].clear()
    assert book.propose(alert("infra", check="x"))[0].confidence == 0.9


def test_changed_types(book: RuleBook) -> None:
    document = book.to_dict()
    assert book.changed_types(RuleBook.from_dict(document)) == set()
    document["types"]["scam"].pop()
    assert book.changed_types(RuleBook.from_dict(document)) == {"scam"}
    document["types"]["weather"] = [rule({"region": "eu"}, ("page_oncall", 0.5))]
    assert book.changed_types(RuleBook.from_dict(document)) == {"scam", "weather"}
    document["severity_factors"] = {"low": 0.5}
    assert book.changed_types(RuleBook.from_dict(document)) is None


@pytest.mark.parametrize(
    "document, message",
    [
        ([], "JSON object"),
        ({"types": {}, "extra": 1}, "unknown top-level"),
        ({"version": 3, "types": {}}, "version must be a string"),
        ({"types": []}, "types must be an object"),
        ({"types": {"infra": {}}}, "must be a list"),
        ({"types": {"infra": [{"match": {}}]}}, "a rule is exactly"),
        ({"types": {"infra": [{"match": {"check": 1}, "propositions": [{"action": "a", "confidence": 1}]}]}}, "match must map"),
        ({"types": {"infra": [{"match": {}, "propositions": []}]}}, "non-empty list"),
        ({"types": {"infra": [{"match": {}, "propositions": [{"action": "", "confidence": 0.5}]}]}}, "action"),
        ({"types": {"infra": [{"match": {}, "propositions": [{"action": "a", "confidence": 1.5}]}]}}, "confidence"),
        ({"types": {"infra": [{"match": {}, "propositions": [{"action": "a", "confidence": True}]}]}}, "confidence"),
        ({"types": {"infra": [{"match": {}, "propositions": [{"action": "a", "confidence": 0.5, "why": ""}]}]}}, "keys"),
        ({"types": {"infra": [{"match": {}, "propositions": [{"action": "a", "confidence": 0.5, "rationale": 1}]}]}}, "rationale"),
        ({"types": {}, "severity_factors": {"low": -1}}, "severity_factors"),
    ],
)
def test_invalid_documents_are_rejected_with_where(document: Any, message: str) -> None:
    with pytest.raises(RuleBookError, match=message):
        RuleBook.from_dict(document)


def test_load_rejects_a_file_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text("{not json")
    with pytest.raises(RuleBookError, match="not JSON"):
        RuleBook.load(path)


def test_load_reads_a_given_path(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_bytes(orjson.dumps(minimal(infra=[rule({"check": "*"}, ("page_oncall", 0.4))])))
    assert RuleBook.load(path).propose(alert("infra", check="anything"))[0].action == "page_oncall"


_SHIPPED = RuleBook.load()
_VALUES = st.sampled_from(
    ["Timeout", "OOMKilled", "FlakyTest", "CompileError", "DependencyResolution", "payments-api", "integration-tests",
     "card_testing", "velocity", "shady-electronics-ltd", "disk_full", "pod_crashloop", "checkout", "legacy-billing", "zzz"]
)


@hyp_settings(max_examples=200, deadline=None)
@given(
    alert_type=st.sampled_from(["ci_failure", "scam", "infra", "other"]),
    attributes=st.dictionaries(
        st.sampled_from(["repo", "job", "error_class", "pattern", "merchant", "service", "check"]), _VALUES
    ),
)
def test_any_alert_gets_ranked_valid_propositions(alert_type: str, attributes: dict[str, str]) -> None:
    result = _SHIPPED.propose({"type": alert_type, "attributes": attributes})
    assert [p.confidence for p in result] == sorted((p.confidence for p in result), reverse=True)
    assert all(0.0 <= p.confidence <= 1.0 and p.action for p in result)
    assert result == _SHIPPED.propose({"type": alert_type, "attributes": dict(attributes)})
