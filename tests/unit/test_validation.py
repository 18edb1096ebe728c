from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_engine.models import Alert
from stream_engine.settings import Settings
from stream_engine.validation import REDACTED, AlertDecoder, InvalidAlert, redact

SCHEMA_PATH = Settings().topics_dir / "schemas" / "alert.schema.json"

VALID = {
    "id": "a-1",
    "type": "ci_failure",
    "timestamp": "2024-05-01T12:00:00Z",
    "severity": "high",
    "source": "github",
    "attributes": {"repo": "acme/web", "job": "test"},
    "fingerprint": "fp-1",
}


@pytest.fixture(scope="module")
def decoder() -> AlertDecoder:
    return AlertDecoder(max_bytes=4096, schema_path=SCHEMA_PATH)


def reason_of(decoder: AlertDecoder, raw: bytes | None) -> InvalidAlert:
    with pytest.raises(InvalidAlert) as info:
        decoder.decode(raw)
    return info.value


def test_valid_alert_decodes_to_alert(decoder: AlertDecoder) -> None:
    alert = decoder.decode(orjson.dumps(VALID))
    assert alert == Alert(
        id="a-1",
        type="ci_failure",
        timestamp="2024-05-01T12:00:00Z",
        severity="high",
        source="github",
        attributes={"repo": "acme/web", "job": "test"},
        fingerprint="fp-1",
    )


def test_optional_fields_default_and_extra_fields_are_ignored(decoder: AlertDecoder) -> None:
    data = {k: v for k, v in VALID.items() if k not in ("attributes", "fingerprint")}
    alert = decoder.decode(orjson.dumps({**data, "timestamp": 1714564800.5, "extra": [1]}))
    assert alert.attributes == {}
    assert alert.fingerprint is None
    assert alert.timestamp == 1714564800.5


def test_from_settings_uses_configured_limit_and_schema() -> None:
    decoder = AlertDecoder.from_settings(Settings().with_overrides(max_alert_bytes=256))
    assert decoder.max_bytes == 256
    assert decoder.schema_path == SCHEMA_PATH
    assert reason_of(decoder, orjson.dumps({**VALID, "source": "x" * 300})).reason == "too_large"


def test_too_large_is_checked_before_parsing(decoder: AlertDecoder) -> None:
    error = reason_of(decoder, b"\xff" * 5000)  # not UTF-8 either: size wins
    assert error.reason == "too_large"
    assert "5000" in error.detail


def test_exactly_max_bytes_is_accepted() -> None:
    raw = orjson.dumps(VALID)
    assert AlertDecoder(max_bytes=len(raw), schema_path=SCHEMA_PATH).decode(raw).id == "a-1"
    assert reason_of(AlertDecoder(max_bytes=len(raw) - 1, schema_path=SCHEMA_PATH), raw).reason == "too_large"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"id": "\xff\xfe"}', "not_utf8"),
        (b"\xed\xa0\x80", "not_utf8"),  # an encoded surrogate is not valid UTF-8
        (b"", "not_json"),
        (None, "not_json"),
        (b"{not json", "not_json"),
        (b'{"id": "a",}', "not_json"),
        (b'"\\ud800"', "not_json"),
        (b"1e999", "not_json"),
        (b"[" * 1100 + b"]" * 1100, "too_deep"),
        (b"[]", "not_object"),
        (b'"alert"', "not_object"),
        (b"null", "not_object"),
        (b"42", "not_object"),
        (b"true", "not_object"),
    ],
)
def test_parse_failures_have_stable_reasons(decoder: AlertDecoder, raw: bytes | None, reason: str) -> None:
    assert reason_of(decoder, raw).reason == reason


def test_deep_objects_are_too_deep() -> None:
    decoder = AlertDecoder(max_bytes=1 << 20, schema_path=SCHEMA_PATH)
    assert reason_of(decoder, b'{"a":' * 1100 + b"1" + b"}" * 1100).reason == "too_deep"


def test_not_object_names_the_type(decoder: AlertDecoder) -> None:
    assert "array" in reason_of(decoder, b"[1, 2]").detail


@pytest.mark.parametrize(
    ("change", "detail_start", "detail_part"),
    [
        ({"severity": "urgent"}, "severity:", "must be one of"),
        ({"type": "CI Failure"}, "type:", "pattern"),
        ({"type": ""}, "type:", ""),
        ({"id": 7}, "id:", "string"),
        ({"id": ""}, "id:", ""),
        ({"timestamp": "yesterday"}, "timestamp:", "date-time"),
        ({"timestamp": -1}, "timestamp:", "bigger than or equal to 0"),
        ({"timestamp": True}, "timestamp:", "string or number"),
        ({"attributes": ["a"]}, "attributes:", "object"),
        ({"attributes": {str(i): i for i in range(257)}}, "attributes:", "256"),
        ({"fingerprint": None}, "fingerprint:", "string"),
        ({"source": "s" * 257}, "source:", "256"),
    ],
)
def test_schema_failures_name_the_field(
    decoder: AlertDecoder, change: dict[str, object], detail_start: str, detail_part: str
) -> None:
    error = reason_of(decoder, orjson.dumps({**VALID, **change}))
    assert error.reason == "schema"
    assert error.detail.startswith(detail_start)
    assert detail_part in error.detail


