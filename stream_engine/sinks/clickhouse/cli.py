"""``stream-engine clickhouse migrate|info|serve`` and ``stream-engine query <name>``."""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream_engine.sinks.clickhouse.analytics import NAMES

if TYPE_CHECKING:
    from stream_engine.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ch = subparsers.add_parser("clickhouse", help="ClickHouse schema and state")
    ch_sub = ch.add_subparsers(dest="clickhouse_command", required=True)
    migrate_cmd = ch_sub.add_parser("migrate", help="create/upgrade the schema (idempotent)")
    migrate_cmd.add_argument("--cluster", metavar="NAME", help="ON CLUSTER NAME: Replicated*MergeTree tables + Distributed *_all")
    migrate_cmd.add_argument("--print", dest="print_only", action="store_true", help="print the DDL instead of applying it")
    migrate_cmd.set_defaults(func=cmd_migrate)
    info_cmd = ch_sub.add_parser("info", help="applied migrations and row counts")
    info_cmd.set_defaults(func=cmd_info)
    serve_cmd = ch_sub.add_parser("serve", help="ClickHouse's HTTP interface on a chDB directory (the stack's ClickHouse)")
    serve_cmd.add_argument("--path", type=Path, default=None, help="data directory (default STACK_DIR/clickhouse/data)")
    serve_cmd.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, default=None, help="port (default: settings clickhouse_port)")
    serve_cmd.set_defaults(func=cmd_serve)

    query = subparsers.add_parser("query", help="temporal queries over the proposition log")
    query.add_argument("name", choices=NAMES)
    query.add_argument("--from", dest="start", help="ISO time or epoch seconds (default: 1 hour ago, UTC)")
    # --until too: the top-level parser abbreviates options, so "--to" alone is ambiguous with
    # --topic-* unless it is built with allow_abbrev=False.
    query.add_argument("--to", "--until", dest="end", help="ISO time or epoch seconds (default: now, UTC)")
    query.add_argument("--interval", default="1m", help="1m, 5m, 15m, 1h or 1d")
    query.add_argument("--type", dest="alert_type", help="only this alert type")
    query.add_argument("--ids", help="comma-separated alert ids (for 'logs')")
    query.add_argument("--limit", type=int, default=20, help="rows for 'slowest'")
    query.add_argument("--approx", action="store_true", help="'latency' from the per-minute rollup (TDigest)")
    query.add_argument("--json", action="store_true", help="print JSON instead of a table")
    query.set_defaults(func=cmd_query)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from stream_engine.masking import mask_url_passwords
    from stream_engine.sinks.clickhouse.client import connect
    from stream_engine.sinks.clickhouse.schema import migrate

    url = settings.effective_clickhouse_url
    if args.cluster:
        from stream_engine.sinks.clickhouse import cluster

        if args.print_only:
            print(cluster.render_text(settings.clickhouse_database, settings.clickhouse_ttl_days, args.cluster), end="")
            return 0
        applied = cluster.migrate_on_cluster(connect(url, None), settings.clickhouse_database, settings.clickhouse_ttl_days, args.cluster)
        where = f"cluster {args.cluster} through {mask_url_passwords(url)} database {settings.clickhouse_database}"
        print(f"applied migrations {applied} on {where}" if applied else f"schema up to date on {where}")
        return 0
    if args.print_only:
        print("--print renders the cluster DDL: give --cluster NAME")
        return 2
    applied = migrate(connect(url, None), settings.clickhouse_database, settings.clickhouse_ttl_days)
    where = f"{mask_url_passwords(url)} database {settings.clickhouse_database}"
    print(f"applied migrations {applied} on {where}" if applied else f"schema up to date on {where}")
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """The login is the one in CLICKHOUSE_URL when it names this endpoint, else `default` without password."""
    import asyncio
    import sys

    from stream_engine.chdb_server import ClickHouseError, ServerConfig, run_server
    from stream_engine.logs import configure_logging
    from stream_engine.sinks.clickhouse.client import parse_url

    configure_logging(settings, worker=f"clickhouse:{args.port or settings.clickhouse_port}")
    user, password = "default", ""
    if settings.clickhouse_url.startswith(("http://", "https://")):
        target = parse_url(settings.clickhouse_url)
        user, password = target.username, target.password
    config = ServerConfig(
        path=args.path or settings.stack_dir / "clickhouse" / "data",
        host=args.host,
        port=args.port or settings.clickhouse_port,
        user=user,
        password=password,
        create_database=settings.clickhouse_database,  # as the server image's CLICKHOUSE_DB does
    )
    try:
        return asyncio.run(run_server(config))
    except ClickHouseError as exc:
        print(f"clickhouse serve: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"clickhouse serve: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1


def cmd_info(args: argparse.Namespace, settings: Settings) -> int:
    from stream_engine.sinks.clickhouse.client import connect

    client = connect(settings.effective_clickhouse_url, settings.clickhouse_database)
    versions = client.query("SELECT version, name, applied_at FROM schema_migrations ORDER BY version").result_rows
    for version, name, applied_at in versions:
        print(f"migration {version:3d} {name:30s} {applied_at:%Y-%m-%d %H:%M:%S}")
    for table in ("decision_audit", "proposition_log", "latency_metrics", "proposition_minute"):
        count = client.query(f"SELECT count() FROM {table}").result_rows[0][0]
        print(f"{table:20s} {count} rows")
    return 0


def cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    from clickhouse_connect.driver.exceptions import ClickHouseError

    try:
        return _run_query(args, settings)
    except ValueError as exc:  # a bad --interval, --from, --limit or --ids (BadParams)
        print(f"error: {exc}")
        return 2
    except ClickHouseError as exc:
        print(f"ClickHouse error: {str(exc).splitlines()[0]}")
        return 1


def _run_query(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from stream_engine.sinks.clickhouse.analytics import build_query
    from stream_engine.sinks.clickhouse.client import connect

    # The API's parameters, from the flags; checked before connecting.
    params = {
        "from": args.start, "to": args.end, "interval": args.interval, "type": args.alert_type, "ids": args.ids,
        "limit": str(args.limit), "exact": "false" if args.approx else "true",
    }  # fmt: skip
    query = build_query(args.name, {k: v for k, v in params.items() if v is not None})
    result = query(connect(settings.effective_clickhouse_url, settings.clickhouse_database))
    rows: list[dict[str, Any]] = list(result.values()) if isinstance(result, dict) else result
    if args.json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2 | orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z).decode())
    else:
        print(format_table(rows))
    return 0


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, (list, dict)):
        import orjson

        return orjson.dumps(value).decode()
    return "" if value is None else str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    headers = list(rows[0])
    cells = [[_cell(row.get(h)) for h in headers] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells)
    return "\n".join(lines)
