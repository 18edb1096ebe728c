"""One way to open a ClickHouse client, embedded (chDB) or HTTP, from a URL.

``chdb://DIR`` runs the engine in this process (imports chdb: ~300 MB RSS, one data directory
per process); ``http(s)://user:pass@host:port`` talks to a server. Both return the same sync
``clickhouse_connect`` client, so every caller has one code path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def check_identifier(name: str) -> str:
    """Database names go into DDL, which cannot take bound parameters: allow plain names only."""
    if not IDENTIFIER.match(name):
        raise ValueError(f"not a plain ClickHouse identifier: {name!r}")
    return name


@dataclass(frozen=True, slots=True)
class Target:
    interface: str  # chdb | http | https
    path: str = ""
    host: str = ""
    port: int = 0
    username: str = "default"
    password: str = ""


def parse_url(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme == "chdb":
        path = unquote(parts.netloc + parts.path)
        if not path:
            raise ValueError(f"chdb URL needs a directory: {url!r}")
        return Target("chdb", path=path)
    if parts.scheme in ("http", "https"):
        secure = parts.scheme == "https"
        return Target(
            parts.scheme,
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (8443 if secure else 8123),
            username=unquote(parts.username) if parts.username else "default",
            password=unquote(parts.password) if parts.password else "",
        )
    raise ValueError(f"unsupported ClickHouse URL scheme {parts.scheme!r} (want chdb, http or https)")


def connect(
    url: str, database: str | None = None, *, connect_timeout_s: float = 3.0, send_receive_timeout_s: float = 30.0
) -> Client:
    """A sync client on ``database`` (which must exist; ``None`` = the server default)."""
    import clickhouse_connect

    target = parse_url(url)
    if database is not None:
        check_identifier(database)
    if target.interface == "chdb":
        from pathlib import Path

        Path(target.path).mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(interface="chdb", path=target.path, database=database)
    _no_dataframes()
    return clickhouse_connect.get_client(
        interface=target.interface,
        host=target.host,
        port=target.port,
        username=target.username,
        password=target.password,
        secure=target.interface == "https",
        database=database,
        connect_timeout=connect_timeout_s,
        # clickhouse-connect's default is 300 s: a hung server would stall a flush (and stop()) that long.
        send_receive_timeout=send_receive_timeout_s,
    )


def _no_dataframes() -> None:
    """Tell clickhouse-connect that pandas is absent, unless this process already uses it.

    Nothing here reads or writes DataFrames, yet every insert asks whether its data is one, and
    that question imports pandas and pyarrow (installed as chDB's dependencies): +85 MB RSS in a
    worker that writes to a ClickHouse server. (With chDB embedded, chDB loads them anyway.)
    """
    import sys

    from clickhouse_connect.driver import options

    if "pandas" not in sys.modules and "pd" not in vars(options):
        options.pd = None  # type: ignore[attr-defined]
        options.pd_time_test = None  # type: ignore[attr-defined]
    if "numpy" not in sys.modules and "np" not in vars(options):
        options.np = None  # type: ignore[attr-defined]
