"""Redis Cluster key layout: per-slot pipelines of the plain keys vs hash-tagged buckets.

The Redis tier's two per-batch operations, on the local 3-master cluster (``stack up --only
redis-cluster``, or ``--url``), for batches of ``--batch`` distinct keys:

* **buckets** (what the tier does): keys hash-tagged into ``B`` buckets (``{ns:b}``); a read is
  one MGET per bucket touched, the bucket's floors in the same MGET; a write one EVALSHA per
  bucket (the conditional write script, atomic with the floors). Commands of one node go as one
  pipeline, the nodes in parallel. Measured for B = 16, 64, 256.
* **per-slot**: plain keys, spread over every slot; a read is redis-py's ``mget_nonatomic``
  (one MGET per slot, per-node pipelines) plus one MGET of the floors (they cannot share the
  keys' slots); a write one EVALSHA per key (a script's keys must share a slot), or, for
  reference, a plain ``SET`` per key with no check at all (not coherent: floors not checked).

Same machine, same cluster, same values (the tier's encoding), same client settings; medians of
``--rounds`` batches after a warm-up. Single Redis (``--single-url``) for reference.

    python -m benchmarks.redis_cluster_layout --batch 500 --rounds 200 --repeat 3
    python -m benchmarks.redis_cluster_layout --batch 50 --rounds 200 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks.common import BenchResult, Stopwatch
from stream_engine.cache.redis_tier import RedisTier, _encode, client_from_url
from stream_engine.models import Proposition
from stream_engine.settings import Settings
from stream_engine.stack.redis_cluster import cluster_url

PROPS = [Proposition("retry_job", 0.92, "Timeouts are mostly transient runner contention."), Proposition("notify_owner", 0.35, "")]


async def timed(rounds: int, op: Callable[[int], Awaitable[Any]]) -> dict[str, float]:
    for i in range(5):  # warm-up: connections, slot table, scripts loaded
        await op(i)
    samples = []
    for i in range(rounds):
        t0 = time.perf_counter()
        await op(i)
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return {"median_ms": round(statistics.median(samples), 3), "p90_ms": round(samples[int(len(samples) * 0.9)], 3)}


def batches(batch: int, rounds: int) -> list[list[str]]:
    return [[f"ci_failure|repo=r{r}|job=j{i}" for i in range(batch)] for r in range(rounds + 5)]


async def buckets_variant(url: str, buckets: int, batch: int, rounds: int) -> dict[str, Any]:
    tier = RedisTier(client_from_url(url, 2.0), ttl_s=300, namespace=f"bench:{uuid.uuid4().hex[:8]}", buckets=buckets)
    keys = batches(batch, rounds)
    try:
        write = await timed(rounds, lambda i: tier.put_many({k: PROPS for k in keys[i]}, 1))
        read = await timed(rounds, lambda i: tier.get_many(keys[i]))
        assert len(await tier.get_many(keys[0])) == batch
        return {"read": read, "write": write, "buckets_touched": len({tier.bucket_of(k) for k in keys[0]})}
    finally:
        await tier.close()


async def per_slot_variant(url: str, batch: int, rounds: int) -> dict[str, Any]:
    from redis.asyncio.cluster import RedisCluster

    from stream_engine.cache.redis_tier import WRITE_SCRIPT

    client = client_from_url(url, 2.0)
    assert isinstance(client, RedisCluster)
    ns = f"bench:{uuid.uuid4().hex[:8]}"
    floors = [f"{{{ns}}}:all", f"{{{ns}}}:t:ci_failure"]
    script = client.register_script(WRITE_SCRIPT)
    keys = batches(batch, rounds)
    value = _encode(PROPS, 1, int(time.time() * 1000) + 300_000, None)

    async def read(i: int) -> Any:
        pipe = client.pipeline(transaction=False)
        pipe.execute_command("MGET", *floors)
        floor_values, values = await asyncio.gather(pipe.execute(), client.mget_nonatomic([f"{ns}:{k}" for k in keys[i]]))
        return floor_values, values

    async def write_checked(i: int) -> Any:
        # The write script per key: its keys (floors + value) would have to share a slot; they do
        # not here, so this only measures the command count (it cannot be atomic with the floors).
        pipe = client.pipeline(transaction=False)
        for k in keys[i]:
            pipe.execute_command("EVALSHA", script.sha, 1, f"{ns}:{k}", 1, 300_000, 0, value)
        return await pipe.execute(raise_on_error=False)

    async def write_plain(i: int) -> Any:
        pipe = client.pipeline(transaction=False)
        for k in keys[i]:
            pipe.set(f"{ns}:{k}", value, px=300_000)
        return await pipe.execute()

    try:
        await client.script_load(WRITE_SCRIPT)
        plain = await timed(rounds, write_plain)
        checked = await timed(rounds, write_checked)
        got = await timed(rounds, read)
        slots = len({client.keyslot(f"{ns}:{k}") for k in keys[0]})
        return {"read": got, "write": checked, "write_plain_set": plain, "slots_touched": slots}
    finally:
        await client.aclose()


async def single_variant(url: str, batch: int, rounds: int) -> dict[str, Any]:
    tier = RedisTier(client_from_url(url, 2.0), ttl_s=300, namespace=f"bench:{uuid.uuid4().hex[:8]}")
    keys = batches(batch, rounds)
    try:
        write = await timed(rounds, lambda i: tier.put_many({k: PROPS for k in keys[i]}, 1))
        read = await timed(rounds, lambda i: tier.get_many(keys[i]))
        return {"read": read, "write": write}
    finally:
        await tier.close()


async def measure(args: argparse.Namespace) -> BenchResult:
    runs: list[dict[str, Any]] = []
    for _ in range(args.repeat):  # the variants interleaved, so load from other work hits all alike
        variants: dict[str, Any] = {}
        for buckets in (16, 64, 256):
            variants[f"buckets_{buckets}"] = await buckets_variant(args.url, buckets, args.batch, args.rounds)
        variants["per_slot"] = await per_slot_variant(args.url, args.batch, args.rounds)
        if args.single_url:
            variants["single_redis"] = await single_variant(args.single_url, args.batch, args.rounds)
        runs.append(variants)
    metrics = {
        name: {
            f"{op}_median_ms": round(statistics.median(run[name][op]["median_ms"] for run in runs), 3)
            for op in ("read", "write")
        }
        for name in runs[0]
    }
    return BenchResult(
        name=f"redis_cluster_layout_{args.batch}",
        command="",
        params={"batch": args.batch, "rounds": args.rounds, "repeat": args.repeat, "url": args.url, "single_url": args.single_url},
        metrics=metrics,
        runs=runs,
        notes=[
            "3-master local Redis Cluster (stack up --only redis-cluster), 2-core machine shared with other work.",
            "per_slot write = one EVALSHA per key (a script's keys must share a slot): it cannot check the floors atomically; "
            "write_plain_set is a plain SET per key, no check at all, for reference.",
            "buckets_64 is what the Redis tier uses (CLUSTER_BUCKETS).",
            "buckets_* reads include decoding the values (RedisTier.get_many); per_slot reads do not (raw MGET replies): "
            "the comparison favours per_slot.",
            "metrics: median over the repeats of each repeat's median batch time.",
        ],
    )


def main() -> None:
    settings = Settings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=cluster_url([settings.redis_cluster_port + i for i in range(3)]))
    parser.add_argument("--single-url", default=settings.redis_url)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args()
    watch = Stopwatch()
    result = watch.finish(asyncio.run(measure(args)))
    path = result.write(Path(args.results_dir) if args.results_dir else None)
    for name, metric in result.metrics.items():
        print(f"{name:<14} read {metric['read_median_ms']:7.2f} ms  write {metric['write_median_ms']:7.2f} ms")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
