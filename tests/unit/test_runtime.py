"""Runtime: "worker … ready" is logged once, only when the runtime has started AND the worker has
joined the group (test helpers and operators wait for that line; faust prints its own "Worker
ready" earlier); and the narrow methods the HTTP API asks, which go through the API's own client,
breaker and read-only Redis view."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from harness.procs import WORKER_READY
from stream_engine.models import Envelope, StageTimes
from stream_engine.runtime import Runtime
from stream_engine.settings import Settings
from stream_engine.sinks import MemorySink
from stream_engine.workload import Workload


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
        await rt.stop()


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
        assert set(rt.parts_stats()) == {"lru", "redis", "invalidations", "service", "api_service", "sink", "outcomes"}
        with pytest.raises(NotImplementedError):
            await rt.run_query(lambda client: None)
        with pytest.raises(RuntimeError):  # no decision log before start()
            await rt.log_api_decisions([], [], None)  # type: ignore[arg-type]
    finally:
        await rt.stop()


def offline(tmp_path: Path, **overrides: object) -> Settings:
    """Nothing answers: the service and Redis on closed ports (Redis then skipped as degraded)."""
    return Settings(
        data_dir=tmp_path, propositions_url="http://127.0.0.1:1", redis_url="redis://127.0.0.1:1/0",
        redis_retry_after_s=60, service_retries=0, **overrides,  # type: ignore[arg-type]
    )  # fmt: skip


def api_envelopes(rt: Runtime, n: int, seed: int = 1) -> list[Envelope]:
    return [rt.envelope(rt.decode(orjson.dumps(a)), 65535, 0, 0) for a in Workload("typical", seed=seed).alerts(n)]


async def test_api_failures_open_the_apis_breaker_never_the_streams(tmp_path: Path) -> None:
    # A dead service: every API call fails (connection refused), as many times as it takes.
    rt = Runtime(offline(tmp_path, breaker_fail_max=3), sink=MemorySink())
    try:
        for seed in range(10):  # cold keys every time: each call goes to the service
            await rt.decide(api_envelopes(rt, 2, seed), StageTimes())
        assert rt.api_client.breaker.state == "open"
        assert rt.parts_stats()["api_service"]["breaker_rejections"] > 0
        assert rt.client.breaker.state == "closed" and rt.client.counters.requests == 0
        # The stream still asks the service itself (and learns on its own that it is down).
        stream = [rt.envelope(e.alert, 0, i, 0) for i, e in enumerate(api_envelopes(rt, 2, 99))]
        decisions = await rt.triage.decide(stream, StageTimes())
        assert [d.reason for d in decisions] == ["unavailable", "unavailable"], "not breaker_open"
    finally:
        await rt.stop()

