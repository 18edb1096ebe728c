"""The performance monitor: HDR percentiles vs numpy, constant memory, counters, lag."""

from __future__ import annotations

import ctypes
import tracemalloc

import numpy as np
import pytest

from stream_engine.models import DeadLetter, Decision, Proposition, StageTimes
from stream_engine.monitor import HIGHEST_US, HISTOGRAMS, AlertTypes, Monitor, StageHistogram, release_free_memory, rss_bytes
from stream_engine.pipeline import BatchReport, RawMessage

# 3 significant digits: a reported value is within 0.1% of a sample of the same rank.
HDR_RELATIVE = 1e-3


def test_percentiles_match_numpy_within_hdr_precision() -> None:
    rng = np.random.default_rng(5)
    samples_us = rng.lognormal(mean=8, sigma=1.5, size=50_000).astype(np.int64) + 1
    hist = StageHistogram()
    for v in samples_us:
        hist.record_us(int(v))
    summary = hist.summary()
    for p in (50, 95, 99):
        exact_ms = np.percentile(samples_us, p, method="inverted_cdf") / 1000.0
        assert summary[f"p{p}_ms"] == pytest.approx(exact_ms, rel=HDR_RELATIVE, abs=0.001), p
    assert summary["count"] == len(samples_us)
    assert summary["avg_ms"] == pytest.approx(samples_us.mean() / 1000.0, rel=HDR_RELATIVE)
    assert summary["max_ms"] == pytest.approx(samples_us.max() / 1000.0, rel=HDR_RELATIVE)


def test_memory_does_not_grow_with_samples() -> None:
    hist = StageHistogram()
    hist.record_us(10)
    counts_bytes = ctypes.sizeof(hist.hist.counts)
    rng = np.random.default_rng(1)
    values = [int(v) for v in rng.integers(1, 10_000_000, size=200_000)]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for v in values:
        hist.record_us(v)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert ctypes.sizeof(hist.hist.counts) == counts_bytes
    assert grown < 16_384, f"recording 200k samples allocated {grown} bytes that stayed"
    assert hist.count == 200_001


def test_out_of_range_values_are_clamped_and_counted() -> None:
    hist = StageHistogram()
    hist.record_us(0)
    hist.record_us(HIGHEST_US * 10, count=3)
    assert hist.count == 4 and hist.clamped == 3
    assert hist.summary()["max_ms"] == pytest.approx(HIGHEST_US / 1000.0, rel=HDR_RELATIVE)


def test_empty_histogram_reports_zeros() -> None:
    assert StageHistogram().summary() == {
        "count": 0, "avg_ms": 0.0, "p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0
    }  # fmt: skip


def test_cumulative_counts_match_numpy() -> None:
    rng = np.random.default_rng(9)
    samples = rng.integers(1, 2_000_000, size=10_000)
    hist = StageHistogram()
    for v in samples:
        hist.record_us(int(v))
    bounds = [100, 1_000, 10_000, 100_000, 1_000_000, 5_000_000]
    got = hist.cumulative_counts(bounds)
    want = [int((samples <= b).sum()) for b in bounds]
    for g, w, b in zip(got, want, bounds, strict=True):
        assert abs(g - w) <= max(2, w * 0.002), (b, g, w)  # values in the bound's HDR bucket
    assert got[-1] == len(samples)


def decision(alert_id: str, alert_type: str, mode: str, tier: str, latency_ms: float, reason: str | None = None) -> Decision:
    props = [] if tier == "none" else [Proposition("retry", 0.9)]
    return Decision(alert_id, alert_type, "k", mode, None, None, props, tier, latency_ms, 0.0, reason=reason)  # type: ignore[arg-type]


def report(decisions: list[Decision], dead: list[DeadLetter] | None = None) -> BatchReport:
    times = StageTimes(decode=50_000, lru=10_000, redis=1_000_000, service=0, decide=5_000, produce=2_000_000, sink=3_000_000)
    return BatchReport(decisions, dead or [], times)


def messages(topic: str, partition: int, offsets: range) -> list[RawMessage]:
    return [RawMessage(b"{}", partition, o, topic) for o in offsets]


