"""The faust engine's commits, through faust's own Consumer code (ack, commit, _new_offset,
_should_commit, _commit_offsets): only the last hop to the broker (``_commit``) is recorded
instead of sent, and the assignment is given, since no broker is involved.

faust-streaming #606: with several agent instances on one queue, one partition's offsets
alternate between batches, and faust's ``Consumer._new_offset`` commits over an offset that is not
acked when the gap is exactly one, and without any guard when the committed offset is unknown.
Our consumer commits only what the runner's ``OffsetTracker`` released: a batch counts when it is
done, not when faust acked its events (``take_events`` acks them as soon as the agent asks for the
next batch, and in its ``finally`` when the agent body raises).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from faust.types import TP
from faust.types.tuples import Message

from stream_engine.engines.faust import create_app
from stream_engine.settings import Settings

TOPIC = "alerts-unit"
P0 = TP(TOPIC, 0)


class FaustConsumer:
    """The app's real consumer (our transport's subclass of faust's), its broker hop recorded."""

    def __init__(self, tmp_path: Path) -> None:
        self.app, self.runner = create_app(Settings(data_dir=tmp_path, topic_alerts=TOPIC))
        self.tracker = self.runner.tracker
        self.consumer: Any = self.app.consumer
        self.commits: list[dict[TP, int]] = []

        async def record(offsets: Any) -> bool:
            self.commits.append(dict(offsets))
            return True

        self.consumer._commit = record
        self.consumer.assignment = lambda: {P0}

    async def subscribe(self) -> None:
        # What faust does when the agent starts and subscribes: its topic joins the conductor,
        # which enables acks for it.
        (agent,) = self.app.agents.values()
        self.app.topics.add(agent.channel)
        await self.app.topics._update_indices()
        assert self.app.topics.acks_enabled_for(TOPIC)

    def deliver(self, offset: int) -> Message:
        message = Message(TOPIC, 0, offset, 0.0, 0, None, b"k", b"v", None)
        self.consumer.track_message(message)
        return message

    def ack(self, message: Message) -> None:
        assert self.consumer.ack(message)

    async def commit(self) -> dict[TP, int] | None:
        before = len(self.commits)
        await self.consumer.commit()
        return self.commits[-1] if len(self.commits) > before else None


@pytest.fixture
async def faust_consumer(tmp_path: Path) -> FaustConsumer:
    consumer = FaustConsumer(tmp_path)
    await consumer.subscribe()
    return consumer


@pytest.mark.parametrize("committed", [None, 0, 5], ids=["committed-unknown", "committed-0", "committed-5"])
async def test_an_offset_still_in_flight_is_never_committed_over(faust_consumer: FaustConsumer, committed: int | None) -> None:
    """Offset ``start`` is held by one batch; the two after it were acked by another batch."""
    start = committed or 0
    if committed is not None:
        faust_consumer.consumer._committed_offset[P0] = committed
    held = faust_consumer.deliver(start)
    for offset in (start + 1, start + 2):
        faust_consumer.ack(faust_consumer.deliver(offset))
    committed_now = await faust_consumer.commit()
    assert committed_now is None or committed_now[P0] <= start, f"committed {committed_now} while {held.offset} is in flight"


async def test_a_batch_counts_when_it_is_done_not_when_faust_acked_its_events(faust_consumer: FaustConsumer) -> None:
    first = faust_consumer.tracker.started({P0: 0})
    second = faust_consumer.tracker.started({P0: 2})
    for offset in (0, 1, 2):  # take_events acked every event: the batches were handed over
        faust_consumer.ack(faust_consumer.deliver(offset))
    faust_consumer.tracker.finished(second)
    assert await faust_consumer.commit() is None, "offset 0 is still being processed"
    faust_consumer.tracker.finished(first)
    assert await faust_consumer.commit() == {P0: 3}
    assert await faust_consumer.commit() is None, "committed once"


async def test_at_a_revocation_what_is_done_is_committed_though_faust_dropped_its_acks(faust_consumer: FaustConsumer) -> None:
    batch = faust_consumer.tracker.started({P0: 4})
    for offset in range(5):
        faust_consumer.ack(faust_consumer.deliver(offset))
    faust_consumer.tracker.finished(batch)
    # What faust's Consumer.on_partitions_revoked does before the app's handlers (ours) run:
    for state in (faust_consumer.consumer._acked, faust_consumer.consumer._acked_index, faust_consumer.consumer._committed_offset):
        state.pop(P0, None)
    assert await faust_consumer.commit() == {P0: 5}
