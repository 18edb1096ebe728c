"""Real subprocesses for e2e tests and drills: workers and proposition services."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from stream_engine.settings import Settings

WORKER_READY = re.compile(r'"msg":\s*"worker \S+ ready"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process in its own process group, its output in a log file."""

    def __init__(self, name: str, args: list[str], settings: Settings, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        env = {**os.environ, **settings.to_env(), **(env or {})}
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "stream_engine", *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.alive:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        self._log.close()
        return self.popen.returncode


def wait_until(predicate, timeout: float, what: str, proc: Proc | None = None, interval: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        if proc is not None and not proc.alive:
            raise AssertionError(f"{proc.name} exited ({proc.popen.returncode}) while waiting for {what}:\n{proc.log()[-4000:]}")
        time.sleep(interval)
    tail = f"\n{proc.name} log:\n{proc.log()[-4000:]}" if proc else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{tail}")


def admin_headers(settings: Settings) -> dict[str, str]:
    """Headers for the proposition service's rule/admin/stats routes (the service started by
    ``start_propositions`` runs with ``settings.admin_token``)."""
    return {"Authorization": f"Bearer {settings.admin_token.get_secret_value()}"}


def start_propositions(settings: Settings, log_dir: Path, *extra: str) -> Proc:
    """A reference proposition service at ``settings.propositions_url``. Its admin token is
    ``settings.admin_token``, which must be set: a test never lets the service fall back to (or
    write) the token file of the real stack directory."""
    assert settings.admin_token.get_secret_value(), "give the test's proposition service an admin_token"
    port = int(settings.propositions_url.rsplit(":", 1)[1])
    proc = Proc(f"propositions-{port}", ["propositions", "serve", "--port", str(port), *extra], settings, log_dir)

    def healthy() -> bool:
        try:
            return httpx.get(f"{settings.propositions_url}/healthz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, 30, "proposition service /healthz", proc)
    return proc


def start_worker(settings: Settings, log_dir: Path, name: str = "worker", env: dict[str, str] | None = None) -> Proc:
    """A worker on ``settings.engine``, once it logged "worker … ready" (checked: on that engine).
    ``env``: extra environment, e.g. ``harness.faults.fault_env(...)``."""
    proc = Proc(name, ["worker"], settings, log_dir, env)
    # Our own line, not faust's earlier "Worker ready": started, sink open, partitions assigned.
    wait_until(lambda: WORKER_READY.search(proc.log()) is not None, 60, f"{name} ready", proc)
    engine = f"starting a worker on the {settings.engine} engine"
    assert engine in proc.log(), f"{name} did not log {engine!r}:\n{proc.log()[-3000:]}"
    return proc


API_URL = re.compile(r"api listening on (http://[0-9.]+:\d+)")


def api_url(proc: Proc) -> str:
    """The worker's API base URL, from its "api listening on …" log line (``api_port=0`` picks one)."""
    return str(wait_until(lambda: API_URL.search(proc.log()), 30, "api listening", proc).group(1))
