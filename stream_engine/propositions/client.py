"""The worker's client for the proposition service: one batch request per call, never raises.

* One ``POST /v1/propositions/batch`` per ``fetch_many`` with the distinct keys of the batch.
* Single-flight: a key already being fetched by a concurrent ``fetch_many`` of the same
  ``epoch`` is not requested again; the second caller awaits the first caller's answer. Callers
  pass the invalidation sequence their fetch is tagged with (stream_engine.cache.invalidation),
  so a batch that starts after an invalidation never shares an answer fetched before it.
* Retries (tenacity: exponential backoff + jitter) on transport errors, timeouts, 5xx and 429;
  never on other 4xx (retrying our own bad request cannot help).
* A circuit breaker (:mod:`stream_engine.propositions.breaker`) so a dead service costs nothing
  per batch instead of timeouts × retries.

Service problems come back as ``FetchResult.failed[key] = reason``:
``timeout``, ``unavailable`` (connection/transport error), ``breaker_open``,
``service_error:<status>`` (e.g. ``service_error:503``), ``service_error:malformed`` (a 200
that is not the contracted JSON), ``service_error:missing`` (the answer lacks a requested key).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import httpx
import orjson
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from stream_engine.masking import Masker
from stream_engine.models import Alert, Proposition
from stream_engine.propositions.breaker import CircuitBreaker

log = logging.getLogger(__name__)

BATCH_PATH = "/v1/propositions/batch"
MALFORMED = "service_error:malformed"

class Outcome(NamedTuple):
    """What a waiter gets for one key: the propositions, or why there are none; plus the rules version."""

    propositions: list[Proposition] | None
    reason: str | None
    version: str | None


@dataclass(slots=True)
class FetchResult:
    found: dict[str, list[Proposition]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    version: str | None = None  # rules version of the answer (None if nothing was answered)


@dataclass(slots=True)
class ClientCounters:
    batches: int = 0  # fetch_many calls that sent a request (or would have, breaker permitting)
    requests: int = 0  # HTTP attempts, retries included
    retries: int = 0
    failures: int = 0  # batches that ended without an answer
    breaker_rejections: int = 0
    keys_requested: int = 0
    keys_shared: int = 0  # keys answered by a concurrent caller's request (single-flight)


class _Retryable(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Final(Exception):
    def __init__(self, reason: str, service_unhealthy: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.service_unhealthy = service_unhealthy


class PropositionClient:
    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        connect_timeout_s: float,
        retries: int,
        pool_size: int,
        breaker_fail_max: int,
        breaker_reset_s: float,
        transport: httpx.AsyncBaseTransport | None = None,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        redact_fields: Iterable[str] = (),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.masker = Masker(redact_fields)  # secret attributes never reach the service
        self.retries = retries
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.breaker = CircuitBreaker(breaker_fail_max, breaker_reset_s, clock)
        self.counters = ClientCounters()
        self._inflight: dict[str, tuple[int, asyncio.Future[Outcome]]] = {}  # key -> (epoch, answer)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size),
            transport=transport,
            headers={"content-type": "application/json", "accept": "application/json"},
        )

    @classmethod
    def from_settings(cls, settings: Any, transport: httpx.AsyncBaseTransport | None = None) -> PropositionClient:
        return cls(
            settings.propositions_url,
            timeout_s=settings.service_timeout_s,
            connect_timeout_s=settings.service_connect_timeout_s,
            retries=settings.service_retries,
            pool_size=settings.service_pool_size,
            breaker_fail_max=settings.breaker_fail_max,
            breaker_reset_s=settings.breaker_reset_s,
            transport=transport,
            redact_fields=settings.redact_fields,
        )

    # --- public -----------------------------------------------------------------------------

    async def fetch_many(self, requests: dict[str, Alert], epoch: int = 0) -> FetchResult:
        """Propositions for each key (its alert is the example the service ranks). Never raises
        for service problems; every requested key ends in exactly one of found / failed. Only
        fetches of the same ``epoch`` are shared."""
        result = FetchResult()
        if not requests:
            return result
        loop = asyncio.get_running_loop()
        own: dict[str, Alert] = {}
        mine: dict[str, asyncio.Future[Outcome]] = {}
        shared: dict[str, asyncio.Future[Outcome]] = {}
        inflight = self._inflight
        for key, alert in requests.items():
            pending = inflight.get(key)
            if pending is not None and pending[0] == epoch:
                shared[key] = pending[1]
            else:
                own[key] = alert
                mine[key] = loop.create_future()
                inflight[key] = (epoch, mine[key])
        self.counters.keys_shared += len(shared)
        try:
            if own:
                for key, outcome in (await self._fetch_own(own)).items():
                    mine[key].set_result(outcome)
        finally:
            for key, future in mine.items():
                if inflight.get(key, (0, None))[1] is future:
                    del inflight[key]
                if not future.done():  # we were cancelled: waiters must not hang
                    future.set_result(Outcome(None, "unavailable", None))
        for key, future in mine.items():
            _add(result, key, future.result())
        for key, future in shared.items():
            # shield: our cancellation must not cancel the future another caller owns.
            _add(result, key, await asyncio.shield(future))
        return result

    async def health(self) -> dict[str, Any]:
        """``GET /healthz`` (raises httpx errors: for readiness checks and the CLI, not the hot path)."""
        response = await self._http.get("/healthz")
        response.raise_for_status()
        return orjson.loads(response.content)

    def stats(self) -> dict[str, Any]:
        return {
            **asdict(self.counters),
            "breaker": self.breaker.state,
            "breaker_opened": self.breaker.times_opened,
            "in_flight_keys": len(self._inflight),
            "pool_connections": self._pool_connections(),
        }

    async def close(self) -> None:
        await self._http.aclose()

    # --- internals --------------------------------------------------------------------------

    async def _fetch_own(self, own: dict[str, Alert]) -> dict[str, Outcome]:
        self.counters.batches += 1
        if not self.breaker.allow():
            self.counters.breaker_rejections += 1
            return {key: Outcome(None, "breaker_open", None) for key in own}
        self.counters.keys_requested += len(own)
        body, unencodable = encode_request(own, self.masker)
        if unencodable:
            log.warning("%d of %d alerts cannot be encoded for the service", len(unencodable), len(own))
            if len(unencodable) == len(own):
                self.breaker.abandon()
                return unencodable
        try:
            data = await self._post_with_retries(body)
            outcomes = _parse_batch(data, own)
            outcomes.update(unencodable)
        except (_Retryable, _Final) as exc:
            if isinstance(exc, _Retryable) or exc.service_unhealthy:
                self.breaker.record_failure()
            else:  # a 4xx: the service is up and answering, our request was wrong
                self.breaker.record_success()
            self.counters.failures += 1
            log.warning("proposition service batch of %d keys failed: %s", len(own), exc.reason)
            return {key: unencodable.get(key, Outcome(None, exc.reason, None)) for key in own}
        except BaseException:
            self.breaker.abandon()
            raise
        self.breaker.record_success()
        return outcomes

    async def _post_with_retries(self, body: bytes) -> Any:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential_jitter(
                multiplier=self.backoff_initial_s, max=self.backoff_max_s, jitter=self.backoff_initial_s
            ),
            retry=retry_if_exception_type(_Retryable),
            before_sleep=self._count_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._post_once(body)
        raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover

    def _count_retry(self, retry_state: Any) -> None:
        self.counters.retries += 1

    async def _post_once(self, body: bytes) -> Any:
        self.counters.requests += 1
        try:
            response = await self._http.post(BATCH_PATH, content=body)
        except httpx.TimeoutException:
            raise _Retryable("timeout") from None
        except httpx.HTTPError:  # connection refused/reset, protocol errors …
            raise _Retryable("unavailable") from None
        status = response.status_code
        if status >= 500 or status == 429:
            raise _Retryable(f"service_error:{status}")
        if status != 200:
            raise _Final(f"service_error:{status}", service_unhealthy=False)
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise _Final(MALFORMED, service_unhealthy=True) from None

    def _pool_connections(self) -> int | None:
        # httpx exposes no pool metrics; peek at httpcore's pool when it is the default transport.
        pool = getattr(getattr(self._http, "_transport", None), "_pool", None)
        connections = getattr(pool, "connections", None)
        return len(connections) if isinstance(connections, list) else None


def alert_payload(alert: Alert, masker: Masker | None = None) -> dict[str, Any]:
    """The alert as the schema describes it (no ``fingerprint: null``), secret attributes masked."""
    payload: dict[str, Any] = {
        "id": alert.id,
        "type": alert.type,
        "timestamp": alert.timestamp,
        "severity": alert.severity,
        "source": alert.source,
        "attributes": masker.attributes(alert.attributes) if masker else alert.attributes,
    }
    if alert.fingerprint is not None:
        payload["fingerprint"] = alert.fingerprint
    return payload


def _parse_batch(data: Any, own: dict[str, Alert]) -> dict[str, Outcome]:
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise _Final(MALFORMED, service_unhealthy=True)
    version = data.get("version")
    version = version if isinstance(version, str) else None
    results = data["results"]
    outcomes: dict[str, Outcome] = {}
    for key in own:
        items = results.get(key)
        if items is None:
            outcomes[key] = Outcome(None, "service_error:missing", version)
            continue
        propositions = _parse_propositions(items)
        outcomes[key] = Outcome(propositions, None, version) if propositions is not None else Outcome(None, MALFORMED, version)
    return outcomes


def _parse_propositions(items: Any) -> list[Proposition] | None:
    if not isinstance(items, list):
        return None
    propositions = []
    for item in items:
        if not isinstance(item, dict):
            return None
        action, confidence, rationale = item.get("action"), item.get("confidence"), item.get("rationale", "")
        if (
            not isinstance(action, str)
            or not action
            or isinstance(confidence, bool)
            or not isinstance(confidence, (int, float))
            or not (0.0 <= confidence <= 1.0)
            or not math.isfinite(confidence)
            or not isinstance(rationale, str)
        ):
            return None
        propositions.append(Proposition(action, float(confidence), rationale))
    return propositions


def _add(result: FetchResult, key: str, outcome: Outcome) -> None:
    if outcome.propositions is not None:
        result.found[key] = outcome.propositions
        if result.version is None:
            result.version = outcome.version
    else:
        result.failed[key] = outcome.reason or "unavailable"


def encode_request(own: dict[str, Alert], masker: Masker | None = None) -> tuple[bytes, dict[str, Outcome]]:
    """The batch body, and the keys whose alert JSON cannot carry (they fail alone, not the batch)."""
    try:
        items = [{"key": key, "alert": alert_payload(alert, masker)} for key, alert in own.items()]
        return orjson.dumps({"items": items}), {}
    except (TypeError, orjson.JSONEncodeError):
        pass
    encoded: list[bytes] = []
    failed: dict[str, Outcome] = {}
    for key, alert in own.items():
        try:
            encoded.append(orjson.dumps({"key": key, "alert": alert_payload(alert, masker)}))
        except (TypeError, orjson.JSONEncodeError):
            failed[key] = Outcome(None, "unencodable", None)
    return b'{"items":[' + b",".join(encoded) + b"]}", failed
