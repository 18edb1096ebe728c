"""`stream-engine worker [--engine aiokafka|faust]`: run a stream worker (the main job)."""

from __future__ import annotations

import argparse
import sys

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
    # httpx imports its command-line client (click, rich, pygments: 4 MB of a worker's RSS)
    # whenever those are installed, as they are here for the demo; a worker never runs it.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    from stream_engine.api.auth import check_api_exposure
    from stream_engine.auth import TokenRequired
    from stream_engine.engines import run_worker
    from stream_engine.logs import configure_logging

    if args.engine is not None and args.engine != settings.engine:
        settings = settings.with_overrides(engine=args.engine)
    try:
        check_api_exposure(settings)  # before anything connects: a clear refusal, not a half-started worker
    except TokenRequired as exc:
        print(f"stream-engine worker: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    return run_worker(settings)
