"""Drill 3: the Kafka broker crashes (`kill -9`) mid-stream and restarts; the worker reconnects by
itself.

Runs a private single-node broker (the dev broker is shared and must never be restarted),
reusing the dev stack's jar cache so no download happens. The publisher keeps publishing
through the outage (aiokafka retries until the broker is back), the worker is never touched.
The broker gets no chance to shut down cleanly: it recovers its log at the restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.brokers import PrivateKafka
from harness.drills import Publisher, Tail, account, clickhouse_rows, record, scaled
from harness.procs import Proc, start_propositions, start_worker
from stream_engine.settings import Settings
from stream_engine.workload import Workload

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateKafka]:
    """One private broker for the module (both engines); each drill restarts it."""
    kafka = PrivateKafka(Settings(), tmp_path_factory.mktemp("broker") / "stack")
    kafka.up()
    try:
        yield kafka
    finally:
        kafka.down()


@pytest.fixture
def broker_settings(broker: PrivateKafka, drill_settings: Settings, unique: Callable[[str], str]) -> Settings:
    """``drill_settings`` on the private broker (up again), with fresh topics."""
    from stream_engine.kafka import apply_topics, prefixed_settings
    from stream_engine.stack.sync import run_coroutine

    broker.up()  # an earlier drill's crash, restarted
    settings = prefixed_settings(drill_settings.with_overrides(kafka_bootstrap=broker.bootstrap), unique("b") + ".")
    report = run_coroutine(lambda: apply_topics(settings), timeout_s=60)
    assert report.in_sync, report.lines()
    return settings


async def test_worker_rides_out_a_broker_crash_and_restart(broker: PrivateKafka, broker_settings: Settings, tmp_path: Path) -> None:
    kafka, s = broker, broker_settings
    warmup, stream = Workload("typical", seed=31).alerts(50), Workload("typical", seed=32).alerts(scaled(1500))
    ids = [a["id"] for a in warmup + stream]
    service = start_propositions(s, tmp_path)
    worker: Proc | None = None
    try:
        worker = await asyncio.to_thread(start_worker, s, tmp_path, "worker")
        async with Tail(s.kafka_bootstrap, s.topic_decisions) as tail, Publisher(s.kafka_bootstrap, s.topic_alerts) as pub:
            await pub.send(warmup)
            await tail.wait_ids([a["id"] for a in warmup], 60, "warm-up decisions")
            sending = asyncio.create_task(pub.send(stream, per_second=300))
            await tail.wait_for(lambda r: len(r) >= len(warmup) + len(stream) // 5, 60, "decisions before the crash")
            assert not sending.done(), "the crash must happen mid-stream"

            await asyncio.to_thread(kafka.kill9, 1)
            await asyncio.sleep(3)  # long enough for the worker's fetches, commits and sends to fail
            assert await asyncio.to_thread(kafka.up) == ["started"]
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
    row = record(account("3 broker kill -9", ids, decisions, log.rows, recover_s, engine=s.engine))
    assert row.missing == 0
    assert log.ids == set(ids)
    assert log.rows == len(ids)
