"""Temporal queries over the proposition log, with every user value bound server-side.

User input never becomes SQL text: values go in as ``{name:Type}`` parameters (clickhouse-connect
sends them as query parameters to the server, and to chDB's ``params``), and the interval picks
one of a fixed set of ClickHouse functions. Time windows are ``[start, end)`` on ``received_at``.

Exactness: the ``*_exact`` paths read ``proposition_log FINAL`` so at-least-once duplicates
collapse (exact percentiles with ``quantilesExactInclusive``, i.e. linear interpolation like
``numpy.percentile``'s default). ``exact=False`` reads the per-minute rollup instead: much less
data, TDigest percentiles (typically within ~1% of rank), and a duplicate delivery counts twice.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

# interval spelling -> ClickHouse bucketing function (the only way an interval reaches SQL)
INTERVALS: dict[str, str] = {
    "1m": "toStartOfMinute",
    "1 minute": "toStartOfMinute",
    "5m": "toStartOfFiveMinutes",
    "5 minutes": "toStartOfFiveMinutes",
    "15m": "toStartOfFifteenMinutes",
    "15 minutes": "toStartOfFifteenMinutes",
    "1h": "toStartOfHour",
    "1 hour": "toStartOfHour",
    "1d": "toStartOfDay",
    "1 day": "toStartOfDay",
}
TIERS = ("lru", "redis", "service", "none")
MODES = ("auto", "review", "escalate")


def bucket_function(interval: str) -> str:
    try:
        return INTERVALS[interval]
    except KeyError:
        raise ValueError(f"interval must be one of {sorted(INTERVALS)}, got {interval!r}") from None


def _epoch_ms(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # naive times are UTC, like the columns
    return int(value.timestamp() * 1000)


def _window(start: datetime, end: datetime, alert_type: str | None, column: str = "received_at") -> tuple[str, dict[str, Any]]:
    where = (
        f"{column} >= fromUnixTimestamp64Milli({{start_ms:Int64}}, 'UTC') "
        f"AND {column} < fromUnixTimestamp64Milli({{end_ms:Int64}}, 'UTC')"
    )
    params: dict[str, Any] = {"start_ms": _epoch_ms(start), "end_ms": _epoch_ms(end)}
    if alert_type is not None:
        where += " AND alert_type = {alert_type:String}"
        params["alert_type"] = alert_type
    return where, params


def _dicts(client: Client, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    result = client.query(sql, parameters=params)
    names = result.column_names
    return [dict(zip(names, row, strict=True)) for row in result.result_rows]


def _split_quantiles(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for row in rows:
        p50, p95, p99 = row.pop("q")
        row.update(p50=p50, p95=p95, p99=p99)
    return rows


def latency_percentiles(
    client: Client, start: datetime, end: datetime, interval: str = "1m", alert_type: str | None = None, *, exact: bool = True
) -> list[dict[str, Any]]:
    """Per bucket and alert type: count, p50, p95, p99 of end-to-end ``latency_ms``."""
    fn = bucket_function(interval)
    if exact:
        where, params = _window(start, end, alert_type)
        sql = f"""
            SELECT {fn}(received_at) AS bucket, alert_type, count() AS count,
                   quantilesExactInclusive(0.5, 0.95, 0.99)(latency_ms) AS q
            FROM proposition_log FINAL
            WHERE {where}
            GROUP BY bucket, alert_type ORDER BY bucket, alert_type"""
    else:
        where, params = _window(start, end, alert_type, column="minute")
        sql = f"""
            SELECT {fn}(minute) AS bucket, alert_type, countMerge(decisions) AS count,
                   quantilesTDigestMerge(0.5, 0.95, 0.99)(latency) AS q
            FROM proposition_minute
            WHERE {where}
            GROUP BY bucket, alert_type ORDER BY bucket, alert_type"""
    return _split_quantiles(_dicts(client, sql, params))


def _share_by(
    column: str, client: Client, start: datetime, end: datetime, interval: str, alert_type: str | None
) -> list[dict[str, Any]]:
    fn = bucket_function(interval)
    where, params = _window(start, end, alert_type)
    sql = f"""
        SELECT {fn}(received_at) AS bucket, alert_type, {column}, count() AS count,
               count() / sum(count()) OVER (PARTITION BY bucket, alert_type) AS ratio
        FROM proposition_log FINAL
        WHERE {where}
        GROUP BY bucket, alert_type, {column} ORDER BY bucket, alert_type, {column}"""
    return _dicts(client, sql, params)


def cache_hit_ratio(
    client: Client, start: datetime, end: datetime, interval: str = "1m", alert_type: str | None = None
) -> list[dict[str, Any]]:
    """Per bucket, alert type and cache tier: decisions served by that tier and their share."""
    return _share_by("cache_tier", client, start, end, interval, alert_type)


def decisions_by_mode(
    client: Client, start: datetime, end: datetime, interval: str = "1m", alert_type: str | None = None
) -> list[dict[str, Any]]:
    """Per bucket, alert type and mode (auto/review/escalate): count and share."""
    return _share_by("mode", client, start, end, interval, alert_type)


LOG_FIELDS = (
    "alert_id, alert_type, key, severity, source, received_at, decided_at, mode, action, confidence, "
    "cache_tier, latency_ms, batch_size, partition, offset, worker, propositions, reason, engine_version, origin"
)


def get_proposition_logs_batch(client: Client, alert_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The logged decision of each id asked for (absent ids are absent), in ONE query: the
    stream's latest (``proposition_log``), or for an id the stream never logged, the HTTP API's
    latest (``decision_audit``, origin ``api``: API decisions never enter ``proposition_log``)."""
    if not alert_ids:
        return {}
    # LIMIT 1 BY keeps one row per id even across partitions and before merges; the bloom filter
    # indexes on alert_id skip granules that cannot hold the ids.
    sql = f"""
        SELECT {LOG_FIELDS} FROM (
            SELECT {LOG_FIELDS} FROM proposition_log WHERE alert_id IN {{ids:Array(String)}}
            UNION ALL
            SELECT {LOG_FIELDS} FROM decision_audit WHERE alert_id IN {{ids:Array(String)}} AND origin = 'api'
        )
        ORDER BY alert_id, origin = 'api', decided_at DESC LIMIT 1 BY alert_id"""
    rows = _dicts(client, sql, {"ids": list(alert_ids)})
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        row["propositions"] = orjson.loads(row["propositions"])
        out[row["alert_id"]] = row
    return out


