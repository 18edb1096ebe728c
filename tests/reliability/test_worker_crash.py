"""Drill 1: `kill -9` the worker mid-stream and restart it (same data dir, same group).

Nothing may be missing; duplicates are allowed only inside the at-least-once window, i.e. the
alerts the dead worker had decided after its last committed offset. Per partition that window is
a suffix: every offset the first run decided from the first duplicated one on must be duplicated
too (a hole would mean an offset was committed before its decision was acknowledged, or that the
restart skipped back and forth). ClickHouse collapses the duplicates: FINAL rows == unique ids.
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
    record,
)
from harness.procs import Proc, start_worker
from stream_engine.settings import Settings
from stream_engine.workload import Workload

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(180)]


async def test_kill_9_mid_stream_then_restart_loses_nothing(
    drill_settings: Settings, propositions: Proc, tmp_path: Path
) -> None:
    s = drill_settings
    warmup, stream = Workload("typical", seed=11).alerts(50), Workload("typical", seed=12).alerts(2000)
    ids = [a["id"] for a in warmup + stream]

    worker = await asyncio.to_thread(start_worker, s, tmp_path, "worker-1")
    restarted: Proc | None = None
    try:
        async with Tail(s.kafka_bootstrap, s.topic_decisions) as tail, Publisher(s.kafka_bootstrap, s.topic_alerts) as pub:
            await pub.send(warmup)  # the group has joined and decisions flow before the drill starts
            await tail.wait_ids([a["id"] for a in warmup], 60, "warm-up decisions")
            sending = asyncio.create_task(pub.send(stream, per_second=400))
            await tail.wait_for(lambda r: len(r) >= 500, 60, "500 decisions before the kill")
            assert not sending.done(), "the kill must land mid-stream"
            worker.kill9()
            killed_at = time.monotonic()
            await asyncio.sleep(1.5)  # let the tail read what the dead worker had acknowledged
            first_run = list(tail.records)

            restarted = await asyncio.to_thread(start_worker, s, tmp_path, "worker-2")
            await sending
            decisions = await tail.wait_ids(ids, 120, "decisions after the restart")
            recover_s = tail.arrivals[len(first_run)] - killed_at
    finally:
        worker.stop()
        if restarted is not None:
            restarted.stop()

    log = clickhouse_rows(s)
    row = record(account("1 worker kill -9", ids, decisions, log.rows, recover_s, engine=s.engine))
    assert row.missing == 0

    assert_crash_redelivery_is_the_uncommitted_suffix(decisions, first_run, pub.positions)

    assert log.ids == set(ids), "every decision has its ClickHouse row"
    assert log.rows == len(ids), "duplicates collapse in proposition_log FINAL"
    assert_no_row_beyond_the_topics_copies(audit_rows(s), decisions)
