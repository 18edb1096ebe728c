"""PropositionClient against httpx.MockTransport (the typed seam in front of the network)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest

from stream_engine.models import Alert, Proposition
from stream_engine.propositions.client import PropositionClient, alert_payload
from stream_engine.settings import Settings
from stream_engine.validation import REDACTED
from tests.unit.fakes import FakeClock

Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


class Service:
    """Records every request and answers with ``respond`` (default: one proposition per key)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.respond: Handler = self.answer

    def answer(self, request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        results = {
            item["key"]: [{"action": f"act:{item['alert']['id']}", "confidence": 0.9, "rationale": "r"}]
            for item in body["items"]
        }
        return httpx.Response(200, content=orjson.dumps({"version": "v1", "results": results}))

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(orjson.loads(request.content) if request.content else {})
        response = self.respond(request)
        return await response if asyncio.iscoroutine(response) else response  # type: ignore[return-value]

    def keys_per_request(self) -> list[list[str]]:
        return [[item["key"] for item in body["items"]] for body in self.requests]


def alert(alert_id: str, fingerprint: str | None = None) -> Alert:
    return Alert(
        id=alert_id, type="ci_failure", timestamp=1.5, severity="high", source="ci", attributes={"repo": "r"}, fingerprint=fingerprint
    )


@pytest.fixture
def service() -> Service:
    return Service()


def make_client(service: Service, clock: FakeClock, **overrides: Any) -> PropositionClient:
    options: dict[str, Any] = dict(
        timeout_s=0.5,
        connect_timeout_s=0.2,
        retries=2,
        pool_size=4,
        breaker_fail_max=3,
        breaker_reset_s=10.0,
        transport=httpx.MockTransport(service),
        backoff_initial_s=0.0,
        backoff_max_s=0.0,
        clock=clock,
    )
    options.update(overrides)
    return PropositionClient("http://service.test/", **options)


@pytest.fixture
async def client(service: Service, clock: FakeClock) -> AsyncIterator[PropositionClient]:
    client = make_client(service, clock)
    yield client
    await client.close()


async def test_success_sends_one_batch_with_the_contracted_body(client: PropositionClient, service: Service) -> None:
    result = await client.fetch_many({"k1": alert("a1", fingerprint="fp"), "k2": alert("a2")})
    assert result.found == {"k1": [Proposition("act:a1", 0.9, "r")], "k2": [Proposition("act:a2", 0.9, "r")]}
    assert result.failed == {}
    assert result.version == "v1"
    assert service.requests == [
        {
            "items": [
                {"key": "k1", "alert": alert_payload(alert("a1", fingerprint="fp"))},
                {"key": "k2", "alert": alert_payload(alert("a2"))},
            ]
        }
    ]
    assert "fingerprint" not in service.requests[0]["items"][1]["alert"]
    assert client.stats()["requests"] == 1


async def test_request_goes_to_the_batch_endpoint(service: Service, clock: FakeClock) -> None:
    seen: list[tuple[str, str]] = []

    def respond(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, str(request.url)))
        return service.answer(request)

    service.respond = respond
    client = make_client(service, clock)
    try:
        await client.fetch_many({"k": alert("a")})
    finally:
        await client.close()
    assert seen == [("POST", "http://service.test/v1/propositions/batch")]


async def test_empty_request_sends_nothing(client: PropositionClient, service: Service) -> None:
    result = await client.fetch_many({})
    assert (result.found, result.failed, service.requests) == ({}, {}, [])


async def test_no_rule_is_an_empty_list_not_a_failure(client: PropositionClient, service: Service) -> None:
    service.respond = lambda request: httpx.Response(200, json={"version": "v1", "results": {"k": []}})
    result = await client.fetch_many({"k": alert("a")})
    assert result.found == {"k": []} and result.failed == {}


