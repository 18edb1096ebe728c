"""Drill 3: the Kafka broker restarts mid-stream; the worker reconnects by itself.

Runs a private single-node broker (the dev broker is shared and must never be restarted),
reusing the dev stack's jar cache so no download happens. The publisher keeps publishing
through the outage (aiokafka retries until the broker is back), the worker is never touched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.drills import Publisher, Tail, account, clickhouse_rows, record
from harness.procs import Proc, free_port, start_propositions, start_worker
from stream_engine.settings import Settings
from stream_engine.workload import Workload

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(300)]


def _private_stack_settings(base: Settings, stack_dir: Path) -> Settings:
    from stream_engine.stack.kafka import libs_complete, libs_dir

    shared = libs_dir(base.stack_dir, base.kafka_version)
    if libs_complete(shared, base.kafka_version):  # reuse the jar cache: no Maven run, no network
        mine = libs_dir(stack_dir, base.kafka_version)
        mine.parent.mkdir(parents=True, exist_ok=True)
        mine.symlink_to(shared.resolve(), target_is_directory=True)
    kafka_port = free_port()
    controller_port = free_port()
    while controller_port == kafka_port:
        controller_port = free_port()
    return base.with_overrides(
        stack_dir=stack_dir,
        kafka_port=kafka_port,
        kafka_controller_port=controller_port,
        kafka_heap="256m",
        kafka_bootstrap=f"127.0.0.1:{kafka_port}",
    )


@pytest.fixture
def private_kafka(drill_settings: Settings, tmp_path: Path) -> Iterator[tuple[Settings, Callable[[], object]]]:
    """(settings on a private broker with the drill's topics, the broker's Stack)."""
    from stream_engine.kafka import apply_topics
    from stream_engine.stack import Stack
    from stream_engine.stack.sync import run_coroutine

    settings = _private_stack_settings(drill_settings, tmp_path / "stack")
    stack = Stack(settings, only=["kafka"])
    stack.up()
    try:
        report = run_coroutine(lambda: apply_topics(settings), timeout_s=60)
        assert report.in_sync, report.lines()
        yield settings, lambda: stack
    finally:
        stack.down()


async def test_worker_rides_out_a_broker_restart(private_kafka, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s, get_stack = private_kafka
    stack = get_stack()
    warmup, stream = Workload("typical", seed=31).alerts(50), Workload("typical", seed=32).alerts(1500)
    ids = [a["id"] for a in warmup + stream]
    service = start_propositions(s, tmp_path)
    worker: Proc | None = None
    try:
        worker = await asyncio.to_thread(start_worker, s, tmp_path, "worker")
        async with Tail(s.kafka_bootstrap, s.topic_decisions) as tail, Publisher(s.kafka_bootstrap, s.topic_alerts) as pub:
            await pub.send(warmup)
            await tail.wait_ids([a["id"] for a in warmup], 60, "warm-up decisions")
            sending = asyncio.create_task(pub.send(stream, per_second=300))
            await tail.wait_for(lambda r: len(r) >= 300, 60, "decisions before the broker stops")
            assert not sending.done(), "the restart must happen mid-stream"

            down = await asyncio.to_thread(stack.down)
            assert [p.state for p in down.parts] == ["stopped"], down.lines()
            await asyncio.sleep(3)  # long enough for the worker's fetches, commits and sends to fail
            up = await asyncio.to_thread(stack.up)
            assert [p.state for p in up.parts] == ["started"], up.lines()
            back_at = time.monotonic()
            seen_before_up = len(tail.records)

            await sending
            decisions = await tail.wait_ids(ids, 150, "decisions after the broker restart")
            recover_s = next((t - back_at for t in tail.arrivals[seen_before_up:] if t >= back_at), None)
            assert worker.alive, "the worker reconnected by itself, no restart"
    finally:
        if worker is not None:
            worker.stop()
        service.stop()

    log = clickhouse_rows(s)
    row = record(account("3 broker restart", ids, decisions, log.rows, recover_s, engine=s.engine))
    assert row.missing == 0
    assert log.ids == set(ids)
    assert log.rows == len(ids)
