"""Fixtures of the unit tests (fakes only at typed seams).

* ``clock``: a settable clock for the parts that take one (TTL caches, the breaker, the client).
* ``pipeline_parts``: ``pipeline_parts(calls, status=200, emitter=None, sink=None)`` -> (Pipeline,
  RecordingEmitter, MemorySink) over a proposition service behind ``httpx.MockTransport`` (answers recorded in
  ``calls``; a ``Timeout`` key gets one proposition, others none) and a Redis on a closed port
  (the degraded tier).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as redis_asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from stream_engine.cache.partitioned import PartitionedLRU
from stream_engine.cache.redis_tier import RedisTier
from stream_engine.keys import KeyBuilder
from stream_engine.pipeline import DecisionLog, Pipeline, Triage
from stream_engine.policy import DecisionPolicy
from stream_engine.propositions.client import PropositionClient
from stream_engine.settings import Settings
from stream_engine.sinks import MemorySink
from stream_engine.validation import AlertDecoder
from tests.unit.fakes import FakeClock, PipelineParts, RecordingEmitter, service_transport


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def pipeline_parts(tmp_path: Path) -> PipelineParts:
    def build(
        calls: list[list[str]], status: int = 200, emitter: RecordingEmitter | None = None, sink: MemorySink | None = None
    ) -> tuple[Pipeline, RecordingEmitter, MemorySink]:
        settings = Settings(data_dir=tmp_path, service_retries=0, redis_retry_after_s=60)
        dead_redis = redis_asyncio.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
        lru = PartitionedLRU(100, 60)
        triage = Triage(
            KeyBuilder.from_settings(settings),
            lru,
            RedisTier(dead_redis, ttl_s=60, namespace="t", retry_after_s=60, coherence=lru.coherence),
            PropositionClient.from_settings(settings, transport=service_transport(calls, status)),
            DecisionPolicy.from_settings(settings),
        )
        emitter = emitter if emitter is not None else RecordingEmitter()
        sink = sink if sink is not None else MemorySink()
        decoder = AlertDecoder.from_settings(settings)
        return Pipeline(decoder, triage, emitter, DecisionLog(sink, "w"), settings.redact_fields), emitter, sink

    return build
