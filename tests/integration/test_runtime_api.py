"""What an API caller can push into the shared caches, on the real Redis and proposition service.

A proposition key (here a fingerprint: the ``scam`` alert lacks its ``merchant`` key field) does
not cover the whole alert the service ranks, so whichever alert fills the cache for a key decides
the answer every later alert of that key gets. An API caller must not be that alert.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from harness.procs import Proc
from stream_engine.models import StageTimes
from stream_engine.runtime import Runtime
from stream_engine.settings import Settings
from stream_engine.sinks import MemorySink

pytestmark = pytest.mark.integration

FINGERPRINT = "fp-shared-7"


def scam(alert_id: str, pattern: str, fingerprint: str = FINGERPRINT) -> bytes:
    return orjson.dumps(
        {"id": alert_id, "type": "scam", "timestamp": 1893456000, "severity": "high", "source": "fraud-engine",
         "fingerprint": fingerprint, "attributes": {"pattern": pattern}}
    )  # fmt: skip


@pytest.fixture
async def runtime(worker_settings: Settings, propositions: Proc) -> AsyncIterator[Runtime]:
    rt = Runtime(worker_settings, sink=MemorySink())
    yield rt
    await rt.stop()


async def test_an_api_caller_cannot_make_its_alert_the_cached_answer_for_the_streams(runtime: Runtime) -> None:
    rt = runtime
    crafted = rt.envelope(rt.decode(scam("api-1", "card_testing")), 65535, 0, 0)
    (api_decision,) = await rt.decide([crafted], StageTimes())
    assert (api_decision.mode, api_decision.action, api_decision.cache_tier) == ("auto", "block_card", "service")
    assert api_decision.key == f"scam|fp={FINGERPRINT}"
    assert await rt.redis.get_many([crafted.key]) == {}, "the API wrote the shared cache"

    # The stream's alert of that key, whose own content has no rule: its own answer, not the API's.
    stream = rt.envelope(rt.decode(scam("s-1", "benign_refund")), 0, 7, 0)
    (decision,) = await rt.triage.decide([stream], StageTimes())
    assert (decision.cache_tier, decision.action) == ("service", None)
    assert decision.mode != "auto"
    # The stream does fill the cache, for its next alerts of that key.
    cached = await rt.redis.get_many([stream.key])
    assert set(cached) == {stream.key} and cached[stream.key][0] == []  # (propositions, fetched under, TTL left)


async def test_the_api_reads_what_the_stream_cached(runtime: Runtime) -> None:
    rt = runtime
    stream = rt.envelope(rt.decode(scam("s-2", "card_testing", "fp-other")), 0, 8, 0)
    (first,) = await rt.triage.decide([stream], StageTimes())
    assert first.cache_tier == "service"
    (api,) = await rt.decide([rt.envelope(rt.decode(scam("api-3", "card_testing", "fp-other")), 65535, 0, 0)], StageTimes())
    assert (api.cache_tier, api.action) == ("redis", "block_card")
