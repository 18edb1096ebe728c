"""A local 3-master Redis Cluster from Debian's ``redis-server`` and ``redis-cli``.

``LocalRedisCluster`` runs the nodes (``redis-server --cluster-enabled yes`` on three ports,
no replicas, no persistence) and joins them with ``redis-cli --cluster create``; a test can kill
and restart one node (it rejoins with its slots, empty, like a crashed cache node).

As a stack part (``stream-engine stack up --only redis-cluster``; not started by a plain
``stack up``, the test fixtures start it on demand) the nodes run under a small supervisor,
:func:`main` (``--ports 7000,7001,7002 --dir …``), so that the stack
sees one process and stops the three with it. Its URL: ``redis+cluster://127.0.0.1:7000,…``.

Node settings: ``cluster-require-full-coverage no`` (a node down takes only its slots out),
``cluster-node-timeout 2000`` and ``maxmemory-policy volatile-ttl`` (see
stream_engine.cache.redis_tier: only entries with a TTL are ever evicted).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from stream_engine.stack.component import Component, StackError
from stream_engine.stack.redis import ensure_redis_server

NODES = 3


def node_config(port: int, directory: Path, maxmemory: str = "128mb") -> str:
    return (
        "# Rendered by stream_engine.stack.redis_cluster on every start; edits are lost.\n"
        f"bind 127.0.0.1\nport {port}\ndir {directory.resolve()}\n"
        f"cluster-enabled yes\ncluster-config-file nodes-{port}.conf\ncluster-node-timeout 2000\n"
        "cluster-require-full-coverage no\n"
        'save ""\nappendonly no\ndaemonize no\nlogfile ""\n'
        f"maxmemory {maxmemory}\nmaxmemory-policy volatile-ttl\n"
    )


def cluster_url(ports: list[int]) -> str:
    return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)


def cluster_ok(port: int, timeout_s: float = 1.0) -> bool:
    """The node at ``port`` answers and says the cluster is ``ok`` (all slots served)."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        info = client.execute_command("CLUSTER INFO")  # parsed into a dict by redis-py
        if isinstance(info, dict):
            return info.get("cluster_state") in ("ok", b"ok")
        return b"cluster_state:ok" in (info if isinstance(info, bytes) else str(info).encode())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def node_answers(port: int) -> bool:
    from stream_engine.stack.redis import redis_answers

    return redis_answers("127.0.0.1", port, timeout_s=0.5)


class LocalRedisCluster:
    """Three (``len(ports)``) master nodes on loopback, their files under ``directory``."""

    def __init__(self, ports: list[int], directory: Path) -> None:
        self.ports = list(ports)
        self.directory = directory
        self.url = cluster_url(self.ports)
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    def _node_dir(self, port: int) -> Path:
        return self.directory / str(port)

    def start_node(self, port: int, timeout_s: float = 15.0) -> None:
        home = self._node_dir(port)
        home.mkdir(parents=True, exist_ok=True)
        (home / "redis.conf").write_text(node_config(port, home))
        with open(home / "redis.log", "ab") as log:
            self._procs[port] = subprocess.Popen(
                [shutil.which("redis-server") or "redis-server", str(home / "redis.conf")], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        while not node_answers(port):
            if self._procs[port].poll() is not None or time.monotonic() > deadline:
                raise StackError(f"redis cluster node {port} did not start:\n{(home / 'redis.log').read_text()[-2000:]}")
            time.sleep(0.05)

    def start(self, timeout_s: float = 30.0) -> None:
        """Fresh nodes (old node files removed: the data is not kept anyway), joined into a cluster."""
        ensure_redis_server()
        for port in self.ports:
            shutil.rmtree(self._node_dir(port), ignore_errors=True)
            self.start_node(port)
        create = subprocess.run(
            [shutil.which("redis-cli") or "redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if create.returncode != 0:
            self.stop()
            raise StackError(f"redis-cli --cluster create failed:\n{(create.stdout + create.stderr)[-2000:]}")
        self.wait_ok(timeout_s)

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(cluster_ok(p) for p in self.ports):
            if time.monotonic() > deadline:
                raise StackError(f"redis cluster on {self.ports} not ok after {timeout_s:.0f}s")
            time.sleep(0.1)

    def kill(self, port: int) -> None:
        """SIGKILL one node: its slots are down until :meth:`restart`."""
        proc = self._procs.pop(port)
        proc.kill()
        proc.wait(10)

    def restart(self, port: int) -> None:
        """Start a killed node again: it rejoins with its slots (nodes file kept), empty."""
        self.start_node(port)
        self.wait_ok()

    def stop(self) -> None:
        for proc in self._procs.values():
            proc.terminate()
        for proc in self._procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self._procs.clear()


class RedisClusterComponent(Component):
    name = "redis-cluster"
    default = False  # only on request (`--only redis-cluster`) or by the test fixtures
    ready_timeout_s = 60.0
    stop_timeout_s = 15.0

    @property
    def ports(self) -> tuple[int, ...]:
        first = self.settings.redis_cluster_port
        return tuple(range(first, first + NODES))

    @property
    def url(self) -> str:
        return cluster_url(list(self.ports))

    def prepare(self) -> str:
        ensure_redis_server()
        if shutil.which("redis-cli") is None:
            raise StackError("`redis-cli` not found on PATH: install it with `apt-get install redis-tools`")
        return self.url

    def command(self) -> list[str]:
        return [
            sys.executable, "-c", "import sys; from stream_engine.stack.redis_cluster import main; sys.exit(main())",
            "--ports", ",".join(map(str, self.ports)), "--dir", str(self.layout.root / "redis-cluster"),
        ]  # fmt: skip

    def healthy(self) -> bool:
        return all(cluster_ok(port) for port in self.ports)


def main(argv: list[str] | None = None) -> int:
    """Supervisor: run the nodes until SIGTERM/SIGINT, then stop them."""
    parser = argparse.ArgumentParser(prog="python -m stream_engine.stack.redis_cluster")
    parser.add_argument("--ports", required=True, help="comma-separated node ports")
    parser.add_argument("--dir", required=True, type=Path)
    args = parser.parse_args(argv)
    cluster = LocalRedisCluster([int(p) for p in args.ports.split(",")], args.dir)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        cluster.start()
        print(f"redis cluster ready: {cluster.url}", flush=True)
        while not stopping:
            time.sleep(0.2)
    except StackError as exc:
        print(str(exc), file=sys.stderr, flush=True)
        return 1
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
