"""EngineCore.process on the real Pipeline, fakes only at its seams (the Emitter, the Sink, the
service): outages are waited out and retried from the stage that failed; poison is isolated and
dead-lettered; records too large are a problem of their own; too much poison is an outage."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError, KafkaError

from stream_engine.engines import core
from stream_engine.engines.core import EngineCore, PoisonGauge, PoisonRateExceeded, is_outage
from stream_engine.models import DeadLetter, Decision
from stream_engine.monitor import Monitor
from stream_engine.pipeline import Pipeline, RawMessage, RecordTooLarge
from stream_engine.settings import Settings
from stream_engine.workload import Workload
from tests.unit.fakes import FakeClock, FlakySink, PipelineParts, RecordingEmitter

ALERTS = Workload("ci_failures", seed=3).alerts(6)


def engine_core(pipeline: Pipeline, tmp_path: Path, **settings: Any) -> EngineCore:
    runtime = SimpleNamespace(pipeline=pipeline, monitor=Monitor())
    return EngineCore(Settings(data_dir=tmp_path, **settings), runtime)  # type: ignore[arg-type]


def msgs(alerts: list[dict[str, Any]] = ALERTS) -> list[RawMessage]:
    return [RawMessage(orjson.dumps(a), 0, i, "alerts") for i, a in enumerate(alerts)]


def sent_ids(emitter: RecordingEmitter) -> list[str]:
    return [d.alert_id for d in emitter.decisions]


def acked_ids(emitter: RecordingEmitter) -> list[str]:
    return [r.alert_id for r in emitter.acked if isinstance(r, Decision)]


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    real_sleep = asyncio.sleep

    async def no_sleep(_: float) -> None:
        await real_sleep(0)

    monkeypatch.setattr(core.asyncio, "sleep", no_sleep)


async def test_an_outage_is_retried_until_it_passes_and_nothing_is_dead_lettered(pipeline_parts: PipelineParts, tmp_path: Path) -> None:
    sends = iter(range(1000))
    emitter = RecordingEmitter(lambda r: KafkaConnectionError() if next(sends) < 20 else None)
    pipeline, _, sink = pipeline_parts([], emitter=emitter)
    report = await engine_core(pipeline, tmp_path).process(msgs())
    assert sorted(acked_ids(emitter)) == sorted(a["id"] for a in ALERTS) and not emitter.dead
    assert [d.alert_id for d in report.decisions] == [a["id"] for a in ALERTS]
    assert [r.alert_id for r in sink.rows] == [a["id"] for a in ALERTS]


async def test_a_poison_message_is_isolated_and_dead_lettered_while_the_others_are_decided_once(
    pipeline_parts: PipelineParts, tmp_path: Path
) -> None:
    poison = ALERTS[2]["id"]
    emitter = RecordingEmitter(lambda r: TypeError("boom") if isinstance(r, Decision) and r.alert_id == poison else None)
    pipeline, _, sink = pipeline_parts([], emitter=emitter)
    engine = engine_core(pipeline, tmp_path)
    report = await engine.process(msgs())
    assert [(d.reason, d.offset) for d in emitter.dead] == [("processing_error", 2)]
    assert "TypeError: boom" in emitter.dead[0].error
    others = [a["id"] for a in ALERTS if a["id"] != poison]
    assert sorted(acked_ids(emitter)) == sorted(others), "each decision acknowledged once: none republished"
    assert sorted(sent_ids(emitter)) == sorted(others + [poison] * sent_ids(emitter).count(poison))
    assert sorted(r.alert_id for r in sink.rows) == sorted(others)
    assert [d.offset for d in report.dead] == [2]
    monitor = engine.runtime.monitor
    assert monitor.batch_failures["TypeError"] >= 3 and monitor.dead_letters["processing_error"] == 1


async def test_a_failed_sink_write_is_retried_alone_without_republishing_a_decision(pipeline_parts: PipelineParts, tmp_path: Path) -> None:
    sink = FlakySink(lambda n: OSError(errno.ENOSPC, "No space left on device") if n <= 3 else None)
    pipeline, emitter, _ = pipeline_parts([], sink=sink)
    await engine_core(pipeline, tmp_path).process(msgs())
    assert sent_ids(emitter) == acked_ids(emitter), "no decision sent twice"
    assert sorted(sent_ids(emitter)) == sorted(a["id"] for a in ALERTS)
    assert sink.calls == 4 and sorted(r.alert_id for r in sink.rows) == sorted(a["id"] for a in ALERTS)


async def test_a_retry_sends_the_decision_already_made_never_a_new_one(pipeline_parts: PipelineParts, tmp_path: Path) -> None:
    """An invalidation between two attempts must not change an alert's decision: the first
    attempt's decision may have reached the broker even though its ack failed."""
    calls: list[list[str]] = []
    cold = Workload("ci_failures", seed=5).alerts(1)[0]
    cold["attributes"]["error_class"] = "Timeout"  # the service's answer: one proposition (auto)
    pipeline: Pipeline

    def answer(record: Decision | DeadLetter) -> BaseException | None:
        if len(calls) == 1:  # the first attempt's send: then the cache is invalidated
            pipeline.triage.lru.clear()
            calls.append(["invalidated"])
            return KafkaConnectionError()
        return None

    pipeline, emitter, _ = pipeline_parts(calls, emitter=RecordingEmitter(answer))
    await engine_core(pipeline, tmp_path).process(msgs([cold]))
    assert len(emitter.decisions) == 2 and emitter.decisions[0] == emitter.decisions[1], emitter.decisions
    assert [d.mode for d in emitter.decisions] == ["auto", "auto"]


