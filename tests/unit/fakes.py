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
    def __init__(self) -> None:
        self.decisions: list[Decision] = []
        self.dead: list[DeadLetter] = []

    async def send(self, decisions: Sequence[Decision], dead: Sequence[DeadLetter]) -> Awaitable[None]:
        self.decisions.extend(decisions)
        self.dead.extend(dead)
        return asyncio.sleep(0)


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


# pipeline_parts(calls, status=200) -> (Pipeline, RecordingEmitter, MemorySink): see conftest.py.
PipelineParts = Callable[..., tuple[Pipeline, RecordingEmitter, MemorySink]]
