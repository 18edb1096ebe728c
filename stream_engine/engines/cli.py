"""`stream-engine worker [--engine aiokafka|faust]`: run a stream worker (the main job)."""

from __future__ import annotations

import argparse

from stream_engine.engines import ENGINES
from stream_engine.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("worker", help="Run a stream worker: alerts → decisions (scale by starting more).")
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default=None,
        help="aiokafka (the default, see STREAM_ENGINE_ENGINE) or faust: the same pipeline on faust's app model",
    )
    p.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from stream_engine.engines import run_worker
    from stream_engine.logs import configure_logging

    if args.engine is not None and args.engine != settings.engine:
        settings = settings.with_overrides(engine=args.engine)
    configure_logging(settings)
    return run_worker(settings)
