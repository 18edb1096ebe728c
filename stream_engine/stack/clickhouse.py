"""ClickHouse for the local stack: the chDB HTTP endpoint (`stream-engine clickhouse serve`).

One process owns one data directory (``STACK_DIR/clickhouse``) and serves ClickHouse's HTTP
interface on 127.0.0.1:CLICKHOUSE_PORT, so every worker and every analyst talk to one store over
the production code path. When ``clickhouse_url`` names another ClickHouse (a real server), the
stack uses that one and starts nothing; with a ``chdb://`` URL the engine lives in the worker and
there is no service at all.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from stream_engine.stack.component import Component

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def clickhouse_answers(url: str, timeout_s: float = 1.0) -> bool:
    """``GET /ping`` answers ``Ok.`` (clickhouse-server and this project's endpoint alike)."""
    from stream_engine.sinks.clickhouse.client import parse_url

    try:
        target = parse_url(url)
    except ValueError:
        return False
    if target.interface == "chdb":
        return False
    try:
        ping = f"{target.interface}://{target.host}:{target.port}/ping"
        with urllib.request.urlopen(ping, timeout=timeout_s) as response:  # noqa: S310 (http(s) URL parsed above)
            return bool(response.status == 200 and response.read().startswith(b"Ok."))
    except (urllib.error.URLError, OSError, ValueError):
        return False


class ClickHouseComponent(Component):
    name = "clickhouse"
    ready_timeout_s = 60.0
    stop_timeout_s = 20.0  # in-flight requests get 10 s (the server's shutdown timeout)

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.settings.clickhouse_port,)

    @property
    def home(self) -> Path:
        return self.layout.root / "clickhouse"

    def _target(self):  # type: ignore[no-untyped-def]
        from stream_engine.sinks.clickhouse.client import parse_url

        return parse_url(self.settings.clickhouse_url) if self.settings.clickhouse_url else None

    def skip_reason(self) -> str | None:
        target = self._target()
        if target is not None and target.interface == "chdb":
            return "clickhouse_url is chdb:// (the engine runs inside the worker): no service to start"
        return None

    def elsewhere(self) -> str | None:
        """The configured ClickHouse when it is not this stack's endpoint (password masked)."""
        from stream_engine.masking import mask_url_passwords

        target = self._target()
        if target is None or target.interface == "chdb":
            return None
        if target.interface == "http" and target.host in LOOPBACK_HOSTS and target.port == self.settings.clickhouse_port:
            return None
        return mask_url_passwords(self.settings.clickhouse_url)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "stream_engine", "clickhouse", "serve", "--path", str((self.home / "data").resolve())]

    def env(self) -> dict[str, str] | None:
        # Settings (the URL may carry the password) go by environment, never argv: `ps` shows argv.
        return {**os.environ, **self.settings.to_env()}

    def cwd(self) -> Path | None:
        self.home.mkdir(parents=True, exist_ok=True)
        return self.home

    def healthy(self) -> bool:
        if self.elsewhere() is not None:
            return clickhouse_answers(self.settings.clickhouse_url)
        return clickhouse_answers(f"http://127.0.0.1:{self.settings.clickhouse_port}")
