"""One typed settings object for every part of stream_engine.

Values come from, in increasing priority: defaults here, ``STREAM_ENGINE_*`` environment
variables (JSON for dicts/lists), and explicit overrides (CLI flags pass them as kwargs).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from stream_engine._settings_model import Field, SecretStr, SettingsError, TypedSettings, model_validator

__all__ = ["PROJECT_ROOT", "SecretStr", "Settings", "SettingsError", "settings_table"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_KEY_FIELDS: dict[str, list[str]] = {
    "ci_failure": ["repo", "job", "error_class"],
    "scam": ["pattern", "merchant"],
    "infra": ["service", "check"],
}


class Settings(TypedSettings):
    # Errors name the setting, never its value: a rejected value may be (or sit next to) a secret.
    env_prefix = "STREAM_ENGINE_"

    # --- where things live -------------------------------------------------------------
    data_dir: Path = Field(PROJECT_ROOT / ".data", description="Worker state: sink journal (and the engine's directory for chdb:// URLs).")
    stack_dir: Path = Field(PROJECT_ROOT / ".stack", description="Local stack: Kafka jars, broker logs, pids.")
    topics_dir: Path = Field(PROJECT_ROOT / "topics", description="Topic definitions and JSON Schemas.")

    # --- services ----------------------------------------------------------------------
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Shared proposition cache: redis://host:port/db, or a cluster as redis+cluster://host:port,host:port.",
    )
    clickhouse_url: str = Field(
        "",
        description="'' = the local stack's endpoint http://127.0.0.1:CLICKHOUSE_PORT; http(s)://user:pass@host:port "
        "a ClickHouse server; chdb://DIR the engine embedded in the process (one process per directory).",
    )
    clickhouse_database: str = Field("stream_engine", description="ClickHouse database name.")
    propositions_url: str = Field("http://127.0.0.1:8700", description="Proposition service base URL.")

    # --- local stack ports (stack up) --------------------------------------------------
    kafka_version: str = Field("4.4.0", description="Apache Kafka version assembled from Maven Central.")
    kafka_port: int = Field(9092, description="Broker listener port of the local stack.")
    kafka_controller_port: int = Field(9093, description="KRaft controller port of the local stack.")
    kafka_heap: str = Field("512m", description="Broker JVM max heap.")
    kafka_brokers: int = Field(
        1,
        ge=1,
        description="Kafka nodes of the local stack (`stack up --brokers 3`): node i on kafka_port + 2i (controller "
        "kafka_controller_port + 2i), replication factor = nodes, min.insync.replicas = nodes - 1.",
    )
    redis_port: int = Field(6379, description="Redis port of the local stack.")
    redis_cluster_port: int = Field(
        7000, description="First of the 3 ports of the local stack's Redis Cluster (`stack up --only redis-cluster`)."
    )
    propositions_port: int = Field(8700, description="Port of the reference proposition service.")
    clickhouse_port: int = Field(8123, description="Port of the local stack's ClickHouse HTTP endpoint (chDB).")

    # --- topics ------------------------------------------------------------------------
    topic_alerts: str = Field("alerts", description="Input topic.")
    topic_decisions: str = Field("decisions", description="Output topic.")
    topic_dlq: str = Field("alerts.dlq", description="Dead-letter topic for malformed alerts.")
    topic_updates: str = Field("proposition-updates", description="Cache invalidation topic.")
    topic_outcomes: str = Field("outcomes", description="Operators' verdicts on decisions (learning from outcomes).")

    # --- worker ------------------------------------------------------------------------
    app_id: str = Field("stream-engine", description="Kafka consumer group of the workers (and their client id prefix).")
    engine: Literal["aiokafka", "faust"] = Field(
        "aiokafka",
        description="Stream engine: aiokafka (consumer group, pipelined batches, exact per-partition commits) "
        "or faust (a faust-streaming agent). Workers of the two cannot share a consumer group.",
    )
    delivery: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once",
        description="at_least_once: offsets committed after the batch's records are acknowledged (a crash may repeat "
        "decisions). exactly_once (aiokafka engine only): decisions, dead letters and the consumed offsets committed in "
        "one Kafka transaction per batch and partition, ClickHouse rows stored only for committed ones; read "
        "`decisions` with isolation.level=read_committed.",
    )
    worker_name: str = Field("", description="Worker name in logs and ClickHouse rows (default host:pid).")
    batch_max: int = Field(500, ge=1, description="Most alerts in one micro-batch.")
    # 10 ms: faust hit p99 at 1k alerts/s 55-57 ms (20 ms: 76-81, 5 ms: 64-68); max throughput unchanged.
    batch_within_s: float = Field(0.01, gt=0, description="Longest wait for a micro-batch to fill up.")
    batch_concurrency: int = Field(2, ge=1, description="Micro-batches processed concurrently per worker.")
    max_alert_bytes: int = Field(65536, ge=256, description="Larger alerts go to the DLQ.")
    fetch_max_wait_ms: int = Field(
        50, ge=0, description="Consumer fetch wait, both engines: how long a fetch on idle partitions can hold back the others."
    )
    producer_linger_ms: int = Field(1, ge=0, description="Producer linger: small batches, low latency.")
    commit_interval_s: float = Field(
        0.5, gt=0, description="faust engine: offset commit interval (faust's default 2.8). aiokafka commits after every batch."
    )
    revoke_grace_s: float = Field(
        5.0,
        gt=0,
        description="At a partition revocation, how long batches still running may take to finish; then they are "
        "abandoned uncommitted (the partition's next owner redoes them), so one stuck worker cannot stall its group.",
    )
    poison_max_ratio: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Above this share of a batch (of 10 or more alerts) failing on its own (processing error, decision "
        "too large), the batch is treated as an outage (retried) instead of dead-lettering its alerts.",
    )
    poison_max_per_minute: int = Field(
        60,
        ge=1,
        description="Above this many alerts failing on their own in a minute, batches are treated as an outage (retried) "
        "instead of dead-lettering their alerts.",
    )
    session_timeout_s: float = Field(6.0, gt=0, description="Consumer group session timeout.")
    heartbeat_interval_s: float = Field(1.0, gt=0, description="Consumer group heartbeat interval.")

    # --- keys and caches ---------------------------------------------------------------
    key_fields: dict[str, list[str]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_KEY_FIELDS.items()},
        description="Per alert type, attribute fields that form the proposition key (else fingerprint).",
    )
    lru_size: int = Field(10_000, ge=1, description="Entries per partition-local LRU.")
    lru_ttl_s: float = Field(300.0, gt=0, description="LRU entry time-to-live.")
    redis_namespace: str = Field("se:p", description="Prefix of proposition keys in Redis.")
    redis_ttl_s: int = Field(3600, ge=1, description="Redis entry time-to-live.")
    redis_timeout_s: float = Field(0.1, gt=0, description="Redis socket timeout; an outage degrades past it.")
    clickhouse_timeout_s: float = Field(30.0, gt=0, description="ClickHouse HTTP send/receive timeout.")
    redis_retry_after_s: float = Field(1.0, gt=0, description="After a Redis failure, skip the tier this long.")

    # --- proposition service client ----------------------------------------------------
    service_timeout_s: float = Field(0.5, gt=0, description="Read timeout per service request.")
    service_connect_timeout_s: float = Field(0.2, gt=0, description="Connect timeout.")
    service_retries: int = Field(2, ge=0, description="Retries after the first attempt (backoff + jitter).")
    service_pool_size: int = Field(20, ge=1, description="httpx max connections.")
    breaker_fail_max: int = Field(5, ge=1, description="Consecutive failures that open the breaker.")
    breaker_reset_s: float = Field(5.0, gt=0, description="Open breaker's wait before a trial call.")

    # --- decision policy ---------------------------------------------------------------
    auto_threshold: float = Field(0.8, ge=0, le=1, description="Default confidence for mode auto.")
    auto_thresholds: dict[str, float] = Field(
        default_factory=lambda: {"ci_failure": 0.75, "scam": 0.9},
        description="Per alert type overrides of auto_threshold.",
    )

    # --- learning from outcomes (README, "Learning from outcomes") ---------------------
    outcome_learning: bool = Field(
        True,
        description="Learn from operators' verdicts on the outcomes topic: keep a record of every decision (Redis for "
        "outcome_record_ttl_s, then ClickHouse), count verdicts per key and action, and adjust confidences with them. Off: none of that.",
    )
    outcome_prior_weight: float = Field(
        10.0,
        gt=0,
        description="Weight of the service's confidence against operators' verdicts: the Beta prior counts as this many "
        "verdicts, so a key's own verdicts outweigh the service once there are more of them.",
    )
    outcome_window_s: int = Field(
        604_800,
        ge=60,
        description="How long a decision can be judged (also the counts' TTL since their last verdict). A verdict on "
        "a decision older than outcome_record_ttl_s is resolved from ClickHouse's decision_lookup table.",
    )
    outcome_record_ttl_s: float = Field(
        600.0,
        gt=0,
        description="How long Redis keeps a decision's record (the hot window): Redis holds one record's bytes x "
        "alerts/s x this (README, 'Learning from outcomes'). At least ten sink_flush_interval_s, so a decision is in "
        "ClickHouse before its record expires (checked at start); capped at outcome_window_s.",
    )
    outcome_grace_s: float = Field(
        5.0, ge=0, description="An outcome naming an alert id not found yet is looked up again once it is this old."
    )

    # --- ClickHouse sink ---------------------------------------------------------------
    sink_flush_rows: int = Field(10_000, ge=1, description="Flush when this many rows are buffered.")
    sink_flush_interval_s: float = Field(1.0, gt=0, description="Flush at least this often.")
    sink_max_buffer_rows: int = Field(100_000, ge=1, description="Backpressure above this many rows.")
    # Off by default: on, a 500-row write() costs more than the 10% of a batch's publish->decision time
    # we allow the sink (measured by benchmarks/sink.py; the figures are in the README and RESULTS.md).
    sink_fsync: bool = Field(
        False,
        description="fsync the journal on every write: survives power loss too, at a cost per batch measured by "
        "benchmarks/sink.py (README, 'The journal never drops a row'). Off: rows reach the OS before offsets commit, "
        "which survives a worker crash or kill -9, like Kafka's own unsynced log, not a power loss.",
    )
    clickhouse_ttl_days: int = Field(90, ge=1, description="proposition_log TTL.")

    # --- HTTP API / logs ---------------------------------------------------------------
    api_host: str = Field("127.0.0.1", description="Worker HTTP API bind address.")
    api_port: int = Field(8787, description="Worker HTTP API port.")
    api_max_body_bytes: int = Field(1_048_576, ge=1024, description="Max request body.")
    # The API's own bounds (README, Security): refused work costs the worker nothing.
    api_max_connections: int = Field(
        2000,
        ge=1,
        description="Open HTTP API connections (each costs memory in aiohttp, whatever its request); one more is "
        "answered 503 + Retry-After and closed before its request is parsed.",
    )
    api_max_request_bytes: int = Field(
        4_194_304,
        ge=1024,
        description="Bytes of decision requests (POST /api/v1/alerts/process) in progress at once, by "
        "Content-Length; one more gets 429 + Retry-After before its body is parsed (a lone request always passes).",
    )
    api_max_queued_alerts: int = Field(
        5000, ge=1, description="Alerts of API requests waiting for or in a decision; a request that would pass it gets 429."
    )
    api_max_queries: int = Field(
        1, ge=1, description="Analytics queries in progress at once (they run in the sink's insert thread); one more gets 429."
    )
    api_service_pool_size: int = Field(
        4,
        ge=1,
        description="Connections of the API's own proposition client: its own pool and circuit breaker, so API "
        "traffic cannot take the stream's connections or open the stream's breaker.",
    )
    analytics_max_execution_s: float = Field(
        5.0, gt=0, description="ClickHouse max_execution_time of an analytics query (how long it may hold the insert thread)."
    )
    analytics_max_rows_to_read: int = Field(50_000_000, ge=1, description="ClickHouse max_rows_to_read of an analytics query.")
    analytics_max_result_rows: int = Field(
        100_000, ge=1, description="ClickHouse max_result_rows of an analytics query (rows the worker materialises)."
    )
    analytics_max_memory_bytes: int = Field(
        268_435_456, ge=1_048_576, description="ClickHouse max_memory_usage of an analytics query (in the worker with chDB)."
    )
    analytics_max_threads: int = Field(
        1, ge=1, description="ClickHouse max_threads of an analytics query (chDB runs it on the worker's cores)."
    )
    metrics_max_alert_types: int = Field(
        50,
        ge=0,
        description="Alert types seen in the stream that get their own metric series, besides the configured ones "
        "(key_fields, auto_thresholds); the rest, and unknown types sent to the API, count as `other`.",
    )
    api_token: SecretStr = Field(
        SecretStr(""),
        description="Bearer token every /api/v1/* request must carry; required when api_host is not loopback.",
    )
    admin_token: SecretStr = Field(
        SecretStr(""),
        description="Bearer token of the proposition service's rule, admin and stats routes "
        "(unset: STACK_DIR/admin-token, which `stack up` generates).",
    )
    log_level: str = Field("INFO", description="Log level.")
    redact_fields: list[str] = Field(
        default_factory=lambda: ["password", "token", "secret", "api_key", "authorization"],
        description="Attribute names (any depth, any case) masked wherever an alert leaves the worker: service "
        "requests, DLQ, logs, error details.",
    )

    @model_validator(mode="after")
    def _decision_records_outlive_the_sink_flush(self) -> Settings:
        # A verdict on a decision whose Redis record expired is resolved from ClickHouse: the record
        # must outlive the time its row takes to get there (a flush interval, plus the insert).
        if self.outcome_record_ttl_s < 10 * self.sink_flush_interval_s:
            raise ValueError(
                f"outcome_record_ttl_s ({self.outcome_record_ttl_s:g}) must be at least 10 x sink_flush_interval_s "
                f"({self.sink_flush_interval_s:g}): a decision must reach ClickHouse before Redis forgets it"
            )
        return self

    @model_validator(mode="after")
    def _exactly_once_needs_aiokafka(self) -> Settings:
        if self.delivery == "exactly_once" and self.engine != "aiokafka":
            raise ValueError(
                f"delivery=exactly_once is offered by the aiokafka engine only, not {self.engine}: faust-streaming's "
                "own exactly-once has open bugs (duplicates after a kill #517 and a rebalance #323, sends outside the "
                "transaction #177) and its consumer commits outside our transactions; run --engine aiokafka, or keep "
                "delivery=at_least_once on faust"
            )
        return self

    @model_validator(mode="after")
    def _secrets_are_not_key_fields(self) -> Settings:
        # A key is published, cached and logged in clear (decisions, Redis, ClickHouse): a secret
        # attribute in it would leak everywhere the masks cannot reach.
        secret = {f.lower() for f in self.redact_fields}
        clash = sorted({f"{t}.{f}" for t, fields in self.key_fields.items() for f in fields if f.lower() in secret})
        if clash:
            raise ValueError(f"key_fields {clash} are also redact_fields: a secret attribute cannot be part of a key")
        return self

    @cached_property
    def effective_clickhouse_url(self) -> str:
        return self.clickhouse_url or f"http://127.0.0.1:{self.clickhouse_port}"

    def threshold_for(self, alert_type: str) -> float:
        return self.auto_thresholds.get(alert_type, self.auto_threshold)

    def to_env(self) -> dict[str, str]:
        """Every setting as STREAM_ENGINE_* variables, to hand this exact config to a subprocess."""
        import orjson

        env = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            text = orjson.dumps(value).decode() if isinstance(value, (dict, list)) else str(value)
            env[f"STREAM_ENGINE_{name.upper()}"] = text
        return env

    def with_overrides(self, **overrides: object) -> Settings:
        """A copy with some fields replaced (validated), e.g. unique topic names in tests."""
        return type(self)(**{**self.model_dump(), **overrides})


def settings_table() -> list[tuple[str, str, str]]:
    """(ENV VAR, default, description) for every setting: the README table is made from this."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        if isinstance(default, Path):
            default = str(default.relative_to(PROJECT_ROOT)) if default.is_relative_to(PROJECT_ROOT) else str(default)
        rows.append((f"STREAM_ENGINE_{name.upper()}", repr(default), field.description or ""))
    return rows
