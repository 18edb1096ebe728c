"""The reference proposition service (`stream-engine propositions serve`) as a stack part."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import orjson

from stream_engine.settings import SecretStr, Settings
from stream_engine.stack.component import Component


def settings_flags(settings: Settings) -> list[str]:
    """Global CLI flags that reproduce `settings` in a child `stream-engine` process.

    Only non-default values are passed; the child inherits the environment anyway. Secrets
    never go on a command line (``ps``, pid files and the stack's logs show it): pass them in the
    child's environment.
    """
    flags: list[str] = []
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            continue
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        if value == default:
            continue
        text = orjson.dumps(value).decode() if isinstance(value, (dict, list)) else str(value)
        flags += ["--" + name.replace("_", "-"), text]
    return flags


class PropositionsComponent(Component):
    name = "propositions"
    ready_timeout_s = 30.0
    stop_timeout_s = 10.0

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.settings.propositions_port,)

    def prepare(self) -> str:
        from stream_engine.propositions.admin import ensure_admin_token

        token, generated = ensure_admin_token(self.settings)
        return f"admin token {'generated in' if generated else 'from'} {token.source}"

    def env(self) -> dict[str, str] | None:
        from stream_engine.propositions.admin import ENV, ensure_admin_token

        token, _ = ensure_admin_token(self.settings)
        return {**os.environ, ENV: token.value}

    def command(self) -> list[str]:
        # The service talks to the stack's own Kafka/Redis, wherever the caller's bootstrap points.
        child = self.settings.with_overrides(
            kafka_bootstrap=f"127.0.0.1:{self.settings.kafka_port}",
            redis_url=f"redis://127.0.0.1:{self.settings.redis_port}/0",
        )
        return [sys.executable, "-m", "stream_engine", *settings_flags(child), "propositions", "serve"]

    def cwd(self) -> Path | None:
        return self.layout.root

    def healthy(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self.settings.propositions_port}/healthz")


def http_ok(url: str, timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (loopback URL we built)
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False
