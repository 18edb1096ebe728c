"""Shared pieces of the reliability drills (tests/reliability).

* :class:`Publisher` publishes alerts with a plain aiokafka producer (paced if asked) and remembers
  where each id landed (partition, offset): the at-least-once window is defined by offsets.
* :class:`Tail` reads a topic from the beginning in the background while a drill breaks things.
* :func:`account` turns published ids + decisions + ClickHouse rows into one :class:`DrillRow`;
  :func:`record` keeps it for the session-end table (tests/reliability/conftest.py prints it).
* :func:`clickhouse_rows` reads a stopped worker's embedded chDB directory in a subprocess
  (a chDB directory is locked by one process, and one process can only ever open one path).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream_engine.keys import message_key
from stream_engine.settings import Settings

if TYPE_CHECKING:
    from stream_engine.stack.redis_cluster import LocalRedisCluster

RESULTS_ENV = "STREAM_ENGINE_DRILL_RESULTS"
# Drills run at scale 1 in CI (`./run test`); `STREAM_ENGINE_DRILL_SCALE=4` runs them full size
# (more alerts, more rounds; see the README).
SCALE_ENV = "STREAM_ENGINE_DRILL_SCALE"
Position = tuple[int, int]  # (partition, offset)


def drill_scale() -> float:
    return float(os.environ.get(SCALE_ENV) or 1)


def scaled(n: int, minimum: int = 1) -> int:
    """``n`` (the CI size) times the drill scale."""
    return max(minimum, round(n * drill_scale()))


# --- accounting ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DrillRow:
    drill: str
    engine: str
    published: int
    decisions: int
    missing: int
    duplicates: int
    clickhouse_rows: int | None  # rows in proposition_log FINAL (None: the drill has no sink check)
    recover_s: float | None  # from the fault's end to the first sign of recovery

    def cells(self) -> list[str]:
        ch = "-" if self.clickhouse_rows is None else str(self.clickhouse_rows)
        rec = "-" if self.recover_s is None else f"{self.recover_s:.1f}"
        return [self.drill, self.engine, str(self.published), str(self.decisions), str(self.missing), str(self.duplicates), ch, rec]


TABLE_HEADER = ["drill", "engine", "published", "decisions", "missing", "duplicates", "ClickHouse rows", "recover s"]


def account(
    drill: str,
    published: Iterable[str],
    decisions: Sequence[dict[str, Any]],
    clickhouse_rows: int | None = None,
    recover_s: float | None = None,
    *,
    engine: str,
) -> DrillRow:
    """Decisions of ids outside ``published`` are ignored (topics are per test, so there are none)."""
    wanted = set(published)
    counts = Counter(d["alert_id"] for d in decisions if d["alert_id"] in wanted)
    return DrillRow(
        drill=drill,
        engine=engine,
        published=len(wanted),
        decisions=sum(counts.values()),
        missing=len(wanted - counts.keys()),
        duplicates=sum(counts.values()) - len(counts),
        clickhouse_rows=clickhouse_rows,
        recover_s=recover_s,
    )


def results_dir() -> Path:
    path = Path(os.environ.get(RESULTS_ENV) or Path(tempfile.gettempdir()) / "stream-engine-drills")
    path.mkdir(parents=True, exist_ok=True)
    return path


def record(row: DrillRow) -> DrillRow:
    (results_dir() / f"{row.drill} [{row.engine}].json").write_text(json.dumps(asdict(row)))
    return row


def load_rows(directory: Path) -> list[DrillRow]:
    return [DrillRow(**json.loads(p.read_text())) for p in sorted(directory.glob("*.json"))]


def format_table(rows: Sequence[DrillRow]) -> str:
    lines = [TABLE_HEADER, *(r.cells() for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(TABLE_HEADER))]
    out = [" | ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in lines]
    out.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(out)


# --- Kafka ------------------------------------------------------------------------------------


class Publisher:
    """One producer for a drill; ``positions`` maps each published alert id to where it landed."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.positions: dict[str, Position] = {}
        self.sent_at: dict[str, float] = {}  # time.time() just before the alert went to the producer
        self.sent = 0
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")

    async def __aenter__(self) -> Publisher:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(
        self, alerts: Sequence[dict[str, Any]], per_second: float | None = None, until: asyncio.Event | None = None
    ) -> None:
        """Publish and wait for every ack. Paced in small chunks when ``per_second`` is given,
        so a drill can break something while the stream is still flowing; stops early once
        ``until`` is set (``positions`` has what was published)."""
        chunk = max(1, int(per_second // 20)) if per_second else len(alerts) or 1
        started = time.monotonic()
        for start in range(0, len(alerts), chunk):
            if until is not None and until.is_set():
                return
            part = alerts[start : start + chunk]
            at = time.time()
            self.sent_at.update((a["id"], at) for a in part)
            futures = [await self._producer.send(self.topic, orjson.dumps(a), key=message_key(a)) for a in part]
            for alert, meta in zip(part, await asyncio.gather(*futures)):
                self.positions[alert["id"]] = (meta.partition, meta.offset)
            self.sent += len(part)
            if per_second:
                ahead = started + (start + len(part)) / per_second - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)

    async def send_raw(self, payloads: Sequence[bytes]) -> list[Position]:
        futures = [await self._producer.send(self.topic, p) for p in payloads]
        return [(m.partition, m.offset) for m in await asyncio.gather(*futures)]


class Tail:
    """Everything on ``topic`` from the beginning, read by a background task."""

    def __init__(
        self, bootstrap: str, topic: str, decode: Callable[[bytes], Any] = orjson.loads, isolation_level: str = "read_uncommitted"
    ) -> None:
        self.records: list[Any] = []
        self.arrivals: list[float] = []  # time.monotonic() per record, for recovery times
        self._decode = decode
        self._consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest", enable_auto_commit=False,
            isolation_level=isolation_level,
        )  # fmt: skip
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Tail:
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        await self._consumer.stop()

    async def _run(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=200)
            now = time.monotonic()
            for messages in batch.values():
                for m in messages:
                    self.records.append(self._decode(m.value))
                    self.arrivals.append(now)

    async def wait_for(self, predicate: Callable[[list[Any]], bool], timeout: float, what: str) -> list[Any]:
        deadline = time.monotonic() + timeout
        while not predicate(self.records):
            if self._task is not None and self._task.done():
                self._task.result()  # the consumer died: raise its error
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what} ({len(self.records)} records)")
            await asyncio.sleep(0.1)
        return self.records

    async def wait_ids(self, ids: Iterable[str], timeout: float, what: str = "decisions") -> list[Any]:
        wanted = set(ids)
        seen: set[str] = set()
        scanned = 0

        def done(records: list[Any]) -> bool:
            nonlocal scanned
            seen.update(r["alert_id"] for r in records[scanned:] if r["alert_id"] in wanted)
            scanned = len(records)
            return seen >= wanted

        try:
            return await self.wait_for(done, timeout, f"{what} for {len(wanted)} ids")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {len(wanted - seen)} ids still missing") from None

    def decided(self) -> set[str]:
        return {r["alert_id"] for r in self.records}


