"""What the stack needs to know about one part (Kafka, Redis, the proposition service …).

A part is a long-running local process identified by the port(s) it serves. The generic
start/reuse/stop logic lives in `stack.core`; a part only says how to prepare, run and probe it.
"""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from stream_engine.settings import Settings


class StackError(RuntimeError):
    """A part cannot be prepared or started; the message says what to do about it."""


@dataclass(frozen=True, slots=True)
class StackLayout:
    """Where the stack keeps its files: everything under `settings.stack_dir`."""

    root: Path

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def pid_path(self, part: str) -> Path:
        return self.run_dir / f"{part}.pid"

    def log_path(self, part: str) -> Path:
        return self.logs_dir / f"{part}.log"


class Component(ABC):
    name: ClassVar[str]
    default: ClassVar[bool] = True  # started by a plain `stack up`; False: only when named (--only)
    ready_timeout_s: ClassVar[float] = 60.0
    stop_timeout_s: ClassVar[float] = 15.0

    def __init__(self, settings: Settings, layout: StackLayout) -> None:
        self.settings = settings
        self.layout = layout

    @classmethod
    def instances(cls, settings: Settings, layout: StackLayout) -> list[Component]:
        """The processes of this part (one, unless a part runs several: Kafka with ``--brokers``)."""
        return [cls(settings, layout)]

    @property
    def instance(self) -> str:
        """This process's name: its pid file, log file and report line."""
        return self.name

    @property
    @abstractmethod
    def ports(self) -> tuple[int, ...]:
        """Ports this part listens on; the first is the one clients use."""

    def skip_reason(self) -> str | None:
        """Why this part cannot be run in this checkout (None = it can)."""
        return None

    def elsewhere(self) -> str | None:
        """A service the settings name in place of this part (then nothing is started), else None."""
        return None

    def prepare(self) -> str:
        """Install / configure / initialise before starting; returns a short note for the report."""
        return ""

    @abstractmethod
    def command(self) -> list[str]: ...

    def cwd(self) -> Path | None:
        return None

    def env(self) -> dict[str, str] | None:
        return None

    @abstractmethod
    def healthy(self) -> bool:
        """A real protocol-level request succeeds (not merely an open port)."""

    def started(self) -> bool:
        """Far enough for `up` to go on to the next process (a node that needs its peers to be
        healthy cannot wait for health before they start)."""
        return self.healthy()


def require_executable(name: str, install_hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(f"`{name}` not found on PATH: install it with `{install_hint}`")
    return path
