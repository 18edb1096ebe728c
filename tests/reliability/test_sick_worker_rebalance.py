"""Drill 10: one sick worker cannot stall its group's rebalance.

Worker 1 is sick: every decision-log write hangs (a test-only fault), so each of its batches
publishes its decisions and then never finishes. A second worker joins: the rebalance revokes
worker 1's partitions while its batches are stuck. Worker 1 waits ``revoke_grace_s`` for them,
abandons them uncommitted, and the group moves on: worker 2 becomes ready and decides the alerts
of its partitions. Worker 1 is then killed (it is sick) and worker 2 redoes everything worker 1
never committed: nothing is missing, and every decision has its row.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from harness.drills import Publisher, Tail, account, clickhouse_rows, record, scaled
from harness.faults import fault_env
from harness.procs import Proc, start_worker
from stream_engine.settings import Settings
from stream_engine.workload import Workload

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(300)]


async def test_a_worker_stuck_in_its_batches_does_not_stall_the_rebalance(
    drill_settings: Settings, propositions: Proc, tmp_path: Path
) -> None:
    s = drill_settings.with_overrides(revoke_grace_s=2.0)
    sick = s.with_overrides(data_dir=tmp_path / "sick", worker_name="sick")
    healthy = s.with_overrides(data_dir=tmp_path / "healthy", worker_name="healthy")
    before, after = Workload("typical", seed=101).alerts(scaled(100)), Workload("typical", seed=102).alerts(scaled(300))
    ids = [a["id"] for a in before + after]
    w1 = await asyncio.to_thread(start_worker, sick, tmp_path, "sick", fault_env(tmp_path, sink_delay_s=3600))
    w2: Proc | None = None
    try:
        async with Tail(s.kafka_bootstrap, s.topic_decisions) as tail, Publisher(s.kafka_bootstrap, s.topic_alerts) as pub:
            await pub.send(before)
            # Its batches publish their decisions, then hang in the log write: stuck in flight.
            await tail.wait_for(lambda r: len(r) > 0, 60, "the sick worker's first decisions")

            joined = time.monotonic()
            w2 = await asyncio.to_thread(start_worker, healthy, tmp_path, "healthy")  # needs the rebalance to finish
            assert "abandoned" in w1.log(), "the sick worker abandoned its stuck batches at the revocation"
            w2_partitions = assigned_partitions(w2)
            assert w2_partitions, "the healthy worker got partitions"

            await pub.send(after)
            mine = [a["id"] for a in after if pub.positions[a["id"]][0] in w2_partitions]
            await tail.wait_ids(mine, 60, "the healthy worker's decisions while the sick one still holds its partitions")
            recover_s = time.monotonic() - joined

            w1.kill9()
            decisions = await tail.wait_ids(ids, 120, "every alert once the sick worker is gone")
    finally:
        w1.stop()
        if w2 is not None:
            w2.stop()

    log = clickhouse_rows(healthy)
    row = record(account("10 sick worker at rebalance", ids, decisions, log.rows, recover_s, engine=s.engine))
    assert row.missing == 0
    assert log.ids == set(ids), "the healthy worker logged every alert (the sick one never finished a batch)"


def assigned_partitions(worker: Proc) -> set[int]:
    """The partitions of the worker's last assignment (its "partitions assigned: [...]" log line)."""
    import re

    found = re.findall(r'"msg":\s*"partitions assigned: \[([0-9, ]*)\]"', worker.log())
    assert found, worker.log()[-2000:]
    return {int(p) for p in found[-1].split(",") if p.strip()}
