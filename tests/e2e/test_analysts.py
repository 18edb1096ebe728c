"""Analysts and workers on one ClickHouse: two workers write, an analyst runs SQL the whole time,
and one query sees every decision of both workers (the stack's endpoint, over HTTP, as in production)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from harness.drills import Publisher, Tail, clickhouse_query
from harness.procs import Proc, start_worker, wait_until
from stream_engine.settings import Settings
from stream_engine.workload import Workload
from tests.e2e.test_engines import last_assignment

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


class Analyst:
    """`stream-engine sql` in a loop, in its own process each time, like someone at a terminal."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.counts: list[int] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Analyst:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def sql(self, query: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "stream_engine", "--clickhouse-database", self.settings.clickhouse_database,
             "sql", query],
            capture_output=True, text=True, timeout=60, check=False, env=None,
        )  # fmt: skip
        if done.returncode != 0:
            raise AssertionError(done.stderr)
        return done.stdout

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.counts.append(int(self.sql("SELECT count() FROM proposition_log")))
            except (AssertionError, ValueError) as exc:
                self.failures.append(str(exc)[:500])
            self._stop.wait(0.2)


async def test_two_workers_and_an_analyst_share_one_clickhouse(e2e_settings: Settings, propositions: Proc, tmp_path: Path) -> None:
    s = e2e_settings.with_overrides(engine="aiokafka")
    assert s.effective_clickhouse_url.startswith("http://")  # the default: the stack's endpoint
    s1 = s.with_overrides(data_dir=tmp_path / "w1", worker_name="analyst-w1")
    s2 = s.with_overrides(data_dir=tmp_path / "w2", worker_name="analyst-w2")
    alerts = Workload("typical", seed=16).alerts(2000)
    ids = {a["id"] for a in alerts}
    w1, w2 = await asyncio.gather(
        asyncio.to_thread(start_worker, s1, tmp_path, "w1"), asyncio.to_thread(start_worker, s2, tmp_path, "w2")
    )
    try:

        def split() -> bool:
            a, b = last_assignment(w1), last_assignment(w2)
            return bool(a and b and sorted(a + b) == list(range(6)))

        await asyncio.to_thread(wait_until, split, 60, "both workers hold partitions", w2)
        with Analyst(s) as analyst:
            async with Tail(s.kafka_bootstrap, s.topic_decisions) as tail, Publisher(s.kafka_bootstrap, s.topic_alerts) as pub:
                for part in range(4):  # the analyst's queries interleave with the writes by construction
                    await pub.send(alerts[part * 500 : (part + 1) * 500], per_second=500)
                    asked = len(analyst.counts)
                    await asyncio.to_thread(wait_until, lambda: len(analyst.counts) > asked, 60, "an analyst query")
                await tail.wait_ids(list(ids), 120, "decisions of both workers")
            # Both workers still run: their rows reach the one store, visible to one query.
            await asyncio.to_thread(
                wait_until, lambda: int(analyst.sql("SELECT count() FROM proposition_log FINAL")) == len(ids), 60,
                "every decision in ClickHouse",
            )  # fmt: skip
            assert w1.alive and w2.alive
        by_worker = dict(
            clickhouse_query(s, "SELECT worker, uniqExact(alert_id) FROM proposition_log GROUP BY worker ORDER BY worker")
        )
        stored = {r[0] for r in clickhouse_query(s, "SELECT alert_id FROM proposition_log FINAL")}
    finally:
        w1.stop()
        w2.stop()

    assert not analyst.failures, analyst.failures[:3]
    assert len(analyst.counts) >= 4, "the analyst's queries ran while the workers wrote"
    assert analyst.counts == sorted(analyst.counts)  # a growing log, never an error or a step back
    assert stored == ids
    assert set(by_worker) == {"analyst-w1", "analyst-w2"} and sum(by_worker.values()) == len(ids), by_worker