def decision_records(client: Client, alert_ids: list[str], since_ms: int) -> list[tuple[str, str, str, str | None, str, int]]:
    """(alert_id, key, alert_type, action, mode, decided_at ms) of each id's latest decision made
    at or after ``since_ms`` (the outcome window), in ONE query on ``decision_lookup``, whose order
    (alert_id first) makes the ``IN`` a primary-key lookup. Ids without one are absent."""
    if not alert_ids:
        return []
    sql = """
        SELECT alert_id, key, alert_type, action, mode, toUnixTimestamp64Milli(decided_at) AS decided_ms
        FROM decision_lookup
        WHERE alert_id IN {ids:Array(String)} AND decided_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')
        ORDER BY alert_id, decided_at DESC LIMIT 1 BY alert_id"""
    rows = client.query(sql, parameters={"ids": list(alert_ids), "since": int(since_ms)}).result_rows
    return [(str(a), str(k), str(t), None if act is None else str(act), str(m), int(ms)) for a, k, t, act, m, ms in rows]


def slowest_alerts(
    client: Client, start: datetime, end: datetime, limit: int = 20, alert_type: str | None = None
) -> list[dict[str, Any]]:
    """The ``limit`` slowest decisions in the window, slowest first."""
    if not 1 <= limit <= 10_000:
        raise ValueError("limit must be in 1..10000")
    where, params = _window(start, end, alert_type)
    params["limit"] = limit
    sql = f"""
        SELECT alert_id, alert_type, latency_ms, cache_tier, mode, received_at, worker, partition, offset
        FROM proposition_log FINAL
        WHERE {where}
        ORDER BY latency_ms DESC, alert_id LIMIT {{limit:UInt32}}"""
    return _dicts(client, sql, params)


def stage_latency(
    client: Client, start: datetime, end: datetime, interval: str = "1m", alert_type: str | None = None
) -> list[dict[str, Any]]:
    """Per bucket and stage (from latency_metrics): samples, mean and max milliseconds."""
    fn = bucket_function(interval)
    where, params = _window(start, end, alert_type, column="ts")
    sql = f"""
        SELECT {fn}(ts) AS bucket, stage, sum(count) AS samples, sum(sum_ms) / samples AS mean_ms,
               max(max_ms) AS max_ms
        FROM latency_metrics FINAL
        WHERE {where}
        GROUP BY bucket, stage ORDER BY bucket, stage"""
    return _dicts(client, sql, params)



def _quantile_pair(row: dict[str, Any], name: str, prefix: str) -> None:
    values = row.pop(name, None) or []
    clean = [None if v is None or v != v else float(v) for v in values]  # NaN: no samples
    row[f"{prefix}_p50_s"], row[f"{prefix}_p95_s"] = (clean + [None, None])[:2]


