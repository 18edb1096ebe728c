"""What every benchmark shares: the result record, machine facts, percentiles, topics, filling.

Results are plain JSON so they can be diffed between commits; each one carries what a number
means nothing without: the exact command, the commit (and whether the tree was dirty), every
setting that differs from ``Settings``' defaults, and the machine with its load before and after.
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from stream_engine.settings import PROJECT_ROOT, Settings

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Settings that only keep a run apart from every other (fresh names, ports, directories, tokens):
# their values say nothing about performance, so a result lists their names, not their values.
ISOLATION_SETTINGS = frozenset({
    "data_dir", "stack_dir", "topics_dir", "topic_alerts", "topic_decisions", "topic_dlq", "topic_updates", "app_id",
    "redis_namespace", "clickhouse_database", "propositions_url", "propositions_port", "admin_token", "api_token",
    "api_port", "worker_name",
})  # fmt: skip
SECRET_MARKERS = ("TOKEN", "PASSWORD", "SECRET")


# --- results --------------------------------------------------------------------------------
@dataclass(slots=True)
class BenchResult:
    name: str
    command: str
    params: dict[str, Any]
    metrics: dict[str, Any]  # the headline numbers (medians where there were several runs)
    runs: list[dict[str, Any]] = field(default_factory=list)  # every run's raw numbers
    notes: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)
    started_at: str = ""
    duration_s: float = 0.0
    # {"commit", "dirty", "dirty_paths"}: the code that ran ({} in results older than issue 17).
    git: dict[str, Any] = field(default_factory=dict)
    # {"non_default": {name: value}, "isolation": [names]}: the worker's settings against the defaults.
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)

    def write(self, directory: Path | None = None) -> Path:
        """Into ``directory`` (default ``benchmarks/results``, what the report renders)."""
        directory = directory or RESULTS_DIR
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.name}.json"
        path.write_bytes(self.to_json())
        return path

    @classmethod
    def load(cls, path: Path) -> BenchResult:
        return cls(**orjson.loads(path.read_bytes()))


class Stopwatch:
    """Fills ``started_at``/``duration_s``/``machine``/``command``/``git``/``settings`` of a result."""

    def __init__(self) -> None:
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.t0 = time.monotonic()
        self.load_before = os.getloadavg()
        self.git = git_state()  # before the run writes its own result files

    def finish(self, result: BenchResult, command: str | None = None, settings: Settings | None = None) -> BenchResult:
        """``settings``: what the benchmark's workers ran with (default: ``Settings()``, i.e. the environment)."""
        result.started_at = self.started_at
        result.duration_s = round(time.monotonic() - self.t0, 2)
        result.command = command or result.command or current_command()
        result.machine = machine_info()
        result.machine["loadavg_at_start"] = [round(x, 2) for x in self.load_before]
        result.git = self.git
        result.settings = settings_record(settings or Settings())
        return result


def current_command() -> str:
    """How this process was started, as a copy-pasteable command (module form when -m was used),
    with every STREAM_ENGINE_* variable of the environment in front (secrets masked)."""
    argv = list(sys.argv)
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        argv = ["python", "-m", spec.name.removesuffix(".__main__"), *argv[1:]]
    env = " ".join(
        f"{k}={shlex.quote(mask(k, v))}" for k, v in sorted(os.environ.items()) if k.startswith("STREAM_ENGINE_")
    )
    return (env + " " if env else "") + shlex.join(argv)


def mask(name: str, value: str) -> str:
    """A value fit for a result file: secrets replaced, passwords cut out of URLs."""
    if any(marker in name.upper() for marker in SECRET_MARKERS):
        return "***" if value else ""
    if "://" in value:
        parts = urlsplit(value)
        if parts.password:
            netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
            return urlunsplit(parts._replace(netloc=netloc))
    return value


# --- provenance ----------------------------------------------------------------------------------
@cache
def git_state() -> dict[str, Any]:
    """The commit that runs and whether the tree differs from it (``benchmarks/results`` aside:
    a run writes there itself). ``commit`` is None outside a git checkout."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=10).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain", "--untracked-files=normal", "--", ".", ":(exclude)benchmarks/results")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "dirty_paths": []}
    paths = [line[3:] for line in status.splitlines() if line.strip()]
    return {"commit": commit, "dirty": bool(paths), "dirty_paths": paths[:20]}


def settings_record(settings: Settings) -> dict[str, Any]:
    """Every setting that differs from its default in ``Settings`` (not from the environment: a
    STREAM_ENGINE_* variable is a non-default too). Isolation settings are listed by name only."""
    defaults = Settings.model_construct().model_dump(mode="json")
    actual = settings.model_dump(mode="json")
    changed = {name for name, value in actual.items() if defaults.get(name) != value}
    data_dir = str(settings.data_dir.resolve())

    def shown(name: str) -> Any:
        value = actual[name]  # a run's own data directory is a scratch path: named, not spelled out
        return mask(name, value.replace(data_dir, "$DATA_DIR")) if isinstance(value, str) else value

    return {"non_default": {name: shown(name) for name in sorted(changed - ISOLATION_SETTINGS)},
            "isolation": sorted(changed & ISOLATION_SETTINGS)}


# --- machine ----------------------------------------------------------------------------------
def _meminfo_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def kafka_broker_version(settings: Settings | None = None) -> str:
    """The version of the broker jar a local ``kafka.Kafka`` process runs, else the configured one."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if b"kafka.Kafka" not in cmdline:
                continue
            for entry in cmdline:  # a classpath that names the jar
                match = re.search(rb"kafka-server-(\d[\w.\-]*)\.jar", entry)
                if match:
                    return match.group(1).decode()
            libs = (proc / "cwd" / "libs").resolve()
            for jar in libs.glob("kafka-server-*.jar"):
                match = re.fullmatch(r"kafka-server-(\d[\w.\-]*)\.jar", jar.name)
                if match:
                    return match.group(1)
        except OSError:
            continue
    configured = (settings or Settings()).kafka_version
    return f"{configured} (configured; broker process not inspectable)"


