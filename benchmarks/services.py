"""The real processes a benchmark runs against: the proposition service and workers, and the
model of the proposition service's latency every benchmark shares.

Thin wrappers over ``harness.procs`` (the same helpers the e2e tests use) that also give
each run its own proposition-service port and data directory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from harness.procs import Proc, admin_headers, free_port, start_propositions, start_worker
from stream_engine.settings import Settings


@dataclass(frozen=True, slots=True)
class ServiceModel:
    """Simulated proposition-service time of one request of n items: a seeded lognormal through
    (``median_ms``, ``p99_ms``) per request, plus ``per_item_ms`` × n.

    The per-request part is the seed's figure (median 20 / p99 50 ms). The per-item part follows
    the shape of a real batch endpoint, the reference service's own (``benchmarks.service_shape``
    times ``POST /v1/propositions/batch`` at 1, 10, 100 and 1000 items: a fixed cost per request
    plus about 1 % of it per item); see benchmarks/README.md, "The service model".
    """

    median_ms: float = 20.0
    p99_ms: float = 50.0
    per_item_ms: float = 0.2

    def scaled(self, factor: float) -> ServiceModel:
        """The same service in time compressed by ``factor`` (every duration divided by it)."""
        return ServiceModel(self.median_ms / factor, self.p99_ms / factor, self.per_item_ms / factor)

    @property
    def off(self) -> bool:
        return not self.median_ms and not self.per_item_ms

    def args(self) -> list[str]:
        """``propositions serve`` flags."""
        if self.off:
            return []
        return ["--latency-median-ms", repr(self.median_ms), "--latency-p99-ms", repr(max(self.p99_ms, self.median_ms)),
                "--latency-per-item-ms", repr(self.per_item_ms)]

    def describe(self) -> dict[str, float]:
        return {"median_ms": self.median_ms, "p99_ms": self.p99_ms, "per_item_ms": self.per_item_ms}

    def label(self) -> str:
        if self.off:
            return "no simulated latency"
        return f"{self.median_ms:g} ms (p99 {self.p99_ms:g}) per request + {self.per_item_ms:g} ms per item"


SERVICE = ServiceModel()  # what every benchmark uses unless it says otherwise
NO_LATENCY = ServiceModel(0.0, 0.0, 0.0)


def service_of(params: dict[str, Any]) -> ServiceModel | None:
    """The service a result ran against, from its params (results older than issue 17 name only a
    per-request median and p99: their per-item cost was 0)."""
    if isinstance(params.get("service"), dict):
        return ServiceModel(**params["service"])
    median = params.get("service_median_ms", params.get("latency_median_ms"))
    if median is None:
        return None
    p99 = params.get("service_p99_ms", params.get("latency_p99_ms")) or median
    return ServiceModel(float(median), float(p99), 0.0)


def service_label(params: dict[str, Any]) -> str:
    model = service_of(params)
    if model is None:
        return "service not recorded"
    return model.label() + ("" if isinstance(params.get("service"), dict) else " (per request only: before issue 17)")


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
def proposition_service(settings: Settings, log_dir: Path, model: ServiceModel = SERVICE) -> Iterator[Proc]:
    """``propositions serve`` with the model's seeded simulated latency, no Kafka updates."""
    proc = start_propositions(settings, log_dir, *model.args(), "--seed", "1", "--no-updates")
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
