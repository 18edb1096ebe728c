"""CPU per alert of the triage core (``Triage.decide``: LRU, real Redis, the service behind
``httpx.MockTransport``), in-process: what a change to the cache path costs, without Kafka.

CPU seconds (``time.process_time``), not wall time: on a machine shared with other work the
wall clock mostly measures the neighbours. Three paths, 400 batches of 500 alerts each:

* ``lru``: the typical workload, warm: ~98 % LRU hits (the common case in production);
* ``redis``: the same, with the LRU cleared every 10 batches: ~69 % Redis hits;
* ``service``: every batch new keys (100 per batch): all misses, service answers, write-back.

A/B of two source trees (e.g. before/after a change): this file, run with each tree's
``stream_engine`` first on the path, alternating, medians compared::

    git archive <base> | tar -x -C /tmp/base
    for i in 1 2 3 4 5 6; do for tree in /tmp/base $PWD; do
      PYTHONPATH=$tree .venv/bin/python benchmarks/triage_cpu.py --path redis
    done; done
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

import httpx
import orjson

from stream_engine.models import Alert
from stream_engine.propositions.client import PropositionClient
from stream_engine.runtime import Runtime
from stream_engine.settings import Settings
from stream_engine.workload import Workload

BATCH = 500


def service() -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        items = orjson.loads(request.content)["items"]
        results = {i["key"]: [{"action": "rerun", "confidence": 0.9, "rationale": "r"}] for i in items}
        return httpx.Response(200, json={"version": "v1", "results": results})

    return httpx.MockTransport(handle)


def new_keys(n: int) -> list[Alert]:
    return [
        Alert(f"a{n}-{i}", "ci_failure", 1.0, "high", "ci", {"repo": f"repo-{n}-{i % 100}", "job": "build", "error_class": "Timeout"})
        for i in range(BATCH)
    ]


async def measure(path: str, batches: int) -> dict[str, Any]:
    settings = Settings(redis_namespace=f"bench:{uuid.uuid4().hex[:8]}", lru_ttl_s=3600)
    runtime = Runtime(settings)
    triage = runtime.triage
    triage.service = PropositionClient.from_settings(settings, transport=service())
    now = time.time_ns()
    if path == "service":
        work = [[triage.envelope(a, n % 6, i, now) for i, a in enumerate(new_keys(n))] for n in range(batches)]
    else:
        alerts = [Alert(**{k: v for k, v in a.items() if k != "seq"}) for a in Workload("typical", seed=3).alerts(BATCH * 20)]
        chunks = [[triage.envelope(a, b % 6, i, now) for i, a in enumerate(alerts[b * BATCH : (b + 1) * BATCH])] for b in range(20)]
        for chunk in chunks:  # warm: every key answered once, in both tiers
            await triage.decide(chunk)
        work = [chunks[n % 20] for n in range(batches)]
    tiers: dict[str, int] = {}
    cpu0 = time.process_time()
    for n, envelopes in enumerate(work):
        if path == "redis" and n % 10 == 0:
            runtime.lru.clear()
        for decision in await triage.decide(envelopes):
            tiers[decision.cache_tier] = tiers.get(decision.cache_tier, 0) + 1
    cpu = time.process_time() - cpu0
    await runtime.redis.close()
    await runtime.client.close()
    await triage.service.close()
    return {"path": path, "batches": batches, "cpu_us_per_alert": round(cpu / (batches * BATCH) * 1e6, 3), "tiers": tiers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", choices=("lru", "redis", "service"), default="redis")
    parser.add_argument("--batches", type=int, default=400)
    args = parser.parse_args()
    print(orjson.dumps(asyncio.run(measure(args.path, args.batches))).decode())


if __name__ == "__main__":
    main()
