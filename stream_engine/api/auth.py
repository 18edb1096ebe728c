"""Who may call the worker API: with ``api_token`` set, every route but ``/healthz`` and
``/metrics`` needs ``Authorization: Bearer <api_token>``; without it the API must stay on loopback.

The health and metrics routes stay open for orchestrators and scrapers; they reveal counters,
never alerts, and change nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stream_engine.auth import Middleware, bearer_auth, require_token_beyond_loopback

if TYPE_CHECKING:
    from stream_engine.settings import Settings

# /console is a static page with no data: its requests to /api/v1/* carry the token.
OPEN_PATHS = frozenset({"/healthz", "/metrics", "/console"})


def check_api_exposure(settings: Settings) -> None:
    """Raise :class:`stream_engine.auth.TokenRequired` for a non-loopback ``api_host`` without a token."""
    require_token_beyond_loopback(
        settings.api_host,
        settings.api_token.get_secret_value(),
        server="worker API",
        token_env="STREAM_ENGINE_API_TOKEN",
        host_env="STREAM_ENGINE_API_HOST",
    )


def api_auth(settings: Settings) -> list[Middleware]:
    """The API app's auth middleware (none without a token: then it is loopback only)."""
    check_api_exposure(settings)
    token = settings.api_token.get_secret_value()
    # Everything not explicitly open is protected, so a new route cannot be left open by accident.
    return [bearer_auth(token, protects=lambda request: request.path not in OPEN_PATHS)] if token else []
