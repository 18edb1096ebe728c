"""Drills 11 and 12: the broker refuses records that are too large for their topic.

11. The decisions topic takes records up to 3,000 bytes (``max.message.bytes``); for a few alerts
    the proposition service answers with a 4 KB rationale (a rule the drill adds), so their
    decisions are too large. Each is a problem of its own record:
    dead-lettered as ``decision_too_large`` with its original bytes, while the stream goes on
    (before: an endless "outage", and aiokafka's idempotent producer then failed every later send
    to that partition with OutOfOrderSequenceNumber). Then a burst of such alerts exceeds the
    poison cap (``poison_max_per_minute``): the worker stops dead-lettering, logs it, counts it in
    ``batch_failures{error="PoisonRateExceeded"}`` and retries as for an outage, until the
    operator raises the topic's limit: those decisions are then published, not diverted.
12. The DLQ takes records up to 1,500 bytes while poison arrives: a dead letter too large for it is
    sent without its original bytes (the error says so); small ones arrive whole; the valid
    alerts around them are decided, nothing stalls.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path

import httpx
import pytest

from harness.drills import Publisher, Tail, account, clickhouse_rows, record, scaled
from harness.kafka import alter_topic_config
from harness.procs import Proc, admin_headers, start_worker, wait_until
from stream_engine.models import DeadLetter
from stream_engine.settings import Settings
from stream_engine.workload import Workload

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(300)]

BIG_REPO = "big-decision"  # the drill's rule answers this repo with a 4 KB rationale


def big_alert(alert_id: str) -> dict[str, object]:
    return {"id": alert_id, "type": "ci_failure", "timestamp": 1_700_000_000, "severity": "high", "source": "drill",
            "attributes": {"repo": BIG_REPO, "job": alert_id, "error_class": "Unheard"}}  # fmt: skip


def add_big_rule(s: Settings) -> None:
    """A rule whose proposition no decision can carry within 3,000 bytes (keys are bounded, so
    only the service's answer can make a decision that large)."""
    rules = httpx.get(f"{s.propositions_url}/v1/rules", headers=admin_headers(s), timeout=10).json()
    big = {"action": "escalate_to_a_human", "confidence": 0.5, "rationale": "x" * 4000}
    rules["types"]["ci_failure"].append({"match": {"repo": BIG_REPO}, "propositions": [big]})
    rules["version"] = "drill-11"
    answer = httpx.put(f"{s.propositions_url}/v1/rules", json=rules, headers=admin_headers(s), timeout=10)
    assert answer.status_code == 200, answer.text


def api_url(worker: Proc) -> str:
    found = wait_until(lambda: re.search(r"api listening on (http://[0-9.:]+)", worker.log()), 30, "api url", worker)
    return found.group(1)


async def test_decisions_too_large_for_their_topic_are_dead_lettered_until_the_poison_cap(
    make_topics, propositions: Proc, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    s = make_topics(configs={"topic_decisions": {"max.message.bytes": "3000"}}).with_overrides(poison_max_per_minute=5)
    normal = Workload("ci_failures", seed=111).alerts(scaled(300))
    big = [big_alert(f"big-{i}") for i in range(3)]
    burst = [big_alert(f"burst-{i}") for i in range(20)]
    first, second = normal[: len(normal) // 2], normal[len(normal) // 2 :]
    mixed = first[:]
    for i, b in enumerate(big):  # spread out: each is a small share of its batch
        mixed.insert((i + 1) * len(first) // (len(big) + 1), b)
    ids = [a["id"] for a in normal + big + burst]

    add_big_rule(s)
    worker = await asyncio.to_thread(start_worker, s, tmp_path, "worker")
    try:
        async with Tail(s.kafka_bootstrap, s.topic_decisions) as tail, Tail(
            s.kafka_bootstrap, s.topic_dlq, DeadLetter.from_json
        ) as dlq, Publisher(s.kafka_bootstrap, s.topic_alerts) as pub:
            await pub.send(mixed, per_second=200)
            await tail.wait_ids([a["id"] for a in first], 60, "the alerts around the oversized decisions")
            await dlq.wait_for(lambda r: len(r) >= len(big), 30, "a dead letter per oversized decision")
            assert not tail.decided() & {a["id"] for a in big}

            await pub.send(burst)
            await pub.send(second, per_second=200)
            await asyncio.to_thread(wait_until, lambda: "poison rate" in worker.log(), 60, "the poison cap", worker)
            async with httpx.AsyncClient(base_url=api_url(worker), timeout=10) as http:
                metrics = (await http.get("/metrics")).text
            assert re.search(r'batch_failures_total\{error="PoisonRateExceeded"\} [1-9]', metrics), metrics[-3000:]

            await alter_topic_config(s, s.topic_decisions, {"max.message.bytes": "1048588"})  # the operator's fix
            await asyncio.sleep(1.0)  # the tail reads the dead letters sent before the cap
            wanted = {a["id"] for a in normal + burst} - {alert_id(d) for d in dlq.records}
            decisions = await tail.wait_ids(wanted, 90, "decisions once the topic takes them")
            assert worker.alive
    finally:
        worker.stop()

    dead = {alert_id(d): d for d in dlq.records}
    assert {d.reason for d in dead.values()} == {"decision_too_large"}, Counter(d.reason for d in dead.values())
    assert {a["id"] for a in big} <= dead.keys(), "every oversized decision of the first part was dead-lettered"
    assert len(dead) <= s.poison_max_per_minute, f"{len(dead)} dead letters: the cap let more through"
    assert all(BIG_REPO.encode() in d.original and "3000 bytes" in d.error for d in dead.values())
    assert not dead.keys() & tail.decided(), "an alert is either decided or dead-lettered"
    log = clickhouse_rows(s)
    decided_ids = [i for i in ids if i not in dead]
    row = record(account("11 decisions topic refuses", decided_ids, decisions, log.rows, None, engine=s.engine))
    assert row.missing == 0
    assert log.ids == set(decided_ids)


def alert_id(dead: DeadLetter) -> str:
    import orjson

    return str(orjson.loads(dead.original)["id"])


async def test_dead_letters_too_large_for_the_dlq_lose_their_original_not_the_stream(
    make_topics, propositions: Proc, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    s = make_topics(configs={"topic_dlq": {"max.message.bytes": "1500"}})
    valid = Workload("typical", seed=121).alerts(scaled(200))
    small_poison = [b"not json, small %d" % i for i in range(5)]
    big_poison = [b"not json, big %d " % i + b"y" * 2000 for i in range(5)]
    worker = await asyncio.to_thread(start_worker, s, tmp_path, "worker")
    try:
        async with Tail(s.kafka_bootstrap, s.topic_decisions) as tail, Tail(
            s.kafka_bootstrap, s.topic_dlq, DeadLetter.from_json
        ) as dlq, Publisher(s.kafka_bootstrap, s.topic_alerts) as pub:
            half = len(valid) // 2
            await pub.send(valid[:half])
            positions = await pub.send_raw([p for pair in zip(small_poison, big_poison) for p in pair])
            await pub.send(valid[half:])
            decisions = await tail.wait_ids([a["id"] for a in valid], 60, "the valid alerts around the poison")
            await dlq.wait_for(lambda r: {(d.partition, d.offset) for d in r} >= set(positions), 60, "a dead letter per poison")
            assert worker.alive
    finally:
        worker.stop()

    by_position = {(d.partition, d.offset): d for d in dlq.records}
    sent = dict(zip(positions, [p for pair in zip(small_poison, big_poison) for p in pair]))
    for position, payload in sent.items():
        d = by_position[position]
        assert d.reason == "not_json", d
        if payload in small_poison:
            assert d.original == payload, "a dead letter that fits arrives whole"
        else:
            assert d.original == b"" and "omitted" in d.error, d.error
    log = clickhouse_rows(s)
    ids = [a["id"] for a in valid]
    row = record(account("12 DLQ refuses", ids, decisions, log.rows, None, engine=s.engine))
    assert row.missing == 0
    assert log.ids == set(ids)
