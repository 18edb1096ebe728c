"""Every benchmark runs at a tiny size and produces a well-formed result (no timing asserted),
plus the hit-ratio bounds on hand-checkable traces."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks import baseline_bare, baseline_naive, e2e_stream, hitratio, memory, report, sink
from benchmarks.common import BenchResult, latency_summary, percentile
from benchmarks.trace import TraceSpec, arrival_times, belady, lru, lru_batched, make_trace, ttl_optimum
from stream_engine.keys import KeyBuilder
from stream_engine.models import Alert
from stream_engine.settings import Settings


# --- pure: bounds and statistics --------------------------------------------------------------
def test_ttl_optimum_counts_only_compulsory_misses_and_expiry() -> None:
    keys = ["a", "b", "a", "a", "b"]
    assert ttl_optimum(keys, [0, 1, 2, 3, 4], ttl_s=100) == pytest.approx(3 / 5)
    # "a" filled at 0 expires at 2.5: the lookup at 3 misses and refills; "b" (1 → 3.5) misses at 4.
    assert ttl_optimum(keys, [0, 1, 2, 3, 4], ttl_s=2.5) == pytest.approx(1 / 5)
    assert ttl_optimum([], [], 1) == 0.0


def test_belady_beats_lru_where_lru_thrashes_and_both_respect_capacity() -> None:
    keys = ["a", "b", "c"] * 4  # cyclic over 3 keys with room for 2: LRU never hits
    parts = [0] * len(keys)
    times = list(range(len(keys)))
    assert lru(keys, times, parts, capacity=2, ttl_s=1e9) == 0.0
    assert belady(keys, parts, capacity=2) > 0.3
    assert belady(keys, parts, capacity=3) == lru(keys, times, parts, capacity=3, ttl_s=1e9) == pytest.approx(9 / 12)


def test_partitions_have_separate_capacity() -> None:
    keys = ["a", "b", "a", "b"]
    times = [0, 1, 2, 3]
    assert lru(keys, times, [0, 0, 0, 0], capacity=1, ttl_s=1e9) == 0.0
    assert lru(keys, times, [0, 1, 0, 1], capacity=1, ttl_s=1e9) == pytest.approx(0.5)


def test_batched_lookups_miss_every_copy_inside_a_batch() -> None:
    keys = ["a", "a", "a", "a"]
    args = (keys, [0, 1, 2, 3], [0] * 4, 10, 1e9)
    assert lru(*args) == pytest.approx(3 / 4)
    assert lru_batched(*args, batch=2) == pytest.approx(2 / 4)
    assert lru_batched(*args, batch=4) == 0.0


def test_trace_keys_are_the_engines_keys_and_bursts_keep_the_mean_rate() -> None:
    settings = Settings()
    trace = make_trace(TraceSpec("typical", size=300, rate=100.0, burst=5.0, burst_period_s=1.0, burst_duty=0.1, seed=3))
    builder = KeyBuilder.from_settings(settings)
    assert trace.keys == [builder.key_for(Alert(**a)) for a in trace.alerts]
    assert all(0 <= p < 6 for p in trace.partitions)
    assert trace.times == sorted(trace.times)
    assert 300 / trace.times[-1] == pytest.approx(100.0, rel=0.1)
    peak, quiet = TraceSpec(rate=100.0, burst=5.0, burst_duty=0.1).rates()
    assert (peak, round(quiet, 6)) == (500.0, round(50 / 0.9, 6))
    with pytest.raises(ValueError):
        TraceSpec(burst=20.0, burst_duty=0.1)
    assert arrival_times(TraceSpec(size=3, rate=2.0)) == [0.0, 0.5, 1.0]


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0 and percentile(values, 100) == 100.0
    assert math.isnan(percentile([], 50))
    summary = latency_summary([3.0, 1.0, 2.0])
    assert summary["count"] == 3 and summary["max_ms"] == 3.0 and summary["p50_ms"] == 2.0
    assert latency_summary([]) == {"count": 0}


# --- every benchmark at a tiny size on the real stack --------------------------------------------
def _well_formed(result: BenchResult, name: str, tmp_path: Path) -> BenchResult:
    assert result.name == name
    assert result.machine["nproc"] and result.machine["python"] and result.machine["kafka"]
    assert result.started_at and result.duration_s > 0 and result.runs
    path = result.write(tmp_path)
    again = BenchResult.load(path)
    assert again.metrics == result.metrics
    return again


@pytest.mark.integration
@pytest.mark.timeout(600)
async def test_every_benchmark_runs_at_a_tiny_size_and_the_report_renders(stack: Settings, tmp_path: Path) -> None:
    out = tmp_path / "results"

    bare = _well_formed(await baseline_bare.run(stack, messages=300, runs=1), "baseline_bare", out)
    assert bare.runs[0]["messages"] == 300 and bare.metrics["msgs_per_s_median"] > 0

    naive = _well_formed(await baseline_naive.run(stack, messages=10, runs=1, latency_median_ms=0), "baseline_naive_nolatency", out)
    assert naive.runs[0]["messages"] == 10 and naive.runs[0]["service_failures"] == 0

    tput = _well_formed(await e2e_stream.throughput(stack, backlog=300, runs=1, profile="ci_failures"),
                        "e2e_throughput_ci_failures", out)
    run = tput.runs[0]
    assert run["complete"] and run["decided"] == 300 and sum(run["tiers"].values()) == 300

    lat = _well_formed(await e2e_stream.latency(stack, rates=(50,), seconds=1.0, profile="typical"), "e2e_latency", out)
    assert lat.runs[0]["decided"] == 50 and lat.runs[0]["record"]["count"] == 50

    hits = _well_formed(await hitratio.run(stack, size=200, rate=500, profiles=("ci_failures",), sweep_size=300),
                        "hitratio", out)
    row = hits.runs[0]
    assert row["engine"]["decided"] == 200 and 0 <= row["engine"]["hit_ratio"] <= row["bounds"]["best_achievable"] + 1e-9
    assert len(row["sweep"]["lru"]) == len(row["sweep"]["capacities"])

    mem = _well_formed(await memory.run(stack, step_alerts=200, steps=2, cached=20), "memory", out)
    assert [p["stage"] for p in mem.runs] == ["idle", "20_cached", "after_step_1", "after_step_2"]
    assert all(p["rss_mb"] > 0 for p in mem.runs) and mem.metrics["complete"]
    mem_http = _well_formed(await memory.run(stack, step_alerts=200, steps=1, cached=20, clickhouse="http"), "memory_http", out)
    assert mem_http.metrics["complete"] and mem_http.metrics["clickhouse_process_rss_mb"] > 0

    sk = _well_formed(await sink.run(rows=2000, work_dir=tmp_path / "sink"), "sink", out)
    assert [(x["backend"], x["fsync"]) for x in sk.runs] == [("embedded", False), ("embedded", True), ("http", False), ("http", True)]
    assert all(x["inserted_rows_per_s"] > 0 and x["flushes"] >= 1 for x in sk.runs)

    md = report.render(out, "pytest smoke")
    text = md.read_text()
    assert "pytest smoke" in text and "nproc=" in text and "## Throughput" in text and "## Hit ratio" in text
    assert "ClickHouse over HTTP (docker-compose)" in text and "## ClickHouse sink" in text
    assert {p.name for p in out.glob("*.png")} >= {"throughput.png", "latency.png", "hitratio.png", "memory.png"}


def test_profile_summary_charges_own_time_to_leaves_and_areas() -> None:
    from benchmarks.profile_worker import summarise

    collapsed = "\n".join([
        "main (stream_engine/cli.py:1);process (stream_engine/pipeline.py:10);loads (orjson/__init__.py:1) 6",
        "main (stream_engine/cli.py:1);insert (site-packages/chdb/state/sqlitelike.py:5) 3",
        "main (stream_engine/cli.py:1) 1",
        "garbage line",
    ])
    summary = summarise(collapsed)
    assert summary["samples"] == 10
    assert summary["top_own"][0] == {"frame": "loads (orjson/__init__.py)", "pct": 60.0}
    assert summary["by_area"]["json/orjson"] == 60.0 and summary["by_area"]["clickhouse"] == 30.0
    assert {"frame": "main (stream_engine/cli.py)", "pct": 100.0} in summary["top_inclusive"]


@pytest.mark.integration
@pytest.mark.timeout(300)
async def test_profile_worker_runs_at_a_tiny_size(stack: Settings, tmp_path: Path) -> None:
    from benchmarks import profile_worker

    try:
        profile_worker.py_spy()
    except SystemExit:
        pytest.skip("py-spy is not installed (pip install py-spy)")
    result = _well_formed(await profile_worker.run(stack, backlog=500, out_dir=tmp_path), "profile_worker", tmp_path)
    assert result.runs[0]["complete"] and result.runs[0]["decided"] == 500
    assert result.metrics["samples"] == result.runs[1]["samples"] and (tmp_path / "profile_worker.collapsed.txt").exists()


# --- API targets ----------------------------------------------------------------------------------
def _api_row(shape: str, cache: str, p50: float, p99: float) -> dict[str, object]:
    from benchmarks.api import TARGET_P99_MS

    return {"shape": shape, "cache": cache, "latency": {"p50_ms": p50, "p99_ms": p99}, "alerts_per_s": 1.0,
            "client_queued": 1 if shape == "concurrent1000" else 0, "statuses": {"200": 3, "503": 1 if cache == "cold" else 0},
            "degraded": {"timeout": 2} if cache == "cold" else {}, "target_p99_ms": TARGET_P99_MS[shape]}


def test_api_headline_holds_each_shape_against_its_target_and_measures_caching() -> None:
    from benchmarks.api import headline
    from benchmarks.report import api_verdict

    rows = [_api_row("single", "cold", 40, 150), _api_row("single", "warm", 10, 20),
            _api_row("batch10", "cold", 100, 600), _api_row("batch10", "warm", 5, 10),
            _api_row("concurrent1000", "cold", 3000, 9000), _api_row("concurrent1000", "warm", 300, 400)]
    metrics = headline(rows)
    assert metrics["single_target_met"] is True and metrics["batch10_target_met"] is False
    assert "concurrent1000_target_met" not in metrics and "concurrent100_target_met" not in metrics
    assert metrics["caching_p50_reduction"] == {"single": 0.75, "batch10": 0.95, "concurrent1000": 0.9}
    assert metrics["client_queued_requests"] == 2 and metrics["non_200_responses"] == 3 and metrics["degraded_decisions"] == 6
    assert api_verdict(600.0, 500.0) == "**missed**" and api_verdict(150.0, 200.0) == "met"
    assert api_verdict(None, 200.0) == "–" and api_verdict(9000.0, None).startswith("no target (≥")


@pytest.mark.integration
@pytest.mark.timeout(300)
async def test_api_benchmark_runs_at_a_tiny_size_cold_misses_and_warm_hits(stack: Settings, tmp_path: Path) -> None:
    from benchmarks import api

    result = _well_formed(await api.run(stack, single=3, batches=2, rounds_100=1, rounds_1000=0), "api", tmp_path)
    measured = {(r["shape"], r["cache"]): r for r in result.runs if r["cache"] in ("cold", "warm")}
    assert set(measured) == {(s, c) for s in ("single", "batch10", "concurrent100") for c in ("cold", "warm")}
    expected_alerts = {"single": 3, "batch10": 20, "concurrent100": 100}
    for (shape, cache), row in measured.items():
        assert row["statuses"] == {"200": row["requests"]} and row["alerts"] == expected_alerts[shape]
        # cold keys are new to LRU and Redis; warm keys were answered just before by the API's own LRU.
        assert row["tiers"] == ({"service": row["alerts"]} if cache == "cold" else {"lru": row["alerts"]})
        assert row["latency"]["count"] == row["requests"] and row["client_queued"] == 0
    connect = next(r for r in result.runs if r["cache"] == "connect_round")
    assert connect["shape"] == "concurrent100" and connect["latency"]["count"] == 100
    assert set(result.metrics["caching_p50_reduction"]) == {"single", "batch10", "concurrent100"}

    from benchmarks import report

    text = report.render(tmp_path, "pytest api").read_text()
    assert "## API targets" in text and "| concurrent100 | warm |" in text and (tmp_path / "api.png").exists()


@pytest.mark.integration
async def test_cache_benchmarks_run_at_a_tiny_size(stack: Settings, redis_cluster: str) -> None:
    import argparse

    from benchmarks import redis_cluster_layout, triage_cpu

    args = argparse.Namespace(url=redis_cluster, single_url=stack.redis_url, batch=20, rounds=3, repeat=1)
    result = await redis_cluster_layout.measure(args)
    assert set(result.metrics) == {"buckets_16", "buckets_64", "buckets_256", "per_slot", "single_redis"}
    assert all(m["read_median_ms"] > 0 and m["write_median_ms"] > 0 for m in result.metrics.values())
    assert result.runs[0]["buckets_64"]["buckets_touched"] <= 20 and result.runs[0]["per_slot"]["slots_touched"] <= 20
    for path, tier in (("lru", "lru"), ("redis", "redis"), ("service", "service")):
        measured = await triage_cpu.measure(path, 12)
        assert measured["cpu_us_per_alert"] > 0 and measured["tiers"][tier] > 0, measured
