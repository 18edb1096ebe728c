"""A small circuit breaker for the proposition client.

Not aiobreaker (1.2.0): it reads the wall clock through a mix of ``datetime.now()`` and
``datetime.utcnow()`` (so its reset timeout is off by the UTC offset on non-UTC hosts), the clock
cannot be injected for tests, and it only understands "the call raised". Here the client
decides what counts as a failure (timeouts, 5xx, garbage) and what does not (a 4xx is our bug,
not the service's health).

closed ──fail_max consecutive failures──▶ open ──reset_s elapsed──▶ half_open
half_open: one trial call; success ▶ closed, failure ▶ open (for another reset_s).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(self, fail_max: int, reset_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if fail_max < 1:
            raise ValueError("fail_max must be >= 1")
        self.fail_max = fail_max
        self.reset_s = reset_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False
        self.times_opened = 0

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.reset_s:
            return "half_open"
        return "open"

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def allow(self) -> bool:
        """May a call go out now? In half_open only one trial call is allowed at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "open" or self._trial_in_flight:
            return False
        self._trial_in_flight = True
        return True

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_in_flight = False

    def record_failure(self) -> None:
        self._trial_in_flight = False
        if self._opened_at is not None:  # a failed trial: open again for a full reset_s
            self._opened_at = self._clock()
            self.times_opened += 1
            return
        self._failures += 1
        if self._failures >= self.fail_max:
            self._opened_at = self._clock()
            self.times_opened += 1

    def abandon(self) -> None:
        """An allowed call ended without a verdict (cancelled): let another trial go."""
        self._trial_in_flight = False
