"""Pipeline and Triage with fakes only at typed seams: the Emitter protocol, MemorySink and the
proposition service behind httpx.MockTransport. Redis points at a closed port (degraded tier);
see ``pipeline_parts`` in conftest.py."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError

from stream_engine.models import API_STAGES, END_TO_END, STAGES, Alert, Decision, Envelope, StageTimes
from stream_engine.pipeline import BatchProgress, DecisionLog, RawMessage
from stream_engine.sinks import MemorySink
from stream_engine.workload import Workload, malformed_payloads
from tests.unit.fakes import PipelineParts, RecordingEmitter


def messages(payloads: list[bytes], partition: int = 0) -> list[RawMessage]:
    return [RawMessage(p, partition, i, "alerts") for i, p in enumerate(payloads)]


async def test_a_batch_makes_one_service_call_per_distinct_key_and_decides_every_alert(pipeline_parts: PipelineParts) -> None:
    calls: list[list[str]] = []
    pipeline, emitter, sink = pipeline_parts(calls)
    alerts = Workload("ci_failures", seed=2).alerts(200)
    report = await pipeline.process(messages([orjson.dumps(a) for a in alerts]))

    assert [d.alert_id for d in emitter.decisions] == [a["id"] for a in alerts]
    assert len(calls) == 1 and len(calls[0]) == len(set(calls[0]))
    assert set(calls[0]) == {d.key for d in emitter.decisions}
    assert {d.cache_tier for d in emitter.decisions} == {"service"}
    assert [r.alert_id for r in sink.rows] == [a["id"] for a in alerts]
    assert [(r.topic, r.origin, r.offset) for r in sink.rows] == [("alerts", "stream", i) for i in range(200)]  # each row's source
    assert len({r.attempt for r in sink.rows}) == 1  # one processing of the batch
    assert {m.stage for m in sink.metrics} >= {"decode", "lru", "service", "end_to_end"}
    assert report.tiers == {"service": 200}

    # The next batch with the same keys is answered by the partition-local LRU: no new call.
    again = await pipeline.process(messages([orjson.dumps({**a, "id": "2-" + a["id"]}) for a in alerts]))
    assert len(calls) == 1 and again.tiers == {"lru": 200}


async def test_a_revoked_partition_loses_its_lru(pipeline_parts: PipelineParts) -> None:
    calls: list[list[str]] = []
    pipeline, _, _ = pipeline_parts(calls)
    alerts = [orjson.dumps(a) for a in Workload("ci_failures", seed=2).alerts(20)]
    await pipeline.process(messages(alerts, partition=3))
    pipeline.triage.lru.revoke([3])
    report = await pipeline.process(messages(alerts, partition=3))
    assert len(calls) == 2 and "lru" not in report.tiers


async def test_malformed_input_becomes_dead_letters_with_reason_and_original_bytes(pipeline_parts: PipelineParts) -> None:
    pipeline, emitter, sink = pipeline_parts([])
    bad = malformed_payloads()
    good = Workload("typical", seed=1).alerts(3)
    await pipeline.process(messages([p for p, _ in bad] + [orjson.dumps(a) for a in good]))
    assert [(d.original, d.reason) for d in emitter.dead] == bad
    assert all(d.error and d.source_topic == "alerts" and not d.redacted for d in emitter.dead)
    assert len(emitter.decisions) == len(sink.rows) == 3


async def test_a_tombstone_is_a_dead_letter_not_a_crash(pipeline_parts: PipelineParts) -> None:
    pipeline, emitter, _ = pipeline_parts([])
    await pipeline.process([RawMessage(None, 0, 7, "alerts")])
    assert [(d.reason, d.offset, d.original) for d in emitter.dead] == [("not_json", 7, b"")]


async def test_secret_fields_are_masked_in_dead_letters(pipeline_parts: PipelineParts) -> None:
    pipeline, emitter, _ = pipeline_parts([])
    leaky = {"id": "x", "type": "ci_failure", "attributes": {"repo": "r", "Api_Key": "hunter2", "nested": {"password": "p"}}}
    await pipeline.process(messages([orjson.dumps(leaky)]))
    (dl,) = emitter.dead
    assert dl.reason == "schema" and dl.redacted
    assert b"hunter2" not in dl.original and b'"p"' not in dl.original
    assert orjson.loads(dl.original)["attributes"]["repo"] == "r"


SECRET = b"sk-pipeline-planted"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"id": "x", "type": "ci_failure", "attributes": {"password": "' + SECRET + b'"}}', "schema"),
        (b'[{"token": "' + SECRET + b'"}]', "not_object"),
        (b'{"api_key": "' + SECRET + b'", nope', "not_json"),
        (b'\xff{"password": "' + SECRET + b'"}', "not_utf8"),
        (b"[" * 1100 + b'{"secret": "' + SECRET + b'"}' + b"]" * 1100, "too_deep"),
        (b'{"id": "x", "password": "' + SECRET + b'", "blob": "' + b"a" * 70000 + b'"', "too_large"),
    ],
)
async def test_a_secret_in_any_malformed_payload_never_reaches_the_dlq(pipeline_parts: PipelineParts, raw: bytes, reason: str) -> None:
    pipeline, emitter, _ = pipeline_parts([])
    await pipeline.process(messages([raw]))
    (dl,) = emitter.dead
    assert dl.reason == reason and dl.redacted
    assert SECRET not in dl.original and SECRET.decode() not in dl.error and SECRET not in dl.to_json()


async def test_pathological_nesting_in_a_dead_letter_does_not_crash_redaction(pipeline_parts: PipelineParts) -> None:
    pipeline, emitter, _ = pipeline_parts([])
    deep = b'{"id": 1, "a": ' + b'{"b": ' * 900 + b"1" + b"}" * 900 + b"}"
    await pipeline.process(messages([deep]))
    (dl,) = emitter.dead
    assert dl.original == deep and not dl.redacted


@pytest.mark.parametrize("status", [503, 400])
async def test_a_failing_service_escalates_with_the_reason(pipeline_parts: PipelineParts, status: int) -> None:
    pipeline, emitter, _ = pipeline_parts([], status=status)
    alerts = Workload("scam", seed=4).alerts(10)
    await pipeline.process(messages([orjson.dumps(a) for a in alerts]))
    assert {d.mode for d in emitter.decisions} == {"escalate"}
    assert {d.reason for d in emitter.decisions} == {f"service_error:{status}"}
    assert {d.cache_tier for d in emitter.decisions} == {"none"}


async def test_lru_hits_are_sent_before_the_batch_waits_on_the_service(pipeline_parts: PipelineParts) -> None:
    calls: list[list[str]] = []
    pipeline, emitter, sink = pipeline_parts(calls)
    warm = Workload("ci_failures", seed=2).alerts(50)
    await pipeline.process(messages([orjson.dumps(a) for a in warm]))

    sent_before_service: list[int] = []
    real_fetch = pipeline.triage.service.fetch_many

    async def fetch_many(requests, epoch=0):  # type: ignore[no-untyped-def]
        sent_before_service.append(len(emitter.decisions))
        return await real_fetch(requests, epoch)

    pipeline.triage.service.fetch_many = fetch_many  # type: ignore[method-assign]
    hits = [{**a, "id": "hit-" + a["id"]} for a in warm[:10]]
    cold = Workload("scam", seed=9).alerts(5)
    before = len(emitter.decisions)
    report = await pipeline.process(messages([orjson.dumps(a) for a in hits + cold]))
    assert sent_before_service == [before + 10]  # the 10 hits were already handed to the producer
    assert report.tiers == {"lru": 10, "service": 5}
    rows = {r.alert_id: r for r in sink.rows}
    for d in report.decisions:  # rows stay aligned with their decisions after the reordering
        assert rows[d.alert_id].cache_tier == d.cache_tier and rows[d.alert_id].key == d.key


async def test_the_decision_log_writes_the_stages_of_its_source_and_times_itself() -> None:
    sink = MemorySink()
    log = DecisionLog(sink, "w7")
    env = Envelope(Alert("a", "scam", 0, "high", "s"), "scam|k", 65535, 0, 1_000_000_000)
    decision = Decision("a", "scam", "scam|k", "escalate", None, None, [], "none", 5.0, 1.0, reason="timeout")
    times = StageTimes(decode=1, lru=2, redis=3, service=4, decide=5, produce=6)

    await log.write([env], [decision], times, env.received_ns, API_STAGES)
    assert [m.stage for m in sink.metrics] == ["lru", "redis", "service", "decide", END_TO_END]
    assert [(r.alert_id, r.partition, r.worker) for r in sink.rows] == [("a", 65535, "w7")]
    assert times.sink > 0, "the sink's own time is measured"

    sink.metrics.clear()
    await log.write([env], [decision], StageTimes(), env.received_ns, STAGES)
    assert [m.stage for m in sink.metrics] == [*(s for s in STAGES if s != "sink"), END_TO_END]


async def test_a_processing_error_that_quotes_a_secret_is_masked_in_the_dead_letter(pipeline_parts: PipelineParts) -> None:
    pipeline, _, _ = pipeline_parts([])
    poison = b'{"id": "p", "attributes": {"password": "sk-quoted-by-a-bug"}}'
    # a bug that formats the alert into its exception: the detail must not carry the secret out
    dead = pipeline.dead_letter(RawMessage(poison, 0, 3, "alerts"), "processing_error", f"ValueError: bad {poison!r}", 0.0)
    assert dead.reason == "processing_error" and "ValueError: bad" in dead.error
    assert "sk-quoted-by-a-bug" not in dead.error and b"sk-quoted-by-a-bug" not in dead.original


# --- acks: a batch is done only when the broker acknowledged every record ---------------------------


async def test_process_returns_only_after_every_ack_and_writes_rows_after_them(pipeline_parts: PipelineParts) -> None:
    emitter = RecordingEmitter()
    emitter.gate = asyncio.Event()  # a broker that has not answered yet
    pipeline, _, sink = pipeline_parts([], emitter=emitter)
    alerts = Workload("ci_failures", seed=2).alerts(5)
    batch = asyncio.ensure_future(pipeline.process(messages([orjson.dumps(a) for a in alerts])))
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(emitter.decisions) == 5 and not batch.done(), "sent, but not acknowledged: not done"
    assert sink.rows == [], "no row before the acks"
    emitter.gate.set()
    report = await asyncio.wait_for(batch, 5)
    assert len(emitter.acked) == len(sink.rows) == len(report.decisions) == 5


async def test_a_refused_ack_fails_the_batch_and_no_row_is_written(pipeline_parts: PipelineParts) -> None:
    alerts = Workload("ci_failures", seed=2).alerts(5)
    refused = alerts[3]["id"]
    emitter = RecordingEmitter(lambda r: KafkaConnectionError() if isinstance(r, Decision) and r.alert_id == refused else None)
    pipeline, _, sink = pipeline_parts([], emitter=emitter)
    progress = BatchProgress()
    with pytest.raises(KafkaConnectionError):
        await pipeline.process(messages([orjson.dumps(a) for a in alerts]), progress)
    assert sink.rows == []
    assert len(progress.acked) == 4 and (0, 3) not in progress.acked, "what was acknowledged is remembered"


async def test_acks_already_sent_are_settled_before_a_later_failure_propagates(pipeline_parts: PipelineParts) -> None:
    """Hits are sent before the misses are decided; if deciding the misses fails, the hits' acks
    are awaited first, and remembered, so the retry does not send them again."""
    calls: list[list[str]] = []
    pipeline, emitter, _ = pipeline_parts(calls)
    warm = Workload("ci_failures", seed=2).alerts(5)
    await pipeline.process(messages([orjson.dumps(a) for a in warm]))
    hits = [{**a, "id": "hit-" + a["id"]} for a in warm]
    cold = Workload("scam", seed=9).alerts(2)

    async def broken_fetch(requests, epoch=0):  # type: ignore[no-untyped-def]
        raise RuntimeError("the service client broke")

    pipeline.triage.service.fetch_many = broken_fetch  # type: ignore[method-assign]
    emitter.acked.clear()
    progress = BatchProgress()
    with pytest.raises(RuntimeError):
        await pipeline.process(messages([orjson.dumps(a) for a in hits + cold]), progress)
    assert sorted(d.alert_id for d in emitter.acked) == sorted(a["id"] for a in hits), "settled before the error"
    assert progress.acked == {(0, i) for i in range(len(hits))}
