"""The exactly-once seam of the sink: rows held until their Kafka transaction is settled.

ClickHouse sits behind the client seam (a recording fake); the journal is real files.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from stream_engine.sinks import MemorySink
from stream_engine.sinks.clickhouse.journal import Journal, encode_batch, encode_settlement, read_segment
from stream_engine.sinks.clickhouse.rows import LogRow, MetricRow
from stream_engine.sinks.clickhouse.sink import ClickHouseSink, below_committed
from tests.faults import failing_calls


def _rows(ids: range, prefix: str = "a", partition: int = 0, topic: str = "alerts") -> list[LogRow]:
    return [
        LogRow(f"{prefix}{i}", "t", "k", "s", "src", 0, 0, "auto", None, None, "lru", 0.0, 1, partition, i, "w", "[]",
               None, "v", topic, "stream", "w@1")
        for i in ids
    ]  # fmt: skip


def _metric(stage: str) -> MetricRow:
    return MetricRow(1, stage, "t", "w", 1, 1.0, 1.0)


class _Recorder:
    """ClickHouse at the client seam: what each table received, with the insert's token."""

    def __init__(self) -> None:
        self.inserts: list[tuple[str, list[str], str]] = []
        self.down = threading.Event()
        self.lock = threading.Lock()

    def insert(self, table: str, data: list[tuple[object, ...]], settings: Mapping[str, object] | None = None, **kw: object) -> None:
        if self.down.is_set():
            raise ConnectionError("ClickHouse is down")
        with self.lock:
            self.inserts.append((table, [str(x) for x in data[0] if table != "latency_metrics"] or [str(x) for x in data[1]],
                                 str((settings or {}).get("insert_deduplication_token"))))  # fmt: skip

    def ids(self, table: str = "decision_audit") -> set[str]:
        with self.lock:
            return {i for t, ids, _ in self.inserts if t == table for i in ids}

    def tokens(self, table: str = "decision_audit") -> list[str]:
        with self.lock:
            return [token for t, _, token in self.inserts if t == table]

    def close(self) -> None:
        pass


def _sink(client: _Recorder, journal: Path, **kw: object) -> ClickHouseSink:
    params: dict[str, object] = {"flush_rows": 1, "flush_interval_s": 0.01, "retry_initial_s": 0.01, "retry_max_s": 0.02,
                                 "stop_timeout_s": 0.2, "connect_wait_s": 0.2}  # fmt: skip
    params.update(kw)
    return ClickHouseSink(lambda: client, journal, **params)  # type: ignore[arg-type,return-value]


