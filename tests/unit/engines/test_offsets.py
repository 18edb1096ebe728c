"""The commit bookkeeping: with batches in flight concurrently, a partition's commit point must
never pass a batch that is not done."""

from __future__ import annotations

from aiokafka.structs import TopicPartition

from stream_engine.engines.offsets import OffsetTracker

P0, P1 = TopicPartition("alerts", 0), TopicPartition("alerts", 1)


def test_a_batch_finishing_first_does_not_move_the_commit_point_past_an_earlier_unfinished_one() -> None:
    tracker = OffsetTracker()
    first = tracker.started({P0: 99})
    second = tracker.started({P0: 199})
    assert tracker.finished(second) == {}, "offsets 0-99 are not done yet"
    assert tracker.take() == {}
    assert tracker.in_flight() == 2
    assert tracker.finished(first) == {P0: 200}, "both done: commit right after the second"
    assert tracker.in_flight() == 0
    assert tracker.take() == {P0: 200} and tracker.take() == {}, "handed out once"


def test_partitions_advance_independently() -> None:
    tracker = OffsetTracker()
    a = tracker.started({P0: 10, P1: 5})
    b = tracker.started({P1: 9})
    c = tracker.started({P0: 20})
    assert tracker.finished(c) == {}
    assert tracker.finished(b) == {}, "P1's earlier batch a is unfinished"
    assert tracker.finished(a) == {P0: 21, P1: 10}


def test_a_failed_commit_is_restored_unless_a_newer_point_overtook_it() -> None:
    tracker = OffsetTracker()
    tracker.finished(tracker.started({P0: 9, P1: 4}))
    failed = tracker.take()
    tracker.finished(tracker.started({P0: 19}))
    tracker.restore(failed)
    assert tracker.take() == {P0: 20, P1: 5}


def test_forgotten_partitions_hold_nothing_back_and_commit_nothing() -> None:
    tracker = OffsetTracker()
    stale = tracker.started({P0: 10})
    done = tracker.started({P1: 3})
    tracker.finished(done)
    tracker.forget([P0, P1])
    assert tracker.take() == {}, "a revoked partition's leftovers must not land after another owner's"
    fresh = tracker.started({P0: 30})
    assert tracker.finished(fresh) == {P0: 31}
    assert tracker.finished(stale) == {}, "a revoked partition's late batch commits nothing"
