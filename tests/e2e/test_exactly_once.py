"""A worker in exactly_once mode drains a backlog that was published before it started: every
alert's decision committed once (read_committed), and every record in the log committed.

The backlog makes the consumer fetch while the worker is still being assigned its partitions
(starting their transactional producers takes a while): those records are dropped and read again
from the committed offset once the producers have fenced any previous owner. A reset of the fetch
position that races with fetches in flight (``seek_to_beginning``) left partitions unread, or read
on past the dropped records; this test saw 961 to 3,143 of 5,000 decisions then.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from harness.drills import Publisher, Tail
from harness.procs import Proc, start_worker
from stream_engine.settings import Settings
from stream_engine.workload import Workload

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


async def test_a_backlog_is_decided_exactly_once(worker_settings: Settings, propositions: Proc, tmp_path: Path) -> None:
    s = worker_settings.with_overrides(delivery="exactly_once")
    alerts = Workload("ci_failures", seed=3).alerts(5000)  # hit-heavy: batches of 500 from the first fetch
    async with Publisher(s.kafka_bootstrap, s.topic_alerts) as pub:
        await pub.send(alerts)
    worker = await asyncio.to_thread(start_worker, s, tmp_path, "worker")
    try:
        committed = Tail(s.kafka_bootstrap, s.topic_decisions, isolation_level="read_committed")
        raw = Tail(s.kafka_bootstrap, s.topic_decisions)
        async with committed, raw:
            await committed.wait_ids([a["id"] for a in alerts], 90)
            await raw.wait_for(lambda r: len(r) >= len(committed.records), 30, "the log read uncommitted")
            await asyncio.sleep(1)
            counts = Counter(r["alert_id"] for r in committed.records)
            assert sum(counts.values()) == len(alerts) == len(counts), "each alert's decision committed once"
            assert len(raw.records) == len(alerts), "nothing aborted or duplicated in the log"
    finally:
        worker.stop()
