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

A batch's stages are decode → decide → publish (await every ack) → log (rows durable). Its
``BatchProgress`` keeps what each stage achieved across retries, so a retry redoes only what
failed: a decision is made once (a retry sends the same decision again, never a new one), a
record the broker acknowledged is not sent again, rows already durable are not written again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from stream_engine.cache.partitioned import Answer, PartitionedLRU
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

if TYPE_CHECKING:
    from stream_engine.outcomes.book import OutcomeBook
    from stream_engine.outcomes.evidence import Evidence
    from stream_engine.outcomes.store import OutcomeStore

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RawMessage:
    value: bytes | None
    partition: int
    offset: int
    topic: str


Position = tuple[int, int]  # (partition, offset) of a message of the batch's topic


class RecordTooLarge(Exception):
    """The broker would refuse this one record (larger than its topic's ``max.message.bytes`` or
    the producer's request size): a problem of the record, not an outage, however often it is sent."""

    def __init__(self, topic: str, size: int, limit: int) -> None:
        super().__init__(f"a record of {size} bytes is larger than the {limit} bytes topic {topic} takes")
        self.topic = topic
        self.size = size
        self.limit = limit


class DecisionsTooLarge(Exception):
    """Some decisions of the batch can never be published (``failures``, by message position).
    Everything else of the batch was published; the caller dead-letters those messages
    (:meth:`BatchProgress.divert`) or calls it an outage, then processes the batch again."""

    def __init__(self, failures: dict[Position, RecordTooLarge]) -> None:
        super().__init__(f"{len(failures)} decision(s) too large to publish, e.g. {next(iter(failures.values()))}")
        self.failures = failures


class Emitter(Protocol):
    async def send(self, decisions: Sequence[Decision], dead: Sequence[DeadLetter]) -> Sequence[Awaitable[object]]:
        """Hand the records to the producer; one awaitable per record (decisions first, then dead
        letters), completing once the broker acknowledged that record and raising if it did not
        (``RecordTooLarge`` if it never will)."""


@dataclass(slots=True)
class BatchReport:
    decisions: list[Decision]
    dead: list[DeadLetter]
    times: StageTimes
    tiers: dict[str, int] = field(default_factory=dict)
    dropped: list[DeadLetter] = field(default_factory=list)  # no DLQ record could carry them: logged instead


@dataclass(slots=True)
class BatchProgress:
    """What one batch achieved so far, by message position; kept across its retries."""

    received_ns: int = field(default_factory=time.time_ns)
    envelopes: dict[Position, Envelope] = field(default_factory=dict)  # decoded
    dead: dict[Position, DeadLetter] = field(default_factory=dict)  # dead-lettered instead of decided
    decisions: dict[Position, Decision] = field(default_factory=dict)  # made; sent again as is until acknowledged
    acked: set[Position] = field(default_factory=set)  # its decision or dead letter acknowledged by the broker
    logged: set[Position] = field(default_factory=set)  # its row durable
    dropped: dict[Position, DeadLetter] = field(default_factory=dict)  # too large for the DLQ in any form: logged

    def divert(self, position: Position, dead_letter: DeadLetter) -> None:
        """Dead-letter this message instead of publishing its decision (a poison message)."""
        self.decisions.pop(position, None)
        self.dead[position] = dead_letter

    def settled(self, message: RawMessage) -> bool:
        """Its dead letter acknowledged, or its decision acknowledged and its row durable."""
        position = (message.partition, message.offset)
        return position in self.acked and (position in self.dead or position in self.logged)


@dataclass(slots=True)
class _Sent:
    """Records handed to the producer, with the position of the message each belongs to."""

    positions: list[Position]
    records: list[Decision | DeadLetter]
    acks: Sequence[Awaitable[object]]


