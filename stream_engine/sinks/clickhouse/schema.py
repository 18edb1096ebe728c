"""Versioned, idempotent schema migrations (``stream-engine clickhouse migrate``).

Each migration is a list of statements templated with ``$db``, ``$ttl_days`` and ``$dedup`` (DDL
cannot take bound parameters; the values are validated or ours). Applied versions are recorded in
``schema_migrations``; re-running applies nothing. Statements use IF NOT EXISTS so a migration
interrupted half way is safe to re-run.

Deduplication, in two layers:

* Inserts are exactly once. The sink inserts one block per sealed journal segment into
  ``decision_audit`` (and ``latency_metrics``) with an ``insert_deduplication_token`` (the
  segment's id): a retried insert, or a segment replayed after a crash between "inserted" and
  "deleted", is dropped by ClickHouse. Materialized views carry each block on to
  ``proposition_log`` and from there to the ``proposition_minute`` rollup; the sink sets
  ``deduplicate_blocks_in_dependent_materialized_views`` so the view targets drop a re-sent block
  too (without it ClickHouse feeds a view with the blocks its source table dropped), and a retry
  after an insert that failed half way (source written, a view target not) completes the target.
  Non-replicated MergeTrees only remember tokens with ``non_replicated_deduplication_window`` > 0
  (default 0); ReplicatedMergeTree always does (``replicated_deduplication_window``). Both
  settings come from :func:`dedup_setting`, the one place a cluster rendering takes them from.
* Alerts are decided at least once unless the engine runs exactly-once: a Kafka redelivery after
  a crash, or an HTTP API call with the same id, is another decision. ``decision_audit`` keeps
  every one (append-only: what the decisions topic carried, with its attempt);
  ``proposition_log`` is the one-row-per-alert view analysts query, a ReplacingMergeTree whose
  ORDER BY is the alert's identity, so the newest decision wins when a merge collapses them
  (exact reads before that use FINAL or ``LIMIT 1 BY alert_id``). The per-minute rollup is fed
  at insert time, so it counts a redelivered alert twice: it is the fast, approximate path.
"""

from __future__ import annotations

from dataclasses import dataclass
from string import Template
from typing import TYPE_CHECKING

from stream_engine.sinks.clickhouse.client import check_identifier

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client


# How many recent insert blocks a table remembers the token of (per table; per partition for the
# replicated engines). A replay re-sends a segment within minutes of its first insert, after at
# most a few hundred other blocks; 10,000 leaves room for many workers and a long outage.
DEDUP_WINDOW_BLOCKS = 10_000


def dedup_setting(replicated: bool = False) -> str:
    """The table setting that makes ``insert_deduplication_token`` work, for a table's SETTINGS."""
    name = "replicated_deduplication_window" if replicated else "non_replicated_deduplication_window"
    return f"{name} = {DEDUP_WINDOW_BLOCKS}"


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
        "exactly-once inserts: row source and attempt, dedup windows, decision_audit feeding proposition_log",
        (
            # Existing rows predate sources: topic '' and origin from the API's pseudo-partition.
            """
ALTER TABLE $db.proposition_log
    ADD COLUMN IF NOT EXISTS topic   LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS origin  LowCardinality(String) DEFAULT if(partition = 65535, 'api', 'stream'),
    ADD COLUMN IF NOT EXISTS attempt String DEFAULT ''
""",
            "ALTER TABLE $db.proposition_log MODIFY SETTING $dedup",
            "ALTER TABLE $db.latency_metrics MODIFY SETTING $dedup",
            "ALTER TABLE $db.proposition_minute MODIFY SETTING $dedup",
            """
CREATE TABLE IF NOT EXISTS $db.decision_audit
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
    propositions   String,
    reason         Nullable(String),
    engine_version LowCardinality(String),
    topic          LowCardinality(String),  -- '' for the HTTP API
    origin         LowCardinality(String),  -- stream | api
    attempt        String,                  -- the processing that published it
    INDEX idx_alert_id alert_id TYPE bloom_filter GRANULARITY 4
)
-- Append-only: one row per published decision. A redelivery or an API call with the same id adds
-- a row here (its own attempt) instead of replacing the one the decisions topic carried.
ENGINE = MergeTree
PARTITION BY toDate(received_at)
ORDER BY (alert_type, alert_id, decided_at)
TTL toDateTime(received_at) + INTERVAL $ttl_days DAY
SETTINGS $dedup
""",
            # The sink inserts decision_audit only; ClickHouse copies each block into the view
            # analysts query (and from there into the rollup), deduplicated with the same token.
            """
CREATE MATERIALIZED VIEW IF NOT EXISTS $db.decision_audit_mv TO $db.proposition_log AS
SELECT alert_id, alert_type, key, severity, source, received_at, decided_at, mode, action, confidence, cache_tier, latency_ms,
       batch_size, partition, offset, worker, propositions, reason, engine_version, topic, origin, attempt
FROM $db.decision_audit
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
            client.command(Template(statement).substitute(db=db, ttl_days=ttl_days, dedup=dedup_setting()))
        client.command(
            f"INSERT INTO {db}.schema_migrations (version, name, applied_at) "
            "VALUES ({version:UInt32}, {name:String}, now64(3))",
            parameters={"version": migration.version, "name": migration.name},
        )
        applied.append(migration.version)
    return applied
