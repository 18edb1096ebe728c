"""The default engine (aiokafka: a plain consumer group) named explicitly, on the real stack: one
decision per valid alert and a dead letter per malformed one, the lag probe on its consumer,
kill -9 + restart, two workers sharing a group; and it never starts faust. (The drills in
tests/reliability run on both engines; so does the cache-tier test in test_pipeline_e2e.py.)"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path

import httpx
import pytest

from harness.drills import Publisher, Tail, assert_crash_redelivery_is_the_uncommitted_suffix, clickhouse_rows
from harness.kafka import collect, publish
from harness.procs import Proc, start_worker, wait_until
from stream_engine.models import DeadLetter
from stream_engine.settings import Settings
from stream_engine.workload import Workload, malformed_payloads

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

API_URL = re.compile(r"api listening on (http://[0-9.]+:\d+)")
ASSIGNED = re.compile(r"partitions assigned: \[([0-9, ]*)\]")


@pytest.fixture
def s(e2e_settings: Settings) -> Settings:
    return e2e_settings.with_overrides(engine="aiokafka")


def ids_done(expected: set[str]):  # type: ignore[no-untyped-def]
    return lambda records: expected <= {r["alert_id"] for r in records}


def last_assignment(proc: Proc) -> list[int] | None:
    found = ASSIGNED.findall(proc.log())
    return [int(p) for p in found[-1].split(",") if p.strip()] if found else None


def worker_in_log(proc: Proc) -> None:
    assert "faust" not in proc.log().lower(), "the aiokafka engine must not start faust"


async def test_every_valid_alert_gets_one_decision_and_every_malformed_one_a_dead_letter(
    s: Settings, propositions: Proc, tmp_path: Path
) -> None:
    alerts = Workload("typical", seed=7).alerts(400)
    bad = malformed_payloads()
    worker = start_worker(s, tmp_path)
    try:
        url = wait_until(lambda: API_URL.search(worker.log()), 30, "api listening", worker).group(1)
        await publish(s.kafka_bootstrap, s.topic_alerts, [*alerts[:200], *[p for p, _ in bad], *alerts[200:]])
        expected = {a["id"] for a in alerts}
        decisions = await collect(s.kafka_bootstrap, s.topic_decisions, ids_done(expected), timeout=90)
        dead = await collect(
            s.kafka_bootstrap, s.topic_dlq, lambda r: len(r) >= len(bad), timeout=30, decode=DeadLetter.from_json
        )
        health = httpx.get(f"{url}/healthz").json()
        stats = httpx.get(f"{url}/metrics").text
    finally:
        code = worker.stop()
    assert code == 0, worker.log()[-3000:]
    worker_in_log(worker)

    counts = Counter(d["alert_id"] for d in decisions)
    assert set(counts) == expected
    assert max(counts.values()) == 1, "a clean run must not duplicate decisions"
    modes = Counter(d["mode"] for d in decisions)
    assert modes["auto"] and modes["review"] and modes["escalate"], modes
    assert sorted((dl.original, dl.reason) for dl in dead) == sorted(bad)
    assert all(dl.source_topic == s.topic_alerts and dl.error for dl in dead)

    assert health["status"] == "ok" and health["partitions"] == list(range(6)), health
    # The lag probe reads the aiokafka consumer: every partition has a lag gauge.
    lag_lines = [line for line in stats.splitlines() if line.startswith("stream_engine_consumer_lag")]
    assert len(lag_lines) == 6, lag_lines


@pytest.mark.timeout(180)
async def test_kill_9_mid_stream_then_restart_loses_nothing(s: Settings, propositions: Proc, tmp_path: Path) -> None:
    warmup, stream = Workload("typical", seed=11).alerts(50), Workload("typical", seed=12).alerts(2000)
    ids = [a["id"] for a in warmup + stream]
    worker = await asyncio.to_thread(start_worker, s, tmp_path, "worker-1")
    restarted: Proc | None = None
    try:
        async with Tail(s.kafka_bootstrap, s.topic_decisions) as tail, Publisher(s.kafka_bootstrap, s.topic_alerts) as pub:
            await pub.send(warmup)
            await tail.wait_ids([a["id"] for a in warmup], 60, "warm-up decisions")
            sending = asyncio.create_task(pub.send(stream, per_second=400))
            await tail.wait_for(lambda r: len(r) >= 500, 60, "500 decisions before the kill")
            assert not sending.done(), "the kill must land mid-stream"
            worker.kill9()
            await asyncio.sleep(1.5)  # let the tail read what the dead worker had acknowledged
            first_run = list(tail.records)
            restarted = await asyncio.to_thread(start_worker, s, tmp_path, "worker-2")
            await sending
            decisions = await tail.wait_ids(ids, 120, "decisions after the restart")
    finally:
        worker.stop()
        if restarted is not None:
            restarted.stop()

    assert set(ids) <= {d["alert_id"] for d in decisions}, "nothing is missing"
    assert_crash_redelivery_is_the_uncommitted_suffix(decisions, first_run, pub.positions)

    log = clickhouse_rows(s)
    assert log.ids == set(ids), "every decision has its ClickHouse row"


@pytest.mark.timeout(180)
async def test_two_workers_share_partitions_and_the_survivor_takes_over(
    s: Settings, propositions: Proc, tmp_path: Path
) -> None:
    s1 = s.with_overrides(data_dir=tmp_path / "w1", worker_name="w1")
    s2 = s.with_overrides(data_dir=tmp_path / "w2", worker_name="w2")
    stream = Workload("ci_failures", seed=22).alerts(1500)
    w1, w2 = await asyncio.gather(
        asyncio.to_thread(start_worker, s1, tmp_path, "w1"), asyncio.to_thread(start_worker, s2, tmp_path, "w2")
    )
    try:

        def split() -> tuple[list[int], list[int]] | None:
            a, b = last_assignment(w1), last_assignment(w2)
            return (a, b) if a and b and sorted(a + b) == list(range(6)) else None

        shared = await asyncio.to_thread(wait_until, split, 60, "both workers hold partitions", w2)
        async with Tail(s.kafka_bootstrap, s.topic_decisions) as tail, Publisher(s.kafka_bootstrap, s.topic_alerts) as pub:
            sending = asyncio.create_task(pub.send(stream, per_second=400))
            await tail.wait_for(lambda r: len(r) >= 400, 60, "decisions from both workers")
            assert not sending.done(), "the leave must happen mid-stream"
            assert await asyncio.to_thread(w1.stop) == 0, w1.log()[-3000:]
            await asyncio.to_thread(
                wait_until, lambda: last_assignment(w2) == list(range(6)), 60, "survivor owns every partition", w2
            )
            await sending
            decisions = await tail.wait_ids([a["id"] for a in stream], 120, "decisions after the leave")
    finally:
        w1.stop()
        w2.stop()

    assert set(shared[0]).isdisjoint(shared[1])
    counts = Counter(d["alert_id"] for d in decisions)
    assert {a["id"] for a in stream} <= counts.keys(), "nothing is missing"
    assert max(counts.values()) <= 2, "one rebalance re-delivers an alert at most once"
    logs = [clickhouse_rows(s1), clickhouse_rows(s2)]
    assert logs[0].ids and logs[1].ids, "both workers decided alerts"
    leaver_partitions = set(shared[0])
    taken_over = {a["id"] for a in stream if pub.positions[a["id"]][0] in leaver_partitions} & logs[1].ids
    assert taken_over, "the survivor decided alerts of the leaver's partitions"
    assert logs[0].ids | logs[1].ids >= {a["id"] for a in stream}
