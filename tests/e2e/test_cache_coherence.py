"""An invalidation always wins: real workers, the real service, the real broker and Redis.

Every rule book here stamps its round into the rationales (tests/coherence.py), so a
decision says which rules its answer came from. The service runs with ``--no-updates`` where the
test publishes the invalidations itself (to choose their scope), and with updates where the
service's own ``PUT /v1/rules`` path is under test.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from harness.kafka import collect, publish
from harness.procs import Proc, admin_headers, start_propositions, start_worker, wait_until
from stream_engine.keys import message_key
from stream_engine.propositions.updates import Invalidation, UpdatesPublisher
from stream_engine.settings import Settings
from tests.coherence import answer_round, applied_lines, rules_round
from tests.redis_proxy import RedisProxy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

API_URL = re.compile(r"api listening on (http://[0-9.]+:\d+)")


def alert(repo: str, tag: str) -> dict[str, Any]:
    """A ci_failure alert whose key is ``ci_failure|repo=<repo>|job=build|error_class=Timeout``."""
    return {
        "id": f"{tag}-{uuid.uuid4().hex[:8]}",
        "type": "ci_failure",
        "timestamp": 1.0,
        "severity": "high",
        "source": "ci",
        "attributes": {"repo": repo, "job": "build", "error_class": "Timeout"},
    }


def key_of(a: dict[str, Any]) -> str:
    return message_key(a).decode()


def write_rules(tmp_path: Path, n: int) -> Path:
    path = tmp_path / f"rules-round-{n}.json"
    path.write_bytes(orjson.dumps(rules_round(n)))
    return path


async def decide(s: Settings, a: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    """Publish one alert and return its decision from the decisions topic."""
    await publish(s.kafka_bootstrap, s.topic_alerts, [a])
    found = await collect(s.kafka_bootstrap, s.topic_decisions, lambda rs: any(r["alert_id"] == a["id"] for r in rs), timeout)
    return next(r for r in found if r["alert_id"] == a["id"])


async def decide_via_api(worker: Proc, a: dict[str, Any]) -> dict[str, Any]:
    url = wait_until(lambda: API_URL.search(worker.log()), 30, "api url", worker).group(1)
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(f"{url}/api/v1/alerts/process", content=orjson.dumps(a))
    assert response.status_code == 200, response.text
    return response.json()["decisions"][0]


async def put_rules(s: Settings, n: int) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.put(f"{s.propositions_url}/v1/rules", content=orjson.dumps(rules_round(n)), headers=admin_headers(s))
    assert response.status_code == 200, response.text
    return response.json()


def service_requests(s: Settings) -> int:
    return int(httpx.get(f"{s.propositions_url}/v1/stats", headers=admin_headers(s), timeout=5).json()["requests"])


def wait_applied(workers: list[Proc], count: int) -> None:
    for w in workers:
        wait_until(lambda w=w: len(applied_lines(w.log())) >= count, 30, f"{w.name} applied {count} invalidations", w)


@pytest.fixture(params=["single", "cluster"])
def backend(request: pytest.FixtureRequest, worker_settings: Settings) -> Settings:
    """worker_settings on the stack's single Redis, or on the local Redis Cluster."""
    if request.param == "single":
        return worker_settings
    return worker_settings.with_overrides(redis_url=request.getfixturevalue("redis_cluster"))


@pytest.fixture
async def updates(worker_settings: Settings) -> AsyncIterator[UpdatesPublisher]:
    publisher = UpdatesPublisher(worker_settings.kafka_bootstrap, worker_settings.topic_updates)
    yield publisher
    await publisher.stop()


