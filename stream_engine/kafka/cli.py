"""`stream-engine topics apply [--prefix P] [--check]`."""

from __future__ import annotations

import argparse

from stream_engine.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    topics = subparsers.add_parser("topics", help="Kafka topics from TOPICS_DIR/*.yaml.")
    actions = topics.add_subparsers(dest="topics_command", required=True)
    apply = actions.add_parser("apply", help="Create missing topics; report drift without changing anything.")
    apply.add_argument("--prefix", default="", help="Prefix every topic name (e.g. per test or per tenant).")
    apply.add_argument("--check", action="store_true", help="Create nothing; exit 1 if a topic is missing or drifted.")
    apply.set_defaults(func=_apply)


def _apply(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from stream_engine.kafka.topics import TopicDefinitionError, apply_topics, prefixed_settings

    if args.prefix:
        settings = prefixed_settings(settings, args.prefix)
    try:
        report = asyncio.run(apply_topics(settings, create=not args.check))
    except TopicDefinitionError as exc:
        print(f"topics apply failed: {exc}")
        return 2
    except Exception as exc:  # aiokafka's connection errors name the address
        print(f"topics apply failed: Kafka at {settings.kafka_bootstrap}: {type(exc).__name__}: {exc}")
        return 1
    for line in report.lines():
        print(line)
    return 1 if args.check and not report.in_sync else 0