async def _eventually(predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached"
        await asyncio.sleep(0.01)


def _segment(directory: Path, *records: bytes) -> None:
    journal = Journal(directory, fsync=False)
    journal.open()
    journal.append(list(records))
    journal.close()


async def test_held_rows_wait_for_their_commit(tmp_path: Path) -> None:
    client = _Recorder()
    sink = _sink(client, tmp_path / "j")
    await sink.start()
    await sink.write(_rows(range(0, 3), "held"), [_metric("decode")], transaction="txn-1")
    await _eventually(lambda: sink.stats()["held_blocks"] == 1, what="the held rows' block sealed")
    await sink.write(_rows(range(0, 2), "free"), [])  # not in a transaction, in a later block: goes at once
    await _eventually(lambda: {"free0", "free1"} <= client.ids(), what="untransacted rows inserted")
    assert not {"held0", "held1", "held2"} & client.ids(), "held rows reached ClickHouse before their commit"
    assert sink.stats()["held_transactions"] == 1
    await sink.settle("txn-1", committed=True)
    await _eventually(lambda: {"held0", "held1", "held2"} <= client.ids(), what="committed rows inserted")
    await sink.stop()
    assert client.ids("latency_metrics") == {"decode"}
    assert sink.stats()["journal_segments"] == 0 and sink.stats()["held_transactions"] == 0


async def test_aborted_rows_and_their_metrics_never_reach_clickhouse(tmp_path: Path) -> None:
    client = _Recorder()
    sink = _sink(client, tmp_path / "j")
    await sink.start()
    await sink.write(_rows(range(0, 3), "aborted"), [_metric("decode")], transaction="txn-1")
    await sink.settle("txn-1", committed=False)
    await sink.write(_rows(range(0, 2), "later"), [])
    await _eventually(lambda: {"later0", "later1"} <= client.ids())
    await sink.stop()
    assert not any(i.startswith("aborted") for i in client.ids()) and not client.ids("latency_metrics")
    assert sink.stats()["dropped_rows"] == 3
    assert sink.stats()["journal_segments"] == 0  # the aborted rows' segment is gone too


async def test_after_a_crash_the_journal_markers_decide_even_from_a_later_segment(tmp_path: Path) -> None:
    slot = tmp_path / "j" / "slot-0"
    _segment(slot, encode_batch(_rows(range(0, 3), "c"), [], "txn-c"), encode_batch(_rows(range(3, 6), "x"), [], "txn-x"),
             encode_batch(_rows(range(0, 1), "plain"), []))  # fmt: skip
    _segment(slot, encode_settlement(committed=["txn-c"]), encode_settlement(aborted=["txn-x"]))
    client = _Recorder()
    sink = _sink(client, tmp_path / "j")
    await sink.start()
    await _eventually(lambda: sink.stats()["journal_segments"] == 0)
    await sink.stop()
    assert client.ids() == {"c0", "c1", "c2", "plain0"}


async def test_undecided_rows_are_kept_by_the_replay_filter_only(tmp_path: Path) -> None:
    """No marker (the process died between the Kafka commit and the marker): the group's committed
    offsets decide; the same decision gives the same token, so a second replay is dropped."""
    tokens = []
    for run in range(2):
        slot = tmp_path / f"run{run}" / "slot-0"
        _segment(slot, b'{"v":2,"seg":"fixed-id"}\n', encode_batch(_rows(range(0, 10), "p0-", 0), [], "txn-1"),
                 encode_batch(_rows(range(0, 4), "p1-", 1), [], "txn-2"))  # fmt: skip
        asked: list[int] = []

        async def committed() -> Mapping[tuple[str, int], int]:
            asked.append(1)
            return {("alerts", 0): 6, ("alerts", 1): 0}  # partition 0 committed up to offset 5; partition 1 nothing

        client = _Recorder()
        sink = _sink(client, tmp_path / f"run{run}", replay_filter=below_committed(committed))
        await sink.start()
        await _eventually(lambda: sink.stats()["journal_segments"] == 0)
        await sink.stop()
        assert asked and client.ids() == {f"p0-{i}" for i in range(6)}
        tokens += client.tokens()
    assert len(tokens) == 2 and tokens[0] == tokens[1] and tokens[0].startswith("fixed-id-")


async def test_without_a_filter_undecided_rows_are_kept(tmp_path: Path) -> None:
    _segment(tmp_path / "j" / "slot-0", encode_batch(_rows(range(0, 3)), [], "txn-1"))
    client = _Recorder()
    sink = _sink(client, tmp_path / "j")
    await sink.start()
    await _eventually(lambda: sink.stats()["journal_segments"] == 0)
    await sink.stop()
    assert client.ids() == {"a0", "a1", "a2"}  # at least once: nothing dropped on a guess


async def test_held_rows_spilled_during_an_outage_still_wait_for_their_commit(tmp_path: Path) -> None:
    client = _Recorder()
    client.down.set()
    sink = _sink(client, tmp_path / "j", max_buffer_rows=4)
    await sink.start()
    await sink.write(_rows(range(0, 3), "free"), [])
    await _eventually(lambda: sink.stats()["failing"], what="inserts failing")
    for k in range(3):  # beyond the memory bound while failing: spilled to disk
        await sink.write(_rows(range(k * 3, k * 3 + 3), "held"), [], transaction="txn-1")
    assert sink.stats()["spills"] >= 1
    client.down.clear()
    await _eventually(lambda: {"free0", "free1", "free2"} <= client.ids(), what="free rows inserted")
    await asyncio.sleep(0.1)
    assert not any(i.startswith("held") for i in client.ids())
    await sink.settle("txn-1", committed=True)
    await _eventually(lambda: {f"held{i}" for i in range(9)} <= client.ids(), what="held rows inserted after commit")
    await sink.stop()
    assert sink.stats()["journal_segments"] == 0


async def test_memory_sink_holds_transactions_too() -> None:
    sink = MemorySink()
    rows = _rows(range(0, 2))
    await sink.write(rows, [], transaction="t1")
    await sink.write(rows[:1], [], transaction="t2")
    assert sink.rows == []
    await sink.settle("t1", committed=True)
    await sink.settle("t2", committed=False)
    assert sink.rows == rows and sink.held == {}


async def test_a_segment_carries_the_same_token_from_memory_and_from_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The token is the segment's id (its header), whichever way the block is sent: inserted from
    memory, then (the process died before deleting the segment) replayed from disk by the next run."""
    journal = tmp_path / "j"
    first = _Recorder()
    with monkeypatch.context() as m:
        m.setattr(os, "unlink", failing_calls(os.unlink, lambda p, *a: OSError(5, "killed") if str(journal) in str(p) else None))
        sink = _sink(first, journal)
        await sink.start()
        await sink.write(_rows(range(0, 5)), [_metric("decode")])
        await _eventually(lambda: sink.stats()["rows_inserted"] == 5)
        await sink.stop()
    [segment] = list(journal.glob("slot-*/seg-*"))
    header_id = read_segment(segment).id
    again = _Recorder()
    sink = _sink(again, journal)
    await sink.start()
    await _eventually(lambda: sink.stats()["journal_segments"] == 0)
    await sink.stop()
    assert first.tokens() == again.tokens() == [header_id]
    assert first.tokens("latency_metrics") == again.tokens("latency_metrics") == [header_id]
