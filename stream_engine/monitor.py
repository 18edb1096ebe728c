"""Live performance numbers of one worker: streaming latency histograms and counters.

Every stage has one HDR histogram (``hdrhistogram``) in microseconds, 3 significant digits
(≤0.1% relative error), 1 µs … 1 h: its memory is allocated once (~190 KB) and never grows
however many samples it takes, and a percentile is a walk over fixed buckets, never a sort.

Fed from each ``BatchReport`` of the stream (``observe_batch``) and from each HTTP API call
(``observe_api``); read by ``/api/v1/stats`` (``snapshot``) and ``/metrics``. Everything runs on
the event loop, so no locks.

Series per alert type are bounded (:class:`AlertTypes`): the configured types and the first
``metrics_max_alert_types`` others the stream brings have their own; the rest count as ``other``.
"""

from __future__ import annotations

import itertools
import os
import resource
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hdrh.histogram import HdrHistogram

from stream_engine.models import API_STAGES, END_TO_END, STAGES

if TYPE_CHECKING:
    from stream_engine.models import DeadLetter, Decision, StageTimes
    from stream_engine.pipeline import BatchReport, RawMessage
    from stream_engine.settings import Settings

HISTOGRAMS = (*STAGES, END_TO_END)
# (topic, partition, high-watermark, fetch position) per assigned partition: what lag is made of.
Positions = list[tuple[str, int, "int | None", "int | None"]]
PositionsProbe = Callable[[], Awaitable[Positions]]
LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour; longer samples are clamped (and counted)
SIGNIFICANT_DIGITS = 3
SOURCES = ("stream", "api")
OTHER_TYPE = "other"
DEFAULT_MAX_SEEN_TYPES = 50


class AlertTypes:
    """The alert types that get metric series of their own (Prometheus labels, /stats keys).

    Known: the configured types, then the first ``max_seen`` others seen in the stream. Any other
    type is counted as ``other`` — and so is an unknown type sent only to the HTTP API, so neither
    a publisher nor an API caller inventing types can grow the series without bound, and an API
    caller cannot use up the places the stream's real types need.
    """

    def __init__(self, configured: Iterable[str] = (), max_seen: int = DEFAULT_MAX_SEEN_TYPES) -> None:
        self.known = set(configured)
        self.max_seen = max_seen
        self.seen = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> AlertTypes:
        return cls({*settings.key_fields, *settings.auto_thresholds}, settings.metrics_max_alert_types)

    def label(self, alert_type: str, learn: bool) -> str:
        """``alert_type`` if it has a series (learning it while there is room and ``learn``), else ``other``."""
        if alert_type in self.known:
            return alert_type
        if learn and self.seen < self.max_seen:
            self.known.add(alert_type)
            self.seen += 1
            return alert_type
        return OTHER_TYPE


class StageHistogram:
    """One stage's latency distribution; values in microseconds, reported in milliseconds."""

    def __init__(self) -> None:
        self.hist = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
        self.clamped = 0
        # Our own exact sum: hdrh's get_mean_value walks every bucket in Python (~60 ms).
        self.sum_us = 0

    def record_us(self, value_us: int, count: int = 1) -> None:
        if value_us < LOWEST_US:
            value_us = LOWEST_US  # a stage that took <1 µs (e.g. an empty LRU pass) counts as 1 µs
        elif value_us > HIGHEST_US:
            value_us = HIGHEST_US
            self.clamped += count
        self.hist.record_value(value_us, count)
        self.sum_us += value_us * count

    @property
    def count(self) -> int:
        return int(self.hist.get_total_count())

    def percentile_ms(self, percentile: float) -> float:
        return self.hist.get_value_at_percentile(percentile) / 1000.0 if self.count else 0.0

    def summary(self) -> dict[str, float | int]:
        if not self.count:
            return {"count": 0, "avg_ms": 0.0, "p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
        h = self.hist
        values = h.get_percentile_to_value_dict([50, 95, 99])
        return {
            "count": self.count,
            "avg_ms": self.sum_us / self.count / 1000.0,
            "p50_ms": values[50] / 1000.0,
            "p95_ms": values[95] / 1000.0,
            "p99_ms": values[99] / 1000.0,
            "max_ms": h.get_max_value() / 1000.0,
        }

    def cumulative_counts(self, bounds_us: Sequence[int]) -> list[int]:
        """Samples ≤ each bound (ascending): Prometheus histogram buckets from the HDR one.

        A sample in the same HDR bucket as a bound (within 0.1% of it) counts as ≤ the bound.
        One pass over the fixed counts array, not hdrh's (much slower) recorded-value iterator.
        """
        h = self.hist
        ends = [h.get_counts_array_index(min(max(b, LOWEST_US), HIGHEST_US)) + 1 for b in bounds_us]
        totals = list(itertools.accumulate(h.counts[: ends[-1]])) if ends else []
        return [totals[e - 1] if e > 0 else 0 for e in ends]

    def sum_ms(self) -> float:
        return self.sum_us / 1000.0


@dataclass(slots=True)
class PartitionProgress:
    next_offset: int  # the offset after the last one this worker processed


def rss_bytes() -> int:
    """Resident set size now (Linux /proc), else the peak from getrusage."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_free_memory() -> None:
    """Give the heap's free pages back to the OS (glibc's ``malloc_trim``; a no-op elsewhere).

    Starting a worker (imports, connecting, the group join) frees megabytes that glibc keeps
    mapped; a worker then runs for days at that resident size. Called once, when it is ready."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim(0)


