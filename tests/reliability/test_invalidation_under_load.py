"""Drill: invalidations every second under 1,000 alerts/s — no decision after an invalidation uses
an answer from before it.

Two workers share the stream; the reference service answers with a realistic latency (median
20 ms, p99 50 ms) so that fetches are in flight when invalidations land; ``lru_ttl_s`` is 2 s so
the Redis tier serves a real share of the decisions too. Every second the test replaces the
service's rules (round n, stamped into every rationale) and then publishes one invalidation,
rotating scope ``all`` / ``type`` / ``key`` (the ``all`` ones exactly as
``stream-engine propositions invalidate --scope all`` sends them: version ``manual``).

Then it counts, from the decisions topic and the workers' logs only (tests/support/coherence.py),
the decisions whose alert was sent after every worker had applied a covering invalidation but
whose answer comes from older rules. It must be 0.

Size: ``STREAM_ENGINE_DRILL_COHERENCE_S`` seconds of load (CI: 15). The issue's full size is 60 s:

    STREAM_ENGINE_DRILL_COHERENCE_S=60 .venv/bin/python -m pytest tests/reliability/test_invalidation_under_load.py
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import httpx
import orjson
import pytest

from stream_engine.keys import message_key
from stream_engine.propositions.updates import Invalidation, UpdatesPublisher
from stream_engine.settings import Settings
from stream_engine.workload import Workload
from tests.support.coherence import Published, applied_everywhere, count_stale, rules_round
from tests.support.drills import DrillRow, Publisher, Tail, record, results_dir
from tests.support.procs import start_propositions, start_worker

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(600)]

SECONDS = float(os.environ.get("STREAM_ENGINE_DRILL_COHERENCE_S", "15"))
RATE = 1000
TYPES = ("ci_failure", "infra", "scam")


async def invalidate_every_second(
    s: Settings, rounds: int, hot_keys: list[str], published: list[Published], stop: asyncio.Event
) -> None:
    scopes = itertools.cycle(("all", "type", "key"))
    types, keys = itertools.cycle(TYPES), itertools.cycle(hot_keys)
    updates = UpdatesPublisher(s.kafka_bootstrap, s.topic_updates)
    try:
        async with httpx.AsyncClient(base_url=s.propositions_url, timeout=10) as service:
            for n in range(1, rounds + 1):
                if stop.is_set():
                    return
                answer = await service.put("/v1/rules", content=orjson.dumps(rules_round(n)))
                assert answer.status_code == 200, answer.text
                scope = next(scopes)
                inv = Published(
                    n, scope, key=next(keys) if scope == "key" else None, alert_type=next(types) if scope == "type" else None
                )
                await updates.publish(Invalidation(scope, "manual", key=inv.key, alert_type=inv.alert_type))  # type: ignore[arg-type]
                published.append(inv)
                await asyncio.sleep(1.0)
    finally:
        await updates.stop()


async def test_no_decision_after_an_invalidation_uses_an_answer_from_before_it(drill_settings: Settings, tmp_path: Path) -> None:
    s = drill_settings.with_overrides(engine="aiokafka", lru_ttl_s=2.0)
    rules = tmp_path / "rules-round-0.json"
    rules.write_bytes(orjson.dumps(rules_round(0)))
    alerts = Workload("typical", seed=12).alerts(int(RATE * SECONDS))
    popular = Counter(message_key(a).decode() for a in alerts if a["type"] == "ci_failure")
    hot_keys = [key for key, _ in popular.most_common(5)]
    published: list[Published] = []

    service = start_propositions(
        s, tmp_path, "--rules", str(rules), "--no-updates", "--latency-median-ms", "20", "--latency-p99-ms", "50", "--seed", "1"
    )
    workers = []
    try:
        for name in ("w1", "w2"):
            workers.append(await asyncio.to_thread(start_worker, s.with_overrides(data_dir=tmp_path / name), tmp_path, name))
        async with Tail(s.kafka_bootstrap, s.topic_decisions) as tail, Publisher(s.kafka_bootstrap, s.topic_alerts) as pub:
            stop = asyncio.Event()
            invalidating = asyncio.create_task(invalidate_every_second(s, int(SECONDS) - 1, hot_keys, published, stop))
            try:
                await pub.send(alerts, per_second=RATE)
            finally:
                stop.set()
                await invalidating
            decisions = await tail.wait_ids([a["id"] for a in alerts], 120, "decisions")
    finally:
        for w in workers:
            await asyncio.to_thread(w.stop)
        service.stop()

    applied_at = applied_everywhere(published, (w.log() for w in workers))
    result = count_stale(decisions, pub.sent_at, published, applied_at)
    tiers = Counter(d["cache_tier"] for d in decisions)
    record(DrillRow(f"coherence {SECONDS:.0f}s: {result.stale} stale of {result.checked}", len(alerts), len(decisions), 0, 0, None, None))
    details = {
        "drill": "coherence under load", "seconds": SECONDS, "rate": RATE, "engine": s.engine, "redis_url": s.redis_url,
        "non_default_settings": {"lru_ttl_s": 2.0, "engine": "aiokafka", "service latency ms": "median 20, p99 50"},
        "alerts": len(alerts), "invalidations": len(published), "checked": result.checked, "stale": result.stale,
        "checked_by_scope": result.by_scope, "stale_by_tier": result.stale_by_tier, "tiers": dict(tiers),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "command": f"STREAM_ENGINE_DRILL_COHERENCE_S={SECONDS:g} .venv/bin/python -m pytest tests/reliability/{Path(__file__).name}",
    }  # fmt: skip
    (results_dir() / "details").mkdir(exist_ok=True)  # beside, not among, the DrillRow files
    (results_dir() / "details" / f"coherence-{SECONDS:g}s.json").write_text(json.dumps(details, indent=1))
    print(f"stale {result.stale} of {result.checked} checked; by scope {result.by_scope}; stale by tier "
          f"{result.stale_by_tier}; tiers {dict(tiers)}; invalidations {len(published)}")  # fmt: skip

    # The drill really drilled: every scope was published and covered decisions, both tiers served.
    assert {p.scope for p in published} == {"all", "type", "key"}
    assert set(result.by_scope) == {"all", "type", "key"}, result.by_scope
    assert result.checked > len(alerts) / 2, result
    assert tiers["redis"] > 0 and tiers["lru"] > 0 and tiers["service"] > 0, tiers
    assert result.stale == 0, result.examples
