"""`Stack`: bring the local parts up (reusing healthy ones), report their health, stop them.

The parts are data: `COMPONENT_TYPES` lists them in start order; adding a part is one entry.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from stream_engine.settings import Settings
from stream_engine.stack.clickhouse import ClickHouseComponent
from stream_engine.stack.component import Component, StackError, StackLayout
from stream_engine.stack.kafka import KafkaComponent, recorded_kafka_nodes
from stream_engine.stack.process import (
    PidFile,
    describe_pid,
    is_alive,
    listening_pids,
    port_is_open,
    signal_group,
    spawn_detached,
    stop_group,
    tail,
)
from stream_engine.stack.propositions import PropositionsComponent
from stream_engine.stack.redis import RedisComponent
from stream_engine.stack.redis_cluster import RedisClusterComponent

COMPONENT_TYPES: tuple[type[Component], ...] = (
    KafkaComponent,
    RedisComponent,
    ClickHouseComponent,
    PropositionsComponent,
    RedisClusterComponent,
)

UpState = Literal["started", "reused", "external", "skipped", "failed"]
DownState = Literal["stopped", "killed", "not running", "external", "skipped"]
Health = Literal["running", "external", "down", "skipped"]


@dataclass(frozen=True, slots=True)
class PartResult:
    name: str
    state: str  # an UpState or a DownState
    seconds: float = 0.0
    pid: int | None = None
    detail: str = ""

    def line(self) -> str:
        pid = f" pid {self.pid}" if self.pid else ""
        detail = f" — {self.detail}" if self.detail else ""
        return f"{self.name:<13} {self.state:<11} {self.seconds:6.1f}s{pid}{detail}"


@dataclass(frozen=True, slots=True)
class PartStatus:
    name: str
    health: Health
    ports: tuple[int, ...]
    pid: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.health in ("running", "external", "skipped")

    def line(self) -> str:
        ports = ",".join(map(str, self.ports))
        pid = f" pid {self.pid}" if self.pid else ""
        detail = f" — {self.detail}" if self.detail else ""
        return f"{self.name:<13} {self.health:<9} port {ports}{pid}{detail}"


@dataclass(slots=True)
class StackReport:
    parts: list[PartResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(p.state != "failed" for p in self.parts)

    def by_name(self) -> dict[str, PartResult]:
        return {p.name: p for p in self.parts}

    def started(self) -> list[str]:
        return [p.name for p in self.parts if p.state == "started"]

    def lines(self) -> list[str]:
        return [p.line() for p in self.parts]


class StackUpError(StackError):
    def __init__(self, message: str, report: StackReport) -> None:
        super().__init__(message)
        self.report = report


class Stack:
    """The local development stack described by `settings` (ports, stack_dir, versions).

    `only` restricts it to some parts by name, e.g. ``Stack(s, only=["kafka", "redis"])``; parts
    that are not ``default`` (the Redis Cluster) are only ever started when named there.
    """

    def __init__(self, settings: Settings, *, only: Iterable[str] | None = None) -> None:
        self.settings = settings
        self.layout = StackLayout(settings.stack_dir)
        wanted = set(only) if only is not None else None
        known = {t.name for t in COMPONENT_TYPES}
        if wanted is not None and wanted - known:
            raise StackError(f"unknown stack parts {sorted(wanted - known)}; known: {sorted(known)}")
        self._all: list[Component] = [
            c for t in COMPONENT_TYPES if wanted is None or t.name in wanted for c in t.instances(settings, self.layout)
        ]
        self.components: list[Component] = [c for c in self._all if wanted is not None or c.default]
        # Parts started only when named (--only): `down` and `status` mention them only if they run.
        self._on_request: list[Component] = [c for c in self._all if c not in self.components]

    def _pid_file(self, component: Component) -> PidFile:
        return PidFile(self.layout.pid_path(component.instance))

    def _recorded(self) -> list[Component]:
        """Every part plus Kafka nodes started with another ``--brokers`` (pid files):
        `down` and `status` must see them too."""
        names = {c.instance for c in self._all}
        extra = [c for c in recorded_kafka_nodes(self.settings, self.layout) if c.instance not in names]
        return self._all + extra if any(c.name == "kafka" for c in self._all) else self._all

    # --- up ------------------------------------------------------------------------------
    def up(self) -> StackReport:
        """Start every part not already healthy; raises StackUpError (with the report) on failure."""
        report = StackReport()
        for component in self.components:
            started = time.monotonic()
            try:
                result = self._up_one(component)
            except StackError as exc:
                result = PartResult(component.instance, "failed", detail=str(exc))
            result = PartResult(
                result.name, result.state, time.monotonic() - started, result.pid, result.detail
            )
            report.parts.append(result)
            if result.state == "failed":
                raise StackUpError(f"{component.instance}: {result.detail}", report)
        return report

    def _up_one(self, component: Component) -> PartResult:
        skip = component.skip_reason()
        if skip:
            return PartResult(component.instance, "skipped", detail=skip)
        elsewhere = component.elsewhere()
        if elsewhere is not None:
            if component.healthy():
                return PartResult(component.instance, "external", detail=f"using {elsewhere} (configured): nothing started")
            raise StackError(f"{elsewhere} (configured) does not answer; nothing started in its place")
        pid_file = self._pid_file(component)
        record = pid_file.live_record()
        if record is not None:
            if self._wait_ready(component, record):
                return PartResult(component.instance, "reused", pid=record.pid)
            raise StackError(
                f"our process pid {record.pid} runs but is not healthy after {component.ready_timeout_s:.0f}s; "
                f"see {self.layout.log_path(component.instance)} (or `stack down` and retry)"
            )
        busy = [port for port in component.ports if port_is_open(port)]
        if busy:
            owners = ", ".join(describe_pid(pid) for port in busy for pid in listening_pids(port)) or "unknown owner"
            if busy[0] == component.ports[0] and component.healthy():
                return PartResult(
                    component.instance, "external",
                    detail=f"port {busy[0]} already served by {owners}, not started by this stack; reused as is",
                )  # fmt: skip
            raise StackError(
                f"port {', '.join(map(str, busy))} already in use by {owners}, which is not a {component.name} "
                f"started by this stack: stop it or choose another port setting"
            )
        note = component.prepare()
        log_path = self.layout.log_path(component.instance)
        record = spawn_detached(component.command(), log_path=log_path, cwd=component.cwd(), env=component.env())
        pid_file.write(record)
        if not self._wait_ready(component, record):
            alive = is_alive(record)
            stop_group(record, timeout_s=component.stop_timeout_s)
            pid_file.remove()
            why = "did not become healthy" if alive else "exited"
            raise StackError(f"{why} within {component.ready_timeout_s:.0f}s; last log lines of {log_path}:\n"
                             f"{tail(log_path)}")  # fmt: skip
        return PartResult(component.instance, "started", pid=record.pid, detail=note)

    def _wait_ready(self, component: Component, record: object) -> bool:
        deadline = time.monotonic() + component.ready_timeout_s
        while time.monotonic() < deadline:
            if component.started():
                return True
            if not is_alive(record):  # type: ignore[arg-type]
                return False
            time.sleep(0.2)
        return False

    # --- down ----------------------------------------------------------------------------
    def down(self, *, only: Iterable[str] | None = None) -> StackReport:
        """Stop the parts this stack started (SIGTERM, SIGKILL after a timeout), last first."""
        wanted = set(only) if only is not None else None
        report = StackReport()
        components = self._recorded()
        # A cluster's nodes stop together: the last one alone would wait for a quorum that is gone.
        for component in components:
            record = self._pid_file(component).read()
            if isinstance(component, KafkaComponent) and component.nodes > 1 and record is not None and is_alive(record):
                if wanted is None or component.name in wanted:
                    signal_group(record.pid, signal.SIGTERM)
        for component in reversed(components):
            if wanted is not None and component.name not in wanted:
                continue
            if component in self._on_request and self._pid_file(component).read() is None:
                continue  # an on-request part that was not started: nothing to report
            started = time.monotonic()
            pid_file = self._pid_file(component)
            record = pid_file.read()
            if record is None:
                state = "external" if any(port_is_open(p) for p in component.ports[:1]) else "not running"
                detail = "not started by this stack: left alone" if state == "external" else ""
                report.parts.append(PartResult(component.instance, state, time.monotonic() - started, detail=detail))
                continue
            state = stop_group(record, timeout_s=component.stop_timeout_s)
            pid_file.remove()
            report.parts.append(PartResult(component.instance, state, time.monotonic() - started, pid=record.pid))
        return report

    # --- status --------------------------------------------------------------------------
    def status(self) -> list[PartStatus]:
        statuses: list[PartStatus] = []
        for component in self._recorded():
            if component in self._on_request and self._pid_file(component).live_record() is None:
                continue  # an on-request part that is not running
            skip = component.skip_reason()
            if skip:
                statuses.append(PartStatus(component.instance, "skipped", component.ports, detail=skip))
                continue
            elsewhere = component.elsewhere()
            if elsewhere is not None:
                health: Health = "external" if component.healthy() else "down"
                statuses.append(PartStatus(component.instance, health, component.ports, detail=f"configured: {elsewhere}"))
                continue
            record = self._pid_file(component).live_record()
            healthy = component.healthy()
            if record is not None:
                health = "running" if healthy else "down"
                detail = "" if healthy else "process alive but not answering"
                statuses.append(PartStatus(component.instance, health, component.ports, record.pid, detail))
            elif healthy:
                owners = ", ".join(describe_pid(p) for p in listening_pids(component.ports[0])) or "unknown owner"
                statuses.append(PartStatus(component.instance, "external", component.ports, detail=f"served by {owners}"))
            else:
                statuses.append(PartStatus(component.instance, "down", component.ports))
        return statuses
