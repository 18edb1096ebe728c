"""Drill 4: Redis crashes for a while, then comes back (empty, like a crashed cache).

While it is down, decisions keep coming from the LRU (keys seen before) and the service (new
keys), none escalated for lack of Redis. After it is back, the worker writes service answers to
it again (measured: time from restart to the first key written); a restarted worker (empty LRU)
then answers the keys found in Redis from Redis. (Keys decided while the tier was still skipped,
or whose write timed out, are legitimately answered by the service: only keys present count.)
Nothing is lost. A private redis-server is used: the dev Redis is shared.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from harness.drills import PrivateRedis, Publisher, Tail, account, clickhouse_rows, record
from harness.procs import Proc, free_port, start_worker
from stream_engine.settings import Settings
from stream_engine.workload import Workload

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(240)]

SERVICE_FAILURES = {"timeout", "unavailable", "breaker_open"}


async def test_redis_outage_degrades_to_lru_and_service_then_recovers(
    drill_settings: Settings, propositions: Proc, tmp_path: Path
) -> None:
    redis = PrivateRedis(free_port(), tmp_path / "redis.log")
    redis.start()
    s = drill_settings.with_overrides(redis_url=redis.url)
    pattern = f"{{{s.redis_namespace}}}:*|*"  # cached answers (their keys hold a "|"), not the floors
    before = Workload("ci_failures", seed=41).alerts(300)
    # During the outage: keys seen before (LRU) and keys never seen (service): infra is new.
    during = [{**a, "id": "during-" + a["id"]} for a in before[:300]] + Workload("infra", seed=42).alerts(300)
    after = Workload("scam", seed=43).alerts(200)  # new keys again: their answers must reach Redis
    probe = [{**a, "id": "probe-" + a["id"]} for a in after]
    ids = [a["id"] for a in before + during + after + probe]

    worker: Proc | None = None
    try:
        worker = await asyncio.to_thread(start_worker, s, tmp_path, "worker-1")
        async with Tail(s.kafka_bootstrap, s.topic_decisions) as tail, Publisher(s.kafka_bootstrap, s.topic_alerts) as pub:
            await pub.send(before)
            await tail.wait_ids([a["id"] for a in before], 60, "decisions before the outage")
            assert redis.count(pattern) > 0, "answers were cached in Redis before the outage"

            redis.kill()
            await pub.send(during, per_second=200)
            await tail.wait_ids([a["id"] for a in during], 60, "decisions during the outage")

            redis.start()
            restarted_at = time.monotonic()
            sending = asyncio.create_task(pub.send(after, per_second=50))
            while redis.count(pattern) == 0:
                assert time.monotonic() - restarted_at < 30, "the Redis tier never resumed"
                await asyncio.sleep(0.1)
            recover_s = time.monotonic() - restarted_at
            await sending
            await tail.wait_ids([a["id"] for a in after], 60, "decisions after the outage")

            # A fresh worker has an empty LRU: the keys answered after the outage come from Redis.
            await asyncio.to_thread(worker.stop)
            in_redis = {k.split("}:", 1)[1] for k in redis.keys(pattern)}
            worker = await asyncio.to_thread(start_worker, s, tmp_path, "worker-2")
            await pub.send(probe)
            decisions = await tail.wait_ids(ids, 60, "probe decisions")
    finally:
        if worker is not None:
            worker.stop()
        redis.kill()

    by_id = {d["alert_id"]: d for d in decisions}
    during_tiers = Counter(by_id[a["id"]]["cache_tier"] for a in during)
    assert set(during_tiers) <= {"lru", "service"} and during_tiers["lru"] and during_tiers["service"], during_tiers
    assert not {by_id[a["id"]]["reason"] for a in during} & SERVICE_FAILURES
    cached_probe = [by_id[a["id"]] for a in probe if by_id[a["id"]]["key"] in in_redis]
    probe_tiers = Counter(d["cache_tier"] for d in cached_probe)
    assert set(probe_tiers) <= {"redis", "lru"} and probe_tiers["redis"], probe_tiers

    log = clickhouse_rows(s)
    row = record(account("4 redis outage", ids, decisions, log.rows, recover_s, engine=s.engine))
    assert row.missing == 0
    assert log.ids == set(ids)
