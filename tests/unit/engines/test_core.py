"""EngineCore.process: outages are waited out; a poison message is isolated and dead-lettered."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError

from stream_engine.engines import core
from stream_engine.engines.core import EngineCore
from stream_engine.models import DeadLetter, Decision, StageTimes
from stream_engine.monitor import Monitor
from stream_engine.pipeline import BatchReport, RawMessage
from stream_engine.settings import Settings


class FlakyPipeline:
    """Stands in for Pipeline at the seams the core uses: process(), dead_letter() and its emitter."""

    def __init__(self, fail: Any) -> None:
        self.fail = fail  # (messages, call number) -> exception to raise or None
        self.calls = 0
        self.emitted: list[DeadLetter] = []
        self.emitter = self

    async def send(self, decisions: Sequence[Decision], dead: Sequence[DeadLetter]) -> Any:
        self.emitted.extend(dead)
        return asyncio.sleep(0)

    def dead_letter(self, message: RawMessage, reason: str, detail: str, received_at: float) -> DeadLetter:
        return DeadLetter(reason, detail, message.topic, message.partition, message.offset, message.value or b"", received_at)

    async def process(self, messages: Sequence[RawMessage]) -> BatchReport:
        self.calls += 1
        exc = self.fail(messages, self.calls)
        if exc is not None:
            raise exc
        return BatchReport([], [], StageTimes(), {"lru": len(messages)})


def engine_core(pipeline: FlakyPipeline, tmp_path: Path) -> EngineCore:
    runtime = SimpleNamespace(pipeline=pipeline, monitor=Monitor())
    return EngineCore(Settings(data_dir=tmp_path), runtime)  # type: ignore[arg-type]


def msgs(*values: bytes) -> list[RawMessage]:
    return [RawMessage(v, 0, i, "alerts") for i, v in enumerate(values)]


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_sleep(_: float) -> None:
        return None

    monkeypatch.setattr(core.asyncio, "sleep", no_sleep)


@pytest.mark.usefixtures("no_backoff")
async def test_an_outage_is_retried_until_it_passes_and_nothing_is_dead_lettered(tmp_path: Path) -> None:
    pipeline = FlakyPipeline(lambda m, n: KafkaConnectionError() if n <= 6 else None)
    report = await engine_core(pipeline, tmp_path).process(msgs(b"a", b"b"))
    assert pipeline.calls == 7 and report.tiers == {"lru": 2} and pipeline.emitted == []


@pytest.mark.usefixtures("no_backoff")
async def test_a_poison_message_is_isolated_and_dead_lettered_while_the_others_are_decided(tmp_path: Path) -> None:
    pipeline = FlakyPipeline(lambda m, n: TypeError("boom") if any(x.value == b"poison" for x in m) else None)
    engine = engine_core(pipeline, tmp_path)
    report = await engine.process(msgs(b"a", b"poison", b"c"))
    assert [(d.reason, d.offset, d.original) for d in pipeline.emitted] == [("processing_error", 1, b"poison")]
    assert "TypeError: boom" in pipeline.emitted[0].error
    assert report.tiers == {"lru": 2} and [d.offset for d in report.dead] == [1]
    monitor = engine.runtime.monitor
    assert monitor.batch_failures["TypeError"] >= 3 and monitor.dead_letters["processing_error"] == 1


async def test_drain_waits_for_batches_in_flight_and_says_when_they_outlast_it(tmp_path: Path) -> None:
    release = asyncio.Event()

    class SlowPipeline(FlakyPipeline):
        async def process(self, messages: Sequence[RawMessage]) -> BatchReport:
            await release.wait()
            return await super().process(messages)

    engine = engine_core(SlowPipeline(lambda m, n: None), tmp_path)
    batch = asyncio.create_task(engine.process(msgs(b"a")))
    assert not await engine.drain(0.05), "a batch is still in flight"
    release.set()
    assert await engine.drain(5.0)
    assert batch.done() and batch.result().tiers == {"lru": 1}
