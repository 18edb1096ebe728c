"""Drill 5: the proposition service gets slow (beyond the client timeout), then dies, then returns.

Slow: decisions escalate with ``timeout``, and once ``breaker_fail_max`` batches failed, with
``breaker_open`` (the breaker opened). Dead: ``unavailable`` / ``breaker_open``. Back: after the
breaker's reset time a trial call succeeds, the breaker closes and new keys get ``service``
decisions again (time to recover = restart → first such decision). Nothing is lost, and no
decision waits longer than the client's worst case derived from the settings.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from harness.drills import Publisher, Tail, account, clickhouse_rows, record
from harness.procs import Proc, admin_headers, start_propositions, start_worker
from stream_engine.propositions.client import PropositionClient
from stream_engine.settings import Settings
from stream_engine.workload import Workload

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(240)]


def worst_case_fetch_s(s: Settings) -> float:
    """One fetch_many: every attempt times out (connect + read), with the longest backoffs between."""
    import inspect

    defaults = inspect.signature(PropositionClient.__init__).parameters
    backoff = defaults["backoff_max_s"].default + defaults["backoff_initial_s"].default  # cap + jitter
    return (s.service_retries + 1) * (s.service_connect_timeout_s + s.service_timeout_s) + s.service_retries * backoff


async def test_slow_then_dead_service_escalates_opens_and_closes_the_breaker(
    drill_settings: Settings, propositions: Proc, tmp_path: Path
) -> None:
    s = drill_settings.with_overrides(breaker_reset_s=2.0)
    warmup = Workload("infra", seed=50).alerts(30)
    slow = [{**a, "id": "slow-" + a["id"]} for a in Workload("scam", seed=51).alerts(200)]
    dead = [{**a, "id": "dead-" + a["id"]} for a in Workload("scam", seed=52).alerts(200)]
    fresh = Workload("scam", seed=53)
    back: list[dict] = []

    service = propositions
    worker = await asyncio.to_thread(start_worker, s, tmp_path, "worker")
    try:
        async with Tail(s.kafka_bootstrap, s.topic_decisions) as tail, Publisher(s.kafka_bootstrap, s.topic_alerts) as pub:
            await pub.send(warmup)
            await tail.wait_ids([a["id"] for a in warmup], 60, "warm-up decisions")

            slow_ms = 4 * s.service_timeout_s * 1000
            r = httpx.put(
                f"{s.propositions_url}/v1/admin/latency", json={"median_ms": slow_ms}, headers=admin_headers(s), timeout=5
            )
            assert r.status_code == 200, r.text
            await pub.send(slow, per_second=50)
            await tail.wait_ids([a["id"] for a in slow], 60, "decisions while the service is slow")

            service.kill9()
            await pub.send(dead, per_second=50)
            await tail.wait_ids([a["id"] for a in dead], 60, "decisions while the service is dead")

            service = await asyncio.to_thread(start_propositions, s, tmp_path)
            restarted_at = time.monotonic()
            recover_s = None
            while recover_s is None:
                assert time.monotonic() - restarted_at < 60, "no service decision after the restart"
                wave = [{**a, "id": "back-" + a["id"]} for a in fresh.alerts(25)]
                back.extend(wave)
                await pub.send(wave)
                await tail.wait_ids([a["id"] for a in wave], 30, "decisions after the restart")
                for d, t in zip(tail.records, tail.arrivals):
                    if d["alert_id"].startswith("back-") and d["cache_tier"] == "service":
                        recover_s = t - restarted_at
                        break
                await asyncio.sleep(0.25)
            last = [{**a, "id": "last-" + a["id"]} for a in fresh.alerts(100)]
            await pub.send(last)
            ids = [a["id"] for a in warmup + slow + dead + back + last]
            decisions = await tail.wait_ids(ids, 60, "decisions with the breaker closed")
    finally:
        worker.stop()
        service.stop()

    by_id = {d["alert_id"]: d for d in decisions}
    slow_reasons = Counter(by_id[a["id"]]["reason"] for a in slow)
    assert {by_id[a["id"]]["mode"] for a in slow} == {"escalate"}
    assert set(slow_reasons) <= {"timeout", "breaker_open"} and slow_reasons["timeout"], slow_reasons
    assert slow_reasons["breaker_open"], f"the breaker opened while the service was slow: {slow_reasons}"
    dead_reasons = Counter(by_id[a["id"]]["reason"] for a in dead)
    assert {by_id[a["id"]]["mode"] for a in dead} == {"escalate"}
    assert set(dead_reasons) <= {"unavailable", "breaker_open", "timeout"}, dead_reasons
    last_tiers = Counter(by_id[a["id"]]["cache_tier"] for a in last)
    assert set(last_tiers) <= {"service", "lru", "redis"}, f"the breaker closed again: {last_tiers}"

    bound_ms = 1000 * (2 * worst_case_fetch_s(s) + 2 * s.redis_timeout_s + 1.0)  # + one shared in-flight fetch
    slowest = max(d["latency_ms"] for d in decisions)
    assert slowest <= bound_ms, f"slowest decision {slowest:.0f} ms > bound {bound_ms:.0f} ms"

    log = clickhouse_rows(s)
    row = record(account("5 service slow+dead", ids, decisions, log.rows, recover_s, engine=s.engine))
    assert row.missing == 0
    assert log.ids == set(ids)
