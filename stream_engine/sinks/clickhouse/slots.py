"""Journal slots: one journal directory per running sink under a shared root.

Workers can share one journal root (a volume mounted into every replica of ``--scale
worker=N``, or one data dir for several local workers writing to a ClickHouse server). Each
sink claims the first ``slot-<n>`` whose ``.lock`` it can ``flock``; the lock lives as long as
the process, so a crashed or recreated worker's slot becomes free and its unflushed segments
are replayed by whichever sink claims it next. A sink also adopts the segments of every other
free slot (and of the older single-directory layout in the root) at start and then
periodically, so they wait for no one after a scale-down.
"""

from __future__ import annotations

import fcntl
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stream_engine.sinks.clickhouse.journal import SEGMENT_GLOB, segment_number

LOCK_NAME = ".lock"
SLOT_PREFIX = "slot-"


@dataclass
class Slot:
    directory: Path
    _fd: int

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the flock
            self._fd = -1


def _try_lock(directory: Path) -> int | None:
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def claim(root: Path) -> Slot:
    """The first free slot under ``root`` (created if needed), locked until ``release``."""
    for n in itertools.count():
        directory = root / f"{SLOT_PREFIX}{n}"
        fd = _try_lock(directory)
        if fd is not None:
            return Slot(directory, fd)
    raise AssertionError("unreachable")


def adopt_orphans(root: Path, mine: Slot, adopt: Callable[[list[Path]], int]) -> int:
    """Hand the segments of free slots (and of the old flat layout) to ``adopt``; returns how many.

    ``adopt`` (``Journal.adopt`` of ``mine``) moves them while their slots stay locked here, so
    no sink starting meanwhile can claim a slot and replay the same segments.
    """
    sources: list[tuple[Path, int | None]] = [(root, None)]  # old layout: segments in the root itself
    for directory in sorted(root.glob(f"{SLOT_PREFIX}*")):
        if directory == mine.directory or not directory.is_dir():
            continue
        fd = _try_lock(directory)
        if fd is not None:
            sources.append((directory, fd))
    try:
        orphans = [seg for directory, _ in sources for seg in sorted(directory.glob(SEGMENT_GLOB), key=segment_number)]
        return adopt(orphans) if orphans else 0
    finally:
        for _, fd in sources:
            if fd is not None:
                os.close(fd)
