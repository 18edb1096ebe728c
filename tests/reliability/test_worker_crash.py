"""Drill 1: `kill -9` the worker mid-stream and restart it (same data dir, same group).
Drill 13: two workers consume; one of them is killed with `kill -9`; the other takes over.

Nothing may be missing; duplicates are allowed only inside the at-least-once window: the alerts
the dead worker had decided at or beyond the committed offsets (read right after the kill).
The drills create that window and assert it was hit: every decision-log write waits 1 s (a
test-only fault, see harness/faults.py), so a batch's decisions are acknowledged a second before
its offsets can be committed, and the kill comes once the tail shows decisions beyond the
committed offsets. The stream is still flowing at the kill, and stops a few seconds after the
restart or takeover (what was published is what is counted). Every alert of the window must be decided again, and no other alert may be:
a duplicate below a committed offset would mean a commit passed a batch that was not done.
ClickHouse collapses the duplicates: FINAL rows == unique ids.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from harness.drills import (
    Publisher,
    Tail,
    account,
    assert_crash_redelivery_is_the_uncommitted_suffix,
    assert_no_row_beyond_the_topics_copies,
    audit_rows,
    clickhouse_rows,
    interrupted_work,
    journal_segments,
    record,
    scaled,
)
from harness.faults import fault_env
from harness.kafka import committed_offsets
from harness.procs import Proc, start_worker, wait_until
from stream_engine.settings import Settings
from stream_engine.workload import Workload

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(240)]

SINK_DELAY_S = 1.0


async def kill_inside_the_window(tail: Tail, pub: Publisher, settings: Settings, worker: Proc, partitions: set[int] | None) -> None:
    """``kill -9`` once the tail shows decisions of ``partitions`` beyond the committed offsets."""
    deadline = time.monotonic() + 60
    while True:
        committed = await committed_offsets(settings, settings.topic_alerts)
        decided = {r["alert_id"] for r in tail.records if r["alert_id"] in pub.positions}
        if interrupted_work(decided, pub.positions, committed, partitions):
            worker.kill9()
            return
        assert time.monotonic() < deadline, "no decision beyond the committed offsets to interrupt"
        await asyncio.sleep(0.05)


async def test_kill_9_mid_stream_then_restart_loses_nothing(drill_settings: Settings, propositions: Proc, tmp_path: Path) -> None:
    s = drill_settings
    warmup, stream = Workload("typical", seed=11).alerts(50), Workload("typical", seed=12).alerts(scaled(8000))
    slow_log = fault_env(tmp_path, sink_delay_s=SINK_DELAY_S)

    worker = await asyncio.to_thread(start_worker, s, tmp_path, "worker-1", slow_log)
    restarted: Proc | None = None
    try:
        async with Tail(s.kafka_bootstrap, s.topic_decisions) as tail, Publisher(s.kafka_bootstrap, s.topic_alerts) as pub:
            await pub.send(warmup)  # the group has joined and decisions flow before the drill starts
            await tail.wait_ids([a["id"] for a in warmup], 60, "warm-up decisions")
            enough = asyncio.Event()
            sending = asyncio.create_task(pub.send(stream, per_second=400, until=enough))
            await tail.wait_for(lambda r: len(r) >= len(warmup) + 200, 60, "decisions before the kill")
            await kill_inside_the_window(tail, pub, s, worker, None)
            killed_at = time.monotonic()
            assert not sending.done(), "the kill must land mid-stream"
            await asyncio.sleep(1.5)  # let the tail read what the dead worker had acknowledged
            first_run = list(tail.records)
            committed = await committed_offsets(s, s.topic_alerts)

            restarted = await asyncio.to_thread(start_worker, s, tmp_path, "worker-2")
            await asyncio.sleep(2)
            enough.set()
            await sending
            ids = [a["id"] for a in warmup + stream if a["id"] in pub.positions]
            decisions = await tail.wait_ids(ids, 120, "decisions after the restart")
            recover_s = tail.arrivals[len(first_run)] - killed_at
    finally:
        worker.stop()
        if restarted is not None:
            restarted.stop()

    log = clickhouse_rows(s)
    row = record(account("1 worker kill -9", ids, decisions, log.rows, recover_s, engine=s.engine))
    assert row.missing == 0
    assert_crash_redelivery_is_the_uncommitted_suffix(decisions, first_run, pub.positions, committed)
    assert log.ids == set(ids), "every decision has its ClickHouse row"
    assert log.rows == len(ids), "duplicates collapse in proposition_log FINAL"
    assert_no_row_beyond_the_topics_copies(audit_rows(s), decisions)


async def test_kill_9_one_of_two_workers_the_other_takes_over(drill_settings: Settings, propositions: Proc, tmp_path: Path) -> None:
    s1 = drill_settings.with_overrides(data_dir=tmp_path / "w1", worker_name="w1")
    s2 = drill_settings.with_overrides(data_dir=tmp_path / "w2", worker_name="w2")
    warmup, stream = Workload("typical", seed=13).alerts(60), Workload("typical", seed=14).alerts(scaled(8000))
    slow_log = fault_env(tmp_path, sink_delay_s=SINK_DELAY_S)
    w1, w2 = await asyncio.gather(
        asyncio.to_thread(start_worker, s1, tmp_path, "w1", slow_log), asyncio.to_thread(start_worker, s2, tmp_path, "w2", slow_log)
    )
    try:
        async with Tail(s1.kafka_bootstrap, s1.topic_decisions) as tail, Publisher(s1.kafka_bootstrap, s1.topic_alerts) as pub:
            await pub.send(warmup)
            await tail.wait_ids([a["id"] for a in warmup], 60, "warm-up decisions")
            w1_partitions = last_assignment(w1)
            assert w1_partitions and w1_partitions != set(range(6)), "both workers consume"
            enough = asyncio.Event()
            sending = asyncio.create_task(pub.send(stream, per_second=400, until=enough))
            await tail.wait_for(lambda r: len(r) >= len(warmup) + 200, 60, "decisions from both workers")
            await kill_inside_the_window(tail, pub, s1, w1, w1_partitions)
            killed_at = time.monotonic()
            assert not sending.done(), "the kill must land mid-stream"
            await asyncio.sleep(1.5)
            first_run = list(tail.records)
            committed = await committed_offsets(s1, s1.topic_alerts)
            await asyncio.sleep(s1.session_timeout_s + 2)  # the survivor takes over while the stream flows
            enough.set()
            await sending
            ids = [a["id"] for a in warmup + stream if a["id"] in pub.positions]
            decisions = await tail.wait_ids(ids, 120, "decisions after the takeover")
            takeover = [t for r, t in zip(tail.records[len(first_run):], tail.arrivals[len(first_run):])
                        if pub.positions[r["alert_id"]][0] in w1_partitions]  # fmt: skip
            assert w2.alive
        # The crashed worker comes back (its own data dir): the rows it had journaled arrive.
        w1 = await asyncio.to_thread(start_worker, s1, tmp_path, "w1-again")
        await asyncio.to_thread(wait_until, lambda: journal_segments(s1) == 0, 60, "w1's journal replayed", w1)
    finally:
        w1.stop()
        w2.stop()

    logs = [clickhouse_rows(s1), clickhouse_rows(s2)]
    in_clickhouse = logs[0].ids | logs[1].ids
    row = record(account("13 one of two workers kill -9", ids, decisions, len(in_clickhouse), takeover[0] - killed_at, engine=s1.engine))
    assert row.missing == 0
    assert_crash_redelivery_is_the_uncommitted_suffix(decisions, first_run, pub.positions, committed, w1_partitions)
    assert in_clickhouse == set(ids), "every decision has its ClickHouse row (in the worker that made it durable)"


def last_assignment(worker: Proc) -> set[int]:
    import re

    found = re.findall(r'"msg":\s*"partitions assigned: \[([0-9, ]*)\]"', worker.log())
    assert found, worker.log()[-2000:]
    return {int(p) for p in found[-1].split(",") if p.strip()}
