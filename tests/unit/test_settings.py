"""Settings rules that protect secrets (the rest of Settings is exercised everywhere)."""

from __future__ import annotations

import pytest

from stream_engine.settings import Settings, SettingsError, settings_table


def test_a_secret_attribute_cannot_be_a_key_field() -> None:
    # keys go in clear to the decisions topic, Redis and ClickHouse: masking cannot reach them there
    with pytest.raises(SettingsError, match=r"ci_failure.Token.*redact_fields"):
        Settings(key_fields={"ci_failure": ["repo", "Token"]})
    Settings(key_fields={"ci_failure": ["repo"]}, redact_fields=["token"])


def test_a_rejected_setting_does_not_echo_the_others() -> None:
    with pytest.raises(SettingsError) as rejected:
        Settings(api_port="nope", clickhouse_url="http://u:pw-in-url@h:8123", api_token="tok-value")  # type: ignore[arg-type]
    assert "pw-in-url" not in str(rejected.value) and "tok-value" not in str(rejected.value)


def test_tokens_are_masked_in_reprs_and_handed_whole_to_subprocesses(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(api_token="tok-api", admin_token="tok-admin")
    assert "tok-" not in repr(settings) and "tok-" not in str(settings.model_dump())
    env = settings.to_env()
    assert env["STREAM_ENGINE_API_TOKEN"] == "tok-api" and env["STREAM_ENGINE_ADMIN_TOKEN"] == "tok-admin"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings() == settings  # what a child process reads back
    defaults = {name: default for name, default, _ in settings_table()}
    assert defaults["STREAM_ENGINE_API_TOKEN"] == "''"


def test_decision_records_outlive_ten_sink_flushes() -> None:
    # A verdict on a just-decided alert must find its Redis record until ClickHouse has its row.
    with pytest.raises(SettingsError, match=r"outcome_record_ttl_s \(5\) must be at least 10 x sink_flush_interval_s \(1\)"):
        Settings(outcome_record_ttl_s=5)
    with pytest.raises(SettingsError, match="outcome_record_ttl_s"):
        Settings(outcome_record_ttl_s=600, sink_flush_interval_s=61)
    assert Settings(outcome_record_ttl_s=2, sink_flush_interval_s=0.2).outcome_record_ttl_s == 2
    assert Settings().outcome_record_ttl_s == 600 <= Settings().outcome_window_s


def test_exactly_once_is_refused_on_the_faust_engine_with_the_reason() -> None:
    with pytest.raises(SettingsError, match=r"aiokafka engine only.*faust-streaming.*#517"):
        Settings(engine="faust", delivery="exactly_once")
    assert Settings().delivery == "at_least_once"
    assert Settings(engine="aiokafka", delivery="exactly_once").delivery == "exactly_once"
