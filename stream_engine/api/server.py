"""The aiohttp application and its lifecycle inside the worker's event loop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING

from aiohttp import web

from stream_engine.api.admission import ConnectionLimit
from stream_engine.api.auth import api_auth
from stream_engine.api.handlers import Handlers

if TYPE_CHECKING:
    from stream_engine.runtime import Runtime

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Connections the kernel holds until the loop accepts them. A burst beyond it has its handshakes
# dropped (retried by clients, or reset): 10,000 at once saw 21-85 resets with 128, none with 1024.
BACKLOG = 1024
CONNECTION_LIMIT_ROUTE = "(connection limit)"  # the route under which refused connections are counted


def create_api_app(runtime: Runtime) -> web.Application:
    handlers = Handlers(runtime)

    @web.middleware
    async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:  # 404, 405, 413 from aiohttp itself
            status = exc.status
            raise
        finally:
            route = request.match_info.route.resource
            name = route.canonical if route is not None else "unmatched"
            runtime.monitor.api_request(name, status)
            if status >= 500:
                log.warning(
                    "api %s %s -> %d",
                    request.method,
                    request.path,
                    status,
                    extra={"status": status, "seconds": time.perf_counter() - started},
                )

    app = web.Application(client_max_size=runtime.settings.api_max_body_bytes, middlewares=[count_requests, *api_auth(runtime.settings)])
    app.router.add_post("/api/v1/alerts/process", handlers.process)
    app.router.add_post("/api/v1/outcomes", handlers.outcomes)
    app.router.add_get("/api/v1/stats", handlers.stats)
    app.router.add_get("/api/v1/analytics/{name}", handlers.analytics)
    app.router.add_get("/console", handlers.console)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/metrics", handlers.metrics)
    return app


class ApiServer:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self.connections: ConnectionLimit | None = None  # once started: open connections, the limit
        self.url: str | None = None

    async def start(self) -> str:
        """Bind and serve; returns ``http://host:port`` (the real port when asked for port 0)."""
        runtime = self.runtime
        settings = runtime.settings
        runner = web.AppRunner(create_api_app(runtime), access_log=None, handle_signals=False)
        await runner.setup()
        # Our own listening socket around aiohttp's low-level server (runner.server), so that the
        # number of connections it holds is bounded (aiohttp's TCPSite has no such bound).
        refused = partial(runtime.monitor.api_request, CONNECTION_LIMIT_ROUTE, 503)
        server = runner.server
        assert server is not None  # set by setup()
        self.connections = ConnectionLimit(server, settings.api_max_connections, refused)
        try:
            self._listener = await asyncio.get_running_loop().create_server(
                self.connections, settings.api_host, settings.api_port, backlog=BACKLOG
            )
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = self._listener.sockets[0].getsockname()[:2]
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        log.info("api listening on %s", self.url, extra={"api_url": self.url})
        return self.url

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()  # no new connections; the runner closes the open ones
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None
