"""The API's listening socket: at most ``api_max_connections`` open connections; one more is
answered 503 + Retry-After at once and closed, and a freed place is served again."""

from __future__ import annotations

import asyncio
from pathlib import Path

from stream_engine.api.server import CONNECTION_LIMIT_ROUTE, ApiServer
from stream_engine.runtime import Runtime
from stream_engine.settings import Settings
from stream_engine.sinks import MemorySink


async def get(host: str, port: int, path: str) -> tuple[bytes, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    head, _, body = (await reader.read()).partition(b"\r\n\r\n")
    writer.close()
    status, *lines = head.decode().split("\r\n")
    return status.encode(), {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}, body


async def test_a_connection_past_the_limit_is_answered_503_and_a_freed_place_is_served(tmp_path: Path) -> None:
    runtime = Runtime(Settings(data_dir=tmp_path, api_port=0, api_max_connections=2), sink=MemorySink())
    server = ApiServer(runtime)
    url = await server.start()
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        held = [await asyncio.open_connection(host, int(port)) for _ in range(2)]  # idle keep-alive clients
        async with asyncio.timeout(10):
            while server.connections is None or server.connections.open < 2:
                await asyncio.sleep(0.01)
        status, headers, body = await get(host, int(port), "/metrics")
        assert status == b"HTTP/1.1 503 Service Unavailable"
        assert headers["retry-after"] == "1" and b'"error":"busy"' in body
        assert runtime.monitor.api_requests[(CONNECTION_LIMIT_ROUTE, 503)] == 1

        _, writer = held.pop()
        writer.close()
        await writer.wait_closed()
        for _ in range(100):  # aiohttp drops a closed connection from its count once its handler ends
            status, _, _ = await get(host, int(port), "/metrics")
            if status == b"HTTP/1.1 200 OK":
                break
            await asyncio.sleep(0.02)
        assert status == b"HTTP/1.1 200 OK"
        for _, w in held:
            w.close()
    finally:
        await server.stop()
        await runtime.stop()