async def test_a_decision_too_large_for_its_topic_is_dead_lettered_at_once(pipeline_parts: PipelineParts, tmp_path: Path) -> None:
    big = ALERTS[1]["id"]
    too_large = RecordTooLarge("decisions", 5000, 3000)
    emitter = RecordingEmitter(lambda r: too_large if isinstance(r, Decision) and r.alert_id == big else None)
    pipeline, _, sink = pipeline_parts([], emitter=emitter)
    engine = engine_core(pipeline, tmp_path)
    await engine.process(msgs())
    assert sent_ids(emitter).count(big) == 1, "never retried"
    assert [(d.reason, d.offset, d.original) for d in emitter.dead] == [("decision_too_large", 1, orjson.dumps(ALERTS[1]))]
    assert "5000 bytes" in emitter.dead[0].error
    assert big not in {r.alert_id for r in sink.rows} and len(sink.rows) == len(ALERTS) - 1


async def test_a_dead_letter_too_large_for_the_dlq_is_sent_without_its_original(pipeline_parts: PipelineParts, tmp_path: Path) -> None:
    emitter = RecordingEmitter(lambda r: RecordTooLarge("alerts.dlq", 9000, 1500) if isinstance(r, DeadLetter) and r.original else None)
    pipeline, _, _ = pipeline_parts([], emitter=emitter)
    report = await engine_core(pipeline, tmp_path).process(msgs() + [RawMessage(b"not json" * 100, 0, 6, "alerts")])
    (first, second) = emitter.dead
    assert first.original == b"not json" * 100 and second.original == b"" and second.reason == "not_json"
    assert "original (800 bytes) omitted" in second.error and "1500 bytes" in second.error
    assert report.dead == [second] and not report.dropped


