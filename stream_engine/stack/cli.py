"""`stream-engine stack up | down | status`."""

from __future__ import annotations

import argparse

from stream_engine.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    stack = subparsers.add_parser("stack", help="Local Kafka + Redis + ClickHouse + proposition service (STACK_DIR).")
    actions = stack.add_subparsers(dest="stack_command", required=True)
    for name, handler, text in (
        ("up", _up, "Start what is not running (idempotent); prints time per part."),
        ("down", _down, "Stop what `up` started."),
        ("status", _status, "Health of each part; exit 1 if one is down."),
    ):
        parser = actions.add_parser(name, help=text)
        parser.add_argument(
            "--only",
            action="append",
            metavar="PART",
            help="kafka, redis, clickhouse, propositions, redis-cluster (repeatable; redis-cluster only when named)",
        )
        parser.add_argument(
            "--brokers",
            type=int,
            default=None,
            metavar="N",
            help="Kafka nodes (default STREAM_ENGINE_KAFKA_BROKERS, 1); 3: replication factor 3, min.insync.replicas 2",
        )
        parser.set_defaults(func=handler)


def _with_brokers(args: argparse.Namespace, settings: Settings) -> Settings:
    return settings if args.brokers is None else settings.with_overrides(kafka_brokers=args.brokers)


def _up(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from stream_engine.stack import Stack, StackError, StackUpError

    started = time.monotonic()
    settings = _with_brokers(args, settings)
    try:
        report = Stack(settings, only=args.only).up()
    except StackUpError as exc:
        for line in exc.report.lines():
            print(line)
        print(f"stack up failed: {exc}")
        return 1
    except StackError as exc:
        print(f"stack up failed: {exc}")
        return 1
    for line in report.lines():
        print(line)
    if settings.kafka_brokers > 1 and any(p.name.startswith("kafka-") for p in report.parts):
        bootstrap = ",".join(f"127.0.0.1:{settings.kafka_port + 2 * n}" for n in range(settings.kafka_brokers))
        print(f"kafka cluster of {settings.kafka_brokers}: STREAM_ENGINE_KAFKA_BOOTSTRAP={bootstrap}")
    if "propositions" in report.by_name():
        from stream_engine.propositions.admin import find_admin_token

        token = find_admin_token(settings)
        # No token with a reused service: it was started before tokens existed; restart it.
        where = token.source if token else "none (restart the service: `stack down --only propositions`, `stack up`)"
        print(f"proposition service admin token (rules, admin, stats routes): {where}")
    print(f"stack up: {time.monotonic() - started:.1f}s (state in {settings.stack_dir})")
    return 0


def _down(args: argparse.Namespace, settings: Settings) -> int:
    from stream_engine.stack import Stack, StackError

    try:
        report = Stack(_with_brokers(args, settings), only=args.only).down()
    except StackError as exc:
        print(f"stack down failed: {exc}")
        return 1
    for line in report.lines():
        print(line)
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from stream_engine.stack import Stack, StackError

    try:
        statuses = Stack(_with_brokers(args, settings), only=args.only).status()
    except StackError as exc:
        print(f"stack status failed: {exc}")
        return 1
    for status in statuses:
        print(status.line())
    return 0 if all(s.ok for s in statuses) else 1
