"""Row shapes: a decision and its envelope become one proposition_log row; samples one metric row."""

from __future__ import annotations

from dataclasses import replace

from stream_engine.models import Alert, Decision, Envelope, Proposition
from stream_engine.sinks.clickhouse.rows import LOG_COLUMNS, log_row, metric_row


def test_log_row_from_decision_and_envelope() -> None:
    alert = Alert(id="a1", type="scam", timestamp=1.0, severity="high", source="mail")
    envelope = Envelope(alert=alert, key="k1", partition=3, offset=42, received_ns=1_700_000_000_123_456_789)
    decision = Decision(
        alert_id="a1", alert_type="scam", key="k1", mode="auto", action="block", confidence=0.95,
        propositions=[Proposition("block", 0.95, "known pattern")], cache_tier="redis", latency_ms=2.5,
        decided_at=1_700_000_000.25, reason=None,
    )  # fmt: skip
    row = log_row(decision, envelope, "high", "mail", batch_size=7, worker="w9")
    assert len(row) == len(LOG_COLUMNS)
    assert (row.topic, row.origin, row.attempt) == ("", "api", "w9@1700000000123456789")  # no topic: the HTTP API
    streamed = log_row(decision, replace(envelope, topic="alerts"), "high", "mail", batch_size=7, worker="w9")
    assert (streamed.topic, streamed.origin, streamed.partition, streamed.offset) == ("alerts", "stream", 3, 42)
    assert log_row(decision, envelope, "high", "mail", 7, "w9", attempt="txn-7").attempt == "txn-7"
    assert row.received_at_ms == 1_700_000_000_123
    assert row.decided_at_ms == 1_700_000_000_250
    assert (row.partition, row.offset, row.batch_size, row.worker) == (3, 42, 7, "w9")
    assert row.propositions == '[{"action":"block","confidence":0.95,"rationale":"known pattern"}]'


def test_metric_row_summarises_samples() -> None:
    m = metric_row(1.5, "redis", "scam", "w", [1.0, 3.0, 2.0])
    assert (m.ts_us, m.count, m.sum_ms, m.max_ms) == (1_500_000, 3, 6.0, 3.0)
