"""The ClickHouse sink: journal first, then batched columnar inserts in the background.

``write`` appends the rows to the on-disk journal (one fsync per group of concurrent writes)
and returns: the caller may commit its Kafka offsets then. A flusher task sends the buffered
rows, by size (``flush_rows``) or time (``flush_interval_s``), as ONE columnar (Native) insert per table,
running the sync client in a dedicated thread so the event loop never blocks; once a flush is
in ClickHouse its journal segments are deleted. Duplicates (a retried insert, a replayed
segment) collapse in the ReplacingMergeTree tables.

Memory is bounded: rows buffered plus rows being inserted stay under ``max_buffer_rows``;
``write`` waits while ClickHouse is merely slow (backpressure). While inserts are failing,
``write`` does not wait: rows beyond the bound are kept in the journal only ("spilled", bounded
by disk) and the flusher replays the journal segments from disk once ClickHouse answers again.
Segments left by an earlier process are replayed the same way at start: the journal directory
is a root shared by workers, each sink claiming its own locked ``slot-<n>`` and adopting the
segments of slots no live process holds (``slots.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from stream_engine.masking import Masker, mask_url_passwords
from stream_engine.sinks.clickhouse import slots
from stream_engine.sinks.clickhouse.journal import Journal, encode_batch
from stream_engine.sinks.clickhouse.rows import LOG_COLUMNS, LOG_TYPES, METRIC_COLUMNS, METRIC_TYPES, LogRow, MetricRow
from stream_engine.sinks.clickhouse.slots import Slot

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from stream_engine.settings import Settings

log = logging.getLogger(__name__)

ClientFactory = Callable[[], "Client"]
T = TypeVar("T")


class SinkStopped(RuntimeError):
    """write() after stop(): an infrastructure state (shutdown), never a fault of the rows."""


class _GaveUp(Exception):
    """Stopping and the deadline passed: what is left stays in the journal for the next start."""


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
        log_table: str = "proposition_log",
        metric_table: str = "latency_metrics",
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

        self._client: Client | None = None
        self._journal_pool = ThreadPoolExecutor(1, thread_name_prefix="sink-journal")
        self._insert_pool = ThreadPoolExecutor(1, thread_name_prefix="sink-insert")
        self._journal_lock = asyncio.Lock()  # orders appends against sealing
        self._space = asyncio.Condition()  # backpressure waiters
        self._wake = asyncio.Event()
        self._pending: list[tuple[Sequence[LogRow], Sequence[MetricRow], asyncio.Future[None]]] = []
        self._buffer_rows: list[LogRow] = []
        self._buffer_metrics: list[MetricRow] = []
        self._inflight = 0
        self._spilled = False  # journal holds rows that memory does not: replay from disk
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
        left_over = await self._in_journal_thread(self._open_journal)
        if left_over:
            log.info("replaying %d journal segment(s) left by an earlier run", len(left_over))
            self._spilled = True
        await self._connect_early()
        self._flusher = asyncio.create_task(self._flush_loop(), name="clickhouse-sink-flusher")

    def _open_journal(self) -> list[Path]:
        """Claim a journal slot, take over free slots' segments, return what is left to replay."""
        self._slot = slots.claim(self._journal_root)
        self._journal.directory = self._slot.directory
        self._journal.open()
        self._adopt_orphans_sync()
        return self._journal.sealed_segments()

    def _adopt_orphans_sync(self) -> int:
        assert self._slot is not None
        adopted = slots.adopt_orphans(self._journal_root, self._slot, self._journal.adopt)
        if adopted:
            log.info("adopted %d journal segment(s) left by stopped workers", adopted)
        return adopted

    async def _adopt_orphans(self) -> None:
        """Segments of a worker that stopped while we run (a scale-down): replay them too."""
        async with self._journal_lock:
            if await self._in_journal_thread(self._adopt_orphans_sync):
                self._spill("adopted segments")  # replay from disk, ours and theirs, in one pass

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

    async def write(self, rows: Sequence[LogRow], metrics: Sequence[MetricRow] = ()) -> None:
        """Return once the rows are in the journal (fsynced); raises if they could not be."""
        n = len(rows) + len(metrics)
        if n == 0:
            return
        if self._stopping or self._flusher is None:
            raise SinkStopped("ClickHouseSink is not running")
        await self._wait_for_space(n)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((rows, metrics, future))
        async with self._journal_lock:
            if not future.done():  # else an earlier writer committed this batch in its group
                await self._commit_pending()
        await future

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
        self._insert_pool.submit(self._drop_client)
        self._insert_pool.shutdown(wait=True)
        self._flusher = None

    def stats(self) -> dict[str, Any]:
        journal_bytes, journal_segments = self._journal.disk_usage() if self._journal.directory.exists() else (0, 0)
        return {
            "rows_written": self.rows_written,
            "metrics_written": self.metrics_written,
            "rows_inserted": self.rows_inserted,
            "metrics_inserted": self.metrics_inserted,
            "buffered_rows": len(self._buffer_rows) + len(self._buffer_metrics),
            "inflight_rows": self._inflight,
            "flushes": self.flushes,
            "flush_rows_avg": self.flush_rows_total / self.flushes if self.flushes else 0.0,
            "flush_rows_max": self.flush_rows_max,
            "flush_seconds_avg": self.flush_seconds_total / self.flushes if self.flushes else 0.0,
            "flush_seconds_max": self.flush_seconds_max,
            "failures": self.failures,
            "failing": self._failing,
            "last_error": self.last_error,
            "spilled": self._spilled,
            "spills": self.spills,
            "replayed_rows": self.replayed_rows,
            "journal_bytes": journal_bytes,
            "journal_segments": journal_segments,
            "journal_bytes_written": self.journal_bytes_written,
            "journal_fsyncs": self._journal.fsyncs,
            "journal_torn_lines": self._journal.torn_lines,
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

    def _memory_rows(self) -> int:
        return len(self._buffer_rows) + len(self._buffer_metrics) + self._inflight

    def _has_room(self, n: int) -> bool:
        used = self._memory_rows()
        return used == 0 or used + n <= self.max_buffer_rows

    async def _wait_for_space(self, n: int) -> None:
        if self._spilled or self._failing or self._has_room(n):
            return
        started = time.perf_counter()
        self._wake.set()
        async with self._space:
            await self._space.wait_for(lambda: self._spilled or self._failing or self._has_room(n) or self._stopping)
        self.write_wait_seconds += time.perf_counter() - started

    async def _commit_pending(self) -> None:
        """Group commit (journal lock held): every pending batch in one write + one fsync."""
        group, self._pending = self._pending, []
        try:
            written = await self._in_journal_thread(
                self._journal.append, [encode_batch(rows, metrics) for rows, metrics, _ in group]
            )
        except BaseException as exc:
            for _, _, future in group:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self.journal_bytes_written += written
        for rows, metrics, future in group:
            self.rows_written += len(rows)
            self.metrics_written += len(metrics)
            if not self._spilled and not self._has_room(len(rows) + len(metrics)) and self._failing:
                self._spill()
            if not self._spilled:
                self._buffer_rows.extend(rows)
                self._buffer_metrics.extend(metrics)
            future.set_result(None)
        if self._spilled or len(self._buffer_rows) + len(self._buffer_metrics) >= self.flush_rows:
            self._wake.set()

    def _spill(self, why: str = "ClickHouse failing") -> None:
        """Keep the unflushed rows in the journal only; the flusher replays them from disk.

        For when ClickHouse is failing and memory is full, and whenever the journal holds rows
        that memory does not (a failed replay, adopted segments)."""
        dropped = len(self._buffer_rows) + len(self._buffer_metrics)
        log.warning("%s: spilling %d buffered rows to the journal only", why, dropped)
        self._buffer_rows, self._buffer_metrics = [], []
        self._spilled = True
        self.spills += 1

    # --- flusher --------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            if not self._flush_due():
                try:
                    await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
                except TimeoutError:
                    pass
            self._wake.clear()
            try:
                if time.monotonic() >= self._next_adoption and not self._stopping:
                    self._next_adoption = time.monotonic() + self.adopt_interval_s
                    await self._adopt_orphans()
                if self._spilled:
                    await self._replay_journal()
                elif self._buffer_rows or self._buffer_metrics:
                    await self._flush_buffer()
            except _GaveUp:
                log.warning("ClickHouse sink gave up at stop: %s", self.last_error)
                return
            except Exception:  # the journal thread failed; keep serving, the rows stay on disk
                log.exception("ClickHouse sink flush failed")
                await asyncio.sleep(self.retry_max_s)
            if self._stopping and not self._flush_due() and not self._pending:
                return

    def _flush_due(self) -> bool:
        buffered = len(self._buffer_rows) + len(self._buffer_metrics)
        return self._spilled or buffered >= self.flush_rows or (self._stopping and buffered > 0)

    async def _flush_buffer(self) -> None:
        async with self._journal_lock:
            rows, metrics = self._buffer_rows, self._buffer_metrics
            self._buffer_rows, self._buffer_metrics = [], []
            self._inflight = len(rows) + len(metrics)
            sealed = await self._in_journal_thread(self._journal.seal)
        try:
            await self._insert(rows, metrics)
            await self._in_journal_thread(self._journal.delete, sealed)
        finally:
            self._inflight = 0
            await self._notify_space()

    async def _replay_journal(self) -> None:
        async with self._journal_lock:
            sealed = await self._in_journal_thread(self._journal.seal)
            self._spilled = False  # new writes go to memory (and a new segment) again
        try:
            await self._replay_segments(sealed)
        except Exception:
            # A segment could not be read or deleted: go back to journal-only, or the next buffer
            # flush would delete the segments not replayed yet along with its own.
            async with self._journal_lock:
                self._spill("journal replay failed")
            raise

    async def _replay_segments(self, sealed: list[Path]) -> None:
        for segment in sealed:
            batches = await self._in_journal_thread(lambda seg=segment: list(self._journal.read(seg)))
            rows: list[LogRow] = []
            metrics: list[MetricRow] = []
            for batch_rows, batch_metrics in batches:
                rows.extend(batch_rows)
                metrics.extend(batch_metrics)
                if len(rows) + len(metrics) >= self.flush_rows:
                    await self._insert(rows, metrics)
                    self.replayed_rows += len(rows)
                    rows, metrics = [], []
            if rows or metrics:
                await self._insert(rows, metrics)
                self.replayed_rows += len(rows)
            await self._in_journal_thread(self._journal.delete, [segment])

    async def _insert(self, rows: list[LogRow], metrics: list[MetricRow]) -> None:
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
                    await loop.run_in_executor(self._insert_pool, self._insert_sync, rows, metrics, done)
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

    def _insert_sync(self, rows: list[LogRow], metrics: list[MetricRow], done: set[str]) -> None:
        try:
            client = self._open_client()
            # Native format, column-oriented, types given: no DESCRIBE first, and no pyarrow
            # (whose conversion imports pandas: +85 MB RSS in a worker that writes over HTTP).
            if rows and "log" not in done:
                client.insert(self.log_table, list(zip(*rows)), column_names=LOG_COLUMNS,
                                    column_type_names=LOG_TYPES, column_oriented=True)  # fmt: skip
                done.add("log")
            if metrics and "metrics" not in done:
                client.insert(self.metric_table, list(zip(*metrics)), column_names=METRIC_COLUMNS,
                                    column_type_names=METRIC_TYPES, column_oriented=True)  # fmt: skip
                done.add("metrics")
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
