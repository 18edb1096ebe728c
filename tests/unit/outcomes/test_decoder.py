from __future__ import annotations

import orjson
import pytest

from stream_engine.outcomes import Outcome, OutcomeDecoder
from stream_engine.settings import Settings
from stream_engine.validation import InvalidAlert

DECODER = OutcomeDecoder.from_settings(Settings())


def test_only_alert_id_and_outcome_are_required_and_at_takes_rfc3339_or_epoch_seconds() -> None:
    assert DECODER.decode(b'{"alert_id": "a1", "outcome": "rejected"}') == Outcome("a1", "rejected")
    full = {"alert_id": "a1", "outcome": "accepted", "action": "page", "actor": "ana", "at": "2025-01-01T00:00:05Z", "note": "ok"}
    assert DECODER.decode(orjson.dumps(full)) == Outcome("a1", "accepted", "page", "ana", 1735689605.0, "ok")
    assert DECODER.decode(b'{"alert_id": "a1", "outcome": "resolved", "at": 1735689605.5}').at == 1735689605.5
    assert DECODER.decode(b'{"alert_id": "a1", "outcome": "accepted", "at": "2025-01-01T02:00:05+02:00"}').at == 1735689605.0


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "not_json"),
        (b"{not json", "not_json"),
        (b'"text"', "not_object"),
        (b'{"alert_id": "a1"}', "schema"),
        (b'{"outcome": "accepted"}', "schema"),
        (b'{"alert_id": "", "outcome": "accepted"}', "schema"),
        (b'{"alert_id": "a1", "outcome": "maybe"}', "schema"),
        (b'{"alert_id": "a1", "outcome": "accepted", "extra": 1}', "schema"),
        (b'{"alert_id": "a1", "outcome": "accepted", "at": "yesterday"}', "schema"),
        (b'{"alert_id": "a1", "outcome": "accepted", "at": -1}', "schema"),
        (b'{"alert_id": "a1", "outcome": "accepted", "at": "2025-01-01T00:00:05"}', "schema"),  # no offset
        (b'{"alert_id": "a1", "outcome": "accepted", "note": "' + b"x" * 70_000 + b'"}', "too_large"),
    ],
)
def test_invalid_outcomes_get_the_alerts_reason_codes(raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidAlert) as caught:
        DECODER.decode(raw)
    assert caught.value.reason == reason


def test_to_json_is_what_the_decoder_reads() -> None:
    outcome = Outcome("a1", "false_positive", None, "ana", 12.5)
    assert DECODER.decode(outcome.to_json()) == outcome