async def test_concurrent_batches_sharing_a_key_make_one_request_for_it(client: PropositionClient, service: Service) -> None:
    release = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return service.answer(request)

    service.respond = slow
    first = asyncio.create_task(client.fetch_many({"shared": alert("a1"), "only1": alert("a2")}))
    await asyncio.sleep(0)  # let the first batch register its keys as in flight
    while not service.requests:
        await asyncio.sleep(0)
    second = asyncio.create_task(client.fetch_many({"shared": alert("a3"), "only2": alert("a4")}))
    while len(service.requests) < 2:
        await asyncio.sleep(0)
    release.set()
    one, two = await asyncio.gather(first, second)
    assert service.keys_per_request() == [["shared", "only1"], ["only2"]]
    assert one.found["shared"] == two.found["shared"] == [Proposition("act:a1", 0.9, "r")]
    assert set(two.found) == {"shared", "only2"}
    assert client.stats()["keys_shared"] == 1
    assert client.stats()["in_flight_keys"] == 0


async def test_a_fetch_is_never_shared_across_an_invalidation(client: PropositionClient, service: Service) -> None:
    """A batch tagged after an invalidation (a later epoch) asks again instead of joining."""
    release = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return service.answer(request)

    service.respond = slow
    before = asyncio.create_task(client.fetch_many({"shared": alert("a1")}, epoch=4))
    while not service.requests:
        await asyncio.sleep(0)
    after = asyncio.create_task(client.fetch_many({"shared": alert("a2")}, epoch=5))
    same = asyncio.create_task(client.fetch_many({"shared": alert("a3")}, epoch=5))
    while len(service.requests) < 2:
        await asyncio.sleep(0)
    release.set()
    one, two, three = await asyncio.gather(before, after, same)
    assert service.keys_per_request() == [["shared"], ["shared"]]
    assert two.found["shared"] == three.found["shared"] == [Proposition("act:a2", 0.9, "r")] != one.found["shared"]
    assert client.stats()["keys_shared"] == 1 and client.stats()["in_flight_keys"] == 0


async def test_shared_key_failure_reaches_the_waiter(client: PropositionClient, service: Service) -> None:
    release = asyncio.Event()

    async def failing(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(400)

    service.respond = failing
    first = asyncio.create_task(client.fetch_many({"shared": alert("a1")}))
    while not service.requests:
        await asyncio.sleep(0)
    second = asyncio.create_task(client.fetch_many({"shared": alert("a2")}))
    await asyncio.sleep(0)
    release.set()
    one, two = await asyncio.gather(first, second)
    assert one.failed == two.failed == {"shared": "service_error:400"}
    assert len(service.requests) == 1


async def test_cancelled_owner_does_not_hang_waiters(client: PropositionClient, service: Service) -> None:
    never = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        await never.wait()
        raise AssertionError("unreachable")

    service.respond = hang
    owner = asyncio.create_task(client.fetch_many({"shared": alert("a1")}))
    while not service.requests:
        await asyncio.sleep(0)
    waiter = asyncio.create_task(client.fetch_many({"shared": alert("a2")}))
    await asyncio.sleep(0)
    owner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await owner
    assert (await waiter).failed == {"shared": "unavailable"}
    assert client.stats()["in_flight_keys"] == 0
    assert client.breaker.allow()  # the cancelled call left no verdict behind


async def test_retry_then_success(client: PropositionClient, service: Service) -> None:
    answers = iter([httpx.Response(503), httpx.Response(429)])
    service.respond = lambda request: next(answers, None) or service.answer(request)
    result = await client.fetch_many({"k": alert("a")})
    assert result.found == {"k": [Proposition("act:a", 0.9, "r")]}
    assert len(service.requests) == 3
    stats = client.stats()
    assert (stats["requests"], stats["retries"], stats["failures"]) == (3, 2, 0)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.ConnectTimeout("slow connect"), "timeout"),
        (httpx.PoolTimeout("pool exhausted"), "timeout"),
        (httpx.ConnectError("refused"), "unavailable"),
        (httpx.RemoteProtocolError("reset"), "unavailable"),
    ],
)
async def test_transport_problems_are_retried_then_failed(
    client: PropositionClient, service: Service, error: Exception, reason: str
) -> None:
    def raise_error(request: httpx.Request) -> httpx.Response:
        raise error

    service.respond = raise_error
    result = await client.fetch_many({"k1": alert("a"), "k2": alert("b")})
    assert result.found == {}
    assert result.failed == {"k1": reason, "k2": reason}
    assert len(service.requests) == 3  # first attempt + 2 retries
    assert client.stats()["failures"] == 1


