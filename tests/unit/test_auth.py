"""Bearer-token middleware and the loopback rule (stream_engine.auth), through real HTTP."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from stream_engine import auth
from stream_engine.auth import TokenRequired, bearer_auth, bearer_header, is_loopback, require_token_beyond_loopback

TOKEN = "s3cret-token"


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    app = web.Application(middlewares=[bearer_auth(TOKEN, protects=lambda r: r.path.startswith("/private"))])
    app.router.add_get("/open", ok)
    app.router.add_get("/private/thing", ok)
    async with TestClient(TestServer(app)) as c:
        yield c


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "Authorization: Bearer"),
        ({"Authorization": "Bearer wrong"}, "wrong token"),
        ({"Authorization": f"Bearer {TOKEN}x"}, "wrong token"),
        ({"Authorization": f"Bearer {TOKEN[:-1]}"}, "wrong token"),
        ({"Authorization": f"Basic {TOKEN}"}, "Authorization: Bearer"),
        ({"Authorization": TOKEN}, "Authorization: Bearer"),
        ({"Authorization": "Bearer  "}, ""),  # HTTP trims the value: either refusal will do
    ],
)
async def test_a_protected_route_without_the_token_is_401_json(client: TestClient, headers: dict[str, str], detail: str) -> None:  # type: ignore[type-arg]
    response = await client.get("/private/thing", headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    body = await response.json()
    assert body["error"] == "unauthorized" and detail in body["detail"]


async def test_the_token_opens_the_route_and_open_routes_need_none(client: TestClient) -> None:  # type: ignore[type-arg]
    assert (await client.get("/private/thing", headers=bearer_header(TOKEN))).status == 200
    assert (await client.get("/open")).status == 200
    assert (await client.get("/private/missing", headers=bearer_header(TOKEN))).status == 404
    assert (await client.get("/private/missing")).status == 401  # no route discovery without the token


async def test_the_comparison_is_constant_time(client: TestClient, monkeypatch: Any) -> None:  # type: ignore[type-arg]
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert (await client.get("/private/thing", headers=bearer_header("guess"))).status == 401
    assert (await client.get("/private/thing", headers=bearer_header(TOKEN))).status == 200
    assert calls == [(b"guess", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


async def test_an_empty_token_refuses_every_protected_request() -> None:
    app = web.Application(middlewares=[bearer_auth("", protects=lambda r: True)])
    app.router.add_get("/x", ok)
    async with TestClient(TestServer(app)) as c:
        assert (await c.get("/x")).status == 401
        assert (await c.get("/x", headers={"Authorization": "Bearer "})).status == 401


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
        ("LOCALHOST", True), ("0.0.0.0", False), ("", False), ("::", False), ("192.168.1.4", False),
        ("10.0.0.1", False), ("example.com", False), ("localhost.evil.com", False),
    ],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_beyond_loopback_a_token_is_required_and_the_error_says_how_to_set_it() -> None:
    kwargs = {"server": "worker API", "token_env": "X_TOKEN", "host_env": "X_HOST"}
    require_token_beyond_loopback("127.0.0.1", "", **kwargs)
    require_token_beyond_loopback("0.0.0.0", "t", **kwargs)
    with pytest.raises(TokenRequired) as refused:
        require_token_beyond_loopback("0.0.0.0", "", **kwargs)
    assert "X_TOKEN" in str(refused.value) and "0.0.0.0" in str(refused.value) and "X_HOST" in str(refused.value)


def test_bearer_header() -> None:
    assert bearer_header("") == {}
    assert bearer_header("t") == {"Authorization": "Bearer t"}
