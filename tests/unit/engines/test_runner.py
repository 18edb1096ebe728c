"""BatchRunner: batches in flight, committed in fetch order per partition, and revocation that
waits a bounded time for them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka.structs import TopicPartition

from stream_engine.engines.runner import BatchRunner
from stream_engine.models import StageTimes
from stream_engine.pipeline import BatchReport, RawMessage

P0, P1 = TopicPartition("alerts", 0), TopicPartition("alerts", 1)


class GatedCore:
    """Stands in for EngineCore.process (whose contract: returns when the batch is done, never
    raises but CancelledError): each batch waits for its gate, keyed by its first offset."""

    def __init__(self) -> None:
        self.gates: dict[int, asyncio.Event] = {}
        self.cancelled: list[int] = []

    def gate(self, first_offset: int) -> asyncio.Event:
        return self.gates.setdefault(first_offset, asyncio.Event())

    async def process(self, messages: Sequence[RawMessage]) -> BatchReport:
        first = messages[0].offset
        try:
            await self.gate(first).wait()
        except asyncio.CancelledError:
            self.cancelled.append(first)
            raise
        return BatchReport([], [], StageTimes())


def batch(tp: TopicPartition, first: int, last: int) -> tuple[dict[Any, int], list[RawMessage]]:
    return {tp: last}, [RawMessage(b"", tp.partition, o, tp.topic) for o in range(first, last + 1)]


class Commits:
    def __init__(self, runner_box: list[BatchRunner]) -> None:
        self.box = runner_box
        self.made: list[dict[Any, int]] = []

    async def __call__(self) -> None:
        taken = self.box[0].tracker.take()
        if taken:
            self.made.append(taken)


def make_runner(concurrency: int = 2, grace_s: float = 0.2) -> tuple[BatchRunner, GatedCore, Commits]:
    core = GatedCore()
    box: list[BatchRunner] = []
    commits = Commits(box)
    runner = BatchRunner(core, concurrency, grace_s, commits)  # type: ignore[arg-type]
    box.append(runner)
    return runner, core, commits


async def until(predicate: Any, timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


async def test_a_later_batch_done_first_commits_nothing_until_the_earlier_one_is_done() -> None:
    runner, core, commits = make_runner()
    for first, last in ((0, 9), (10, 19)):
        await runner.slot()
        assert runner.start(*batch(P0, first, last))
    core.gate(10).set()
    await until(lambda: runner.in_flight() == 1)
    assert commits.made == []
    core.gate(0).set()
    await until(lambda: runner.in_flight() == 0)
    assert commits.made == [{P0: 20}]


async def test_no_more_than_batch_concurrency_batches_are_in_flight() -> None:
    runner, core, _ = make_runner(concurrency=2)
    for first in (0, 10):
        await runner.slot()
        runner.start(*batch(P0, first, first + 9))
    third = asyncio.ensure_future(runner.slot())
    await asyncio.sleep(0.05)
    assert not third.done(), "a third batch waits for a slot"
    core.gate(0).set()
    await asyncio.wait_for(third, 5)


async def test_a_revocation_abandons_a_stuck_batch_after_the_grace_and_commits_what_is_done() -> None:
    runner, core, commits = make_runner(grace_s=0.2)
    await runner.slot()
    runner.start(*batch(P0, 0, 9))  # stuck for good
    await runner.slot()
    runner.start(*batch(P1, 100, 109))
    core.gate(100).set()
    await until(lambda: runner.in_flight() == 1)
    kept = await asyncio.wait_for(runner.revoke({P0, P1}, commits), 5)  # bounded: no stall
    assert kept == set() and core.cancelled == [0], "the stuck batch was abandoned"
    assert commits.made == [{P1: 110}], "what was done is committed, the abandoned batch is not"
    assert runner.in_flight() == 0
    await runner.slot()
    assert not runner.start(*batch(P0, 10, 19)), "no new batch until the next assignment"
    runner.assigned()
    await runner.slot()
    assert runner.start(*batch(P0, 0, 9)), "redone after the assignment"


async def test_a_revocation_waits_for_a_batch_that_finishes_within_the_grace() -> None:
    runner, core, commits = make_runner(grace_s=5.0)
    await runner.slot()
    runner.start(*batch(P0, 0, 9))
    revoking = asyncio.ensure_future(runner.revoke({P0}, commits))
    await asyncio.sleep(0.05)
    assert not revoking.done(), "the batch gets its grace"
    core.gate(0).set()
    await asyncio.wait_for(revoking, 5)
    assert commits.made == [{P0: 10}], "done within the grace: committed before the partition goes"


async def test_drain_waits_for_batches_in_flight_and_says_when_they_outlast_it() -> None:
    runner, core, _ = make_runner()
    await runner.slot()
    runner.start(*batch(P0, 0, 0))
    assert not await runner.drain(0.05), "a batch is still in flight"
    core.gate(0).set()
    assert await runner.drain(5.0)


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_cancel_stops_every_batch_in_flight(concurrency: int) -> None:
    runner, core, commits = make_runner(concurrency=concurrency)
    for first in range(concurrency):
        await runner.slot()
        runner.start(*batch(P0, first * 10, first * 10 + 9))
    assert await runner.cancel() == concurrency and runner.in_flight() == 0 and not commits.made
