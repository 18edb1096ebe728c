"""The reference proposition service: an aiohttp app answering from a RuleBook.

Contract (the engine's client is written against it):

* ``POST /v1/propositions/batch`` ``{"items": [{"key": str, "alert": {...}}]}`` ->
  ``{"version": str, "results": {key: [{"action", "confidence", "rationale"}, ...best first]}}``.
  A key without a matching rule maps to ``[]``; a repeated key is answered once (from its first
  item). Malformed body -> 400 ``{"error": ...}``.
* ``POST /v1/propositions`` ``{"key": str, "alert": {...}}`` -> ``{"version", "propositions"}``.
* ``GET /healthz`` -> ``{"status": "ok", "version"}``.
* ``GET /v1/rules`` -> the rule book document exactly as loaded (so it can be edited and PUT
  back); the effective version (label + content hash) is in the ``X-Rules-Version`` header.
  ``PUT /v1/rules`` (a rule book document) -> validates, publishes ONE invalidation (scope
  ``type`` when exactly one alert type's rules changed, else scope ``all``) and only then makes
  the new rules live and stores them (``rule_store``: they survive a restart). Publish-or-fail:
  if the invalidation cannot be published the answer is 503 and nothing changed; proposition
  requests arriving meanwhile wait for the outcome (see ``put_rules``). Nothing is published when
  the content did not change. Answer: ``{"version", "changed", "invalidation", "published"}``;
  a service without a publisher (``serve --no-updates``) changes the rules, answers
  ``"published": false`` and a ``warning``: invalidating is then the caller's job.
* ``POST /v1/admin/invalidate`` ``{"scope": "key"|"type"|"all", "key"?, "alert_type"?}`` ->
  publishes without changing rules (503 without a publisher, 502 if the broker fails).
* ``PUT /v1/admin/latency`` ``{"median_ms", "p99_ms", "per_item_ms"?, "seed"?}`` (``{"median_ms": 0}``
  without ``per_item_ms``, or ``null``, turns it off); ``PUT /v1/admin/fault`` ``{"error_rate": 0..1, "status": 503}``. Both apply to
  the two proposition endpoints only, never to health/admin.
* ``GET /v1/stats`` counters; ``DELETE /v1/stats`` resets them (between benchmark runs).

Every route except ``/healthz`` and the two proposition endpoints (the workers' read path) needs
``Authorization: Bearer <admin token>``, always: 401 ``{"error": "unauthorized", ...}`` otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from stream_engine.auth import bearer_auth
from stream_engine.propositions.rules import RuleBook, RuleBookError, RuleStore
from stream_engine.propositions.updates import Invalidation, InvalidationPublisher, InvalidInvalidation

log = logging.getLogger(__name__)

Z_99 = 2.3263478740408408  # standard normal quantile at 0.99
MAX_BODY_BYTES = 16 * 1024 * 1024
JSON = "application/json"
VERSION_HEADER = "X-Rules-Version"
BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000)
# The only routes open without the admin token: health, and what the workers call per batch.
OPEN_PATHS = frozenset({"/healthz", "/v1/propositions/batch", "/v1/propositions"})


class LatencyModel:
    """Simulated service time per request: lognormal through (median, p99), or fixed when equal,
    plus ``per_item_ms`` for every item of the request (a real batch endpoint's work grows with
    the batch; without it batching would look free).

    Seeded, so a benchmark or drill sees the same sequence of delays every run.
    """

    def __init__(
        self, median_ms: float, p99_ms: float | None = None, *, per_item_ms: float = 0.0, seed: int | None = None
    ) -> None:
        p99_ms = median_ms if p99_ms is None else p99_ms
        if median_ms < 0 or p99_ms < median_ms or per_item_ms < 0:
            raise ValueError("need 0 <= median_ms <= p99_ms and per_item_ms >= 0")
        self.median_ms = float(median_ms)
        self.p99_ms = float(p99_ms)
        self.per_item_ms = float(per_item_ms)
        self.seed = seed
        self._random = random.Random(seed)
        if median_ms == 0 or p99_ms == median_ms:
            self._mu, self._sigma = 0.0, 0.0
        else:
            self._mu = math.log(median_ms)
            self._sigma = (math.log(p99_ms) - self._mu) / Z_99

    @classmethod
    def fixed(cls, ms: float) -> LatencyModel:
        return cls(ms, ms)

    def sample_ms(self, items: int = 1) -> float:
        per_request = self.median_ms if self._sigma == 0.0 else self._random.lognormvariate(self._mu, self._sigma)
        return per_request + self.per_item_ms * items

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"median_ms": self.median_ms, "p99_ms": self.p99_ms, "seed": self.seed}
        if self.per_item_ms:
            described["per_item_ms"] = self.per_item_ms
        return described


@dataclass(slots=True)
class FaultInjector:
    """Fails this fraction of proposition requests with ``status`` (seeded)."""

    error_rate: float
    status: int = 503
    seed: int | None = None
    _random: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be in [0, 1]")
        if not 400 <= self.status <= 599:
            raise ValueError("status must be an HTTP error status (400-599)")
        self._random = random.Random(self.seed)

    def should_fail(self) -> bool:
        return self.error_rate > 0.0 and self._random.random() < self.error_rate

    def describe(self) -> dict[str, Any]:
        return {"error_rate": self.error_rate, "status": self.status, "seed": self.seed}


@dataclass(slots=True)
class ServiceStats:
    requests: int = 0  # proposition requests (batch + single), including failed ones
    batch_requests: int = 0
    single_requests: int = 0
    items: int = 0  # items received, duplicates included
    unique_keys: int = 0  # items answered (after de-duplication)
    empty_results: int = 0  # answered keys without a rule
    bad_requests: int = 0
    faults_injected: int = 0
    simulated_latency_ms: float = 0.0
    batch_size_max: int = 0
    batch_size_histogram: dict[str, int] = field(default_factory=dict)

    def record_batch(self, size: int) -> None:
        self.batch_requests += 1
        self.batch_size_max = max(self.batch_size_max, size)
        bucket = next((f"<={b}" for b in BATCH_SIZE_BUCKETS if size <= b), f">{BATCH_SIZE_BUCKETS[-1]}")
        self.batch_size_histogram[bucket] = self.batch_size_histogram.get(bucket, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "batch_requests": self.batch_requests,
            "single_requests": self.single_requests,
            "items": self.items,
            "unique_keys": self.unique_keys,
            "empty_results": self.empty_results,
            "bad_requests": self.bad_requests,
            "faults_injected": self.faults_injected,
            "simulated_latency_ms": round(self.simulated_latency_ms, 3),
            "batch_sizes": {
                "count": self.batch_requests,
                "mean": round(self.items_in_batches / self.batch_requests, 3) if self.batch_requests else 0.0,
                "max": self.batch_size_max,
                "histogram": self.batch_size_histogram,
            },
        }

    @property
    def items_in_batches(self) -> int:
        return self.items - self.single_requests


class _BadRequest(Exception):
    pass


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type=JSON)


def _error(message: str, status: int = 400) -> web.Response:
    return _json({"error": message}, status)


async def _read_json(request: web.Request) -> Any:
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise _BadRequest(f"body is not JSON: {exc}") from exc


def _check_item(key: Any, alert: Any, where: str) -> None:
    if not isinstance(key, str) or not key:
        raise _BadRequest(f"{where}.key must be a non-empty string")
    if not isinstance(alert, dict):
        raise _BadRequest(f"{where}.alert must be an object")
    if not isinstance(alert.get("type"), str):
        raise _BadRequest(f"{where}.alert.type must be a string")


class PropositionService:
    """Request handlers plus the mutable state they share (rules, latency, faults, counters)."""

    def __init__(
        self,
        rulebook: RuleBook,
        *,
        latency: LatencyModel | None = None,
        updates_publisher: InvalidationPublisher | None = None,
        fault: FaultInjector | None = None,
        rule_store: RuleStore | None = None,
    ) -> None:
        self.rulebook = rulebook
        self.latency = latency
        self.updates_publisher = updates_publisher
        self.fault = fault
        self.rule_store = rule_store
        self.stats = ServiceStats()
        self._rules_lock = asyncio.Lock()
        self._answering = asyncio.Event()  # cleared while a rules change is being published
        self._answering.set()

    # --- proposition endpoints --------------------------------------------------------------
    async def _simulate(self, items: int = 1) -> web.Response | None:
        """Injected delay and failure, in that order (a failing backend is slow too)."""
        if self.latency is not None:
            delay_ms = self.latency.sample_ms(items)
            self.stats.simulated_latency_ms += delay_ms
            if delay_ms > 0:
                await asyncio.sleep(delay_ms / 1000.0)
        if self.fault is not None and self.fault.should_fail():
            self.stats.faults_injected += 1
            return _error("injected fault", self.fault.status)
        return None

    async def batch(self, request: web.Request) -> web.Response:
        self.stats.requests += 1
        try:
            body = await _read_json(request)
            items = body.get("items") if isinstance(body, dict) else None
            if not isinstance(items, list):
                raise _BadRequest("body must be {'items': [{'key': str, 'alert': {...}}, ...]}")
            for index, item in enumerate(items):
                if not isinstance(item, dict):
                    raise _BadRequest(f"items[{index}] must be an object")
                _check_item(item.get("key"), item.get("alert"), f"items[{index}]")
        except _BadRequest as exc:
            self.stats.bad_requests += 1
            return _error(str(exc))
        self.stats.items += len(items)
        self.stats.record_batch(len(items))
        if not self._answering.is_set():  # a rules change is being published
            await self._answering.wait()
        # The rules live when the request arrived answer it, even if PUT /v1/rules lands during
        # the simulated latency: the answer of a slow backend reflects when it was computed.
        rulebook = self.rulebook
        failure = await self._simulate(len(items))
        if failure is not None:
            return failure
        propose = rulebook.propose
        results: dict[str, Any] = {}
        for item in items:
            key = item["key"]
            if key not in results:
                results[key] = propose(item["alert"])
        self.stats.unique_keys += len(results)
        self.stats.empty_results += sum(1 for r in results.values() if not r)
        return _json({"version": rulebook.version, "results": results})

    async def single(self, request: web.Request) -> web.Response:
        self.stats.requests += 1
        try:
            body = await _read_json(request)
            if not isinstance(body, dict):
                raise _BadRequest("body must be {'key': str, 'alert': {...}}")
            _check_item(body.get("key"), body.get("alert"), "body")
        except _BadRequest as exc:
            self.stats.bad_requests += 1
            return _error(str(exc))
        self.stats.single_requests += 1
        self.stats.items += 1
        if not self._answering.is_set():
            await self._answering.wait()
        rulebook = self.rulebook  # as in batch: the rules live on arrival
        failure = await self._simulate()
        if failure is not None:
            return failure
        propositions = rulebook.propose(body["alert"])
        self.stats.unique_keys += 1
        self.stats.empty_results += not propositions
        return _json({"version": rulebook.version, "propositions": propositions})

    # --- health and rules --------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok", "version": self.rulebook.version})

    async def get_rules(self, request: web.Request) -> web.Response:
        response = _json(self.rulebook.to_dict())
        response.headers[VERSION_HEADER] = self.rulebook.version
        return response

    async def put_rules(self, request: web.Request) -> web.Response:
        try:
            document = await _read_json(request)
            new_book = RuleBook.from_dict(document)
        except (_BadRequest, RuleBookError) as exc:
            return _error(str(exc))
        async with self._rules_lock:  # two concurrent PUTs must not publish out of order
            old_book = self.rulebook
            if new_book.version == old_book.version:
                return _json({"version": new_book.version, "changed": False, "invalidation": None, "published": False})
            changed = old_book.changed_types(new_book)
            if changed is not None and len(changed) == 1:
                invalidation = Invalidation(scope="type", version=new_book.version, alert_type=next(iter(changed)))
            else:
                invalidation = Invalidation(scope="all", version=new_book.version)
            if self.updates_publisher is None:  # `serve --no-updates`: said, not silent
                problem = self._commit(new_book)
                if problem is not None:
                    return _error(f"rules not changed: {problem}", 500)
                return _json(
                    {"version": new_book.version, "changed": True, "invalidation": invalidation, "published": False,
                     "warning": "updates are off (--no-updates): caches keep the old answers until you invalidate "
                                "them (stream-engine propositions invalidate) or they expire"}
                )  # fmt: skip
            # A worker may apply the invalidation before publish() returns here, and a fetch it
            # sends then must get the new rules: proposition requests wait for the outcome
            # (normally the few ms of one acknowledged send) and get the new rules if it was
            # published, the old ones if not.
            self._answering.clear()
            try:
                problem = await self._publish(invalidation)
                if problem is None:
                    problem = self._commit(new_book)
            finally:
                self._answering.set()
        if problem is not None:
            return _error(f"rules not changed: {problem}", 503)
        log.info("rules replaced: %s -> %s (%s)", old_book.version, new_book.version, invalidation.scope)
        return _json({"version": new_book.version, "changed": True, "invalidation": invalidation, "published": True})

    def _commit(self, book: RuleBook) -> str | None:
        """Store (if there is a store) and make live; None on success, else why not."""
        if self.rule_store is not None:
            try:
                self.rule_store.save(book)
            except OSError as exc:
                log.error("cannot store the rules in %s: %s", self.rule_store.path, exc)
                return f"cannot store them: {exc}"
        self.rulebook = book
        return None

    async def _publish(self, invalidation: Invalidation) -> str | None:
        """None on success, else why it was not published."""
        if self.updates_publisher is None:
            return "no updates publisher configured"
        try:
            await self.updates_publisher.publish(invalidation)
        except Exception as exc:  # noqa: BLE001 - report to the caller, keep serving
            log.warning("publishing %s failed: %r", invalidation, exc)
            return f"publish failed: {exc!r}"
        return None

    # --- admin -------------------------------------------------------------------------------
    async def invalidate(self, request: web.Request) -> web.Response:
        try:
            body = await _read_json(request)
            if not isinstance(body, dict) or not set(body) <= {"scope", "key", "alert_type"}:
                raise _BadRequest("body must be {'scope': 'key'|'type'|'all', 'key'?: str, 'alert_type'?: str}")
            invalidation = Invalidation(
                scope=body.get("scope"),  # type: ignore[arg-type]  # validated by Invalidation
                version=self.rulebook.version,
                key=body.get("key"),
                alert_type=body.get("alert_type"),
            )
        except (_BadRequest, InvalidInvalidation) as exc:
            return _error(str(exc))
        problem = await self._publish(invalidation)
        if problem is not None:
            return _error(problem, 503 if self.updates_publisher is None else 502)
        return _json({"published": True, "invalidation": invalidation})

    async def put_latency(self, request: web.Request) -> web.Response:
        try:
            body = await _read_json(request)
            if body is None or (isinstance(body, dict) and not body.get("median_ms") and not body.get("per_item_ms")):
                self.latency = None
            elif isinstance(body, dict):
                self.latency = LatencyModel(
                    _number(body, "median_ms") if body.get("median_ms") is not None else 0.0,
                    _number(body, "p99_ms") if body.get("p99_ms") is not None else None,
                    per_item_ms=_number(body, "per_item_ms") if body.get("per_item_ms") is not None else 0.0,
                    seed=body.get("seed") if isinstance(body.get("seed"), int) else None,
                )
            else:
                raise _BadRequest("body must be {'median_ms': ms, 'p99_ms': ms, 'per_item_ms'?: ms, 'seed'?: int} or null")
        except (_BadRequest, ValueError) as exc:
            return _error(str(exc))
        return _json({"latency": self.latency.describe() if self.latency else None})

    async def put_fault(self, request: web.Request) -> web.Response:
        try:
            body = await _read_json(request)
            if not isinstance(body, dict):
                raise _BadRequest("body must be {'error_rate': 0..1, 'status'?: int, 'seed'?: int}")
            rate = _number(body, "error_rate")
            status = body.get("status", 503)
            if not isinstance(status, int) or isinstance(status, bool):
                raise _BadRequest("status must be an integer")
            seed = body.get("seed")
            self.fault = FaultInjector(rate, status, seed if isinstance(seed, int) else None) if rate > 0 else None
        except (_BadRequest, ValueError) as exc:
            return _error(str(exc))
        return _json({"fault": self.fault.describe() if self.fault else None})

    async def get_stats(self, request: web.Request) -> web.Response:
        return _json(
            {
                **self.stats.as_dict(),
                "version": self.rulebook.version,
                "latency": self.latency.describe() if self.latency else None,
                "fault": self.fault.describe() if self.fault else None,
            }
        )

    async def reset_stats(self, request: web.Request) -> web.Response:
        self.stats = ServiceStats()
        return _json({"reset": True})


def _number(body: dict[str, Any], name: str) -> float:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _BadRequest(f"{name} must be a number")
    return float(value)


SERVICE_KEY = web.AppKey("proposition_service", PropositionService)


def make_app(
    rulebook: RuleBook,
    *,
    admin_token: str,
    latency: LatencyModel | None = None,
    updates_publisher: InvalidationPublisher | None = None,
    fault: FaultInjector | None = None,
    rule_store: RuleStore | None = None,
) -> web.Application:
    """The service as an aiohttp app; ``app[SERVICE_KEY]`` is its state (tests, CLI).

    ``admin_token`` guards every route outside ``OPEN_PATHS``; there is no unguarded mode.
    """
    if not admin_token:
        raise ValueError("the proposition service needs an admin token for its rule and admin routes")
    service = PropositionService(
        rulebook, latency=latency, updates_publisher=updates_publisher, fault=fault, rule_store=rule_store
    )
    admin_only = bearer_auth(admin_token, protects=lambda request: request.path not in OPEN_PATHS)
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[admin_only])
    app[SERVICE_KEY] = service
    app.router.add_post("/v1/propositions/batch", service.batch)
    app.router.add_post("/v1/propositions", service.single)
    app.router.add_get("/healthz", service.healthz)
    app.router.add_get("/v1/rules", service.get_rules)
    app.router.add_put("/v1/rules", service.put_rules)
    app.router.add_post("/v1/admin/invalidate", service.invalidate)
    app.router.add_put("/v1/admin/latency", service.put_latency)
    app.router.add_put("/v1/admin/fault", service.put_fault)
    app.router.add_get("/v1/stats", service.get_stats)
    app.router.add_delete("/v1/stats", service.reset_stats)
    return app
