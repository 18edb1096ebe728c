"""Route handlers of the worker HTTP API.

``POST /api/v1/alerts/process`` decisions go through the runtime's ``decide`` — the stream's own
core, keys and policy — with documented differences from the stream (README, Security):

* LRU: API alerts use a dedicated pseudo-partition, ``API_PARTITION`` (65535, the largest value
  of ClickHouse's ``partition UInt16``). Kafka partitions are owned by the consumer group and
  their LRUs are dropped on revocation; an API call must neither fill nor depend on them.
* Redis and the service: API calls read what the stream cached in Redis but never write it, and
  ask the service through their own client (pool, circuit breaker): see ``Runtime``.
* Logging: each API decision is written to ClickHouse through the stream's decision log as
  ``origin = 'api'`` (no topic, ``partition = 65535``, ``offset = 0``) into ``decision_audit``
  only — never into ``proposition_log``, so it never replaces the stream's row of the same alert —
  before the response is sent (so an answered decision is durable). Decisions are NOT published
  to the ``decisions`` topic: the caller receives them in the response.

A list is all-or-nothing: one invalid alert rejects the request (400 with its ``index``).

Bounded (:mod:`stream_engine.api.admission`): past ``api_max_request_bytes`` of decision
requests in progress, ``api_max_queued_alerts`` queued alerts or ``api_max_queries`` analytics
queries, a request gets 429 ``{"error": "busy"}`` with ``Retry-After``, before its body is parsed
(the queue's exact check follows the parse); a worker not started yet answers 503, also with it.

``POST /api/v1/outcomes`` (one outcome or a list; ``topics/schemas/outcome.schema.json``) checks
each with the outcomes topic's own decoder and publishes them to ``outcomes`` keyed by alert id;
``202 {"published": n}`` once the broker acknowledged them all. They are applied asynchronously,
like any outcome on the topic: an unknown alert id is dead-lettered there (``unknown_alert``),
not refused here (the decision's record may be a few ms from Redis when its verdict comes in).
Same all-or-nothing rule as alerts.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from stream_engine.api.admission import RETRY_AFTER_S, Busy, Gate
from stream_engine.api.coalesce import Coalescer
from stream_engine.models import Alert, StageTimes
from stream_engine.monitor import rss_bytes
from stream_engine.sinks.clickhouse.analytics import BadParams, QueryLimitExceeded, QueryLimits, build_query
from stream_engine.validation import InvalidAlert

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from stream_engine.api.metrics import RuntimeCollector
    from stream_engine.runtime import Runtime

log = logging.getLogger(__name__)

API_PARTITION = 65535
API_OFFSET = 0
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CONSOLE_HTML = (Path(__file__).with_name("console.html")).read_bytes()
# Only this worker: the page loads nothing from elsewhere and sends the token nowhere else.
CONSOLE_CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:"


def json_response(body: Any, status: int = 200) -> web.Response:
    # default=str: ClickHouse values orjson has no native form for (Decimal, UUID …) still render.
    return web.Response(
        body=orjson.dumps(body, default=str, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS),
        status=status,
        content_type="application/json",
    )


def error(status: int, kind: str, detail: str, **more: Any) -> web.Response:
    return json_response({"error": kind, "detail": detail, **more}, status)


def retry_later(status: int, kind: str, detail: str) -> web.Response:
    response = error(status, kind, detail)
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


class Handlers:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        settings = runtime.settings
        self.coalescer = Coalescer(
            runtime.decide,
            slots=settings.batch_concurrency,
            max_batch=settings.batch_max,
            max_queued=settings.api_max_queued_alerts,
        )
        self.requests = Gate(settings.api_max_request_bytes, "bytes of decision requests")
        self.max_body = settings.api_max_body_bytes
        self.queries = Gate(settings.api_max_queries, "analytics queries")
        self.limits = QueryLimits.from_settings(settings)
        # Built at the first scrape: prometheus_client (~0.4 MB of a worker's RSS) is imported
        # only by workers that are scraped.
        self._metrics: tuple[CollectorRegistry, RuntimeCollector] | None = None
        self.lag: dict[str, dict[str, Any]] = {}

    # --- POST /api/v1/alerts/process --------------------------------------------------------

    async def process(self, request: web.Request) -> web.Response:
        # Refused before the body is parsed: a refused request costs nothing. A body of unknown
        # length (chunked) counts as the largest one allowed.
        size = request.content_length if request.content_length is not None else self.max_body
        try:
            self.coalescer.refuse_if_full()
            with self.requests.hold(size):
                return await self._process(request)
        except Busy as exc:
            return retry_later(429, "busy", str(exc))

    async def _process(self, request: web.Request) -> web.Response:
        runtime = self.runtime
        body = await request.read()  # aiohttp raises 413 past client_max_size
        if not runtime.started:
            return retry_later(503, "not_ready", "the worker is not started")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return error(400, "not_json", str(exc))
        items = data if isinstance(data, list) else [data]
        alerts: list[Alert] = []
        decode = runtime.decode
        for i, item in enumerate(items):
            try:
                # Re-encoding one item costs microseconds and gives exactly the stream's rules
                # (size limit, object check, schema and its error wording).
                alerts.append(decode(orjson.dumps(item)))
            except InvalidAlert as exc:
                return error(400, exc.reason, exc.detail, index=i)
        if not alerts:
            return json_response({"decisions": []})

        received_ns = time.time_ns()
        envelopes = [runtime.envelope(a, API_PARTITION, API_OFFSET, received_ns) for a in alerts]
        times = StageTimes()
        decisions = await self.coalescer.decide(envelopes, times)
        await runtime.log_api_decisions(envelopes, decisions, times)
        runtime.monitor.observe_api(times, decisions)
        log.debug("api decided %d alert(s)", len(decisions), extra={"batch_size": len(decisions)})
        return json_response({"decisions": decisions})

    # --- POST /api/v1/outcomes --------------------------------------------------------------

    async def outcomes(self, request: web.Request) -> web.Response:
        runtime = self.runtime
        body = await request.read()
        if not runtime.started:
            return error(503, "not_ready", "the worker is not started")
        if runtime.outcomes is None:
            return error(503, "not_enabled", "learning from outcomes is off on this worker (STREAM_ENGINE_OUTCOME_LEARNING)")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return error(400, "not_json", str(exc))
        items = data if isinstance(data, list) else [data]
        outcomes = []
        for i, item in enumerate(items):
            try:
                outcomes.append(runtime.decode_outcome(orjson.dumps(item)))
            except InvalidAlert as exc:
                return error(400, exc.reason, exc.detail, index=i)
        await runtime.publish_outcomes(outcomes)
        return json_response({"published": len(outcomes), "topic": runtime.settings.topic_outcomes}, 202)

    # --- GET /console ------------------------------------------------------------------------

    async def console(self, request: web.Request) -> web.Response:
        """The triage console: a static page (no data in it, so open like /healthz); it reads and
        posts through /api/v1/* with the API token."""
        return web.Response(body=CONSOLE_HTML, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store", "Content-Security-Policy": CONSOLE_CSP})  # fmt: skip

    # --- GET /api/v1/stats ------------------------------------------------------------------

    async def stats(self, request: web.Request) -> web.Response:
        runtime = self.runtime
        monitor = runtime.monitor
        snapshot = monitor.snapshot()
        parts = runtime.parts_stats()
        client, redis, sink = parts["service"], parts["redis"], parts["sink"]
        pool_max = runtime.settings.service_pool_size
        open_connections = client.get("pool_connections")
        snapshot["errors"].update(
            redis_errors=redis["errors"],
            service_failed_batches=client["failures"],
            service_breaker_rejections=client["breaker_rejections"],
            sink_failures=sink.get("failures", 0),
            sink_last_error=sink.get("last_error", ""),
        )
        snapshot.update(
            worker=runtime.worker_name,
            started=runtime.started,
            http_pool={
                "open_connections": open_connections,
                "max_connections": pool_max,
                "utilisation": (open_connections / pool_max) if open_connections is not None else None,
            },
            consumer_lag=await self.refresh_lag(),
            lru=parts["lru"],
            redis=redis,
            service=client,
            api_service=parts["api_service"],
            api=self.admission_stats(),
            sink=sink,
            outcomes=parts["outcomes"],
        )
        return json_response(snapshot)

    def admission_stats(self) -> dict[str, Any]:
        """The API's own bounds: what is in progress now, and how much was refused (429)."""
        requests, queries, coalescer = self.requests, self.queries, self.coalescer
        return {
            "request_bytes_in_progress": requests.active,
            "max_request_bytes": requests.limit,
            "queued_alerts": coalescer.queued,
            "max_queued_alerts": coalescer.max_queued,
            "queries_in_progress": queries.active,
            "max_queries": queries.limit,
            "refused": {"requests": requests.refused, "queued_alerts": coalescer.refused, "queries": queries.refused},
        }

    async def refresh_lag(self) -> dict[str, dict[str, Any]]:
        try:
            offsets = await self.runtime.consumer_positions()
        except Exception as exc:  # lag is informative; a consumer mid-rebalance must not fail /stats
            log.debug("consumer offsets unavailable: %s", exc)
            return {}
        if offsets is None:
            return {}
        self.lag = self.runtime.monitor.consumer_lag(offsets)
        if self._metrics is not None:
            self._metrics[1].lag = self.lag
        return self.lag

    # --- GET /api/v1/analytics/{name} -------------------------------------------------------

    async def analytics(self, request: web.Request) -> web.Response:
        try:
            query = build_query(request.match_info["name"], request.query, self.limits)
        except BadParams as exc:
            return error(400, "params", str(exc))
        started = time.perf_counter()
        try:
            with self.queries.hold():
                result = await self.runtime.run_query(query)
        except Busy as exc:
            return retry_later(429, "busy", str(exc))
        except QueryLimitExceeded as exc:
            return error(422, "query_limit", str(exc))
        except NotImplementedError as exc:
            return error(501, "no_clickhouse", str(exc))
        except ValueError as exc:  # the query API's own parameter checks
            return error(400, "params", str(exc))
        except RuntimeError as exc:
            return error(503, "not_ready", str(exc))
        except Exception as exc:
            log.warning("analytics query %s failed: %s", request.match_info["name"], exc)
            return error(502, "clickhouse", f"{type(exc).__name__}: {exc}"[:500])
        return json_response({"query": request.match_info["name"], "seconds": time.perf_counter() - started, "rows": result})

    # --- GET /healthz, GET /metrics ---------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        runtime = self.runtime
        monitor = runtime.monitor
        why = runtime.health()
        body = {
            "status": "ok" if why is None else "unavailable",
            "worker": runtime.worker_name,
            "partitions": sorted(p for _, p in monitor.assigned),
            "uptime_s": monitor.uptime_s,
            "rss_bytes": rss_bytes(),
        }
        if why is not None:
            body["why"] = why
        return json_response(body, 200 if why is None else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        from stream_engine.api.metrics import build_registry, exposition

        if self._metrics is None:
            self._metrics = build_registry(self.runtime)
        await self.refresh_lag()
        return web.Response(body=exposition(self._metrics[0]), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})
