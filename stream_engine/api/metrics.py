"""``GET /metrics``: Prometheus exposition of the Monitor and the runtime's parts.

A custom collector reads the counters the worker keeps anyway at scrape time, so the hot path
does no extra bookkeeping for Prometheus. Stage latency is exposed as a real histogram (buckets
derived from the HDR histogram, so workers aggregate with ``histogram_quantile``). One
``CollectorRegistry`` per app, never the global one, so tests can run several apps per process.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from stream_engine.monitor import rss_bytes

if TYPE_CHECKING:
    from stream_engine.runtime import Runtime

PREFIX = "stream_engine"
# Seconds; fine at the low end where the cache tiers live.
BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BUCKETS_US = tuple(int(b * 1_000_000) for b in BUCKETS_S)


def _counter(name: str, doc: str, labels: list[str] | None = None) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)


class RuntimeCollector(Collector):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.lag: dict[str, dict[str, Any]] = {}  # refreshed by the /metrics handler before a scrape

    def collect(self) -> Iterator[Metric]:
        monitor = self.runtime.monitor

        decisions = _counter("decisions", "Decisions made.", ["source", "mode", "tier", "alert_type"])
        for (source, mode, tier, alert_type), n in sorted(monitor.decisions.items()):
            decisions.add_metric([source, mode, tier, alert_type], n)
        yield decisions

        dead = _counter("dead_letters", "Alerts sent to the dead-letter topic.", ["reason"])
        for reason, n in sorted(monitor.dead_letters.items()):
            dead.add_metric([reason], n)
        yield dead

        dropped = _counter("dead_letters_dropped", "Dead letters too large for the DLQ even without their original (logged).", ["reason"])
        for reason, n in sorted(monitor.dead_letters_dropped.items()):
            dropped.add_metric([reason], n)
        yield dropped

        escalations = _counter("service_failures", "Decisions without propositions, by reason.", ["reason"])
        for reason, n in sorted(monitor.escalations.items()):
            escalations.add_metric([reason], n)
        yield escalations

        batches = _counter("batches", "Batches processed (stream) and API calls.", ["source"])
        for source, n in sorted(monitor.batches.items()):
            batches.add_metric([source], n)
        yield batches

        failures = _counter("batch_failures", "Stream batches that failed and were retried.", ["error"])
        for error, n in sorted(monitor.batch_failures.items()):
            failures.add_metric([error], n)
        yield failures

        latency = HistogramMetricFamily(f"{PREFIX}_stage_latency_seconds", "Time per stage.", labels=["stage"])
        for stage, hist in monitor.stages.items():
            counts = hist.cumulative_counts(BUCKETS_US)
            buckets = [(str(b), c) for b, c in zip(BUCKETS_S, counts, strict=True)] + [("+Inf", hist.count)]
            latency.add_metric([stage], buckets, hist.sum_ms() / 1000.0)
        yield latency

        yield from self._parts()

        lag = _gauge("consumer_lag", "High-watermark minus processed offset.", ["topic", "partition"])
        for tp, row in sorted(self.lag.items()):
            if row.get("lag") is not None:
                topic, _, partition = tp.rpartition(":")
                lag.add_metric([topic, partition], row["lag"])
        yield lag

        rss = _gauge("rss_bytes", "Resident set size of the worker process.")
        rss.add_metric([], rss_bytes())
        yield rss
        uptime = _gauge("uptime_seconds", "Seconds since the worker's monitor started.")
        uptime.add_metric([], monitor.uptime_s)
        yield uptime

    def _parts(self) -> Iterator[Metric]:
        runtime = self.runtime
        parts = runtime.parts_stats()
        redis = parts["redis"]
        for name in ("hits", "misses", "errors", "skipped", "corrupt", "stale", "refused"):
            metric = _counter(f"redis_{name}", f"Redis tier {name.replace('_', ' ')}.")
            metric.add_metric([], redis[name])
            yield metric
        invalidations = parts["invalidations"]
        for name, doc in (
            ("applied", "Invalidations applied (floors raised, LRU entries dropped)."),
            ("redis_applied", "Invalidations Redis has taken."),
            ("redis_failures", "Attempts to apply an invalidation Redis did not take (each is retried until taken)."),
        ):
            metric = _counter(f"invalidation_{name}", doc)
            metric.add_metric([], invalidations[name])
            yield metric
        pending = _gauge("invalidation_redis_pending", "Invalidations waiting for Redis to take them.")
        pending.add_metric([], invalidations["pending"])
        yield pending
        degraded = _gauge("redis_degraded", "1 while the Redis tier is skipped after a failure.")
        degraded.add_metric([], 1 if redis["degraded"] else 0)
        yield degraded

        lru = parts["lru"]
        for name in ("hits", "misses", "evicted", "expired"):
            metric = _counter(f"lru_{name}", f"Partition-local LRU {name}.")
            metric.add_metric([], lru[name])
            yield metric
        entries = _gauge("lru_entries", "Entries in the partition-local LRUs.")
        entries.add_metric([], lru["entries"])
        yield entries

        client = parts["service"]
        for name in ("requests", "retries", "failures", "breaker_rejections"):
            metric = _counter(f"service_{name}", f"Proposition service client {name.replace('_', ' ')}.")
            metric.add_metric([], client[name])
            yield metric
        breaker = _gauge("service_breaker_open", "1 while the circuit breaker is not closed.")
        breaker.add_metric([], 0 if client["breaker"] == "closed" else 1)
        yield breaker
        pool = _gauge("service_pool_connections", "Open HTTP connections to the proposition service.")
        pool.add_metric([], client["pool_connections"] or 0)
        yield pool
        pool_max = _gauge("service_pool_max_connections", "Configured HTTP pool size.")
        pool_max.add_metric([], runtime.settings.service_pool_size)
        yield pool_max

        sink = parts["sink"]
        for name, doc in (
            ("rows_written", "Rows made durable (journal)."),
            ("rows_inserted", "Rows inserted into ClickHouse."),
            ("metrics_written", "Latency metric rows made durable."),
            ("flushes", "Sink flushes."),
            ("failures", "Failed ClickHouse inserts (retried)."),
            ("journal_bytes_written", "Bytes appended to the sink journal."),
        ):
            if name in sink:
                metric = _counter(f"sink_{name}", doc)
                metric.add_metric([], sink[name])
                yield metric
        for name, doc in (
            ("buffered_rows", "Rows buffered in memory for ClickHouse."),
            ("journal_bytes", "Bytes in the sink journal on disk now."),
        ):
            if name in sink:
                gauge = _gauge(f"sink_{name}", doc)
                gauge.add_metric([], sink[name])
                yield gauge


def build_registry(runtime: Runtime) -> tuple[CollectorRegistry, RuntimeCollector]:
    registry = CollectorRegistry(auto_describe=False)
    collector = RuntimeCollector(runtime)
    registry.register(collector)
    return registry, collector


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
