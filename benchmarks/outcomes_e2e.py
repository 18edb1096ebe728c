"""What learning from outcomes costs a worker end to end (issue 15 item 6, aim: under 5%): the
streaming throughput benchmark (``benchmarks.e2e_stream``'s backlog run: real Kafka, Redis, the
shared ClickHouse endpoint, the proposition service with the shared simulated latency, a worker
subprocess at its default settings) with ``STREAM_ENGINE_OUTCOME_LEARNING`` off and on.

The machine is shared and loaded, so the two sides run interleaved (off, on, off, on, …), each
round on the same trace (same seed) with fresh topics, group, Redis namespace and database, and
the comparison is made on the worker process's **CPU seconds per alert** (user + system, all its
threads, while the backlog drains) as well as on wall throughput; the load average is recorded
around every run. Medians per side, and the median of the per-round changes::

    python -m benchmarks.outcomes_e2e [--rounds 4] [--backlog 30000] [--profile typical]

Learning on, no verdict is published: this is the cost every decision pays (the evidence read in
the propositions' MGET, the decision records written to Redis, the outcomes consumer and listener
idling). What a verdict costs is in ``benchmarks.outcomes_cost`` (in-process).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.common import BenchResult, Stopwatch, require_kafka
from benchmarks.e2e_stream import _throughput_run
from benchmarks.services import SERVICE, workspace
from stream_engine.settings import Settings

SIDES = ("off", "on")


def _change(on: float, off: float) -> float:
    return round((on - off) / off * 100, 2)


async def run(rounds: int, backlog: int, profile: str, keep: Path | None = None) -> BenchResult:
    watch = Stopwatch()
    base = Settings()
    runs: list[dict[str, Any]] = []
    with workspace(keep) as work:
        for rnd in range(rounds):
            for side in SIDES:
                settings = base.with_overrides(outcome_learning=side == "on")
                load_before = os.getloadavg()[0]
                t0 = time.monotonic()
                # run=rnd: the same trace (seed) for both sides of a round; each side its own data dir.
                (work / side).mkdir(exist_ok=True)
                x = await _throughput_run(settings, work / side, backlog, profile, rnd, SERVICE)
                x.update(side=side, round=rnd, load1_before=round(load_before, 2), load1_after=round(os.getloadavg()[0], 2),
                         run_s=round(time.monotonic() - t0, 1),
                         cpu_us_per_alert=round(x["worker_cpu_s"] / x["decided"] * 1e6, 2) if x["decided"] else None)  # fmt: skip
                runs.append(x)
                print(f"round {rnd + 1}/{rounds} learning {side}: {x['msgs_per_s']} alerts/s, "
                      f"{x['cpu_us_per_alert']} µs CPU/alert, load {x['load1_before']}->{x['load1_after']}", flush=True)  # fmt: skip
    metrics: dict[str, Any] = {}
    for side in SIDES:
        mine = [x for x in runs if x["side"] == side]
        metrics[side] = {
            "cpu_us_per_alert": statistics.median(x["cpu_us_per_alert"] for x in mine),
            "msgs_per_s": statistics.median(x["msgs_per_s"] for x in mine),
            "complete": all(x["complete"] for x in mine),
        }
    off, on = metrics["off"], metrics["on"]
    metrics["cpu_change_pct"] = _change(on["cpu_us_per_alert"], off["cpu_us_per_alert"])
    metrics["throughput_change_pct"] = _change(on["msgs_per_s"], off["msgs_per_s"])
    paired = [(a, b) for a, b in zip(runs[0::2], runs[1::2])]  # (off, on) of each round
    metrics["cpu_change_pct_per_round"] = [_change(b["cpu_us_per_alert"], a["cpu_us_per_alert"]) for a, b in paired]
    metrics["throughput_change_pct_per_round"] = [_change(b["msgs_per_s"], a["msgs_per_s"]) for a, b in paired]
    metrics["cpu_change_pct_paired_median"] = statistics.median(metrics["cpu_change_pct_per_round"])
    metrics["load1"] = [min(x["load1_before"] for x in runs), max(x["load1_after"] for x in runs)]
    result = BenchResult(
        name="outcomes_e2e",
        command="",
        params={"rounds": rounds, "backlog": backlog, "profile": profile, "order": "off, on per round",
                "service": SERVICE.describe(), "cores": os.cpu_count()},  # fmt: skip
        metrics=metrics,
        runs=runs,
        notes=[
            "Worker CPU = user + system seconds of the worker process (all threads) while the backlog drained.",
            "Learning on, no verdicts published: the per-decision cost (evidence in the MGET, decision records, idle consumers).",
            "ClickHouse is the shared HTTP endpoint (another process): the decision_lookup view's insert cost is not in the worker's CPU.",
        ],
    )
    return watch.finish(result, settings=base)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--backlog", type=int, default=30_000)
    parser.add_argument("--profile", default="typical")
    parser.add_argument("--results-dir", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="keep logs and worker data here")
    args = parser.parse_args(argv)
    require_kafka(Settings())
    result = asyncio.run(run(args.rounds, args.backlog, args.profile, args.keep))
    path = result.write(args.results_dir)
    m = result.metrics
    print(f"{result.name}: CPU/alert {m['cpu_change_pct']:+.2f}%, throughput {m['throughput_change_pct']:+.2f}% -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