class Triage:
    """Envelopes → decisions through the cache tiers; one round trip per tier per call. With a
    ``book`` (learning from outcomes), each key's outcome evidence rides the same tiers: in the LRU
    entry, and in the same Redis MGET as the propositions."""

    def __init__(
        self,
        keys: KeyBuilder,
        lru: PartitionedLRU,
        redis: RedisTier,
        service: PropositionClient,
        policy: DecisionPolicy,
        book: OutcomeBook | None = None,
    ) -> None:
        self.keys = keys
        self.lru = lru
        self.redis = redis
        self.service = service
        self.policy = policy
        self.book = book
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
    ) -> tuple[list[tuple[Envelope, Answer]], list[Envelope]]:
        """(LRU hits with their answers, misses): the first tier, no I/O."""
        t0 = time.perf_counter_ns()
        hits: list[tuple[Envelope, Answer]] = []
        misses: list[Envelope] = []
        for env in envelopes:
            answer = self.lru.for_partition(env.partition).get(env.key)
            if answer is None:
                misses.append(env)
            else:
                hits.append((env, answer))
        times.lru += time.perf_counter_ns() - t0
        return hits, misses

    def decide_hits(self, hits: Sequence[tuple[Envelope, Answer]], times: StageTimes) -> list[Decision]:
        t0 = time.perf_counter_ns()
        now_ns = time.time_ns()
        decide = self.policy.decide
        decisions = [decide(env, answer.propositions, "lru", None, now_ns, answer.evidence) for env, answer in hits]
        times.decide += time.perf_counter_ns() - t0
        return decisions

    async def decide_misses(self, misses: Sequence[Envelope], times: StageTimes) -> list[Decision]:
        resolved = await self.resolve(misses, times)
        t0 = time.perf_counter_ns()
        now_ns = time.time_ns()
        decide = self.policy.decide
        decisions = [decide(env, r.propositions, r.tier, r.reason, now_ns, r.evidence) for env, r in zip(misses, resolved)]
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
        evidence: dict[str, Evidence] | None = {} if self.book is not None else None
        try:
            for key, (props, fetched_under, ttl_s) in (await self.redis.get_many(list(misses), evidence)).items():
                self._fill(out, envelopes, key, misses.pop(key), props, "redis", fetched_under, ttl_s, evidence)
            t2 = time.perf_counter_ns()
            times.redis += t2 - t1
            if not misses:
                return out

            result = await self.service.fetch_many({key: envelopes[idx[0]].alert for key, idx in misses.items()}, epoch=tag)
            t3 = time.perf_counter_ns()
            times.service += t3 - t2
            for key, props in result.found.items():
                self._fill(out, envelopes, key, misses.pop(key), props, "service", tag, None, evidence)
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
        evidence: dict[str, Evidence] | None = None,
    ) -> None:
        stored = -1
        found = self.book.newest(key, evidence.get(key)) if self.book is not None and evidence is not None else None
        for i in idx:
            out[i] = Resolved(props, tier, None, found)
            # Every partition the key appears in gets it: keyed publishing makes that one partition.
            partition = envelopes[i].partition
            if partition != stored:
                self.lru.put(partition, key, props, tag, ttl_s, found)
                stored = partition


