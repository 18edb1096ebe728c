"""The reference proposition service (`stream-engine propositions serve`) as a stack part."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from pathlib import Path

import orjson

from stream_engine.settings import Settings
from stream_engine.stack.component import Component


def settings_flags(settings: Settings) -> list[str]:
    """Global CLI flags that reproduce `settings` in a child `stream-engine` process.

    Only non-default values are passed; the child inherits the environment anyway.
    """
    flags: list[str] = []
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
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
