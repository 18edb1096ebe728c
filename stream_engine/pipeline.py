"""The data path, top-down.

    raw messages ──decode──▶ envelopes ──LRU──▶ Redis (1 MGET) ──▶ service (1 batch call)
        │ invalid                                   │ write-back (1 pipeline)
        ▼                                           ▼
    dead letters                          propositions ──policy──▶ decisions
        └──────────────── emit (await broker acks) ◀────────────────┘
                                   │
                        DecisionLog.write (durable) ──▶ caller may commit offsets

``Triage`` (envelopes → decisions) and ``DecisionLog`` (decisions → ClickHouse rows) are shared by
the stream and the HTTP API; ``Pipeline`` wraps them with decoding and emitting for one
micro-batch of Kafka messages. The ``Emitter`` that publishes is the engines' (one Kafka producer).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from stream_engine.cache.partitioned import PartitionedLRU
from stream_engine.cache.redis_tier import RedisTier
from stream_engine.keys import KeyBuilder
from stream_engine.masking import Masker
from stream_engine.models import (
    END_TO_END,
    STAGES,
    Alert,
    CacheTier,
    DeadLetter,
    Decision,
    Envelope,
    Proposition,
    Resolved,
    StageTimes,
)
from stream_engine.policy import DecisionPolicy
from stream_engine.propositions.client import PropositionClient
from stream_engine.sinks import Sink
from stream_engine.sinks.clickhouse.rows import LogRow, MetricRow, log_row, metric_row
from stream_engine.validation import AlertDecoder, InvalidAlert


@dataclass(slots=True)
class RawMessage:
    value: bytes | None
    partition: int
    offset: int
    topic: str


class Emitter(Protocol):
    async def send(self, decisions: Sequence[Decision], dead: Sequence[DeadLetter]) -> Awaitable[object]:
        """Hand the records to the producer; the returned awaitable completes once the broker
        acknowledged every one of them (and raises if any was not)."""


async def emit(emitter: Emitter, decisions: Sequence[Decision], dead: Sequence[DeadLetter]) -> None:
    """Publish and wait for the broker's acknowledgements."""
    await (await emitter.send(decisions, dead))


@dataclass(slots=True)
class BatchReport:
    decisions: list[Decision]
    dead: list[DeadLetter]
    times: StageTimes
    tiers: dict[str, int] = field(default_factory=dict)


