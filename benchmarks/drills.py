"""The reliability drills as a result file: run ``pytest tests/reliability`` (both engines), keep
every drill's accounting row (published, decided, missing, duplicates, ClickHouse rows, recovery)
and the outcome of every test with its duration, so the README's drill table is rendered from a
run instead of typed by hand.

    python -m benchmarks.drills                                   # CI size (STREAM_ENGINE_DRILL_SCALE=1)
    STREAM_ENGINE_DRILL_SCALE=4 python -m benchmarks.drills --name drills_full   # full size

Extra arguments after ``--`` go to pytest (e.g. ``-- -k faust``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from benchmarks.common import BenchResult, Stopwatch
from harness.drills import RESULTS_ENV, SCALE_ENV, load_rows
from stream_engine.settings import PROJECT_ROOT, Settings


def outcomes(junit: Path) -> list[dict[str, Any]]:
    """Every test case of a junit XML report: id, outcome, seconds."""
    out = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = "passed"
        for child, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            if case.find(child) is not None:
                outcome = name
        test_id = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        out.append({"test": test_id, "outcome": outcome, "seconds": round(float(case.get("time", 0.0)), 1)})
    return out


def run(name: str, pytest_args: list[str]) -> BenchResult:
    watch = Stopwatch()
    with tempfile.TemporaryDirectory(prefix="drills-") as tmp:
        rows_dir, junit = Path(tmp) / "rows", Path(tmp) / "junit.xml"
        rows_dir.mkdir()
        env = {**os.environ, RESULTS_ENV: str(rows_dir)}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                   "tests/reliability", *pytest_args]  # fmt: skip
        code = subprocess.run(command, cwd=PROJECT_ROOT, env=env).returncode
        rows = [dataclasses.asdict(r) for r in load_rows(rows_dir)]
        tests = outcomes(junit) if junit.exists() else []
    counts = {k: sum(1 for t in tests if t["outcome"] == k) for k in ("passed", "failed", "error", "skipped")}
    result = BenchResult(
        name=name,
        command="",
        params={"scale": int(os.environ.get(SCALE_ENV, "1")), "pytest_args": pytest_args, "pytest_exit_code": code},
        metrics={**counts, "missing_total": sum(r["missing"] for r in rows),
                 "test_seconds_total": round(sum(t["seconds"] for t in tests), 1)},  # fmt: skip
        runs=rows,
        notes=[f"tests: {test['test']} {test['outcome']} {test['seconds']} s" for test in tests],
    )
    return watch.finish(result, settings=Settings())


def durations_of(result: BenchResult) -> list[tuple[str, str, float]]:
    """(test, outcome, seconds) from the notes :func:`run` wrote."""
    found = []
    for note in result.notes:
        m = re.fullmatch(r"tests: (\S+) (\w+) ([\d.]+) s", note)
        if m:
            found.append((m.group(1), m.group(2), float(m.group(3))))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="drills", help="result file name (benchmarks/results/NAME.json)")
    parser.add_argument("--results-dir", type=Path, default=None)
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args(argv)
    result = run(args.name, args.pytest_args)
    print(f"{result.name}: {result.metrics} -> {result.write(args.results_dir)}")
    return 0 if result.params["pytest_exit_code"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
