"""Drill 14: a 3-broker KRaft cluster (replication factor 3, ``min.insync.replicas=2``) loses the
leader of a partition of the alerts topic (`kill -9`) mid-stream.

The cluster is the stack's own (`stack up --brokers 3`) on free ports, started once for the
module (both engines) and restored after each drill. The drill asserts the failover it claims:
the killed node led the partition before, another node leads it after. Two of three replicas
stay in sync, so acks=all writes go on; nothing may be missing, every decision has its row.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.brokers import PrivateKafka
from harness.drills import Publisher, Tail, account, clickhouse_rows, record, scaled
from harness.kafka import create_topics
from harness.procs import Proc, start_propositions, start_worker, wait_until
from stream_engine.kafka import prefixed_settings
from stream_engine.settings import Settings
from stream_engine.stack.sync import run_coroutine
from stream_engine.workload import Workload

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateKafka]:
    kafka = PrivateKafka(Settings(), tmp_path_factory.mktemp("cluster") / "stack", brokers=3)
    try:
        assert kafka.up() == ["started"] * 3
        yield kafka
    finally:
        kafka.down()


@pytest.fixture
def cluster_settings(cluster: PrivateKafka, drill_settings: Settings, unique: Callable[[str], str]) -> Settings:
    cluster.up()  # restores a node an earlier drill killed
    s = prefixed_settings(drill_settings.with_overrides(kafka_bootstrap=cluster.bootstrap), unique("rf3") + ".")
    run_coroutine(lambda: create_topics(s, replication_factor=3), timeout_s=60)
    return s


async def test_the_partition_leader_is_killed_mid_stream_and_nothing_is_lost(
    cluster: PrivateKafka, cluster_settings: Settings, tmp_path: Path
) -> None:
    s = cluster_settings
    warmup, stream = Workload("typical", seed=141).alerts(50), Workload("typical", seed=142).alerts(scaled(1500))
    ids = [a["id"] for a in warmup + stream]
    service = await asyncio.to_thread(start_propositions, s, tmp_path)
    worker: Proc | None = None
    try:
        worker = await asyncio.to_thread(start_worker, s, tmp_path, "worker")
        async with Tail(s.kafka_bootstrap, s.topic_decisions) as tail, Publisher(s.kafka_bootstrap, s.topic_alerts) as pub:
            await pub.send(warmup)
            await tail.wait_ids([a["id"] for a in warmup], 60, "warm-up decisions")
            sending = asyncio.create_task(pub.send(stream, per_second=300))
            await tail.wait_for(lambda r: len(r) >= len(warmup) + len(stream) // 5, 90, "decisions before the kill")
            assert not sending.done(), "the kill must land mid-stream"

            leader = await asyncio.to_thread(cluster.leader, s.topic_alerts, 0)
            assert leader in (1, 2, 3), leader
            await asyncio.to_thread(cluster.kill9, leader)
            killed_at = time.monotonic()
            seen_at_kill = len(tail.records)
            new_leader = await asyncio.to_thread(
                wait_until, lambda: (n := cluster.leader(s.topic_alerts, 0)) not in (leader, -1) and n, 60, "a new leader"
            )
            assert new_leader != leader

            await sending
            decisions = await tail.wait_ids(ids, 180, "decisions after the failover")
            recover_s = next((t - killed_at for t in tail.arrivals[seen_at_kill:]), None)
            assert worker.alive, "the worker rode out the failover by itself"
    finally:
        if worker is not None:
            worker.stop()
        service.stop()

    log = clickhouse_rows(s)
    row = record(account("14 3-broker leader kill -9", ids, decisions, log.rows, recover_s, engine=s.engine))
    assert row.missing == 0
    assert log.ids == set(ids)
    assert log.rows == len(ids)
