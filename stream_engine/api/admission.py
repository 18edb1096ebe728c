"""What the API admits: its own bounded work, so no caller can make the worker hold more.

Decision requests, the alerts they queue and analytics queries each have a bound (settings
``api_max_requests``, ``api_max_queued_alerts``, ``api_max_queries``). A request past a bound is
refused at once — 429 with ``Retry-After`` — rather than queued: a waiting request would hold its
connection, its body and its parsed alerts, which is exactly the memory the bound is for.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

RETRY_AFTER_S = 1  # a drain of the API's queue takes milliseconds; a second is a polite pause


class Busy(Exception):
    """One of the API's bounds is reached (429 + Retry-After); the stream is not affected."""


class Gate:
    """At most ``limit`` holders at once; one more is refused (:class:`Busy`), never queued."""

    def __init__(self, limit: int, what: str) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self.what = what
        self.active = 0
        self.refused = 0

    @contextmanager
    def hold(self) -> Iterator[None]:
        if self.active >= self.limit:
            self.refused += 1
            raise Busy(f"{self.limit} {self.what} already in progress")
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