def test_missing_required_fields_are_listed(decoder: AlertDecoder) -> None:
    data = {k: v for k, v in VALID.items() if k not in ("id", "source")}
    error = reason_of(decoder, orjson.dumps(data))
    assert error.reason == "schema"
    assert error.detail == "id, source: required field missing"


def test_duplicate_keys_last_value_wins(decoder: AlertDecoder) -> None:
    raw = orjson.dumps(VALID)[:-1] + b',"severity":"low"}'
    assert decoder.decode(raw).severity == "low"


def test_invalid_alert_str_carries_reason_and_detail() -> None:
    error = InvalidAlert("schema", "id: missing")
    assert str(error) == "schema: id: missing"


# --- never anything but InvalidAlert ---------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)

alert_like = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "type": st.sampled_from(["ci_failure", "scam", "Bad Type", ""]) | json_values,
        "timestamp": st.sampled_from(["2024-05-01T12:00:00Z", "2024-13-45", 0, -1.5]) | json_values,
        "severity": st.sampled_from(["critical", "low", "LOW"]) | json_values,
        "source": json_values,
        "attributes": json_values,
        "fingerprint": json_values,
    },
)


def check_decode_contract(decoder: AlertDecoder, raw: bytes) -> None:
    try:
        alert = decoder.decode(raw)
    except InvalidAlert as error:
        assert error.reason in {"too_large", "not_utf8", "not_json", "too_deep", "not_object", "schema"}
        return
    assert isinstance(alert, Alert)
    assert isinstance(alert.attributes, dict)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300))
def test_any_bytes_decode_or_raise_invalid_alert(decoder: AlertDecoder, raw: bytes) -> None:
    check_decode_contract(decoder, raw)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=alert_like | json_values)
def test_any_json_decodes_or_raises_invalid_alert(decoder: AlertDecoder, data: object) -> None:
    # json, not orjson: it also writes integers beyond 64 bits, which the decoder must survive.
    check_decode_contract(decoder, json.dumps(data, ensure_ascii=False).encode("utf-8", "surrogatepass"))


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=400), flip=st.integers(min_value=0, max_value=255))
def test_corrupted_valid_alerts_decode_or_raise_invalid_alert(decoder: AlertDecoder, cut: int, flip: int) -> None:
    raw = bytearray(orjson.dumps(VALID))
    position = cut % len(raw)
    raw[position] ^= flip
    check_decode_contract(decoder, bytes(raw[: max(position, cut)]))


# --- redact ----------------------------------------------------------------------------------


def test_redact_matches_case_insensitively_at_any_depth_and_copies() -> None:
    attributes = {
        "Password": "hunter2",
        "user": "bob",
        "nested": {"API_KEY": "k", "keep": 1, "deeper": {"token": "t"}},
        "items": [{"secret": "s", "ok": True}, "plain"],
    }
    before = orjson.dumps(attributes)
    redacted = redact(attributes, ["password", "Api_Key", "token", "secret"])
    assert redacted == {
        "Password": REDACTED,
        "user": "bob",
        "nested": {"API_KEY": REDACTED, "keep": 1, "deeper": {"token": REDACTED}},
        "items": [{"secret": REDACTED, "ok": True}, "plain"],
    }
    assert orjson.dumps(attributes) == before  # input untouched
    assert redacted["nested"] is not attributes["nested"]


def test_redact_replaces_whole_secret_subtrees_and_ignores_no_fields() -> None:
    assert redact({"authorization": {"scheme": "Bearer", "value": "x"}}, ["authorization"]) == {
        "authorization": REDACTED
    }
    attributes = {"password": "p"}
    assert redact(attributes, []) == attributes


@pytest.mark.parametrize("depth, accepted", [(10, True), (60, True), (70, False), (1000, False)])
def test_nested_attributes_deeper_than_the_limit_are_too_deep(decoder: AlertDecoder, depth: int, accepted: bool) -> None:
    from stream_engine.validation import MAX_ATTRIBUTE_DEPTH

    raw = (
        b'{"id":"d","type":"infra","timestamp":1,"severity":"low","source":"s","attributes":{"x":'
        + b'[{"y":' * (depth // 2) + b"1" + b"}]" * (depth // 2) + b"}}"
    )
    if accepted:
        alert = decoder.decode(raw)
        orjson.dumps(alert.attributes)  # what the service request does with it
    else:
        with pytest.raises(InvalidAlert) as exc:
            decoder.decode(raw)
        assert exc.value.reason == "too_deep" and str(MAX_ATTRIBUTE_DEPTH) in exc.value.detail
