"""The faust engine (`stream-engine worker --engine faust`): a faust-streaming agent feeding the
same core, and the same batch runner, as the default engine.

One agent instance takes micro-batches off ``alerts`` with ``stream.take_events(batch_max,
within=batch_within_s)``, in fetch order, and hands each to the
:class:`~stream_engine.engines.runner.BatchRunner`, which keeps up to ``batch_concurrency``
batches in flight exactly as in the aiokafka engine. faust's consumer still commits every
``commit_interval_s``, but only what the runner's ``OffsetTracker`` released: our consumer class
replaces faust's ``Consumer._new_offset``, which with several agent instances on one queue
committed over offsets still in flight (faust-streaming #606: it only refuses a gap of more than
one offset, and nothing when the committed offset is unknown), and which ``take_events``
fed by acking a batch as soon as the agent asked for the next one — even when the agent body
raised. faust's acks now only mean "handed over"; a batch counts when it is done.

At a rebalance faust does not wait for its streams (``stream_wait_empty=False``: that wait has no
bound); the runner waits ``revoke_grace_s`` for the batches in flight, abandons the rest, and the
consumer commits what is done. Events taken before a rebalance and handed over after it are
dropped (their partitions' owner re-reads them from the committed offset).

faust's worker consumer waits up to 1500 ms per fetch, written into its code. aiokafka keeps one
fetch in flight per broker, and the broker holds a fetch for partitions that have no new data
for up to that long, so records arriving meanwhile on the other partitions wait with it.
Measured with the demo at 800 alerts/s: publish→decision p50 1,093 ms with faust's 1500 ms,
28 ms with 5 ms. :func:`transport_class` sets ``fetch_max_wait_ms`` instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, EventT

from stream_engine.engines.core import STOP_GRACE_S, EngineCore
from stream_engine.engines.offsets import OffsetTracker, positions_probe
from stream_engine.engines.runner import BatchRunner
from stream_engine.pipeline import RawMessage
from stream_engine.runtime import Runtime
from stream_engine.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings, runtime: Runtime | None = None) -> tuple[faust.App, BatchRunner]:
    """The app, and the runner whose tracker its consumer commits from (``runner.core``: the core)."""
    core = EngineCore(settings, runtime, positions_probe(lambda: app.consumer, settings.topic_alerts))
    runner = BatchRunner(core, settings.batch_concurrency, settings.revoke_grace_s)
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
        stream_wait_empty=False,
        topic_replication_factor=1,
        stream_buffer_maxsize=max(4096, settings.batch_max * 4),
    )
    app.transport = transport_class(settings.fetch_max_wait_ms, runner.tracker)(app.conf.broker_consumer, app)
    alerts = app.topic(settings.topic_alerts, key_type=bytes, value_type=bytes)
    ready = asyncio.Event()

    @app.task
    async def start_core() -> None:
        await core.start()
        ready.set()

    # One instance: its batches leave take_events in fetch order, and the runner pipelines them.
    @app.agent(alerts)
    async def triage(stream: faust.StreamT) -> None:
        await ready.wait()
        batches = aiter(stream.take_events(settings.batch_max, within=settings.batch_within_s))
        while True:
            # A slot first, then the batch: what arrives meanwhile waits in the stream's queue and
            # makes the next batch bigger (take_events stops buffering while a batch is out).
            await runner.slot()
            try:
                events = await anext(batches)
            except StopAsyncIteration:
                runner.release()
                return
            # Taken before a rebalance, handed over after it: not ours to commit any more.
            fresh = [e for e in events if e.message.generation_id == app.consumer_generation_id]
            runner.start(last_offsets(fresh), to_messages(fresh))

    @app.on_partitions_revoked.connect
    async def revoked(app: faust.App, revoked: set[TP], **kwargs: Any) -> None:
        kept = await runner.revoke(revoked, app.consumer.commit)
        if kept:
            await app.consumer.perform_seek()
        core.partitions_revoked(revoked)

    @app.on_partitions_assigned.connect
    async def assigned(app: faust.App, assigned: set[TP], **kwargs: Any) -> None:
        runner.assigned()
        core.partitions_assigned(assigned)

    @app.service
    class CoreStopper(faust.Service):  # type: ignore[misc]
        async def on_stop(self) -> None:
            if not await runner.drain(STOP_GRACE_S):
                log.warning("cancelled %d unfinished batch(es) at stop; they will be redelivered", await runner.cancel())
            try:
                await app.consumer.commit()
            except Exception:
                log.exception("commit at stop failed (what it missed is redelivered)")
            await core.stop()

    return app, runner


def to_messages(events: Sequence[EventT]) -> list[RawMessage]:
    return [RawMessage(e.message.value, e.message.partition, e.message.offset, e.message.topic) for e in events]


def last_offsets(events: Sequence[EventT]) -> dict[TP, int]:
    last: dict[TP, int] = {}
    for e in events:
        tp = e.message.tp
        last[tp] = max(e.message.offset, last.get(tp, -1))
    return last


def serve(settings: Settings) -> int:
    """Run one worker until SIGTERM/SIGINT (faust's Worker owns the event loop and signals)."""
    app, _ = create_app(settings)
    # override_logging=False: keep our JSON lines instead of mode's colour console format.
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False, override_logging=False)
    worker.execute_from_commandline()
    return 0


def transport_class(fetch_max_wait_ms: int, tracker: OffsetTracker) -> type[faust_aiokafka.Transport]:
    """faust's aiokafka ``Transport`` whose worker consumer waits at most ``fetch_max_wait_ms`` and
    commits only what ``tracker`` released."""

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

        def _new_offset(self, tp: TP) -> int | None:
            """Where to commit ``tp``: what the tracker released, never faust's own guess (#606)."""
            super()._new_offset(tp)  # faust's bookkeeping of acked offsets, kept bounded
            return tracker.committable(tp)

        def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
            # faust drops a partition's acks when it is revoked, before the revocation's commit:
            # the tracker's partitions are committed all the same.
            tps = {*super()._filter_tps_with_pending_acks(topics), *tracker.partitions()}
            return iter(tp for tp in tps if topics is None or tp in topics or tp.topic in topics)

    class Transport(faust_aiokafka.Transport):
        pass

    Transport.Consumer = Consumer
    return Transport
