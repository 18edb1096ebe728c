from __future__ import annotations

import pytest

from stream_engine.outcomes.evidence import TYPE_DISCOUNT, Counts, Evidence, adjusted_confidence, prior_centre


def test_no_verdicts_leave_the_service_confidence_untouched() -> None:
    assert adjusted_confidence(0.92, None, None, 10) == 0.92
    assert adjusted_confidence(0.92, Counts(resolved=5), Counts(resolved=9), 10) == 0.92  # resolved judges nothing


def test_the_posterior_mean_of_a_beta_prior_of_weight_w_centred_on_the_service() -> None:
    assert adjusted_confidence(0.92, Counts(rejected=10), None, 10) == pytest.approx(9.2 / 20)
    assert adjusted_confidence(0.5, Counts(accepted=10), None, 10) == pytest.approx(15 / 20)
    assert adjusted_confidence(0.92, Counts(false_positive=10), None, 10) == pytest.approx(9.2 / 20)  # counts against
    assert adjusted_confidence(0.92, Counts(rejected=10), None, 40) == pytest.approx(36.8 / 50)  # a heavier prior moves less


def test_other_keys_of_the_type_move_the_prior_centre_at_a_discount_and_at_most_by_w() -> None:
    assert prior_centre(0.92, Counts(rejected=10), 10) == pytest.approx(9.2 / (10 + 10 / TYPE_DISCOUNT))
    assert prior_centre(0.92, Counts(rejected=10_000), 10) == pytest.approx(0.46)  # capped at w verdicts' worth
    assert prior_centre(0.5, Counts(accepted=50, rejected=50), 10) == pytest.approx(0.5)
    # Then the key's own verdicts update that centre.
    centre = prior_centre(0.92, Counts(rejected=10), 10)
    assert adjusted_confidence(0.92, Counts(accepted=2), Counts(rejected=10), 10) == pytest.approx((10 * centre + 2) / 12)


def test_counts_less_another_reading_never_go_negative() -> None:
    assert Counts(3, 2, 1, 0).minus(Counts(1, 5, 0, 0)) == Counts(2, 0, 1, 0)
    assert Counts(1).minus(None) == Counts(1)


def test_evidence_round_trips_and_rejects_what_is_not_its_form() -> None:
    evidence = Evidence(4, {"retry_job": Counts(1, 2, 0, 1)})
    again = Evidence.from_json(evidence.to_json())
    assert again == evidence and again is not None and again.get("retry_job") == Counts(1, 2, 0, 1)
    assert Evidence.from_json(b'{"n": 0, "a": {}}') == Evidence(0, {})
    assert Evidence.from_json(b'{"n": 0, "a": []}') == Evidence(0, {})  # Lua's cjson: an empty table is []
    for bad in (None, b"{not json", b"[]", b'{"a": {}}', b'{"n": 1, "a": {"x": ["y"]}}'):
        assert Evidence.from_json(bad) is None
    assert evidence.newer_than(None) and evidence.newer_than(Evidence(3, {})) and not evidence.newer_than(Evidence(4, {}))
