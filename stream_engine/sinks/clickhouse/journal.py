"""Append-only on-disk journal: what the sink has accepted but ClickHouse may not have yet.

Segments are files ``seg-<n>.jsonl`` in one directory; each line is one write batch
``{"r": [log rows], "m": [metric rows]}`` (orjson, rows as arrays). ``append`` writes any number
of batches and fsyncs once (group commit). ``seal`` closes the active segment so that the sink
can delete it once its rows are in ClickHouse. A crash can leave a torn last line: reading skips
lines that do not decode and counts them.

Not thread-safe: the sink calls every method from one dedicated thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from stream_engine.sinks.clickhouse.rows import LogRow, MetricRow

SEGMENT_GLOB = "seg-*.jsonl"


def segment_number(path: Path) -> int:
    return int(path.stem.removeprefix("seg-"))


def encode_batch(rows: Sequence[LogRow], metrics: Sequence[MetricRow]) -> bytes:
    # NamedTuples are tuple subclasses, which orjson hands to ``default``.
    return orjson.dumps({"r": rows, "m": metrics}, default=tuple) + b"\n"


class Journal:
    def __init__(self, directory: Path, *, fsync: bool = True, segment_max_bytes: int = 64 << 20) -> None:
        self.directory = directory
        self.fsync = fsync
        self.segment_max_bytes = segment_max_bytes
        self._active: Any = None  # open binary file of the active segment, opened lazily
        self._active_path: Path | None = None
        self._active_bytes = 0
        self._next_number = 0
        self.fsyncs = 0
        self.torn_lines = 0

    def open(self) -> list[Path]:
        """Prepare the directory; returns segments left by an earlier run (all sealed), oldest first."""
        self.directory.mkdir(parents=True, exist_ok=True)
        existing = self.sealed_segments()
        self._next_number = segment_number(existing[-1]) + 1 if existing else 0
        return existing

    def sealed_segments(self) -> list[Path]:
        paths = sorted(self.directory.glob(SEGMENT_GLOB), key=segment_number)
        return [p for p in paths if p != self._active_path]

    def append(self, payloads: Sequence[bytes]) -> int:
        """Write the encoded batches and make them durable; returns bytes written."""
        if self._active is None:
            self._active_path = self.directory / f"seg-{self._next_number:012d}.jsonl"
            self._next_number += 1
            self._active = open(self._active_path, "ab", buffering=0)  # noqa: SIM115 - kept open across calls
            self._active_bytes = 0
            if self.fsync:  # the new file's directory entry must survive a crash too
                self._fsync_directory()
        data = b"".join(payloads)
        view = memoryview(data)
        while view:
            written = self._active.write(view)
            view = view[written:]
        if self.fsync:
            os.fsync(self._active.fileno())
            self.fsyncs += 1
        self._active_bytes += len(data)
        if self._active_bytes >= self.segment_max_bytes:
            self.seal()
        return len(data)

    def seal(self) -> list[Path]:
        """Close the active segment; returns every sealed segment, oldest first."""
        if self._active is not None:
            self._active.close()
            self._active = None
            self._active_path = None
        return self.sealed_segments()

    def _fsync_directory(self) -> None:
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def read(self, path: Path) -> Iterator[tuple[list[LogRow], list[MetricRow]]]:
        with open(path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    self.torn_lines += 1  # a crash mid-write: that batch was never acknowledged
                    continue
                try:
                    batch = orjson.loads(line)
                    rows = [LogRow(*r) for r in batch["r"]]
                    metrics = [MetricRow(*m) for m in batch["m"]]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    self.torn_lines += 1
                    continue
                yield rows, metrics

    def adopt(self, paths: Sequence[Path]) -> int:
        """Move other journals' sealed segments in, numbered after ours (call after ``open``)."""
        for path in paths:
            path.rename(self.directory / f"seg-{self._next_number:012d}.jsonl")  # same filesystem: atomic
            self._next_number += 1
        if paths:
            self._fsync_directory()  # the renames survive a crash right after
        return len(paths)

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
