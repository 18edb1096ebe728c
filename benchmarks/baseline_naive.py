"""The naive path the engine replaces: one alert at a time, one awaited service call each.

consume one record → decode and validate (the engine's AlertDecoder) → ``POST /v1/propositions``
(single endpoint, no cache, no batching) → the engine's DecisionPolicy → produce the decision
and await its ack → next. Offsets auto-commit, as a hand-written consumer usually does.

Run against the same simulated proposition service as the engine (``benchmarks.services.SERVICE``:
per request median 20 / p99 50 ms, plus a per-item cost — one item here); ``--no-latency`` gives
the CPU-bound naive rate. The producer is the engine's (``create_producer``).

    python -m benchmarks.baseline_naive --messages 300 --runs 3
    python -m benchmarks.baseline_naive --messages 2000 --runs 3 --no-latency
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer

from benchmarks.common import (
    BenchResult,
    Progress,
    Stopwatch,
    bench_settings,
    create_topics,
    drop_topics,
    encoded_alerts,
    fill_topic,
    median_of,
    require_kafka,
)
from benchmarks.services import NO_LATENCY, SERVICE, ServiceModel, proposition_service, with_private_service_and_data, workspace
from stream_engine.engines.emitter import create_producer
from stream_engine.keys import KeyBuilder
from stream_engine.models import Envelope, Proposition
from stream_engine.policy import DecisionPolicy
from stream_engine.propositions.client import alert_payload
from stream_engine.settings import Settings
from stream_engine.validation import AlertDecoder, InvalidAlert
from stream_engine.workload import Workload


async def naive_loop(settings: Settings, group: str, expected: int, progress: Progress | None = None) -> dict[str, Any]:
    decoder = AlertDecoder.from_settings(settings)
    keys = KeyBuilder.from_settings(settings)
    policy = DecisionPolicy.from_settings(settings)
    consumer = AIOKafkaConsumer(
        settings.topic_alerts,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        session_timeout_ms=int(settings.session_timeout_s * 1000),
        heartbeat_interval_ms=int(settings.heartbeat_interval_s * 1000),
    )
    producer = create_producer(settings)
    http = httpx.AsyncClient(base_url=settings.propositions_url, timeout=settings.service_timeout_s * 4)
    await producer.start()
    await consumer.start()
    done = invalid = failed = 0
    first = last = 0.0
    per_alert_ms: list[float] = []
    try:
        while done + invalid < expected:
            record = await consumer.getone()
            if not first:
                first = time.perf_counter()
            t0 = time.perf_counter()
            try:
                alert = decoder.decode(record.value)
            except InvalidAlert:
                invalid += 1
                continue
            key = keys.key_for(alert)
            propositions: list[Proposition] | None
            reason = None
            try:
                response = await http.post("/v1/propositions", content=orjson.dumps({"key": key, "alert": alert_payload(alert)}))
                response.raise_for_status()
                propositions = [Proposition(**p) for p in orjson.loads(response.content)["propositions"]]
            except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
                propositions, reason = None, f"service_error:{type(exc).__name__}"
                failed += 1
            now = time.time_ns()
            decision = policy.decide(Envelope(alert, key, 0, 0, now), propositions, "service", reason, now)
            await producer.send_and_wait(settings.topic_decisions, decision.to_json(), key=alert.id.encode())
            done += 1
            last = time.perf_counter()
            per_alert_ms.append((last - t0) * 1000)
            if progress is not None:
                progress.update(done)
    finally:
        await http.aclose()
        await consumer.stop()
        await producer.stop()
    elapsed = last - first
    per_alert_ms.sort()
    return {
        "messages": done,
        "invalid": invalid,
        "service_failures": failed,
        "seconds": round(elapsed, 4),
        "msgs_per_s": round(done / elapsed, 1) if elapsed > 0 else None,
        "per_alert_p50_ms": round(per_alert_ms[len(per_alert_ms) // 2], 3) if per_alert_ms else None,
    }


async def run(
    settings: Settings | None = None,
    messages: int = 500,
    runs: int = 3,
    service: ServiceModel = SERVICE,
    profile: str = "typical",
    log_dir: Path | None = None,
) -> BenchResult:
    watch = Stopwatch()
    with workspace(log_dir) as work:
        s = with_private_service_and_data(bench_settings(settings, "naive"), work / "data")
        await create_topics(s)
        try:
            records = encoded_alerts(Workload(profile, seed=12).alerts(messages))
            await fill_topic(s.kafka_bootstrap, s.topic_alerts, records)
            per_run = []
            with proposition_service(s, work, service):
                for i in range(runs):
                    with Progress(f"naive run {i + 1}/{runs}", messages) as bar:
                        per_run.append(await naive_loop(s, f"{s.app_id}-run{i}", messages, bar))
        finally:
            await drop_topics(s)
    result = BenchResult(
        name="baseline_naive_nolatency" if service.off else "baseline_naive",
        command="",
        params={"messages": messages, "runs": runs, "service": service.describe(), "profile": profile},
        metrics={
            "msgs_per_s_median": median_of(per_run, "msgs_per_s"),
            "per_alert_p50_ms_median": median_of(per_run, "per_alert_p50_ms"),
        },
        runs=per_run,
        notes=["One record at a time: getone, decode, POST /v1/propositions, decide, send_and_wait."],
    )
    return watch.finish(result, settings=s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-latency", action="store_true", help="a service without simulated latency (CPU-bound rate)")
    parser.add_argument("--profile", default="typical")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    settings = Settings()
    require_kafka(settings)
    result = asyncio.run(
        run(settings, args.messages, args.runs, NO_LATENCY if args.no_latency else SERVICE, args.profile)
    )
    path = result.write(args.results_dir)
    print(f"naive: {result.metrics['msgs_per_s_median']:.0f} msg/s (median of {args.runs}) -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
