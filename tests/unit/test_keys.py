from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_engine.keys import MAX_KEY_LENGTH, KeyBuilder, message_key, type_prefix
from stream_engine.models import Alert
from stream_engine.settings import DEFAULT_KEY_FIELDS, Settings

BUILDER = KeyBuilder(DEFAULT_KEY_FIELDS)
# What a key may contain: printable ASCII without space, | separates fields, = names a value.
KEY_CHARS = re.compile(r"[A-Za-z0-9/:@.,+\-_~%|=]+")


def alert(
    attributes: dict[str, object] | None = None, *, type: str = "ci_failure", fingerprint: str | None = None
) -> Alert:
    return Alert(
        id="id-1",
        type=type,
        timestamp=0,
        severity="low",
        source="s",
        attributes=attributes or {},
        fingerprint=fingerprint,
    )


CI = {"repo": "acme/web", "job": "test", "error_class": "Timeout"}


def test_configured_fields_in_order() -> None:
    assert BUILDER.key_for(alert({**CI, "other": "x"})) == "ci_failure|repo=acme/web|job=test|error_class=Timeout"


def test_values_are_stripped_and_non_strings_canonical() -> None:
    builder = KeyBuilder({"t": ["a", "b", "c"]})
    key = builder.key_for(alert({"a": "  x ", "b": 3, "c": {"z": 1, "y": True}}, type="t"))
    assert key == "t|a=x|b=3|c=%7B%22y%22:true,%22z%22:1%7D"
    same = builder.key_for(alert({"a": "x", "b": 3, "c": {"y": True, "z": 1}}, type="t"))
    assert key == same


def test_values_orjson_cannot_write_still_make_a_key() -> None:
    builder = KeyBuilder({"t": ["n", "m"]})
    key = builder.key_for(alert({"n": 2**70, "m": {1: "non-str key"}}, type="t"))
    assert key == f"t|n={2**70}|m=%7B1:%20%27non-str%20key%27%7D"


def test_missing_field_falls_back_to_fingerprint_then_id() -> None:
    partial = {"repo": "acme/web", "job": "test"}
    assert BUILDER.key_for(alert(partial, fingerprint="abc")) == "ci_failure|fp=abc"
    assert BUILDER.key_for(alert(partial)) == "ci_failure|id=id-1"


@pytest.mark.parametrize("empty", [None, "", "   "])
def test_empty_field_counts_as_missing(empty: object) -> None:
    assert BUILDER.key_for(alert({**CI, "job": empty}, fingerprint="f")) == "ci_failure|fp=f"


def test_unconfigured_type_falls_back() -> None:
    assert BUILDER.key_for(alert(CI, type="other", fingerprint="f")) == "other|fp=f"
    assert BUILDER.key_for(alert(CI, type="other")) == "other|id=id-1"


def test_separators_in_values_cannot_forge_fields() -> None:
    forged = BUILDER.key_for(alert({"repo": "acme/web|job=x", "job": "y", "error_class": "z"}))
    honest = BUILDER.key_for(alert({"repo": "acme/web", "job": "x|job=y", "error_class": "z"}))
    assert forged != honest
    assert forged == "ci_failure|repo=acme/web%7Cjob%3Dx|job=y|error_class=z"


def test_glob_whitespace_and_unicode_are_escaped() -> None:
    key = BUILDER.key_for(alert({"repo": "a*b?[c] d\\", "job": "é", "error_class": "%"}))
    assert KEY_CHARS.fullmatch(key), key
    assert key == "ci_failure|repo=a%2Ab%3F%5Bc%5D%20d%5C|job=%C3%A9|error_class=%25"


def test_long_keys_are_hashed_but_keep_the_type_prefix() -> None:
    long_a = BUILDER.key_for(alert({**CI, "repo": "r" * 500}))
    long_b = BUILDER.key_for(alert({**CI, "repo": "r" * 499 + "s"}))
    assert long_a.startswith("ci_failure|h=")
    assert len(long_a) <= MAX_KEY_LENGTH
    assert long_a != long_b
    assert long_a == BUILDER.key_for(alert({**CI, "repo": "r" * 500}))
    assert BUILDER.key_for(alert({}, fingerprint="f" * 512)).startswith("ci_failure|h=")


def test_type_prefix_matches_every_key_of_the_type() -> None:
    assert type_prefix("ci_failure") == "ci_failure|"
    assert BUILDER.key_for(alert(CI)).startswith(type_prefix("ci_failure"))


def test_from_settings_uses_configured_fields() -> None:
    builder = KeyBuilder.from_settings(Settings().with_overrides(key_fields={"ci_failure": ["repo"]}))
    assert builder.key_for(alert(CI)) == "ci_failure|repo=acme/web"


def test_message_key_equals_worker_key() -> None:
    published = {"id": "id-1", "type": "ci_failure", "attributes": CI, "severity": "low"}
    assert message_key(published) == BUILDER.key_for(alert(CI)).encode()
    assert message_key(published, {"ci_failure": ["job"]}) == b"ci_failure|job=test"
    assert message_key({"id": "x", "type": "scam", "attributes": "junk", "fingerprint": "f"}) == b"scam|fp=f"


def test_message_key_survives_malformed_alerts() -> None:
    # Publishers may send garbage (it ends in the DLQ); keying it must not fail.
    assert message_key({}) == b"|id=null"
    assert message_key({"type": 5, "attributes": [1]}) == b"5|id=null"


attribute_values = st.none() | st.text(max_size=40) | st.integers() | st.booleans()


@settings(max_examples=200)
@given(
    type=st.sampled_from(["ci_failure", "scam", "infra", "x"]),
    attributes=st.dictionaries(
        st.sampled_from(["repo", "job", "error_class", "pattern", "merchant", "service", "check"]), attribute_values
    ),
    fingerprint=st.none() | st.text(max_size=600),
)
def test_every_key_is_safe_bounded_and_typed(type: str, attributes: dict[str, object], fingerprint: str | None) -> None:
    key = BUILDER.key_for(alert(attributes, type=type, fingerprint=fingerprint))
    assert len(key) <= MAX_KEY_LENGTH
    assert KEY_CHARS.fullmatch(key), key
    assert key.startswith(type + "|")


def test_memoised_keys_equal_freshly_built_ones_for_every_kind_of_value() -> None:
    from stream_engine.keys import build_key

    builder = KeyBuilder({"ci_failure": ["repo", "job"]})
    cases = [
        {"repo": "a", "job": "b"},
        {"repo": "a", "job": "b"},  # the memo hit
        {"repo": " a ", "job": "b"},
        {"repo": "a", "job": "   "},  # blank: falls back to the fingerprint, never memoised
        {"repo": 1, "job": "b"},
        {"repo": True, "job": "b"},
        {"repo": "a|job=c", "job": "b"},
    ]
    for i, attributes in enumerate(cases):
        alert = Alert(id=f"id{i}", type="ci_failure", timestamp=0, severity="low", source="s",
                      attributes=attributes, fingerprint=f"fp{i}")
        assert builder.key_for(alert) == build_key("ci_failure", attributes, f"fp{i}", f"id{i}", ["repo", "job"])
