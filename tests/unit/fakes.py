"""Fakes at the typed seams the unit tests use (the fixtures in conftest.py build on them)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import httpx
import orjson

from stream_engine.models import DeadLetter, Decision
from stream_engine.pipeline import Pipeline
from stream_engine.sinks import MemorySink


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingEmitter:
    """Keeps what it was handed (``decisions``, ``dead``) and what the broker acknowledged
    (``acked``). ``answer(record)``: None (acknowledged) or the exception its ack raises; while
    ``gate`` is set to an unset event, acks wait for it (a lagging broker)."""

    def __init__(self, answer: Callable[[Decision | DeadLetter], BaseException | None] | None = None) -> None:
        self.decisions: list[Decision] = []
        self.dead: list[DeadLetter] = []
        self.acked: list[Decision | DeadLetter] = []
        self.answer = answer or (lambda record: None)
        self.gate: asyncio.Event | None = None

    async def send(self, decisions: Sequence[Decision], dead: Sequence[DeadLetter]) -> list[Awaitable[None]]:
        self.decisions.extend(decisions)
        self.dead.extend(dead)
        # Coroutines, not tasks: an ack is only settled if the pipeline awaits it.
        return [self._ack(record, self.answer(record)) for record in [*decisions, *dead]]

    async def _ack(self, record: Decision | DeadLetter, error: BaseException | None) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if error is not None:
            raise error
        self.acked.append(record)


class FlakySink(MemorySink):
    """A MemorySink whose ``write`` raises ``fail(n)`` on its n-th call (1-based) when not None."""

    def __init__(self, fail: Callable[[int], BaseException | None]) -> None:
        super().__init__()
        self.fail = fail
        self.calls = 0

    async def write(self, rows, metrics):  # type: ignore[no-untyped-def]
        self.calls += 1
        error = self.fail(self.calls)
        if error is not None:
            raise error
        await super().write(rows, metrics)


def service_transport(calls: list[list[str]], status: int = 200) -> httpx.MockTransport:
    """The proposition service: records each batch's keys in ``calls``; a ``Timeout`` key gets one
    proposition (0.95), every other key none; ``status`` other than 200 fails every call."""
    def handle(request: httpx.Request) -> httpx.Response:
        items = orjson.loads(request.content)["items"]
        calls.append([i["key"] for i in items])
        if status != 200:
            return httpx.Response(status)
        results = {
            i["key"]: ([{"action": "retry_job", "confidence": 0.95, "rationale": "r"}] if "Timeout" in i["key"] else [])
            for i in items
        }
        return httpx.Response(200, json={"version": "v1", "results": results})

    return httpx.MockTransport(handle)


# pipeline_parts(calls, status=200, emitter=None, sink=None) -> (Pipeline, RecordingEmitter, MemorySink):
# see conftest.py.
PipelineParts = Callable[..., tuple[Pipeline, RecordingEmitter, MemorySink]]
