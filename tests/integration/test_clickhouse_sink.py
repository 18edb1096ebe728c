"""The sink against the real embedded engine: durability, flushing, backpressure, replay, dedup."""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stream_engine.sinks.clickhouse.client import connect
from stream_engine.sinks.clickhouse.journal import Journal, encode_batch
from stream_engine.sinks.clickhouse.sink import ClickHouseSink
from tests.integration.clickhouse_data import make_metrics, make_rows

pytestmark = pytest.mark.integration


def _count(client: Any, table: str, final: bool = False) -> int:
    return int(client.query(f"SELECT count() FROM {table}{' FINAL' if final else ''}").result_rows[0][0])


async def _eventually(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def _clickhouse_down() -> Any:
    """A client factory for a ClickHouse that refuses connections."""
    raise ConnectionRefusedError("ClickHouse unreachable")


def _sink(url: str, database: str, journal: Path, **kw: Any) -> ClickHouseSink:
    params: dict[str, Any] = {"flush_rows": 1000, "flush_interval_s": 0.1, "retry_initial_s": 0.01, "retry_max_s": 0.05}
    params.update(kw)
    return ClickHouseSink(lambda: connect(url, database), journal, **params)


async def test_every_row_written_arrives(ch_url: str, ch_database: str, ch_client: Any, tmp_path: Path) -> None:
    sink = _sink(ch_url, ch_database, tmp_path / "j", flush_rows=700)
    await sink.start()
    rows, metrics = make_rows(5000), make_metrics(40)
    for i in range(0, 5000, 125):
        await sink.write(rows[i : i + 125], metrics[i // 125 : i // 125 + 1])
    await sink.stop()
    assert _count(ch_client, "proposition_log") == 5000
    assert _count(ch_client, "latency_metrics") == 40
    stored = {r[0]: r for r in ch_client.query("SELECT alert_id, offset, action, confidence FROM proposition_log").result_rows}
    assert stored["a11"][2:] == (None, None) and stored["a12"][2] == "rerun"
    assert {r[1] for r in stored.values()} == set(range(5000))
    stats = sink.stats()
    assert stats["rows_inserted"] == 5000 and stats["flushes"] >= 2 and stats["journal_segments"] == 0
    # the rollup saw every row
    assert int(ch_client.query("SELECT countMerge(decisions) FROM proposition_minute").result_rows[0][0]) == 5000


async def test_flush_by_size(ch_url: str, ch_database: str, ch_client: Any, tmp_path: Path) -> None:
    sink = _sink(ch_url, ch_database, tmp_path / "j", flush_rows=100, flush_interval_s=3600)
    await sink.start()
    await sink.write(make_rows(60, prefix="x"), [])
    await sink.write(make_rows(60, prefix="y"), [])  # 120 >= 100: a flush without waiting for time
    await _eventually(lambda: _count(ch_client, "proposition_log") == 120)
    await sink.write(make_rows(10, prefix="z"), [])  # below the size, and the interval is an hour
    await asyncio.sleep(0.3)
    assert _count(ch_client, "proposition_log") == 120
    assert sink.stats()["buffered_rows"] == 10
    await sink.stop()  # stop flushes the rest
    assert _count(ch_client, "proposition_log") == 130


async def test_flush_by_time(ch_url: str, ch_database: str, ch_client: Any, tmp_path: Path) -> None:
    sink = _sink(ch_url, ch_database, tmp_path / "j", flush_rows=1_000_000, flush_interval_s=0.2)
    await sink.start()
    await sink.write(make_rows(7), [])
    await _eventually(lambda: sink.stats()["flushes"] == 1)  # no size trigger: the interval did it
    assert _count(ch_client, "proposition_log") == 7
    await sink.stop()


class _GatedClient:
    """The real client, whose inserts wait for a gate: ClickHouse slow but healthy."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.gate = threading.Event()
        self.inserting = threading.Event()

    def insert(self, table: str, data: Any, **kwargs: Any) -> Any:
        self.inserting.set()
        assert self.gate.wait(30)
        return self.client.insert(table, data, **kwargs)

    def close(self) -> None:
        pass


async def test_backpressure_when_the_buffer_is_full(ch_url: str, ch_database: str, ch_client: Any, tmp_path: Path) -> None:
    gated = _GatedClient(connect(ch_url, ch_database))
    sink = ClickHouseSink(lambda: gated, tmp_path / "j", flush_rows=50, flush_interval_s=0.05, max_buffer_rows=100)  # type: ignore[arg-type,return-value]
    await sink.start()
    await sink.write(make_rows(60, prefix="a"), [])
    await _eventually(gated.inserting.is_set)  # the flush of 60 is in flight, stuck
    await sink.write(make_rows(30, prefix="b"), [])  # 90 <= 100: accepted
    blocked = asyncio.create_task(sink.write(make_rows(30, prefix="c"), []))  # 120 > 100
    await asyncio.sleep(0.3)
    assert not blocked.done(), "write must wait while memory is full and ClickHouse is healthy"
    assert sink.stats()["rows_written"] == 90
    gated.gate.set()
    await asyncio.wait_for(blocked, 10)
    await sink.stop()
    assert _count(ch_client, "proposition_log") == 120
    assert sink.stats()["write_wait_seconds"] > 0 and sink.stats()["spills"] == 0


async def test_clickhouse_down_then_a_new_sink_replays_everything(
    ch_url: str, ch_database: str, ch_client: Any, tmp_path: Path
) -> None:
    journal_dir = tmp_path / "j"
    dead = ClickHouseSink(_clickhouse_down, journal_dir, flush_rows=100, flush_interval_s=0.02, max_buffer_rows=300,
                          retry_initial_s=0.01, retry_max_s=0.02, stop_timeout_s=0.3)  # fmt: skip
    await dead.start()
    rows, now_us = make_rows(2000), int(time.time() * 1_000_000)
    for i in range(0, 2000, 50):
        await asyncio.wait_for(dead.write(rows[i : i + 50], make_metrics(1, start_us=now_us + i)), 10)
    await dead.stop()
    stats = dead.stats()
    assert stats["rows_inserted"] == 0 and stats["failures"] > 0
    assert stats["journal_segments"] >= 1 and stats["journal_bytes"] > 0
    assert _count(ch_client, "proposition_log") == 0

    alive = _sink(ch_url, ch_database, journal_dir, flush_rows=700)
    await alive.start()
    await _eventually(lambda: alive.stats()["replayed_rows"] == 2000)
    await alive.stop()
    assert _count(ch_client, "proposition_log", final=True) == 2000
    assert _count(ch_client, "latency_metrics", final=True) == 40
    assert alive.stats()["journal_segments"] == 0


async def test_replicas_sharing_a_journal_root_lose_nothing_after_a_scale_down(
    ch_url: str, ch_database: str, ch_client: Any, tmp_path: Path
) -> None:
    """Two workers on one journal volume while ClickHouse is down, then one worker left."""

    root = tmp_path / "shared-journal"
    params: dict[str, Any] = {"flush_rows": 50, "flush_interval_s": 0.02, "retry_initial_s": 0.01,
                              "retry_max_s": 0.02, "stop_timeout_s": 0.3, "connect_wait_s": 0.5}  # fmt: skip
    replicas = [ClickHouseSink(_clickhouse_down, root, **params), ClickHouseSink(_clickhouse_down, root, **params)]
    for sink in replicas:
        await sink.start()
    rows = make_rows(400)
    await replicas[0].write(rows[:200], [])
    await replicas[1].write(rows[200:], [])
    for sink in replicas:
        await sink.stop()
    assert sorted(p.name for p in root.glob("slot-*") if list(p.glob("seg-*"))) == ["slot-0", "slot-1"]

    survivor = _sink(ch_url, ch_database, root)  # claims slot-0 and adopts slot-1's segments
    await survivor.start()
    await _eventually(lambda: survivor.stats()["replayed_rows"] == 400)
    await survivor.stop()
    assert _count(ch_client, "proposition_log", final=True) == 400
    assert not list(root.glob("slot-*/seg-*"))


async def test_closed_http_port_counts_as_down(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    sink = ClickHouseSink(lambda: connect(f"http://127.0.0.1:{port}", "x", connect_timeout_s=0.2), tmp_path / "j",
                          flush_interval_s=0.02, retry_initial_s=0.01, retry_max_s=0.02, stop_timeout_s=0.3)  # fmt: skip
    await sink.start()
    await sink.write(make_rows(25), [])
    await sink.stop()
    journal = Journal(tmp_path / "j" / "slot-0")  # the sink's claimed slot
    kept = [r for seg in journal.open() for rows, _ in journal.read(seg) for r in rows]
    assert len(kept) == 25 and sink.stats()["failures"] >= 1


async def test_recovery_while_running_after_spilling(ch_url: str, ch_database: str, ch_client: Any, tmp_path: Path) -> None:
    healthy = threading.Event()

    def flaky() -> Any:
        if not healthy.is_set():
            raise ConnectionRefusedError("down for now")
        return connect(ch_url, ch_database)

    sink = ClickHouseSink(flaky, tmp_path / "j", flush_rows=50, flush_interval_s=0.02, max_buffer_rows=100,
                          retry_initial_s=0.01, retry_max_s=0.02)  # fmt: skip
    await sink.start()
    rows = make_rows(1000)
    for i in range(0, 1000, 20):
        await asyncio.wait_for(sink.write(rows[i : i + 20], []), 10)  # never blocked while failing
    assert sink.stats()["spills"] >= 1
    healthy.set()
    await _eventually(lambda: _count(ch_client, "proposition_log", final=True) == 1000)
    await sink.stop()
    assert sink.stats()["journal_segments"] == 0 and not sink.stats()["failing"]


async def test_torn_journal_tail_is_skipped_on_replay(ch_url: str, ch_database: str, ch_client: Any, tmp_path: Path) -> None:
    journal_dir = tmp_path / "j"
    journal = Journal(journal_dir)
    journal.open()
    journal.append([encode_batch(make_rows(10), [])])
    segment = journal.seal()
    assert segment is not None
    with open(segment, "ab") as f:
        f.write(b'{"r":[["torn')  # the crash hit mid-write; that write never returned
    sink = _sink(ch_url, ch_database, journal_dir)
    await sink.start()
    await _eventually(lambda: sink.stats()["replayed_rows"] == 10)
    await sink.stop()
    assert _count(ch_client, "proposition_log") == 10 and sink.stats()["journal_torn_lines"] == 1


async def test_duplicates_collapse(ch_url: str, ch_database: str, ch_client: Any, tmp_path: Path) -> None:
    sink = _sink(ch_url, ch_database, tmp_path / "j")
    await sink.start()
    rows = make_rows(300)
    await sink.write(rows, [])
    await _eventually(lambda: sink.stats()["rows_inserted"] == 300)
    await sink.write(rows, [])  # journal replay / retried insert: identical rows
    # a Kafka redelivery: same alert, later receive and decision, another worker
    redelivered = rows[5]._replace(received_at_ms=rows[5].received_at_ms + 60_000,
                                   decided_at_ms=rows[5].decided_at_ms + 60_000, worker="w2")  # fmt: skip
    await sink.write([redelivered], [])
    await sink.stop()
    assert _count(ch_client, "proposition_log") >= 300
    assert _count(ch_client, "proposition_log", final=True) == 300
    ch_client.command("OPTIMIZE TABLE proposition_log FINAL")
    assert _count(ch_client, "proposition_log") == 300
    worker = ch_client.query("SELECT worker FROM proposition_log WHERE alert_id = {id:String}", parameters={"id": "a5"})
    assert worker.result_rows == [("w2",)]  # the newest decision won


async def test_from_settings_migrates_and_writes(ch_url: str, tmp_path: Path) -> None:
    from stream_engine.settings import Settings
    from tests.integration.clickhouse_data import unique_database
    database = unique_database("fs")
    settings = Settings(clickhouse_url=ch_url, clickhouse_database=database, data_dir=tmp_path, sink_flush_interval_s=0.05)
    sink = ClickHouseSink.from_settings(settings)
    await sink.start()
    await sink.write(make_rows(3), make_metrics(2))
    await sink.stop()
    client = connect(ch_url, database)
    try:
        assert _count(client, "proposition_log") == 3 and _count(client, "latency_metrics") == 2
        assert (tmp_path / "journal").is_dir()
    finally:
        client.command(f"DROP DATABASE {database}")


def test_the_sinks_column_types_are_the_migrated_tables(ch_client: Any) -> None:
    from stream_engine.sinks.clickhouse.rows import LOG_COLUMNS, LOG_TYPES, METRIC_COLUMNS, METRIC_TYPES

    for table, names, types in (("decision_audit", LOG_COLUMNS, LOG_TYPES), ("proposition_log", LOG_COLUMNS, LOG_TYPES),
                                ("latency_metrics", METRIC_COLUMNS, METRIC_TYPES)):  # fmt: skip
        described = [(r[0], r[1]) for r in ch_client.query(f"DESCRIBE TABLE {table}").result_rows]
        assert described == list(zip(names, types, strict=True)), table


async def test_inserted_values_read_back_exactly(ch_url: str, ch_database: str, ch_client: Any, tmp_path: Path) -> None:
    rows, metrics = make_rows(3), make_metrics(2, start_us=int(time.time() * 1_000_000))
    sink = _sink(ch_url, ch_database, tmp_path / "j")
    await sink.start()
    await sink.write(rows, metrics)
    await _eventually(lambda: sink.stats()["rows_inserted"] == 3 and sink.stats()["metrics_inserted"] == 2)
    await sink.stop()
    got = ch_client.query(
        "SELECT alert_id, toUnixTimestamp64Milli(received_at), toUnixTimestamp64Milli(decided_at), action, confidence,"
        " latency_ms, `partition`, `offset`, propositions, reason FROM proposition_log ORDER BY alert_id"
    ).result_rows
    f32 = lambda x: None if x is None else struct.unpack("f", struct.pack("f", x))[0]  # noqa: E731 (Float32 columns)
    want = sorted(
        (r.alert_id, r.received_at_ms, r.decided_at_ms, r.action, f32(r.confidence), f32(r.latency_ms), r.partition,
         r.offset, r.propositions, r.reason)
        for r in rows
    )  # fmt: skip
    assert [tuple(g) for g in got] == [tuple(w) for w in want]
    got_m = ch_client.query("SELECT toUnixTimestamp64Micro(ts), stage, count, sum_ms FROM latency_metrics ORDER BY ts").result_rows
    assert [tuple(g) for g in got_m] == sorted((m.ts_us, m.stage, m.count, m.sum_ms) for m in metrics)


async def test_a_running_sink_adopts_a_stopped_replicas_segments(
    ch_url: str, ch_database: str, ch_client: Any, tmp_path: Path
) -> None:
    root = tmp_path / "shared-journal"
    survivor = _sink(ch_url, ch_database, root, adopt_interval_s=0.05)
    await survivor.start()  # slot-0
    await survivor.write(make_rows(30, prefix="live"), [])

    gone = ClickHouseSink(_clickhouse_down, root, flush_interval_s=0.02, retry_initial_s=0.01, retry_max_s=0.02,
                          stop_timeout_s=0.3, connect_wait_s=0.5)  # fmt: skip
    await gone.start()  # slot-1
    await gone.write(make_rows(70, prefix="gone"), [])
    await gone.stop()  # scaled away with its rows still in its journal
    await _eventually(lambda: _count(ch_client, "proposition_log", final=True) == 100)
    await survivor.stop()
    assert not list(root.glob("slot-*/seg-*"))


async def test_a_segment_inserted_again_after_a_crash_is_stored_once(
    ch_url: str, ch_database: str, ch_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kill between "inserted" and "segment deleted": the next run re-sends the same blocks, and
    ClickHouse drops them by their deduplication tokens: one copy WITHOUT FINAL."""
    import os

    from tests.faults import failing_calls

    journal_dir = tmp_path / "j"

    def older_server() -> Any:
        """Dependent views not deduplicated unless an insert asks: the default before the engine here (26.9)."""
        client = connect(ch_url, ch_database)
        client.set_client_setting("deduplicate_blocks_in_dependent_materialized_views", "0")
        return client

    crashed = ClickHouseSink(older_server, journal_dir, flush_rows=200, flush_interval_s=3600,
                             retry_initial_s=0.01, retry_max_s=0.05)  # fmt: skip
    now_us = int(time.time() * 1_000_000)
    with monkeypatch.context() as m:  # the process dies after each insert, before its segment is deleted
        m.setattr(os, "unlink", failing_calls(os.unlink, lambda p, *a: OSError(5, "killed") if str(journal_dir) in str(p) else None))
        await crashed.start()
        rows = make_rows(1000)
        for i in range(0, 1000, 100):
            await crashed.write(rows[i : i + 100], make_metrics(1, start_us=now_us + i))
        await _eventually(lambda: crashed.stats()["rows_inserted"] == 1000)
        await crashed.stop()
    assert list(journal_dir.glob("slot-*/seg-*")), "the segments outlived their inserts"
    assert _count(ch_client, "proposition_log") == 1000

    again = ClickHouseSink(older_server, journal_dir, retry_initial_s=0.01, retry_max_s=0.05)
    await again.start()
    await _eventually(lambda: again.stats()["journal_segments"] == 0)
    await again.stop()
    assert again.stats()["replayed_rows"] == 1000  # every block really was sent a second time
    for table in ("proposition_log", "decision_audit"):
        duplicates = ch_client.query(f"SELECT count() - uniqExact(alert_id), count() FROM {table}").result_rows[0]
        assert tuple(duplicates) == (0, 1000), table
    assert _count(ch_client, "latency_metrics") == 10
    assert int(ch_client.query("SELECT countMerge(decisions) FROM proposition_minute").result_rows[0][0]) == 1000
