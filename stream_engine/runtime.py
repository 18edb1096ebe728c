"""Builds the typed parts from Settings and owns their lifecycle (start, stop, invalidation)."""

from __future__ import annotations

import errno
import asyncio
import logging
import time
import os
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from stream_engine.cache.invalidation import Coherence, Invalidations
from stream_engine.cache.partitioned import PartitionedLRU
from stream_engine.cache.redis_tier import RedisTier
from stream_engine.keys import KeyBuilder
from stream_engine.monitor import Monitor
from stream_engine.pipeline import Emitter, Pipeline, Triage
from stream_engine.policy import DecisionPolicy
from stream_engine.propositions.client import PropositionClient
from stream_engine.settings import Settings
from stream_engine.validation import AlertDecoder

if TYPE_CHECKING:
    from stream_engine.api import ApiServer
    from stream_engine.propositions.updates import Invalidation, UpdatesListener
    from stream_engine.sinks import Sink

log = logging.getLogger(__name__)

# (topic, partition, high-watermark, fetch position) per assigned partition, for consumer lag.
OffsetsProbe = Callable[[], Awaitable[list[tuple[str, int, "int | None", "int | None"]]]]


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Runtime:
    def __init__(self, settings: Settings, sink: Sink | None = None) -> None:
        self.settings = settings
        self.worker = settings.worker_name or default_worker_name()
        self.decoder = AlertDecoder(settings.max_alert_bytes, settings.topics_dir / "schemas" / "alert.schema.json")
        coherence = Coherence()  # one set of invalidation floors for both tiers
        self.lru = PartitionedLRU(settings.lru_size, settings.lru_ttl_s, coherence=coherence)
        self.redis = RedisTier.from_settings(settings, coherence=coherence)
        self.invalidations = Invalidations(coherence, self.lru, self.redis, settings.redis_retry_after_s)
        self.client = PropositionClient.from_settings(settings)
        self.triage = Triage(
            KeyBuilder.from_settings(settings), self.lru, self.redis, self.client, DecisionPolicy.from_settings(settings)
        )
        self._sink = sink
        self._listener: UpdatesListener | None = None
        self.pipeline: Pipeline | None = None
        self.in_flight = 0  # batches inside process_until_done
        self.monitor = Monitor()
        self.consumer_offsets: OffsetsProbe | None = None  # set by the faust app
        self.api: ApiServer | None = None
        self.started = False
        self._announced = False

    @property
    def sink(self) -> Sink:
        if self._sink is None:
            from stream_engine.sinks.clickhouse.sink import ClickHouseSink

            self._sink = ClickHouseSink.from_settings(self.settings)
        return self._sink

    async def start(self, emitter: Emitter, *, serve_api: bool = True) -> Pipeline:
        from stream_engine.propositions.updates import UpdatesListener

        await self.sink.start()
        await self.invalidations.start()
        self._listener = UpdatesListener(
            self.settings.kafka_bootstrap, self.settings.topic_updates, self.on_invalidation, resume=self.invalidations.resume
        )
        await self._listener.start()
        self.pipeline = Pipeline(
            self.decoder, self.triage, emitter, self.sink, self.worker, self.settings.redact_fields
        )
        self.started = True
        if serve_api:
            await self._start_api()
        return self.pipeline

    def announce_ready(self) -> None:
        """Log "worker … ready" once: started AND in the consumer group (the state /healthz calls ok).

        Both engines call it after starting and on every assignment; whichever comes last logs.
        (faust logs its own "Worker ready" earlier, before our runtime and sink are up.)
        """
        if self._announced or not self.started or not self.monitor.assignment_seen:
            return
        self._announced = True
        log.info("worker %s ready", self.worker, extra={"partitions": sorted(p for _, p in self.monitor.assigned)})

    async def _start_api(self) -> None:
        """The API is a side door: a taken port is logged loudly but does not stop the stream
        (docker-compose's healthcheck on the port then reports the worker unhealthy)."""
        from stream_engine.api import ApiServer

        api = ApiServer(self)
        try:
            await api.start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            log.error(
                "api disabled: cannot bind %s:%s (%s)", self.settings.api_host, self.settings.api_port, exc.strerror
            )
            return
        self.api = api

    async def stop(self, drain_s: float = 10.0) -> None:
        """Let batches in flight finish (their offsets then commit) before closing their tools."""
        deadline = time.monotonic() + drain_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.started = False
        if self.api is not None:
            await self.api.stop()
        if self._listener is not None:
            await self._listener.stop()
        await self.invalidations.stop()
        await self.client.close()
        await self.redis.close()
        if self._sink is not None:
            await self._sink.stop()

    async def on_invalidation(self, inv: Invalidation, seq: int) -> None:
        """Both tiers, at once for this worker's own lookups and until taken for Redis
        (stream_engine.cache.invalidation); logs "invalidation applied …"."""
        await self.invalidations.apply(inv, seq)
