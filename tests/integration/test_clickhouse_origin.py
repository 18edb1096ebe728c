"""Decisions of the HTTP API are logged with origin ``api`` and never replace the row the stream
logged for the same alert — not at merge time, not under FINAL, not in the ``logs`` query — on
the real engine (chDB)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from stream_engine.models import API_STAGES, STAGES, Alert, Decision, Envelope, Proposition, StageTimes
from stream_engine.pipeline import DecisionLog
from stream_engine.sinks.clickhouse import queries, schema
from stream_engine.sinks.clickhouse.client import connect
from stream_engine.sinks.clickhouse.sink import ClickHouseSink
from tests.integration.clickhouse_data import make_rows, unique_database

pytestmark = pytest.mark.integration


def decided(alert_id: str, mode: str, action: str, partition: int, offset: int) -> tuple[Envelope, Decision]:
    alert = Alert(alert_id, "scam", "2030-01-01T00:00:00Z", "high", "fraud-engine", {"pattern": "p", "merchant": "m"})
    now = time.time()
    envelope = Envelope(alert, "scam|pattern=p|merchant=m", partition, offset, time.time_ns())
    decision = Decision(alert_id, "scam", envelope.key, mode, action, 0.95, [Proposition(action, 0.95)], "service", 2.0, now)  # type: ignore[arg-type]
    return envelope, decision


async def write(log: DecisionLog, pairs: list[tuple[Envelope, Decision]], origin: str) -> None:
    stages = STAGES if origin == "stream" else API_STAGES
    await log.write([e for e, _ in pairs], [d for _, d in pairs], StageTimes(), pairs[0][0].received_ns, stages, origin=origin)


async def test_an_api_decision_never_replaces_the_stream_row_of_its_alert(
    ch_url: str, ch_database: str, ch_client: Any, tmp_path: Path
) -> None:
    sink = ClickHouseSink(lambda: connect(ch_url, ch_database), tmp_path / "j", flush_rows=1, flush_interval_s=0.05)
    await sink.start()
    log = DecisionLog(sink, "w1")
    await write(log, [decided("x", "auto", "block_merchant", 3, 41), decided("redelivered", "auto", "block", 3, 42)], "stream")
    await write(log, [decided("redelivered", "auto", "block", 3, 42)], "stream")  # at-least-once: collapses
    # Later, an API caller posts alerts with the same ids (and one the stream never saw).
    await write(log, [decided("x", "escalate", "refund", 65535, 0), decided("api-only", "review", "watch", 65535, 0)], "api")
    await sink.stop()

    ch_client.command("OPTIMIZE TABLE proposition_log FINAL")  # every replacement that can happen, happens
    sql = "SELECT alert_id, origin, mode, action, partition FROM proposition_log FINAL ORDER BY alert_id, origin"
    rows = ch_client.query(sql).result_rows
    assert rows == [
        ("api-only", "api", "review", "watch", 65535),
        ("redelivered", "stream", "auto", "block", 3),
        ("x", "api", "escalate", "refund", 65535),
        ("x", "stream", "auto", "block_merchant", 3),
    ]
    logged = queries.get_proposition_logs_batch(ch_client, ["x", "api-only", "redelivered"])
    assert (logged["x"]["origin"], logged["x"]["action"], logged["x"]["partition"]) == ("stream", "block_merchant", 3)
    assert logged["api-only"]["origin"] == "api"


def test_a_database_from_before_origin_upgrades_and_keeps_its_rows(ch_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    database = unique_database()
    admin = connect(ch_url, None)
    try:
        monkeypatch.setattr(schema, "MIGRATIONS", tuple(m for m in schema.MIGRATIONS if m.version <= 3))
        schema.migrate(admin, database, ttl_days=3650)
        old = connect(ch_url, database)
        old_rows = [r[:-1] for r in make_rows(5)]  # the 19 columns of the old table
        old.insert("proposition_log", old_rows, column_names=[c for c in old.query("SELECT * FROM proposition_log LIMIT 0").column_names])
        monkeypatch.undo()

        assert schema.migrate(admin, database, ttl_days=3650) == [4]
        assert schema.migrate(admin, database, ttl_days=3650) == []
        sorting_key = old.query(
            "SELECT sorting_key FROM system.tables WHERE database = {db:String} AND name = 'proposition_log'", parameters={"db": database}
        ).result_rows[0][0]
        assert sorting_key == "alert_type, alert_id, origin"
        assert sorted(old.query("SELECT alert_id, origin FROM proposition_log").result_rows) == sorted((r[0], "") for r in old_rows)
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {database}")
