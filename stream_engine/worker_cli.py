"""`stream-engine worker`: run the faust worker (the main job)."""

from __future__ import annotations

import argparse

from stream_engine.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("worker", help="Run a stream worker: alerts → decisions (scale by starting more).")
    p.set_defaults(func=run_worker)


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    import faust

    from stream_engine.app import create_app
    from stream_engine.logs import configure_logging

    configure_logging(settings)
    app, _ = create_app(settings)
    # override_logging=False: keep our JSON lines instead of mode's colour console format.
    worker = faust.Worker(
        app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False, override_logging=False
    )
    worker.execute_from_commandline()
    return 0
