"""The public names of ``stream_engine`` (what publishers and users import) are pinned."""

from __future__ import annotations

import stream_engine


def test_the_public_names_are_exactly_these() -> None:
    assert sorted(stream_engine.__all__) == sorted(
        [
            "ENGINE_VERSION",
            "Alert",
            "CacheTier",
            "Decision",
            "DeadLetter",
            "Envelope",
            "Mode",
            "Proposition",
            "Settings",
            "__version__",
            "message_key",
        ]
    )
    for name in stream_engine.__all__:
        assert hasattr(stream_engine, name), name


def test_message_key_is_the_one_documented_for_publishers() -> None:
    from stream_engine.keys import message_key

    assert stream_engine.message_key is message_key
    alert = {"id": "a1", "type": "ci_failure", "attributes": {"repo": "r", "job": "j", "error_class": "Timeout"}}
    assert stream_engine.message_key(alert) == message_key(alert)
