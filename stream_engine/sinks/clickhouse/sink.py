"""The ClickHouse sink: journal first, then one insert block per journal segment, in the background.

``write`` appends the rows to the on-disk journal (one fsync per group of concurrent writes) and
returns: the caller may commit its Kafka offsets then. The rows also stay in memory with the
segment they were written to. A segment is sealed by size (``flush_rows``) or age
(``flush_interval_s``) and is then the unit of everything that follows (a "block"):

* **one insert per table**, carrying ``insert_deduplication_token`` = the segment's id (written in
  its header, so it survives the renames of an adoption). A retried insert, or the same segment
  replayed from disk after a crash between "inserted" and "deleted", is dropped by ClickHouse
  (the tables keep a deduplication window: schema.py). Inserting a block twice never stores it
  twice; only a redelivered alert (a second decision) is a second row, and in ``proposition_log``
  a ReplacingMergeTree collapses it.
* **ownership**: a block deletes its own segment, and only after its own rows are inserted.
  Blocks whose rows are not in memory (left by an earlier run, adopted from a stopped worker,
  spilled during an outage) are read back from disk one at a time; whatever sealed segment is
  in the directory and owned by no block is found by a rescan (at start, after every adoption
  attempt, even one that failed half way), so nothing is deleted that was not inserted and
  nothing is forgotten that was not deleted.

Replay runs beside live writes: the flusher alternates between blocks from memory and blocks from
disk, so after an outage the live rows wait for one block at most, never for the whole backlog,
and memory holds at most one replayed segment beside the live buffer.

Memory is bounded: rows in memory (blocks not yet inserted, the one being inserted included) stay
under ``max_buffer_rows``; ``write`` waits while ClickHouse is merely slow (backpressure). While
inserts are failing ``write`` does not wait: the blocks in memory are dropped to disk-only
("spilled", bounded by disk) and replayed from the journal once ClickHouse answers again.

Journal slots: the journal directory is a root shared by workers; each sink claims its own locked
``slot-<n>`` and adopts the segments of slots no live process holds, at start and every
``adopt_interval_s`` (``slots.py``).

Exactly-once seam (for engines that publish in Kafka transactions)
------------------------------------------------------------------
An engine that commits its consumed offsets inside a Kafka transaction must make the batch's rows
durable before the transaction commits, yet only committed transactions may reach ClickHouse.

* ``write(rows, metrics, transaction=T)`` journals the rows (durable, so nothing is lost if the
  process dies after the commit) but holds them: no block containing T is inserted until
  ``settle(T, committed)`` is called (other rows sharing that block wait with it). ``settle``
  journals a marker (``c`` / ``a`` records) and releases (committed) or drops (aborted) T's rows
  and stage metrics. Held rows count against ``max_buffer_rows``: an engine must settle every
  transaction it writes, or its writers end up waiting for room.
* After a crash, T's marker may be missing (the process died between the Kafka commit and the
  marker). Replaying such a segment (at the next start, or when another worker adopts it), the
  sink looks for T's marker in the other segments of its directory, and otherwise asks
  ``replay_filter``: an async callable given the undecided rows that returns those to keep.
  :func:`below_committed` builds one from the consumer group's committed offsets: a row is kept
  iff its offset is below the committed offset of its topic-partition. That answer is only right
  if the offsets are read once the dead owner's transaction is settled (``require_stable``
  offset fetch, or after the fenced producer's successor called ``init_transactions``) and before
  another attempt of the same offsets commits; a filter that can tell attempts apart (the
  ``attempt`` column, also put in the offset commit's metadata) is exact. Without a filter,
  undecided rows are kept (at least once: nothing is dropped on a guess).
* The block's token covers what was kept: if markers or the filter dropped rows, the token is the
  segment id plus a digest of the kept rows' positions, so a replay that decides the same way is
  dropped by ClickHouse and one that decided differently is not silently swallowed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from stream_engine.masking import Masker, mask_url_passwords
from stream_engine.sinks.clickhouse import slots
from stream_engine.sinks.clickhouse.journal import Batch, Journal, encode_batch, encode_settlement, find_settlements, read_segment
from stream_engine.sinks.clickhouse.rows import LOG_COLUMNS, LOG_TYPES, METRIC_COLUMNS, METRIC_TYPES, LogRow, MetricRow
from stream_engine.sinks.clickhouse.slots import Slot

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from stream_engine.settings import Settings

log = logging.getLogger(__name__)

ClientFactory = Callable[[], "Client"]
ReplayFilter = Callable[[Sequence[LogRow]], Awaitable[Sequence[LogRow]]]
T = TypeVar("T")


class SinkStopped(RuntimeError):
    """write() after stop(): an infrastructure state (shutdown), never a fault of the rows."""


class _GaveUp(Exception):
    """Stopping and the deadline passed: what is left stays in the journal for the next start."""


def below_committed(committed: Callable[[], Awaitable[Mapping[tuple[str, int], int]]]) -> ReplayFilter:
    """A replay filter keeping stream rows whose offset is below their topic-partition's committed
    offset (``committed()`` returns ``{(topic, partition): next offset to consume}``), and every
    row that has no source offset (API rows)."""

    async def keep(rows: Sequence[LogRow]) -> Sequence[LogRow]:
        offsets = await committed()
        return [r for r in rows if r.origin != "stream" or r.offset < offsets.get((r.topic, r.partition), 0)]

    return keep


@dataclass(eq=False)
class _Block:
    """One journal segment: the unit of insert, deduplication and deletion."""

    path: Path
    id: str  # the segment's id (its dedup token); "" until a disk-only block is read
    batches: list[Batch] | None  # the rows in memory; None = on disk only
    memory_rows: int = 0  # log + metric rows held in memory
    written: int = 0  # log + metric rows written to the segment
    transactions: set[str] = field(default_factory=set)  # held transactions with rows here
    opened_at: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class _Write:
    rows: Sequence[LogRow]
    metrics: Sequence[MetricRow]
    transaction: str | None
    future: asyncio.Future[None]

    def encode(self) -> bytes:
        return encode_batch(self.rows, self.metrics, self.transaction)


@dataclass(eq=False)
class _Settle:
    transaction: str
    committed: bool
    future: asyncio.Future[None]

    def encode(self) -> bytes:
        return encode_settlement(committed=[self.transaction]) if self.committed else encode_settlement(aborted=[self.transaction])


class ClickHouseSink:
    def __init__(
        self,
        client_factory: ClientFactory,
        journal_dir: Path,
        *,
        flush_rows: int = 10_000,
        flush_interval_s: float = 1.0,
        max_buffer_rows: int = 100_000,
        fsync: bool = True,
        retry_initial_s: float = 0.05,
        retry_max_s: float = 2.0,
        stop_timeout_s: float = 10.0,
        connect_wait_s: float = 10.0,
        adopt_interval_s: float = 30.0,
        segment_max_bytes: int = 16 << 20,
        log_table: str = "decision_audit",  # its view feeds proposition_log (schema.py)
        metric_table: str = "latency_metrics",
        replay_filter: ReplayFilter | None = None,
    ) -> None:
        self._client_factory = client_factory
        self._journal_root = journal_dir  # the sink's own directory is a slot under it, claimed at start
        self._journal = Journal(journal_dir, fsync=fsync, segment_max_bytes=segment_max_bytes)
        self._slot: Slot | None = None
        self.flush_rows = flush_rows
        self.flush_interval_s = flush_interval_s
        self.max_buffer_rows = max_buffer_rows
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.stop_timeout_s = stop_timeout_s
        self.connect_wait_s = connect_wait_s
        self.adopt_interval_s = adopt_interval_s
        self._next_adoption = time.monotonic() + adopt_interval_s
        self.log_table = log_table
        self.metric_table = metric_table
        self.replay_filter = replay_filter

        self._client: Client | None = None
        self._journal_pool = ThreadPoolExecutor(1, thread_name_prefix="sink-journal")
        self._replay_pool = ThreadPoolExecutor(1, thread_name_prefix="sink-replay")  # reads never queue appends
        self._insert_pool = ThreadPoolExecutor(1, thread_name_prefix="sink-insert")
        self._journal_lock = asyncio.Lock()  # orders appends against sealing, adoption and rescans
        self._space = asyncio.Condition()  # backpressure waiters
        self._wake = asyncio.Event()
        self._pending: list[_Write | _Settle] = []

        self._active: _Block | None = None  # the segment being appended to
        self._ready: list[_Block] = []  # sealed, rows in memory, oldest first
        self._disk: deque[_Block] = deque()  # sealed, rows on disk only
        self._parked: list[_Block] = []  # on disk, waiting for a settle() of our own transactions
        self._inflight: _Block | None = None
        self._undeleted: list[Path] = []  # inserted, but the delete failed: never re-sent by this process
        self._memory = 0  # rows in memory: active + ready + in flight
        self._disk_turn = False  # alternate memory and disk blocks
        self._rescan = False
        self._settled: dict[str, bool] = {}  # our transactions' outcomes (True = committed)
        self._holding: dict[str, int] = {}  # transaction -> blocks with its rows not yet inserted
        self._failing = False
        self._stopping = False
        self._deadline = float("inf")
        self._flusher: asyncio.Task[None] | None = None

        self.rows_written = 0
        self.metrics_written = 0
        self.rows_inserted = 0
        self.metrics_inserted = 0
        self.flushes = 0
        self.flush_rows_total = 0
        self.flush_rows_max = 0
        self.flush_seconds_total = 0.0
        self.flush_seconds_max = 0.0
        self.failures = 0
        self.last_error = ""  # shown by /api/v1/stats and logged: masked (mask_error)
        self.mask_error: Callable[[str], str] = mask_url_passwords
        self.spills = 0
        self.replayed_rows = 0
        self.dropped_rows = 0  # rows of aborted (or filtered out) transactions
        self.journal_bytes_written = 0
        self.write_wait_seconds = 0.0

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ClickHouseSink:
        """Sink on ``settings.effective_clickhouse_url``; the schema is migrated on first connect."""
        from stream_engine.sinks.clickhouse.client import connect
        from stream_engine.sinks.clickhouse.schema import migrate

        url, database, ttl_days = settings.effective_clickhouse_url, settings.clickhouse_database, settings.clickhouse_ttl_days
        timeout = settings.clickhouse_timeout_s
        migrated = False

        def factory() -> Client:
            nonlocal migrated
            if not migrated:
                migrate(connect(url, None, send_receive_timeout_s=timeout), database, ttl_days)
                migrated = True
            return connect(url, database, send_receive_timeout_s=timeout)

        params: dict[str, Any] = {
            "flush_rows": settings.sink_flush_rows,
            "flush_interval_s": settings.sink_flush_interval_s,
            "max_buffer_rows": settings.sink_max_buffer_rows,
            "fsync": settings.sink_fsync,
        }
        params.update(overrides)
        sink = cls(factory, settings.data_dir / "journal", **params)
        sink.mask_error = Masker(settings.redact_fields).text
        return sink

    # --- the contract ---------------------------------------------------------------------

    async def start(self) -> None:
        async with self._journal_lock:
            await self._in_journal_thread(self._open_journal)
            await self._scan_directory()
        if self._disk:
            log.info("replaying %d journal segment(s) left by an earlier run", len(self._disk))
        await self._connect_early()
        self._flusher = asyncio.create_task(self._flush_loop(), name="clickhouse-sink-flusher")

    def _open_journal(self) -> None:
        """Claim a journal slot and take over free slots' segments."""
        self._slot = slots.claim(self._journal_root)
        self._journal.directory = self._slot.directory
        self._journal.open()
        try:
            self._adopt_orphans_sync()
        except OSError:  # whatever moved in is found by the rescan; the rest is retried later
            log.exception("adopting journal segments of stopped workers failed")

    def _adopt_orphans_sync(self) -> int:
        assert self._slot is not None
        adopted = slots.adopt_orphans(self._journal_root, self._slot, self._journal.adopt)
        if adopted:
            log.info("adopted %d journal segment(s) left by stopped workers", adopted)
        return adopted

    async def _adopt_orphans(self) -> None:
        """Segments of a worker that stopped while we run (a scale-down): replay them too."""
        async with self._journal_lock:
            try:
                await self._in_journal_thread(self._adopt_orphans_sync)
            finally:  # an adoption that failed half way moved some segments in: they are ours now
                await self._scan_directory()

    async def _scan_directory(self) -> None:
        """Every sealed segment in our directory that no block owns becomes a disk block (lock held)."""
        paths = await self._in_journal_thread(self._journal.sealed_segments)
        owned = {b.path for b in (*self._ready, *self._disk, *self._parked, self._active, self._inflight) if b is not None}
        owned.update(self._undeleted)
        for path in paths:
            if path not in owned:
                self._disk.append(_Block(path, "", None))
        self._rescan = False
        if self._disk:
            self._wake.set()

    async def _connect_early(self) -> None:
        """Open the client before the stream starts rather than at the first flush.

        For chDB, opening means importing the engine (~300 MB, under the GIL) and loading the
        tables: done at the first flush, it stalled the first seconds of traffic (demo on an
        existing data dir: p99 in the first 2 s up to 700 ms). A ClickHouse that is down or slow
        is no reason to refuse to start: rows go to the journal and the flusher keeps trying.
        """
        opening = asyncio.get_running_loop().run_in_executor(self._insert_pool, self._open_client)
        opening.add_done_callback(lambda f: f.cancelled() or f.exception())  # outcome logged below, once
        try:
            await asyncio.wait_for(asyncio.shield(opening), self.connect_wait_s)
        except TimeoutError:
            log.warning("ClickHouse did not answer within %.0f s at start; flushes wait for it", self.connect_wait_s)
        except Exception as exc:
            log.warning("ClickHouse not reachable at start (%s); rows wait in the journal", exc)

    async def write(self, rows: Sequence[LogRow], metrics: Sequence[MetricRow] = (), *, transaction: str | None = None) -> None:
        """Return once the rows are in the journal (fsynced); raises if they could not be.

        With ``transaction``, the rows are held back from ClickHouse until ``settle``."""
        n = len(rows) + len(metrics)
        if n == 0:
            return
        if self._stopping or self._flusher is None:
            raise SinkStopped("ClickHouseSink is not running")
        await self._wait_for_space(n)
        await self._journaled(_Write(rows, metrics, transaction, asyncio.get_running_loop().create_future()))

    async def settle(self, transaction: str, committed: bool) -> None:
        """``transaction``'s rows go to ClickHouse (committed) or nowhere (aborted); durable on return."""
        if self._stopping or self._flusher is None:
            raise SinkStopped("ClickHouseSink is not running")
        await self._journaled(_Settle(transaction, committed, asyncio.get_running_loop().create_future()))

    async def _journaled(self, entry: _Write | _Settle) -> None:
        self._pending.append(entry)
        async with self._journal_lock:
            if not entry.future.done():  # else an earlier writer committed this entry in its group
                await self._commit_pending()
        await entry.future

    async def stop(self) -> None:
        if self._flusher is None:
            return
        self._stopping = True
        self._deadline = time.monotonic() + self.stop_timeout_s
        self._wake.set()
        await self._notify_space()  # writers waiting for room give up waiting
        await self._flusher
        async with self._journal_lock:
            await self._in_journal_thread(self._journal.close)
        left, segments = self._journal.disk_usage()
        if self._slot is not None:
            self._slot.release()  # another sink may now claim this slot and replay what is left
        if segments:
            log.warning("ClickHouse sink stopped with %d journal segment(s) (%d bytes) to replay", segments, left)
        self._journal_pool.shutdown(wait=True)
        self._replay_pool.shutdown(wait=True)
        self._insert_pool.submit(self._drop_client)
        self._insert_pool.shutdown(wait=True)
        self._flusher = None

    def stats(self) -> dict[str, Any]:
        journal_bytes, journal_segments = self._journal.disk_usage() if self._journal.directory.exists() else (0, 0)
        inflight_rows = self._inflight.memory_rows if self._inflight is not None else 0
        return {
            "rows_written": self.rows_written,
            "metrics_written": self.metrics_written,
            "rows_inserted": self.rows_inserted,
            "metrics_inserted": self.metrics_inserted,
            "buffered_rows": self._memory - inflight_rows,
            "inflight_rows": inflight_rows,
            "flushes": self.flushes,
            "flush_rows_avg": self.flush_rows_total / self.flushes if self.flushes else 0.0,
            "flush_rows_max": self.flush_rows_max,
            "flush_seconds_avg": self.flush_seconds_total / self.flushes if self.flushes else 0.0,
            "flush_seconds_max": self.flush_seconds_max,
            "failures": self.failures,
            "failing": self._failing,
            "last_error": self.last_error,
            "spilled": bool(self._disk or self._parked or (self._active is not None and self._active.batches is None)),
            "spills": self.spills,
            "disk_blocks": len(self._disk) + len(self._parked),
            "replayed_rows": self.replayed_rows,
            "held_transactions": sum(1 for t in self._holding if t not in self._settled),
            "held_blocks": sum(1 for b in self._ready if not self._decided(b)) + len(self._parked),
            "dropped_rows": self.dropped_rows,
            "journal_bytes": journal_bytes,
            "journal_segments": journal_segments,
            "journal_bytes_written": self.journal_bytes_written,
            "journal_fsyncs": self._journal.fsyncs,
            "journal_torn_lines": self._journal.torn_lines,
            "journal_unreadable_records": self._journal.unreadable_records,
            "write_wait_seconds": self.write_wait_seconds,
        }

    async def run_query(self, fn: Callable[[Client], T]) -> T:
        """Run ``fn`` with the sink's own client in the sink's insert thread.

        chDB lets one process open its data directory once, so while a worker runs, its sink's
        client is the only way in: the worker's HTTP API serves analytics through here. Queries
        queue behind an insert in progress (one thread), never beside it.
        """
        if self._stopping or self._flusher is None:
            raise SinkStopped("ClickHouseSink is not running")

        def call() -> T:
            return fn(self._open_client())

        return await asyncio.get_running_loop().run_in_executor(self._insert_pool, call)

    # --- write path -----------------------------------------------------------------------

    def _has_room(self, n: int) -> bool:
        return self._memory == 0 or self._memory + n <= self.max_buffer_rows

    async def _wait_for_space(self, n: int) -> None:
        if self._failing or self._has_room(n):
            return
        started = time.perf_counter()
        self._wake.set()
        async with self._space:
            await self._space.wait_for(lambda: self._failing or self._has_room(n) or self._stopping)
        self.write_wait_seconds += time.perf_counter() - started

    async def _commit_pending(self) -> None:
        """Group commit (journal lock held): every pending entry in one write + one fsync."""
        group, self._pending = self._pending, []
        try:
            appended = await self._in_journal_thread(self._journal.append, [entry.encode() for entry in group])
        except BaseException as exc:
            for entry in group:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self.journal_bytes_written += appended.bytes
        block = self._active
        if block is None or block.path != appended.path:  # the first append to a new segment
            block = self._active = _Block(appended.path, appended.segment_id, [])
        incoming = sum(len(e.rows) + len(e.metrics) for e in group if isinstance(e, _Write))
        if block.batches is not None and self._failing and not self._has_room(incoming):
            self._spill()
        for entry in group:
            if isinstance(entry, _Settle):
                if entry.transaction in self._holding:
                    self._settled[entry.transaction] = entry.committed
                    self._unpark()
                    self._wake.set()
            else:
                self._add(block, entry)
            entry.future.set_result(None)
        if appended.sealed:  # the segment's size limit; otherwise the flusher seals when it is free
            await self._seal_active()
        if block.written >= self.flush_rows or self._stopping:
            self._wake.set()

    def _add(self, block: _Block, write: _Write) -> None:
        n = len(write.rows) + len(write.metrics)
        self.rows_written += len(write.rows)
        self.metrics_written += len(write.metrics)
        block.written += n
        if block.batches is not None:
            block.batches.append(Batch(list(write.rows), list(write.metrics), write.transaction))
            block.memory_rows += n
            self._memory += n
        if write.transaction is not None and write.transaction not in block.transactions:
            block.transactions.add(write.transaction)
            self._holding[write.transaction] = self._holding.get(write.transaction, 0) + 1

    async def _seal_active(self) -> None:
        """The active segment becomes a block in line for insert (journal lock held)."""
        block, self._active = self._active, None
        if block is None:
            return
        if self._journal.active_path == block.path:
            await self._in_journal_thread(self._journal.seal)
        (self._ready if block.batches is not None else self._disk).append(block)
        self._wake.set()

    def _spill(self, why: str = "ClickHouse failing") -> None:
        """Keep the rows of the blocks waiting in memory on disk only; the flusher replays them.

        For when ClickHouse is failing and memory is full. The block being inserted keeps its
        rows; the active segment takes further rows on disk only until it is sealed."""
        blocks = [*self._ready, *([self._active] if self._active is not None else [])]
        dropped = sum(b.memory_rows for b in blocks)
        log.warning("%s: spilling %d buffered rows to the journal only", why, dropped)
        for b in blocks:
            self._memory -= b.memory_rows
            b.batches, b.memory_rows = None, 0
        self._disk.extend(self._ready)
        self._ready = []
        self.spills += 1

    # --- flusher --------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            if not self._work_due():
                if self._stopping and not self._pending:
                    return  # what is left (held or undecided) stays in the journal
                try:  # also while stopping: a write still being journaled needs the loop to run
                    await asyncio.wait_for(self._wake.wait(), self._idle_wait())
                except TimeoutError:
                    pass
            self._wake.clear()
            try:
                if time.monotonic() >= self._next_adoption and not self._stopping:
                    self._next_adoption = time.monotonic() + self.adopt_interval_s
                    await self._adopt_orphans()
                if self._undeleted:
                    await self._retry_deletes()
                await self._seal_if_due()
                block = self._next_block()
                if block is not None:
                    await self._flush_block(block)
            except _GaveUp:
                log.warning("ClickHouse sink gave up at stop: %s", self.last_error)
                return
            except Exception:  # the journal thread failed; keep serving, the rows stay on disk
                log.exception("ClickHouse sink flush failed")
                if self._stopping and time.monotonic() >= self._deadline:
                    return
                await asyncio.sleep(self.retry_max_s)

    def _work_due(self) -> bool:
        """A block to insert now, or the active segment to seal for one (full, or stopping)."""
        active = self._active
        return (bool(self._disk) or any(self._decided(b) for b in self._ready)
                or (active is not None and (self._stopping or active.written >= self.flush_rows)))  # fmt: skip

    def _idle_wait(self) -> float:
        if self._active is None:
            return self.flush_interval_s
        return max(0.001, self._active.opened_at + self.flush_interval_s - time.monotonic())

    async def _seal_if_due(self) -> None:
        """Seal the active segment when the flusher is free to insert it: by size, age or stop.

        Sealing here rather than in ``write`` lets a block grow while the previous insert runs,
        so inserts get bigger (and fewer) when ClickHouse is slower, as a buffer flush did."""
        block = self._active
        if block is None or (self._disk and self._disk_turn):  # a replayed block goes first
            return
        if not (self._stopping or block.written >= self.flush_rows or time.monotonic() - block.opened_at >= self.flush_interval_s):
            return
        async with self._journal_lock:
            if self._active is block:
                await self._seal_active()

    def _decided(self, block: _Block) -> bool:
        return all(t in self._settled for t in block.transactions)

    def _next_block(self) -> _Block | None:
        """The next block to insert: memory and disk take turns, so neither waits for the other."""
        memory = next((b for b in self._ready if self._decided(b)), None)
        disk = self._disk[0] if self._disk else None
        if memory is not None and (disk is None or not self._disk_turn):
            self._ready.remove(memory)
            self._disk_turn = True
            return memory
        if disk is not None:
            self._disk.popleft()
            self._disk_turn = False
            return disk
        return None

    def _unpark(self) -> None:
        if self._parked:
            self._disk.extend(self._parked)
            self._parked = []
            self._wake.set()

    async def _flush_block(self, block: _Block) -> None:
        self._inflight = block
        try:
            if block.batches is None:
                selected = await self._read_back(block)
                if selected is None:  # our own transactions, not settled yet: wait for settle()
                    self._parked.append(block)
                    return
                rows, metrics, token, dropped = selected
            else:
                rows, metrics, token, dropped = self._select(block.id, block.batches, self._settled, None)
            if rows or metrics:
                await self._insert(rows, metrics, token)
            if block.batches is None:
                self.replayed_rows += len(rows)
            self.dropped_rows += dropped
        except BaseException:
            # Not inserted: the block goes back in line (a disk block behind the others, so one
            # unreadable segment does not stop the rest).
            if block.batches is not None:
                self._ready.insert(0, block)
            else:
                self._disk.append(block)
            raise
        finally:
            self._inflight = None
        self._release(block)
        try:
            await self._in_journal_thread(self._journal.delete, [block.path])
        except OSError as exc:  # inserted: never re-sent by this process; a next run's replay is dropped by token
            log.warning("could not delete inserted journal segment %s (%s); retrying", block.path.name, exc)
            self._undeleted.append(block.path)
        await self._notify_space()

    def _release(self, block: _Block) -> None:
        self._memory -= block.memory_rows
        block.memory_rows = 0
        for t in block.transactions:
            left = self._holding.get(t, 0) - 1
            if left > 0:
                self._holding[t] = left
            else:
                self._holding.pop(t, None)
                self._settled.pop(t, None)

    async def _retry_deletes(self) -> None:
        """Delete inserted segments whose delete failed; those that still fail wait for the next turn."""
        paths, self._undeleted = self._undeleted, []
        for path in paths:
            try:
                await self._in_journal_thread(self._journal.delete, [path])
            except OSError:
                self._undeleted.append(path)

    async def _read_back(self, block: _Block) -> tuple[list[LogRow], list[MetricRow], str, int] | None:
        """Read a disk block; None if it holds our own transactions not settled yet."""
        segment = await self._in_replay_thread(read_segment, block.path)
        block.id = segment.id
        self._journal.torn_lines += segment.torn
        if segment.unreadable:
            kept = await self._in_journal_thread(self._journal.set_aside, segment.id, segment.unreadable)
            log.error("journal segment %s holds %d record(s) this build cannot read: kept in %s",
                      block.path.name, len(segment.unreadable), kept)  # fmt: skip
        settled = {t: True for t in segment.committed} | {t: False for t in segment.aborted}
        undecided = {b.transaction for b in segment.batches if b.transaction is not None} - settled.keys()
        own = {t for t in undecided if t in self._holding}
        if own - self._settled.keys():
            return None
        settled.update({t: self._settled[t] for t in own})
        undecided -= own
        if undecided:  # a marker may sit in a later segment of the same journal
            others = [p for p in self._journal.sealed_segments() if p != block.path]
            settled.update(await self._in_replay_thread(find_settlements, others, undecided))
            undecided -= settled.keys()
        keep: set[LogRow] | None = None
        if undecided and self.replay_filter is not None:
            candidates = [r for b in segment.batches if b.transaction in undecided for r in b.rows]
            keep = set(await self.replay_filter(candidates))
            log.info("replay filter kept %d of %d undecided row(s) of segment %s", len(keep), len(candidates), segment.id)
        return self._select(segment.id, segment.batches, settled, keep)

    def _select(
        self, segment_id: str, batches: Sequence[Batch], settled: Mapping[str, bool], keep: set[LogRow] | None
    ) -> tuple[list[LogRow], list[MetricRow], str, int]:
        """The rows of a block that may go to ClickHouse, the block's token, how many rows were dropped.

        Held rows go if their transaction committed; undecided ones (no marker: a crash) if the
        replay filter keeps them, or all of them without a filter. A batch's metrics go with its
        rows. The token is the segment id, plus a digest of what was kept when anything was not."""
        rows: list[LogRow] = []
        metrics: list[MetricRow] = []
        cuts: list[str] = []
        dropped = 0
        for i, batch in enumerate(batches):
            t = batch.transaction
            aborted = t is not None and settled.get(t) is False
            if t is None or settled.get(t) is True or (keep is None and not aborted):
                kept = batch.rows
            else:
                positions = [] if aborted else [j for j, r in enumerate(batch.rows) if r in keep]  # type: ignore[operator]
                kept = [batch.rows[j] for j in positions]
                if aborted or len(kept) < len(batch.rows):
                    cuts.append(f"{i}:{','.join(map(str, positions))}")
                    dropped += len(batch.rows) - len(kept)
            rows.extend(kept)
            if not aborted and (kept or not batch.rows):
                metrics.extend(batch.metrics)
        if not cuts:
            return rows, metrics, segment_id, 0
        digest = hashlib.blake2b(";".join(cuts).encode(), digest_size=8).hexdigest()
        return rows, metrics, f"{segment_id}-{digest}", dropped

    async def _insert(self, rows: list[LogRow], metrics: list[MetricRow], token: str) -> None:
        """Insert with retries (exponential backoff + jitter) until it works or stop's deadline."""
        done: set[str] = set()  # tables already inserted: a retry does not resend them
        loop = asyncio.get_running_loop()
        retrying = AsyncRetrying(
            wait=wait_exponential_jitter(multiplier=self.retry_initial_s, max=self.retry_max_s, jitter=self.retry_initial_s),
            stop=self._should_give_up,
            retry=retry_if_exception_type(Exception),
            before_sleep=self._on_insert_failure,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    started = time.perf_counter()
                    await loop.run_in_executor(self._insert_pool, self._insert_sync, rows, metrics, token, done)
                    elapsed = time.perf_counter() - started
        except Exception as exc:
            self._record_failure(exc)
            raise _GaveUp from exc
        self._failing = False
        self.flushes += 1
        size = len(rows) + len(metrics)
        self.flush_rows_total += size
        self.flush_rows_max = max(self.flush_rows_max, size)
        self.flush_seconds_total += elapsed
        self.flush_seconds_max = max(self.flush_seconds_max, elapsed)
        self.rows_inserted += len(rows)
        self.metrics_inserted += len(metrics)

    def _should_give_up(self, state: RetryCallState) -> bool:
        return self._stopping and time.monotonic() >= self._deadline

    async def _on_insert_failure(self, state: RetryCallState) -> None:
        if state.outcome is not None and (exc := state.outcome.exception()) is not None:
            self._record_failure(exc)
        await self._notify_space()  # blocked writers now spill instead of waiting

    def _record_failure(self, exc: BaseException) -> None:
        self.failures += 1
        self._failing = True
        self.last_error = self.mask_error(f"{type(exc).__name__}: {exc}")[:500]
        log.warning("ClickHouse insert failed (%d so far): %s", self.failures, self.last_error)

    def _insert_sync(self, rows: list[LogRow], metrics: list[MetricRow], token: str, done: set[str]) -> None:
        # The same token on every table: each table remembers its own. The views below the log
        # table (proposition_log, the rollup) are only deduplicated if the insert asks for it.
        settings = {"insert_deduplication_token": token, "deduplicate_blocks_in_dependent_materialized_views": 1}
        tables: list[tuple[str, Sequence[tuple[Any, ...]], tuple[str, ...], tuple[str, ...]]] = []
        if rows:
            tables.append((self.log_table, rows, LOG_COLUMNS, LOG_TYPES))
        if metrics:
            tables.append((self.metric_table, metrics, METRIC_COLUMNS, METRIC_TYPES))
        try:
            client = self._open_client()
            for table, data, names, types in tables:
                if table in done:
                    continue
                # Native format, column-oriented, types given: no DESCRIBE first, and no pyarrow
                # (whose conversion imports pandas: +85 MB RSS in a worker that writes over HTTP).
                client.insert(table, list(zip(*data)), column_names=names, column_type_names=types,
                              column_oriented=True, settings=settings)  # fmt: skip
                done.add(table)
        except Exception:
            self._drop_client()  # reconnect on the next attempt
            raise

    def _open_client(self) -> Client:
        """The client, opened on first use; call only in the insert thread."""
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a broken connection may fail too; nothing to keep
                log.debug("closing ClickHouse client failed", exc_info=True)

    async def _notify_space(self) -> None:
        async with self._space:
            self._space.notify_all()

    async def _in_journal_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._journal_pool, fn, *args)

    async def _in_replay_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._replay_pool, fn, *args)
