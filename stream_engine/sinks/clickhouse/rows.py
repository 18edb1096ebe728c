"""Row shapes written to ClickHouse, in table column order.

Rows are NamedTuples: as cheap to build as a tuple on the hot path, readable by name in tests,
and they transpose into columns with ``zip(*rows)`` for columnar (Native) inserts. Times are kept
as integers (epoch milliseconds / microseconds) so the journal stores them exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

from stream_engine.models import Decision, Envelope


class LogRow(NamedTuple):
    """One decision = one row of ``proposition_log`` (the newest per alert) and of
    ``decision_audit`` (every published decision).

    ``topic``/``partition``/``offset`` say where the alert was consumed (``origin`` ``stream``);
    HTTP API rows have no source (``origin`` ``api``, topic ``""``). ``attempt`` names the
    processing that published the decision: a redelivered alert gets another attempt.
    """

    alert_id: str
    alert_type: str
    key: str
    severity: str
    source: str
    received_at_ms: int
    decided_at_ms: int
    mode: str
    action: str | None
    confidence: float | None
    cache_tier: str
    latency_ms: float
    batch_size: int
    partition: int
    offset: int
    worker: str
    propositions: str  # JSON array of {action, confidence, rationale}
    reason: str | None
    engine_version: str
    topic: str = ""
    origin: str = "stream"  # stream | api
    attempt: str = ""


class MetricRow(NamedTuple):
    """One stage of one batch (per alert type) = one row of ``latency_metrics``.

    Per batch rather than per alert: a 500-alert batch costs ~7 rows instead of 3500, and
    count/sum/max still give mean and worst case per stage; per-alert end-to-end percentiles
    come from ``proposition_log.latency_ms``.
    """

    ts_us: int  # batch time, epoch microseconds (part of the dedup key: µs keeps batches apart)
    stage: str
    alert_type: str
    worker: str
    count: int
    sum_ms: float
    max_ms: float


LOG_COLUMNS: tuple[str, ...] = (
    "alert_id", "alert_type", "key", "severity", "source", "received_at", "decided_at", "mode", "action",
    "confidence", "cache_tier", "latency_ms", "batch_size", "partition", "offset", "worker", "propositions",
    "reason", "engine_version", "topic", "origin", "attempt",
)  # fmt: skip
METRIC_COLUMNS: tuple[str, ...] = ("ts", "stage", "alert_type", "worker", "count", "sum_ms", "max_ms")
# The tables' column types (schema.py), so an insert needs no DESCRIBE round trip first;
# tests/integration/test_clickhouse_sink.py checks them against the migrated tables.
LOG_TYPES: tuple[str, ...] = (
    "String", "LowCardinality(String)", "String", "LowCardinality(String)", "LowCardinality(String)",
    "DateTime64(3, 'UTC')", "DateTime64(3, 'UTC')", "LowCardinality(String)", "Nullable(String)",
    "Nullable(Float32)", "LowCardinality(String)", "Float32", "UInt32", "UInt16", "UInt64",
    "LowCardinality(String)", "String", "Nullable(String)", "LowCardinality(String)", "LowCardinality(String)",
    "LowCardinality(String)", "String",
)  # fmt: skip
METRIC_TYPES: tuple[str, ...] = (
    "DateTime64(6, 'UTC')", "LowCardinality(String)", "LowCardinality(String)", "LowCardinality(String)",
    "UInt32", "Float64", "Float32",
)  # fmt: skip


def log_row(
    decision: Decision,
    envelope: Envelope,
    severity: str,
    source: str,
    batch_size: int,
    worker: str,
    attempt: str | None = None,
) -> LogRow:
    """``attempt`` defaults to this worker's processing of the batch (worker + receive time), so a
    redelivery of the same alert, even by the same worker, is another attempt."""
    return LogRow(
        decision.alert_id,
        decision.alert_type,
        decision.key,
        severity,
        source,
        envelope.received_ns // 1_000_000,
        int(decision.decided_at * 1000),
        decision.mode,
        decision.action,
        decision.confidence,
        decision.cache_tier,
        decision.latency_ms,
        batch_size,
        envelope.partition,
        envelope.offset,
        worker,
        orjson.dumps(decision.propositions).decode(),
        decision.reason,
        decision.engine_version,
        envelope.topic,
        "stream" if envelope.topic else "api",
        attempt if attempt is not None else f"{worker}@{envelope.received_ns}",
    )


def metric_row(ts: float, stage: str, alert_type: str, worker: str, samples_ms: list[float]) -> MetricRow:
    """Summarise one stage's samples of one batch (``samples_ms`` must not be empty)."""
    return MetricRow(int(ts * 1_000_000), stage, alert_type, worker, len(samples_ms), sum(samples_ms), max(samples_ms))