def outcome_stats(
    client: Client, start: datetime, end: datetime, interval: str = "1m", alert_type: str | None = None
) -> list[dict[str, Any]]:
    """Per bucket of decision time, alert type and action: the decisions and the operators'
    verdicts on them.

    ``decisions`` / ``auto``: decisions naming the action (all modes / mode auto), from
    ``proposition_log``. ``accepted`` … ``resolved``: verdicts on the action, and
    ``acceptance_rate`` = accepted / (accepted + rejected + false_positive). Auto precision:
    ``auto_judged`` auto decisions with a verdict on their own action, ``auto_wrong`` those
    rejected or marked a false positive, ``auto_precision`` = 1 − auto_wrong / auto_judged (None
    without verdicts). ``to_outcome_p50_s`` / ``p95``: seconds from decision to verdict."""
    fn = bucket_function(interval)
    where_d, params = _window(start, end, alert_type, column="decided_at")
    sql = f"""
        SELECT bucket, alert_type, action,
               decisions, auto, accepted, rejected, false_positive, resolved,
               if(accepted + rejected + false_positive = 0, NULL, accepted / (accepted + rejected + false_positive))
                   AS acceptance_rate,
               auto_judged, auto_wrong, if(auto_judged = 0, NULL, 1 - auto_wrong / auto_judged) AS auto_precision, q
        FROM
        (
            SELECT {fn}(decided_at) AS bucket, alert_type, ifNull(action, '') AS action,
                   count() AS decisions, countIf(mode = 'auto') AS auto
            FROM proposition_log FINAL
            WHERE {where_d}
            GROUP BY bucket, alert_type, action
        ) AS d
        FULL OUTER JOIN
        (
            SELECT {fn}(decided_at) AS bucket, alert_type, ifNull(action, '') AS action,
                   countIf(outcome = 'accepted') AS accepted, countIf(outcome = 'rejected') AS rejected,
                   countIf(outcome = 'false_positive') AS false_positive, countIf(outcome = 'resolved') AS resolved,
                   uniqExactIf(alert_id, decision_mode = 'auto' AND action = decision_action
                               AND outcome IN ('accepted', 'rejected', 'false_positive')) AS auto_judged,
                   uniqExactIf(alert_id, decision_mode = 'auto' AND action = decision_action
                               AND outcome IN ('rejected', 'false_positive')) AS auto_wrong,
                   quantilesExactInclusive(0.5, 0.95)(dateDiff('millisecond', decided_at, at) / 1000.0) AS q
            FROM outcomes FINAL
            WHERE {where_d}
            GROUP BY bucket, alert_type, action
        ) AS o USING (bucket, alert_type, action)
        ORDER BY bucket, alert_type, action"""
    rows = _dicts(client, sql, params)
    for row in rows:
        _quantile_pair(row, "q", "to_outcome")
    return rows


RECENT_FIELDS = "alert_id, alert_type, key, mode, action, confidence, propositions, reason, decided_at, cache_tier"


def recent_decisions(
    client: Client, start: datetime, end: datetime, modes: list[str], limit: int = 50, alert_type: str | None = None
) -> list[dict[str, Any]]:
    """The latest decisions of the given modes (newest first), with the verdicts they got so far
    (``verdicts``: [{outcome, action, actor, at}]): what the triage console lists."""
    if not 1 <= limit <= 10_000:
        raise ValueError("limit must be in 1..10000")
    where, params = _window(start, end, alert_type, column="decided_at")
    params.update(modes=list(modes), limit=limit)
    sql = f"""
        SELECT {RECENT_FIELDS} FROM proposition_log FINAL
        WHERE {where} AND mode IN {{modes:Array(String)}}
        ORDER BY decided_at DESC, alert_id LIMIT {{limit:UInt32}}"""
    rows = _dicts(client, sql, params)
    ids = [row["alert_id"] for row in rows]
    verdicts: dict[str, list[dict[str, Any]]] = {}
    if ids:
        found = _dicts(
            client,
            "SELECT alert_id, outcome, action, actor, at FROM outcomes FINAL WHERE alert_id IN {ids:Array(String)} ORDER BY at",
            {"ids": ids},
        )
        for v in found:
            verdicts.setdefault(v.pop("alert_id"), []).append(v)
    for row in rows:
        row["propositions"] = orjson.loads(row["propositions"])
        row["verdicts"] = verdicts.get(row["alert_id"], [])
    return rows
