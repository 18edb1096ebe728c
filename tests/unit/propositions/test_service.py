"""The proposition service through real HTTP (aiohttp's TestServer/TestClient).

The only stand-in is the invalidation publisher, at its typed seam (InvalidationPublisher).
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from stream_engine.propositions.rules import RuleBook
from stream_engine.propositions.service import SERVICE_KEY, VERSION_HEADER, FaultInjector, LatencyModel, make_app
from stream_engine.propositions.updates import Invalidation

BOOK = RuleBook.load()
TOKEN = "unit-admin-token"


class RecordingPublisher:
    """Implements InvalidationPublisher; optionally fails like a broker outage would."""

    def __init__(self, error: Exception | None = None) -> None:
        self.published: list[Invalidation] = []
        self.error = error

    async def publish(self, invalidation: Invalidation) -> None:
        if self.error is not None:
            raise self.error
        self.published.append(invalidation)


MakeClient = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    clients: list[TestClient] = []

    async def make(rulebook: RuleBook = BOOK, *, headers: dict[str, str] | None = None, **kwargs: Any) -> TestClient:
        """A client of the service; it sends the admin token unless ``headers`` says otherwise."""
        app = make_app(rulebook, admin_token=TOKEN, **kwargs)
        default = {"Authorization": f"Bearer {TOKEN}"} if headers is None else headers
        client = TestClient(TestServer(app), headers=default)
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def alert(alert_type: str, **attributes: Any) -> dict[str, Any]:
    return {"id": "x", "type": alert_type, "timestamp": 1.0, "severity": "high", "source": "t", "attributes": attributes}


TIMEOUT = alert("ci_failure", repo="web", job="build", error_class="Timeout")
VELOCITY = alert("scam", pattern="velocity", merchant="corner-shop")
UNKNOWN = alert("infra", service="api", check="quantum_flux")


async def post_json(client: TestClient, path: str, body: Any, method: str = "POST") -> tuple[int, Any]:
    response = await client.request(method, path, data=orjson.dumps(body), headers={"Content-Type": "application/json"})
    return response.status, orjson.loads(await response.read())


# --- propositions --------------------------------------------------------------------------------


async def test_batch_answers_every_key_best_first_with_the_version(make_client: MakeClient) -> None:
    client = await make_client()
    status, body = await post_json(
        client,
        "/v1/propositions/batch",
        {"items": [{"key": "k1", "alert": TIMEOUT}, {"key": "k2", "alert": VELOCITY}, {"key": "k3", "alert": UNKNOWN}]},
    )
    assert status == 200
    assert body["version"] == BOOK.version
    assert set(body["results"]) == {"k1", "k2", "k3"}
    assert body["results"]["k1"][0] == {
        "action": "retry_job",
        "confidence": 0.92,
        "rationale": BOOK.propose(TIMEOUT)[0].rationale,
    }
    assert [p["action"] for p in body["results"]["k2"]] == ["hold_transaction", "contact_customer"]
    assert body["results"]["k3"] == []


async def test_empty_batch_is_fine(make_client: MakeClient) -> None:
    status, body = await post_json(await make_client(), "/v1/propositions/batch", {"items": []})
    assert (status, body["results"]) == (200, {})


async def test_duplicate_keys_are_answered_once_from_the_first_item(make_client: MakeClient) -> None:
    client = await make_client()
    items = [{"key": "same", "alert": TIMEOUT}, {"key": "same", "alert": UNKNOWN}, {"key": "same", "alert": VELOCITY}]
    status, body = await post_json(client, "/v1/propositions/batch", {"items": items})
    assert status == 200
    assert list(body["results"]) == ["same"]
    assert body["results"]["same"][0]["action"] == "retry_job"
    _, stats = await post_json(client, "/v1/stats", None, method="GET")
    assert (stats["items"], stats["unique_keys"], stats["batch_requests"]) == (3, 1, 1)


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[]",
        b'{"items": {}}',
        b'{"things": []}',
        b'{"items": [1]}',
        b'{"items": [{"alert": {"type": "infra"}}]}',
        b'{"items": [{"key": "", "alert": {"type": "infra"}}]}',
        b'{"items": [{"key": 5, "alert": {"type": "infra"}}]}',
        b'{"items": [{"key": "k", "alert": "infra"}]}',
        b'{"items": [{"key": "k", "alert": {"severity": "high"}}]}',
        b'{"items": [{"key": "ok", "alert": {"type": "infra"}}, {"key": "k"}]}',
    ],
)
async def test_malformed_batch_is_a_400_with_an_error(make_client: MakeClient, raw: bytes) -> None:
    client = await make_client()
    response = await client.post("/v1/propositions/batch", data=raw)
    assert response.status == 400
    assert (await response.json())["error"]
    stats = await (await client.get("/v1/stats")).json()
    assert stats["bad_requests"] == 1 and stats["items"] == 0


async def test_single_proposition(make_client: MakeClient) -> None:
    client = await make_client()
    status, body = await post_json(client, "/v1/propositions", {"key": "k", "alert": VELOCITY})
    assert status == 200
    assert body["version"] == BOOK.version
    assert [p["action"] for p in body["propositions"]] == ["hold_transaction", "contact_customer"]
    status, body = await post_json(client, "/v1/propositions", {"key": "k", "alert": UNKNOWN})
    assert (status, body["propositions"]) == (200, [])


@pytest.mark.parametrize("body", [[], {"alert": TIMEOUT}, {"key": "k"}, {"key": "k", "alert": {"type": 1}}])
async def test_malformed_single_is_a_400(make_client: MakeClient, body: Any) -> None:
    status, answer = await post_json(await make_client(), "/v1/propositions", body)
    assert status == 400 and answer["error"]


async def test_healthz(make_client: MakeClient) -> None:
    response = await (await make_client()).get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok", "version": BOOK.version}


# --- rules and invalidations ---------------------------------------------------------------------


async def test_get_rules_round_trips_through_put_without_a_change(make_client: MakeClient) -> None:
    publisher = RecordingPublisher()
    client = await make_client(updates_publisher=publisher)
    response = await client.get("/v1/rules")
    assert response.headers[VERSION_HEADER] == BOOK.version
    document = await response.json()
    assert document == BOOK.to_dict()
    status, body = await post_json(client, "/v1/rules", document, method="PUT")
    assert (status, body["changed"], body["version"]) == (200, False, BOOK.version)
    assert publisher.published == []


async def test_put_rules_of_one_type_changes_version_answers_and_publishes_a_type_invalidation(
    make_client: MakeClient,
) -> None:
    publisher = RecordingPublisher()
    client = await make_client(updates_publisher=publisher)
    document = BOOK.to_dict()
    for rule in document["types"]["ci_failure"]:
        if rule["match"] == {"error_class": "Timeout"}:
            rule["propositions"][0]["confidence"] = 0.5
    status, body = await post_json(client, "/v1/rules", document, method="PUT")
    assert status == 200
    new_version = body["version"]
    assert new_version != BOOK.version and body["changed"] and body["published"]
    assert body["invalidation"]["scope"] == "type" and body["invalidation"]["alert_type"] == "ci_failure"
    assert len(publisher.published) == 1
    sent = publisher.published[0]
    assert (sent.scope, sent.alert_type, sent.version) == ("type", "ci_failure", new_version)

    _, answer = await post_json(client, "/v1/propositions/batch", {"items": [{"key": "k", "alert": TIMEOUT}]})
    assert answer["version"] == new_version
    assert answer["results"]["k"][0] == {"action": "retry_job", "confidence": 0.5, "rationale": answer["results"]["k"][0]["rationale"]}
    assert (await (await client.get("/healthz")).json())["version"] == new_version


async def test_put_rules_of_several_types_publishes_scope_all(make_client: MakeClient) -> None:
    publisher = RecordingPublisher()
    client = await make_client(updates_publisher=publisher)
    document = BOOK.to_dict()
    document["types"]["scam"].pop()
    document["types"]["infra"].pop()
    status, body = await post_json(client, "/v1/rules", document, method="PUT")
    assert status == 200
    assert [(i.scope, i.version, i.alert_type) for i in publisher.published] == [("all", body["version"], None)]


async def test_invalid_rules_are_rejected_and_nothing_changes(make_client: MakeClient) -> None:
    publisher = RecordingPublisher()
    client = await make_client(updates_publisher=publisher)
    document = BOOK.to_dict()
    document["types"]["infra"][0]["propositions"][0]["confidence"] = 7
    status, body = await post_json(client, "/v1/rules", document, method="PUT")
    assert status == 400 and "confidence" in body["error"]
    response = await client.put("/v1/rules", data=b"nope")
    assert response.status == 400
    assert (await (await client.get("/healthz")).json())["version"] == BOOK.version
    assert publisher.published == []


async def test_put_rules_fails_and_changes_nothing_when_the_invalidation_cannot_be_published(make_client: MakeClient) -> None:
    document = BOOK.to_dict()
    document["types"]["infra"].pop()
    client = await make_client(updates_publisher=RecordingPublisher(error=ConnectionError("broker down")))
    status, body = await post_json(client, "/v1/rules", document, method="PUT")
    assert status == 503 and "broker down" in body["error"]
    assert (await (await client.get("/healthz")).json())["version"] == BOOK.version
    assert await (await client.get("/v1/rules")).json() == BOOK.to_dict()


async def test_put_rules_without_updates_says_nothing_was_published(make_client: MakeClient) -> None:
    """``serve --no-updates``: an explicit choice, answered explicitly (the caller invalidates)."""
    document = BOOK.to_dict()
    document["types"]["infra"].pop()
    client = await make_client(updates_publisher=None)
    status, body = await post_json(client, "/v1/rules", document, method="PUT")
    assert (status, body["changed"], body["published"]) == (200, True, False)
    assert "--no-updates" in body["warning"]
    assert (await (await client.get("/healthz")).json())["version"] == body["version"] != BOOK.version


class GatedPublisher(RecordingPublisher):
    """Publishes when the test opens the gate (or fails, if told to)."""

    def __init__(self, error: Exception | None = None) -> None:
        super().__init__(error)
        self.started = asyncio.Event()
        self.gate = asyncio.Event()

    async def publish(self, invalidation: Invalidation) -> None:
        self.started.set()
        await self.gate.wait()
        await super().publish(invalidation)


@pytest.mark.parametrize("fails", [False, True])
async def test_requests_during_a_rules_change_wait_for_its_outcome(make_client: MakeClient, fails: bool) -> None:
    """A worker may apply the invalidation before the service's publish call returns: a fetch it
    sends then must already get the new rules. So proposition requests wait while the
    invalidation is being published, and get the new rules if it was, the old ones if not."""
    publisher = GatedPublisher(error=ConnectionError("broker down") if fails else None)
    client = await make_client(updates_publisher=publisher)
    document = BOOK.to_dict()
    for rule in document["types"]["ci_failure"]:
        if rule["match"] == {"error_class": "Timeout"}:
            rule["propositions"][0]["confidence"] = 0.5
    putting = asyncio.create_task(post_json(client, "/v1/rules", document, method="PUT"))
    await publisher.started.wait()
    asking = asyncio.create_task(post_json(client, "/v1/propositions/batch", {"items": [{"key": "k", "alert": TIMEOUT}]}))
    await asyncio.sleep(0.05)
    assert not asking.done(), "a proposition request was answered while the rules change was undecided"
    publisher.gate.set()
    status, _ = await putting
    _, answer = await asking
    assert status == (503 if fails else 200)
    assert answer["results"]["k"][0]["confidence"] == (0.92 if fails else 0.5)


async def test_put_rules_are_stored_and_loaded_by_the_next_service(make_client: MakeClient, tmp_path: Path) -> None:
    from stream_engine.propositions.rules import RuleStore

    store = RuleStore(tmp_path / "state" / "rules.json")
    assert store.load(default=BOOK).version == BOOK.version  # nothing stored yet: the default
    client = await make_client(store.load(default=BOOK), updates_publisher=RecordingPublisher(), rule_store=store)
    document = BOOK.to_dict()
    document["types"]["scam"].pop()
    status, body = await post_json(client, "/v1/rules", document, method="PUT")
    assert status == 200

    restarted = await make_client(store.load(default=BOOK), rule_store=store)
    assert (await (await restarted.get("/healthz")).json())["version"] == body["version"]
    assert await (await restarted.get("/v1/rules")).json() == document


async def test_admin_invalidate_publishes_with_the_current_version(make_client: MakeClient) -> None:
    publisher = RecordingPublisher()
    client = await make_client(updates_publisher=publisher)
    for request in ({"scope": "key", "key": "ci_failure|web|build|Timeout"}, {"scope": "type", "alert_type": "scam"}, {"scope": "all"}):
        status, body = await post_json(client, "/v1/admin/invalidate", request)
        assert status == 200 and body["published"]
    assert [(i.scope, i.key, i.alert_type, i.version) for i in publisher.published] == [
        ("key", "ci_failure|web|build|Timeout", None, BOOK.version),
        ("type", None, "scam", BOOK.version),
        ("all", None, None, BOOK.version),
    ]


@pytest.mark.parametrize(
    "request_body",
    [{"scope": "partition"}, {"scope": "key"}, {"scope": "type"}, {"scope": "all", "extra": 1}, ["all"], {"scope": "key", "key": 3}],
)
async def test_admin_invalidate_rejects_bad_requests(make_client: MakeClient, request_body: Any) -> None:
    publisher = RecordingPublisher()
    status, body = await post_json(await make_client(updates_publisher=publisher), "/v1/admin/invalidate", request_body)
    assert status == 400 and body["error"]
    assert publisher.published == []


async def test_admin_invalidate_without_or_with_a_failing_publisher(make_client: MakeClient) -> None:
    status, body = await post_json(await make_client(), "/v1/admin/invalidate", {"scope": "all"})
    assert status == 503 and "publisher" in body["error"]
    failing = await make_client(updates_publisher=RecordingPublisher(error=TimeoutError("no ack")))
    status, body = await post_json(failing, "/v1/admin/invalidate", {"scope": "all"})
    assert status == 502 and "no ack" in body["error"]


# --- latency model and faults --------------------------------------------------------------------


def test_latency_model_hits_its_median_and_p99_over_many_samples() -> None:
    model = LatencyModel(10.0, 50.0, seed=7)
    samples = sorted(model.sample_ms() for _ in range(20_000))
    assert statistics.median(samples) == pytest.approx(10.0, rel=0.05)
    assert samples[int(0.99 * len(samples))] == pytest.approx(50.0, rel=0.1)
    assert min(samples) > 0


def test_latency_model_is_reproducible_by_seed_and_fixed_when_p99_equals_median() -> None:
    a, b, c = LatencyModel(5, 20, seed=1), LatencyModel(5, 20, seed=1), LatencyModel(5, 20, seed=2)
    first = [a.sample_ms() for _ in range(10)]
    assert first == [b.sample_ms() for _ in range(10)]
    assert first != [c.sample_ms() for _ in range(10)]
    assert {LatencyModel.fixed(3).sample_ms() for _ in range(10)} == {3.0}
    assert LatencyModel(4).sample_ms() == 4.0


@pytest.mark.parametrize("median, p99", [(-1, 5), (10, 5)])
def test_latency_model_rejects_impossible_parameters(median: float, p99: float) -> None:
    with pytest.raises(ValueError):
        LatencyModel(median, p99)
    with pytest.raises(ValueError):
        LatencyModel(1, 2, per_item_ms=-0.1)


def test_latency_model_charges_every_item_on_top_of_the_request() -> None:
    model = LatencyModel.fixed(20)
    assert model.sample_ms(1) == 20.0 and model.sample_ms(100) == 20.0  # per request only: batching is free
    priced = LatencyModel(20, per_item_ms=0.25)
    assert (priced.sample_ms(), priced.sample_ms(1), priced.sample_ms(100)) == (20.25, 20.25, 45.0)
    assert LatencyModel(0, per_item_ms=0.5).sample_ms(10) == 5.0
    assert priced.describe() == {"median_ms": 20.0, "p99_ms": 20.0, "seed": None, "per_item_ms": 0.25}


async def test_the_batch_endpoint_is_delayed_per_item(make_client: MakeClient) -> None:
    client = await make_client(latency=LatencyModel(0.1, per_item_ms=0.2))
    items = [{"key": f"k{i}", "alert": TIMEOUT} for i in range(5)]
    await post_json(client, "/v1/propositions/batch", {"items": items})
    await post_json(client, "/v1/propositions", {"key": "k", "alert": TIMEOUT})
    stats = await (await client.get("/v1/stats")).json()
    assert stats["simulated_latency_ms"] == pytest.approx((0.1 + 5 * 0.2) + (0.1 + 0.2))
    status, body = await post_json(client, "/v1/admin/latency", {"median_ms": 0, "per_item_ms": 0.3}, "PUT")
    assert (status, body["latency"]) == (200, {"median_ms": 0.0, "p99_ms": 0.0, "seed": None, "per_item_ms": 0.3})


async def test_latency_applies_per_proposition_request_and_can_be_changed_or_disabled(make_client: MakeClient) -> None:
    client = await make_client(latency=LatencyModel.fixed(0.5))
    await post_json(client, "/v1/propositions/batch", {"items": [{"key": "k", "alert": TIMEOUT}]})
    await post_json(client, "/v1/propositions", {"key": "k", "alert": TIMEOUT})
    await client.get("/healthz")  # admin/health paths are never delayed
    stats = await (await client.get("/v1/stats")).json()
    assert stats["simulated_latency_ms"] == 1.0
    assert stats["latency"] == {"median_ms": 0.5, "p99_ms": 0.5, "seed": None}

    status, body = await post_json(client, "/v1/admin/latency", {"median_ms": 0.2, "p99_ms": 1.0, "seed": 3}, "PUT")
    assert (status, body["latency"]) == (200, {"median_ms": 0.2, "p99_ms": 1.0, "seed": 3})
    assert client.server.app[SERVICE_KEY].latency is not None
    status, body = await post_json(client, "/v1/admin/latency", {"median_ms": 0}, "PUT")
    assert (status, body["latency"]) == (200, None)
    assert client.server.app[SERVICE_KEY].latency is None


@pytest.mark.parametrize("body", [{"median_ms": 10, "p99_ms": 5}, {"median_ms": "fast"}, [1, 2]])
async def test_bad_latency_settings_are_a_400(make_client: MakeClient, body: Any) -> None:
    client = await make_client(latency=LatencyModel.fixed(1))
    status, answer = await post_json(client, "/v1/admin/latency", body, "PUT")
    assert status == 400 and answer["error"]
    assert client.server.app[SERVICE_KEY].latency.describe()["median_ms"] == 1.0  # type: ignore[union-attr]


async def test_fault_injection_fails_proposition_requests_only_and_can_be_cleared(make_client: MakeClient) -> None:
    client = await make_client()
    status, body = await post_json(client, "/v1/admin/fault", {"error_rate": 1.0, "status": 503}, "PUT")
    assert (status, body["fault"]["error_rate"]) == (200, 1.0)
    status, body = await post_json(client, "/v1/propositions/batch", {"items": [{"key": "k", "alert": TIMEOUT}]})
    assert status == 503 and body["error"] == "injected fault"
    status, _ = await post_json(client, "/v1/propositions", {"key": "k", "alert": TIMEOUT})
    assert status == 503
    assert (await client.get("/healthz")).status == 200
    stats = await (await client.get("/v1/stats")).json()
    assert stats["faults_injected"] == 2

    await post_json(client, "/v1/admin/fault", {"error_rate": 1.0, "status": 500}, "PUT")
    status, _ = await post_json(client, "/v1/propositions", {"key": "k", "alert": TIMEOUT})
    assert status == 500
    status, body = await post_json(client, "/v1/admin/fault", {"error_rate": 0}, "PUT")
    assert body["fault"] is None
    status, _ = await post_json(client, "/v1/propositions", {"key": "k", "alert": TIMEOUT})
    assert status == 200


async def test_partial_fault_rate_is_seeded(make_client: MakeClient) -> None:
    outcomes = []
    for _ in range(2):
        client = await make_client(fault=FaultInjector(0.3, 503, seed=11))
        statuses = [
            (await post_json(client, "/v1/propositions", {"key": "k", "alert": TIMEOUT}))[0] for _ in range(100)
        ]
        outcomes.append(statuses)
    assert outcomes[0] == outcomes[1]
    assert set(outcomes[0]) == {200, 503}
    assert 15 <= outcomes[0].count(503) <= 45


@pytest.mark.parametrize(
    "body", [{"error_rate": 1.5}, {"error_rate": "x"}, {"error_rate": 0.5, "status": 200}, {"error_rate": 0.5, "status": "503"}, []]
)
async def test_bad_fault_settings_are_a_400(make_client: MakeClient, body: Any) -> None:
    client = await make_client()
    status, answer = await post_json(client, "/v1/admin/fault", body, "PUT")
    assert status == 400 and answer["error"]
    assert client.server.app[SERVICE_KEY].fault is None


# --- stats ---------------------------------------------------------------------------------------


async def test_stats_count_requests_items_and_batch_sizes_and_reset(make_client: MakeClient) -> None:
    client = await make_client()
    for size in (1, 7, 300):
        items = [{"key": f"k{i}", "alert": UNKNOWN if i % 2 else TIMEOUT} for i in range(size)]
        assert (await post_json(client, "/v1/propositions/batch", {"items": items}))[0] == 200
    await post_json(client, "/v1/propositions", {"key": "s", "alert": TIMEOUT})
    stats = await (await client.get("/v1/stats")).json()
    assert stats["requests"] == 4
    assert (stats["batch_requests"], stats["single_requests"]) == (3, 1)
    assert stats["items"] == 1 + 7 + 300 + 1
    assert stats["empty_results"] == 0 + 3 + 150
    assert stats["batch_sizes"] == {
        "count": 3,
        "mean": round(308 / 3, 3),
        "max": 300,
        "histogram": {"<=1": 1, "<=10": 1, "<=500": 1},
    }
    assert (await client.delete("/v1/stats")).status == 200
    stats = await (await client.get("/v1/stats")).json()
    assert (stats["requests"], stats["items"], stats["batch_sizes"]["count"]) == (0, 0, 0)


# --- the admin token -----------------------------------------------------------------------------

ADMIN_ROUTES = [
    ("GET", "/v1/rules", None),
    ("PUT", "/v1/rules", BOOK.to_dict()),
    ("POST", "/v1/admin/invalidate", {"scope": "all"}),
    ("PUT", "/v1/admin/latency", {"median_ms": 50}),
    ("PUT", "/v1/admin/fault", {"error_rate": 1.0}),
    ("GET", "/v1/stats", None),
    ("DELETE", "/v1/stats", None),
    ("GET", "/v1/admin/unknown", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}])
async def test_rule_admin_and_stats_routes_are_401_without_the_token(
    make_client: MakeClient, method: str, path: str, body: Any, headers: dict[str, str]
) -> None:
    publisher = RecordingPublisher()
    client = await make_client(headers=headers, updates_publisher=publisher)
    before = client.server.app[SERVICE_KEY]
    status, answer = await post_json(client, path, body, method)
    assert status == 401 and answer["error"] == "unauthorized"
    service = client.server.app[SERVICE_KEY]
    assert service is before and service.latency is None and service.fault is None and publisher.published == []
    assert service.rulebook is BOOK  # nothing changed


async def test_the_read_path_and_health_need_no_token(make_client: MakeClient) -> None:
    client = await make_client(headers={})
    assert (await post_json(client, "/v1/propositions/batch", {"items": [{"key": "k", "alert": TIMEOUT}]}))[0] == 200
    assert (await post_json(client, "/v1/propositions", {"key": "k", "alert": TIMEOUT}))[0] == 200
    assert (await client.get("/healthz")).status == 200


async def test_with_the_token_an_admin_route_works(make_client: MakeClient) -> None:
    client = await make_client(headers={"Authorization": f"Bearer {TOKEN}"})
    status, body = await post_json(client, "/v1/admin/latency", {"median_ms": 5}, "PUT")
    assert status == 200 and body["latency"]["median_ms"] == 5.0


def test_there_is_no_unguarded_service() -> None:
    with pytest.raises(ValueError, match="admin token"):
        make_app(BOOK, admin_token="")
