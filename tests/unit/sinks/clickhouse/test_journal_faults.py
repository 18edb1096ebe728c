"""The journal's failure paths, with faults injected at the file layer (tests/faults.py).

Each test creates the fault it names and asserts that no acknowledged row is lost (and no
unacknowledged one is replayed): a short write then ENOSPC, an fsync that fails, a rename that
fails half way through an adoption, a read that fails half way through a segment, a record of
another format version, and a long journal to replay while live rows arrive.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stream_engine.sinks.clickhouse import journal as journal_module
from stream_engine.sinks.clickhouse.journal import Journal, encode_batch
from stream_engine.sinks.clickhouse.rows import LogRow
from stream_engine.sinks.clickhouse.sink import ClickHouseSink
from tests.faults import FileFaults, failing_calls


def _row(i: int, prefix: str = "a") -> LogRow:
    return LogRow(f"{prefix}{i}", "t", "k", "s", "src", 0, 0, "auto", None, None, "lru", 0.0, 1, 0, i, "w", "[]", None, "v")


def _rows(ids: range, prefix: str = "a") -> list[LogRow]:
    return [_row(i, prefix) for i in ids]


def _journal_ids(directory: Path) -> list[str]:
    journal = Journal(directory)
    return [r.alert_id for seg in journal.open() for rows, _ in journal.read(seg) for r in rows]


def _write_segment(directory: Path, rows: list[LogRow]) -> None:
    journal = Journal(directory, fsync=False)
    journal.open()
    journal.append([encode_batch(rows, [])])
    journal.close()


async def _eventually(predicate: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    assert await _within(predicate, timeout_s), f"{what} not reached within {timeout_s} s"


async def _within(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


class _DownClient:
    def insert(self, table: str, data: object, **kwargs: object) -> None:
        raise ConnectionError("ClickHouse is down")

    def close(self) -> None:
        pass


class _RecordingClient:
    """Records the alert ids of every decision log insert (decision_audit), in order; optionally slow."""

    def __init__(self, delay_s: Callable[[list[str]], float] = lambda ids: 0.0) -> None:
        self.inserts: list[list[str]] = []
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def insert(self, table: str, data: list[tuple[object, ...]], **kwargs: object) -> None:
        if table != "decision_audit":
            return
        ids = [str(x) for x in data[0]]
        time.sleep(self.delay_s(ids))
        with self.lock:
            self.inserts.append(ids)

    def ids(self) -> set[str]:
        with self.lock:
            return {i for batch in self.inserts for i in batch}

    def close(self) -> None:
        pass


# --- a failed write truncates back to the last good record -----------------------------------


def test_a_short_write_then_enospc_does_not_swallow_the_next_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    faults = FileFaults()
    monkeypatch.setattr(journal_module, "open", faults, raising=False)
    journal = Journal(tmp_path, fsync=False)
    journal.open()
    journal.append([encode_batch(_rows(range(0, 3)), [])])
    faults.enospc_after = 17  # the disk fills 17 bytes into the next write
    with pytest.raises(OSError) as failed:
        journal.append([encode_batch(_rows(range(3, 6)), [])])
    assert failed.value.errno == errno.ENOSPC and faults.enospc_after == 0  # the fragment really hit the file
    faults.enospc_after = None  # space freed; the caller retries or moves on
    journal.append([encode_batch(_rows(range(6, 9)), [])])  # acknowledged: must replay
    journal.close()
    assert _journal_ids(tmp_path) == [f"a{i}" for i in (0, 1, 2, 6, 7, 8)]


def test_a_failed_fsync_leaves_no_record_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch whose fsync failed was not acknowledged: its caller retries it, so replaying the
    unsynced copy as well would write it twice."""
    journal = Journal(tmp_path, fsync=True)
    journal.open()
    journal.append([encode_batch(_rows(range(0, 2)), [])])
    fail_next = [OSError(errno.EIO, "fsync failed")]
    monkeypatch.setattr(os, "fsync", failing_calls(os.fsync, lambda fd: fail_next.pop() if fail_next else None))
    with pytest.raises(OSError):
        journal.append([encode_batch(_rows(range(2, 4)), [])])
    assert not fail_next
    journal.append([encode_batch(_rows(range(4, 6)), [])])
    journal.close()
    assert _journal_ids(tmp_path) == [f"a{i}" for i in (0, 1, 4, 5)]


