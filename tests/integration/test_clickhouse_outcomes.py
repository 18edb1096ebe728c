"""The outcomes table and its queries (migration 6), on the embedded engine, against arithmetic
done here on the rows inserted."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from stream_engine.settings import Settings
from stream_engine.sinks.clickhouse import queries
from stream_engine.sinks.clickhouse.analytics import BadParams, LimitedClient, QueryLimits, build_query
from stream_engine.sinks.clickhouse.client import connect
from stream_engine.sinks.clickhouse.rows import LogRow, OutcomeRow, insert_outcome_rows
from stream_engine.sinks.clickhouse.sink import ClickHouseSink

pytestmark = pytest.mark.integration

T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(minutes=50)
T0_MS = int(T0.timestamp() * 1000)
WINDOW = (T0, T0 + timedelta(minutes=5))
LIMITS = QueryLimits.from_settings(Settings())  # the analytics limits every API/CLI query runs under
PROPS = '[{"action":"retry_job","confidence":0.92,"rationale":"x"}]'


def decision_row(alert_id: str, i: int, mode: str, action: str) -> LogRow:
    at = T0_MS + i * 100
    reason = None if mode == "auto" else "below_threshold"
    return LogRow(alert_id, "ci_failure", "ci_failure|k", "high", "ci", at, at + 2, mode, action, 0.92, "lru", 1.0, 10,
                  0, i, "w1", PROPS, reason, "0.1.0")  # fmt: skip


def outcome(row: LogRow, verdict: str, after_s: float, action: str | None = None, offset: int = 0) -> OutcomeRow:
    return OutcomeRow(row.alert_id, verdict, action or row.action, 1 if action else 0, "ops", "", row.decided_at_ms + int(after_s * 1000),
                      row.decided_at_ms + int(after_s * 1000) + 5, row.alert_type, row.key, row.mode, row.action,
                      row.decided_at_ms, "w1", "outcomes", 0, offset)  # fmt: skip


@pytest.fixture
async def loaded(ch_url: str, ch_database: str, ch_client: Any, tmp_path: Path) -> dict[str, Any]:
    auto = [decision_row(f"a{i}", i, "auto", "retry_job") for i in range(20)]
    review = [decision_row(f"r{i}", 20 + i, "review", "notify_owner") for i in range(10)]
    sink = ClickHouseSink(lambda: connect(ch_url, ch_database), tmp_path / "j", flush_rows=1000, flush_interval_s=0.05)
    await sink.start()
    await sink.write(auto + review, [])
    await sink.stop()
    verdicts = (
        [outcome(auto[i], "rejected", 10 * (i + 1)) for i in range(5)]  # 10..50 s
        + [outcome(auto[i], "accepted", 60) for i in range(5, 15)]
        + [outcome(auto[15], "false_positive", 60), outcome(auto[16], "resolved", 60)]
        + [outcome(review[i], "accepted", 120) for i in range(3)]
        + [outcome(auto[0], "accepted", 70, action="page")]  # a verdict on another action than the decision's
    )
    insert_outcome_rows(ch_client, verdicts, "batch-1")
    insert_outcome_rows(ch_client, verdicts[:3], "batch-2")  # a redelivery: FINAL collapses it
    return {"auto": auto, "review": review, "verdicts": verdicts}


def test_acceptance_auto_precision_and_time_to_outcome_per_type_and_action(loaded: dict[str, Any], ch_client: Any) -> None:
    rows = {r["action"]: r for r in queries.outcome_stats(ch_client, *WINDOW, interval="1h")}
    retry, notify, page = rows["retry_job"], rows["notify_owner"], rows["page"]
    assert (retry["decisions"], retry["auto"]) == (20, 20)
    assert (retry["accepted"], retry["rejected"], retry["false_positive"], retry["resolved"]) == (10, 5, 1, 1)
    assert retry["acceptance_rate"] == pytest.approx(10 / 16)
    assert (retry["auto_judged"], retry["auto_wrong"]) == (16, 6)
    assert retry["auto_precision"] == pytest.approx(1 - 6 / 16)
    # Seconds from decision to verdict over the 17 verdicts on retry_job: 10, 20, 30, 40, 50, then 60 twelve times.
    assert retry["to_outcome_p50_s"] == pytest.approx(60.0) and retry["to_outcome_p95_s"] == pytest.approx(60.0)
    assert (notify["decisions"], notify["auto"], notify["accepted"], notify["acceptance_rate"]) == (10, 0, 3, 1.0)
    assert notify["auto_judged"] == 0 and notify["auto_precision"] is None
    # The verdict on "page" (not the decision's action) is an acceptance of page, not a verdict on the auto action.
    assert (page["decisions"], page["accepted"], page["auto_judged"]) == (0, 1, 0)


def test_recent_lists_the_newest_review_decisions_with_their_verdicts(loaded: dict[str, Any], ch_client: Any) -> None:
    recent = queries.recent_decisions(ch_client, *WINDOW, ["review", "escalate"], limit=5)
    assert [r["alert_id"] for r in recent] == ["r9", "r8", "r7", "r6", "r5"]
    assert recent[0]["propositions"] == [{"action": "retry_job", "confidence": 0.92, "rationale": "x"}]
    three = {r["alert_id"]: r for r in queries.recent_decisions(ch_client, *WINDOW, ["review"], limit=10)}
    assert [v["outcome"] for v in three["r0"]["verdicts"]] == ["accepted"] and three["r5"]["verdicts"] == []
    autos = queries.recent_decisions(ch_client, *WINDOW, ["auto"], limit=50)
    a0 = next(r for r in autos if r["alert_id"] == "a0")
    assert sorted((v["outcome"], v["action"]) for v in a0["verdicts"]) == [("accepted", "page"), ("rejected", "retry_job")]


def test_the_analytics_dispatcher_serves_both_and_checks_their_parameters(loaded: dict[str, Any], ch_client: Any) -> None:
    params = {"from": WINDOW[0].isoformat(), "to": WINDOW[1].isoformat()}
    stats = build_query("outcomes", params | {"interval": "1h"}, LIMITS)(ch_client)
    assert {r["action"] for r in stats} == {"retry_job", "notify_owner", "page"}
    recent = build_query("recent", params | {"modes": "review", "limit": "2"}, LIMITS)(ch_client)
    assert [r["alert_id"] for r in recent] == ["r9", "r8"]
    with pytest.raises(BadParams):
        build_query("recent", params | {"modes": "review,nope"}, LIMITS)


def test_stream_engine_query_outcomes_prints_them(
    loaded: dict[str, Any], ch_url: str, ch_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import orjson

    from stream_engine.cli import main

    base = ["--clickhouse-url", ch_url, "--clickhouse-database", ch_database, "query"]
    window = ["--from", WINDOW[0].isoformat(), "--until", WINDOW[1].isoformat()]
    assert main([*base, "outcomes", *window, "--interval", "1h", "--json"]) == 0
    out = {r["action"]: r for r in orjson.loads(capsys.readouterr().out)}
    assert out["retry_job"]["auto_precision"] == pytest.approx(0.625)
    assert main([*base, "outcomes", *window, "--interval", "1h"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "auto_precision" in table[0].split() and len(table) == 2 + 3
    assert main([*base, "recent", *window, "--modes", "review", "--limit", "1", "--json"]) == 0
    assert [r["alert_id"] for r in orjson.loads(capsys.readouterr().out)] == ["r9"]


async def test_decision_records_finds_each_ids_latest_decision_within_the_window_in_one_primary_key_lookup(
    ch_url: str, ch_database: str, ch_client: Any, tmp_path: Path
) -> None:
    """What resolves a verdict once Redis's record of its decision expired (migration 7's
    decision_lookup, fed by decision_audit as the sink writes it)."""
    old = decision_row("old", 0, "auto", "retry_job")  # decided at T0: outside a window starting after it
    first = decision_row("again", 1, "auto", "retry_job")
    latest = decision_row("again", 5, "review", "notify_owner")._replace(origin="api", topic="")  # a later decision of it
    escalated = decision_row("esc", 2, "escalate", "")._replace(action=None, confidence=None)
    sink = ClickHouseSink(lambda: connect(ch_url, ch_database), tmp_path / "j", flush_rows=1000, flush_interval_s=0.05)
    await sink.start()
    await sink.write([old, first, escalated], [])
    await sink.write([latest], [])
    await sink.write([decision_row(f"x{i}", 10 + i, "auto", "retry_job") for i in range(5000)], [])  # granules to skip
    await sink.stop()
    limited = LimitedClient(ch_client, LIMITS.clickhouse_settings())
    found = queries.decision_records(limited, ["again", "esc", "old", "never"], since_ms=old.decided_at_ms + 1)  # type: ignore[arg-type]
    assert sorted(found) == [
        ("again", "ci_failure|k", "ci_failure", "notify_owner", "review", latest.decided_at_ms),
        ("esc", "ci_failure|k", "ci_failure", None, "escalate", escalated.decided_at_ms),
    ]
    assert [r[0] for r in queries.decision_records(limited, ["old"], since_ms=old.decided_at_ms)] == ["old"]  # type: ignore[arg-type]
    # The IN is a primary-key lookup: a few 1024-row granules, not the table's.
    plan = "\n".join(r[0] for r in ch_client.query(
        "EXPLAIN indexes = 1 SELECT key FROM decision_lookup WHERE alert_id IN ['again', 'esc']").result_rows)  # fmt: skip
    pk = plan[plan.index("PrimaryKey"):]
    selected, total = map(int, re.search(r"Granules: (\d+)/(\d+)", pk).groups())  # type: ignore[union-attr]
    assert total >= 5 and selected <= 2, plan
