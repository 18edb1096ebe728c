"""Exactly-once drills (``delivery=exactly_once``; the aiokafka engine, the only one that offers it:
the faust engine refuses the setting, tests/unit/test_settings_model.py).

* E1: ``kill -9`` of the worker mid-stream, then a restart (same data dir, same group).
* E2: two workers; one is killed with ``kill -9``; the other takes its partitions over.
* E3: the Kafka broker is killed (``kill -9``) mid-stream and restarted (a private broker).

Each drill creates its condition and asserts that it happened: every transaction waits 1 s
before it commits (E1, E2; E3: every decision-log write waits 1 s; harness/faults.py), so a
batch's decisions sit acknowledged in an open transaction (and, E1 and E2, its rows journaled
but held) for a second, and the kill comes once a ``read_uncommitted`` consumer of ``decisions``
shows decisions a ``read_committed`` one does not (an open transaction). After E1 and E2,
records of the killed worker's aborted transaction are in the log (the ``read_uncommitted``
consumer sees them) and the ``read_committed`` one does not, and the restarted worker's journal
replay found the aborted transaction's rows and dropped them. Then, in every
drill: the ``read_committed`` consumer sees each published alert's decision exactly once (0
duplicates, 0 missing), and ClickHouse ``count() - uniqExact(alert_id)`` WITHOUT FINAL is 0 in
``decision_audit`` and in ``proposition_log`` (every alert has its row).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from harness.brokers import PrivateKafka
from harness.drills import Publisher, Tail, account, clickhouse_query, journal_segments, record, rows_without_final, scaled
from harness.faults import fault_env
from harness.procs import Proc, start_propositions, start_worker, wait_until
from stream_engine.settings import Settings
from stream_engine.workload import Workload

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(300)]

SINK_DELAY_S = 1.0
COMMIT_DELAY_S = 1.0
ENGINE = "aiokafka exactly_once"
TABLES = ("decision_audit", "proposition_log")


@pytest.fixture
def eos_settings(worker_settings: Settings) -> Settings:
    return worker_settings.with_overrides(engine="aiokafka", delivery="exactly_once")


def tails(s: Settings) -> tuple[Tail, Tail]:
    """(read_committed, read_uncommitted) consumers of ``decisions``."""
    return (
        Tail(s.kafka_bootstrap, s.topic_decisions, isolation_level="read_committed"),
        Tail(s.kafka_bootstrap, s.topic_decisions, isolation_level="read_uncommitted"),
    )


async def when_a_transaction_is_open(
    committed: Tail, raw: Tail, pub: Publisher, partitions: set[int] | None, act: Callable[[], object]
) -> set[str]:
    """Run ``act`` (the kill) once ``raw`` shows decisions (of ``partitions``) that ``committed``
    does not: acknowledged records of a transaction not committed. Returns their ids."""
    deadline = time.monotonic() + 60
    while True:
        done = committed.decided()
        open_ids = {
            r["alert_id"] for r in raw.records
            if r["alert_id"] not in done and r["alert_id"] in pub.positions
            and (partitions is None or pub.positions[r["alert_id"]][0] in partitions)
        }  # fmt: skip
        if open_ids:
            act()
            return open_ids
        assert time.monotonic() < deadline, "no open transaction to interrupt"
        await asyncio.sleep(0.02)


def aborted_ids(committed: Iterable[dict[str, object]], raw: Iterable[dict[str, object]]) -> set[str]:
    """Ids with more records in the log (read_uncommitted) than read_committed sees: aborted ones."""
    seen, all_ = Counter(r["alert_id"] for r in committed), Counter(r["alert_id"] for r in raw)
    return {str(i) for i, n in all_.items() if n > seen[i]}


def assert_exactly_once(
    drill: str, ids: list[str], decisions: list[dict[str, object]], stores: list[Settings], recover_s: float | None
) -> None:
    """Each id decided once on the topic (read_committed) and stored once in ClickHouse, without FINAL.
    ``stores``: the workers' settings; those sharing a ClickHouse database count once."""
    stores = list({(st.effective_clickhouse_url, st.clickhouse_database): st for st in stores}.values())
    counts = {t: [rows_without_final(s, t) for s in stores] for t in TABLES}
    audit_ids: set[str] = set()
    for s in stores:
        audit_ids |= {str(r[0]) for r in clickhouse_query(s, "SELECT DISTINCT alert_id FROM decision_audit")}
    log_rows = sum(c.rows for c in counts["proposition_log"])
    row = record(account(drill, ids, decisions, log_rows, recover_s, engine=ENGINE))
    assert row.missing == 0, f"{row.missing} alerts without a committed decision"
    assert row.duplicates == 0, f"{row.duplicates} duplicate decisions seen read_committed"
    for table, per_store in counts.items():
        # Across stores (one embedded ClickHouse per worker): count() - uniqExact(alert_id) of their union.
        rows = sum(c.rows for c in per_store)
        assert rows == len(set(ids)), f"{table}: {rows} rows for {len(set(ids))} alerts without FINAL ({per_store})"
        assert all(c.duplicates == 0 for c in per_store), f"{table}: duplicates without FINAL ({per_store})"
    assert audit_ids == set(ids), "every committed decision has its ClickHouse row, and only those"