class Triage:
    """Envelopes → decisions through the cache tiers; one round trip per tier per call."""

    def __init__(
        self,
        keys: KeyBuilder,
        lru: PartitionedLRU,
        redis: RedisTier,
        service: PropositionClient,
        policy: DecisionPolicy,
    ) -> None:
        self.keys = keys
        self.lru = lru
        self.redis = redis
        self.service = service
        self.policy = policy
        if redis.coherence is not lru.coherence:
            raise ValueError("the LRU and the Redis tier must share one Coherence (one set of invalidation floors)")
        self.coherence = lru.coherence

    def envelope(self, alert: Alert, partition: int, offset: int, received_ns: int, topic: str = "") -> Envelope:
        return Envelope(alert, self.keys.key_for(alert), partition, offset, received_ns, topic)

    async def decide(self, envelopes: Sequence[Envelope], times: StageTimes | None = None) -> list[Decision]:
        """Every envelope's decision, in order (the HTTP API's path)."""
        times = times if times is not None else StageTimes()
        hits, misses = self.split(envelopes, times)
        hit_decisions = self.decide_hits(hits, times)
        if not misses:
            return hit_decisions
        by_envelope = {id(env): d for (env, _), d in zip(hits, hit_decisions)}
        by_envelope.update((id(env), d) for env, d in zip(misses, await self.decide_misses(misses, times)))
        return [by_envelope[id(env)] for env in envelopes]

    def split(
        self, envelopes: Sequence[Envelope], times: StageTimes
    ) -> tuple[list[tuple[Envelope, list[Proposition]]], list[Envelope]]:
        """(LRU hits with their propositions, misses): the first tier, no I/O."""
        t0 = time.perf_counter_ns()
        hits: list[tuple[Envelope, list[Proposition]]] = []
        misses: list[Envelope] = []
        for env in envelopes:
            props = self.lru.for_partition(env.partition).get(env.key)
            if props is None:
                misses.append(env)
            else:
                hits.append((env, props))
        times.lru += time.perf_counter_ns() - t0
        return hits, misses

    def decide_hits(self, hits: Sequence[tuple[Envelope, list[Proposition]]], times: StageTimes) -> list[Decision]:
        t0 = time.perf_counter_ns()
        now_ns = time.time_ns()
        decide = self.policy.decide
        decisions = [decide(env, props, "lru", None, now_ns) for env, props in hits]
        times.decide += time.perf_counter_ns() - t0
        return decisions

    async def decide_misses(self, misses: Sequence[Envelope], times: StageTimes) -> list[Decision]:
        resolved = await self.resolve(misses, times)
        t0 = time.perf_counter_ns()
        now_ns = time.time_ns()
        decide = self.policy.decide
        decisions = [decide(env, props, tier, reason, now_ns) for env, (props, tier, reason) in zip(misses, resolved)]
        times.decide += time.perf_counter_ns() - t0
        return decisions

    async def resolve(self, envelopes: Sequence[Envelope], times: StageTimes) -> list[Resolved]:
        """LRU misses through Redis (one MGET) and the service (one batch call per distinct key)."""
        out: list[Resolved] = [Resolved(None, "none", "unresolved")] * len(envelopes)
        misses: dict[str, list[int]] = {}
        for i, env in enumerate(envelopes):
            misses.setdefault(env.key, []).append(i)
        t1 = time.perf_counter_ns()

        # What is fetched from here on is tagged with the invalidations applied so far: neither
        # tier keeps it if one covering it lands before it is stored (cache.invalidation).
        tag = self.coherence.begin()
        try:
            for key, (props, fetched_under, ttl_s) in (await self.redis.get_many(list(misses))).items():
                self._fill(out, envelopes, key, misses.pop(key), props, "redis", fetched_under, ttl_s)
            t2 = time.perf_counter_ns()
            times.redis += t2 - t1
            if not misses:
                return out

            result = await self.service.fetch_many({key: envelopes[idx[0]].alert for key, idx in misses.items()}, epoch=tag)
            t3 = time.perf_counter_ns()
            times.service += t3 - t2
            for key, props in result.found.items():
                self._fill(out, envelopes, key, misses.pop(key), props, "service", tag)
            if result.found:
                await self.redis.put_many(result.found, tag, version=result.version)
                times.redis += time.perf_counter_ns() - t3
        finally:
            self.coherence.end(tag)
        for key, idx in misses.items():
            reason = result.failed.get(key, "no_response")
            for i in idx:
                out[i] = Resolved(None, "none", reason)
        return out

    def _fill(
        self,
        out: list[Resolved],
        envelopes: Sequence[Envelope],
        key: str,
        idx: list[int],
        props: list[Proposition],
        tier: CacheTier,
        tag: int,
        ttl_s: float | None = None,
    ) -> None:
        stored = -1
        for i in idx:
            out[i] = Resolved(props, tier)
            # Every partition the key appears in gets it: keyed publishing makes that one partition.
            partition = envelopes[i].partition
            if partition != stored:
                self.lru.put(partition, key, props, tag, ttl_s)
                stored = partition


class DecisionLog:
    """Decisions → ``proposition_log`` rows, and the batch's stage times → ``latency_metrics``
    rows; :meth:`write` returns once the sink holds them durably. The stream and the HTTP API
    both log through it, each with its own stage set (``STAGES`` / ``API_STAGES``)."""

    def __init__(self, sink: Sink, worker_name: str) -> None:
        self.sink = sink
        self.worker_name = worker_name

    async def write(
        self,
        envelopes: Sequence[Envelope],
        decisions: Sequence[Decision],
        times: StageTimes,
        received_ns: int,
        stages: Sequence[str],
    ) -> None:
        """``envelopes`` aligned with ``decisions``; sets ``times.sink``."""
        t0 = time.perf_counter_ns()
        await self.sink.write(self.rows(envelopes, decisions), self.metrics(times, decisions, received_ns, stages))
        times.sink = time.perf_counter_ns() - t0

    def rows(self, envelopes: Sequence[Envelope], decisions: Sequence[Decision]) -> list[LogRow]:
        n = len(decisions)
        worker = self.worker_name
        return [log_row(d, env, env.alert.severity, env.alert.source, n, worker) for d, env in zip(decisions, envelopes)]

    def metrics(
        self, times: StageTimes, decisions: Sequence[Decision], received_ns: int, stages: Sequence[str]
    ) -> list[MetricRow]:
        """Per-batch stage times (the sink's own time is only known after it wrote them), plus
        end-to-end latency per alert type."""
        ts = received_ns / 1e9
        ms = times.as_ms()
        worker = self.worker_name
        rows = [metric_row(ts, stage, "*", worker, [ms[stage]]) for stage in stages if stage != "sink"]
        by_type: dict[str, list[float]] = {}
        for d in decisions:
            by_type.setdefault(d.alert_type, []).append(d.latency_ms)
        rows.extend(metric_row(ts, END_TO_END, t, worker, lat) for t, lat in by_type.items())
        return rows


