"""The shape of a real batch endpoint: the reference proposition service's
``POST /v1/propositions/batch`` timed at 1, 10, 100 and 1000 items, without simulated latency.

A line through the times, time ≈ fixed + per_item × n, gives what one request costs and what
each item adds; ``per_item / fixed`` is the shape the simulated service copies
(``benchmarks.services.ServiceModel``: its per-item cost is that share of its 20 ms per request).
The line is fitted twice: through each size's fastest request and through its p50. On a shared
machine the p50 carries other processes' scheduling delays (they inflate the fixed part and
shrink the share); the fastest of many requests is the endpoint's own cost, and the model
follows that fit.

    python -m benchmarks.service_shape --requests 200

Each size gets the same number of requests (at least ``--min-requests``, and ``--requests`` items'
worth for the small sizes); bodies carry distinct keys of the ``typical`` workload and are
serialised beforehand, so the time is the endpoint's (client send → last response byte, httpx, the
engine's HTTP client).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from benchmarks.common import BenchResult, Progress, Stopwatch, latency_summary
from benchmarks.services import NO_LATENCY, SERVICE, proposition_service, workspace
from harness.procs import free_port
from stream_engine.keys import KeyBuilder
from stream_engine.models import Alert
from stream_engine.propositions.client import alert_payload
from stream_engine.settings import Settings
from stream_engine.workload import Workload

SIZES = (1, 10, 100, 1000)


def distinct_items(n: int, settings: Settings) -> list[dict[str, Any]]:
    """``n`` batch items with ``n`` different keys (the engine never sends a key twice in a batch)."""
    keys = KeyBuilder.from_settings(settings)
    items: dict[str, dict[str, Any]] = {}
    workload = Workload("typical", seed=21)
    while len(items) < n:
        raw = workload.alert()
        raw.pop("seq", None)
        alert = Alert(**raw)
        items.setdefault(keys.key_for(alert), {"key": keys.key_for(alert), "alert": alert_payload(alert)})
    return list(items.values())


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares ``time = fixed + per_item × n`` → (fixed, per_item)."""
    slope, intercept = statistics.linear_regression([float(n) for n, _ in points], [t for _, t in points])
    return intercept, slope


async def time_sizes(url: str, items: list[dict[str, Any]], sizes: tuple[int, ...], requests: int, min_requests: int
                     ) -> list[dict[str, Any]]:
    rows = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for n in sizes:
            body = orjson.dumps({"items": items[:n]})
            count = max(min_requests, requests // n)
            for _ in range(3):  # connection and first-call costs out of the timing
                (await client.post("/v1/propositions/batch", content=body)).raise_for_status()
            times_ms = []
            with Progress(f"batch of {n}", count) as bar:
                for i in range(count):
                    t0 = time.perf_counter()
                    response = await client.post("/v1/propositions/batch", content=body)
                    times_ms.append((time.perf_counter() - t0) * 1000)
                    response.raise_for_status()
                    bar.update(i + 1)
            ordered = sorted(times_ms)
            rows.append({"items": n, "body_bytes": len(body), "requests": count, "latency": latency_summary(ordered),
                         "min_ms": round(ordered[0], 3)})
    return rows


async def run(settings: Settings | None = None, requests: int = 2000, min_requests: int = 50,
              sizes: tuple[int, ...] = SIZES, work_dir: Path | None = None) -> BenchResult:
    watch = Stopwatch()
    base = settings or Settings()
    with workspace(work_dir) as work:
        s = base.with_overrides(propositions_url=f"http://127.0.0.1:{free_port()}", admin_token=secrets.token_urlsafe(16),
                                data_dir=work / "data")
        items = distinct_items(max(sizes), s)
        with proposition_service(s, work, NO_LATENCY):
            rows = await time_sizes(s.propositions_url, items, sizes, requests, min_requests)
    fits = {name: fit([(r["items"], value(r)) for r in rows])
            for name, value in (("fastest", lambda r: r["min_ms"]), ("p50", lambda r: r["latency"]["p50_ms"]))}
    metrics: dict[str, Any] = {}
    for name, (fixed, per_item) in fits.items():
        share = per_item / fixed if fixed > 0 else None
        metrics[name] = {
            "fixed_ms": round(fixed, 4),
            "per_item_ms": round(per_item, 5),
            "per_item_share_of_fixed": round(share, 5) if share is not None else None,
            # What this shape makes the per-item cost of a service that takes 20 ms per request.
            "implied_per_item_ms_at_model_median": round(share * SERVICE.median_ms, 4) if share is not None else None,
        }
    result = BenchResult(
        name="service_shape",
        command="",
        params={"sizes": list(sizes), "requests": requests, "min_requests": min_requests, "workload": "typical, distinct keys",
                "client": f"httpx {httpx.__version__}", "model_in_use": SERVICE.describe()},
        metrics=metrics,
        runs=rows,
        notes=["Least squares through each size's fastest request and its p50: time = fixed_ms + per_item_ms × items.",
               "Client and service share the machine; no simulated latency (the reference service's own work)."],
    )
    return watch.finish(result, settings=s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="items' worth of requests per size (at least --min-requests)")
    parser.add_argument("--min-requests", type=int, default=50)
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    result = asyncio.run(run(Settings(), args.requests, args.min_requests))
    path = result.write(args.results_dir)
    for row in result.runs:
        lat = row["latency"]
        print(f"{row['items']:>5} items: fastest {row['min_ms']:.3f} ms, p50 {lat['p50_ms']:.3f} ms ({row['requests']} requests)")
    print(f"{result.metrics} -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
