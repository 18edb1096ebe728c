"""The stream engines: everything that turns Kafka records into ``Pipeline`` calls.

    core.py      EngineCore: the per-batch step (retry, isolate, observe, log), the one producer
                 and emitter, rebalance hooks, start (runtime + HTTP API) and drain on stop
    offsets.py   OffsetTracker (which offsets may be committed) and the consumer-lag probe
    aiokafka.py  the default: a consumer group with getmany, pipelined batches, exact commits
    faust.py     a faust-streaming agent with take_events (``--engine faust``)
    cli.py       `stream-engine worker [--engine …]`

Each engine module has ``serve(settings) -> int``: run one worker until SIGTERM/SIGINT.
"""

from __future__ import annotations

import logging
from typing import get_args

from stream_engine.settings import Settings

ENGINES: tuple[str, ...] = get_args(Settings.model_fields["engine"].annotation)

log = logging.getLogger(__name__)


def run_worker(settings: Settings) -> int:
    """One worker on ``settings.engine`` until SIGTERM/SIGINT; the exit code."""
    log.info("starting a worker on the %s engine", settings.engine, extra={"engine": settings.engine})
    if settings.engine == "faust":
        from stream_engine.engines import faust as engine
    else:
        from stream_engine.engines import aiokafka as engine
    return engine.serve(settings)


__all__ = ["ENGINES", "run_worker"]
