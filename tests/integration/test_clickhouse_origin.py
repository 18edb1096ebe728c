"""Decisions of the HTTP API are logged with origin ``api`` (in the append-only ``decision_audit``)
and never replace the row the stream logged for the same alert in ``proposition_log`` — not at
merge time, not under FINAL, not in the ``logs`` query — on the real engine (chDB)."""

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
from tests.integration.clickhouse_data import unique_database

pytestmark = pytest.mark.integration


def decided(alert_id: str, mode: str, action: str, topic: str, offset: int) -> tuple[Envelope, Decision]:
    """A decision as the stream (``topic`` set) or the HTTP API (``topic`` "") makes it."""
    alert = Alert(alert_id, "scam", "2030-01-01T00:00:00Z", "high", "fraud-engine", {"pattern": "p", "merchant": "m"})
    partition = 3 if topic else 65535
    envelope = Envelope(alert, "scam|pattern=p|merchant=m", partition, offset, time.time_ns(), topic)
    props = [Proposition(action, 0.95)]
    return envelope, Decision(alert_id, "scam", envelope.key, mode, action, 0.95, props, "service", 2.0, time.time())  # type: ignore[arg-type]


async def write(log: DecisionLog, pairs: list[tuple[Envelope, Decision]]) -> None:
    stages = STAGES if pairs[0][0].topic else API_STAGES
    await log.write([e for e, _ in pairs], [d for _, d in pairs], StageTimes(), pairs[0][0].received_ns, stages)


async def log_both(ch_url: str, database: str, journal: Path) -> None:
    sink = ClickHouseSink(lambda: connect(ch_url, database), journal, flush_rows=1, flush_interval_s=0.05)
    await sink.start()
    log = DecisionLog(sink, "w1")
    await write(log, [decided("x", "auto", "block_merchant", "alerts", 41)])
    # Later, an API caller posts alerts with the same id (and one the stream never saw).
    await write(log, [decided("x", "escalate", "refund", "", 0), decided("api-only", "review", "watch", "", 0)])
    await sink.stop()


async def test_an_api_decision_never_replaces_the_stream_row_of_its_alert(
    ch_url: str, ch_database: str, ch_client: Any, tmp_path: Path
) -> None:
    await log_both(ch_url, ch_database, tmp_path / "j")

    ch_client.command("OPTIMIZE TABLE proposition_log FINAL")  # every replacement that can happen, happens
    logged = ch_client.query("SELECT alert_id, origin, mode, action FROM proposition_log FINAL ORDER BY alert_id").result_rows
    assert logged == [("x", "stream", "auto", "block_merchant")]
    audit = ch_client.query("SELECT alert_id, origin, mode FROM decision_audit ORDER BY alert_id, origin").result_rows
    assert audit == [("api-only", "api", "review"), ("x", "api", "escalate"), ("x", "stream", "auto")]

    rows = queries.get_proposition_logs_batch(ch_client, ["x", "api-only", "absent"])
    assert (rows["x"]["origin"], rows["x"]["action"]) == ("stream", "block_merchant")
    assert (rows["api-only"]["origin"], rows["api-only"]["action"]) == ("api", "watch")
    assert set(rows) == {"x", "api-only"}


async def test_a_database_of_the_previous_schema_upgrades(ch_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    database = unique_database()
    admin = connect(ch_url, None)
    try:
        with monkeypatch.context() as m:
            m.setattr(schema, "MIGRATIONS", tuple(x for x in schema.MIGRATIONS if x.version < 5))
            schema.migrate(admin, database, ttl_days=3650)
        assert schema.migrate(admin, database, ttl_days=3650) == [x.version for x in schema.MIGRATIONS if x.version >= 5]
        assert schema.migrate(admin, database, ttl_days=3650) == []
        await log_both(ch_url, database, tmp_path / "j")
        client = connect(ch_url, database)
        assert client.query("SELECT alert_id, origin FROM proposition_log FINAL").result_rows == [("x", "stream")]
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {database}")
