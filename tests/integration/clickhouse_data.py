"""Rows for the ClickHouse integration tests: varied proposition-log and latency-metric rows."""

from __future__ import annotations

import uuid
from typing import Any


def unique_database(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def make_rows(n: int, *, start_ms: int | None = None, prefix: str = "a", worker: str = "w1") -> list[Any]:
    """``n`` varied proposition-log rows, one millisecond apart from ``start_ms`` (default now)."""
    import time

    from stream_engine.sinks.clickhouse.rows import LogRow

    base = int(time.time() * 1000) if start_ms is None else start_ms
    types = ("ci_failure", "scam", "infra")
    tiers = ("lru", "redis", "service", "none")
    modes = ("auto", "review", "escalate")
    return [
        LogRow(
            f"{prefix}{i}", types[i % 3], f"k{i % 50}", "high", "ci", base + i, base + i + 3, modes[i % 3 if i % 7 else 2],
            None if i % 11 == 0 else "rerun", None if i % 11 == 0 else 0.5 + (i % 50) / 100, tiers[(i // 3) % 4],
            float((i * 7919) % 1000) / 7.0, 500, i % 16, i, worker,
            '[{"action":"rerun","confidence":0.9,"rationale":"x"}]', None if i % 5 else "low confidence", "0.1.0",
        )
        for i in range(n)
    ]


def make_metrics(n: int, *, start_us: int | None = None) -> list[Any]:
    import time

    from stream_engine.sinks.clickhouse.rows import MetricRow

    base = int(time.time() * 1_000_000) if start_us is None else start_us
    return [MetricRow(base + i, "decode", "scam", "w1", 10, 5.0 + i, 1.5) for i in range(n)]
