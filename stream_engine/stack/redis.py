"""Redis from Debian's `redis-server`, configured under the stack directory."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from stream_engine.stack.component import Component, StackError

REDIS_PACKAGE = "redis-server"


def ensure_redis_server() -> str:
    """Path of `redis-server`; installs Debian's package when we are root with apt-get."""
    path = shutil.which("redis-server")
    if path:
        return path
    apt = shutil.which("apt-get")
    if os.geteuid() != 0 or apt is None:
        raise StackError(f"`redis-server` not found on PATH: install it with `apt-get install {REDIS_PACKAGE}`")
    for args in ([apt, "update"], [apt, "install", "-y", REDIS_PACKAGE]):
        result = subprocess.run(
            args, capture_output=True, text=True, check=False, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        )
        if result.returncode != 0:
            raise StackError(f"`{' '.join(args)}` failed:\n{(result.stdout + result.stderr).strip()[-2000:]}")
    path = shutil.which("redis-server")
    if path is None:
        raise StackError(f"`apt-get install {REDIS_PACKAGE}` ran but `redis-server` is still not on PATH")
    return path


class RedisComponent(Component):
    name = "redis"
    ready_timeout_s = 20.0
    stop_timeout_s = 10.0

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.settings.redis_port,)

    @property
    def home(self) -> Path:
        return self.layout.root / "redis"

    def prepare(self) -> str:
        ensure_redis_server()
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        # It is a cache: no RDB snapshots or AOF (no fork pauses, nothing to recover).
        # volatile-ttl: only entries with a TTL (answers, tombstones) are ever evicted, never the
        # invalidation floors, which have none (stream_engine/cache/redis_tier.py).
        (self.home / "redis.conf").write_text(
            "# Rendered by `stream-engine stack up` on every start; edits are lost.\n"
            f"bind 127.0.0.1\nport {self.settings.redis_port}\n"
            f"dir {(self.home / 'data').resolve()}\n"
            'save ""\nappendonly no\ndaemonize no\nlogfile ""\n'
            "maxmemory 256mb\nmaxmemory-policy volatile-ttl\n"
        )
        return ""

    def command(self) -> list[str]:
        return [shutil.which("redis-server") or "redis-server", str(self.home / "redis.conf")]

    def healthy(self) -> bool:
        return redis_answers("127.0.0.1", self.settings.redis_port)


def redis_answers(host: str, port: int, timeout_s: float = 1.0) -> bool:
    import redis

    client = redis.Redis(host=host, port=port, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()