async def test_e1_kill_9_mid_stream_then_restart_exactly_once(eos_settings: Settings, propositions: Proc, tmp_path: Path) -> None:
    s = eos_settings
    warmup, stream = Workload("typical", seed=41).alerts(50), Workload("typical", seed=42).alerts(scaled(8000))
    slow_commit = fault_env(tmp_path, commit_delay_s=COMMIT_DELAY_S)
    worker = await asyncio.to_thread(start_worker, s, tmp_path, "worker-1", slow_commit)
    restarted: Proc | None = None
    committed, raw = tails(s)
    try:
        async with committed, raw, Publisher(s.kafka_bootstrap, s.topic_alerts) as pub:
            await pub.send(warmup)
            await committed.wait_ids([a["id"] for a in warmup], 60, "warm-up decisions")
            enough = asyncio.Event()
            sending = asyncio.create_task(pub.send(stream, per_second=400, until=enough))
            await committed.wait_for(lambda r: len(r) >= len(warmup) + 200, 60, "decisions before the kill")
            open_at_kill = await when_a_transaction_is_open(committed, raw, pub, None, worker.kill9)
            killed_at = time.monotonic()
            assert not sending.done(), "the kill must land mid-stream"
            first_run = len(committed.records)

            restarted = await asyncio.to_thread(start_worker, s, tmp_path, "worker-2")
            await asyncio.sleep(2)
            enough.set()
            await sending
            ids = [a["id"] for a in warmup + stream if a["id"] in pub.positions]
            decisions = await committed.wait_ids(ids, 120, "decisions after the restart")
            await raw.wait_ids(ids, 30, "the log read uncommitted")
            await asyncio.sleep(1)  # the last transactions' records and markers reach both tails
            aborted = aborted_ids(committed.records, raw.records)
            recover_s = committed.arrivals[first_run] - killed_at if len(committed.arrivals) > first_run else None
        await asyncio.to_thread(wait_until, lambda: journal_segments(s) == 0, 60, "the journal drained", restarted)
    finally:
        worker.stop()
        if restarted is not None:
            restarted.stop()

    assert aborted, f"no record of an aborted transaction in the log ({len(open_at_kill)} decisions were uncommitted at the kill)"
    assert open_at_kill & aborted, "the decisions open at the kill were aborted, then published again"
    assert_dropped_at_replay(restarted)
    assert_exactly_once("E1 worker kill -9 (exactly once)", ids, decisions, [s], recover_s)


async def test_e2_kill_9_one_of_two_workers_exactly_once(eos_settings: Settings, propositions: Proc, tmp_path: Path) -> None:
    s1 = eos_settings.with_overrides(data_dir=tmp_path / "w1", worker_name="w1")
    s2 = eos_settings.with_overrides(data_dir=tmp_path / "w2", worker_name="w2")
    warmup, stream = Workload("typical", seed=43).alerts(60), Workload("typical", seed=44).alerts(scaled(8000))
    slow_commit = fault_env(tmp_path, commit_delay_s=COMMIT_DELAY_S)
    w1, w2 = await asyncio.gather(
        asyncio.to_thread(start_worker, s1, tmp_path, "w1", slow_commit),
        asyncio.to_thread(start_worker, s2, tmp_path, "w2", slow_commit),
    )
    committed, raw = tails(s1)
    try:
        async with committed, raw, Publisher(s1.kafka_bootstrap, s1.topic_alerts) as pub:
            await pub.send(warmup)
            await committed.wait_ids([a["id"] for a in warmup], 60, "warm-up decisions")
            w1_partitions = last_assignment(w1)
            assert w1_partitions and w1_partitions != set(range(6)), "both workers consume"
            enough = asyncio.Event()
            sending = asyncio.create_task(pub.send(stream, per_second=400, until=enough))
            await committed.wait_for(lambda r: len(r) >= len(warmup) + 200, 60, "decisions from both workers")
            open_at_kill = await when_a_transaction_is_open(committed, raw, pub, w1_partitions, w1.kill9)
            killed_at = time.monotonic()
            assert not sending.done(), "the kill must land mid-stream"
            first_run = len(committed.records)
            await asyncio.sleep(s1.session_timeout_s + 2)  # the survivor takes over while the stream flows
            enough.set()
            await sending
            ids = [a["id"] for a in warmup + stream if a["id"] in pub.positions]
            decisions = await committed.wait_ids(ids, 120, "decisions after the takeover")
            await raw.wait_ids(ids, 30, "the log read uncommitted")
            await asyncio.sleep(1)
            aborted = aborted_ids(committed.records, raw.records)
            takeover = [t for r, t in zip(committed.records[first_run:], committed.arrivals[first_run:])
                        if pub.positions[r["alert_id"]][0] in w1_partitions]  # fmt: skip
            assert w2.alive
        # The crashed worker comes back (its own data dir): its journal's committed rows arrive, its
        # aborted transaction's rows (if journaled) do not.
        w1 = await asyncio.to_thread(start_worker, s1, tmp_path, "w1-again")
        await asyncio.to_thread(wait_until, lambda: journal_segments(s1) == 0, 60, "w1's journal replayed", w1)
    finally:
        w1.stop()
        w2.stop()

    assert aborted, f"no record of an aborted transaction in the log ({len(open_at_kill)} decisions were uncommitted at the kill)"
    assert {pub.positions[i][0] for i in aborted} <= w1_partitions, "only the killed worker's transactions were aborted"
    assert_dropped_at_replay(w1)
    recover_s = takeover[0] - killed_at if takeover else None
    assert_exactly_once("E2 one of two workers kill -9 (exactly once)", ids, decisions, [s1, s2], recover_s)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateKafka]:
    kafka = PrivateKafka(Settings(), tmp_path_factory.mktemp("broker") / "stack")
    kafka.up()
    try:
        yield kafka
    finally:
        kafka.down()


