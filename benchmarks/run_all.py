"""Every benchmark in one command, then RESULTS.md, the README's figures and the plots.

    python -m benchmarks.run_all            # full sizes (~25-30 min on 2 cores): regenerates every published figure
    python -m benchmarks.run_all --quick    # tiny sizes into .data/bench-quick/: does everything still run?

Every worker runs at the default settings (``Settings()``; a STREAM_ENGINE_* variable in the
environment is a non-default and every result records it). The engine comparison names its
engine and changes nothing else. Throughput benchmarks repeat ``--runs`` times and report medians.
Results go to ``benchmarks/results/`` (or ``--results-dir``); the README's figures are only
re-rendered from there, never from a quick or scratch directory.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks import api, baseline_bare, baseline_naive, e2e_stream, hitratio, memory, profile_worker, report, service_shape, sink
from benchmarks.common import RESULTS_DIR, BenchResult, current_command, require_kafka
from benchmarks.services import NO_LATENCY, SERVICE
from stream_engine.settings import PROJECT_ROOT, Settings

QUICK_DIR = PROJECT_ROOT / ".data" / "bench-quick"


@dataclass(frozen=True, slots=True)
class Sizes:
    runs: int
    shape_requests: int  # items' worth of requests per batch size (service_shape)
    bare_messages: int
    naive_messages: int
    naive_nolatency_messages: int
    backlog_hit_heavy: int
    backlog_typical: int
    latency_rates: tuple[int, ...]
    latency_seconds: float
    hit_profiles: tuple[str, ...]
    hit_rates: tuple[float, ...]
    hit_horizon_s: float
    hit_max_alerts: int
    hit_target_run_s: float
    memory_step: int
    memory_steps: int
    sink_rows: int
    sink_repeats: int
    profile_backlog: int
    api_seconds: float
    api_concurrency: tuple[int, ...]


FULL = Sizes(runs=3, shape_requests=2000, bare_messages=100_000, naive_messages=300, naive_nolatency_messages=2000,
             backlog_hit_heavy=100_000, backlog_typical=50_000, latency_rates=(100, 1000, 5000), latency_seconds=10,
             hit_profiles=hitratio.PROFILES, hit_rates=hitratio.RATES, hit_horizon_s=7200, hit_max_alerts=40_000,
             hit_target_run_s=10, memory_step=100_000, memory_steps=3, sink_rows=200_000, sink_repeats=3,
             profile_backlog=100_000, api_seconds=10, api_concurrency=(100, 1000))
QUICK = Sizes(runs=1, shape_requests=50, bare_messages=2000, naive_messages=20, naive_nolatency_messages=100,
              backlog_hit_heavy=2000, backlog_typical=1000, latency_rates=(100, 500), latency_seconds=2,
              hit_profiles=("ci_failures",), hit_rates=(1.0, 100.0), hit_horizon_s=600, hit_max_alerts=600, hit_target_run_s=2,
              memory_step=1000, memory_steps=2, sink_rows=5000, sink_repeats=1, profile_backlog=3000,
              api_seconds=1, api_concurrency=(20,))


Step = tuple[str, Callable[[Path], Awaitable[BenchResult]]]


def plan(settings: Settings, sizes: Sizes, runs: int, with_profile: bool) -> list[Step]:
    """(title, step taking the results directory); every worker at ``settings`` (the defaults)."""
    steps: list[Step] = [
        ("service shape (batch endpoint timing)", lambda _: service_shape.run(settings, sizes.shape_requests)),
        ("bare consume-produce loop (ceiling)", lambda _: baseline_bare.run(settings, sizes.bare_messages, runs)),
        ("naive path (simulated service)", lambda _: baseline_naive.run(settings, sizes.naive_messages, runs, SERVICE)),
        ("naive path (no service latency)",
         lambda _: baseline_naive.run(settings, sizes.naive_nolatency_messages, runs, NO_LATENCY)),
        ("hit ratio where TTL and capacity bind",
         lambda _: hitratio.run(settings, sizes.hit_profiles, sizes.hit_rates, sizes.hit_horizon_s, sizes.hit_max_alerts,
                                sizes.hit_target_run_s)),
        ("worker memory, ClickHouse embedded (chdb://)",
         lambda _: memory.run(settings, sizes.memory_step, sizes.memory_steps, clickhouse="embedded")),
        ("worker memory, ClickHouse over HTTP (the default)",
         lambda _: memory.run(settings, sizes.memory_step, sizes.memory_steps, clickhouse="http")),
        ("ClickHouse sink throughput", lambda _: sink.run(sizes.sink_rows, repeats=sizes.sink_repeats)),
        ("API load (wrk)", lambda _: api.run(settings, sizes.api_seconds, sizes.api_concurrency)),
    ]
    # The engine comparison: the default engine first, then faust; nothing else differs.
    for engine in (settings, settings.with_overrides(engine="faust")):
        steps += [
            (f"{engine.engine} engine throughput, hit-heavy",
             lambda _, e=engine: named(e2e_stream.throughput(e, sizes.backlog_hit_heavy, runs, "ci_failures"), e)),
            (f"{engine.engine} engine throughput, typical",
             lambda _, e=engine: named(e2e_stream.throughput(e, sizes.backlog_typical, runs, "typical"), e)),
            (f"{engine.engine} engine latency at fixed rates",
             lambda _, e=engine: named(e2e_stream.latency(e, sizes.latency_rates, sizes.latency_seconds, "typical"), e)),
        ]
    if with_profile:
        steps.append(("worker profile (py-spy)", lambda out: profile_worker.run(settings, sizes.profile_backlog, out_dir=out)))
    return steps


async def named(run: Awaitable[BenchResult], settings: Settings) -> BenchResult:
    result = await run
    result.name = e2e_stream.engine_result_name(result.name, settings.engine)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run each, into .data/bench-quick/")
    parser.add_argument("--runs", type=int, default=None, help="repeats of each throughput benchmark")
    parser.add_argument("--results-dir", type=Path, default=None, help="default benchmarks/results (--quick: .data/bench-quick)")
    parser.add_argument("--only", nargs="+", default=None, metavar="WORD", help="run steps whose title contains WORD")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    runs = args.runs or sizes.runs
    results_dir = args.results_dir or (QUICK_DIR if args.quick else RESULTS_DIR)
    settings = Settings()
    require_kafka(settings)
    api.wrk_binary()
    command = current_command()
    with_profile = not args.no_profile
    if with_profile:
        try:
            profile_worker.py_spy()
        except SystemExit as exc:
            print(f"skipping the profile: {exc}")
            with_profile = False
    results_dir.mkdir(parents=True, exist_ok=True)
    steps = plan(settings, sizes, runs, with_profile)
    if args.only:
        steps = [s for s in steps if any(w in s[0] for w in args.only)]
    failed = []
    for i, (title, step) in enumerate(steps, 1):
        t0 = time.monotonic()
        print(f"[{i}/{len(steps)}] {title} ...", flush=True)
        try:
            result = asyncio.run(step(results_dir))
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others' numbers
            print(f"    FAILED: {type(exc).__name__}: {exc}")
            failed.append(title)
            continue
        result.command = command
        path = result.write(results_dir)
        print(f"    {result.metrics if len(str(result.metrics)) < 300 else '(see ' + path.name + ')'} "
              f"[{time.monotonic() - t0:.0f}s] -> {path}", flush=True)
    published = results_dir.resolve() == RESULTS_DIR.resolve()
    print(f"report: {report.render(results_dir, report.READMES if published else ())}"
          + ("" if published else " (READMEs left alone: not the published results)"))
    if failed:
        print(f"failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
