"""A private ClickHouse endpoint for a test: `stream-engine clickhouse serve` on its own directory and port.

Most tests share the stack's endpoint (one database each); these are for tests that stop, kill
or restart the server, or need an empty one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.procs import free_port
from stream_engine.stack import clickhouse_answers


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log_path: Path
    user: str = "default"
    password: str = ""
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        login = f"{self.user}:{self.password}@" if self.password else ""
        return f"http://{login}{self.host}:{self.port}"

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: an abrupt outage (the directory lock goes with the process)."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, as `stack down` does; returns the exit status."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode


def start_server(
    data_dir: Path, *, port: int | None = None, user: str = "default", password: str = "", timeout_s: float = 60.0
) -> RunningServer:
    port = port or free_port()
    log_path = data_dir.parent / f"clickhouse-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    url = f"http://{user}:{password}@127.0.0.1:{port}" if password else ""
    env = {**os.environ, "STREAM_ENGINE_CLICKHOUSE_URL": url, "STREAM_ENGINE_CLICKHOUSE_PORT": str(port)}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "stream_engine", "clickhouse", "serve", "--path", str(data_dir)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    server = RunningServer(process, port, data_dir, log_path, user, password)
    deadline = time.monotonic() + timeout_s
    while not clickhouse_answers(server.base):
        if process.poll() is not None:
            raise RuntimeError(f"clickhouse serve exited with {process.returncode}:\n{server.log()[-3000:]}")
        if time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"clickhouse serve did not answer within {timeout_s}s:\n{server.log()[-3000:]}")
        time.sleep(0.1)
    return server
