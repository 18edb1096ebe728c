"""The aiokafka engine's commit bookkeeping: with batches in flight concurrently, a partition's
commit point must never pass a batch that is not done."""

from __future__ import annotations

import argparse

import pytest
from aiokafka.structs import TopicPartition

from stream_engine.cli import build_parser, settings_from_args
from stream_engine.kafka.batch_worker import OffsetTracker
from stream_engine.settings import SettingsError

P0, P1 = TopicPartition("alerts", 0), TopicPartition("alerts", 1)


def test_a_batch_finishing_first_does_not_move_the_commit_point_past_an_earlier_unfinished_one() -> None:
    tracker = OffsetTracker()
    first = tracker.started({P0: 99})
    second = tracker.started({P0: 199})
    assert tracker.finished(second) == {}, "offsets 0-99 are not done yet"
    assert tracker.in_flight() == 2
    assert tracker.finished(first) == {P0: 200}, "both done: commit right after the second"
    assert tracker.in_flight() == 0


def test_partitions_advance_independently() -> None:
    tracker = OffsetTracker()
    a = tracker.started({P0: 10, P1: 5})
    b = tracker.started({P1: 9})
    c = tracker.started({P0: 20})
    assert tracker.finished(c) == {}
    assert tracker.finished(b) == {}, "P1's earlier batch a is unfinished"
    assert tracker.finished(a) == {P0: 21, P1: 10}


def test_forgotten_partitions_hold_nothing_back() -> None:
    tracker = OffsetTracker()
    stale = tracker.started({P0: 10})
    tracker.forget([P0])
    fresh = tracker.started({P0: 30})
    assert tracker.finished(fresh) == {P0: 31}
    assert tracker.finished(stale) == {}, "a revoked partition's late batch commits nothing"


def parse(argv: list[str]) -> tuple[argparse.Namespace, str]:
    args = build_parser().parse_args(argv)
    return args, settings_from_args(args).engine


def test_engine_is_chosen_by_flag_or_setting_and_defaults_to_faust(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAM_ENGINE_ENGINE", raising=False)
    args, engine = parse(["worker"])
    assert args.engine is None and engine == "faust"
    args, _ = parse(["worker", "--engine", "aiokafka"])
    assert args.engine == "aiokafka"
    _, engine = parse(["--engine", "aiokafka", "worker"])
    assert engine == "aiokafka"
    with pytest.raises(SystemExit):
        parse(["worker", "--engine", "spark"])
    with pytest.raises(SettingsError):  # the global flag is validated by Settings (main() reports it)
        parse(["--engine", "spark", "worker"])