async def test_retries_exhausted_on_5xx(client: PropositionClient, service: Service) -> None:
    service.respond = lambda request: httpx.Response(502)
    result = await client.fetch_many({"k": alert("a")})
    assert result.failed == {"k": "service_error:502"}
    assert len(service.requests) == 3
    assert client.stats()["retries"] == 2


async def test_zero_retries_means_one_attempt(service: Service, clock: FakeClock) -> None:
    service.respond = lambda request: httpx.Response(500)
    client = make_client(service, clock, retries=0)
    try:
        assert (await client.fetch_many({"k": alert("a")})).failed == {"k": "service_error:500"}
    finally:
        await client.close()
    assert len(service.requests) == 1


@pytest.mark.parametrize("status", [400, 404, 413, 422])
async def test_4xx_is_not_retried_and_does_not_open_the_breaker(
    service: Service, clock: FakeClock, status: int
) -> None:
    service.respond = lambda request: httpx.Response(status)
    client = make_client(service, clock, breaker_fail_max=1)
    try:
        assert (await client.fetch_many({"k": alert("a")})).failed == {"k": f"service_error:{status}"}
        assert len(service.requests) == 1
        assert client.breaker.state == "closed"
    finally:
        await client.close()


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"version": "v1"}',
        b'{"version": "v1", "results": []}',
    ],
)
async def test_malformed_response_fails_every_key(client: PropositionClient, service: Service, body: bytes) -> None:
    service.respond = lambda request: httpx.Response(200, content=body)
    result = await client.fetch_many({"k1": alert("a"), "k2": alert("b")})
    assert result.failed == {"k1": "service_error:malformed", "k2": "service_error:malformed"}
    assert len(service.requests) == 1  # a garbage answer is not retried
    assert client.breaker.consecutive_failures == 1


@pytest.mark.parametrize(
    "items",
    [
        {"not": "a list"},
        ["not a dict"],
        [{"confidence": 0.5}],
        [{"action": "", "confidence": 0.5}],
        [{"action": "a", "confidence": "high"}],
        [{"action": "a", "confidence": True}],
        [{"action": "a", "confidence": 1.5}],
        [{"action": "a", "confidence": -0.1}],
        [{"action": "a", "confidence": 0.5, "rationale": 3}],
    ],
)
async def test_malformed_propositions_fail_only_that_key(client: PropositionClient, service: Service, items: Any) -> None:
    good = [{"action": "ok", "confidence": 1, "rationale": "fine"}]
    service.respond = lambda request: httpx.Response(200, json={"version": "v2", "results": {"bad": items, "good": good}})
    result = await client.fetch_many({"bad": alert("a"), "good": alert("b")})
    assert result.failed == {"bad": "service_error:malformed"}
    assert result.found == {"good": [Proposition("ok", 1.0, "fine")]}
    assert result.version == "v2"


async def test_rationale_is_optional_and_missing_keys_fail(client: PropositionClient, service: Service) -> None:
    service.respond = lambda request: httpx.Response(
        200, json={"version": "v1", "results": {"k1": [{"action": "a", "confidence": 0.4}]}}
    )
    result = await client.fetch_many({"k1": alert("a"), "k2": alert("b")})
    assert result.found == {"k1": [Proposition("a", 0.4, "")]}
    assert result.failed == {"k2": "service_error:missing"}


async def test_breaker_opens_after_fail_max_and_closes_after_reset(
    service: Service, clock: FakeClock
) -> None:
    service.respond = lambda request: httpx.Response(503)
    client = make_client(service, clock, retries=0, breaker_fail_max=2, breaker_reset_s=10)
    try:
        for _ in range(2):
            assert (await client.fetch_many({"k": alert("a")})).failed == {"k": "service_error:503"}
        assert client.breaker.state == "open"
        assert (await client.fetch_many({"k": alert("a"), "j": alert("b")})).failed == {
            "k": "breaker_open",
            "j": "breaker_open",
        }
        assert len(service.requests) == 2  # nothing was sent while open
        assert client.stats()["breaker_rejections"] == 1

        clock.now += 10  # half-open: one trial call; it fails, so open again
        assert client.breaker.state == "half_open"
        assert (await client.fetch_many({"k": alert("a")})).failed == {"k": "service_error:503"}
        assert client.breaker.state == "open"
        assert len(service.requests) == 3

        clock.now += 10  # the next trial succeeds: closed
        service.respond = service.answer
        assert (await client.fetch_many({"k": alert("a")})).found == {"k": [Proposition("act:a", 0.9, "r")]}
        assert client.stats()["breaker"] == "closed"
        assert client.stats()["breaker_opened"] == 2
    finally:
        await client.close()


