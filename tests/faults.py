"""Fault injection at the file layer, for the journal's unit tests.

* :class:`FileFaults` installed with ``monkeypatch`` over the journal module's ``open``: the
  segment files it opens fail the way a full or broken disk fails. ``enospc_after = n`` lets the
  next ``n`` bytes through (a short write, as the kernel does when the disk fills mid-write) and
  then raises ``ENOSPC``; ``eio_after_lines = n`` lets a reader take ``n`` lines and then raises
  ``EIO``.
* :func:`failing_calls` wraps a function (``os.fsync``, ``os.rename``) so chosen calls raise.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from typing import Any


class FaultyFile:
    def __init__(self, f: Any, faults: FileFaults) -> None:
        self._f = f
        self._faults = faults

    def write(self, data: bytes | memoryview) -> int:
        room = self._faults.enospc_after
        if room is not None:
            if room == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            data = memoryview(data)[:room]
            self._faults.enospc_after = room - len(data)
        written = self._f.write(data)
        self._faults.bytes_written += written
        return int(written)

    def __iter__(self) -> Iterator[bytes]:
        for line in self._f:
            if self._faults.eio_after_lines is not None:
                if self._faults.eio_after_lines == 0:
                    raise OSError(errno.EIO, os.strerror(errno.EIO))
                self._faults.eio_after_lines -= 1
            yield line

    def readline(self, *args: Any) -> bytes:
        if self._faults.eio_after_lines is not None:
            if self._faults.eio_after_lines == 0:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            self._faults.eio_after_lines -= 1
        return bytes(self._f.readline(*args))

    def __enter__(self) -> FaultyFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


class FileFaults:
    """``monkeypatch.setattr(journal_module, "open", FileFaults(), raising=False)``."""

    def __init__(self) -> None:
        self.enospc_after: int | None = None
        self.eio_after_lines: int | None = None
        self.bytes_written = 0
        self.opened: list[str] = []

    def __call__(self, path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> FaultyFile:
        self.opened.append(str(path))
        return FaultyFile(open(path, mode, *args, **kwargs), self)  # noqa: SIM115 - the wrapper closes it


def failing_calls(real: Callable[..., Any], fail: Callable[..., BaseException | None]) -> Callable[..., Any]:
    """``real`` except when ``fail(*args)`` returns an exception, which is raised instead."""

    def call(*args: Any, **kwargs: Any) -> Any:
        exc = fail(*args)
        if exc is not None:
            raise exc
        return real(*args, **kwargs)

    return call
