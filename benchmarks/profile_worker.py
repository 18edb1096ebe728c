"""Where a worker spends its time at maximum throughput: py-spy sampling the worker subprocess
while it drains a backlog (the ``e2e_stream throughput`` setup), summarised as top functions
by own time and by inclusive time.

    python -m benchmarks.profile_worker --backlog 100000 --profile ci_failures

Needs ``py-spy`` (``pip install py-spy``) and permission to ptrace the worker (same user is enough
where ``kernel.yama.ptrace_scope`` ≤ 1 — py-spy attaches to a pid, the worker is our child).
The raw collapsed stacks are kept next to the JSON (``profile_worker.collapsed.txt``) for a
flame graph (e.g. speedscope.app accepts the format).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, BenchResult, Stopwatch, require_kafka
from benchmarks.e2e_stream import _throughput_run
from benchmarks.services import SERVICE, workspace
from harness.procs import Proc
from stream_engine.settings import Settings

SAMPLE_RATE_HZ = 250


def py_spy() -> str:
    exe = shutil.which("py-spy") or str(Path(__import__("sys").executable).with_name("py-spy"))
    if not Path(exe).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    return exe


@contextlib.contextmanager
def sampling(out: Path) -> Iterator[Any]:
    """A worker observer: py-spy records from when the worker is ready until the backlog is done."""

    @contextlib.contextmanager
    def observe(proc: Proc) -> Iterator[None]:
        spy = subprocess.Popen(
            [py_spy(), "record", "--pid", str(proc.popen.pid), "--rate", str(SAMPLE_RATE_HZ), "--format", "raw",
             "--output", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
            try:
                _, err = spy.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
                _, err = spy.communicate()
            if not out.exists():
                raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-2000:]}")

    yield observe


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"; keep function + file, drop the line.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "stream_engine/", "lib/python3"):
        if marker in path:
            path = path[path.index(marker):].removeprefix("site-packages/")
            break
    return f"{name} ({path})"


def summarise(collapsed: str, top: int = 20) -> dict[str, Any]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_area: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
        by_area[_area(frames)] += count
    pct = lambda c: round(100 * c / total, 1) if total else 0.0  # noqa: E731
    return {
        "samples": total,
        "top_own": [{"frame": f, "pct": pct(c)} for f, c in own.most_common(top)],
        "top_inclusive": [{"frame": f, "pct": pct(c)} for f, c in inclusive.most_common(top * 2)
                          if not f.startswith(("<module>", "_run_module", "run_forever", "_run_once", "run (asyncio"))][:top],
        "by_area": {a: pct(c) for a, c in by_area.most_common()},
    }


AREAS = (  # first match from the leaf upwards names the area a sample is charged to
    ("clickhouse", ("clickhouse", "chdb", "sinks/")),
    ("json/orjson", ("orjson",)),
    ("validation", ("fastjsonschema", "validation.py")),
    ("kafka producer", ("aiokafka/producer", "faust/transport/drivers/aiokafka.py:send", "producer")),
    ("kafka consumer", ("aiokafka/consumer", "consumer")),
    ("redis", ("redis/",)),
    ("http client", ("httpx", "httpcore", "propositions/client")),
    ("faust/mode", ("faust/", "mode/")),
    ("pipeline", ("stream_engine/",)),
    ("idle (event loop wait)", ("select", "epoll", "poll (")),
)


def _area(frames: list[str]) -> str:
    for frame in reversed(frames):
        for area, markers in AREAS:
            if any(m in frame for m in markers):
                return area
    return "other"


async def run(settings: Settings | None = None, backlog: int = 100_000, profile: str = "ci_failures",
              out_dir: Path = RESULTS_DIR, work_dir: Path | None = None) -> BenchResult:
    watch = Stopwatch()
    out_dir.mkdir(parents=True, exist_ok=True)
    collapsed = out_dir / "profile_worker.collapsed.txt"
    settings = settings or Settings()
    with workspace(work_dir) as work, sampling(collapsed) as observe:
        measured = await _throughput_run(settings, work, backlog, profile, 0, SERVICE, observe)
    summary = summarise(collapsed.read_text())
    result = BenchResult(
        name="profile_worker",
        command="",
        params={"backlog": backlog, "profile": profile, "engine": settings.engine, "service": SERVICE.describe(),
                "sampler": f"py-spy raw, {SAMPLE_RATE_HZ} Hz, --nonblocking"},
        metrics={"msgs_per_s_while_sampled": measured.get("msgs_per_s"), "samples": summary["samples"]},
        runs=[measured, summary],
        notes=[f"Collapsed stacks: {collapsed.name}. Samples include the worker's idle time before and after the backlog."],
    )
    return watch.finish(result, settings=settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--profile", default="ci_failures")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    settings = Settings()
    require_kafka(settings)
    py_spy()
    result = asyncio.run(run(settings, args.backlog, args.profile, args.results_dir))
    path = result.write(args.results_dir)
    summary = result.runs[1]
    print(f"{result.metrics} -> {path}")
    for row in summary["top_own"][:12]:
        print(f"  {row['pct']:5.1f}%  {row['frame']}")
    print("  by area:", summary["by_area"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
