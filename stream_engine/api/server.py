"""The aiohttp application and its lifecycle inside the worker's event loop."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from stream_engine.api.auth import api_auth
from stream_engine.api.handlers import Handlers
from stream_engine.api.metrics import build_registry

if TYPE_CHECKING:
    from stream_engine.runtime import Runtime

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_api_app(runtime: Runtime) -> web.Application:
    registry, collector = build_registry(runtime)
    handlers = Handlers(runtime, registry, collector)

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
        self.url: str | None = None

    async def start(self) -> str:
        """Bind and serve; returns ``http://host:port`` (the real port when asked for port 0)."""
        settings = self.runtime.settings
        runner = web.AppRunner(create_api_app(self.runtime), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, settings.api_host, settings.api_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        log.info("api listening on %s", self.url, extra={"api_url": self.url})
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