class DecisionLog:
    """Decisions → ``proposition_log`` rows, and the batch's stage times → ``latency_metrics``
    rows; :meth:`write` returns once the sink holds them durably. The stream and the HTTP API
    both log through it, each with its own stage set (``STAGES`` / ``API_STAGES``).

    With ``records`` (learning from outcomes), each decision's record (key, type, action, mode)
    goes to Redis for the outcome window at the same time, so a verdict published later can name
    the alert id alone; Redis being down skips them (counted), never the rows."""

    def __init__(self, sink: Sink, worker_name: str, records: OutcomeStore | None = None) -> None:
        self.sink = sink
        self.worker_name = worker_name
        self.records = records
        # exactly_once: the Kafka transaction the calling batch publishes in (its rows are held
        # until it is settled, and carry it as their attempt); None outside a transaction.
        self.transaction_of: Callable[[], str | None] | None = None

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
        transaction = self.transaction_of() if self.transaction_of is not None else None
        rows, metrics = self.rows(envelopes, decisions, transaction), self.metrics(times, decisions, received_ns, stages)
        if transaction is None:
            writing = self.sink.write(rows, metrics)
        else:
            writing = self.sink.write(rows, metrics, transaction=transaction)
        if self.records is None:
            await writing
        else:  # one Redis round trip beside the journal write (record() never raises an outage)
            await asyncio.gather(writing, self.records.record(decisions))
        times.sink = time.perf_counter_ns() - t0

    def rows(self, envelopes: Sequence[Envelope], decisions: Sequence[Decision], attempt: str | None = None) -> list[LogRow]:
        n = len(decisions)
        worker = self.worker_name
        return [log_row(d, env, env.alert.severity, env.alert.source, n, worker, attempt) for d, env in zip(decisions, envelopes)]

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

    async def process(self, messages: Sequence[RawMessage], progress: BatchProgress | None = None) -> BatchReport:
        """Every stage that ``progress`` (a previous attempt of this batch) has not done yet."""
        progress = progress if progress is not None else BatchProgress()
        times = StageTimes()
        envelopes, dead = self.decode(messages, progress, times)
        await self.publish(envelopes, dead, progress, times)
        decided = [env for env in envelopes if (env.partition, env.offset) in progress.decisions]
        await self.log(decided, progress, times)
        decisions = [progress.decisions[(env.partition, env.offset)] for env in decided]
        tiers: dict[str, int] = {}
        for d in decisions:
            tiers[d.cache_tier] = tiers.get(d.cache_tier, 0) + 1
        delivered = [(m.partition, m.offset) for m in messages]
        dead = [progress.dead[p] for p in delivered if p in progress.dead and p not in progress.dropped]
        dropped = [progress.dropped[p] for p in delivered if p in progress.dropped]
        return BatchReport(decisions, dead, times, tiers, dropped)

    def decode(
        self, messages: Sequence[RawMessage], progress: BatchProgress, times: StageTimes
    ) -> tuple[list[Envelope], list[DeadLetter]]:
        """(envelopes, dead letters) of the batch; each message is decoded once, on first sight."""
        t0 = time.perf_counter_ns()
        envelopes: list[Envelope] = []
        dead: list[DeadLetter] = []
        decode = self.decoder.decode
        for m in messages:
            position = (m.partition, m.offset)
            if position in progress.dead:
                dead.append(progress.dead[position])
                continue
            env = progress.envelopes.get(position)
            if env is None:
                try:
                    alert = decode(m.value if m.value is not None else b"")
                except InvalidAlert as exc:
                    dead.append(self.dead_letter(m, exc.reason, exc.detail, progress.received_ns / 1e9))
                    progress.dead[position] = dead[-1]
                    continue
                env = progress.envelopes[position] = self.triage.envelope(
                    alert, m.partition, m.offset, progress.received_ns, m.topic
                )
            envelopes.append(env)
        times.decode = time.perf_counter_ns() - t0
        return envelopes, dead

    async def publish(
        self, envelopes: Sequence[Envelope], dead: Sequence[DeadLetter], progress: BatchProgress, times: StageTimes
    ) -> None:
        """Decide what is undecided and send what is unacknowledged; return once the broker
        acknowledged every record (raise otherwise, after recording what it did acknowledge)."""
        acked, decisions = progress.acked, progress.decisions
        # LRU hits (most alerts) are sent at once; they don't wait for their batch's misses.
        hits, misses = self.triage.split([env for env in envelopes if (env.partition, env.offset) not in decisions], times)
        for (env, _), d in zip(hits, self.triage.decide_hits(hits, times)):
            decisions[(env.partition, env.offset)] = d
        unsent = [(env.partition, env.offset) for env in envelopes]
        unsent = [p for p in unsent if p in decisions and p not in acked]
        t1 = time.perf_counter_ns()
        sent = [await self._send(progress, unsent, [dl for dl in dead if (dl.partition, dl.offset) not in acked])]
        times.produce = time.perf_counter_ns() - t1
        try:
            if misses:
                for env, d in zip(misses, await self.triage.decide_misses(misses, times)):
                    decisions[(env.partition, env.offset)] = d
                t1 = time.perf_counter_ns()
                sent.append(await self._send(progress, [(env.partition, env.offset) for env in misses], []))
            else:
                t1 = time.perf_counter_ns()
        except BaseException:
            await self._settle(sent, progress, raise_errors=False)  # the batch is retried: keep what was acknowledged
            raise
        await self._settle(sent, progress)  # every record acknowledged before the rows are made durable
        times.produce += time.perf_counter_ns() - t1

    async def log(self, envelopes: Sequence[Envelope], progress: BatchProgress, times: StageTimes) -> None:
        """Rows of the published decisions whose rows are not durable yet."""
        todo = [env for env in envelopes if (env.partition, env.offset) not in progress.logged]
        if todo:
            decisions = [progress.decisions[(env.partition, env.offset)] for env in todo]
            await self.decision_log.write(todo, decisions, times, progress.received_ns, STAGES)
            progress.logged.update((env.partition, env.offset) for env in todo)

    async def _send(self, progress: BatchProgress, positions: Sequence[Position], dead: Sequence[DeadLetter]) -> _Sent:
        decisions = [progress.decisions[p] for p in positions]
        acks = await self.emitter.send(decisions, dead)
        return _Sent([*positions, *((dl.partition, dl.offset) for dl in dead)], [*decisions, *dead], acks)

    async def _settle(self, sent: Sequence[_Sent], progress: BatchProgress, *, raise_errors: bool = True) -> None:
        """Wait for every ack and record the acknowledged positions; then raise the first failure
        (an outage, as a rule), else ``DecisionsTooLarge`` for decisions that can never be sent.
        A dead letter too large for the DLQ is sent again without its original bytes."""
        positions = [p for s in sent for p in s.positions]
        records = [r for s in sent for r in s.records]
        results = await asyncio.gather(*(a for s in sent for a in s.acks), return_exceptions=True)
        errors: list[BaseException] = []
        too_large: dict[Position, RecordTooLarge] = {}
        shrink: list[tuple[DeadLetter, RecordTooLarge]] = []
        for position, record, result in zip(positions, records, results):
            if not isinstance(result, BaseException):
                progress.acked.add(position)
            elif isinstance(result, RecordTooLarge):
                if isinstance(record, DeadLetter):
                    shrink.append((record, result))
                else:
                    too_large[position] = result
            elif isinstance(result, asyncio.CancelledError):  # the producer dropped it (stopping): send it again
                errors.append(ConnectionError(f"the producer cancelled the send of a record: {result!r}"))
            else:
                errors.append(result)
        if shrink:
            errors += await self._send_without_original(shrink, progress)
        if raise_errors and errors:
            raise errors[0]
        if raise_errors and too_large:
            raise DecisionsTooLarge(too_large)

    async def _send_without_original(
        self, shrink: Sequence[tuple[DeadLetter, RecordTooLarge]], progress: BatchProgress
    ) -> list[BaseException]:
        """The dead letters again, without their original bytes (the error says why); one that is
        still too large is logged and dropped: no DLQ record can carry it."""
        smaller = [
            replace(dl, original=b"", error=f"{dl.error} [original ({len(dl.original)} bytes) omitted: {exc}]")
            for dl, exc in shrink
        ]
        sent = await self._send(progress, [], smaller)
        errors: list[BaseException] = []
        for small, result in zip(smaller, await asyncio.gather(*sent.acks, return_exceptions=True)):
            position = (small.partition, small.offset)
            if not isinstance(result, BaseException) or isinstance(result, RecordTooLarge):
                progress.acked.add(position)
                progress.dead[position] = small
            if isinstance(result, RecordTooLarge):
                progress.dropped[position] = small
                log.error(
                    "dead letter dropped: too large for the DLQ even without its original (%s)",
                    result,
                    extra={"reason": small.reason, "partition": small.partition, "offset": small.offset},
                )
            elif isinstance(result, BaseException):
                errors.append(result)
        return errors

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
