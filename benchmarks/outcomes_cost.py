"""What learning from outcomes costs the hot path, in-process (no Kafka): per alert, the CPU and
wall time of ``Triage.decide`` plus, with learning on, the batch's decision records written to
Redis (``OutcomeStore.record``, which runs beside the ClickHouse write in ``DecisionLog.write``).
Real Redis; the service behind ``httpx.MockTransport`` (as ``triage_cpu.py``).

Sides, alternated ``--rounds`` times each (medians compared; the machine is shared):

* ``off``: ``STREAM_ENGINE_OUTCOME_LEARNING=false`` — the engine before issue 15;
* ``on``: learning on, no verdict anywhere (the policy's fast path; the cost is the evidence read
  in the MGET, and the records);
* ``on_evidence``: learning on, every key of the workload has verdicts (the policy re-ranks every
  decision: the worst case).

Two cache paths as ``triage_cpu.py``: ``lru`` (warm, ~98 % LRU hits) and ``redis`` (LRU cleared
every 10 batches). Also measures one decision record's Redis memory (``MEMORY USAGE``)::

    python -m benchmarks.outcomes_cost [--rounds 5] [--batches 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

from benchmarks.common import BenchResult, Stopwatch
from benchmarks.triage_cpu import BATCH, service
from stream_engine.models import Alert
from stream_engine.outcomes import Verdict
from stream_engine.propositions.client import PropositionClient
from stream_engine.runtime import Runtime
from stream_engine.settings import Settings
from stream_engine.workload import Workload

SIDES = ("off", "on", "on_evidence")


async def measure(side: str, path: str, batches: int) -> dict[str, Any]:
    settings = Settings(redis_namespace=f"bench:{uuid.uuid4().hex[:8]}", lru_ttl_s=3600, outcome_learning=side != "off")
    runtime = Runtime(settings)
    triage = runtime.triage
    triage.service = PropositionClient.from_settings(settings, transport=service())
    store = runtime.outcome_store
    now = time.time_ns()
    alerts = [Alert(**{k: v for k, v in a.items() if k != "seq"}) for a in Workload("typical", seed=3).alerts(BATCH * 20)]
    chunks = [[triage.envelope(a, b % 6, i, now) for i, a in enumerate(alerts[b * BATCH : (b + 1) * BATCH])] for b in range(20)]
    for chunk in chunks:  # warm: every key answered once, in both tiers
        decisions = await triage.decide(chunk)
        if side == "on_evidence" and store is not None:  # a verdict on every key's decided action
            applied = await store.apply([Verdict(d.alert_id, d.action, "accepted", d.key) for d in decisions if d.action])
            for key, evidence in applied.keys.items():
                runtime.book.saw_key(key, evidence)  # type: ignore[union-attr]
            for part, evidence in applied.types.items():
                runtime.book.saw_type(part, evidence)  # type: ignore[union-attr]
    reasons: dict[str, int] = {}
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for n in range(batches):
        if path == "redis" and n % 10 == 0:
            runtime.lru.clear()
        decisions = await triage.decide(chunks[n % 20])
        if store is not None:
            await store.record(decisions)
        for d in decisions:
            reasons[d.reason or "-"] = reasons.get(d.reason or "-", 0) + 1
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    record_bytes = None
    if store is not None:
        record_bytes = await store.tier.client.memory_usage(store.record_key(decisions[0].alert_id))
    raw = runtime.redis.client
    keys = [k async for k in raw.scan_iter(match=f"{{{settings.redis_namespace}}}*", count=1000)]
    for i in range(0, len(keys), 1000):
        await raw.unlink(*keys[i : i + 1000])
    await runtime.redis.close()
    await triage.service.close()
    n_alerts = batches * BATCH
    return {"side": side, "path": path, "batches": batches, "cpu_us_per_alert": round(cpu / n_alerts * 1e6, 3),
            "wall_us_per_alert": round(wall / n_alerts * 1e6, 3), "reasons": reasons, "record_bytes": record_bytes}  # fmt: skip


async def run(rounds: int, batches: int) -> BenchResult:
    watch = Stopwatch()
    runs = []
    for path in ("lru", "redis"):
        for _ in range(rounds):
            for side in SIDES:
                runs.append(await measure(side, path, batches))
    metrics: dict[str, Any] = {}
    for path in ("lru", "redis"):
        med = {
            side: {k: statistics.median(r[k] for r in runs if r["path"] == path and r["side"] == side)
                   for k in ("cpu_us_per_alert", "wall_us_per_alert")}
            for side in SIDES
        }  # fmt: skip
        metrics[path] = {
            side: {**med[side], **({} if side == "off" else {
                "cpu_change_pct": round((med[side]["cpu_us_per_alert"] / med["off"]["cpu_us_per_alert"] - 1) * 100, 1),
                "wall_change_pct": round((med[side]["wall_us_per_alert"] / med["off"]["wall_us_per_alert"] - 1) * 100, 1),
            })}
            for side in SIDES
        }  # fmt: skip
    metrics["record_bytes"] = statistics.median(r["record_bytes"] for r in runs if r["record_bytes"] is not None)
    result = BenchResult(
        name="outcomes_cost",
        command="",
        params={"what": __doc__.split("\n\n")[0].replace("\n", " "), "rounds": rounds, "batches": batches, "batch": BATCH,
                "workload": "typical seed 3, 10000 alerts, 6 partitions"},  # fmt: skip
        metrics=metrics,
        runs=runs,
    )
    return watch.finish(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()
    result = asyncio.run(run(args.rounds, args.batches))
    print(result.write())
    print(result.metrics)


if __name__ == "__main__":
    main()