async def test_a_dead_letter_too_large_even_without_its_original_is_logged_and_counted(
    pipeline_parts: PipelineParts, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    emitter = RecordingEmitter(lambda r: RecordTooLarge("alerts.dlq", 900, 100) if isinstance(r, DeadLetter) else None)
    pipeline, _, _ = pipeline_parts([], emitter=emitter)
    engine = engine_core(pipeline, tmp_path)
    report = await engine.process(msgs() + [RawMessage(b"not json", 0, 6, "alerts")])
    assert len(emitter.dead) == 2 and not report.dead and [d.offset for d in report.dropped] == [6]
    assert engine.runtime.monitor.dead_letters_dropped == {"not_json": 1}
    assert "dead letter dropped" in caplog.text
    assert sorted(acked_ids(emitter)) == sorted(a["id"] for a in ALERTS), "the batch went on"


async def test_too_much_poison_is_an_outage_retried_until_the_cause_is_fixed(pipeline_parts: PipelineParts, tmp_path: Path) -> None:
    """A topic whose limit is too small for every decision: nothing is diverted to the DLQ."""
    alerts = Workload("ci_failures", seed=7).alerts(12)
    state = {"limit": 100, "capped": 0}
    emitter = RecordingEmitter(
        lambda r: RecordTooLarge("decisions", 600, state["limit"]) if isinstance(r, Decision) and state["limit"] < 600 else None
    )
    pipeline, _, sink = pipeline_parts([], emitter=emitter)
    engine = engine_core(pipeline, tmp_path)
    monitor = engine.runtime.monitor
    real_failed = monitor.batch_failed

    def batch_failed(exc: BaseException) -> None:
        real_failed(exc)
        if isinstance(exc, PoisonRateExceeded) and monitor.batch_failures["PoisonRateExceeded"] >= 2:
            state["limit"] = 1_000_000  # the operator raises the topic's limit

    monitor.batch_failed = batch_failed  # type: ignore[method-assign]
    report = await asyncio.wait_for(engine.process(msgs(alerts)), 30)
    assert not emitter.dead, "nothing dead-lettered"
    assert sorted(d.alert_id for d in report.decisions) == sorted(a["id"] for a in alerts)
    assert sorted(r.alert_id for r in sink.rows) == sorted(a["id"] for a in alerts)
    assert monitor.batch_failures["PoisonRateExceeded"] >= 2


async def test_a_failure_outside_the_pipeline_never_leaves_the_batch_unfinished(
    pipeline_parts: PipelineParts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Say making the dead letter fails once (a bug in masking): the step goes on, it does not
    raise out of the engine's batch task (which would never finish, and never commit again)."""
    poison = ALERTS[0]["id"]
    emitter = RecordingEmitter(lambda r: ValueError("bug") if isinstance(r, Decision) and r.alert_id == poison else None)
    pipeline, _, _ = pipeline_parts([], emitter=emitter)
    real, failures = pipeline.dead_letter, iter([RuntimeError("masking blew up")])

    def dead_letter(*args: Any) -> DeadLetter:
        error = next(failures, None)
        if error is not None:
            raise error
        return real(*args)

    monkeypatch.setattr(pipeline, "dead_letter", dead_letter)
    engine = engine_core(pipeline, tmp_path)
    report = await asyncio.wait_for(engine.process(msgs()), 30)
    assert [d.reason for d in report.dead] == ["processing_error"]
    assert engine.runtime.monitor.batch_failures["RuntimeError"] == 1


def test_producer_and_broker_errors_are_outages_also_when_wrapped() -> None:
    class ProducerSendError(Exception):  # faust's wrapper: raise ProducerSendError(...) from exc
        pass

    try:
        try:
            raise KafkaError("broker down")
        except KafkaError as exc:
            raise ProducerSendError("Error while sending") from exc
    except ProducerSendError as wrapped:
        assert is_outage(wrapped)
    assert is_outage(OSError(errno.ENOSPC, "disk full")) and is_outage(PoisonRateExceeded("cap"))
    assert not is_outage(TypeError("a bug")) and not is_outage(RecordTooLarge("decisions", 2, 1))


def test_the_poison_gauge_caps_a_share_of_a_batch_and_a_rate_per_minute() -> None:
    clock = FakeClock(0.0)
    gauge = PoisonGauge(0.5, 5, clock)
    gauge.check(1, 1)  # one bad alert alone: poison
    gauge.check(3, 10)  # 30 % of a batch
    with pytest.raises(PoisonRateExceeded, match="6 of 10"):
        PoisonGauge(0.5, 100, clock).check(6, 10)
    with pytest.raises(PoisonRateExceeded, match="within a minute"):
        gauge.check(2, 100)  # 1 + 3 + 2 > 5 in a minute
    clock.now = 61.0
    gauge.check(5, 100)  # the minute has passed
