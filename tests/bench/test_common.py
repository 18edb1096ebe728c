"""What a result records about its run: commit, settings against the defaults, command, secrets masked."""

from __future__ import annotations

import os

import pytest

from benchmarks.common import BenchResult, Stopwatch, current_command, git_state, mask, settings_record
from benchmarks.services import NO_LATENCY, SERVICE, ServiceModel, service_label, service_of
from stream_engine.settings import SecretStr, Settings


@pytest.fixture(autouse=True)
def code_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite may point at other services through STREAM_ENGINE_* variables: not here."""
    for name in [n for n in os.environ if n.startswith("STREAM_ENGINE_")]:
        monkeypatch.delenv(name)


def test_settings_record_lists_every_non_default_and_only_the_names_of_isolation_settings() -> None:
    s = Settings().with_overrides(batch_concurrency=4, lru_ttl_s=1.5, topic_alerts="run.alerts", app_id="run",
                                  api_token=SecretStr("s3cret"), clickhouse_url="http://u:pw@host:8123")
    record = settings_record(s)
    assert record["non_default"] == {"batch_concurrency": 4, "clickhouse_url": "http://u:***@host:8123", "lru_ttl_s": 1.5}
    assert record["isolation"] == ["api_token", "app_id", "topic_alerts"]
    assert "s3cret" not in str(record) and "pw@" not in str(record)


def test_settings_record_names_the_runs_data_directory_instead_of_spelling_it_out(tmp_path: object) -> None:
    s = Settings().with_overrides(data_dir=tmp_path, clickhouse_url=f"chdb://{tmp_path}/clickhouse")
    assert settings_record(s) == {"non_default": {"clickhouse_url": "chdb://$DATA_DIR/clickhouse"}, "isolation": ["data_dir"]}


def test_settings_record_compares_with_the_code_defaults_not_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_ENGINE_BATCH_MAX", "250")
    assert settings_record(Settings())["non_default"] == {"batch_max": 250}


def test_the_command_carries_the_environments_settings_with_secrets_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_ENGINE_BATCH_MAX", "250")
    monkeypatch.setenv("STREAM_ENGINE_API_TOKEN", "s3cret")
    monkeypatch.setenv("STREAM_ENGINE_CLICKHOUSE_URL", "http://u:pw@h:8123")
    command = current_command()
    assert "STREAM_ENGINE_BATCH_MAX=250" in command and "STREAM_ENGINE_API_TOKEN='***'" in command
    assert "s3cret" not in command and "pw@" not in command
    assert mask("redis_url", "redis://:pw@h:6379/0") == "redis://:***@h:6379/0" and mask("kafka_bootstrap", "h:9092") == "h:9092"


def test_a_finished_result_records_commit_load_and_settings() -> None:
    watch = Stopwatch()
    result = watch.finish(BenchResult("x", "", {}, {}), settings=Settings().with_overrides(batch_concurrency=3))
    assert result.git == git_state() and len(result.git["commit"]) == 40 and isinstance(result.git["dirty"], bool)
    assert result.settings["non_default"] == {"batch_concurrency": 3}
    assert len(result.machine["loadavg_at_start"]) == 3 and len(result.machine["loadavg_at_end"]) == 3
    assert result.machine["nproc"] and result.command


def test_the_service_model_charges_per_request_and_per_item_and_compresses_with_time() -> None:
    assert SERVICE.per_item_ms > 0 and SERVICE.median_ms == 20.0 and SERVICE.p99_ms == 50.0
    assert SERVICE.args() == ["--latency-median-ms", "20.0", "--latency-p99-ms", "50.0", "--latency-per-item-ms",
                              repr(SERVICE.per_item_ms)]
    assert NO_LATENCY.off and NO_LATENCY.args() == []
    assert ServiceModel(20, 50, 0.2).scaled(10) == ServiceModel(2.0, 5.0, 0.02)
    # Results older than issue 17 named a per-request latency only.
    assert service_of({"service_median_ms": 20.0, "service_p99_ms": 50.0}) == ServiceModel(20.0, 50.0, 0.0)
    assert service_of({"service": SERVICE.describe()}) == SERVICE and service_of({}) is None
    assert "before issue 17" in service_label({"latency_median_ms": 20.0})
