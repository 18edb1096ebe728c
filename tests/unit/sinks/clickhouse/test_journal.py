from __future__ import annotations

from pathlib import Path

from stream_engine.sinks.clickhouse.journal import Journal, encode_batch, read_segment
from stream_engine.sinks.clickhouse.rows import LogRow, MetricRow


def _row(i: int) -> LogRow:
    return LogRow(f"a{i}", "scam", "k", "high", "src", 1_700_000_000_000 + i, 1_700_000_000_005 + i, "auto",
                  None, None, "lru", 1.5, 10, 3, i, "w", "[]", None, "0.1.0")  # fmt: skip


def _metric(i: int) -> MetricRow:
    return MetricRow(1_700_000_000_000_000 + i, "decode", "scam", "w", 3, 1.25, 0.5)


def test_append_seal_read_round_trip(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    assert journal.open() == []
    journal.append([encode_batch([_row(1), _row(2)], [_metric(1)]), encode_batch([_row(3)], [])])
    assert journal.fsyncs == 1  # one fsync for the whole group
    sealed = journal.seal()
    assert sealed is not None and journal.sealed_segments() == [sealed]
    batches = list(journal.read(sealed))
    assert batches == [([_row(1), _row(2)], [_metric(1)]), ([_row(3)], [])]
    assert isinstance(batches[0][0][0], LogRow)


def test_left_over_segments_are_returned_and_numbering_continues(tmp_path: Path) -> None:
    first = Journal(tmp_path)
    first.open()
    first.append([encode_batch([_row(1)], [])])
    first.seal()
    first.append([encode_batch([_row(2)], [])])  # never sealed: the process "crashed"

    second = Journal(tmp_path)
    left = second.open()
    assert [p.name for p in left] == ["seg-000000000000.jsonl", "seg-000000000001.jsonl"]
    second.append([encode_batch([_row(3)], [])])
    sealed = second.seal()
    assert sealed is not None and sealed.name == "seg-000000000002.jsonl"


def test_a_torn_tail_is_skipped_and_garbage_is_returned_as_unreadable(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    journal.append([encode_batch([_row(1)], [])])
    path = journal.seal()
    assert path is not None
    with open(path, "ab") as f:
        f.write(b'{"r": [["a2", "sc')  # a crash in the middle of a write
    with open(path, "rb") as f:
        content = f.read()
    path.write_bytes(content.replace(b"\n", b"\nnot json\n", 1))
    batches = list(journal.read(path))
    assert batches == [([_row(1)], [])]
    assert journal.torn_lines == 1  # the write that never returned
    assert journal.unreadable_records == 1  # a whole line that does not decode: not "torn", kept aside
    assert read_segment(path).unreadable == [b"not json\n"]


def test_segments_rotate_by_size_and_delete(tmp_path: Path) -> None:
    journal = Journal(tmp_path, segment_max_bytes=50)
    journal.open()
    for i in range(5):
        journal.append([encode_batch([_row(i)], [])])  # each batch is > 50 bytes
    journal.seal()
    sealed = journal.sealed_segments()
    assert len(sealed) == 5
    assert journal.disk_usage()[1] == 5
    journal.delete(sealed[:3])
    assert [list(journal.read(p))[0][0][0].alert_id for p in journal.sealed_segments()] == ["a3", "a4"]


def test_without_fsync_nothing_is_synced(tmp_path: Path) -> None:
    journal = Journal(tmp_path, fsync=False)
    journal.open()
    journal.append([encode_batch([_row(1)], [])])
    assert journal.fsyncs == 0
    assert journal.disk_usage()[0] > 0
