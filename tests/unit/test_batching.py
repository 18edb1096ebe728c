"""process_until_done: outages are waited out; a poison message is isolated and dead-lettered."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from aiokafka.errors import KafkaConnectionError

from stream_engine import batching
from stream_engine.masking import Masker
from stream_engine.models import DeadLetter, Decision
from stream_engine.pipeline import BatchReport, RawMessage, StageTimes


class FlakyPipeline:
    """Stands in for Pipeline at its two seams used here: process() and the emitter/scrub."""

    def __init__(self, fail: Any) -> None:
        self.fail = fail  # (messages, call number) -> exception to raise or None
        self.calls = 0
        self.emitted: list[DeadLetter] = []
        self.emitter = self
        self.masker = Masker(["password"])

    async def send(self, decisions: Sequence[Decision], dead: Sequence[DeadLetter]) -> Any:
        self.emitted.extend(dead)
        return asyncio.sleep(0)

    def scrub(self, raw: bytes, reason: str) -> tuple[bytes, bool]:
        return raw, False

    async def process(self, messages: Sequence[RawMessage]) -> BatchReport:
        self.calls += 1
        exc = self.fail(messages, self.calls)
        if exc is not None:
            raise exc
        return BatchReport([], [], StageTimes(), {"lru": len(messages)})


def runtime(pipeline: FlakyPipeline) -> Any:
    return SimpleNamespace(pipeline=pipeline, monitor=SimpleNamespace(batch_failed=lambda exc: None), in_flight=0)


def msgs(*values: bytes) -> list[RawMessage]:
    return [RawMessage(v, 0, i, "alerts") for i, v in enumerate(values)]


async def test_an_outage_is_retried_until_it_passes_and_nothing_is_dead_lettered(monkeypatch: Any) -> None:
    monkeypatch.setattr(batching.asyncio, "sleep", _no_sleep)
    pipeline = FlakyPipeline(lambda m, n: KafkaConnectionError() if n <= 6 else None)
    report = await batching.process_until_done(runtime(pipeline), msgs(b"a", b"b"))
    assert pipeline.calls == 7 and report.tiers == {"lru": 2} and pipeline.emitted == []


async def test_a_poison_message_is_isolated_and_dead_lettered_while_the_others_are_decided(monkeypatch: Any) -> None:
    monkeypatch.setattr(batching.asyncio, "sleep", _no_sleep)
    pipeline = FlakyPipeline(lambda m, n: TypeError("boom") if any(x.value == b"poison" for x in m) else None)
    report = await batching.process_until_done(runtime(pipeline), msgs(b"a", b"poison", b"c"))
    assert [(d.reason, d.offset, d.original) for d in pipeline.emitted] == [("processing_error", 1, b"poison")]
    assert "TypeError: boom" in pipeline.emitted[0].error
    assert report.tiers == {"lru": 2} and [d.offset for d in report.dead] == [1]


async def _no_sleep(_: float) -> None:
    return None


async def test_a_processing_error_that_quotes_a_secret_is_masked_in_the_dead_letter(monkeypatch: Any) -> None:
    monkeypatch.setattr(batching.asyncio, "sleep", _no_sleep)
    poison = b'{"id": "p", "attributes": {"password": "sk-quoted-by-a-bug"}}'
    # a bug that formats the alert into its exception: the detail must not carry the secret out
    pipeline = FlakyPipeline(lambda m, n: ValueError(f"bad {m[0].value!r}") if m[0].value == poison else None)
    await batching.process_until_done(runtime(pipeline), msgs(poison))
    (dead,) = pipeline.emitted
    assert dead.reason == "processing_error" and "ValueError: bad" in dead.error
    assert "sk-quoted-by-a-bug" not in dead.error
