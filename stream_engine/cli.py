"""`stream-engine` console script.

Every setting is also a global flag (``--kafka-bootstrap``, ``--batch-max`` …) placed before the
subcommand; dict/list settings take JSON. Each concern registers its own subcommands in a small
``cli`` module so that importing this file stays cheap (heavy imports happen inside handlers).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from stream_engine.settings import Settings, SettingsError

# Modules exposing ``register(subparsers)``; each subcommand sets ``func(args, settings) -> int``.
COMMAND_MODULES = (
    "stream_engine.stack.cli",
    "stream_engine.kafka.cli",
    "stream_engine.propositions.cli",
    "stream_engine.engines.cli",
    "stream_engine.sinks.clickhouse.cli",
    "stream_engine.sinks.clickhouse.sql",
    "stream_engine.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stream-engine", description=__doc__.splitlines()[0], allow_abbrev=False)
    settings_group = parser.add_argument_group("settings (also STREAM_ENGINE_<NAME> env vars)")
    for name, field in Settings.model_fields.items():
        settings_group.add_argument(
            "--" + name.replace("_", "-"), dest=f"setting_{name}", default=None, metavar="VALUE", help=field.description
        )
    sub = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    import orjson

    overrides: dict[str, object] = {}
    for name, field in Settings.model_fields.items():
        raw = getattr(args, f"setting_{name}", None)
        if raw is None:
            continue
        origin = getattr(field.annotation, "__origin__", None)
        overrides[name] = orjson.loads(raw) if origin in (dict, list) else raw
    return Settings(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:  # names the setting and the reason
        parser.error(str(exc))
    return int(args.func(args, settings) or 0)


if __name__ == "__main__":
    sys.exit(main())
