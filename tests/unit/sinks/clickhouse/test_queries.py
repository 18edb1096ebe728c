"""The query module's whitelist: an interval reaches SQL only as one of a fixed set of functions."""

from __future__ import annotations

import pytest

from stream_engine.sinks.clickhouse.queries import INTERVALS, bucket_function


def test_intervals_are_whitelisted() -> None:
    assert bucket_function("1m") == "toStartOfMinute"
    assert bucket_function("1 hour") == "toStartOfHour"
    assert all(fn.startswith("toStartOf") for fn in INTERVALS.values())
    for bad in ("2m", "1 minute) OR 1=1 --", "toStartOfMinute"):
        with pytest.raises(ValueError):
            bucket_function(bad)
