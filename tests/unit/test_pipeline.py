"""Pipeline and Triage with fakes only at typed seams: the Emitter protocol, MemorySink and the
proposition service behind httpx.MockTransport. Redis points at a closed port (degraded tier)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from pathlib import Path

import httpx
import orjson
import pytest
import redis.asyncio as redis_asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from stream_engine.cache.partitioned import PartitionedLRU
from stream_engine.cache.redis_tier import RedisTier
from stream_engine.keys import KeyBuilder
from stream_engine.models import DeadLetter, Decision
from stream_engine.pipeline import Pipeline, RawMessage, Triage
from stream_engine.policy import DecisionPolicy
from stream_engine.propositions.client import PropositionClient
from stream_engine.settings import Settings
from stream_engine.sinks import MemorySink
from stream_engine.validation import AlertDecoder
from stream_engine.workload import Workload, malformed_payloads


class RecordingEmitter:
    def __init__(self) -> None:
        self.decisions: list[Decision] = []
        self.dead: list[DeadLetter] = []

    async def send(self, decisions: Sequence[Decision], dead: Sequence[DeadLetter]) -> Awaitable[None]:
        self.decisions.extend(decisions)
        self.dead.extend(dead)
        return asyncio.sleep(0)


def service(calls: list[list[str]], status: int = 200) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        items = orjson.loads(request.content)["items"]
        calls.append([i["key"] for i in items])
        if status != 200:
            return httpx.Response(status)
        results = {
            i["key"]: ([{"action": "retry_job", "confidence": 0.95, "rationale": "r"}] if "Timeout" in i["key"] else [])
            for i in items
        }
        return httpx.Response(200, json={"version": "v1", "results": results})

    return httpx.MockTransport(handle)


def build(tmp_path: Path, calls: list[list[str]], status: int = 200) -> tuple[Pipeline, RecordingEmitter, MemorySink]:
    settings = Settings(data_dir=tmp_path, service_retries=0, redis_retry_after_s=60)
    dead_redis = redis_asyncio.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    lru = PartitionedLRU(100, 60)
    triage = Triage(
        KeyBuilder.from_settings(settings),
        lru,
        RedisTier(dead_redis, ttl_s=60, namespace="t", retry_after_s=60, coherence=lru.coherence),
        PropositionClient.from_settings(settings, transport=service(calls, status)),
        DecisionPolicy.from_settings(settings),
    )
    emitter, sink = RecordingEmitter(), MemorySink()
    decoder = AlertDecoder.from_settings(settings)
    return Pipeline(decoder, triage, emitter, sink, "w", settings.redact_fields), emitter, sink


def messages(payloads: list[bytes], partition: int = 0) -> list[RawMessage]:
    return [RawMessage(p, partition, i, "alerts") for i, p in enumerate(payloads)]


async def test_a_batch_makes_one_service_call_per_distinct_key_and_decides_every_alert(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    pipeline, emitter, sink = build(tmp_path, calls)
    alerts = Workload("ci_failures", seed=2).alerts(200)
    report = await pipeline.process(messages([orjson.dumps(a) for a in alerts]))

    assert [d.alert_id for d in emitter.decisions] == [a["id"] for a in alerts]
    assert len(calls) == 1 and len(calls[0]) == len(set(calls[0]))
    assert set(calls[0]) == {d.key for d in emitter.decisions}
    assert {d.cache_tier for d in emitter.decisions} == {"service"}
    assert [r.alert_id for r in sink.rows] == [a["id"] for a in alerts]
    assert {m.stage for m in sink.metrics} >= {"decode", "lru", "service", "end_to_end"}
    assert report.tiers == {"service": 200}

    # The next batch with the same keys is answered by the partition-local LRU: no new call.
    again = await pipeline.process(messages([orjson.dumps({**a, "id": "2-" + a["id"]}) for a in alerts]))
    assert len(calls) == 1 and again.tiers == {"lru": 200}


async def test_a_revoked_partition_loses_its_lru(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    pipeline, _, _ = build(tmp_path, calls)
    alerts = [orjson.dumps(a) for a in Workload("ci_failures", seed=2).alerts(20)]
    await pipeline.process(messages(alerts, partition=3))
    pipeline.triage.lru.revoke([3])
    report = await pipeline.process(messages(alerts, partition=3))
    assert len(calls) == 2 and "lru" not in report.tiers


async def test_malformed_input_becomes_dead_letters_with_reason_and_original_bytes(tmp_path: Path) -> None:
    pipeline, emitter, sink = build(tmp_path, [])
    bad = malformed_payloads()
    good = Workload("typical", seed=1).alerts(3)
    await pipeline.process(messages([p for p, _ in bad] + [orjson.dumps(a) for a in good]))
    assert [(d.original, d.reason) for d in emitter.dead] == bad
    assert all(d.error and d.source_topic == "alerts" and not d.redacted for d in emitter.dead)
    assert len(emitter.decisions) == len(sink.rows) == 3


async def test_a_tombstone_is_a_dead_letter_not_a_crash(tmp_path: Path) -> None:
    pipeline, emitter, _ = build(tmp_path, [])
    await pipeline.process([RawMessage(None, 0, 7, "alerts")])
    assert [(d.reason, d.offset, d.original) for d in emitter.dead] == [("not_json", 7, b"")]


async def test_secret_fields_are_masked_in_dead_letters(tmp_path: Path) -> None:
    pipeline, emitter, _ = build(tmp_path, [])
    leaky = {"id": "x", "type": "ci_failure", "attributes": {"repo": "r", "Api_Key": "hunter2", "nested": {"password": "p"}}}
    await pipeline.process(messages([orjson.dumps(leaky)]))
    (dl,) = emitter.dead
    assert dl.reason == "schema" and dl.redacted
    assert b"hunter2" not in dl.original and b'"p"' not in dl.original
    assert orjson.loads(dl.original)["attributes"]["repo"] == "r"


async def test_pathological_nesting_in_a_dead_letter_does_not_crash_redaction(tmp_path: Path) -> None:
    pipeline, emitter, _ = build(tmp_path, [])
    deep = b'{"id": 1, "a": ' + b'{"b": ' * 900 + b"1" + b"}" * 900 + b"}"
    await pipeline.process(messages([deep]))
    (dl,) = emitter.dead
    assert dl.original == deep and not dl.redacted


@pytest.mark.parametrize("status", [503, 400])
async def test_a_failing_service_escalates_with_the_reason(tmp_path: Path, status: int) -> None:
    pipeline, emitter, _ = build(tmp_path, [], status=status)
    alerts = Workload("scam", seed=4).alerts(10)
    await pipeline.process(messages([orjson.dumps(a) for a in alerts]))
    assert {d.mode for d in emitter.decisions} == {"escalate"}
    assert {d.reason for d in emitter.decisions} == {f"service_error:{status}"}
    assert {d.cache_tier for d in emitter.decisions} == {"none"}


async def test_lru_hits_are_sent_before_the_batch_waits_on_the_service(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    pipeline, emitter, sink = build(tmp_path, calls)
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
