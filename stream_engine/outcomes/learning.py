"""The worker's outcomes part: how verdicts on the ``outcomes`` topic reach Redis, ClickHouse and
every worker's LRU.

    outcomes ──▶ consumer group "<app_id>.outcomes" (one worker per partition): decode ── invalid ──▶ alerts.dlq
      (keyed        resolve the alert id (Redis record; else ClickHouse) ── unknown / expired ──▶ alerts.dlq unknown_alert
      by alert id)  count the verdict once (Redis script) ─▶ ClickHouse ``outcomes`` row ─▶ commit
            └────▶ every worker's listener (no group membership, from the group's committed offsets):
                    resolve + count (the same idempotent script) ─▶ its LRU entry and type evidence

Why both. The group applies every verdict exactly once *in effect* and durably: its offsets are
committed only after the counts are in Redis, the dead letters acknowledged and the row in
ClickHouse, so a verdict published while every worker was down is applied when one starts. The
listener is how each worker learns of a verdict at once, whichever worker's group member took
it: it reads every partition from the group's committed offsets (what the group may not have
applied yet, and everything after), applies the verdict itself — counting is idempotent, so the
group and N listeners applying one verdict count it once — and takes the evidence the script
returns into its LRU entry for the key and its type evidence. A worker that owns a key's
partition therefore decides that key with a verdict from the moment its listener has read it
(tens of ms after it is published); a batch already deciding meanwhile uses what it had.

An alert id is resolved from Redis's decision records first: they live for the hot window
(``outcome_record_ttl_s``, minutes), which bounds Redis's memory. The ids Redis does not know are
looked up in ClickHouse, ONE ``alert_id IN (...)`` query per batch of verdicts on
``decision_lookup`` (ordered by alert id) under the analytics limits, for decisions within the
outcome window (days). A decision's row reaches ClickHouse one sink flush after it is decided,
long before its record expires (the hot window is at least ten flush intervals), so a verdict on a
just-decided alert finds the record and one on an older alert finds the row.

A verdict published within ``outcome_grace_s`` of its decision may arrive before the decision's
record is in Redis (it is written beside the batch's ClickHouse rows, after the decisions are
acknowledged): an unknown alert id is looked up again (after 50 ms, 100 ms, … up to 1 s apart)
until its message is that old, and only then dead-lettered ``unknown_alert``. Redis outages are waited out (retried every
``redis_retry_after_s``): a verdict is never dropped for one, nor dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from stream_engine.cache.redis_tier import OUTAGE_ERRORS
from stream_engine.outcomes.decoder import UNKNOWN_ALERT, Outcome, OutcomeDecoder
from stream_engine.outcomes.store import Applied, DecisionRecord, OutcomeStore, Verdict
from stream_engine.pipeline import RawMessage
from stream_engine.sinks.clickhouse.analytics import QueryLimitExceeded
from stream_engine.sinks.clickhouse.rows import OutcomeRow, outcome_row
from stream_engine.sinks.clickhouse.sink import SinkStopped
from stream_engine.validation import InvalidAlert

if TYPE_CHECKING:
    from stream_engine.models import DeadLetter
    from stream_engine.monitor import Monitor
    from stream_engine.outcomes.book import OutcomeBook
    from stream_engine.settings import Settings

log = logging.getLogger(__name__)

DeadLetterFactory = Callable[[RawMessage, str, str, float], "DeadLetter"]
RowWriter = Callable[[Sequence[OutcomeRow], str], Any]  # async (rows, dedup token) -> None; raises NotImplementedError without ClickHouse
# async (alert ids, decided since: epoch s) -> {alert id: record} from ClickHouse; raises NotImplementedError without it
DecisionFinder = Callable[[Sequence[str], float], Awaitable[dict[str, DecisionRecord]]]
MAX_BATCH = 500
ATTEMPTS_BEFORE_GIVING_UP = 3
# What may pass by itself: waited out. ClickHouse's errors come as OSError (HTTP) or as its own
# DatabaseError; a stopping sink raises SinkStopped (a RuntimeError).
OUTAGE_ERRORS_AND_KAFKA: tuple[type[BaseException], ...] = (*OUTAGE_ERRORS, KafkaError, OSError, TimeoutError, SinkStopped)
MAX_REQUEST_BYTES = 4 * 1024 * 1024  # as the engines' producer: a dead letter carries its original in base64


@dataclass(slots=True)
class LearningCounters:
    processed: int = 0  # verdicts the group applied (committed)
    counted: int = 0  # verdicts this worker (group member or listener) counted first: the others found them counted
    listened: int = 0  # verdicts this worker's listener applied
    dead_lettered: int = 0
    rows_written: int = 0
    retries: int = 0  # Redis/Kafka/ClickHouse outages waited out
    resolved_hot: int = 0  # alert ids resolved from Redis's records (the hot window)
    resolved_clickhouse: int = 0  # ... from ClickHouse (decided before the hot window, or records Redis lost)


@dataclass(slots=True)
class _Handled:
    outcomes: list[tuple[RawMessage, Outcome, DecisionRecord, float]]  # with their receipt time
    verdicts: list[Verdict]
    applied: Applied
    dead: list[DeadLetter]


class OutcomeLearning:
    def __init__(
        self,
        settings: Settings,
        store: OutcomeStore,
        book: OutcomeBook,
        dead_letter: DeadLetterFactory,
        write_rows: RowWriter,
        monitor: Monitor | None = None,
        worker_name: str = "",
        find_decisions: DecisionFinder | None = None,
    ) -> None:
        self.settings = settings
        self.topic = settings.topic_outcomes
        self.group = f"{settings.app_id}.outcomes"
        self.store = store
        self.book = book
        self.decoder = OutcomeDecoder.from_settings(settings)
        self.dead_letter = dead_letter
        self.write_rows = write_rows
        self.monitor = monitor
        self.worker_name = worker_name
        self.find_decisions = find_decisions
        self.grace_s = settings.outcome_grace_s
        self.retry_s = settings.redis_retry_after_s
        self.counters = LearningCounters()
        self.producer: AIOKafkaProducer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._rows_unavailable = False

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """The producer (dead letters, the API's verdicts) and, in the background, the group and
        the listener; the types' evidence is loaded first (a worker never decides without it)."""
        try:
            for part, evidence in (await self.store.type_evidence()).items():
                self.book.saw_type(part, evidence)
        except OUTAGE_ERRORS as exc:
            log.warning("outcomes: cannot read the alert types' evidence from Redis (%s); it fills in as verdicts arrive", exc)
        s = self.settings
        self.producer = AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap, acks="all", enable_idempotence=True, linger_ms=s.producer_linger_ms,
            max_request_size=MAX_REQUEST_BYTES,
        )  # fmt: skip
        await self.producer.start()
        self._tasks = [
            asyncio.create_task(self._run(self._group_loop), name="outcomes-group"),
            asyncio.create_task(self._run(self._listen_loop), name="outcomes-listener"),
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        producer, self.producer = self.producer, None
        if producer is not None:
            await producer.stop()

    async def publish(self, outcomes: Sequence[Outcome]) -> None:
        """Verdicts onto the topic, keyed by alert id; returns once the broker acknowledged them all."""
        if self.producer is None:
            raise RuntimeError("outcomes are not started")
        acks = [await self.producer.send(self.topic, o.to_json(), key=o.alert_id.encode()) for o in outcomes]
        await asyncio.gather(*acks)

    def stats(self) -> dict[str, Any]:
        return {**asdict(self.counters), **self.store.stats(), "lru_refreshed": self.book.lru_refreshed,
                "types": len(self.book.types)}  # fmt: skip

    async def _run(self, loop: Callable[[], Any]) -> None:
        """A loop that survives anything but cancellation (a bug is logged, then it starts over)."""
        while True:
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outcomes: %s failed; restarting it", getattr(loop, "__name__", loop))
                await asyncio.sleep(1.0)

    # --- the consumer group: applies, dead-letters, writes the rows, commits ------------------------

    async def _group_loop(self) -> None:
        s = self.settings
        consumer = AIOKafkaConsumer(
            self.topic, bootstrap_servers=s.kafka_bootstrap, group_id=self.group, client_id=f"{self.group}-{self.worker_name}",
            enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=s.fetch_max_wait_ms,
            session_timeout_ms=int(s.session_timeout_s * 1000), heartbeat_interval_ms=int(s.heartbeat_interval_s * 1000),
        )  # fmt: skip
        await consumer.start()
        try:
            while True:
                fetched = await consumer.getmany(timeout_ms=1000, max_records=MAX_BATCH)
                records = [r for rs in fetched.values() for r in rs]
                if not records:
                    continue
                try:
                    await self._apply_as_group(records)
                except OUTAGE_ERRORS_AND_KAFKA:
                    raise
                except Exception as exc:  # not an outage, after retries: isolate the message(s) at fault
                    await self._isolate(records, exc)
                offsets = {tp: OffsetAndMetadata(rs[-1].offset + 1, "") for tp, rs in fetched.items()}
                try:
                    await consumer.commit(offsets)
                except (CommitFailedError, IllegalStateError) as exc:  # a rebalance: the next owner re-applies (idempotent)
                    log.warning("outcomes: commit dropped (%s)", exc)
        finally:
            await consumer.stop()

    async def _apply_as_group(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        handled = await self._handle(records, listener=False)
        self.counters.processed += len(handled.verdicts)
        if handled.dead:
            await self._until_done("dead letters", lambda: self._send_dead(handled.dead))
            self.counters.dead_lettered += len(handled.dead)
        rows = [outcome_row(o, rec, m, received_at, self.worker_name) for m, o, rec, received_at in handled.outcomes]
        if rows and not self._rows_unavailable:
            spans: dict[tuple[str, int], list[int]] = {}
            for r in records:
                spans.setdefault((r.topic, r.partition), []).append(r.offset)
            token = "outcomes:" + ";".join(f"{t}:{p}:{min(o)}-{max(o)}:{len(o)}" for (t, p), o in sorted(spans.items()))
            try:
                # Every ClickHouse error is retried, as the sink does: the group waits, the listeners go on.
                await self._until_done("ClickHouse rows", lambda: self.write_rows(rows, token), give_up=(NotImplementedError,),
                                       forever=True)  # fmt: skip
                self.counters.rows_written += len(rows)
            except NotImplementedError:
                self._rows_unavailable = True  # a sink without ClickHouse (tests): counts only
                log.warning("outcomes: this worker's sink has no ClickHouse; verdicts are counted but not logged")

    async def _isolate(self, records: list[ConsumerRecord[bytes, bytes]], exc: Exception) -> None:
        """One by one; one that fails alone is dead-lettered ``processing_error`` (the engines' rule)."""
        if len(records) > 1:
            log.error("outcomes: a batch of %d keeps failing (%r): applying its messages one by one", len(records), exc)
            for record in records:
                try:
                    await self._apply_as_group([record])
                except OUTAGE_ERRORS_AND_KAFKA:
                    raise
                except Exception as one:
                    await self._isolate([record], one)
            return
        (r,) = records
        message = RawMessage(r.value, r.partition, r.offset, r.topic)
        dead = self.dead_letter(message, "processing_error", f"{type(exc).__name__}: {exc}"[:1000], time.time())
        await self._until_done("dead letters", lambda: self._send_dead([dead]))
        self.counters.dead_lettered += 1

    async def _send_dead(self, dead: Sequence[DeadLetter]) -> None:
        assert self.producer is not None
        acks = [await self.producer.send(self.settings.topic_dlq, dl.to_json(), None, headers=[("reason", dl.reason.encode())])
                for dl in dead]  # fmt: skip
        await asyncio.gather(*acks)
        if self.monitor is not None:
            for dl in dead:
                self.monitor.dead_letters[dl.reason] += 1
        for dl in dead:  # the payload is never logged: the DLQ keeps it
            log.warning("dead letter: %s", dl.reason, extra={"reason": dl.reason, "error": dl.error[:300],
                                                            "partition": dl.partition, "offset": dl.offset})  # fmt: skip

    # --- the listener: every worker, every partition, never a member of the group --------------------

    async def _listen_loop(self) -> None:
        s = self.settings
        # group_id only to read the group's committed offsets as starting positions: with assign()
        # the consumer never joins the group, and it never commits.
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap, group_id=self.group, client_id=f"{self.group}-listener-{self.worker_name}",
            enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=s.fetch_max_wait_ms,
        )  # fmt: skip
        assert self.producer is not None
        partitions = await self._until_done(f"finding the partitions of {self.topic}", lambda: self.producer.partitions_for(self.topic))
        await consumer.start()
        try:
            consumer.assign([TopicPartition(self.topic, p) for p in sorted(partitions)])
            log.info("outcomes listener on %s: %d partitions", self.topic, len(partitions))
            while True:
                fetched = await consumer.getmany(timeout_ms=1000, max_records=MAX_BATCH)
                records = [r for rs in fetched.values() for r in rs]
                if not records:
                    continue
                try:
                    handled = await self._handle(records, listener=True)
                except OUTAGE_ERRORS_AND_KAFKA:
                    raise
                except Exception:  # the group isolates (and dead-letters) what keeps failing; here: skip it
                    log.exception("outcomes listener: a batch of %d failed; skipped here", len(records))
                    continue
                self.counters.listened += len(handled.verdicts)
        finally:
            await consumer.stop()

    # --- shared: decode, resolve, count, take the evidence in ---------------------------------------

    async def _handle(self, records: Sequence[ConsumerRecord[bytes, bytes]], *, listener: bool) -> _Handled:
        received_at = time.time()
        dead: list[DeadLetter] = []
        decoded: list[tuple[RawMessage, Outcome, float]] = []  # with the record's timestamp (s)
        for r in records:
            message = RawMessage(r.value, r.partition, r.offset, r.topic)
            try:
                decoded.append((message, self.decoder.decode(r.value), r.timestamp / 1000))
            except InvalidAlert as exc:
                if not listener:
                    dead.append(self.dead_letter(message, exc.reason, exc.detail, received_at))
        found = await self._resolve([o.alert_id for _, o, _ in decoded])
        unknown = [(m, o, ts) for m, o, ts in decoded if o.alert_id not in found]
        delay = 0.05
        while unknown:
            # A verdict may overtake its decision's record by a few ms: look again, sooner first,
            # until the youngest of them is outcome_grace_s old.
            wait = max(ts for _, _, ts in unknown) + self.grace_s - time.time()
            if wait <= 0:
                break
            await asyncio.sleep(min(wait, delay))
            delay = min(delay * 2, 1.0)
            found.update(await self._resolve([o.alert_id for _, o, _ in unknown]))
            unknown = [(m, o, ts) for m, o, ts in unknown if o.alert_id not in found]
        outcomes: list[tuple[RawMessage, Outcome, DecisionRecord, float]] = []
        verdicts: list[Verdict] = []
        window_days = self.settings.outcome_window_s / 86400
        for message, outcome, _ in decoded:
            record = found.get(outcome.alert_id)
            if record is None:
                if not listener:
                    detail = f"alert_id {outcome.alert_id!r}: no decision of it within the outcome window ({window_days:g} days)"
                    dead.append(self.dead_letter(message, UNKNOWN_ALERT, detail, received_at))
                continue
            outcomes.append((message, outcome, record, received_at))
            action = outcome.action or record.action
            if action is not None:  # an escalation without propositions names no action: nothing to count
                verdicts.append(Verdict(outcome.alert_id, action, outcome.outcome, record.key))
        applied = await self._until_done("counting", lambda: self.store.apply(verdicts))
        self.counters.counted += sum(applied.new)
        for key, evidence in applied.keys.items():
            self.book.saw_key(key, evidence)
        for part, evidence in applied.types.items():
            self.book.saw_type(part, evidence)
        return _Handled(outcomes, verdicts, applied, dead)

    async def _resolve(self, alert_ids: Sequence[str]) -> dict[str, DecisionRecord]:
        """Each id's decision: Redis's record (the hot window), else ClickHouse's row within the
        outcome window, one query for all the misses; absent from both: unknown."""
        found = await self._until_done("lookup", lambda: self.store.resolve(alert_ids))
        self.counters.resolved_hot += len(found)
        missing = [i for i in dict.fromkeys(alert_ids) if i not in found]
        if missing and self.find_decisions is not None:
            since = time.time() - self.settings.outcome_window_s
            try:
                # ClickHouse errors are waited out like the rows' (the group holds its offsets
                # meanwhile); a query its limits stop is not retried: the group isolates it.
                older = await self._until_done("ClickHouse lookup", lambda: self.find_decisions(missing, since),  # type: ignore[misc]
                                               give_up=(NotImplementedError, QueryLimitExceeded), forever=True)  # fmt: skip
            except NotImplementedError:
                self.find_decisions = None  # a sink without ClickHouse (tests): the hot window only
                log.warning("outcomes: this worker's sink has no ClickHouse; verdicts resolve within the hot window only")
            else:
                self.counters.resolved_clickhouse += len(older)
                found.update(older)
        return found

    async def _until_done(
        self, what: str, call: Callable[[], Any], give_up: tuple[type[BaseException], ...] = (), *, forever: bool = False
    ) -> Any:
        """``await call()`` until it succeeds: an outage (Redis, Kafka, ClickHouse: anything that
        may pass) is waited out however long; anything else is tried 3 times, then raised
        (``forever``: everything but ``give_up`` is retried)."""
        delay = self.retry_s
        attempts = 0
        while True:
            try:
                return await call()
            except asyncio.CancelledError:
                raise
            except give_up:
                raise
            except Exception as exc:
                attempts += 1
                if not forever and not isinstance(exc, OUTAGE_ERRORS_AND_KAFKA) and attempts >= ATTEMPTS_BEFORE_GIVING_UP:
                    raise
                self.counters.retries += 1
                log.warning("outcomes: %s failed (%s: %s); retrying in %.1fs", what, type(exc).__name__, str(exc)[:200], delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
