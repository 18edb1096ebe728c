"""Runtime: "worker … ready" is logged once, only when the runtime has started AND the worker has
joined the group (test helpers and operators wait for that line; faust prints its own "Worker
ready" earlier); and the narrow methods the HTTP API asks."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from harness.procs import WORKER_READY
from stream_engine.runtime import Runtime
from stream_engine.settings import Settings
from stream_engine.sinks import MemorySink


async def test_ready_needs_start_and_an_assignment_and_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rt = Runtime(Settings(data_dir=tmp_path, worker_name="w1"), sink=MemorySink())
    try:
        caplog.set_level(logging.INFO, logger="stream_engine.runtime")
        ready_lines = lambda: [r for r in caplog.records if r.getMessage() == "worker w1 ready"]  # noqa: E731

        rt.announce_ready()
        rt.monitor.partitions_assigned([("alerts", 2)])  # assigned, but the runtime has not started
        rt.announce_ready()
        assert ready_lines() == []

        rt.started = True
        rt.announce_ready()
        rt.announce_ready()  # a later rebalance
        assert len(ready_lines()) == 1 and ready_lines()[0].partitions == [2]  # type: ignore[attr-defined]
    finally:
        await rt.client.close()
        await rt.redis.close()


def test_the_helpers_ready_pattern_matches_our_line_and_not_fausts() -> None:
    ours = '{"ts":"t","level":"INFO","logger":"stream_engine.runtime","msg":"worker vm:15591 ready","worker":"vm:15591"}'
    fausts = '{"ts":"t","level":"INFO","logger":"faust.tables.recovery","msg":"[^---Recovery]: Worker ready"}'
    assert WORKER_READY.search(ours) and not WORKER_READY.search(fausts)


async def test_what_the_api_asks_without_a_consumer_or_clickhouse(tmp_path: Path) -> None:
    rt = Runtime(Settings(data_dir=tmp_path, worker_name="w1"), sink=MemorySink())
    try:
        assert rt.health() == "runtime not started"
        rt.started = True
        assert rt.health() is None, "an API-only runtime (no consumer) is ready once started"

        async def no_positions() -> list[tuple[str, int, int | None, int | None]]:
            return []

        rt.consumer_offsets = no_positions
        assert rt.health() == "waiting for a partition assignment"
        rt.monitor.partitions_assigned([])
        assert rt.health() is None and await rt.consumer_positions() == []
        assert set(rt.parts_stats()) == {"lru", "redis", "invalidations", "service", "sink"}
        with pytest.raises(NotImplementedError):
            await rt.run_query(lambda client: None)
        with pytest.raises(RuntimeError):  # no decision log before start()
            await rt.log_api_decisions([], [], None)  # type: ignore[arg-type]
    finally:
        await rt.client.close()
        await rt.redis.close()