# --- ClickHouse ---------------------------------------------------------------------------------

_QUERY = """
import sys, orjson
from stream_engine.sinks.clickhouse.client import connect
client = connect(sys.argv[1], sys.argv[2])
rows = client.query(sys.argv[3], parameters=orjson.loads(sys.argv[4])).result_rows
print(orjson.dumps([list(r) for r in rows], default=str).decode())
"""


def clickhouse_query(settings: Settings, sql: str, parameters: dict[str, Any] | None = None, timeout: float = 120.0) -> list[list[Any]]:
    """Rows of ``sql`` on the settings' ClickHouse, from another process (so a ``chdb://`` URL works too
    once its worker stopped: the engine's directory lock is held while it runs)."""
    result = subprocess.run(
        [sys.executable, "-c", _QUERY, settings.effective_clickhouse_url, settings.clickhouse_database, sql,
         json.dumps(parameters or {})],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise AssertionError(f"{sql!r} on {settings.effective_clickhouse_url} failed:\n{result.stderr[-3000:]}")
    rows: list[list[Any]] = json.loads(result.stdout.strip().splitlines()[-1])
    return rows


@dataclass(frozen=True, slots=True)
class LogCount:
    rows: int  # rows of proposition_log FINAL (duplicates collapsed)
    ids: frozenset[str]


def clickhouse_rows(settings: Settings) -> LogCount:
    ids = [r[0] for r in clickhouse_query(settings, "SELECT alert_id FROM proposition_log FINAL")]
    return LogCount(len(ids), frozenset(ids))


@dataclass(frozen=True, slots=True)
class RowCount:
    """One table read WITHOUT FINAL: every row ClickHouse holds (a duplicate not merged away counts)."""

    table: str
    rows: int
    ids: int  # uniqExact(alert_id)

    @property
    def duplicates(self) -> int:  # count() - uniqExact(alert_id)
        return self.rows - self.ids


def rows_without_final(settings: Settings, table: str) -> RowCount:
    """``count()`` and ``uniqExact(alert_id)`` of ``table`` (the drill's database holds only the drill's rows)."""
    [[rows, ids]] = clickhouse_query(settings, f"SELECT count(), uniqExact(alert_id) FROM {table}")
    return RowCount(table, int(rows), int(ids))


def audit_rows(settings: Settings) -> Counter[str]:
    """``decision_audit`` rows per alert id, WITHOUT FINAL: every block the sink stored."""
    rows = clickhouse_query(settings, "SELECT alert_id, count() FROM decision_audit GROUP BY alert_id")
    return Counter({str(r[0]): int(r[1]) for r in rows})


def assert_no_row_beyond_the_topics_copies(audit: Counter[str], decisions: Sequence[dict[str, Any]]) -> None:
    """An alert has no more ``decision_audit`` rows than the decisions topic has copies of it: a
    redelivery may add a row (at least once), a retried or replayed insert block never does."""
    on_topic = Counter(d["alert_id"] for d in decisions)
    extra = {i: (n, on_topic[i]) for i, n in audit.items() if n > on_topic[i]}
    assert not extra, f"{len(extra)} alerts have more ClickHouse rows than decisions (rows, decisions): {dict(list(extra.items())[:5])}"


def journal_segments(settings: Settings) -> int:
    """Segments waiting in the worker's journal, in any slot (and the pre-slot flat layout)."""
    directory = settings.data_dir / "journal"
    return len(list(directory.glob("seg-*.jsonl")) + list(directory.glob("slot-*/seg-*.jsonl"))) if directory.exists() else 0


# --- a Redis of the drill's own ------------------------------------------------------------------


class PrivateRedis:
    """``redis-server`` on its own port without persistence, so a drill may crash and restart it
    (coming back empty, like a crashed cache) without touching the shared dev Redis."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        import redis

        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url, socket_timeout=0.5)
        while True:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    raise AssertionError(f"redis-server on {self.port} did not start: {self.log_path.read_text()[-2000:]}")
                time.sleep(0.05)
            finally:
                client.close()

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)

    def keys(self, pattern: str) -> list[str]:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=0.5)
        try:
            return [k.decode() for k in client.scan_iter(match=pattern, count=500)]
        finally:
            client.close()

    def count(self, pattern: str) -> int:
        return len(self.keys(pattern))


def interrupted_work(first_run: Iterable[str], positions: dict[str, Position], committed: dict[int, int],
                     partitions: Iterable[int] | None = None) -> set[str]:
    """Ids decided before a kill at or beyond their partition's committed offset (read after the
    kill): the dead worker's uncommitted work, which its partitions' next owner must redo."""
    mine = None if partitions is None else set(partitions)
    return {
        alert_id
        for alert_id in first_run
        if (mine is None or positions[alert_id][0] in mine) and positions[alert_id][1] >= committed.get(positions[alert_id][0], 0)
    }


def assert_crash_redelivery_is_the_uncommitted_suffix(
    decisions: list[dict[str, Any]],
    first_run: list[dict[str, Any]],
    positions: dict[str, Position],
    committed: dict[int, int],
    partitions: Iterable[int] | None = None,
) -> set[str]:
    """After one worker crash, with ``committed`` the group's offsets read right after the kill and
    ``partitions`` those of the dead worker (default: all): the kill interrupted uncommitted work
    (decisions beyond the committed offsets), every alert of it is decided again, and nothing else
    is (a duplicate below a committed offset would mean a commit passed a batch that was not done,
    or a restart that skipped back). Returns the interrupted ids."""
    counts = Counter(d["alert_id"] for d in decisions)
    interrupted = interrupted_work({d["alert_id"] for d in first_run}, positions, committed, partitions)
    assert interrupted, f"the kill interrupted no uncommitted work (committed offsets {committed})"
    assert max(counts.values()) <= 2, "one crash re-delivers an alert at most once"
    duplicated = {i for i, n in counts.items() if n > 1}
    assert interrupted <= duplicated, f"{len(interrupted - duplicated)} uncommitted alerts were not redone"
    assert duplicated <= interrupted, f"{len(duplicated - interrupted)} alerts below a committed offset were decided again"
    return interrupted


def free_cluster_ports(n: int = 3, low: int = 20000, high: int = 30000) -> list[int]:
    """``n`` ports that are free, and so is each one's cluster bus port (+10000)."""
    import random
    import socket

    ports: list[int] = []
    for port in random.sample(range(low, high), 500):
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        ports.append(port)
        if len(ports) == n:
            return ports
    raise AssertionError("no free ports for a private Redis Cluster")


def private_redis_cluster(directory: Path) -> LocalRedisCluster:
    """A 3-master cluster of the drill's own (it may kill nodes without touching the shared one)."""
    from stream_engine.stack.redis_cluster import LocalRedisCluster

    cluster = LocalRedisCluster(free_cluster_ports(), directory)
    cluster.start()
    return cluster
