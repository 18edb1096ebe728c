"""Run a coroutine to completion from sync code, even when the caller's thread has a loop running."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def run_coroutine(factory: Callable[[], Awaitable[T]], *, timeout_s: float | None = None) -> T:
    """`asyncio.run(factory())` in a short-lived thread, so no loop of the caller is disturbed."""

    async def main() -> T:
        return await factory()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result(timeout=timeout_s)
