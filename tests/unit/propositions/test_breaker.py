"""The circuit breaker: opens after consecutive failures, one trial call at a time after the reset."""

from __future__ import annotations

import pytest

from stream_engine.propositions.breaker import CircuitBreaker
from tests.unit.fakes import FakeClock


def test_breaker_allows_one_trial_at_a_time(clock: FakeClock) -> None:
    breaker = CircuitBreaker(fail_max=1, reset_s=5, clock=clock)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 5
    assert breaker.allow()  # the trial
    assert not breaker.allow()  # a concurrent caller while the trial is out
    breaker.abandon()
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.consecutive_failures == 0


def test_breaker_counts_consecutive_failures_only(clock: FakeClock) -> None:
    breaker = CircuitBreaker(fail_max=2, reset_s=5, clock=clock)
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert breaker.state == "open"
    with pytest.raises(ValueError):
        CircuitBreaker(fail_max=0, reset_s=1)
