"""Drill: invalidations every second under 1,000 alerts/s — no decision after an invalidation uses
an answer from before it.

Two workers share the stream; the reference service answers with a realistic latency (median
20 ms, p99 50 ms) so that fetches are in flight when invalidations land; ``lru_ttl_s`` is 2 s so
the Redis tier serves a real share of the decisions too. Every second the test replaces the
service's rules (round n, stamped into every rationale) and then publishes one invalidation,
rotating scope ``all`` / ``type`` / ``key`` (the ``all`` ones exactly as
``stream-engine propositions invalidate --scope all`` sends them: version ``manual``).

Then it counts, from the decisions topic and the workers' logs only (tests/coherence.py),
the decisions whose alert was sent after every worker had applied a covering invalidation but
whose answer comes from older rules. It must be 0, and every alert must be decided.

Backends, each with both engines (like every drill): the stack's single Redis, the local
3-master Redis Cluster, and a private cluster one of whose masters is killed a third of the way
through and restarted (empty) at two thirds: decisions keep flowing through the service while
its slots are down.

Size: ``STREAM_ENGINE_DRILL_COHERENCE_S`` seconds of load (CI: 15). The issue's full size is 60 s:

    STREAM_ENGINE_DRILL_COHERENCE_S=60 .venv/bin/python -m pytest tests/reliability/test_invalidation_under_load.py
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from harness.drills import Publisher, Tail, account, private_redis_cluster, record, results_dir
from harness.procs import admin_headers, start_propositions, start_worker
from stream_engine.keys import message_key
from stream_engine.propositions.updates import Invalidation, UpdatesPublisher
from stream_engine.settings import Settings
from stream_engine.stack.redis_cluster import LocalRedisCluster
from stream_engine.workload import Workload
from tests.coherence import Published, applied_everywhere, count_stale, rules_round

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(600)]

SECONDS = float(os.environ.get("STREAM_ENGINE_DRILL_COHERENCE_S", "15"))
RATE = 1000
REDIS_BACK_DEADLINE_S = 90.0
TYPES = ("ci_failure", "infra", "scam")
SERVICE_FAILURES = {"timeout", "unavailable", "breaker_open", "no_response"}


async def invalidate_every_second(
    s: Settings, rounds: int, hot_keys: list[str], published: list[Published], stop: asyncio.Event
) -> None:
    scopes = itertools.cycle(("all", "type", "key"))
    types, keys = itertools.cycle(TYPES), itertools.cycle(hot_keys)
    updates = UpdatesPublisher(s.kafka_bootstrap, s.topic_updates)
    try:
        async with httpx.AsyncClient(base_url=s.propositions_url, headers=admin_headers(s), timeout=10) as service:
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


async def kill_a_node_and_restart_it(cluster: LocalRedisCluster, pub: Publisher, total: int, marks: dict[str, float]) -> None:
    """One master goes down a third of the way through the stream and comes back (empty) at two thirds."""
    port = cluster.ports[1]
    while pub.sent < total // 3:
        await asyncio.sleep(0.05)
    await asyncio.to_thread(cluster.kill, port)
    marks["killed"] = time.time()
    while pub.sent < 2 * total // 3:
        await asyncio.sleep(0.05)
    await asyncio.to_thread(cluster.restart, port)
    marks["restarted"] = time.time()


async def stream_until_redis_answers(pub: Publisher, tail: Tail, marks: dict[str, float]) -> list[dict[str, Any]]:
    """Keep the stream flowing, a second of alerts at a time, until Redis answers an alert sent after the
    restart (deadline: ``REDIS_BACK_DEADLINE_S``); returns the alerts it added.

    The restarted node comes back empty and the cluster must re-form before the workers' pending
    invalidations are taken and Redis is read again; under load (CI, 3 drills at once) that took
    longer than the stream's last third, so no alert of that third could be judged. The
    assertion below stays: without a Redis answer by the deadline, the drill fails."""
    added: list[dict[str, Any]] = []
    deadline = time.monotonic() + REDIS_BACK_DEADLINE_S
    for second in itertools.count(1):
        if any(d["cache_tier"] == "redis" and pub.sent_at.get(d["alert_id"], 0) > marks["restarted"] for d in tail.records):
            break
        if time.monotonic() > deadline:
            break
        more = Workload("typical", seed=1000 + second).alerts(RATE)
        await pub.send(more, per_second=RATE)
        added += more
    marks["extra_alerts"] = len(added)
    return added


BACKENDS = ["single", "cluster", "cluster-node-restart"]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_no_decision_after_an_invalidation_uses_an_answer_from_before_it(
    drill_settings: Settings, tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    """On each backend, with each engine (``drill_settings``)."""
    engine = drill_settings.engine
    cluster: LocalRedisCluster | None = None
    redis_url = drill_settings.redis_url
    if backend == "cluster":
        redis_url = request.getfixturevalue("redis_cluster")
    elif backend == "cluster-node-restart":
        cluster = await asyncio.to_thread(private_redis_cluster, tmp_path / "redis-cluster")
        redis_url = cluster.url
    s = drill_settings.with_overrides(lru_ttl_s=2.0, redis_url=redis_url)
    rules = tmp_path / "rules-round-0.json"
    rules.write_bytes(orjson.dumps(rules_round(0)))
    alerts = Workload("typical", seed=12).alerts(int(RATE * SECONDS))
    popular = Counter(message_key(a).decode() for a in alerts if a["type"] == "ci_failure")
    hot_keys = [key for key, _ in popular.most_common(5)]
    published: list[Published] = []
    marks: dict[str, float] = {}

    service = start_propositions(
        s, tmp_path, "--rules", str(rules), "--no-updates", "--latency-median-ms", "20", "--latency-p99-ms", "50", "--seed", "1"
    )
    workers = []
    try:
        for name in ("w1", "w2"):
            workers.append(await asyncio.to_thread(start_worker, s.with_overrides(data_dir=tmp_path / name), tmp_path, name))
        async with Tail(s.kafka_bootstrap, s.topic_decisions) as tail, Publisher(s.kafka_bootstrap, s.topic_alerts) as pub:
            stop = asyncio.Event()
            side_tasks = [asyncio.create_task(invalidate_every_second(s, int(SECONDS) - 1, hot_keys, published, stop))]
            if cluster is not None:
                side_tasks.append(asyncio.create_task(kill_a_node_and_restart_it(cluster, pub, len(alerts), marks)))
            try:
                await pub.send(alerts, per_second=RATE)
                if cluster is not None:
                    await side_tasks[1]  # the node is back
                    alerts += await stream_until_redis_answers(pub, tail, marks)
            finally:
                stop.set()
                await asyncio.gather(*side_tasks)
            decisions = await tail.wait_ids([a["id"] for a in alerts], 120, "decisions")
    finally:
        for w in workers:
            await asyncio.to_thread(w.stop)
        service.stop()
        if cluster is not None:
            await asyncio.to_thread(cluster.stop)

    applied_at = applied_everywhere(published, (w.log() for w in workers))
    result = count_stale(decisions, pub.sent_at, published, applied_at)
    tiers = Counter(d["cache_tier"] for d in decisions)
    row = record(account(f"coherence {backend} {engine} {SECONDS:.0f}s: {result.stale} stale of {result.checked}",
                         pub.sent_at, decisions, engine=engine))  # fmt: skip
    details = {
        "drill": "coherence under load", "backend": backend, "seconds": SECONDS, "rate": RATE, "engine": engine,
        "non_default_settings": {"lru_ttl_s": 2.0, "engine": engine, "service latency ms": "median 20, p99 50"},
        "alerts": len(alerts), "invalidations": len(published), "checked": result.checked, "stale": result.stale,
        "checked_by_scope": result.by_scope, "stale_by_tier": result.stale_by_tier, "tiers": dict(tiers),
        "missing": row.missing, "duplicates": row.duplicates, "node_down_s": marks and marks["restarted"] - marks["killed"],
        "alerts_added_until_redis_answered": marks.get("extra_alerts", 0),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "command": f"STREAM_ENGINE_DRILL_COHERENCE_S={SECONDS:g} .venv/bin/python -m pytest tests/reliability/{Path(__file__).name}",
    }  # fmt: skip
    (results_dir() / "details").mkdir(exist_ok=True)  # beside, not among, the DrillRow files
    (results_dir() / "details" / f"coherence-{backend}-{engine}-{SECONDS:g}s.json").write_text(json.dumps(details, indent=1))
    print(f"{backend}/{engine}: stale {result.stale} of {result.checked} checked; by scope {result.by_scope}; stale by "
          f"tier {result.stale_by_tier}; tiers {dict(tiers)}; invalidations {len(published)}; {marks}")  # fmt: skip

    # The drill really drilled: every scope was published and covered decisions, every tier served.
    assert {p.scope for p in published} == {"all", "type", "key"}
    assert set(result.by_scope) == {"all", "type", "key"}, result.by_scope
    assert result.checked > len(alerts) / 2, result
    assert tiers["redis"] > 0 and tiers["lru"] > 0 and tiers["service"] > 0, tiers
    assert row.missing == 0, "alerts without a decision"
    assert not {d["reason"] for d in decisions} & SERVICE_FAILURES, Counter(d["reason"] for d in decisions)
    if cluster is not None:
        # The node really was down for a while, and the workers noticed (Redis errors), ...
        assert marks["restarted"] > marks["killed"]
        assert all(re.search(r"redis \S+ failed", w.log()) for w in workers)
        # ... and the tier came back after it: Redis answers alerts sent after the restart.
        after = [d for d in decisions if pub.sent_at[d["alert_id"]] > marks["restarted"]]
        assert any(d["cache_tier"] == "redis" for d in after), Counter(d["cache_tier"] for d in after)
    assert result.stale == 0, result.examples
