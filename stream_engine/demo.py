"""`stream-engine demo`: one minute that shows what the engine does.

Starts the local stack if needed, runs a worker, publishes a realistic mixed workload (CI
failures, scam incidents, infra alerts) with a progress bar, waits for every decision, prints a
summary read back from ClickHouse through the worker's API, and writes a PNG of latency
percentiles and hit ratio over time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from stream_engine.engines import ENGINES
from stream_engine.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="Run a worker on a realistic workload and summarise what it decided.")
    p.add_argument("--alerts", type=int, default=45_000, help="How many alerts to publish (default 45000).")
    p.add_argument("--rate", type=float, default=1500, help="Alerts per second (default 1500; 0 = as fast as possible).")
    p.add_argument("--engine", choices=ENGINES, default=None, help="Worker engine (default: STREAM_ENGINE_ENGINE, aiokafka).")
    p.add_argument("--profile", default="typical", help="Workload: typical, ci_failures, scam, infra.")
    p.add_argument("--seed", type=int, default=None, help="Workload seed (default: time based).")
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default DATA_DIR/demo.png).")
    p.add_argument("--timeout", type=float, default=180.0, help="Give up waiting for decisions after this.")
    p.set_defaults(func=run_demo)


@dataclass
class Run:
    published_ns: dict[str, int] = field(default_factory=dict)  # alert id -> record timestamp (ms)
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    decided_ts: dict[str, int] = field(default_factory=dict)  # alert id -> decision record timestamp (ms)
    started: float = 0.0
    finished: float = 0.0


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console

    console = Console()
    from stream_engine.kafka import apply_topics
    from stream_engine.stack import Stack, clickhouse_answers, kafka_answers

    settings = settings.with_overrides(engine=args.engine or settings.engine)
    console.rule(f"[bold]stream_engine demo — {settings.engine} engine")
    if kafka_answers(settings.kafka_bootstrap):
        console.print(f"using the Kafka at {settings.kafka_bootstrap}")
    else:  # nothing there yet: bring up the local stack on the configured ports
        for line in Stack(settings).up().lines():
            console.print(f"stack: {line}")
    url = settings.effective_clickhouse_url
    if url.startswith("http") and not clickhouse_answers(url):  # the worker writes there
        for line in Stack(settings, only=["clickhouse"]).up().lines():
            console.print(f"stack: {line}")
    asyncio.run(apply_topics(settings))
    worker = start_worker(settings, console)
    try:
        run = asyncio.run(drive(settings, args, console))
        summary = asyncio.run(read_summary(settings, run, console))
    finally:
        stop(worker)
    print_summary(console, args, run, summary)
    plot = args.plot or settings.data_dir / "demo.png"
    write_plot(run, plot)
    console.print(f"plot: [bold]{plot}[/bold]")
    missing = len(run.published_ns) - len(run.decisions)
    return 0 if missing == 0 else 1


def start_worker(settings: Settings, console: Any) -> subprocess.Popen[bytes]:
    import httpx

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log = open(settings.data_dir / "demo-worker.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream_engine", "worker"],
        env={**os.environ, **settings.to_env()},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://{settings.api_host}:{settings.api_port}/healthz"
    with console.status("starting a worker (joins the consumer group) …"):
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"worker exited ({proc.returncode}); see {log.name}")
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
    stop(proc)
    raise SystemExit(f"worker did not become healthy at {url}; see {log.name}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


async def drive(settings: Settings, args: argparse.Namespace, console: Any) -> Run:
    """Publish at the requested rate while reading decisions; return when all are decided."""
    import orjson
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from stream_engine.keys import message_key
    from stream_engine.workload import Workload

    run = Run()
    alerts = Workload(args.profile, seed=args.seed if args.seed is not None else time.time_ns()).alerts(args.alerts)
    # No group: this one consumer gets every partition of the topic.
    consumer = AIOKafkaConsumer(
        settings.topic_decisions, bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False
    )
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5, acks="all")
    await consumer.start()
    await producer.start()
    try:
        deadline = time.monotonic() + 30
        while not consumer.assignment() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if not consumer.assignment():
            raise SystemExit(f"no partitions of {settings.topic_decisions!r}: run `stream-engine topics apply`")
        await consumer.seek_to_end()  # only this run's decisions
        with Progress(
            TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as progress:
            pub = progress.add_task("published", total=len(alerts))
            dec = progress.add_task("decided", total=len(alerts))

            async def publish() -> None:
                chunk = max(1, int(args.rate / 100)) if args.rate > 0 else 500
                t0 = time.perf_counter()
                for i in range(0, len(alerts), chunk):
                    acks = []
                    for alert in alerts[i : i + chunk]:
                        acks.append(await producer.send(settings.topic_alerts, orjson.dumps(alert), key=message_key(alert)))
                    for alert, meta in zip(alerts[i : i + chunk], await asyncio.gather(*acks)):
                        run.published_ns[alert["id"]] = meta.timestamp
                    progress.update(pub, completed=min(i + chunk, len(alerts)))
                    if args.rate > 0:
                        await asyncio.sleep(max(0.0, t0 + (i + chunk) / args.rate - time.perf_counter()))

            run.started = time.time()
            publisher = asyncio.create_task(publish())
            deadline = time.monotonic() + args.timeout
            wanted = {a["id"] for a in alerts}
            while len(run.decisions) < len(alerts) and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for r in records:
                        d = orjson.loads(r.value)
                        if d["alert_id"] in wanted and d["alert_id"] not in run.decisions:
                            run.decisions[d["alert_id"]] = d
                            run.decided_ts[d["alert_id"]] = r.timestamp
                progress.update(dec, completed=len(run.decisions))
            await publisher
            run.finished = time.time()
    finally:
        await producer.stop()
        await consumer.stop()
    return run


async def read_summary(settings: Settings, run: Run, console: Any) -> dict[str, Any]:
    """The run's numbers as ClickHouse has them (via the worker, which owns the chDB directory)."""
    import httpx

    base = f"http://{settings.api_host}:{settings.api_port}/api/v1/analytics"
    start = datetime.fromtimestamp(run.started - 5, UTC)
    end = datetime.now(UTC) + timedelta(minutes=1)
    params = {"from": start.isoformat(), "to": end.isoformat(), "interval": "1h"}
    summary: dict[str, Any] = {}
    from stream_engine.auth import bearer_header

    headers = bearer_header(settings.api_token.get_secret_value())
    async with httpx.AsyncClient(timeout=30, headers=headers) as http:
        with console.status("waiting for ClickHouse to have every row …"):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                modes = (await http.get(f"{base}/modes", params=params)).json()
                rows = sum(r["count"] for r in modes.get("rows", modes) if isinstance(r, dict))
                if rows >= len(run.decisions):
                    break
                await asyncio.sleep(0.5)
        for name in ("latency", "cache", "modes"):
            response = await http.get(f"{base}/{name}", params=params)
            body = response.json()
            summary[name] = body.get("rows", body) if isinstance(body, dict) else body
        summary["stats"] = (await http.get(f"http://{settings.api_host}:{settings.api_port}/api/v1/stats")).json()
    return summary


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def print_summary(console: Any, args: argparse.Namespace, run: Run, summary: dict[str, Any]) -> None:
    from rich.table import Table

    n = len(run.decisions)
    e2e = sorted(run.decided_ts[i] - run.published_ns[i] for i in run.decisions if i in run.published_ns)
    head = Table(title="run", show_header=False)
    head.add_row("alerts published / decided", f"{len(run.published_ns)} / {n}")
    head.add_row("throughput (decided / wall s)", f"{n / max(1e-9, run.finished - run.started):,.0f} alerts/s")
    head.add_row(
        "publish→decision p50 / p95 / p99 (ms)",
        f"{_percentile(e2e, .5):.0f} / {_percentile(e2e, .95):.0f} / {_percentile(e2e, .99):.0f}",
    )
    console.print(head)

    lat = Table(title="engine latency by alert type (ClickHouse: this worker during the run, received→decided, ms)")
    for col in ("type", "count", "p50", "p95", "p99"):
        lat.add_column(col, justify="right")
    for r in summary.get("latency", []):
        lat.add_row(r["alert_type"], str(r["count"]), f"{r['p50']:.1f}", f"{r['p95']:.1f}", f"{r['p99']:.1f}")
    console.print(lat)

    by_type: dict[str, Counter[str]] = defaultdict(Counter)
    for r in summary.get("cache", []):
        by_type[r["alert_type"]][r["cache_tier"]] += r["count"]
    hits = Table(title="hit ratio by alert type and tier (ClickHouse: this worker during the run)")
    for col in ("type", "lru", "redis", "service", "none", "hit ratio"):
        hits.add_column(col, justify="right")
    for t, c in sorted(by_type.items()):
        total = sum(c.values())
        hits.add_row(t, *(str(c[k]) for k in ("lru", "redis", "service", "none")), f"{(c['lru'] + c['redis']) / total:.1%}")
    console.print(hits)

    modes: dict[str, Counter[str]] = defaultdict(Counter)
    for r in summary.get("modes", []):
        modes[r["alert_type"]][r["mode"]] += r["count"]
    mt = Table(title="decisions by mode (ClickHouse: this worker during the run)")
    for col in ("type", "auto", "review", "escalate"):
        mt.add_column(col, justify="right")
    for t, c in sorted(modes.items()):
        mt.add_row(t, str(c["auto"]), str(c["review"]), str(c["escalate"]))
    console.print(mt)


def write_plot(run: Run, path: Path) -> None:
    """Per second of the run: publish→decision p50/p95/p99 and the cache hit ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_second: dict[int, list[float]] = defaultdict(list)
    hits: dict[int, Counter[str]] = defaultdict(Counter)
    t0 = min(run.decided_ts.values(), default=0)
    for alert_id, d in run.decisions.items():
        second = (run.decided_ts[alert_id] - t0) // 1000
        per_second[second].append(run.decided_ts[alert_id] - run.published_ns.get(alert_id, run.decided_ts[alert_id]))
        hits[second][d["cache_tier"]] += 1
    seconds = sorted(per_second)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for q, label in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        ax1.plot(seconds, [_percentile(sorted(per_second[s]), q) for s in seconds], label=label)
    ax1.set_ylabel("publish→decision (ms)")
    ax1.legend()
    ax1.grid(alpha=0.3)
    for tier in ("lru", "redis", "service"):
        ax2.plot(seconds, [hits[s][tier] / max(1, sum(hits[s].values())) for s in seconds], label=tier)
    ax2.set_ylabel("share of decisions")
    ax2.set_xlabel("second of the run")
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.suptitle(f"stream_engine demo — {len(run.decisions)} alerts")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
