"""Bearer tokens for the two HTTP servers: the worker API and the proposition service.

    app = web.Application(middlewares=[bearer_auth(token, protects=lambda r: r.path.startswith("/api/v1/"))])

A protected request without ``Authorization: Bearer <token>`` (or with another token) gets
``401 {"error": "unauthorized", "detail": ...}`` and a ``WWW-Authenticate: Bearer`` header. The
comparison is constant-time (:func:`hmac.compare_digest`), so response timing says nothing about
how much of a guessed token was right.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]

SCHEME = "Bearer "
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class TokenRequired(RuntimeError):
    """A server would be reachable beyond this machine with nothing guarding it."""


def bearer_auth(token: str, *, protects: Callable[[web.Request], bool]) -> Middleware:
    """Middleware answering 401 to a protected request that does not carry ``token``.

    An empty ``token`` protects by refusing every protected request (nothing can match it).
    """
    expected = token.encode()

    @web.middleware
    async def require_bearer(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not protects(request):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        if not header.startswith(SCHEME):
            return unauthorized("send the header `Authorization: Bearer <token>`")
        given = header[len(SCHEME) :].strip().encode()
        if not expected or not hmac.compare_digest(given, expected):
            return unauthorized("wrong token")
        return await handler(request)

    return require_bearer


def unauthorized(detail: str) -> web.Response:
    return web.Response(
        body=orjson.dumps({"error": "unauthorized", "detail": detail}),
        status=401,
        content_type="application/json",
        headers={"WWW-Authenticate": 'Bearer realm="stream-engine"'},
    )


def bearer_header(token: str) -> dict[str, str]:
    """Request headers carrying ``token`` (none when it is empty)."""
    return {"Authorization": f"{SCHEME}{token}"} if token else {}


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a server reachable from this machine only.

    Empty, ``0.0.0.0`` and ``::`` mean every interface; a name other than localhost may resolve
    anywhere, so only loopback addresses and localhost count.
    """
    host = host.strip().strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_token_beyond_loopback(host: str, token: str, *, server: str, token_env: str, host_env: str) -> None:
    """Raise :class:`TokenRequired` when ``server`` would listen beyond loopback without a token."""
    if token or is_loopback(host):
        return
    raise TokenRequired(
        f"refusing to start: the {server} would listen on {host or 'every interface'!s}, beyond loopback, "
        f"with no token. Set {token_env} (e.g. `export {token_env}=$(openssl rand -hex 32)`; clients then "
        f"send `Authorization: Bearer <token>`), or bind 127.0.0.1 ({host_env})."
    )
