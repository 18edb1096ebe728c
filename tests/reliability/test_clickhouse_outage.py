"""Drill 6: ClickHouse is unreachable for a whole worker run; every row arrives after recovery.

First run: the worker points at an HTTP ClickHouse URL where nothing listens. Decisions still
flow (the sink's contract is "durable in the journal", not "inserted"), the rows pile up in
``data_dir/journal``. Second run: same data dir, the stack's ClickHouse: the journal is replayed
at start (time to recover = worker start → journal empty) and every decision has its row.
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
    assert_no_row_beyond_the_topics_copies,
    audit_rows,
    clickhouse_query,
    clickhouse_rows,
    journal_segments,
    record,
)
from harness.procs import Proc, free_port, start_worker, wait_until
from stream_engine.settings import Settings
from stream_engine.workload import Workload

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(240)]


async def test_rows_written_while_clickhouse_is_down_arrive_after_recovery(
    drill_settings: Settings, propositions: Proc, tmp_path: Path
) -> None:
    outage = drill_settings.with_overrides(clickhouse_url=f"http://127.0.0.1:{free_port()}")
    healthy = drill_settings  # clickhouse_url "" = the stack's ClickHouse endpoint
    during, after = Workload("typical", seed=61).alerts(1000), Workload("typical", seed=62).alerts(200)
    ids = [a["id"] for a in during + after]

    worker = await asyncio.to_thread(start_worker, outage, tmp_path, "worker-outage")
    try:
        async with Tail(outage.kafka_bootstrap, outage.topic_decisions) as tail, Publisher(
            outage.kafka_bootstrap, outage.topic_alerts
        ) as pub:
            await pub.send(during, per_second=500)
            await tail.wait_ids([a["id"] for a in during], 60, "decisions while ClickHouse is down")
            assert "ClickHouse insert failed" in worker.log(), "the sink really could not insert"
            assert worker.stop() == 0
            assert journal_segments(outage) > 0, "the rows wait in the journal"
            databases = clickhouse_query(healthy.with_overrides(clickhouse_database="system"),
                                         "SELECT count() FROM databases WHERE name = {db:String}",
                                         {"db": healthy.clickhouse_database})  # fmt: skip
            assert databases == [[0]], "nothing reached ClickHouse (the worker could not even migrate)"

            started = time.monotonic()
            worker = await asyncio.to_thread(start_worker, healthy, tmp_path, "worker-recovered")
            await asyncio.to_thread(wait_until, lambda: journal_segments(healthy) == 0, 60, "journal replayed", worker)
            recover_s = time.monotonic() - started
            await pub.send(after)
            decisions = await tail.wait_ids(ids, 60, "decisions after recovery")
    finally:
        worker.stop()

    log = clickhouse_rows(healthy)
    row = record(account("6 clickhouse outage", ids, decisions, log.rows, recover_s, engine=healthy.engine))
    assert row.missing == 0
    assert log.ids == set(ids), f"{len(set(ids) - log.ids)} decisions have no ClickHouse row"
    assert log.rows == len(ids)
    assert journal_segments(healthy) == 0
    assert_no_row_beyond_the_topics_copies(audit_rows(healthy), decisions)
