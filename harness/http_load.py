"""Many concurrent HTTP requests from one asyncio process: each on its own connection, all open at
once, every answer's status and ``Retry-After`` recorded.

Raw asyncio streams rather than an HTTP client library: a connection costs a socket and a few
hundred bytes here, so 10,000 of them fit in the test process, and the client never pools or
queues requests on its side (the server must see them all at once).
"""

from __future__ import annotations

import asyncio
import resource
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    statuses: Counter[int] = field(default_factory=Counter)
    retry_after: Counter[str] = field(default_factory=Counter)  # of the 429/503 answers
    errors: Counter[str] = field(default_factory=Counter)  # connections that got no answer, by error

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file soft limit towards ``wanted`` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def post_concurrently(url: str, body: bytes, n: int, *, headers: dict[str, str] | None = None, timeout_s: float = 180) -> LoadResult:
    """``n`` POSTs of ``body`` to ``url``, all connections opened together, one request each (on a
    keep-alive connection, as HTTP clients send them; closed once the answer's head is read)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        + "\r\n"
    ).encode()
    result = LoadResult()
    start = asyncio.Event()

    async def one() -> None:
        await start.wait()
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            result.errors[f"connect: {type(exc).__name__}"] += 1
            return
        stage = "send"
        try:
            writer.write(head + body)
            await writer.drain()
            stage = "answer"
            status_line = await reader.readline()
            status = int(status_line.split()[1])
            retry_after = None
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "retry-after":
                    retry_after = value.strip()
            result.statuses[status] += 1
            if status in (429, 503):
                result.retry_after[retry_after or "missing"] += 1
        except (OSError, ValueError, IndexError) as exc:
            result.errors[f"{stage}: {type(exc).__name__}"] += 1
        finally:
            writer.close()

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    await asyncio.sleep(0)
    start.set()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout_s)
    return result
