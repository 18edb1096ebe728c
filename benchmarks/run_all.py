"""Every benchmark in one command, then RESULTS.md and the plots.

    python -m benchmarks.run_all            # full sizes (~15-20 min on 2 cores)
    python -m benchmarks.run_all --quick    # tiny sizes (~2-3 min): does everything still run?

Throughput benchmarks repeat ``--runs`` times and report medians. Results go to
``benchmarks/results/`` (or ``--results-dir``); each JSON holds this command and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks import api, baseline_bare, baseline_naive, e2e_stream, hitratio, memory, profile_worker, report, sink
from benchmarks.common import RESULTS_DIR, BenchResult, current_command, require_kafka
from stream_engine.settings import Settings


@dataclass(frozen=True, slots=True)
class Sizes:
    runs: int
    bare_messages: int
    naive_messages: int
    naive_nolatency_messages: int
    backlog_hit_heavy: int
    backlog_typical: int
    latency_rates: tuple[int, ...]
    latency_seconds: float
    hit_size: int
    hit_rate: float
    hit_sweep: int
    memory_step: int
    memory_steps: int
    sink_rows: int
    profile_backlog: int
    api_single: int  # sequential single-alert requests per cache state
    api_batches: int  # sequential batch-of-10 requests per cache state
    api_rounds_100: int  # rounds of 100 concurrent requests per cache state
    api_rounds_1000: int


FULL = Sizes(runs=3, bare_messages=100_000, naive_messages=300, naive_nolatency_messages=2000,
             backlog_hit_heavy=100_000, backlog_typical=50_000, latency_rates=(100, 1000, 5000), latency_seconds=10,
             hit_size=20_000, hit_rate=2000, hit_sweep=100_000, memory_step=100_000, memory_steps=3, sink_rows=200_000,
             profile_backlog=100_000, api_single=500, api_batches=200, api_rounds_100=20, api_rounds_1000=5)
QUICK = Sizes(runs=1, bare_messages=2000, naive_messages=20, naive_nolatency_messages=100,
              backlog_hit_heavy=2000, backlog_typical=1000, latency_rates=(100, 500), latency_seconds=2,
              hit_size=1000, hit_rate=1000, hit_sweep=2000, memory_step=1000, memory_steps=2, sink_rows=5000, profile_backlog=3000,
              api_single=10, api_batches=5, api_rounds_100=1, api_rounds_1000=1)


def plan(settings: Settings, sizes: Sizes, runs: int, with_profile: bool) -> list[tuple[str, Callable[[], Awaitable[BenchResult]]]]:
    steps: list[tuple[str, Callable[[], Awaitable[BenchResult]]]] = [
        ("bare aiokafka loop", lambda: baseline_bare.run(settings, sizes.bare_messages, runs)),
        ("naive path (service 20/50 ms)", lambda: baseline_naive.run(settings, sizes.naive_messages, runs)),
        ("naive path (no service latency)",
         lambda: baseline_naive.run(settings, sizes.naive_nolatency_messages, runs, latency_median_ms=0)),
        ("hit ratio per profile", lambda: hitratio.run(settings, sizes.hit_size, sizes.hit_rate, sweep_size=sizes.hit_sweep)),
        ("worker memory, ClickHouse embedded (chdb://)",
         lambda: memory.run(settings, sizes.memory_step, sizes.memory_steps, clickhouse="embedded")),
        ("worker memory, ClickHouse over HTTP (the default)",
         lambda: memory.run(settings, sizes.memory_step, sizes.memory_steps, clickhouse="http")),
        ("ClickHouse sink throughput", lambda: sink.run(sizes.sink_rows)),
        ("API targets (POST /api/v1/alerts/process)",
         lambda: api.run(settings, sizes.api_single, sizes.api_batches, sizes.api_rounds_100, sizes.api_rounds_1000)),
    ]
    # The engine comparison names its engines (everything above runs the default, aiokafka);
    # aiokafka with 4 batches in flight: measured best on 2 cores.
    for engine in (settings.with_overrides(engine="faust"), settings.with_overrides(engine="aiokafka", batch_concurrency=4)):
        steps += [
            (f"{engine.engine} engine throughput, hit-heavy",
             lambda e=engine: engine_variant(e2e_stream.throughput(e, sizes.backlog_hit_heavy, runs, "ci_failures"), e)),
            (f"{engine.engine} engine throughput, typical",
             lambda e=engine: engine_variant(e2e_stream.throughput(e, sizes.backlog_typical, runs, "typical"), e)),
            (f"{engine.engine} engine latency at fixed rates",
             lambda e=engine: engine_variant(e2e_stream.latency(e, sizes.latency_rates, sizes.latency_seconds, "typical"), e)),
        ]
    if with_profile:
        steps.append(("worker profile (py-spy)", lambda: profile_worker.run(settings, sizes.profile_backlog)))
    return steps


async def engine_variant(run: Awaitable[BenchResult], settings: Settings) -> BenchResult:
    """Record the engine; the faust results keep the names the report reads, others are named apart."""
    result = await run
    result.params["engine"] = settings.engine
    result.params["batch_concurrency"] = settings.batch_concurrency
    if settings.engine != "faust":
        result.name += f"_{settings.engine}"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run each")
    parser.add_argument("--runs", type=int, default=None, help="repeats of each throughput benchmark")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--only", nargs="+", default=None, metavar="WORD", help="run steps whose title contains WORD")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    runs = args.runs or sizes.runs
    settings = Settings()
    require_kafka(settings)
    command = current_command()
    with_profile = not args.no_profile
    if with_profile:
        try:
            profile_worker.py_spy()
        except SystemExit as exc:
            print(f"skipping the profile: {exc}")
            with_profile = False
    args.results_dir.mkdir(parents=True, exist_ok=True)
    steps = plan(settings, sizes, runs, with_profile)
    if args.only:
        steps = [s for s in steps if any(w in s[0] for w in args.only)]
    failed = []
    for i, (title, step) in enumerate(steps, 1):
        t0 = time.monotonic()
        print(f"[{i}/{len(steps)}] {title} ...", flush=True)
        try:
            if title.startswith("worker profile"):
                result = asyncio.run(profile_worker.run(settings, sizes.profile_backlog, out_dir=args.results_dir))
            else:
                result = asyncio.run(step())
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others' numbers
            print(f"    FAILED: {type(exc).__name__}: {exc}")
            failed.append(title)
            continue
        result.command = command
        path = result.write(args.results_dir)
        print(f"    {result.metrics if len(str(result.metrics)) < 300 else '(see ' + path.name + ')'} "
              f"[{time.monotonic() - t0:.0f}s] -> {path}", flush=True)
    md = report.render(args.results_dir, command)
    print(f"report: {md}")
    if failed:
        print(f"failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