class Monitor:
    def __init__(self, types: AlertTypes | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.types = types if types is not None else AlertTypes()
        self.started_at = clock()
        self.stages: dict[str, StageHistogram] = {stage: StageHistogram() for stage in HISTOGRAMS}
        self.batches: Counter[str] = Counter()  # by source
        self.alerts: Counter[str] = Counter()  # by source
        self.batch_failures: Counter[str] = Counter()  # by exception type (a failed batch is retried)
        self.decisions: Counter[tuple[str, str, str, str]] = Counter()  # (source, mode, tier, alert_type)
        self.escalations: Counter[str] = Counter()  # tier "none" decisions by reason (service failures)
        self.dead_letters: Counter[str] = Counter()  # by DLQ reason
        self.dead_letters_dropped: Counter[str] = Counter()  # too large for the DLQ in any form (logged), by reason
        self.api_requests: Counter[tuple[str, int]] = Counter()  # (route, status)
        self.progress: dict[tuple[str, int], PartitionProgress] = {}  # (topic, partition)
        self.assigned: set[tuple[str, int]] = set()
        self.assignment_seen = False  # joined the group at least once (maybe with no partitions)

    # --- feeding ----------------------------------------------------------------------------

    def observe_batch(self, report: BatchReport, messages: Sequence[RawMessage]) -> None:
        self.batches["stream"] += 1
        self.alerts["stream"] += len(messages)
        self._observe_times(report.times, include=STAGES)
        self._observe_decisions("stream", report.decisions)
        self._observe_dead(report.dead)
        for dl in report.dropped:
            self.dead_letters_dropped[dl.reason] += 1
        progress = self.progress
        for m in messages:
            tp = (m.topic, m.partition)
            seen = progress.get(tp)
            if seen is None:
                progress[tp] = PartitionProgress(m.offset + 1)
            elif m.offset >= seen.next_offset:
                seen.next_offset = m.offset + 1

    def observe_api(self, times: StageTimes, decisions: Sequence[Decision]) -> None:
        """An API call: no decode/produce stages (the HTTP handler parses, nothing is produced)."""
        self.batches["api"] += 1
        self.alerts["api"] += len(decisions)
        self._observe_times(times, include=API_STAGES)
        self._observe_decisions("api", decisions)

    def batch_failed(self, exc: BaseException) -> None:
        self.batch_failures[type(exc).__name__] += 1

    def api_request(self, route: str, status: int) -> None:
        self.api_requests[(route, status)] += 1

    def partitions_assigned(self, partitions: Iterable[tuple[str, int]]) -> None:
        self.assignment_seen = True
        self.assigned = set(partitions)

    def partitions_revoked(self, partitions: Iterable[tuple[str, int]]) -> None:
        for tp in partitions:
            self.assigned.discard(tp)
            self.progress.pop(tp, None)  # another worker owns its progress now

    def _observe_times(self, times: StageTimes, include: Iterable[str]) -> None:
        for stage in include:
            self.stages[stage].record_us(getattr(times, stage) // 1000)

    def _observe_decisions(self, source: str, decisions: Sequence[Decision]) -> None:
        if not decisions:
            return
        counts = self.decisions
        label, learn = self.types.label, source == "stream"
        latencies: Counter[int] = Counter()
        for d in decisions:
            counts[(source, d.mode, d.cache_tier, label(d.alert_type, learn))] += 1
            latencies[int(d.latency_ms * 1000)] += 1
            if d.cache_tier == "none":
                self.escalations[d.reason or "unknown"] += 1
        # A batch's decisions share their received/decided times, so this is a handful of records.
        end_to_end = self.stages[END_TO_END]
        for value_us, count in latencies.items():
            end_to_end.record_us(value_us, count)

    def _observe_dead(self, dead: Sequence[DeadLetter]) -> None:
        for dl in dead:
            self.dead_letters[dl.reason] += 1

    # --- reading ----------------------------------------------------------------------------

    @property
    def uptime_s(self) -> float:
        return self._clock() - self.started_at

    def latency(self) -> dict[str, dict[str, float | int]]:
        return {stage: hist.summary() for stage, hist in self.stages.items()}

    def decisions_by(self, *fields: str) -> dict[str, Any]:
        """Decision counts nested by the given fields of (source, mode, tier, alert_type)."""
        index = {"source": 0, "mode": 1, "tier": 2, "alert_type": 3}
        out: dict[str, Any] = {}
        for key, n in self.decisions.items():
            node = out
            for f in fields[:-1]:
                node = node.setdefault(key[index[f]], {})
            last = key[index[fields[-1]]]
            node[last] = node.get(last, 0) + n
        return out

    def hit_ratio(self) -> dict[str, dict[str, float]]:
        """Per alert type (and ``*`` for all): share of decisions answered by each tier."""
        counts: dict[str, Counter[str]] = {"*": Counter()}
        for (_, _, tier, alert_type), n in self.decisions.items():
            counts.setdefault(alert_type, Counter())[tier] += n
            counts["*"][tier] += n
        return {
            alert_type: {tier: n / total for tier, n in sorted(c.items())}
            for alert_type, c in sorted(counts.items())
            if (total := sum(c.values()))
        }

    def consumer_lag(self, offsets: Iterable[tuple[str, int, int | None, int | None]]) -> dict[str, dict[str, int | None]]:
        """Per ``topic:partition`` from (topic, partition, highwater, fetch position) of the assignment.

        ``lag`` = high-watermark − the offset after the last message this worker *processed* on
        that partition since it was assigned; before the first one, − the fetch position instead
        (which undercounts by what is fetched but not yet processed, at most a buffer's worth).
        """
        out: dict[str, dict[str, int | None]] = {}
        for topic, partition, highwater, position in sorted(offsets):
            progress = self.progress.get((topic, partition))
            processed = progress.next_offset if progress is not None else None
            start = processed if processed is not None else position
            lag = max(0, highwater - start) if highwater is not None and start is not None else None
            out[f"{topic}:{partition}"] = {"highwater": highwater, "position": position, "processed": processed, "lag": lag}
        return out

    def snapshot(self) -> dict[str, Any]:
        return {
            "uptime_s": self.uptime_s,
            "batches": dict(self.batches),
            "alerts": dict(self.alerts),
            "latency_ms": self.latency(),
            "decisions": {
                "total": sum(self.decisions.values()),
                "by_mode": self.decisions_by("mode"),
                "by_tier": self.decisions_by("tier"),
                "by_source": self.decisions_by("source"),
                "by_type_and_tier": self.decisions_by("alert_type", "tier"),
                "by_type_and_mode": self.decisions_by("alert_type", "mode"),
            },
            "hit_ratio": self.hit_ratio(),
            "errors": {
                "dead_letters": dict(self.dead_letters),
                "dead_letters_dropped": dict(self.dead_letters_dropped),
                "escalations": dict(self.escalations),
                "batch_failures": dict(self.batch_failures),
                "latency_clamped": {s: h.clamped for s, h in self.stages.items() if h.clamped},
            },
            "rss_bytes": rss_bytes(),
        }