def machine_info() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "ram_mb": _meminfo_mb(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "kafka": kafka_broker_version(),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }


# --- statistics -------------------------------------------------------------------------------
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def latency_summary(values_ms: Iterable[float]) -> dict[str, float]:
    ordered = sorted(values_ms)
    if not ordered:
        return {"count": 0}
    return {
        "count": len(ordered),
        "p50_ms": round(percentile(ordered, 50), 3),
        "p95_ms": round(percentile(ordered, 95), 3),
        "p99_ms": round(percentile(ordered, 99), 3),
        "max_ms": round(ordered[-1], 3),
        "mean_ms": round(statistics.fmean(ordered), 3),
    }


def median_of(runs: Sequence[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
    return float(statistics.median(values)) if values else math.nan


# --- Kafka -------------------------------------------------------------------------------------
def bench_settings(base: Settings | None = None, tag: str = "bench") -> Settings:
    """Unique topics (prefix), consumer group, Redis namespace and ClickHouse database for one
    benchmark run (a shared ClickHouse server must not mix runs)."""
    from stream_engine.kafka import prefixed_settings

    base = base or Settings()
    run = f"{tag}-{uuid.uuid4().hex[:8]}"
    return prefixed_settings(base, run + ".").with_overrides(
        app_id=run, redis_namespace=f"se:{run}", clickhouse_database="bench_" + re.sub(r"\W", "_", run))


async def create_topics(settings: Settings) -> None:
    """The engine's topics (topics/*.yaml: `alerts` has 6 partitions) under the run's names."""
    from stream_engine.kafka import apply_topics

    report = await apply_topics(settings)
    if not report.in_sync:
        raise RuntimeError("topics not in sync: " + "; ".join(report.lines()))


async def drop_topics(settings: Settings) -> None:
    from stream_engine.kafka import TOPIC_SETTINGS, delete_topics

    try:
        await delete_topics(settings, [getattr(settings, name) for name in TOPIC_SETTINGS])
    except Exception:  # noqa: BLE001 - cleanup must not hide the measurement
        pass


async def kafka_answers(bootstrap: str, timeout_s: float = 5.0) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        return True
    except Exception:  # noqa: BLE001
        return False
    finally:
        try:
            await admin.close()
        except Exception:  # noqa: BLE001
            pass


def encoded_alerts(alerts: Iterable[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    """(message key, value) exactly as a well-behaved publisher sends them."""
    from stream_engine.keys import message_key

    return [(message_key(a), orjson.dumps(a)) for a in alerts]


async def fill_topic(bootstrap: str, topic: str, records: Sequence[tuple[bytes | None, bytes]], progress: Any = None) -> float:
    """Publish a backlog as fast as the producer goes; returns seconds taken."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks="all", max_batch_size=256 * 1024)
    await producer.start()
    t0 = time.perf_counter()
    try:
        pending = []
        for i, (key, value) in enumerate(records):
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
                if progress is not None:
                    progress(i + 1)
        await asyncio.gather(*pending)
        if progress is not None:
            progress(len(records))
    finally:
        await producer.stop()
    return time.perf_counter() - t0


def require_kafka(settings: Settings) -> None:
    if not asyncio.run(kafka_answers(settings.kafka_bootstrap)):
        raise SystemExit(
            f"Kafka does not answer at {settings.kafka_bootstrap}: start it (`stream-engine stack up`) or point "
            "STREAM_ENGINE_KAFKA_BOOTSTRAP at a running broker"
        )


# --- progress -----------------------------------------------------------------------------------
class Progress:
    """A rich progress bar on a terminal, silence elsewhere (pytest, CI logs)."""

    def __init__(self, description: str, total: int, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar: Any = None
        self._task: Any = None
        self.description = description
        self.total = total

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                transient=True,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total)
        return self

    def update(self, completed: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=completed)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
