"""exactly_once in EngineCore.process on the real Pipeline (engines/transactions.py), with a fake
transactional producer at the producer seam and the MemorySink's transaction seam:

* a send that fails inside a transaction breaks it: the next pass aborts it, its rows are settled
  aborted, and the batch's same decisions are sent again whole in a new transaction, which
  commits the batch's next offset and settles its rows committed;
* a commit that fails is the same: abort, publish again, commit;
* a producer fenced at the commit abandons the batch (nothing committed, its rows settled as the
  group's offset says), and the partition's later batches are abandoned until it is restarted.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError, ProducerFenced
from aiokafka.structs import TopicPartition

from stream_engine.engines import core
from stream_engine.engines.core import EngineCore
from stream_engine.engines.transactions import TransactionalEmitter
from stream_engine.monitor import Monitor
from stream_engine.pipeline import DecisionLog, RawMessage
from stream_engine.settings import Settings
from stream_engine.sinks import MemorySink
from stream_engine.workload import Workload
from tests.unit.fakes import PipelineParts

ALERTS = Workload("ci_failures", seed=5).alerts(6)
TP = TopicPartition("alerts", 0)


class FakeProducer:
    """Records transactions: ``committed`` / ``aborted`` lists of (records, offsets)."""

    def __init__(self, fail_sends: int = 0, fail_commits: int = 0, fence_at_commit: bool = False) -> None:
        self.fail_sends, self.fail_commits, self.fence_at_commit = fail_sends, fail_commits, fence_at_commit
        self.fatal = False
        self._txn_manager = SimpleNamespace(is_fatal_error=lambda: self.fatal)
        self.open: list[Any] | None = None
        self.offsets: dict[Any, Any] = {}
        self.committed: list[tuple[list[Any], dict[Any, Any]]] = []
        self.aborted: list[list[Any]] = []

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def begin_transaction(self) -> None:
        assert self.open is None and not self.fatal
        self.open, self.offsets = [], {}

    async def send(self, topic: str, value: bytes, key: bytes | None, headers: Any = None) -> asyncio.Future[None]:
        assert self.open is not None, "send outside a transaction"
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.fail_sends:
            self.fail_sends -= 1
            ack.set_exception(KafkaConnectionError())
        else:
            ack.set_result(None)
        self.open.append(orjson.loads(value))
        return ack

    async def send_offsets_to_transaction(self, offsets: dict[Any, Any], group_id: str) -> None:
        self.offsets = {tp: o.offset for tp, o in offsets.items()}

    async def commit_transaction(self) -> None:
        if self.fence_at_commit:
            self.fatal = True
            raise ProducerFenced()
        if self.fail_commits:
            self.fail_commits -= 1
            raise KafkaConnectionError()
        assert self.open is not None
        self.committed.append((self.open, self.offsets))
        self.open = None

    async def abort_transaction(self) -> None:
        assert self.open is not None
        self.aborted.append(self.open)
        self.open = None


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    real_sleep = asyncio.sleep

    async def no_sleep(_: float) -> None:
        await real_sleep(0)

    monkeypatch.setattr(core.asyncio, "sleep", no_sleep)


async def exactly_once_core(
    pipeline_parts: PipelineParts, tmp_path: Path, producer: FakeProducer
) -> tuple[EngineCore, TransactionalEmitter, MemorySink]:
    settings = Settings(data_dir=tmp_path, delivery="exactly_once")
    emitter = TransactionalEmitter(settings)
    emitter._make = lambda tid: producer  # type: ignore[method-assign]
    pipeline, _, sink = pipeline_parts([], emitter=emitter)  # type: ignore[arg-type]
    log = DecisionLog(sink, "w")
    log.transaction_of = core.transaction_of_this_batch
    pipeline.decision_log = log
    emitter.settle = sink.settle
    runtime = SimpleNamespace(pipeline=pipeline, monitor=Monitor())
    engine = EngineCore(settings, runtime, emitter=emitter)  # type: ignore[arg-type]
    await emitter.assign([TP])
    emitter.resume({TP: None})
    return engine, emitter, sink


def msgs(first: int = 0) -> list[RawMessage]:
    return [RawMessage(orjson.dumps(a), 0, first + i, "alerts") for i, a in enumerate(ALERTS)]


def ids(records: list[Any]) -> list[str]:
    return [r["alert_id"] for r in records]


@pytest.mark.parametrize("failure", ["send", "commit"])
async def test_a_broken_transaction_is_aborted_and_the_same_decisions_are_published_again(
    failure: str, pipeline_parts: PipelineParts, tmp_path: Path
) -> None:
    producer = FakeProducer(fail_sends=1 if failure == "send" else 0, fail_commits=1 if failure == "commit" else 0)
    engine, _, sink = await exactly_once_core(pipeline_parts, tmp_path, producer)
    report = await engine.process(msgs())

    assert len(producer.aborted) == 1, "the broken transaction was aborted"
    [(records, offsets)] = producer.committed
    assert sorted(ids(records)) == sorted(a["id"] for a in ALERTS), "the whole batch again, in one new transaction"
    assert offsets == {TP: len(ALERTS)}, "with the batch's next offset"
    first = {r["alert_id"]: r["decided_at"] for r in producer.aborted[0]}
    assert all(first[r["alert_id"]] == r["decided_at"] for r in records if r["alert_id"] in first), "decided once"
    assert sorted(r.alert_id for r in sink.rows) == sorted(a["id"] for a in ALERTS), "only the committed rows are stored"
    assert not sink.held, "every transaction's rows were settled"
    assert len({r.attempt for r in sink.rows}) == 1 and sink.rows[0].attempt.startswith("stream-engine.alerts.0:")
    assert len(report.decisions) == len(ALERTS)


async def test_a_fenced_producer_abandons_its_batch_and_the_partitions_next_ones(pipeline_parts: PipelineParts, tmp_path: Path) -> None:
    producer = FakeProducer(fence_at_commit=True)
    engine, emitter, sink = await exactly_once_core(pipeline_parts, tmp_path, producer)
    lost: list[TopicPartition] = []
    emitter.on_lost = lost.append

    await asyncio.wait_for(engine.process(msgs()), 10)  # returns: abandoned, not retried
    assert producer.committed == [] and lost == [TP]
    assert sink.rows == [] and not sink.held, "its rows were settled aborted (the group committed nothing)"

    sent = len(producer.open or [])  # the fenced transaction: its fencer aborts it, not we
    producer.fatal = False  # a later batch of the partition, fetched before the restart: abandoned too
    await asyncio.wait_for(engine.process(msgs(len(ALERTS))), 10)
    assert producer.committed == [] and len(producer.open or []) == sent, "nothing sent for a partition that is not ours"
