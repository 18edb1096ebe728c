"""`stream-engine worker`: run a stream worker (the main job) on the chosen engine."""

from __future__ import annotations

import argparse

from stream_engine.settings import Settings

ENGINES = ("faust", "aiokafka")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("worker", help="Run a stream worker: alerts → decisions (scale by starting more).")
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default=None,
        help="faust (the default, see STREAM_ENGINE_ENGINE) or aiokafka: same pipeline, higher throughput ceiling",
    )
    p.set_defaults(func=run_worker)


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    import sys

    # httpx imports its command-line client (click, rich, pygments: 4 MB of a worker's RSS)
    # whenever those are installed, as they are here for the demo; a worker never runs it.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[assignment]
    from stream_engine.logs import configure_logging

    if args.engine is not None and args.engine != settings.engine:
        settings = settings.with_overrides(engine=args.engine)
    configure_logging(settings)
    if settings.engine == "aiokafka":
        from stream_engine.kafka.batch_worker import run_worker as run_batch_worker

        return run_batch_worker(settings)
    return run_faust_worker(settings)


def run_faust_worker(settings: Settings) -> int:
    import faust

    from stream_engine.app import create_app

    app, _ = create_app(settings)
    # override_logging=False: keep our JSON lines instead of mode's colour console format.
    worker = faust.Worker(
        app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False, override_logging=False
    )
    worker.execute_from_commandline()
    return 0
