"""Builds the typed parts from Settings and owns their lifecycle (start, stop, invalidation).

The engines (:mod:`stream_engine.engines`) start it and feed it; the worker's HTTP API asks it
through the narrow methods at the end of :class:`Runtime` and reads nothing else of it.

The API decides through a Triage of its own (README, Security): the same keys, policy and LRU
(its own pseudo-partition there), but its own proposition client — pool and circuit breaker — and
a read-only view of Redis. So API calls cannot open the stream's breaker, take the stream's
connections, join the stream's in-flight fetches, or make what a caller sent the cached answer
for the stream's alerts of that key.
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
from stream_engine.monitor import AlertTypes, Monitor, Positions, PositionsProbe, release_free_memory
from stream_engine.pipeline import DecisionLog, Emitter, Pipeline, Triage
from stream_engine.policy import DecisionPolicy
from stream_engine.propositions.client import PropositionClient
from stream_engine.settings import Settings
from stream_engine.validation import AlertDecoder

if TYPE_CHECKING:
    from stream_engine.models import Alert, Decision, Envelope, StageTimes
    from stream_engine.outcomes import DecisionRecord, Outcome, OutcomeBook, OutcomeLearning, OutcomeStore
    from stream_engine.propositions.updates import Invalidation, UpdatesListener
    from stream_engine.sinks import Sink
    from stream_engine.sinks.clickhouse.rows import OutcomeRow

log = logging.getLogger(__name__)


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class ReadOnlyTier:
    """The shared Redis tier as the HTTP API's Triage sees it: every read, no write.

    A proposition key (a fingerprint, or a few key fields) does not cover the whole alert the
    service ranks, so whichever alert fills the cache for a key decides the answer every later
    alert of that key gets. The stream's publishers may fill it; an API caller may not.
    """

    def __init__(self, tier: RedisTier) -> None:
        self._tier = tier

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tier, name)

    async def put_many(self, *args: Any, **kwargs: Any) -> None:
        return None


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
        self.api_client = PropositionClient.from_settings(settings, pool_size=settings.api_service_pool_size)
        keys, policy = KeyBuilder.from_settings(settings), DecisionPolicy.from_settings(settings)
        # Learning from outcomes (stream_engine.outcomes): the verdicts' evidence rides the cache
        # tiers (book), every decision is recorded for the outcome window (store).
        self.book: OutcomeBook | None = None
        self.outcome_store: OutcomeStore | None = None
        self.outcomes: OutcomeLearning | None = None
        if settings.outcome_learning:
            from stream_engine.outcomes import OutcomeBook, OutcomeStore

            self.book = OutcomeBook(self.lru)
            self.outcome_store = OutcomeStore(self.redis, settings.outcome_window_s, settings.outcome_record_ttl_s)
            policy.type_evidence = self.book.types
        self.triage = Triage(keys, self.lru, self.redis, self.client, policy, self.book)
        self._api_triage = Triage(keys, self.lru, ReadOnlyTier(self.redis), self.api_client, policy, self.book)
        self._sink = sink
        self._listener: UpdatesListener | None = None
        self.pipeline: Pipeline | None = None
        self.decision_log: DecisionLog | None = None
        self.monitor = Monitor(AlertTypes.from_settings(settings))
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
        self.decision_log = DecisionLog(self.sink, self.worker_name, self.outcome_store)
        self.pipeline = Pipeline(self.decoder, self.triage, emitter, self.decision_log, self.settings.redact_fields)
        if self.book is not None and self.outcome_store is not None:
            from stream_engine.outcomes import OutcomeLearning

            self.outcomes = OutcomeLearning(
                self.settings, self.outcome_store, self.book, self.pipeline.dead_letter, self._write_outcome_rows,
                self.monitor, self.worker_name, self._find_decisions,
            )  # fmt: skip
            await self.outcomes.start()
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
        release_free_memory()  # what starting freed (issue 16: idle RSS)

    async def stop(self) -> None:
        """Close the parts (the engine drained its batches first)."""
        self.started = False
        if self.outcomes is not None:
            await self.outcomes.stop()
        if self._listener is not None:
            await self._listener.stop()
        await self.invalidations.stop()
        await self.client.close()
        await self.api_client.close()
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
        """Through the API's own Triage: reads the shared caches, its own client and breaker."""
        return await self._api_triage.decide(envelopes, times)

    async def log_api_decisions(self, envelopes: Sequence[Envelope], decisions: Sequence[Decision], times: StageTimes) -> None:
        """Into the stream's decision log with the API's stages, stamped with the envelopes' receipt time
        (one per call); durable on return. The rows are origin ``api`` (their envelopes have no
        topic), which never replace the stream's row of the same alert."""
        if self.decision_log is None:
            raise RuntimeError("the worker is not started")
        received_ns = envelopes[0].received_ns if envelopes else 0
        await self.decision_log.write(envelopes, decisions, times, received_ns, API_STAGES)

    def parts_stats(self) -> dict[str, dict[str, Any]]:
        """Counters of the LRU, Redis, the invalidations, the proposition clients (stream, API), (once
        started) the sink and the outcomes (empty when learning from outcomes is off)."""
        return {
            "lru": self.lru.stats(),
            "redis": self.redis.stats(),
            "invalidations": self.invalidations.stats(),
            "service": self.client.stats(),
            "api_service": self.api_client.stats(),
            "sink": self.sink.stats() if self.started else {},
            "outcomes": self.outcomes.stats() if self.outcomes is not None else {},
        }

    def decode_outcome(self, raw: bytes) -> Outcome:
        """The outcomes topic's own decoding rules (raises ``InvalidAlert``; ``RuntimeError`` when
        learning from outcomes is off)."""
        return self._learning().decoder.decode(raw)

    async def publish_outcomes(self, outcomes: Sequence[Outcome]) -> None:
        """Onto the outcomes topic; returns once the broker acknowledged them all."""
        await self._learning().publish(outcomes)

    def _learning(self) -> OutcomeLearning:
        if self.outcomes is None:
            raise RuntimeError("learning from outcomes is off (STREAM_ENGINE_OUTCOME_LEARNING=false) or the worker is not started")
        return self.outcomes

    async def _write_outcome_rows(self, rows: Sequence[OutcomeRow], token: str) -> None:
        from stream_engine.sinks.clickhouse.rows import insert_outcome_rows

        await self.run_query(lambda client: insert_outcome_rows(client, list(rows), token))

    async def _find_decisions(self, alert_ids: Sequence[str], since: float) -> dict[str, DecisionRecord]:
        """Decisions older than Redis's hot window: ClickHouse's ``decision_lookup``, one query, under
        the analytics limits (``NotImplementedError`` without ClickHouse)."""
        from stream_engine.outcomes import DecisionRecord
        from stream_engine.sinks.clickhouse.analytics import LimitedClient, QueryLimitExceeded, QueryLimits, limit_hit
        from stream_engine.sinks.clickhouse.queries import decision_records

        ids, since_ms = list(alert_ids), int(since * 1000)
        limits = QueryLimits.from_settings(self.settings).clickhouse_settings()

        def query(client: Any) -> list[tuple[str, str, str, str | None, str, int]]:
            try:
                return decision_records(LimitedClient(client, limits), ids, since_ms)  # type: ignore[arg-type]
            except Exception as exc:
                if limit_hit(exc):
                    raise QueryLimitExceeded(f"decision lookup of {len(ids)} alert ids: stopped by the analytics limits") from exc
                raise

        rows = await self.run_query(query)
        return {a: DecisionRecord(key, alert_type, action, mode, ms / 1000) for a, key, alert_type, action, mode, ms in rows}

    async def consumer_positions(self) -> Positions | None:
        """(topic, partition, high-watermark, position) per assigned partition; None without a consumer."""
        return None if self.consumer_offsets is None else await self.consumer_offsets()

    async def run_query(self, query: Any) -> Any:
        """Run an analytics query on the sink's ClickHouse (``NotImplementedError`` if it has none)."""
        run = getattr(self.sink, "run_query", None)
        if run is None:
            raise NotImplementedError("this worker's sink does not answer queries")
        return await run(query)
