"""Builds the typed parts from Settings and owns their lifecycle (start, stop, invalidation).

The engines (:mod:`stream_engine.engines`) start it and feed it; the worker's HTTP API asks it
through the narrow methods at the end of :class:`Runtime` and reads nothing else of it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from stream_engine.cache.invalidation import Coherence, Invalidations
from stream_engine.cache.partitioned import PartitionedLRU
from stream_engine.cache.redis_tier import RedisTier
from stream_engine.keys import KeyBuilder
from stream_engine.models import API_STAGES
from stream_engine.monitor import Monitor, Positions, PositionsProbe
from stream_engine.pipeline import DecisionLog, Emitter, Pipeline, Triage
from stream_engine.policy import DecisionPolicy
from stream_engine.propositions.client import PropositionClient
from stream_engine.settings import Settings
from stream_engine.validation import AlertDecoder

if TYPE_CHECKING:
    from stream_engine.models import Alert, Decision, Envelope, StageTimes
    from stream_engine.propositions.updates import Invalidation, UpdatesListener
    from stream_engine.sinks import Sink

log = logging.getLogger(__name__)


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Runtime:
    def __init__(self, settings: Settings, sink: Sink | None = None) -> None:
        self.settings = settings
        self.worker_name = settings.worker_name or default_worker_name()
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
        self.decision_log: DecisionLog | None = None
        self.monitor = Monitor()
        self.consumer_offsets: PositionsProbe | None = None  # set by the engine that consumes
        self.started = False
        self._announced = False

    @property
    def sink(self) -> Sink:
        if self._sink is None:
            from stream_engine.sinks.clickhouse.sink import ClickHouseSink

            self._sink = ClickHouseSink.from_settings(self.settings)
        return self._sink

    async def start(self, emitter: Emitter) -> Pipeline:
        from stream_engine.propositions.updates import UpdatesListener

        await self.sink.start()
        await self.invalidations.start()
        self._listener = UpdatesListener(
            self.settings.kafka_bootstrap, self.settings.topic_updates, self.on_invalidation, resume=self.invalidations.resume
        )
        await self._listener.start()
        self.decision_log = DecisionLog(self.sink, self.worker_name)
        self.pipeline = Pipeline(self.decoder, self.triage, emitter, self.decision_log, self.settings.redact_fields)
        self.started = True
        return self.pipeline

    def announce_ready(self) -> None:
        """Log "worker … ready" once: started AND in the consumer group (the state /healthz calls ok).

        The engines call it after starting and on every assignment; whichever comes last logs.
        (faust logs its own "Worker ready" earlier, before our runtime and sink are up.)
        """
        if self._announced or not self.started or not self.monitor.assignment_seen:
            return
        self._announced = True
        log.info("worker %s ready", self.worker_name, extra={"partitions": sorted(p for _, p in self.monitor.assigned)})

    async def stop(self) -> None:
        """Close the parts (the engine drained its batches first)."""
        self.started = False
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

    # --- what the worker's HTTP API asks (besides settings, monitor, worker_name, started) ------

    def health(self) -> str | None:
        """Why the worker cannot serve yet, or None once started and (when consuming) in the group."""
        if not self.started:
            return "runtime not started"
        if self.consumer_offsets is not None and not self.monitor.assignment_seen:
            return "waiting for a partition assignment"
        return None

    def decode(self, raw: bytes) -> Alert:
        """The stream's own decoding rules (raises ``InvalidAlert``)."""
        return self.decoder.decode(raw)

    def envelope(self, alert: Alert, partition: int, offset: int, received_ns: int) -> Envelope:
        return self.triage.envelope(alert, partition, offset, received_ns)

    async def decide(self, envelopes: Sequence[Envelope], times: StageTimes) -> list[Decision]:
        """Through the stream's cache tiers and proposition client."""
        return await self.triage.decide(envelopes, times)

    async def log_api_decisions(self, envelopes: Sequence[Envelope], decisions: Sequence[Decision], times: StageTimes) -> None:
        """Into the stream's decision log with the API's stages, stamped with the envelopes' receipt time
        (one per call); durable on return."""
        if self.decision_log is None:
            raise RuntimeError("the worker is not started")
        received_ns = envelopes[0].received_ns if envelopes else 0
        await self.decision_log.write(envelopes, decisions, times, received_ns, API_STAGES)

    def parts_stats(self) -> dict[str, dict[str, Any]]:
        """Counters of the LRU, Redis, the invalidations, the proposition client and (once started) the sink."""
        return {
            "lru": self.lru.stats(),
            "redis": self.redis.stats(),
            "invalidations": self.invalidations.stats(),
            "service": self.client.stats(),
            "sink": self.sink.stats() if self.started else {},
        }

    async def consumer_positions(self) -> Positions | None:
        """(topic, partition, high-watermark, position) per assigned partition; None without a consumer."""
        return None if self.consumer_offsets is None else await self.consumer_offsets()

    async def run_query(self, query: Any) -> Any:
        """Run an analytics query on the sink's ClickHouse (``NotImplementedError`` if it has none)."""
        run = getattr(self.sink, "run_query", None)
        if run is None:
            raise NotImplementedError("this worker's sink does not answer queries")
        return await run(query)
