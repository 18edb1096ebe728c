"""Drill 2: two workers in one group (separate data dirs); one stops mid-stream.

The survivor takes over the leaver's partitions and nothing is missing. The LRU check: aiokafka
rebalances eagerly (every partition is revoked, then reassigned), so after the leave the
survivor must have dropped the caches of its own earlier partitions too. The warm-up uses
``infra`` keys and the stream only ``ci_failure`` keys, so nothing re-caches a warm-up key after
the rebalance: re-publishing the warm-up keys at the end, the first decision per key must come
from Redis (or the service), never from the LRU.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from harness.drills import Publisher, Tail, account, clickhouse_query, clickhouse_rows, record
from harness.procs import start_worker
from stream_engine.settings import Settings
from stream_engine.workload import Workload

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(180)]


async def test_survivor_takes_over_and_drops_revoked_caches(
    drill_settings: Settings, propositions: object, tmp_path: Path
) -> None:
    s1 = drill_settings.with_overrides(data_dir=tmp_path / "w1", worker_name="w1")
    s2 = drill_settings.with_overrides(data_dir=tmp_path / "w2", worker_name="w2")
    warmup, stream = Workload("infra", seed=21).alerts(100), Workload("ci_failures", seed=22).alerts(1500)
    w1, w2 = await asyncio.gather(
        asyncio.to_thread(start_worker, s1, tmp_path, "w1"), asyncio.to_thread(start_worker, s2, tmp_path, "w2")
    )
    try:
        async with Tail(s1.kafka_bootstrap, s1.topic_decisions) as tail, Publisher(s1.kafka_bootstrap, s1.topic_alerts) as pub:
            await pub.send(warmup)
            await tail.wait_ids([a["id"] for a in warmup], 60, "warm-up decisions")
            sending = asyncio.create_task(pub.send(stream, per_second=400))
            await tail.wait_for(lambda r: len(r) >= 400, 60, "decisions from both workers")
            assert not sending.done(), "the leave must happen mid-stream"
            stopped_wall = time.time()
            stopped_at = time.monotonic()
            assert await asyncio.to_thread(w1.stop) == 0
            w1_gone_index = len(tail.records)
            await sending
            await tail.wait_ids([a["id"] for a in stream], 120, "decisions after the leave")

            # The warm-up keys again, new ids, once the survivor owns everything.
            again = [{**a, "id": "again-" + a["id"]} for a in warmup]
            await pub.send(again)
            decisions = await tail.wait_ids([a["id"] for a in warmup + stream + again], 60, "re-published keys")
    finally:
        w1.stop()
        w2.stop()

    w1_partitions = {r[0] for r in clickhouse_query(s1, "SELECT DISTINCT partition FROM proposition_log")}
    w2_before = {
        r[0]
        for r in clickhouse_query(
            s2,
            "SELECT DISTINCT key FROM proposition_log WHERE decided_at < fromUnixTimestamp64Milli({t:Int64}, 'UTC')",
            {"t": int(stopped_wall * 1000)},
        )
    }
    assert w1_partitions and w2_before, "both workers had partitions before the leave"
    takeover = [
        tail.arrivals[i]
        for i in range(w1_gone_index, len(tail.records))
        if pub.positions.get(tail.records[i]["alert_id"], (-1, 0))[0] in w1_partitions
    ]
    assert takeover, "the survivor decided alerts of the leaver's partitions"

    ids = [a["id"] for a in warmup + stream + again]
    logs = [clickhouse_rows(s1), clickhouse_rows(s2)]
    in_clickhouse = logs[0].ids | logs[1].ids
    row = record(account("2 worker leaves group", ids, decisions, len(in_clickhouse), takeover[0] - stopped_at, engine=s1.engine))
    assert row.missing == 0
    assert in_clickhouse == set(ids)
    counts = Counter(d["alert_id"] for d in decisions)
    assert max(counts.values()) <= 2, "one rebalance re-delivers an alert at most once"
    for log in logs:
        assert log.rows == len(log.ids), "duplicates collapse within each worker's proposition_log FINAL"

    first_by_key: dict[str, dict] = {}
    for d in sorted((d for d in decisions if d["alert_id"].startswith("again-")), key=lambda d: d["decided_at"]):
        first_by_key.setdefault(d["key"], d)
    cached_by_survivor = {k: d["cache_tier"] for k, d in first_by_key.items() if k in w2_before}
    assert cached_by_survivor, "some warm-up keys were in the survivor's LRU before the rebalance"
    assert set(cached_by_survivor.values()) <= {"redis", "service"}, cached_by_survivor
