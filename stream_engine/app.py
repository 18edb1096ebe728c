"""The faust app: one agent micro-batching `alerts` through the Pipeline.

At-least-once: ``take_events`` acks a batch's events only when the agent asks for the next
batch, and ``Pipeline.process`` returns only after decisions/dead letters are acknowledged by
the broker and log rows are durable — so a committed offset always has its decision.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from typing import Any

import faust
from faust.types import TP

from stream_engine.batching import consumer_offsets_probe, log_dead_letters, process_until_done
from stream_engine.kafka.faust_transport import transport_class
from stream_engine.kafka.partitioner import kafka_partitioner
from stream_engine.models import DeadLetter, Decision
from stream_engine.pipeline import RawMessage
from stream_engine.runtime import Runtime
from stream_engine.settings import Settings

log = logging.getLogger(__name__)


class FaustEmitter:
    """Decisions keyed by alert id; dead letters keyed by nothing, reason in a header."""

    def __init__(self, app: faust.App, decisions_topic: str, dlq_topic: str) -> None:
        self.app = app
        self.decisions_topic = decisions_topic
        self.dlq_topic = dlq_topic

    async def send(self, decisions: Sequence[Decision], dead: Sequence[DeadLetter]) -> Awaitable[Any]:
        send = self.app.producer.send
        acks: list[Any] = []
        for d in decisions:
            acks.append(await send(self.decisions_topic, d.alert_id.encode(), d.to_json(), None, None, None))
        for dl in dead:
            headers = [("reason", dl.reason.encode())]
            acks.append(await send(self.dlq_topic, None, dl.to_json(), None, None, headers))
        return asyncio.gather(*acks)


def create_app(settings: Settings, runtime: Runtime | None = None) -> tuple[faust.App, Runtime]:
    runtime = runtime or Runtime(settings)
    datadir = settings.data_dir / "faust" / runtime.worker.replace(":", "-")
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
        producer_linger_ms=settings.producer_linger_ms,
        producer_acks=-1,
        producer_partitioner=kafka_partitioner,
        # A dead letter carries its original base64-encoded (+1/3): a 1 MiB alert must still fit.
        producer_max_request_size=4 * 1024 * 1024,
        topic_replication_factor=1,
        stream_buffer_maxsize=max(4096, settings.batch_max * 4),
    )
    app.transport = transport_class(settings.fetch_max_wait_ms)(app.conf.broker_consumer, app)
    alerts = app.topic(settings.topic_alerts, key_type=bytes, value_type=bytes)
    runtime.consumer_offsets = consumer_offsets_probe(lambda: app.consumer, settings.topic_alerts)
    ready = asyncio.Event()

    @app.task
    async def start_runtime() -> None:
        await runtime.start(FaustEmitter(app, settings.topic_decisions, settings.topic_dlq))
        ready.set()
        runtime.announce_ready()

    @app.agent(alerts, concurrency=settings.batch_concurrency)
    async def triage(stream: faust.StreamT) -> None:
        await ready.wait()
        async for events in stream.take_events(settings.batch_max, within=settings.batch_within_s):
            messages = [
                RawMessage(e.message.value, e.message.partition, e.message.offset, e.message.topic) for e in events
            ]
            report = await process_until_done(runtime, messages)
            runtime.monitor.observe_batch(report, messages)
            if report.dead:
                log_dead_letters(report.dead)

    @app.on_partitions_revoked.connect
    async def drop_revoked(app: faust.App, revoked: set[TP], **kwargs: Any) -> None:
        partitions = sorted(tp.partition for tp in revoked if tp.topic == settings.topic_alerts)
        runtime.lru.revoke(partitions)
        log.info("partitions revoked: %s (their LRU caches dropped)", partitions)
        runtime.monitor.partitions_revoked((tp.topic, tp.partition) for tp in revoked if tp.topic == settings.topic_alerts)

    @app.on_partitions_assigned.connect
    async def keep_assigned(app: faust.App, assigned: set[TP], **kwargs: Any) -> None:
        runtime.lru.assign([tp.partition for tp in assigned if tp.topic == settings.topic_alerts])
        runtime.monitor.partitions_assigned((tp.topic, tp.partition) for tp in assigned if tp.topic == settings.topic_alerts)
        runtime.announce_ready()

    @app.service
    class RuntimeStopper(faust.Service):  # type: ignore[misc]
        async def on_stop(self) -> None:
            await runtime.stop()

    return app, runtime