class Pipeline:
    """One micro-batch of Kafka messages, end to end. Returns after decisions and dead letters
    are acknowledged by the broker and the log rows are durable, so offsets may be committed."""

    def __init__(
        self,
        decoder: AlertDecoder,
        triage: Triage,
        emitter: Emitter,
        decision_log: DecisionLog,
        redact_fields: Sequence[str] = (),
    ) -> None:
        self.decoder = decoder
        self.redact_fields = list(redact_fields)
        self.masker = Masker(self.redact_fields)
        self.triage = triage
        self.emitter = emitter
        self.decision_log = decision_log

    async def process(self, messages: Sequence[RawMessage]) -> BatchReport:
        times = StageTimes()
        received_ns = time.time_ns()
        t0 = time.perf_counter_ns()
        envelopes, dead = self.decode(messages, received_ns)
        times.decode = time.perf_counter_ns() - t0

        # LRU hits (most alerts) are sent at once; they don't wait for their batch's misses.
        hits, misses = self.triage.split(envelopes, times)
        decisions = self.triage.decide_hits(hits, times)
        t1 = time.perf_counter_ns()
        acks = [await self.emitter.send(decisions, dead)]
        times.produce = time.perf_counter_ns() - t1
        try:
            if misses:
                miss_decisions = await self.triage.decide_misses(misses, times)
                t1 = time.perf_counter_ns()
                acks.append(await self.emitter.send(miss_decisions, ()))
                decisions += miss_decisions
                envelopes = [env for env, _ in hits] + misses  # aligned with decisions again
            else:
                t1 = time.perf_counter_ns()
        except BaseException:
            await asyncio.gather(*acks, return_exceptions=True)  # the batch is retried; settle what was sent
            raise
        await asyncio.gather(*acks)  # every record acknowledged before the rows are made durable
        times.produce += time.perf_counter_ns() - t1

        await self.decision_log.write(envelopes, decisions, times, received_ns, STAGES)

        tiers: dict[str, int] = {}
        for d in decisions:
            tiers[d.cache_tier] = tiers.get(d.cache_tier, 0) + 1
        return BatchReport(decisions, dead, times, tiers)

    def decode(self, messages: Sequence[RawMessage], received_ns: int) -> tuple[list[Envelope], list[DeadLetter]]:
        envelopes: list[Envelope] = []
        dead: list[DeadLetter] = []
        decode = self.decoder.decode
        for m in messages:
            try:
                alert = decode(m.value if m.value is not None else b"")
            except InvalidAlert as exc:
                dead.append(self.dead_letter(m, exc.reason, exc.detail, received_ns / 1e9))
                continue
            envelopes.append(self.triage.envelope(alert, m.partition, m.offset, received_ns, m.topic))
        return envelopes, dead

    def dead_letter(self, message: RawMessage, reason: str, detail: str, received_at: float) -> DeadLetter:
        """The one way a dead letter is made: the original bytes and the detail, secrets masked
        (an exception's text may quote the alert: a bug formatting it)."""
        original, redacted = self.scrub(message.value or b"", reason)
        detail = self.masker.detail(detail, message.value)
        return DeadLetter(reason, detail, message.topic, message.partition, message.offset, original, received_at, redacted)

    def scrub(self, raw: bytes, reason: str) -> tuple[bytes, bool]:
        """Secrets must not sit in clear text in the DLQ, whatever the reason: see
        :meth:`stream_engine.masking.Masker.payload` (cold path: only dead letters pay for it)."""
        return self.masker.payload(raw)
