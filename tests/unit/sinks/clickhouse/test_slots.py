"""Journal slots: one directory per live sink under a shared root; free slots' segments adopted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from stream_engine.sinks.clickhouse import slots
from stream_engine.sinks.clickhouse.journal import Journal, encode_batch
from stream_engine.sinks.clickhouse.rows import LogRow


def _row(i: int) -> LogRow:
    return LogRow(f"a{i}", "t", "k", "s", "src", 0, 0, "auto", None, None, "lru", 0.0, 1, 0, i, "w", "[]", None, "v")


def _write_segment(directory: Path, ids: range) -> None:
    journal = Journal(directory, fsync=False)
    journal.open()
    journal.append([encode_batch([_row(i) for i in ids], [])])
    journal.seal()


def _ids(directory: Path) -> list[str]:
    journal = Journal(directory)
    return sorted(r.alert_id for seg in journal.open() for rows, _ in journal.read(seg) for r in rows)


def test_live_slots_are_not_shared(tmp_path: Path) -> None:
    first, second = slots.claim(tmp_path), slots.claim(tmp_path)
    assert (first.directory.name, second.directory.name) == ("slot-0", "slot-1")
    first.release()
    third = slots.claim(tmp_path)
    assert third.directory.name == "slot-0"  # a released slot is claimed again
    second.release()
    third.release()


def test_a_slot_held_by_another_process_is_skipped_and_freed_when_it_dies(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys,time; from pathlib import Path; "
         "from stream_engine.sinks.clickhouse import slots; s = slots.claim(Path(sys.argv[1])); "
         "print(s.directory.name, flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "slot-0"
        mine = slots.claim(tmp_path)
        assert mine.directory.name == "slot-1"
        mine.release()
    finally:
        holder.kill()  # like kill -9: the kernel drops the flock
        holder.wait()
    again = slots.claim(tmp_path)
    assert again.directory.name == "slot-0"
    again.release()


def test_segments_of_free_slots_and_of_the_old_flat_layout_are_adopted_in_order(tmp_path: Path) -> None:
    _write_segment(tmp_path, range(0, 3))  # the layout before slots: segments in the root
    _write_segment(tmp_path / "slot-1", range(3, 6))  # a worker that died
    _write_segment(tmp_path / "slot-2", range(6, 9))  # another
    mine = slots.claim(tmp_path)
    assert mine.directory.name == "slot-0"
    _write_segment(mine.directory, range(9, 10))  # our own leftover from an earlier run
    journal = Journal(mine.directory)
    journal.open()
    assert slots.adopt_orphans(tmp_path, mine, journal.adopt) == 3
    assert _ids(mine.directory) == sorted(f"a{i}" for i in range(10))
    assert not list((tmp_path / "slot-1").glob("seg-*")) and not list(tmp_path.glob("seg-*"))
    # our leftover keeps its place: adopted segments are numbered after it
    names = sorted(p.name for p in mine.directory.glob("seg-*"))
    assert names == [f"seg-{n:012d}.jsonl" for n in range(4)]
    mine.release()


def test_a_live_slot_is_never_adopted(tmp_path: Path) -> None:
    live = slots.claim(tmp_path)
    _write_segment(live.directory, range(0, 2))
    mine = slots.claim(tmp_path)
    journal = Journal(mine.directory)
    journal.open()
    assert slots.adopt_orphans(tmp_path, mine, journal.adopt) == 0
    assert _ids(live.directory) == ["a0", "a1"]
    mine.release()
    live.release()


def test_the_next_segment_after_an_adoption_does_not_reuse_an_adopted_number(tmp_path: Path) -> None:
    _write_segment(tmp_path / "slot-1", range(0, 2))
    mine = slots.claim(tmp_path)
    journal = Journal(mine.directory, fsync=False)
    journal.open()
    journal.append([encode_batch([_row(5)], [])])  # our active segment: seg-0
    assert slots.adopt_orphans(tmp_path, mine, journal.adopt) == 1  # becomes seg-1
    journal.seal()
    journal.append([encode_batch([_row(6)], [])])  # a new active segment: seg-2, not seg-1
    journal.seal()
    assert _ids(mine.directory) == ["a0", "a1", "a5", "a6"]
    assert sorted(p.name for p in mine.directory.glob("seg-*")) == [f"seg-{n:012d}.jsonl" for n in range(3)]
    mine.release()
