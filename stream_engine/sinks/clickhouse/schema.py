"""Versioned, idempotent schema migrations (``stream-engine clickhouse migrate``).

Each migration is a list of statements templated with ``$db`` and ``$ttl_days`` (DDL cannot take
bound parameters; both values are validated). Applied versions are recorded in
``schema_migrations``; re-running applies nothing. Statements use IF NOT EXISTS so a migration
interrupted half way is safe to re-run.

Deduplication: ingestion is at-least-once (Kafka redelivery after a crash, journal replay), so
``proposition_log`` and ``latency_metrics`` are ReplacingMergeTrees whose ORDER BY is the identity
of a row. Background merges collapse duplicates eventually, and only within a partition;
readers that need exact answers use FINAL (which also collapses across partitions) or
``LIMIT 1 BY alert_id``. The per-minute rollup is fed at insert time, so it counts a duplicate
twice: it is the fast, approximate path.
"""

from __future__ import annotations

from dataclasses import dataclass
from string import Template
from typing import TYPE_CHECKING

from stream_engine.sinks.clickhouse.client import check_identifier

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "proposition_log",
        (
            """
CREATE TABLE IF NOT EXISTS $db.proposition_log
(
    alert_id       String,
    alert_type     LowCardinality(String),
    key            String,
    severity       LowCardinality(String),
    source         LowCardinality(String),
    received_at    DateTime64(3, 'UTC'),
    decided_at     DateTime64(3, 'UTC'),
    mode           LowCardinality(String),
    action         Nullable(String),
    confidence     Nullable(Float32),
    cache_tier     LowCardinality(String),
    latency_ms     Float32,
    batch_size     UInt32,
    partition      UInt16,
    offset         UInt64,
    worker         LowCardinality(String),
    propositions   String,            -- JSON array [{action, confidence, rationale}]
    reason         Nullable(String),
    engine_version LowCardinality(String),
    INDEX idx_alert_id alert_id TYPE bloom_filter GRANULARITY 4
)
-- The newest decision for an alert wins when duplicates collapse.
ENGINE = ReplacingMergeTree(decided_at)
PARTITION BY toDate(received_at)
-- ORDER BY is the dedup key, so it is the alert's identity only: a redelivered alert gets a new
-- received_at and decided_at, and any time column here would keep both copies. alert_type first
-- serves the per-type temporal queries; the time range is pruned by the daily partitions.
ORDER BY (alert_type, alert_id)
TTL toDateTime(received_at) + INTERVAL $ttl_days DAY
""",
        ),
    ),
    Migration(
        2,
        "latency_metrics",
        (
            """
CREATE TABLE IF NOT EXISTS $db.latency_metrics
(
    ts         DateTime64(6, 'UTC'),   -- batch time; µs keeps two batches of one worker apart
    stage      LowCardinality(String), -- decode, lru, redis, service, produce, sink, end_to_end
    alert_type LowCardinality(String),
    worker     LowCardinality(String),
    count      UInt32,
    sum_ms     Float64,
    max_ms     Float32
)
-- One row per stage per alert type per batch; a replayed batch collapses onto itself.
ENGINE = ReplacingMergeTree
PARTITION BY toDate(ts)
ORDER BY (stage, alert_type, worker, ts)
TTL toDateTime(ts) + INTERVAL $ttl_days DAY
""",
        ),
    ),
    Migration(
        3,
        "proposition_minute rollup",
        (
            """
CREATE TABLE IF NOT EXISTS $db.proposition_minute
(
    alert_type    LowCardinality(String),
    minute        DateTime('UTC'),
    decisions     AggregateFunction(count),
    latency       AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), Float32),
    latency_sum   AggregateFunction(sum, Float32),
    tier_lru      AggregateFunction(countIf, UInt8),
    tier_redis    AggregateFunction(countIf, UInt8),
    tier_service  AggregateFunction(countIf, UInt8),
    tier_none     AggregateFunction(countIf, UInt8),
    mode_auto     AggregateFunction(countIf, UInt8),
    mode_review   AggregateFunction(countIf, UInt8),
    mode_escalate AggregateFunction(countIf, UInt8)
)
ENGINE = AggregatingMergeTree
PARTITION BY toDate(minute)
ORDER BY (alert_type, minute)
TTL minute + INTERVAL $ttl_days DAY
""",
            """
CREATE MATERIALIZED VIEW IF NOT EXISTS $db.proposition_minute_mv TO $db.proposition_minute AS
SELECT
    alert_type,
    toStartOfMinute(received_at)                           AS minute,
    countState()                                           AS decisions,
    quantilesTDigestState(0.5, 0.95, 0.99)(latency_ms)     AS latency,
    sumState(latency_ms)                                   AS latency_sum,
    countIfState(cache_tier = 'lru')                       AS tier_lru,
    countIfState(cache_tier = 'redis')                     AS tier_redis,
    countIfState(cache_tier = 'service')                   AS tier_service,
    countIfState(cache_tier = 'none')                      AS tier_none,
    countIfState(mode = 'auto')                            AS mode_auto,
    countIfState(mode = 'review')                          AS mode_review,
    countIfState(mode = 'escalate')                        AS mode_escalate
FROM $db.proposition_log
GROUP BY alert_type, minute
""",
        ),
    ),
    Migration(
        4,
        "proposition_log origin in the row identity",
        (
            # stream | api (the worker's HTTP API). In ORDER BY, the dedup key, so an API decision
            # for an alert id never replaces the stream's row for it. A column added to the
            # sorting key may not have a default: rows from before read origin ''.
            """
ALTER TABLE $db.proposition_log
    ADD COLUMN IF NOT EXISTS origin LowCardinality(String),
    MODIFY ORDER BY (alert_type, alert_id, origin)
""",
        ),
    ),
)


def applied_versions(client: Client, database: str) -> set[int]:
    db = check_identifier(database)
    client.command(
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
        "(version UInt32, name String, applied_at DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY version"
    )
    return {int(row[0]) for row in client.query(f"SELECT DISTINCT version FROM {db}.schema_migrations").result_rows}


def migrate(client: Client, database: str, ttl_days: int) -> list[int]:
    """Create the database and apply pending migrations in order; returns the versions applied."""
    db = check_identifier(database)
    if not isinstance(ttl_days, int) or ttl_days < 1:
        raise ValueError(f"ttl_days must be a positive int, got {ttl_days!r}")
    client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    done = applied_versions(client, db)
    applied: list[int] = []
    for migration in sorted(MIGRATIONS, key=lambda m: m.version):
        if migration.version in done:
            continue
        for statement in migration.statements:
            client.command(Template(statement).substitute(db=db, ttl_days=ttl_days))
        client.command(
            f"INSERT INTO {db}.schema_migrations (version, name, applied_at) "
            "VALUES ({version:UInt32}, {name:String}, now64(3))",
            parameters={"version": migration.version, "name": migration.name},
        )
        applied.append(migration.version)
    return applied
