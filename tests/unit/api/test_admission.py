"""The API's gates: at most ``limit`` holders, one more refused at once (never queued)."""

from __future__ import annotations

import pytest

from stream_engine.api.admission import Busy, Gate


def test_a_gate_refuses_past_its_limit_and_frees_its_place_on_exit() -> None:
    gate = Gate(2, "analytics queries")
    with gate.hold(), gate.hold():
        assert gate.active == 2
        with pytest.raises(Busy, match="analytics queries: 2 in progress, limit 2"), gate.hold():
            pass
    assert gate.active == 0 and gate.refused == 1
    with pytest.raises(RuntimeError), gate.hold():
        raise RuntimeError("a failing holder still leaves")
    assert gate.active == 0


def test_a_gate_of_bytes_takes_amounts_and_a_lone_holder_of_any_size() -> None:
    gate = Gate(1000, "bytes of decision requests")
    with gate.hold(5000):  # alone: served rather than never
        with pytest.raises(Busy), gate.hold(1):
            pass
    with gate.hold(600), gate.hold(400):
        assert gate.active == 1000
        with pytest.raises(Busy), gate.hold(1):
            pass
    assert gate.active == 0 and gate.refused == 2
