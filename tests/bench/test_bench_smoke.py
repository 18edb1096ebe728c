"""Every benchmark runs at a tiny size and produces a well-formed result (no timing asserted),
plus the hit-ratio bounds and the two-tier model on hand-checkable traces."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks import baseline_bare, baseline_naive, e2e_stream, hitratio, memory, report, service_shape, sink
from benchmarks.common import BenchResult, latency_summary, percentile
from benchmarks.services import NO_LATENCY
from benchmarks.trace import TraceSpec, arrival_times, belady, lru, lru_batched, make_trace, tiers, ttl_optimum
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


def test_two_tiers_split_lru_redis_and_service_and_redis_outlives_the_lru() -> None:
    keys = ["a", "a", "a", "b"]
    parts = [0, 0, 0, 0]
    # "a" at 0 from the service (Redis until 10, LRU until 2), at 1 from the LRU, at 5 from Redis.
    assert tiers(keys, [0, 1, 5, 6], parts, capacity=10, lru_ttl_s=2, redis_ttl_s=10) == pytest.approx(
        {"lru": 0.25, "redis": 0.25, "service": 0.5, "hit": 0.5})
    # After Redis expired too, the service again.
    assert tiers(keys, [0, 1, 11, 12], parts, 10, 2, 10)["service"] == pytest.approx(0.75)
    # Capacity 1: "b" evicts "a" from the LRU, Redis still has it.
    assert tiers(["a", "b", "a"], [0, 1, 2], [0, 0, 0], 1, 100, 100) == pytest.approx(
        {"lru": 0.0, "redis": 1 / 3, "service": 2 / 3, "hit": 1 / 3})
    # A batch looks every copy up before any fill: copies of a missing key all go the same way.
    assert tiers(["a", "a", "a", "a"], [0, 1, 2, 3], [0] * 4, 10, 100, 100, batch=2) == pytest.approx(
        {"lru": 0.5, "redis": 0.0, "service": 0.5, "hit": 0.5})


def test_time_compression_keeps_redis_ttl_whole_and_runs_near_the_target() -> None:
    assert hitratio.compression(1.0, 7200, 10, 4000, 3600) == 720  # 7200 modelled seconds in 10
    assert hitratio.compression(1000.0, 40_000, 10, 4000, 3600) == 4  # capped by the publish rate
    assert hitratio.compression(1000.0, 1000, 10, 4000, 3600) == 1  # already short: real time
    assert hitratio.compression(3.0, 7200, 10, 4000, 3600) == 240  # the wanted 240 divides 3600
    assert hitratio.compression(7.0, 7200, 10, 4000, 3600) == 100  # wanted 102.9: the largest divisor below


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


def test_run_setup_installs_the_load_tool_the_api_benchmark_needs() -> None:
    from stream_engine.settings import PROJECT_ROOT

    run = (PROJECT_ROOT / "run").read_text()
    ensure = run[run.index("ensure_system()") : run.index("ensure_venv()")]
    assert "command -v wrk" in ensure and "missing+=(wrk)" in ensure


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

    shape = _well_formed(await service_shape.run(stack, requests=20, min_requests=3, sizes=(1, 10)), "service_shape", out)
    assert [x["items"] for x in shape.runs] == [1, 10] and set(shape.metrics) == {"fastest", "p50"}

    bare = _well_formed(await baseline_bare.run(stack, messages=300, runs=1), "baseline_bare", out)
    assert bare.runs[0]["messages"] == 300 and bare.runs[0]["records_timed"] == 300 and bare.metrics["msgs_per_s_median"] > 0
    # The ceiling runs the engine's producer and in-flight depth.
    assert bare.params["partitioner"] == report.C_PARTITIONER and bare.params["in_flight_batches"] == stack.batch_concurrency

    naive = _well_formed(await baseline_naive.run(stack, messages=10, runs=1, service=NO_LATENCY), "baseline_naive_nolatency", out)
    assert naive.runs[0]["messages"] == 10 and naive.runs[0]["service_failures"] == 0

    tput = _well_formed(await e2e_stream.throughput(stack, backlog=300, runs=1, profile="ci_failures"),
                        "e2e_throughput_ci_failures", out)
    run = tput.runs[0]
    assert run["complete"] and run["decided"] == 300 and sum(run["tiers"].values()) == 300

    lat = _well_formed(await e2e_stream.latency(stack, rates=(50,), seconds=1.0, profile="typical"), "e2e_latency", out)
    assert lat.runs[0]["decided"] == 50 and lat.runs[0]["record"]["count"] == 50

    hits = _well_formed(await hitratio.run(stack, profiles=("ci_failures",), rates=(1.0, 100.0), horizon_s=300,
                                           max_alerts=200, target_run_s=1), "hitratio", out)
    cells = [x for x in hits.runs if "variant" in x]
    assert [(x["rate"], x["variant"].split(" ")[0]) for x in cells] == [(1.0, "default"), (100.0, "default"), (100.0, "capacity")]
    for x in cells:
        assert x["engine"]["decided"] == x["alerts"] and x["engine"]["complete"]
        assert sum(x["engine"]["tiers"].values()) == x["alerts"] and 0 <= x["engine"]["hit"] <= 1
        assert x["redis_ttl_s_run"] * x["compression"] == stack.redis_ttl_s  # TTLs compressed with time
    assert cells[2]["lru_size"] < stack.lru_size
    sweep = next(x for x in hits.runs if "capacities" in x)
    assert len(sweep["lru"]) == len(sweep["capacities"])

    # named after the engine unless it is faust (the first results' names): aiokafka is the default
    mem = _well_formed(await memory.run(stack, step_alerts=200, steps=2, cached=20, clickhouse="embedded"), "memory_aiokafka", out)
    assert [p["stage"] for p in mem.runs] == ["idle", "20_cached", "after_step_1", "after_step_2"]
    assert all(p["rss_mb"] > 0 for p in mem.runs) and mem.metrics["complete"]
    before = tmp_path / "memory_http_before.json"
    before.write_bytes(mem.to_json().replace(b'"clickhouse": "embedded"', b'"clickhouse": "http"'))
    mem_http = _well_formed(await memory.run(stack, step_alerts=200, steps=1, cached=20, before=before), "memory_http_aiokafka", out)
    assert mem_http.metrics["complete"] and mem_http.metrics["clickhouse_process_rss_mb"] > 0
    assert mem_http.metrics["before_rss_idle_mb"] == mem.metrics["rss_idle_mb"] and mem_http.params["before"]["runs"]

    sk = _well_formed(await sink.run(rows=2000, work_dir=tmp_path / "sink"), "sink", out)
    assert [(x["backend"], x["fsync"]) for x in sk.runs] == [("embedded", False), ("embedded", True), ("http", False), ("http", True)]
    assert all(x["inserted_rows_per_s"] > 0 and x["flushes"] >= 1 and x["write"]["count"] == 4 for x in sk.runs)

    text = report.render(out, readmes=()).read_text()
    assert "nproc=" in text and "## Throughput" in text and "## Hit ratio" in text and "## The simulated proposition service" in text
    assert "## ClickHouse sink" in text
    # The memory runs side by side: the earlier run a result carries (--before) gets a column of its own.
    assert "ClickHouse over HTTP, aiokafka engine" in text and "ClickHouse embedded (chdb://), aiokafka engine" in text
    assert "its earlier run (`params.before`)" in text and ", before: `" in text
    # Every section names its runs: file, command, commit.
    assert all(f"- `{name}.json`: `" in text for name in report.load_all(out)), text
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


# --- API load (wrk) -----------------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.timeout(300)
async def test_api_load_runs_at_a_tiny_size_fresh_keys_miss_and_repeat_keys_hit(stack: Settings, tmp_path: Path) -> None:
    from benchmarks import api

    # ./run setup installs wrk: a missing one is a failure here, not a skip.
    result = _well_formed(await api.run(stack, seconds=1, concurrency=(5,)), "api", tmp_path)
    measured = {(r["shape"], r["keys"]): r for r in result.runs}
    assert set(measured) == {(s, k) for s in ("single", "batch10", "c5") for k in ("fresh", "repeat")}
    for (shape, keys), row in measured.items():
        assert row["requests"] > 0 and row["statuses"] == {"200": row["requests"]}, row
        assert row["errors"] == 0 and row["rejected"] == 0 and row["command"].startswith("wrk ")
        alerts = row["requests"] * row["batch"]
        # fresh keys are new to the LRU and Redis; repeat keys were answered just before by the API's own LRU.
        assert row["tiers"] == ({"service": alerts} if keys == "fresh" else {"lru": alerts}), row
    assert result.params["api_token"] == "set" and "Bearer" not in result.to_json().decode()  # the token stays out
    assert set(result.metrics["caching_p50_reduction"]) == {"single", "batch10", "c5"}

    text = report.render(tmp_path, readmes=()).read_text()
    assert "## API load" in text and "| c5 | repeat |" in text and (tmp_path / "api.png").exists()


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
