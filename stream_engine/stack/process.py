"""Detached child processes with pid files: start, identify, stop (whole process group).

A pid file stores the pid *and* the kernel start time of the process, so a recycled pid is never
mistaken for ours. Children run in their own session (process group), so stopping kills
everything they spawned too and nothing is left orphaned.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class PidRecord:
    pid: int
    start_time: int  # field 22 of /proc/<pid>/stat: ticks since boot, unique per pid lifetime
    command: list[str]


def process_start_time(pid: int) -> int | None:
    """Kernel start time of a live (non-zombie) process, else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces/parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    state = fields[0]
    if state in ("Z", "X"):
        _reap(pid)
        return None
    return int(fields[19])


def _reap(pid: int) -> None:
    """Collect a zombie if it is our own child (when `up` and `down` run in one process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


class PidFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> PidRecord | None:
        try:
            data = json.loads(self.path.read_text())
            return PidRecord(pid=int(data["pid"]), start_time=int(data["start_time"]), command=list(data["command"]))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def write(self, record: PidRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": record.pid, "start_time": record.start_time, "command": record.command}))
        tmp.replace(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def live_record(self) -> PidRecord | None:
        """The recorded process if it is still the same live process; a stale file is removed."""
        record = self.read()
        if record is None:
            return None
        if process_start_time(record.pid) != record.start_time:
            self.remove()
            return None
        return record


def spawn_detached(
    command: Sequence[str], *, log_path: Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> PidRecord:
    """Start `command` in a new session with stdout+stderr appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(command)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    # The Popen object is dropped on purpose: the child outlives this process (`stack up` exits).
    # Python's subprocess bookkeeping reaps it if it dies while we are still alive.
    start_time = process_start_time(proc.pid)
    return PidRecord(pid=proc.pid, start_time=start_time if start_time is not None else -1, command=list(command))


def is_alive(record: PidRecord) -> bool:
    return process_start_time(record.pid) == record.start_time


def group_members(pgid: int) -> list[int]:
    """Live pids whose process group is `pgid` (the leader may already be gone)."""
    members: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def stop_group(record: PidRecord, *, timeout_s: float) -> str:
    """SIGTERM the process group of `record`, SIGKILL what is left after `timeout_s`.

    Returns "stopped", "killed" (needed SIGKILL) or "not running".
    """
    if not is_alive(record):
        leftovers = group_members(record.pid)
        if not leftovers:
            return "not running"
    pgid = record.pid  # start_new_session=True: the child leads its own group
    signal_group(pgid, signal.SIGTERM)
    if wait_until(lambda: not group_members(pgid) and not is_alive(record), timeout_s=timeout_s, interval_s=0.1):
        return "stopped"
    signal_group(pgid, signal.SIGKILL)
    wait_until(lambda: not group_members(pgid) and not is_alive(record), timeout_s=5.0, interval_s=0.05)
    return "killed"


def signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def wait_until(predicate: Callable[[], bool], *, timeout_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def port_is_open(port: int, host: str = "127.0.0.1", timeout_s: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def listening_pids(port: int) -> list[int]:
    """Pids with a socket listening on TCP `port` (IPv4 or IPv6), from /proc; best effort."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, state, inode = parts[1], parts[3], parts[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(inode)
    if not inodes:
        return []
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                pids.append(int(entry.name))
                break
    return pids


def describe_pid(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return f"pid {pid}"
    return f"pid {pid} ({cmdline[:120]})"


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
