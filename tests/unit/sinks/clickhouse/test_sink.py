"""The journaled ClickHouse sink against fake clients: rows stay durable while inserts fail."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from stream_engine.sinks.clickhouse.rows import LogRow
from stream_engine.sinks.clickhouse.sink import ClickHouseSink


class _FailingClient:
    """ClickHouse at the client seam, failing every insert."""

    def __init__(self) -> None:
        self.calls = 0

    def insert(self, table: str, data: object, **kwargs: object) -> None:
        self.calls += 1
        raise ConnectionError("ClickHouse is down")

    def close(self) -> None:
        pass


async def test_rows_stay_in_the_journal_while_inserts_fail(tmp_path: Path) -> None:
    client = _FailingClient()
    sink = ClickHouseSink(
        lambda: client, tmp_path / "j", flush_rows=5, flush_interval_s=0.05, retry_initial_s=0.01,
        retry_max_s=0.02, stop_timeout_s=0.2, max_buffer_rows=20,
    )  # fmt: skip
    await sink.start()
    rows = [LogRow(f"a{i}", "t", "k", "s", "src", 0, 0, "auto", None, None, "lru", 0.0, 1, 0, i, "w", "[]", None, "v") for i in range(50)]
    for i in range(0, 50, 5):
        await asyncio.wait_for(sink.write(rows[i : i + 5], []), 5)  # never blocks on a dead ClickHouse
    await sink.stop()
    stats = sink.stats()
    assert client.calls > 0 and stats["failures"] >= client.calls - 1
    assert stats["rows_written"] == 50 and stats["rows_inserted"] == 0
    assert stats["spills"] >= 1  # memory bound (20) hit while failing: journal only
    assert "ConnectionError" in stats["last_error"]
    from stream_engine.sinks.clickhouse.journal import Journal

    journal = Journal(tmp_path / "j" / "slot-0")  # the sink's claimed slot
    kept = [r for seg in journal.open() for batch_rows, _ in journal.read(seg) for r in batch_rows]
    assert sorted(r.offset for r in kept) == list(range(50))


async def test_write_raises_when_the_journal_cannot_be_written(tmp_path: Path) -> None:
    import shutil

    sink = ClickHouseSink(lambda: _FailingClient(), tmp_path / "j", stop_timeout_s=0.1)  # type: ignore[arg-type,return-value]
    await sink.start()
    shutil.rmtree(tmp_path / "j")  # the disk went away
    row = LogRow("a", "t", "k", "s", "src", 0, 0, "auto", None, None, "lru", 0.0, 1, 0, 0, "w", "[]", None, "v")
    with pytest.raises(FileNotFoundError):
        await sink.write([row], [])
    assert sink.stats()["rows_written"] == 0
    await sink.stop()


async def test_write_after_stop_is_refused(tmp_path: Path) -> None:
    sink = ClickHouseSink(lambda: _FailingClient(), tmp_path / "j")  # type: ignore[arg-type,return-value]
    await sink.start()
    await sink.stop()
    row = LogRow("a", "t", "k", "s", "src", 0, 0, "auto", None, None, "lru", 0.0, 1, 0, 0, "w", "[]", None, "v")
    with pytest.raises(RuntimeError):
        await sink.write([row], [])


class _RecordingClient:
    def __init__(self) -> None:
        self.tables: list[str] = []

    def insert(self, table: str, data: object, **kwargs: object) -> None:
        self.tables.append(table)

    def close(self) -> None:
        pass


def _row(i: int = 0) -> LogRow:
    return LogRow(f"a{i}", "t", "k", "s", "src", 0, 0, "auto", None, None, "lru", 0.0, 1, 0, i, "w", "[]", None, "v")


async def test_start_opens_the_client_before_the_first_write(tmp_path: Path) -> None:
    opened: list[int] = []
    client = _RecordingClient()

    def factory() -> _RecordingClient:
        opened.append(1)
        return client

    sink = ClickHouseSink(factory, tmp_path / "j", flush_rows=1, flush_interval_s=0.01)  # type: ignore[arg-type]
    await sink.start()
    assert opened == [1]  # chDB's import and table loading happen here, not under traffic
    await sink.write([_row()], [])
    await sink.stop()
    assert opened == [1] and client.tables == ["decision_audit"]


async def test_start_does_not_fail_when_clickhouse_is_down_and_rows_flush_once_it_is_up(tmp_path: Path) -> None:
    client = _RecordingClient()
    up = False

    def factory() -> _RecordingClient:
        if not up:
            raise ConnectionRefusedError("ClickHouse unreachable")
        return client

    sink = ClickHouseSink(factory, tmp_path / "j", flush_rows=1, flush_interval_s=0.01, retry_initial_s=0.01, retry_max_s=0.02)  # type: ignore[arg-type]
    await sink.start()
    await sink.write([_row()], [])
    up = True
    for _ in range(500):
        if sink.stats()["rows_inserted"] == 1:
            break
        await asyncio.sleep(0.01)
    await sink.stop()
    assert sink.stats()["rows_inserted"] == 1 and client.tables == ["decision_audit"]


async def test_start_waits_a_bounded_time_for_a_hung_clickhouse(tmp_path: Path) -> None:
    import threading

    release = threading.Event()
    client = _RecordingClient()

    def hung() -> _RecordingClient:
        release.wait(10)
        return client

    sink = ClickHouseSink(hung, tmp_path / "j", flush_rows=1, flush_interval_s=0.01, connect_wait_s=0.1)  # type: ignore[arg-type]
    await asyncio.wait_for(sink.start(), 5)  # returns after connect_wait_s, not when ClickHouse answers
    await sink.write([_row()], [])
    assert sink.stats()["rows_inserted"] == 0
    release.set()
    for _ in range(500):
        if sink.stats()["rows_inserted"] == 1:
            break
        await asyncio.sleep(0.01)
    await sink.stop()
    assert client.tables == ["decision_audit"]
