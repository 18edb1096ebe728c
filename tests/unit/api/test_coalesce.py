"""Concurrent API calls share one Triage round trip (Coalescer), results go back to their caller."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson
import pytest

from stream_engine.api.admission import Busy
from stream_engine.api.coalesce import Coalescer
from stream_engine.models import Decision, Envelope, StageTimes
from stream_engine.workload import Workload
from tests.unit.fakes import PipelineParts


async def test_concurrent_requests_share_service_calls_and_each_gets_its_own_decisions(pipeline_parts: PipelineParts) -> None:
    calls: list[list[str]] = []
    pipeline, _, _ = pipeline_parts(calls)
    triage = pipeline.triage
    coalescer = Coalescer(triage.decide, slots=1, max_batch=1000)
    alerts = Workload("scam", seed=11).alerts(60)  # mostly distinct keys: cold
    decoder = pipeline.decoder
    requests = [[triage.envelope(decoder.decode(orjson.dumps(a)), 65535, 0, 0)] for a in alerts]

    results = await asyncio.gather(*(coalescer.decide(envs, StageTimes()) for envs in requests))

    assert [r[0].alert_id for r in results] == [a["id"] for a in alerts]  # each caller gets its own
    assert len(calls) < len(alerts) / 5, f"{len(calls)} service calls for {len(alerts)} concurrent requests"
    assert coalescer.drains == len(calls)


async def test_a_lone_request_is_decided_at_once_and_failures_reach_every_waiter(pipeline_parts: PipelineParts) -> None:
    calls: list[list[str]] = []
    pipeline, _, _ = pipeline_parts(calls)
    triage = pipeline.triage
    coalescer = Coalescer(triage.decide, slots=2)
    alert = Workload("ci_failures", seed=1).alerts(1)[0]
    env = triage.envelope(pipeline.decoder.decode(orjson.dumps(alert)), 65535, 0, 0)
    times = StageTimes()
    (decision,) = await coalescer.decide([env], times)
    assert decision.alert_id == alert["id"] and coalescer.drains == 1 and times.service > 0

    async def boom(*_: object) -> list[Decision]:
        raise RuntimeError("triage broke")

    broken = Coalescer(boom, slots=2)
    outcomes = await asyncio.gather(*(broken.decide([env], StageTimes()) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes)


async def test_the_queue_is_bounded_but_a_lone_large_request_still_passes(pipeline_parts: PipelineParts) -> None:
    pipeline, _, _ = pipeline_parts([])
    triage, decoder = pipeline.triage, pipeline.decoder
    release = asyncio.Event()

    async def held(envelopes: Sequence[Envelope], times: StageTimes) -> list[Decision]:
        await release.wait()
        return await triage.decide(envelopes, times)

    coalescer = Coalescer(held, slots=1, max_queued=10)
    envs = [triage.envelope(decoder.decode(orjson.dumps(a)), 65535, 0, 0) for a in Workload("scam", seed=3).alerts(30)]
    lone = asyncio.create_task(coalescer.decide(envs[:25], StageTimes()))  # 25 > 10, but nothing is queued
    await asyncio.sleep(0)
    assert coalescer.queued == 25
    with pytest.raises(Busy):
        await coalescer.decide(envs[25:26], StageTimes())
    assert coalescer.refused == 1
    release.set()
    assert len(await lone) == 25 and coalescer.queued == 0
    assert len(await coalescer.decide(envs[:10], StageTimes())) == 10
