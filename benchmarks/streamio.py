"""Publishing at a fixed pace and collecting decisions, with the timestamps latency needs.

Latency is measured on one clock (this machine's ``time.time``): the publisher notes when it
handed each alert to the producer; the worker's producer stamps each decision record with its
CreateTime (ms) when it sends it. ``record`` latency = decision CreateTime − publish time, i.e.
until the decision is on its way to the broker; ``seen`` latency adds the broker round trip and
our consumer's fetch, i.e. what a downstream consumer observes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

PACE_TICK_S = 0.001  # the publisher wakes this often and sends whatever is due


@dataclass(slots=True)
class Published:
    sent_at: dict[str, float] = field(default_factory=dict)  # alert id -> epoch seconds at send()
    started_at: float = 0.0
    finished_at: float = 0.0
    behind_max_s: float = 0.0  # how far the publisher lagged its schedule at worst

    @property
    def achieved_rate(self) -> float:
        span = self.finished_at - self.started_at
        return len(self.sent_at) / span if span > 0 else float("nan")


async def publish_paced(
    bootstrap: str,
    topic: str,
    records: Sequence[tuple[str, bytes, bytes]],
    times: Sequence[float],
    progress: Callable[[int], None] | None = None,
) -> Published:
    """Send ``(alert id, key, value)`` records at their scheduled offsets (seconds from start)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1, acks="all")
    await producer.start()
    out = Published()
    pending: list[asyncio.Future[object]] = []
    try:
        start = time.monotonic()
        out.started_at = time.time()
        i = 0
        n = len(records)
        while i < n:
            now = time.monotonic() - start
            while i < n and times[i] <= now:
                alert_id, key, value = records[i]
                out.sent_at[alert_id] = time.time()
                pending.append(await producer.send(topic, value, key=key))
                i += 1
            if i < n:
                out.behind_max_s = max(out.behind_max_s, now - times[i - 1] if i else 0.0)
                if len(pending) > 10_000:
                    await asyncio.gather(*pending)
                    pending.clear()
                if progress is not None:
                    progress(i)
                await asyncio.sleep(max(0.0, min(PACE_TICK_S, times[i] - (time.monotonic() - start))))
        await asyncio.gather(*pending)
        out.finished_at = time.time()
        if progress is not None:
            progress(n)
    finally:
        await producer.stop()
    return out


@dataclass(slots=True)
class Collected:
    # alert id -> (decision CreateTime epoch s, epoch s when our consumer got it, cache tier)
    decisions: dict[str, tuple[float, float, str]] = field(default_factory=dict)
    duplicates: int = 0


class DecisionCollector:
    """Reads the decisions topic from the start in the background until told to stop."""

    def __init__(self, bootstrap: str, topic: str, isolation_level: str = "read_uncommitted") -> None:
        self.consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
            enable_auto_commit=False, fetch_max_wait_ms=5, isolation_level=isolation_level,
        )
        self.collected = Collected()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        await self.consumer.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        decisions = self.collected.decisions
        while not self._stop.is_set():
            batch = await self.consumer.getmany(timeout_ms=50)
            seen = time.time()
            for records in batch.values():
                for r in records:
                    d = orjson.loads(r.value)
                    if d["alert_id"] in decisions:
                        self.collected.duplicates += 1
                        continue
                    decisions[d["alert_id"]] = (r.timestamp / 1000.0, seen, d["cache_tier"])

    async def wait_for(self, ids: set[str], timeout_s: float, progress: Callable[[int], None] | None = None) -> bool:
        deadline = time.monotonic() + timeout_s
        decisions = self.collected.decisions
        while time.monotonic() < deadline:
            if self._task is not None and self._task.done():
                self._task.result()  # surface a consumer failure
            got = len(ids & decisions.keys())
            if progress is not None:
                progress(got)
            if got >= len(ids):
                return True
            await asyncio.sleep(0.05)
        return False

    async def stop(self) -> Collected:
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5)
            except TimeoutError:
                self._task.cancel()
        await self.consumer.stop()
        return self.collected
