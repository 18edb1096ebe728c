"""The proposition service's admin token: where it comes from, and requests that carry it.

One resolution for the service and the CLI alike: ``STREAM_ENGINE_ADMIN_TOKEN``
(``settings.admin_token``), else the file ``STACK_DIR/admin-token``. ``stack up`` (and
``propositions serve``) generate that file, mode 0600, when neither exists, so a local stack is
guarded from its first start and the CLI on the same machine finds the token without help.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

    from stream_engine.settings import Settings

TOKEN_FILE = "admin-token"
ENV = "STREAM_ENGINE_ADMIN_TOKEN"


class AdminTokenMissing(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class AdminToken:
    value: str = ""
    source: str = ""  # where it came from, for messages (never the value)

    def __repr__(self) -> str:  # a token must not end up in a log line by accident
        return f"AdminToken(source={self.source!r})"


def token_path(settings: Settings) -> Path:
    return Path(settings.stack_dir) / TOKEN_FILE


def find_admin_token(settings: Settings) -> AdminToken | None:
    """The configured token, else the stack directory's, else None."""
    configured = settings.admin_token.get_secret_value()
    if configured:
        return AdminToken(configured, ENV)
    path = token_path(settings)
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        return None
    return AdminToken(value, str(path)) if value else None


def ensure_admin_token(settings: Settings) -> tuple[AdminToken, bool]:
    """The token, generating ``STACK_DIR/admin-token`` (0600) when there is none; (token, generated)."""
    found = find_admin_token(settings)
    if found is not None:
        return found, False
    path = token_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    try:
        # O_EXCL: two concurrent `stack up`s cannot each write their own token over the other's.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        found = find_admin_token(settings)
        if found is None:
            raise AdminTokenMissing(f"{path} exists but is empty: delete it and run again") from None
        return found, False
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return AdminToken(value, str(path)), True


def require_admin_token(settings: Settings) -> AdminToken:
    found = find_admin_token(settings)
    if found is None:
        raise AdminTokenMissing(
            f"no admin token for the proposition service: set {ENV} (the value the service was started with), "
            f"or run `stream-engine stack up`, which writes one to {token_path(settings)}"
        )
    return found


def admin_request(settings: Settings, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request to the service's admin side (``settings.propositions_url``) with the token."""
    import httpx

    from stream_engine.auth import bearer_header

    token = require_admin_token(settings)
    headers = {**kwargs.pop("headers", {}), **bearer_header(token.value)}
    return httpx.request(method, settings.propositions_url.rstrip("/") + path, headers=headers, timeout=30, **kwargs)