async def test_from_settings_and_stats(service: Service) -> None:
    settings = Settings(propositions_url="http://svc.test:9000", service_retries=0, breaker_fail_max=7)
    client = PropositionClient.from_settings(settings, transport=httpx.MockTransport(service))
    try:
        assert client.base_url == "http://svc.test:9000"
        assert client.retries == 0 and client.breaker.fail_max == 7
        await client.fetch_many({"k": alert("a")})
        stats = client.stats()
        assert stats["requests"] == 1 and stats["keys_requested"] == 1 and stats["breaker"] == "closed"
        assert stats["pool_connections"] is None  # not observable through a mock transport
    finally:
        await client.close()


async def test_pool_connections_visible_with_the_default_transport() -> None:
    client = PropositionClient(
        "http://127.0.0.1:9", timeout_s=0.2, connect_timeout_s=0.2, retries=0, pool_size=3, breaker_fail_max=5, breaker_reset_s=1
    )
    try:
        assert client.stats()["pool_connections"] == 0
        # Nothing listens on port 9 (discard): a real connection failure is "unavailable".
        assert (await client.fetch_many({"k": alert("a")})).failed == {"k": "unavailable"}
    finally:
        await client.close()


async def test_health(service: Service, clock: FakeClock) -> None:
    service.respond = lambda request: httpx.Response(200, json={"status": "ok", "version": "v9"})
    client = make_client(service, clock)
    try:
        assert await client.health() == {"status": "ok", "version": "v9"}
    finally:
        await client.close()


async def test_an_alert_json_cannot_carry_fails_alone_and_the_rest_are_fetched(
    client: PropositionClient, service: Service
) -> None:
    deep: dict[str, Any] = {}
    cursor = deep
    for _ in range(300):  # deeper than orjson.dumps allows (the decoder rejects this; belt and braces)
        cursor["n"] = {}
        cursor = cursor["n"]
    bad = Alert(id="bad", type="ci_failure", timestamp=1, severity="low", source="s", attributes=deep)
    result = await client.fetch_many({"k-bad": bad, "k-ok": alert("ok")})
    assert result.failed == {"k-bad": "unencodable"}
    assert set(result.found) == {"k-ok"}
    assert service.keys_per_request() == [["k-ok"]]


async def test_a_request_of_only_unencodable_alerts_is_not_sent(client: PropositionClient, service: Service) -> None:
    deep: dict[str, Any] = {}
    cursor = deep
    for _ in range(300):
        cursor["n"] = {}
        cursor = cursor["n"]
    bad = Alert(id="bad", type="ci_failure", timestamp=1, severity="low", source="s", attributes=deep)
    result = await client.fetch_many({"k-bad": bad})
    assert result.failed == {"k-bad": "unencodable"} and not result.found
    assert service.requests == []


async def test_secret_attributes_never_reach_the_service(service: Service, clock: FakeClock) -> None:
    client = make_client(service, clock, redact_fields=["password", "token"])
    leaky = Alert("s1", "ci_failure", 1.5, "high", "ci", {"repo": "r", "Password": "sk-client", "deep": [{"token": "t-1"}]})
    try:
        await client.fetch_many({"k": leaky})
    finally:
        await client.close()
    (body,) = service.requests
    sent = body["items"][0]["alert"]["attributes"]
    assert sent == {"repo": "r", "Password": REDACTED, "deep": [{"token": REDACTED}]}
    assert leaky.attributes["Password"] == "sk-client"  # the alert itself keeps its value (nothing else sees it)


async def test_from_settings_masks_the_configured_fields(service: Service) -> None:
    client = PropositionClient.from_settings(Settings(redact_fields=["api_key"]), transport=httpx.MockTransport(service))
    try:
        await client.fetch_many({"k": Alert("s", "infra", 1.0, "low", "x", {"api_key": "sk-x"})})
    finally:
        await client.close()
    assert service.requests[0]["items"][0]["alert"]["attributes"] == {"api_key": REDACTED}