@pytest.mark.xfail(
    strict=False,
    reason="known open bug (issue 13): across a broker kill -9 a transaction can be published twice "
    "(clean-clone CI 2026-12-03: 15 of 2,000 decisions seen twice read_committed); reported as xfailed, never as passed",
)
async def test_e3_broker_kill_9_and_restart_exactly_once(
    broker: PrivateKafka, eos_settings: Settings, unique: Callable[[str], str], tmp_path: Path
) -> None:
    from stream_engine.kafka import apply_topics, prefixed_settings

    broker.up()
    s = prefixed_settings(eos_settings.with_overrides(kafka_bootstrap=broker.bootstrap), unique("b") + ".")
    report = await apply_topics(s)
    assert report.in_sync, report.lines()
    warmup, stream = Workload("typical", seed=45).alerts(50), Workload("typical", seed=46).alerts(scaled(8000))
    service = start_propositions(s, tmp_path)
    worker: Proc | None = None
    committed, raw = tails(s)
    try:
        worker = await asyncio.to_thread(start_worker, s, tmp_path, "worker", fault_env(tmp_path, sink_delay_s=SINK_DELAY_S))
        async with committed, raw, Publisher(s.kafka_bootstrap, s.topic_alerts) as pub:
            await pub.send(warmup)
            await committed.wait_ids([a["id"] for a in warmup], 60, "warm-up decisions")
            enough = asyncio.Event()
            sending = asyncio.create_task(pub.send(stream, per_second=300, until=enough))
            await committed.wait_for(lambda r: len(r) >= len(warmup) + 200, 60, "decisions before the crash")
            open_at_crash = await when_a_transaction_is_open(committed, raw, pub, None, lambda: broker.kill9(1))
            assert not sending.done(), "the crash must happen mid-stream"
            await asyncio.sleep(3)  # the worker's sends, commits and fetches fail meanwhile
            assert await asyncio.to_thread(broker.up) == ["started"]
            back_at = time.monotonic()
            seen_before_up = len(committed.records)
            await asyncio.sleep(3)  # the stream goes on after the restart
            enough.set()
            await sending
            ids = [a["id"] for a in warmup + stream if a["id"] in pub.positions]
            decisions = await committed.wait_ids(ids, 150, "decisions after the broker restart")
            await raw.wait_ids(ids, 30, "the log read uncommitted")
            await asyncio.sleep(1)
            aborted = aborted_ids(committed.records, raw.records)
            recover_s = next((t - back_at for t in committed.arrivals[seen_before_up:] if t >= back_at), None)
            assert worker.alive, "the worker reconnected by itself, no restart"
        await asyncio.to_thread(wait_until, lambda: journal_segments(s) == 0, 60, "the journal drained", worker)
    finally:
        if worker is not None:
            worker.stop()
        service.stop()

    committed_ids = Counter(str(d["alert_id"]) for d in decisions)
    assert open_at_crash and all(committed_ids[i] == 1 for i in open_at_crash), "the transactions open at the crash ended once"
    print(f"E3: {len(open_at_crash)} decisions uncommitted at the crash, {len(aborted)} alerts with records of aborted transactions")
    assert_exactly_once("E3 broker kill -9 (exactly once)", ids, decisions, [s], recover_s)


def assert_dropped_at_replay(worker: Proc) -> None:
    """The worker's journal replay met rows of a transaction without a settle marker (the killed
    worker's open one) and dropped them: its group never committed that transaction."""
    import re

    found = [(int(k), int(n)) for k, n in re.findall(r"replay filter kept (\d+) of (\d+) undecided row", worker.log())]
    assert found, "the replay met no rows of an unsettled transaction"
    assert sum(n - k for k, n in found) > 0, f"no unsettled row was dropped at the replay: {found}"


def last_assignment(worker: Proc) -> set[int]:
    import re

    found = re.findall(r'"msg":\s*"partitions assigned: \[([0-9, ]*)\]"', worker.log())
    assert found, worker.log()[-2000:]
    return {int(p) for p in found[-1].split(",") if p.strip()}