async def test_the_sink_keeps_every_acknowledged_batch_after_a_write_fails_half_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults = FileFaults()
    monkeypatch.setattr(journal_module, "open", faults, raising=False)
    sink = ClickHouseSink(lambda: _DownClient(), tmp_path / "j", flush_interval_s=0.01, retry_initial_s=0.01,  # type: ignore[arg-type,return-value]
                          retry_max_s=0.02, stop_timeout_s=0.1, connect_wait_s=0.1)  # fmt: skip
    await sink.start()
    await sink.write(_rows(range(0, 5)), [])
    faults.enospc_after = 40
    with pytest.raises(OSError):
        await sink.write(_rows(range(5, 10)), [])  # refused: the caller does not commit these offsets
    faults.enospc_after = None
    await sink.write(_rows(range(10, 15)), [])  # acknowledged
    await sink.stop()
    assert sorted(_journal_ids(tmp_path / "j" / "slot-0")) == sorted(f"a{i}" for i in [*range(0, 5), *range(10, 15)])


# --- segment ownership: a segment is deleted only after its own rows are inserted -------------


async def test_an_adoption_that_fails_half_way_loses_no_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "journal"
    client = _RecordingClient()
    sink = ClickHouseSink(lambda: client, root, flush_rows=1, flush_interval_s=0.01, retry_initial_s=0.01,  # type: ignore[arg-type,return-value]
                          retry_max_s=0.01, adopt_interval_s=0.05)  # fmt: skip
    await sink.start()  # slot-0; nothing to adopt yet
    # two replicas stop with rows in their journals (their slots are free)
    _write_segment(root / "slot-1", _rows(range(0, 3), "gone"))
    _write_segment(root / "slot-2", _rows(range(3, 6), "gone"))
    slot2_fails = threading.Event()
    slot2_fails.set()
    failures: list[str] = []

    def fail(src: Any, dst: Any = None) -> BaseException | None:
        if slot2_fails.is_set() and "slot-2" in str(src):
            failures.append(str(src))
            return OSError(errno.EIO, "rename failed")
        return None

    monkeypatch.setattr(os, "rename", failing_calls(os.rename, fail))
    await _eventually(lambda: bool(failures), what="an adoption failing half way")  # slot-1's segment moved in
    await sink.write(_rows(range(0, 4), "live"), [])  # a flush of live rows meanwhile
    await _eventually(lambda: {f"live{i}" for i in range(4)} <= client.ids(), what="live rows inserted")
    moved_in = {f"gone{i}" for i in range(3)}  # slot-1's rows: ours since the rename, while slot-2 keeps failing
    moved_in_replayed = await _within(lambda: moved_in <= client.ids(), 10)
    slot2_fails.clear()
    want = {f"gone{i}" for i in range(6)} | {f"live{i}" for i in range(4)}
    await _within(lambda: want <= client.ids(), 10)
    await sink.stop()
    assert want <= client.ids(), f"lost: {sorted(want - client.ids())}"
    assert moved_in_replayed, "segments moved in by a failed adoption waited for the next adoption to succeed"
    assert not list(root.glob("slot-*/seg-*"))


async def test_a_read_that_fails_half_way_through_a_segment_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    leftover = tmp_path / "j" / "slot-0"
    journal = Journal(leftover, fsync=False)
    journal.open()
    journal.append([encode_batch(_rows(range(0, 3), "old"), []), encode_batch(_rows(range(3, 6), "old"), [])])
    journal.close()
    faults = FileFaults()
    faults.eio_after_lines = 1  # the first replay reads one record, then the disk errors
    monkeypatch.setattr(journal_module, "open", faults, raising=False)
    client = _RecordingClient()
    sink = ClickHouseSink(lambda: client, tmp_path / "j", flush_rows=1, flush_interval_s=0.01,  # type: ignore[arg-type,return-value]
                          retry_initial_s=0.01, retry_max_s=0.01)  # fmt: skip
    await sink.start()
    await _eventually(lambda: faults.eio_after_lines == 0, what="a replay failing half way")
    await sink.write(_rows(range(0, 2), "live"), [])
    live_through = await _within(lambda: {"live0", "live1"} <= client.ids(), 10)
    faults.eio_after_lines = None
    want = {f"old{i}" for i in range(6)} | {"live0", "live1"}
    await _within(lambda: want <= client.ids(), 10)
    await sink.stop()
    assert live_through, "live rows waited while the journal could not be read"
    assert want <= client.ids(), f"lost: {sorted(want - client.ids())}"
    assert not list((tmp_path / "j").glob("slot-*/seg-*"))


# --- replay runs beside live writes -----------------------------------------------------------


