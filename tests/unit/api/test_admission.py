"""The API's gates: at most ``limit`` holders, one more refused at once (never queued)."""

from __future__ import annotations

import pytest

from stream_engine.api.admission import Busy, Gate


def test_a_gate_refuses_past_its_limit_and_frees_its_place_on_exit() -> None:
    gate = Gate(2, "decision requests")
    with gate.hold(), gate.hold():
        assert gate.active == 2
        with pytest.raises(Busy, match="2 decision requests already in progress"), gate.hold():
            pass
    assert gate.active == 0 and gate.refused == 1
    with pytest.raises(RuntimeError), gate.hold():
        raise RuntimeError("a failing holder still leaves")
    assert gate.active == 0
