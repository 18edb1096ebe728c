"""A TCP forwarder in front of a real Redis that can misbehave on purpose.

* ``stop()`` / ``start()``: an outage (pooled connections die too) and a recovery on the same port;
* ``blackhole``: a hung server (accepts, answers nothing);
* ``drop_next_reply(...)``: the next command that is not connection set-up reaches Redis and is
  executed, but its reply is never delivered (the connection is cut): a lost reply;
* ``drop_next_request(...)``: the same, but the command never reaches Redis.

``dropped`` lists the command names whose reply or request was dropped, so a test can assert
that the fault it arranged really happened.
"""

from __future__ import annotations

import asyncio

SETUP_COMMANDS = frozenset({b"CLIENT", b"HELLO", b"AUTH", b"SELECT", b"PING", b"READONLY"})


def command_name(chunk: bytes) -> bytes:
    """The first command's name in a RESP chunk (``*N\\r\\n$len\\r\\nNAME\\r\\n…``)."""
    parts = chunk.split(b"\r\n", 3)
    return parts[2].upper() if len(parts) > 2 else b""


class RedisProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.blackhole = False
        self.dropped: list[str] = []
        self._drop: tuple[str, frozenset[bytes] | None] | None = None  # ("reply" | "request", only these commands)
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def drop_next_reply(self, *commands: str) -> None:
        self._drop = ("reply", frozenset(c.upper().encode() for c in commands) or None)

    def drop_next_request(self, *commands: str) -> None:
        self._drop = ("request", frozenset(c.upper().encode() for c in commands) or None)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        self._server = None

    def _should_drop(self, chunk: bytes) -> str | None:
        if self._drop is None:
            return None
        name = command_name(chunk)
        mode, only = self._drop
        if name in SETUP_COMMANDS or (only is not None and name not in only):
            return None
        self._drop = None
        self.dropped.append(name.decode(errors="replace"))
        return mode

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._writers.add(client_writer)
        if self.blackhole:
            await client_reader.read()  # swallow everything, answer nothing
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self._writers.add(upstream_writer)
        cut = asyncio.Event()

        async def to_redis() -> None:
            try:
                while data := await client_reader.read(65536):
                    mode = self._should_drop(data)
                    if mode == "request":
                        break
                    if mode == "reply":
                        cut.set()  # from now on nothing goes back to the client
                    upstream_writer.write(data)
                    await upstream_writer.drain()
                    if mode == "reply":
                        await asyncio.sleep(0.05)  # let Redis execute it, then hang up
                        break
            except (ConnectionError, OSError):
                pass
            finally:
                cut.set()
                upstream_writer.close()
                client_writer.close()

        async def to_client() -> None:
            try:
                while data := await upstream_reader.read(65536):
                    if cut.is_set():
                        break
                    client_writer.write(data)
                    await client_writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                client_writer.close()

        try:
            await asyncio.gather(to_redis(), to_client())
        except asyncio.CancelledError:  # the proxy stopped under it: nothing to report
            pass
