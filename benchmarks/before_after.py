"""Worker throughput of two checkouts on the same machine, interleaved: the cost of a change.

Each side is a checkout of its own (e.g. ``git worktree add --detach /tmp/before main``) run with
this checkout's interpreter and ``PYTHONPATH`` set to it, so its worker runs its own code with the
same dependencies. Each round runs, per engine, ``benchmarks.e2e_stream throughput --runs 1`` on
one side then the other, the order alternating from round to round (A B, B A, …): a shared,
loaded machine drifts, and interleaving spreads the drift over both sides. The result keeps every
run (its commit, load at start, rate) and the median per engine and side.

    python -m benchmarks.before_after --before /tmp/before --after . --name noloss_throughput \\
        --engines aiokafka faust --rounds 3 --backlog 20000 --profile ci_failures
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import BenchResult, Stopwatch, median_of
from benchmarks.e2e_stream import engine_result_name
from stream_engine.settings import Settings


def run_side(checkout: Path, engine: str, backlog: int, profile: str, out: Path) -> BenchResult:
    """One ``e2e_stream throughput`` run of ``checkout``'s code; its result file."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    command = [sys.executable, "-m", "benchmarks.e2e_stream", "throughput", "--backlog", str(backlog), "--runs", "1",
               "--profile", profile, "--engine", engine, "--results-dir", str(out)]  # fmt: skip
    subprocess.run(command, cwd=checkout, env=env, check=True, timeout=1800)
    return BenchResult.load(out / f"{engine_result_name(f'e2e_throughput_{profile}', engine)}.json")


def compare(before: Path, after: Path, name: str, engines: list[str], rounds: int, backlog: int, profile: str) -> BenchResult:
    watch = Stopwatch()
    runs: list[dict[str, Any]] = []
    sides = {"before": before.resolve(), "after": after.resolve()}
    with tempfile.TemporaryDirectory(prefix="before-after-") as tmp:
        for round_ in range(rounds):
            for engine in engines:
                order = ["before", "after"] if round_ % 2 == 0 else ["after", "before"]
                for side in order:
                    out = Path(tmp) / f"{round_}-{engine}-{side}"
                    result = run_side(sides[side], engine, backlog, profile, out)
                    run = result.runs[0]
                    runs.append({"round": round_, "engine": engine, "side": side, "commit": result.git.get("commit"),
                                 "dirty": result.git.get("dirty"), "msgs_per_s": run.get("msgs_per_s"),
                                 "loadavg_at_start": result.machine.get("loadavg_at_start"),
                                 "settings_non_default": result.settings.get("non_default")})  # fmt: skip
                    print(f"round {round_} {engine} {side}: {run.get('msgs_per_s')} alerts/s", flush=True)
    metrics = {
        f"{engine}_{side}_msgs_per_s_median": median_of([r for r in runs if r["engine"] == engine and r["side"] == side], "msgs_per_s")
        for engine in engines
        for side in ("before", "after")
    }
    commits = {side: sorted({str(r["commit"]) for r in runs if r["side"] == side}) for side in sides}
    result = BenchResult(
        name=name,
        command="",
        params={"backlog": backlog, "profile": profile, "rounds": rounds, "engines": engines, "commits": commits},
        metrics=metrics,
        runs=runs,
        notes=["Each run is benchmarks.e2e_stream throughput --runs 1 of that side's checkout (fresh topics, group, "
               "Redis namespace and worker; cold caches; the shared simulated service).",
               "Sides interleaved per engine, the order alternating per round; medians per engine and side."],
    )
    return watch.finish(result, settings=Settings())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="checkout of the code before the change")
    parser.add_argument("--after", type=Path, required=True, help="checkout of the code after the change")
    parser.add_argument("--name", required=True, help="result file name (benchmarks/results/NAME.json)")
    parser.add_argument("--engines", nargs="+", default=["aiokafka", "faust"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backlog", type=int, default=20_000)
    parser.add_argument("--profile", default="ci_failures")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    result = compare(args.before, args.after, args.name, args.engines, args.rounds, args.backlog, args.profile)
    print(f"{result.name}: {result.metrics} -> {result.write(args.results_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
