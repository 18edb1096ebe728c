"""The faust engine's commits, through faust's own Consumer code (ack, commit, _new_offset,
_should_commit, _commit_offsets): only the last hop to the broker (``_commit``) is recorded
instead of sent, and the assignment is given, since no broker is involved.

faust-streaming #606: with several agent instances on one queue, one partition's offsets
alternate between batches, and faust's ``Consumer._new_offset`` commits over an offset that is not
acked when the gap is exactly one, and without any guard when the committed offset is unknown.
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
        self.app, _ = create_app(Settings(data_dir=tmp_path, topic_alerts=TOPIC))
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


@pytest.mark.xfail(strict=True, reason="faust-streaming #606: the fix is pending (issue 11)")
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
