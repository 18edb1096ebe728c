"""The two delivery modes side by side (issue 13): at_least_once against exactly_once, same
worker, same service model, same machine, runs interleaved (one of each mode, then again).

* **throughput** — a backlog of ``backlog`` alerts (profile ``ci_failures``, hit-heavy) drained by
  a fresh worker: alerts / (last decision − first decision), CreateTimes of the decisions a
  ``read_committed`` consumer sees (benchmarks.e2e_stream's method).
* **latency** — ``rate`` alerts/s for ``seconds`` (profile ``typical``): publish → decision,
  measured when the consumer *sees* the decision (``seen``: for exactly_once that is after the
  transaction's commit; the record's CreateTime comes before it) and by CreateTime (``record``).

    python -m benchmarks.delivery --backlog 20000 --rounds 2 --rate 1000 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import BenchResult, Stopwatch, bench_settings, create_topics, drop_topics, median_of, require_kafka
from benchmarks.e2e_stream import _latency_run, _throughput_run
from benchmarks.services import SERVICE, ServiceModel, proposition_service, with_private_service_and_data, worker, workspace
from stream_engine.settings import Settings

MODES = ("at_least_once", "exactly_once")


async def _latency(base: Settings, work: Path, tag: str, rate: int, seconds: float, service: ServiceModel) -> dict[str, Any]:
    s = with_private_service_and_data(bench_settings(base, f"lat-{tag}"), work / f"data-lat-{tag}")
    await create_topics(s)
    try:
        with proposition_service(s, work, service), worker(s, work, f"worker-lat-{tag}"):
            return await _latency_run(s, rate, seconds, "typical", 1.0)
    finally:
        await drop_topics(s)


async def compare(
    settings: Settings | None = None,
    backlog: int = 20_000,
    rounds: int = 2,
    rate: int = 1000,
    seconds: float = 10.0,
    service: ServiceModel = SERVICE,
    work_dir: Path | None = None,
) -> BenchResult:
    watch = Stopwatch()
    settings = (settings or Settings()).with_overrides(engine="aiokafka")
    runs: list[dict[str, Any]] = []
    with workspace(work_dir) as work:
        for n in range(rounds):
            for mode in MODES:  # interleaved: a load change on the shared machine hits both modes
                s = settings.with_overrides(delivery=mode)
                tag = f"{mode}-{n}"
                (work / tag).mkdir(parents=True, exist_ok=True)
                tput = await _throughput_run(s, work / tag, backlog, "ci_failures", n, service)
                lat = await _latency(s, work / tag, tag, rate, seconds, service)
                runs.append({"mode": mode, "round": n, "throughput": tput, "latency": lat})
    metrics: dict[str, Any] = {}
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        metrics[mode] = {
            "msgs_per_s_median": median_of([r["throughput"] for r in mine], "msgs_per_s"),
            "seen_p50_ms_median": median_of([r["latency"]["seen"] for r in mine], "p50_ms"),
            "seen_p99_ms_median": median_of([r["latency"]["seen"] for r in mine], "p99_ms"),
            "record_p99_ms_median": median_of([r["latency"]["record"] for r in mine], "p99_ms"),
            "duplicates": sum(r["throughput"]["duplicates"] + r["latency"]["duplicates"] for r in mine),
            "incomplete_runs": sum(not (r["throughput"]["complete"] and r["latency"]["complete"]) for r in mine),
        }
    result = BenchResult(
        name="delivery_modes",
        command="",
        params={"backlog": backlog, "rounds": rounds, "rate": rate, "seconds": seconds, "engine": "aiokafka",
                "throughput_profile": "ci_failures", "latency_profile": "typical", "service": service.describe()},
        metrics=metrics,
        runs=runs,
        notes=[
            "Both modes with the same worker settings but delivery; runs interleaved; a fresh worker, topics, group and "
            "Redis namespace per run (cold caches).",
            "Decisions read read_committed in exactly_once mode (read_uncommitted otherwise: the same records, as "
            "at_least_once writes no transactions).",
            "seen = when the benchmark's consumer received the decision - publish time; record = decision CreateTime - "
            "publish time (exactly_once: before the commit makes it visible).",
        ],
    )
    # The settings that differ from the defaults are the same for both modes but delivery (listed per run).
    return watch.finish(result, settings=settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backlog", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--results-dir", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="keep logs and worker data here")
    args = parser.parse_args(argv)
    settings = Settings()
    require_kafka(settings)
    t0 = time.monotonic()
    result = asyncio.run(compare(settings, args.backlog, args.rounds, args.rate, args.seconds, SERVICE, args.keep))
    path = result.write(args.results_dir)
    print(f"{result.name}: {orjson.dumps(result.metrics).decode()} ({time.monotonic() - t0:.0f}s) -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
