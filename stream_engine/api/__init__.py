"""The worker's HTTP API (aiohttp), served inside the worker process (started by the engines' core).

    POST /api/v1/alerts/process     one alert or a list → {"decisions": [...]} (same core and tiers)
    GET  /api/v1/stats              live latency percentiles, hit ratios, errors, pool, RSS, lag
    GET  /api/v1/analytics/<query>  latency | cache | modes | slowest | stages | logs (ClickHouse)
    GET  /healthz                   200 once started and in the consumer group, else 503 + why
    GET  /metrics                   Prometheus text exposition

Bound to ``settings.api_host:api_port`` (127.0.0.1:8787 by default; port 0 = ephemeral). The
bound address is logged as ``api listening on http://host:port``.
"""

from __future__ import annotations

from stream_engine.api.server import ApiServer, create_api_app

__all__ = ["ApiServer", "create_api_app"]
