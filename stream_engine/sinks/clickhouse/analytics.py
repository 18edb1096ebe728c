"""A named analytics query and its parameters → a call of :mod:`.queries`, checked before it runs.

The one dispatcher behind ``GET /api/v1/analytics/<name>?…`` (the worker's API) and
``stream-engine query <name> --…`` (the CLI turns its flags into the same parameters):

``from`` / ``to``: ISO 8601 (naive = UTC) or epoch seconds; default the last hour up to now.
``interval``: one of ``queries.INTERVALS`` (default ``1m``). ``type``: an alert type.
``limit``: 1..10000 (``slowest``, default 20). ``exact``: ``true``/``false`` (``latency``).
``ids``: comma-separated and/or repeated (``logs``, at most 10000).
``outcomes``: acceptance, auto precision and time to verdict per type and action (buckets of
decision time). ``recent``: the latest decisions of ``modes`` (comma-separated, default
``review,escalate``), ``limit`` of them (default 50), with their verdicts: the triage console.
Anything else malformed raises :class:`BadParams`.

Every query runs under :class:`QueryLimits` (ClickHouse settings: read-only, time, rows read,
result rows, memory, threads), so no request can scan the whole table — ``FINAL`` included —,
hold the sink's insert thread for long, or make the worker materialise an unbounded result. A
query stopped by a limit raises :class:`QueryLimitExceeded`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from stream_engine.sinks.clickhouse import queries

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from stream_engine.settings import Settings

Query = Callable[["Client"], Any]
NAMES = ("latency", "cache", "modes", "slowest", "stages", "logs", "outcomes", "recent")
MAX_IDS = 10_000
# ClickHouse error codes of a limit hit: TOO_MANY_ROWS, TIMEOUT_EXCEEDED, TOO_SLOW,
# MEMORY_LIMIT_EXCEEDED, TOO_MANY_BYTES, TOO_MANY_ROWS_OR_BYTES.
LIMIT_CODES = frozenset({158, 159, 160, 241, 307, 396})
_CODE = re.compile(r"\bCode: (\d+)\b")


class BadParams(ValueError):
    pass


class QueryLimitExceeded(ValueError):
    """ClickHouse stopped the query at one of the :class:`QueryLimits`."""


@dataclass(frozen=True, slots=True)
class QueryLimits:
    max_execution_s: float
    max_rows_to_read: int
    max_result_rows: int
    max_memory_bytes: int
    max_threads: int

    @classmethod
    def from_settings(cls, settings: Settings) -> QueryLimits:
        return cls(
            settings.analytics_max_execution_s,
            settings.analytics_max_rows_to_read,
            settings.analytics_max_result_rows,
            settings.analytics_max_memory_bytes,
            settings.analytics_max_threads,
        )

    def clickhouse_settings(self) -> dict[str, Any]:
        return {
            "readonly": 2,  # reads only; 2 rather than 1 so that the limits below may still be set
            "max_execution_time": self.max_execution_s,
            "timeout_overflow_mode": "throw",
            "max_rows_to_read": self.max_rows_to_read,  # FINAL's reads count too
            "read_overflow_mode": "throw",
            "max_result_rows": self.max_result_rows,
            "result_overflow_mode": "throw",  # never a silently truncated answer
            "max_memory_usage": self.max_memory_bytes,
            "max_threads": self.max_threads,
        }


class LimitedClient:
    """The sink's client as the analytics queries see it: SELECTs only, each carrying the limits.

    SELECT only, because only a SELECT takes its settings in its own ``SETTINGS`` clause: for
    other statements clickhouse-connect's chDB backend SETs them on the session and restores them
    afterwards — which ``readonly`` forbids, leaving the sink's own session read-only.
    """

    def __init__(self, client: Client, settings: Mapping[str, Any]) -> None:
        self._client = client
        self._settings = dict(settings)

    def query(self, query: str, parameters: Mapping[str, Any] | None = None, settings: Mapping[str, Any] | None = None) -> Any:
        if not query.lstrip().upper().startswith("SELECT"):
            raise ValueError("analytics run SELECT statements only")
        return self._client.query(query, parameters=parameters, settings={**(settings or {}), **self._settings})


def build_query(name: str, params: Mapping[str, str], limits: QueryLimits, now: datetime | None = None) -> Query:
    """The ClickHouse call for query ``name`` with ``params`` (validated, not yet run), limited.
    ``params`` may repeat ``ids`` when it has ``getall`` (a query string's MultiDict)."""
    query = _query(name, params, now)
    settings = limits.clickhouse_settings()

    def run(client: Client) -> Any:
        try:
            return query(LimitedClient(client, settings))  # type: ignore[arg-type]
        except Exception as exc:
            if not limit_hit(exc):
                raise
            reason = str(exc).strip().splitlines()[0][:300]
            raise QueryLimitExceeded(
                f"{name}: stopped by the analytics limits ({reason}); narrow from/to, use a larger interval, "
                "or exact=false"
            ) from exc

    return run


def limit_hit(exc: BaseException) -> bool:
    """Whether ClickHouse stopped a query at one of the limits (its error code says so)."""
    code = _CODE.search(str(exc))
    return code is not None and int(code.group(1)) in LIMIT_CODES


def _query(name: str, params: Mapping[str, str], now: datetime | None) -> Query:
    if name == "logs":
        raw_ids = params.getall("ids", []) if hasattr(params, "getall") else [params.get("ids") or ""]
        ids = [i for raw in raw_ids for i in raw.split(",") if i]
        if not ids:
            raise BadParams("ids: at least one alert id is required")
        if len(ids) > MAX_IDS:
            raise BadParams(f"ids: at most {MAX_IDS}, got {len(ids)}")
        return lambda client: queries.get_proposition_logs_batch(client, ids)
    if name not in NAMES:
        raise BadParams(f"unknown query {name!r}; one of {', '.join(NAMES)}")

    now = now or datetime.now(UTC)
    end = _time(params, "to", now)
    start = _time(params, "from", end - timedelta(hours=1))
    if start >= end:
        raise BadParams("from: must be before to")
    alert_type = params.get("type") or None
    if name == "slowest":
        limit = _int(params, "limit", 20, 1, 10_000)
        return lambda client: queries.slowest_alerts(client, start, end, limit, alert_type)
    if name == "recent":
        limit = _int(params, "limit", 50, 1, 10_000)
        modes = [m for m in (params.get("modes") or "review,escalate").split(",") if m]
        if not modes or any(m not in queries.MODES for m in modes):
            raise BadParams(f"modes: comma-separated, each one of {', '.join(queries.MODES)}")
        return lambda client: queries.recent_decisions(client, start, end, modes, limit, alert_type)

    interval = params.get("interval", "1m")
    try:
        queries.bucket_function(interval)
    except ValueError as exc:
        raise BadParams(f"interval: {exc}") from None
    if name == "latency":
        exact = _bool(params, "exact", True)
        return lambda client: queries.latency_percentiles(client, start, end, interval, alert_type, exact=exact)
    fn = {"cache": queries.cache_hit_ratio, "modes": queries.decisions_by_mode, "stages": queries.stage_latency,
          "outcomes": queries.outcome_stats}[name]  # fmt: skip
    return lambda client: fn(client, start, end, interval, alert_type)


def _time(params: Mapping[str, str], name: str, default: datetime) -> datetime:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return datetime.fromtimestamp(float(raw), UTC)
    except ValueError:
        pass
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise BadParams(f"{name}: expected ISO 8601 or epoch seconds, got {raw!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadParams(f"{name}: expected an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise BadParams(f"{name}: must be in {low}..{high}, got {value}")
    return value


def _bool(params: Mapping[str, str], name: str, default: bool) -> bool:
    raw = params.get(name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise BadParams(f"{name}: expected true or false, got {raw!r}")
