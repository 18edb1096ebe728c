"""A Kafka of a test's own (one node or a KRaft cluster) on free ports and a private stack dir,
reusing the project's jar cache (no download), so a drill may crash its brokers without touching
the shared dev broker.

    kafka = PrivateKafka(settings, tmp_path / "stack", brokers=3)
    kafka.up()                     # settings_for(kafka) points at it
    kafka.kill9(kafka.leader(topic, 0))
    kafka.up()                     # restarts what is down
    kafka.down()
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

from stream_engine.settings import Settings
from stream_engine.stack import Stack
from stream_engine.stack.kafka import KafkaComponent, libs_complete, libs_dir
from stream_engine.stack.process import PidFile, is_alive, port_is_open, wait_until
from stream_engine.stack.sync import run_coroutine


def free_port_block(n: int) -> int:
    """A base port with ``base … base + n - 1`` all free (the stack's node i uses base + 2i, + 2i + 1),
    below Linux's ephemeral range (32768+), where client sockets could take one meanwhile."""
    while True:
        base = random.randrange(12000, 32000 - n, 2)
        if not any(port_is_open(p) for p in range(base, base + n)):
            return base


class PrivateKafka:
    def __init__(self, base: Settings, stack_dir: Path, brokers: int = 1) -> None:
        shared = libs_dir(base.stack_dir, base.kafka_version)
        if libs_complete(shared, base.kafka_version):  # reuse the jar cache: no Maven run, no network
            mine = libs_dir(stack_dir, base.kafka_version)
            mine.parent.mkdir(parents=True, exist_ok=True)
            mine.symlink_to(shared.resolve(), target_is_directory=True)
        port = free_port_block(2 * brokers)
        self.brokers = brokers
        self.bootstrap = ",".join(f"127.0.0.1:{port + 2 * n}" for n in range(brokers))
        self.settings = base.with_overrides(
            stack_dir=stack_dir,
            kafka_port=port,
            kafka_controller_port=port + 1,
            kafka_brokers=brokers,
            kafka_heap="256m",
            kafka_bootstrap=self.bootstrap,
        )
        self.stack = Stack(self.settings, only=["kafka"])
        self.nodes: list[KafkaComponent] = [c for c in self.stack.components if isinstance(c, KafkaComponent)]

    def up(self) -> list[str]:
        """Start what is not running; the states (``started`` / ``reused``) per node."""
        return [p.state for p in self.stack.up().parts]

    def down(self) -> None:
        self.stack.down()

    def kill9(self, node_id: int) -> None:
        """``kill -9`` the node (KRaft ``node.id``, 1-based) and wait until it is gone."""
        node = self.nodes[node_id - 1]
        record = PidFile(self.stack.layout.pid_path(node.instance)).read()
        assert record is not None and is_alive(record), f"{node.instance} is not running"
        os.killpg(record.pid, signal.SIGKILL)
        assert wait_until(lambda: not is_alive(record), timeout_s=10), f"{node.instance} survived kill -9"

    def leader(self, topic: str, partition: int) -> int:
        """The node id leading ``topic``'s ``partition`` (-1: none, or the cluster did not answer:
        right after a kill, a request may go to the dead node)."""
        from aiokafka.errors import KafkaError

        try:
            return run_coroutine(lambda: self._leader(topic, partition), timeout_s=30)
        except (KafkaError, OSError, TimeoutError):
            return -1

    async def _leader(self, topic: str, partition: int) -> int:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10000)
        await admin.start()
        try:
            (described,) = await admin.describe_topics([topic])
        finally:
            await admin.close()
        return next(int(p["leader"]) for p in described["partitions"] if p["partition"] == partition)