async def test_a_long_replay_does_not_hold_back_live_rows(tmp_path: Path) -> None:
    for k in range(6):  # six segments left by an earlier run (an outage's worth)
        journal = Journal(tmp_path / "j" / "slot-0", fsync=False)
        journal.open()
        journal.append([encode_batch(_rows(range(k * 100, k * 100 + 100), "old"), [])])
        journal.close()
    client = _RecordingClient(delay_s=lambda ids: 0.2 if ids[0].startswith("old") else 0.0)  # a slow ClickHouse
    sink = ClickHouseSink(lambda: client, tmp_path / "j", flush_rows=1000, flush_interval_s=0.01,  # type: ignore[arg-type,return-value]
                          retry_initial_s=0.01, retry_max_s=0.01)  # fmt: skip
    await sink.start()
    await sink.write(_rows(range(0, 10), "live"), [])
    await _eventually(lambda: len(client.ids()) == 610)
    await sink.stop()
    firsts = [batch[0][:3] for batch in client.inserts]
    live_at = firsts.index("liv")
    last_old = max(i for i, f in enumerate(firsts) if f == "old")
    assert live_at < last_old, f"live rows waited for the whole replay: inserts {firsts}"


# --- versioned records --------------------------------------------------------------------------

# A record as the journal wrote it before records carried a version (19-field rows).
V1_RECORD = (
    b'{"r":[["a1","scam","k","high","src",1700000000001,1700000000006,"auto",null,null,"lru",1.5,10,3,1,"w","[]",'
    b'null,"0.1.0"]],"m":[[1700000000000001,"decode","scam","w",3,1.25,0.5]]}\n'
)


def test_a_record_of_the_unversioned_format_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "seg-000000000000.jsonl"
    api_record = V1_RECORD.replace(b'"a1"', b'"a2"').replace(b",10,3,1,", b",1,65535,0,")  # the API's pseudo-partition
    path.write_bytes(V1_RECORD + api_record)
    journal = Journal(tmp_path)
    journal.open()
    [(rows, metrics), (api_rows, _)] = list(journal.read(path))
    assert rows[0].alert_id == "a1" and rows[0].offset == 1 and metrics[0].stage == "decode"
    assert (rows[0].topic, rows[0].origin, rows[0].attempt) == ("", "stream", "")  # unknown then: defaults
    assert (api_rows[0].alert_id, api_rows[0].partition, api_rows[0].origin) == ("a2", 65535, "api")
    assert journal.torn_lines == 0 and journal.unreadable_records == 0


async def test_a_record_of_an_unknown_version_is_kept_not_dropped(tmp_path: Path) -> None:
    slot = tmp_path / "j" / "slot-0"
    slot.mkdir(parents=True)
    future = b'{"v":99,"r":[["f1","t","k","s","src",0,0,"auto",null,null,"lru",0.0,1,0,1,"w","[]",null,"v","x","y"]],"m":[]}\n'
    (slot / "seg-000000000000.jsonl").write_bytes(V1_RECORD + future)
    client = _RecordingClient()
    sink = ClickHouseSink(lambda: client, tmp_path / "j", flush_rows=1, flush_interval_s=0.01, retry_max_s=0.01)  # type: ignore[arg-type,return-value]
    await sink.start()
    await _eventually(lambda: "a1" in client.ids())
    await sink.stop()
    assert "f1" not in client.ids()  # this build cannot read it ...
    kept = [p.read_bytes() for p in (tmp_path / "j").rglob("*") if p.is_file() and future in p.read_bytes()]
    assert kept, "... so the record must stay on disk for a build that can"
    assert sink.stats()["journal_unreadable_records"] == 1


@pytest.mark.timeout(60)
async def test_stop_while_a_write_is_being_journaled_completes_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow disk: stop() arrives while a write waits for its append. The write is acknowledged
    (its rows are durable) and stop returns, the flusher never spinning the event loop meanwhile."""
    client = _RecordingClient()
    sink = ClickHouseSink(lambda: client, tmp_path / "j", flush_interval_s=0.05, stop_timeout_s=2)  # type: ignore[arg-type,return-value]
    await sink.start()
    real_append = sink._journal.append
    appending = threading.Event()

    def slow_append(payloads: Any) -> Any:
        appending.set()
        time.sleep(0.3)
        return real_append(payloads)

    monkeypatch.setattr(sink._journal, "append", slow_append)
    writing = asyncio.create_task(sink.write(_rows(range(0, 3)), []))
    await _eventually(appending.is_set, what="the append under way")
    queued = asyncio.create_task(sink.write(_rows(range(3, 5)), []))  # waits for the journal behind it
    await asyncio.sleep(0.01)
    await asyncio.wait_for(sink.stop(), 20)
    await asyncio.wait_for(asyncio.gather(writing, queued), 5)
    durable = client.ids() | set(_journal_ids(tmp_path / "j" / "slot-0"))
    assert {f"a{i}" for i in range(5)} <= durable
