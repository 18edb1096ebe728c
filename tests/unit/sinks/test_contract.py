"""The Sink contract (stream_engine/sinks/__init__.py): both sinks satisfy it."""

from __future__ import annotations

from pathlib import Path

from stream_engine.sinks import LogRow, MemorySink, Sink
from stream_engine.sinks.clickhouse.sink import ClickHouseSink


async def test_memory_sink_and_clickhouse_sink_satisfy_the_contract(tmp_path: Path) -> None:
    sink = MemorySink()
    assert isinstance(sink, Sink)
    assert isinstance(ClickHouseSink(lambda: None, tmp_path), Sink)  # type: ignore[arg-type,return-value]
    await sink.start()
    row = LogRow("a", "t", "k", "s", "src", 0, 0, "auto", None, None, "lru", 0.0, 1, 0, 0, "w", "[]", None, "v")
    await sink.write([row], [])
    await sink.stop()
    assert sink.rows == [row] and sink.stats()["rows_written"] == 1
