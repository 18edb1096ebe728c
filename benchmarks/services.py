"""The real processes a benchmark runs against: the proposition service and workers.

Thin wrappers over ``harness.procs`` (the same helpers the e2e tests use) that also give
each run its own proposition-service port and data directory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from harness.procs import Proc, admin_headers, free_port, start_propositions, start_worker
from stream_engine.settings import Settings


def with_private_service_and_data(settings: Settings, data_dir: Path) -> Settings:
    return settings.with_overrides(
        propositions_url=f"http://127.0.0.1:{free_port()}", admin_token=secrets.token_urlsafe(16), data_dir=data_dir
    )


@contextlib.contextmanager
def workspace(keep: Path | None = None) -> Iterator[Path]:
    """A scratch directory for logs and the worker's data (chDB); kept when ``keep`` is given."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="se-bench-") as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def proposition_service(settings: Settings, log_dir: Path, median_ms: float, p99_ms: float | None = None) -> Iterator[Proc]:
    """``propositions serve`` with a seeded simulated latency (0 = none), no Kafka updates."""
    extra = ["--latency-median-ms", str(median_ms), "--seed", "1", "--no-updates"]
    if p99_ms is not None and median_ms:
        extra += ["--latency-p99-ms", str(p99_ms)]
    proc = start_propositions(settings, log_dir, *extra)
    try:
        yield proc
    finally:
        proc.stop()


@contextlib.contextmanager
def worker(settings: Settings, log_dir: Path, name: str = "worker") -> Iterator[Proc]:
    proc = start_worker(settings, log_dir, name)
    try:
        yield proc
    finally:
        proc.stop()


def service_stats(settings: Settings) -> dict[str, Any]:
    return dict(httpx.get(f"{settings.propositions_url}/v1/stats", headers=admin_headers(settings), timeout=5).json())


def reset_service_stats(settings: Settings) -> None:
    httpx.delete(f"{settings.propositions_url}/v1/stats", headers=admin_headers(settings), timeout=5).raise_for_status()


def rss_kb(pid: int) -> int:
    """Resident set size of a process (VmRSS, kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")
