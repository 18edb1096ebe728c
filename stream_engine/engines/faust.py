"""The faust engine (`stream-engine worker --engine faust`): a faust-streaming agent feeding the
same core as the default engine.

One agent (``batch_concurrency`` instances) takes micro-batches off ``alerts`` with
``stream.take_events(batch_max, within=batch_within_s)`` and hands each to
:meth:`EngineCore.process`; faust's own consumer commits every ``commit_interval_s``.
At-least-once rests on faust acking a batch's events only when the agent asks for the next
batch, after ``process`` returned (decisions acknowledged, rows durable) — but with more than one
agent instance faust's commit may pass an offset another instance still holds (faust-streaming
issue #606; see the README). The default engine commits through the core's OffsetTracker instead.

faust's worker consumer waits up to 1500 ms per fetch, written into its code. aiokafka keeps one
fetch in flight per broker, and the broker holds a fetch for partitions that have no new data
for up to that long, so records arriving meanwhile on the other partitions wait with it.
Measured with the demo at 800 alerts/s: publish→decision p50 1,093 ms with faust's 1500 ms,
28 ms with 5 ms. :func:`transport_class` sets ``fetch_max_wait_ms`` instead.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from stream_engine.engines.core import EngineCore
from stream_engine.engines.offsets import positions_probe
from stream_engine.pipeline import RawMessage
from stream_engine.runtime import Runtime
from stream_engine.settings import Settings


def create_app(settings: Settings, runtime: Runtime | None = None) -> tuple[faust.App, EngineCore]:
    core = EngineCore(settings, runtime, positions_probe(lambda: app.consumer, settings.topic_alerts))
    datadir = settings.data_dir / "faust" / core.runtime.worker_name.replace(":", "-")
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{host}" for host in settings.kafka_bootstrap.split(",")],
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        datadir=str(datadir),
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_commit_interval=settings.commit_interval_s,
        topic_replication_factor=1,
        stream_buffer_maxsize=max(4096, settings.batch_max * 4),
    )
    app.transport = transport_class(settings.fetch_max_wait_ms)(app.conf.broker_consumer, app)
    alerts = app.topic(settings.topic_alerts, key_type=bytes, value_type=bytes)
    ready = asyncio.Event()

    @app.task
    async def start_core() -> None:
        await core.start()
        ready.set()

    @app.agent(alerts, concurrency=settings.batch_concurrency)
    async def triage(stream: faust.StreamT) -> None:
        await ready.wait()
        async for events in stream.take_events(settings.batch_max, within=settings.batch_within_s):
            await core.process(
                [RawMessage(e.message.value, e.message.partition, e.message.offset, e.message.topic) for e in events]
            )

    @app.on_partitions_revoked.connect
    async def revoked(app: faust.App, revoked: set[TP], **kwargs: Any) -> None:
        core.partitions_revoked(revoked)

    @app.on_partitions_assigned.connect
    async def assigned(app: faust.App, assigned: set[TP], **kwargs: Any) -> None:
        core.partitions_assigned(assigned)

    @app.service
    class CoreStopper(faust.Service):  # type: ignore[misc]
        async def on_stop(self) -> None:
            await core.stop()

    return app, core


def serve(settings: Settings) -> int:
    """Run one worker until SIGTERM/SIGINT (faust's Worker owns the event loop and signals)."""
    app, _ = create_app(settings)
    # override_logging=False: keep our JSON lines instead of mode's colour console format.
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False, override_logging=False)
    worker.execute_from_commandline()
    return 0


def transport_class(fetch_max_wait_ms: int) -> type[faust_aiokafka.Transport]:
    """faust's aiokafka ``Transport`` whose worker consumer waits at most ``fetch_max_wait_ms``."""

    class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            # faust passes no way to set it; AIOKafkaConsumer reads this attribute in start(),
            # when it builds its Fetcher (checked by tests/integration/test_faust_engine.py).
            consumer._fetch_max_wait_ms = fetch_max_wait_ms
            return consumer

    class Consumer(faust_aiokafka.Consumer):
        def _new_consumer_thread(self) -> ConsumerThread:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class Transport(faust_aiokafka.Transport):
        pass

    Transport.Consumer = Consumer
    return Transport