async def test_an_invalidation_while_a_fetch_is_in_flight_wins_on_every_worker(
    backend: Settings, updates: UpdatesPublisher, tmp_path: Path
) -> None:
    """Scope key, then type, then all (each on a key of its own, with rules of its own), landing
    while that key's answer is being fetched (the service takes 1.5 s): the in-flight answer may
    serve its own alert, but the next decision for that key uses the new rules — on the worker
    that fetched it (its partition's LRU, via Kafka) and on both workers' Redis path (their API).
    One pair of workers for the three phases; every phase is checked and reported."""
    s = backend.with_overrides(service_timeout_s=5.0)
    service = start_propositions(s, tmp_path, "--rules", str(write_rules(tmp_path, 0)), "--no-updates", "--latency-median-ms", "1500")
    workers: list[Proc] = []
    wrong: list[str] = []
    try:
        workers = [start_worker(s.with_overrides(data_dir=tmp_path / n), tmp_path, n) for n in ("w1", "w2")]
        for n, (scope, repo) in enumerate((("key", "web"), ("type", "search"), ("all", "billing")), start=1):
            first = alert(repo, f"{scope}-in-flight")
            before = service_requests(s)
            deciding = asyncio.create_task(decide(s, first))
            await asyncio.to_thread(wait_until, lambda: service_requests(s) > before, 30, "the fetch to reach the service")

            await put_rules(s, n)
            target = {"key": {"key": key_of(first)}, "type": {"alert_type": "ci_failure"}, "all": {}}[scope]
            await updates.publish(Invalidation(scope, "manual", **target))  # type: ignore[arg-type]
            await asyncio.to_thread(wait_applied, workers, n)
            in_flight = await deciding
            # The condition under test happened: that answer was fetched under the old rules.
            assert (in_flight["cache_tier"], answer_round(in_flight)) == ("service", n - 1), (scope, in_flight)

            after = await decide(s, alert(repo, f"{scope}-after"))
            if answer_round(after) != n:
                wrong.append(f"scope {scope}: the next decision via Kafka used {after}")
            for w in workers:
                via_api = await decide_via_api(w, alert(repo, f"{scope}-api-{w.name}"))
                if answer_round(via_api) != n:
                    wrong.append(f"scope {scope}: {w.name}'s API decision used {via_api}")
    finally:
        for w in workers:
            w.stop()
        service.stop()
    assert not wrong, "\n".join(wrong)


