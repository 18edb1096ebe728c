"""stream_engine.masking: every shape a secret can take on its way out of the worker."""

from __future__ import annotations

import orjson
import pytest

from stream_engine.masking import Masker, mask_url_passwords
from stream_engine.validation import REDACTED

FIELDS = ["password", "token", "api_key"]
M = Masker(FIELDS)
S = "sk-9f8e7d6c"  # the planted secret


def test_parsed_payloads_are_masked_by_key_at_any_depth_and_in_top_level_arrays() -> None:
    for payload in (
        {"id": "x", "attributes": {"Password": S, "repo": "r"}},
        {"a": [{"b": {"API_KEY": S}}]},
        [{"token": S}],  # not_object
        {"password": {"nested": [S, 1]}},  # a whole subtree under a secret key
    ):
        masked, redacted = M.payload(orjson.dumps(payload))
        assert redacted and S.encode() not in masked and REDACTED.encode() in masked
        orjson.loads(masked)  # still JSON


def test_clean_payloads_keep_their_exact_bytes() -> None:
    raw = b'{"id":"x",  "attributes":{"repo":"r"}}'
    assert M.payload(raw) == (raw, False)
    assert Masker([]).payload(b'{"password":"x"}') == (b'{"password":"x"}', False)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"id": "x", "attributes": {"password": "' + S.encode() + b'", oops',  # not_json
        b'\xff\xfe{"token" : "' + S.encode() + b'"}',  # not_utf8
        b'{"attributes": {"api_key": "' + S.encode() + b'\xff"}}',  # invalid byte inside the value
        b"[" * 1100 + b'{"password": "' + S.encode() + b'"}' + b"]" * 1100,  # too deep for orjson
        b'{"a": ' + b'{"b": ' * 300 + b'{"password": "' + S.encode() + b'"}' + b"}" * 301,  # too deep to re-encode
        b'{"password": "' + S.encode(),  # truncated inside the value
        b'{"password": "esc\\"aped ' + S.encode() + b'"}x',  # an escaped quote does not end the value
        b'{"PassWord":12345' + S.encode() + b",}",  # a bare (invalid) scalar
    ],
)
def test_what_does_not_parse_is_masked_byte_wise(raw: bytes) -> None:
    masked, redacted = M.payload(raw)
    assert redacted and S.encode() not in masked, masked[-200:]
    assert masked.count(REDACTED.encode()) >= 1


def test_text_masks_json_reprs_assignments_and_url_passwords() -> None:
    text = (
        f"ValueError: Alert(id='a', attributes={{'password': '{S}', 'repo': 'r', 'api_key': 123456}})"
        f' body={{"token": "{S}"}} url?token={S}&x=1 http://user:{S}@ch:8123/ redis://:{S}@redis:6379/0'
    )
    masked = M.text(text)
    assert S not in masked and "123456" not in masked
    assert "'repo': 'r'" in masked and "x=1" in masked and "http://user:***@ch:8123/" in masked
    assert "mytoken=keep" in M.text("mytoken=keep")  # whole names only


def test_detail_masks_the_messages_own_secret_values_wherever_they_appear() -> None:
    raw = orjson.dumps({"id": "x", "attributes": {"password": S}})
    assert M.detail(f"KeyError: {S!r}", raw) == f"KeyError: '{REDACTED}'"
    assert S not in M.detail(f"failed on {S}", b'not json {"password": "' + S.encode() + b'"')
    assert M.detail("nothing to hide", raw) == "nothing to hide"


def test_attributes_are_masked_without_touching_the_alert() -> None:
    attributes = {"repo": "r", "Token": S, "nested": {"password": S}}
    masked = M.attributes(attributes)
    assert masked == {"repo": "r", "Token": REDACTED, "nested": {"password": REDACTED}}
    assert attributes["Token"] == S
    clean = {"repo": "r"}
    assert M.attributes(clean) is clean  # the common case allocates nothing


def test_url_passwords() -> None:
    assert mask_url_passwords("http://u:p@h:1 and chdb:///x and https://h:8443/") == "http://u:***@h:1 and chdb:///x and https://h:8443/"