def test_batches_feed_counters_hit_ratio_and_stage_histograms() -> None:
    m = Monitor()
    dl = DeadLetter("not_json", "bad", "alerts", 0, 3, b"x", 0.0)
    m.observe_batch(
        report(
            [
                decision("a", "ci_failure", "auto", "lru", 4.0),
                decision("b", "ci_failure", "review", "service", 4.0),
                decision("c", "scam", "escalate", "none", 4.0, reason="timeout"),
                decision("d", "scam", "auto", "redis", 4.0),
            ],
            [dl],
        ),
        messages("alerts", 0, range(0, 5)),
    )
    m.observe_api(StageTimes(lru=1000, sink=2000), [decision("e", "scam", "auto", "lru", 1.0)])

    snap = m.snapshot()
    assert snap["decisions"]["total"] == 5
    assert snap["decisions"]["by_mode"] == {"auto": 3, "review": 1, "escalate": 1}
    assert snap["decisions"]["by_source"] == {"stream": 4, "api": 1}
    assert snap["decisions"]["by_type_and_tier"] == {
        "ci_failure": {"lru": 1, "service": 1},
        "scam": {"none": 1, "redis": 1, "lru": 1},
    }
    assert snap["hit_ratio"]["scam"] == {"lru": 1 / 3, "none": 1 / 3, "redis": 1 / 3}
    assert snap["hit_ratio"]["*"]["lru"] == pytest.approx(2 / 5)
    assert snap["errors"]["dead_letters"] == {"not_json": 1}
    assert snap["errors"]["escalations"] == {"timeout": 1}
    assert snap["batches"] == {"stream": 1, "api": 1} and snap["alerts"] == {"stream": 5, "api": 1}
    latency = snap["latency_ms"]
    assert set(latency) == set(HISTOGRAMS)
    assert latency["end_to_end"]["count"] == 5
    assert latency["end_to_end"]["p50_ms"] == pytest.approx(4.0, rel=HDR_RELATIVE)
    assert latency["decode"]["count"] == 1 and latency["produce"]["count"] == 1  # API has neither
    assert latency["lru"]["count"] == 2 and latency["sink"]["count"] == 2
    assert latency["produce"]["p50_ms"] == pytest.approx(2.0, rel=HDR_RELATIVE)
    assert snap["rss_bytes"] > 0


def test_batch_failures_are_counted_by_type() -> None:
    m = Monitor()
    m.batch_failed(TimeoutError())
    m.batch_failed(TimeoutError())
    m.batch_failed(RuntimeError())
    assert m.snapshot()["errors"]["batch_failures"] == {"TimeoutError": 2, "RuntimeError": 1}


def test_lag_counts_from_processed_offsets_else_the_fetch_position() -> None:
    m = Monitor()
    m.partitions_assigned([("alerts", 0), ("alerts", 1)])
    m.observe_batch(report([]), messages("alerts", 0, range(10, 20)))
    lag = m.consumer_lag([("alerts", 0, 25, 22), ("alerts", 1, 7, 5), ("alerts", 2, None, 0)])
    assert lag["alerts:0"] == {"highwater": 25, "position": 22, "processed": 20, "lag": 5}
    assert lag["alerts:1"]["lag"] == 2 and lag["alerts:1"]["processed"] is None
    assert lag["alerts:2"]["lag"] is None

    m.partitions_revoked([("alerts", 0)])
    assert m.assigned == {("alerts", 1)} and m.assignment_seen
    assert m.consumer_lag([("alerts", 0, 25, 22)])["alerts:0"]["lag"] == 3  # progress went with it


def test_time_is_measured_by_the_injected_clock() -> None:
    now = [100.0]
    m = Monitor(clock=lambda: now[0])
    now[0] = 142.5
    assert m.uptime_s == 42.5


def test_series_per_alert_type_are_bounded_and_the_api_cannot_claim_them() -> None:
    m = Monitor(AlertTypes({"ci_failure", "scam"}, max_seen=2))
    # An API caller inventing types first: they fold into "other" and take no place.
    m.observe_api(StageTimes(), [decision(f"api{i}", f"made_up_{i}", "review", "service", 1.0) for i in range(100)])
    stream = [decision(f"s{i}", t, "auto", "lru", 1.0) for i, t in enumerate(["scam", "infra", "deploy", "x1", "x2", "x3"])]
    m.observe_batch(report(stream), messages("alerts", 0, range(6)))
    m.observe_api(StageTimes(), [decision("api-x", "infra", "auto", "lru", 1.0)])  # known now: its own series
    for i in range(1000):  # a publisher inventing types
        m.observe_batch(report([decision(f"p{i}", f"junk_{i}", "review", "service", 1.0)]), messages("alerts", 1, range(i, i + 1)))

    types = {key[3] for key in m.decisions}
    assert types == {"scam", "infra", "deploy", "other"}  # configured + the first 2 seen + other
    snap = m.snapshot()
    assert snap["decisions"]["by_type_and_tier"]["other"] == {"service": 1100, "lru": 3}
    assert snap["decisions"]["by_type_and_tier"]["infra"] == {"lru": 2}
    assert set(snap["hit_ratio"]) == {"*", "scam", "infra", "deploy", "other"}
    assert snap["decisions"]["total"] == 100 + 6 + 1 + 1000  # folded, never dropped


def test_release_free_memory_returns_freed_heap_pages() -> None:
    """What a worker freed while starting stops counting in its RSS once it is ready."""
    if getattr(ctypes.CDLL(None), "malloc_trim", None) is None:
        pytest.skip("not glibc: release_free_memory is a no-op")
    # 64 MB in 2 kB blocks (glibc's heap, not pymalloc), then all freed but the last one, which
    # pins the heap's top: free() alone cannot give those pages back.
    blocks = [bytearray(2048) for _ in range(32_000)]
    keep = blocks[-1]
    del blocks
    before = rss_bytes()
    release_free_memory()
    after = rss_bytes()
    assert len(keep) == 2048
    assert before - after > 32 * 1024 * 1024, (before, after)
