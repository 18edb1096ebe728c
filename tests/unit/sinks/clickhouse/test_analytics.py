"""The one analytics dispatcher (API and CLI): bad parameters are refused with the reason."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from multidict import MultiDict

from stream_engine.settings import Settings
from stream_engine.sinks.clickhouse.analytics import BadParams, QueryLimits, build_query

NOW = datetime(2030, 1, 1, 12, tzinfo=UTC)
LIMITS = QueryLimits.from_settings(Settings())


@pytest.mark.parametrize(
    ("name", "params", "complaint"),
    [
        ("latency", {"interval": "7m"}, "interval"),
        ("latency", {"from": "yesterday"}, "from"),
        ("latency", {"exact": "maybe"}, "exact"),
        ("modes", {"from": "2030-01-02", "to": "2030-01-01"}, "from"),
        ("slowest", {"limit": "0"}, "limit"),
        ("slowest", {"limit": "ten"}, "limit"),
        ("logs", {}, "ids"),
        ("logs", {"ids": ","}, "ids"),
        ("nope", {}, "unknown query"),
    ],
)
def test_bad_analytics_params_are_refused_with_the_reason(name: str, params: dict[str, str], complaint: str) -> None:
    with pytest.raises(BadParams, match=complaint):
        build_query(name, MultiDict(params), LIMITS, now=NOW)


def test_good_analytics_params_build_a_query() -> None:
    assert callable(build_query("latency", MultiDict({"from": "1893456000", "interval": "5m", "exact": "false"}), LIMITS, now=NOW))
    assert callable(build_query("logs", MultiDict([("ids", "a,b"), ("ids", "c")]), LIMITS, now=NOW))
    assert callable(build_query("slowest", MultiDict({"limit": "5", "type": "scam"}), LIMITS, now=NOW))


def test_the_cli_flags_reach_the_same_checks(capsys: pytest.CaptureFixture[str]) -> None:
    from stream_engine.cli import main

    assert main(["query", "logs"]) == 2, "no --ids: refused before connecting"
    assert "ids: at least one alert id is required" in capsys.readouterr().out
    assert main(["query", "latency", "--interval", "7m"]) == 2
    assert "interval" in capsys.readouterr().out
    assert main(["query", "slowest", "--from", "2030-01-02", "--to", "2030-01-01"]) == 2
    assert "from: must be before to" in capsys.readouterr().out
