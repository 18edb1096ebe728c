"""What the API admits: its own bounded work, so no caller can make the worker hold more.

Open connections, the bytes of decision requests in progress, the alerts they queue and
analytics queries each have a bound (settings ``api_max_connections``, ``api_max_request_bytes``,
``api_max_queued_alerts``, ``api_max_queries``). Work past a bound is refused at once — 503 (a
connection) or 429 (a request), with ``Retry-After`` — rather than queued: waiting work would
hold a connection, a body and parsed alerts, which is exactly the memory the bounds are for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import orjson
from aiohttp import web

RETRY_AFTER_S = 1  # a drain of the API's queue takes milliseconds; a second is a polite pause


class Busy(Exception):
    """One of the API's bounds is reached (429 + Retry-After); the stream is not affected."""


class Gate:
    """Holders of ``amount`` units each (a query, a request's bytes) up to ``limit`` units at once;
    one more is refused (:class:`Busy`), never queued. A lone holder always passes, so a request
    larger than the limit is served alone rather than never."""

    def __init__(self, limit: int, what: str) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self.what = what
        self.active = 0
        self.refused = 0

    @contextmanager
    def hold(self, amount: int = 1) -> Iterator[None]:
        if self.active and self.active + amount > self.limit:
            self.refused += 1
            raise Busy(f"{self.what}: {self.active} in progress, limit {self.limit}")
        self.active += amount
        try:
            yield
        finally:
            self.active -= amount


_REFUSAL_BODY = orjson.dumps({"error": "busy", "detail": "too many open connections"})
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    + f"Retry-After: {RETRY_AFTER_S}\r\nContent-Length: {len(_REFUSAL_BODY)}\r\nConnection: close\r\n\r\n".encode()
    + _REFUSAL_BODY
)
REFUSAL_LINGER_S = 2.0


class ConnectionLimit:
    """The protocol factory of the API's listening socket: aiohttp's own handler for up to
    ``limit`` open connections; past that, :class:`Refused`.

    Every connection aiohttp holds costs ~16 KB (its parser, buffers and handler task): 10,000
    clients at once grew a worker by ~180 MB before this bound, whatever their requests.
    """

    def __init__(self, server: web.Server, limit: int, on_refused: Callable[[], None] = lambda: None) -> None:
        self.server = server
        self.limit = limit
        self.on_refused = on_refused
        # Accepted, handler made, not yet in server.connections: asyncio accepts a whole backlog
        # batch before the first handler's connection_made registers it there.
        self._accepting = 0

    @property
    def open(self) -> int:
        return len(self.server.connections) + self._accepting

    def __call__(self) -> asyncio.BaseProtocol:
        if self.open >= self.limit:
            self.on_refused()
            return Refused()
        self._accepting += 1
        # Scheduled before the transport schedules the handler's connection_made, so it runs
        # right before it: the count never drops in between.
        asyncio.get_running_loop().call_soon(self._registered)
        return self.server()

    def _registered(self) -> None:
        self._accepting -= 1


class Refused(asyncio.Protocol):
    """A connection past the limit: answered 503 + Retry-After at once, before any of its request
    is parsed. What the client still sends is discarded until it closes (closing with unread data
    would reset the connection, and the client could lose the answer), for at most a moment."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(REFUSAL)
        if transport.can_write_eof():
            transport.write_eof()
        self._deadline = asyncio.get_running_loop().call_later(REFUSAL_LINGER_S, transport.abort)

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.cancel()
