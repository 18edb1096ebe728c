"""``stream-engine sql "QUERY"``: one statement on the configured ClickHouse, printed as clickhouse-client does.

Read-only by default (``readonly=1``: SELECT, SHOW, DESCRIBE …); ``--write`` lifts it. The result
is the server's own bytes in the requested output format (TabSeparated unless ``--format`` says
otherwise), streamed to stdout, so it works while workers write. Over HTTP it is one POST to the
ClickHouse HTTP interface (the stack's endpoint or a server); a ``chdb://`` URL runs the engine in
this process, which works only while no worker holds that directory.
"""

from __future__ import annotations

import argparse
import sys
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from stream_engine.settings import Settings

DEFAULT_FORMAT = "TabSeparated"
READONLY_HINT = "stream-engine sql is read-only by default: pass --write to change data or schema"


class SqlError(Exception):
    """The server's error (``Code: N. DB::Exception: …``) or why it could not be reached."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "sql", help="Run one SQL statement on ClickHouse, print the result (TSV like clickhouse-client; read-only)."
    )
    p.add_argument("query", nargs="?", default="-", help="the statement ('-' or none: read it from stdin)")
    p.add_argument("--format", "-f", default=DEFAULT_FORMAT, help="any ClickHouse output format (default TabSeparated)")
    p.add_argument("--write", action="store_true", help="allow statements that change data or schema")
    p.add_argument("--database", "-d", default=None, help="default database (default: settings clickhouse_database)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="bind {NAME:Type} in the query (repeatable), like clickhouse-client --param_NAME")  # fmt: skip
    p.set_defaults(func=run_sql)


def run_sql(args: argparse.Namespace, settings: Settings) -> int:
    query = sys.stdin.read() if args.query == "-" else args.query
    try:
        params = dict(_param(p) for p in args.param)
        execute(
            settings.effective_clickhouse_url, query, database=args.database or settings.clickhouse_database,
            fmt=args.format, write=args.write, params=params, out=sys.stdout.buffer,
        )  # fmt: skip
    except SqlError as exc:
        sys.stdout.flush()
        print(str(exc), file=sys.stderr)
        return 1
    return 0


def _param(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise SqlError(f"--param wants NAME=VALUE, got {text!r}")
    return name, value


def execute(
    url: str, query: str, *, database: str, fmt: str = DEFAULT_FORMAT, write: bool = False,
    params: dict[str, str] | None = None, out: IO[bytes],
) -> None:  # fmt: skip
    """Run ``query`` and write the result to ``out``; raises :class:`SqlError`."""
    from stream_engine.sinks.clickhouse.client import parse_url

    if not query.strip():
        raise SqlError("no query: give one as the argument or on stdin")
    target = parse_url(url)
    if target.interface == "chdb":
        _execute_embedded(target.path, query, database, fmt, write, params or {}, out)
    else:
        _execute_http(url, query, database, fmt, write, params or {}, out)


def _execute_http(
    url: str, query: str, database: str, fmt: str, write: bool, params: dict[str, str], out: IO[bytes]
) -> None:
    import httpx

    from stream_engine.masking import mask_url_passwords
    from stream_engine.sinks.clickhouse.client import parse_url

    target = parse_url(url)
    args = {"database": database, "default_format": fmt, **{f"param_{k}": v for k, v in params.items()}}
    if not write:
        args["readonly"] = "1"
    base = f"{target.interface}://{target.host}:{target.port}/"
    try:
        with httpx.stream(
            "POST", base, params=args, content=query.encode(), auth=(target.username, target.password),
            timeout=httpx.Timeout(None, connect=5.0),
        ) as response:  # fmt: skip
            if response.status_code != 200:
                raise SqlError(_explain(response.read().decode(errors="replace").strip()))
            for chunk in response.iter_bytes():
                out.write(chunk)
            out.flush()
    except httpx.HTTPError as exc:
        raise SqlError(
            f"ClickHouse at {mask_url_passwords(url)} does not answer ({type(exc).__name__}: {exc}); "
            "`stream-engine stack up` starts the local one"
        ) from None


def _execute_embedded(
    path: str, query: str, database: str, fmt: str, write: bool, params: dict[str, str], out: IO[bytes]
) -> None:
    from pathlib import Path

    from chdb import state

    try:
        conn = state.connect(str(Path(path).resolve()))
    except Exception as exc:
        raise SqlError(
            f"cannot open chdb://{path} ({exc}); a running worker holds it: query the stack's ClickHouse "
            "endpoint instead (the default clickhouse_url)"
        ) from None
    try:
        for statement in (f"USE `{database}`", *(() if write else ("SET readonly = 1",))):
            conn.query(statement, "TabSeparated")
        out.write(conn.query(query, fmt, params=params).bytes())
        out.flush()
    except Exception as exc:
        raise SqlError(_explain(str(exc))) from None
    finally:
        conn.close()


def _explain(message: str) -> str:
    if "Code: 164." in message and "readonly" in message:
        return f"{message}\n({READONLY_HINT})"
    return message