async def test_two_invalidate_all_in_a_row_both_take_effect(backend: Settings, tmp_path: Path) -> None:
    """The CLI as a user runs it (same default ``--rules-version manual`` both times)."""
    s = backend
    service = start_propositions(s, tmp_path, "--rules", str(write_rules(tmp_path, 0)), "--no-updates")
    worker = None
    try:
        worker = start_worker(s, tmp_path)
        assert answer_round(await decide(s, alert("web", "warm"))) == 0
        for n in (1, 2):
            await put_rules(s, n)
            cli = [sys.executable, "-m", "stream_engine", "propositions", "invalidate", "--scope", "all"]
            done = subprocess.run(cli, env={**os.environ, **s.to_env()}, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            await asyncio.to_thread(wait_applied, [worker], n)
            decision = await decide(s, alert("web", f"after-{n}"))
            assert answer_round(decision) == n, f"after invalidation {n}: {decision}"
    finally:
        if worker is not None:
            worker.stop()
        service.stop()


async def test_rules_a_b_a_are_three_invalidations_and_the_last_one_wins(backend: Settings, tmp_path: Path) -> None:
    """The service publishes its own invalidations; going back to rules A (same content, same
    version) is still a change and must not be swallowed."""
    s = backend
    service = start_propositions(s, tmp_path, "--rules", str(write_rules(tmp_path, 0)))
    worker = None
    try:
        worker = start_worker(s, tmp_path)
        assert answer_round(await decide(s, alert("web", "warm"))) == 0
        versions = []
        for step, n in enumerate((1, 2, 1), start=1):  # A, B, A
            body = await put_rules(s, n)
            assert body["changed"] and body["published"], body
            versions.append(body["version"])
            await asyncio.to_thread(wait_applied, [worker], step)
            decision = await decide(s, alert("web", f"step-{step}"))
            assert answer_round(decision) == n, f"after step {step} (rules round {n}): {decision}"
        assert versions[0] == versions[2] != versions[1]
        assert len(applied_lines(worker.log())) == 3
    finally:
        if worker is not None:
            worker.stop()
        service.stop()


def cached_rounds(s: Settings) -> set[int]:
    """Rules rounds of the answers stored in Redis under the test's namespace (any layout)."""
    import redis

    client = redis.Redis.from_url(s.redis_url)
    try:
        values = [client.get(k) for k in client.scan_iter(match=f"*{s.redis_namespace}*", count=1000)]
    finally:
        client.close()
    return {int(m) for v in values if v for m in re.findall(rb'"round (\d+)"', v)}


async def test_a_lost_reply_to_the_redis_bump_still_invalidates(
    worker_settings: Settings, updates: UpdatesPublisher, tmp_path: Path
) -> None:
    """w1 reaches Redis through a proxy that executes the first command of the invalidation but
    cuts the connection before its reply; a worker started afterwards (it never sees that
    message) must not be served the old answer from Redis."""
    s = worker_settings
    target = urlsplit(s.redis_url)
    proxy = RedisProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    service = start_propositions(s, tmp_path, "--rules", str(write_rules(tmp_path, 0)), "--no-updates")
    workers: list[Proc] = []
    try:
        w1 = s.with_overrides(redis_url=proxy.url, data_dir=tmp_path / "w1")
        workers.append(await asyncio.to_thread(start_worker, w1, tmp_path, "w1"))
        assert answer_round(await decide(s, alert("web", "warm"))) == 0
        await asyncio.to_thread(wait_until, lambda: 0 in cached_rounds(s), 30, "the answer written to Redis")

        proxy.drop_next_reply()
        await put_rules(s, 1)
        await updates.publish(Invalidation("all", "manual"))
        await asyncio.to_thread(wait_applied, workers, 1)
        assert proxy.dropped, "no reply was dropped: the fault under test did not happen"

        workers.append(await asyncio.to_thread(start_worker, s.with_overrides(data_dir=tmp_path / "w2"), tmp_path, "w2"))
        probe = await decide_via_api(workers[1], alert("web", "probe"))
        assert answer_round(probe) == 1, f"a worker that started after the invalidation was served {probe}"
    finally:
        for w in workers:
            await asyncio.to_thread(w.stop)
        service.stop()
        await proxy.stop()


def test_rules_survive_a_service_restart(worker_settings: Settings, tmp_path: Path) -> None:
    s = worker_settings
    service = start_propositions(s, tmp_path, "--rules", str(write_rules(tmp_path, 0)), "--no-updates")
    try:
        answer = httpx.put(f"{s.propositions_url}/v1/rules", content=orjson.dumps(rules_round(3)), headers=admin_headers(s), timeout=30)
        assert answer.status_code == 200, answer.text
    finally:
        service.stop()
    service = start_propositions(s, tmp_path, "--rules", str(write_rules(tmp_path, 0)), "--no-updates")
    try:
        assert httpx.get(f"{s.propositions_url}/healthz", timeout=5).json()["version"] == answer.json()["version"]
        assert httpx.get(f"{s.propositions_url}/v1/rules", headers=admin_headers(s), timeout=5).json() == rules_round(3)
    finally:
        service.stop()


async def test_an_invalidation_published_while_every_worker_was_down_is_applied_by_the_next_one(
    backend: Settings, updates: UpdatesPublisher, tmp_path: Path
) -> None:
    """Redis remembers how far invalidations were applied; a worker that starts replays the rest."""
    s = backend
    service = start_propositions(s, tmp_path, "--rules", str(write_rules(tmp_path, 0)), "--no-updates")
    worker = None
    try:
        worker = await asyncio.to_thread(start_worker, s.with_overrides(data_dir=tmp_path / "w1"), tmp_path, "w1")
        assert answer_round(await decide(s, alert("web", "warm"))) == 0  # cached in Redis too
        await asyncio.to_thread(worker.stop)
        await put_rules(s, 1)
        await updates.publish(Invalidation("all", "manual"))  # nobody is listening
        worker = await asyncio.to_thread(start_worker, s.with_overrides(data_dir=tmp_path / "w2"), tmp_path, "w2")
        probe = await decide_via_api(worker, alert("web", "probe"))
        assert answer_round(probe) == 1, f"served from before the invalidation: {probe}"
        assert "replaying invalidations" in worker.log()
    finally:
        if worker is not None:
            await asyncio.to_thread(worker.stop)
        service.stop()
