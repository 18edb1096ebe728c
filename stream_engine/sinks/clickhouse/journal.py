"""Append-only on-disk journal: what the sink has accepted but ClickHouse may not have yet.

Segments are files ``seg-<n>.jsonl`` in one directory, one JSON record per line (orjson, rows as
arrays in :class:`LogRow` / :class:`MetricRow` field order). Every record carries its format
version ``v``; format 2 has:

* a header, the first record of a segment: ``{"v": 2, "seg": "<id>"}``. The id names the
  segment's insert block in ClickHouse (its deduplication token), so it survives the renames of
  an adoption;
* write batches: ``{"v": 2, "r": [log rows], "m": [metric rows]}``, plus ``"t": "<transaction>"``
  when the rows are held until that transaction is settled;
* settlement markers: ``{"v": 2, "c": [transactions committed]}`` / ``{"v": 2, "a": [aborted]}``.

Records without ``v`` are format 1 (before versions): ``{"r", "m"}`` with 19-field log rows; they
are read as format 2 rows with the fields added since at their defaults. A record of a version
this build does not know, or a complete line that does not decode, is never dropped: the reader
returns it as unreadable and the sink moves it to ``unreadable-<segment id>.jsonl`` for an
operator (or a newer build) before the segment goes.

``append`` writes any number of records and fsyncs once (group commit). If the write or the fsync
fails (ENOSPC, EIO, a short write), the segment is truncated back to its last good record before
the error is raised; if even that fails, the next ``append`` retries the truncation first and
refuses to write until it succeeds. So a failed write leaves no fragment for the next record to be
glued to, and no unacknowledged record to be replayed beside its retry. Only a crash in the middle
of a write can leave a torn last line (one without a newline): that write never returned, so the
reader skips it and counts it.

Not thread-safe, except :func:`read_segment` (a pure read of a sealed file): the sink calls the
other methods from one dedicated thread.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from stream_engine.sinks.clickhouse.rows import LogRow, MetricRow

SEGMENT_GLOB = "seg-*.jsonl"
UNREADABLE_PREFIX = "unreadable-"
VERSION = 2
_V1_API_PARTITION = 65535  # api/handlers.API_PARTITION: how a format-1 row says it came from the API


def segment_number(path: Path) -> int:
    return int(path.stem.removeprefix("seg-"))


def encode_batch(rows: Sequence[LogRow], metrics: Sequence[MetricRow], transaction: str | None = None) -> bytes:
    # NamedTuples are tuple subclasses, which orjson hands to ``default``.
    record: dict[str, Any] = {"v": VERSION, "r": rows, "m": metrics}
    if transaction is not None:
        record["t"] = transaction
    return orjson.dumps(record, default=tuple) + b"\n"


def encode_settlement(committed: Sequence[str] = (), aborted: Sequence[str] = ()) -> bytes:
    record: dict[str, Any] = {"v": VERSION}
    if committed:
        record["c"] = list(committed)
    if aborted:
        record["a"] = list(aborted)
    return orjson.dumps(record) + b"\n"


def _header(segment_id: str) -> bytes:
    return orjson.dumps({"v": VERSION, "seg": segment_id}) + b"\n"


class Batch(NamedTuple):
    rows: list[LogRow]
    metrics: list[MetricRow]
    transaction: str | None = None


@dataclass
class Segment:
    """A sealed segment as read back: its id, its batches and settlements, what could not be read."""

    id: str
    batches: list[Batch] = field(default_factory=list)
    committed: set[str] = field(default_factory=set)
    aborted: set[str] = field(default_factory=set)
    unreadable: list[bytes] = field(default_factory=list)
    torn: int = 0


class Appended(NamedTuple):
    path: Path  # the segment the records went to
    segment_id: str
    bytes: int
    sealed: bool  # the segment reached its size limit and was sealed after this append


def _v1_log_row(r: list[Any]) -> LogRow:
    return LogRow(*r, topic="", origin="api" if r[13] == _V1_API_PARTITION else "stream", attempt="")


def read_segment(path: Path) -> Segment:
    """Every record of a sealed segment (thread-safe: touches nothing but the file)."""
    segment = Segment(id="")
    v1_hash = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                segment.torn += 1  # a crash mid-write: that write never returned
                continue
            try:
                record = orjson.loads(line)
                version = record.get("v", 1)
                if version == 1:
                    v1_hash.update(line)
                    segment.batches.append(Batch([_v1_log_row(r) for r in record["r"]], [MetricRow(*m) for m in record["m"]]))
                elif version != VERSION:
                    segment.unreadable.append(line)
                elif "seg" in record:
                    segment.id = str(record["seg"])
                elif "r" in record:
                    rows = [LogRow(*r) for r in record["r"]]
                    metrics = [MetricRow(*m) for m in record["m"]]
                    segment.batches.append(Batch(rows, metrics, record.get("t")))
                else:
                    segment.committed.update(record.get("c", ()))
                    segment.aborted.update(record.get("a", ()))
            except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
                segment.unreadable.append(line)
    if not segment.id:
        # Format 1 had no header: the id is a hash of the content, which never changes once sealed.
        segment.id = f"v1-{v1_hash.hexdigest()}"
    return segment


def find_settlements(paths: Sequence[Path], transactions: set[str]) -> dict[str, bool]:
    """Which of ``transactions`` the segments at ``paths`` settle (True = committed)."""
    found: dict[str, bool] = {}
    for path in paths:
        try:
            with open(path, "rb") as f:
                for line in f:
                    if line.startswith((b'{"v":2,"c"', b'{"v":2,"a"')) and line.endswith(b"\n"):
                        record = orjson.loads(line)
                        found.update({t: True for t in record.get("c", ()) if t in transactions})
                        found.update({t: False for t in record.get("a", ()) if t in transactions})
        except (FileNotFoundError, orjson.JSONDecodeError):
            continue
    return found


class Journal:
    def __init__(self, directory: Path, *, fsync: bool = True, segment_max_bytes: int = 64 << 20) -> None:
        self.directory = directory
        self.fsync = fsync
        self.segment_max_bytes = segment_max_bytes
        self._active: Any = None  # open binary file of the active segment, opened lazily
        self._active_path: Path | None = None
        self._active_id = ""
        self._active_bytes = 0  # bytes of whole records in the active segment: where a failed write truncates to
        self._must_truncate = False  # a failed write could not be cut off yet
        self._next_number = 0
        self.fsyncs = 0
        self.torn_lines = 0
        self.unreadable_records = 0

    @property
    def active_path(self) -> Path | None:
        return self._active_path

    def open(self) -> list[Path]:
        """Prepare the directory; returns segments left by an earlier run (all sealed), oldest first."""
        self.directory.mkdir(parents=True, exist_ok=True)
        existing = self.sealed_segments()
        self._next_number = segment_number(existing[-1]) + 1 if existing else 0
        return existing

    def sealed_segments(self) -> list[Path]:
        paths = sorted(self.directory.glob(SEGMENT_GLOB), key=segment_number)
        return [p for p in paths if p != self._active_path]

    def append(self, payloads: Sequence[bytes]) -> Appended:
        """Write the encoded records and make them durable, or raise having written nothing."""
        if self._active is None:
            self._active_path = self.directory / f"seg-{self._next_number:012d}.jsonl"
            self._next_number += 1
            self._active = open(self._active_path, "ab", buffering=0)  # noqa: SIM115 - kept open across calls
            self._active_id = uuid.uuid4().hex
            self._active_bytes = 0
            if self.fsync:  # the new file's directory entry must survive a crash too
                self._fsync_directory()
        if self._must_truncate:
            self._truncate()  # raises while the disk still refuses: nothing is written behind a fragment
        data = b"".join(payloads) if self._active_bytes else _header(self._active_id) + b"".join(payloads)
        try:
            view = memoryview(data)
            while view:
                written = self._active.write(view)
                view = view[written:]
            if self.fsync:
                os.fsync(self._active.fileno())
                self.fsyncs += 1
        except BaseException:
            self._must_truncate = True
            try:
                self._truncate()
            except OSError:
                pass  # retried before the next append
            raise
        self._active_bytes += len(data)
        path, segment_id = self._active_path, self._active_id
        assert path is not None
        sealed = self._active_bytes >= self.segment_max_bytes
        if sealed:
            self.seal()
        return Appended(path, segment_id, len(data), sealed)

    def _truncate(self) -> None:
        os.ftruncate(self._active.fileno(), self._active_bytes)
        if self.fsync:
            os.fsync(self._active.fileno())
        self._must_truncate = False

    def seal(self) -> Path | None:
        """Close the active segment; returns it (None if there was none)."""
        sealed = self._active_path
        if self._active is not None:
            if self._must_truncate:
                try:
                    self._truncate()
                except OSError:
                    pass  # a fragment without a newline stays: read as a torn line, never glued to a record
            self._active.close()
            self._active = None
            self._active_path = None
        return sealed

    def _fsync_directory(self) -> None:
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def read(self, path: Path) -> Iterator[tuple[list[LogRow], list[MetricRow]]]:
        """The batches of a sealed segment (rows and metrics), counting torn and unreadable lines."""
        segment = read_segment(path)
        self.torn_lines += segment.torn
        self.unreadable_records += len(segment.unreadable)
        for batch in segment.batches:
            yield batch.rows, batch.metrics

    def adopt(self, paths: Sequence[Path]) -> int:
        """Move other journals' sealed segments in, numbered after ours (call after ``open``).

        Each rename is atomic (same filesystem); if one fails, the ones before it are ours already
        and the rest stay where they were: the caller rescans its directory either way."""
        moved = 0
        try:
            for path in paths:
                path.rename(self.directory / f"seg-{self._next_number:012d}.jsonl")
                self._next_number += 1
                moved += 1
        finally:
            if moved and self.fsync:
                self._fsync_directory()  # the renames survive a crash right after
        return moved

    def set_aside(self, segment_id: str, lines: Sequence[bytes]) -> Path:
        """Keep records this build cannot read in ``unreadable-<id>.jsonl`` (appended, durable)."""
        path = self.directory / f"{UNREADABLE_PREFIX}{segment_id}.jsonl"
        with open(path, "ab") as f:
            f.write(b"".join(lines))
            f.flush()
            os.fsync(f.fileno())
        self._fsync_directory()
        self.unreadable_records += len(lines)
        return path

    def delete(self, paths: Sequence[Path]) -> None:
        for path in paths:
            path.unlink(missing_ok=True)

    def disk_usage(self) -> tuple[int, int]:
        """(bytes, segments) on disk, the active segment included."""
        paths = list(self.directory.glob(SEGMENT_GLOB))
        total = 0
        for p in paths:
            try:
                total += p.stat().st_size
            except FileNotFoundError:
                pass
        return total, len(paths)

    def close(self) -> None:
        self.seal()
