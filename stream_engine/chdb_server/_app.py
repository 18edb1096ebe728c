"""The HTTP side: aiohttp handlers that speak ClickHouse's HTTP interface to the engine."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiohttp import web

from stream_engine.chdb_server._engine import Answer, Engine, Plan, Sessions
from stream_engine.chdb_server._protocol import (
    CONTENT_TYPES,
    STATEMENT_PREFIX_BYTES,
    ClickHouseError,
    RequestArgs,
    Stream,
    compressor,
    decompressor,
    match_insert,
    output_format,
    parse_args,
    quote_identifier,
    statement_head,
)

log = logging.getLogger("stream_engine.chdb_server")

T = TypeVar("T")
DISPLAY_NAME = "stream-engine-chdb"
READ_CHUNK = 1 << 20
OK = b"Ok.\n"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    path: Path
    host: str = "127.0.0.1"
    port: int = 8123
    user: str = "default"
    password: str = ""
    create_database: str | None = None
    threads: int = 16  # requests running in the engine at once (each on its own handle)
    max_query_bytes: int = 256 << 20  # a query text (not INSERT … FORMAT data, which streams) above this is refused
    shutdown_timeout_s: float = 10.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Server:
    def __init__(self, engine: Engine, config: ServerConfig) -> None:
        self.engine = engine
        self.config = config
        self.sessions = Sessions()
        self.pool = ThreadPoolExecutor(config.threads, thread_name_prefix="chdb")
        self.in_flight = 0

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_query_bytes)
        app.router.add_get("/ping", self.ok)
        app.router.add_get("/replicas_status", self.ok)
        app.router.add_route("GET", "/", self.root)
        app.router.add_route("POST", "/", self.query)
        app.router.add_route("*", "/{tail:.*}", self.not_found)
        return app

    # --- trivial handlers ------------------------------------------------------------------

    async def ok(self, request: web.Request) -> web.Response:
        return web.Response(body=OK, content_type="text/html", charset="UTF-8")

    async def root(self, request: web.Request) -> web.StreamResponse:
        if "query" not in request.query:
            return await self.ok(request)
        return await self.query(request)

    async def not_found(self, request: web.Request) -> web.Response:
        text = (f"There is no handle {request.path_qs}\n\nUse / or /ping for health checks.\n"
                "Send queries with POST or GET /?query=...\n")  # fmt: skip
        return web.Response(status=404, text=text)

    # --- queries ------------------------------------------------------------------------------

    async def query(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        query_id = request.query.get("query_id") or str(uuid.uuid4())
        record: dict[str, Any] = {"query_id": query_id, "method": request.method}
        self.in_flight += 1
        try:
            response = await self._query(request, query_id, record)
            record["status"] = response.status
            return response
        except ClickHouseError as exc:
            record.update(status=self.engine.http_status(exc.code), code=exc.code, error=exc.text.splitlines()[0][:300])
            return self._error(exc, query_id)
        except (ConnectionResetError, asyncio.CancelledError):
            record["status"] = "client gone"
            raise
        except Exception as exc:  # a bug here, not in the query: still answer the way the server does
            log.exception("request %s failed", query_id)
            error = ClickHouseError(1001, f"{type(exc).__name__}: {exc}", "STD_EXCEPTION")
            record.update(status=500, code=1001, error=error.text[:300])
            return self._error(error, query_id)
        finally:
            self.in_flight -= 1
            record["ms"] = round((time.perf_counter() - started) * 1000, 1)
            log.info("%s %s", record.get("kind", "request"), record.get("status"), extra=record)

    async def _query(self, request: web.Request, query_id: str, record: dict[str, Any]) -> web.StreamResponse:
        raw_args = dict(request.query)
        body: AsyncIterator[bytes] | None = None
        if request.method == "POST":
            if request.content_type == "multipart/form-data":
                raw_args.update(await self._form_fields(request))
            else:
                body = self._body(request, decompressor(request.headers.get("Content-Encoding", "")))
        args = parse_args(raw_args, request.headers, method=request.method)
        record["user"] = self._authenticate(request, raw_args)
        sql, insert, data = await self._statement(args, body)
        record["statement"] = statement_head(insert.statement + f" FORMAT {insert.format}" if insert else sql)
        async with self.sessions.use(args.session_id, args.session_timeout_s, args.session_check) as session:
            plan = Plan(args.database, self.sessions.statements(session), args.settings, args.readonly)
            conn = await self._run(self.engine.open, plan)
            try:
                if insert is not None:
                    record["kind"] = "insert"
                    assert data is not None
                    summary = await self._insert(conn, insert.statement, insert.format, data)
                    record["written_rows"] = int(summary["written_rows"])
                    return self._response(request, args, query_id, Answer(None, summary=summary))
                record["kind"] = "query"
                fmt, named = output_format(sql, args.default_format)
                answer = await self._run(self.engine.execute, conn, sql, fmt, named, args.params)
                if session is not None:
                    session.remember(sql)
                if answer.stream is not None:
                    return await self._stream(request, args, query_id, answer, record)
                record["bytes"] = len(answer.body)
                return self._response(request, args, query_id, answer)
            finally:
                await self._run(self.engine.close_handle, conn)

    async def _statement(
        self, args: RequestArgs, body: AsyncIterator[bytes] | None
    ) -> tuple[str, Any, AsyncIterator[bytes] | None]:
        """(sql, None, None) for a statement; ("", InsertWithData, data) for INSERT … FORMAT + data.

        As in clickhouse-server the statement is the ``query`` argument followed by the body;
        for ``INSERT … FORMAT x`` whatever follows the statement is data, streamed to the engine.
        """
        if args.query:
            insert = match_insert(args.query.encode())
            if insert is not None:
                head = insert.head + b"\n" if insert.head else b""
                return "", insert, _prepend(head, body)
            rest = await self._read_all(body, len(args.query)) if body is not None else b""
            return args.query + ("\n" + _decode(rest) if rest else ""), None, None
        if body is None:
            raise ClickHouseError(62, "Empty query", "SYNTAX_ERROR")
        prefix = b""
        async for chunk in body:
            prefix += chunk
            if len(prefix) >= STATEMENT_PREFIX_BYTES:
                break
        insert = match_insert(prefix)
        if insert is not None:
            return "", insert, _prepend(insert.head, body)
        text = _decode(prefix + await self._read_all(body, len(prefix)))
        if not text.strip():
            raise ClickHouseError(62, "Empty query", "SYNTAX_ERROR")
        return text, None, None

    async def _read_all(self, body: AsyncIterator[bytes] | None, already: int) -> bytes:
        parts: list[bytes] = []
        size = already
        if body is not None:
            async for chunk in body:
                size += len(chunk)
                if size > self.config.max_query_bytes:
                    raise ClickHouseError(
                        229, f"Query is too large ({size} bytes > {self.config.max_query_bytes})", "QUERY_IS_TOO_LARGE"
                    )
                parts.append(chunk)
        return b"".join(parts)

    @staticmethod
    async def _body(request: web.Request, decode: Stream | None) -> AsyncIterator[bytes]:
        async for chunk in request.content.iter_chunked(READ_CHUNK):
            data = decode.feed(chunk) if decode is not None else chunk
            if data:
                yield data
        if decode is not None:
            tail = decode.flush()
            if tail:
                yield tail

    @staticmethod
    async def _form_fields(request: web.Request) -> dict[str, str]:
        fields: dict[str, str] = {}
        form = await request.post()
        for name, value in form.items():
            if not isinstance(value, str):
                raise ClickHouseError(48, "External data (multipart files) is not supported by this endpoint", "NOT_IMPLEMENTED")
            fields[name] = value
        return fields

    def _authenticate(self, request: web.Request, args: dict[str, str]) -> str:
        """Basic auth, X-ClickHouse-User/Key or user/password arguments, as clickhouse-server reads them."""
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise ClickHouseError(516, "Malformed Basic authentication header", "AUTHENTICATION_FAILED") from None
        elif "X-ClickHouse-User" in request.headers:
            user, password = request.headers["X-ClickHouse-User"], request.headers.get("X-ClickHouse-Key", "")
        else:
            user, password = args.get("user", "default"), args.get("password", "")
        good_user = hmac.compare_digest(user.encode(), self.config.user.encode())
        if not (hmac.compare_digest(password.encode(), self.config.password.encode()) and good_user):
            raise ClickHouseError(
                516, f"{user}: Authentication failed: password is incorrect, or there is no user with such name",
                "AUTHENTICATION_FAILED",
            )  # fmt: skip
        return user

    async def _insert(self, conn: Any, statement: str, fmt: str, data: AsyncIterator[bytes]) -> dict[str, str]:
        inserter = await self._run(self.engine.begin_insert, conn, statement, fmt)
        try:
            async for chunk in data:
                await self._run(self.engine.append, inserter, chunk)
        except BaseException:
            await self._run(self.engine.abort_insert, inserter)
            raise
        return await self._run(self.engine.finish, inserter)

    # --- responses ----------------------------------------------------------------------------

    def _headers(self, args: RequestArgs, query_id: str, answer: Answer) -> dict[str, str]:
        headers = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": self.engine.timezone,
            "X-ClickHouse-Server-Display-Name": DISPLAY_NAME,
            "X-ClickHouse-Summary": orjson.dumps(answer.summary).decode(),
        }
        if answer.format is not None:
            headers["X-ClickHouse-Format"] = answer.format
            headers["Content-Type"] = CONTENT_TYPES.get(answer.format.lower(), "text/plain; charset=UTF-8")
        else:
            headers["Content-Type"] = "text/plain; charset=UTF-8"
        return headers

    def _compression(self, request: web.Request, args: RequestArgs) -> tuple[str, Stream] | None:
        wanted = self.engine.http_compression_default if args.http_compression is None else args.http_compression
        return compressor(request.headers.get("Accept-Encoding", "")) if wanted else None

    def _response(self, request: web.Request, args: RequestArgs, query_id: str, answer: Answer) -> web.Response:
        headers = self._headers(args, query_id, answer)
        body = answer.body
        chosen = self._compression(request, args) if body else None
        if chosen is not None:
            headers["Content-Encoding"] = chosen[0]
            body = chosen[1].feed(body) + chosen[1].flush()
        return web.Response(body=body, headers=headers)

    async def _stream(
        self, request: web.Request, args: RequestArgs, query_id: str, answer: Answer, record: dict[str, Any]
    ) -> web.StreamResponse:
        """A result set in chunks; the first is fetched before the status line is sent, so an error
        in planning or in the first block still gets its proper status and code."""
        stream = answer.stream
        try:
            first = await self._run(self.engine.fetch, stream)
            if args.wait_end_of_query:  # the client asked for the whole result (or the error) first
                parts = [first] if first else []
                while first is not None:
                    first = await self._run(self.engine.fetch, stream)
                    if first:
                        parts.append(first)
                answer.body = b"".join(parts)
                record["bytes"] = len(answer.body)
                return self._response(request, args, query_id, answer)
            headers = self._headers(args, query_id, answer)
            chosen = self._compression(request, args)
            if chosen is not None:
                headers["Content-Encoding"] = chosen[0]
            response = web.StreamResponse(headers=headers)
            await response.prepare(request)
            sent = 0
            chunk = first
            try:
                while chunk is not None:
                    sent += len(chunk)
                    await response.write(chosen[1].feed(chunk) if chosen else chunk)
                    chunk = await self._run(self.engine.fetch, stream)
            except ClickHouseError as exc:  # after the status line: the error goes in the body, as the server does
                text = ("\n" + exc.text + "\n").encode()
                await response.write(chosen[1].feed(text) if chosen else text)
                record.update(code=exc.code, error=exc.text.splitlines()[0][:300])
            if chosen is not None:
                await response.write(chosen[1].flush())
            await response.write_eof()
            record["bytes"] = sent
            return response
        finally:
            await self._run(self.engine.cancel, stream)

    def _error(self, exc: ClickHouseError, query_id: str) -> web.Response:
        body = f"{exc.text} (version {self.engine.version} ({DISPLAY_NAME}))\n"
        headers = {
            "X-ClickHouse-Exception-Code": str(exc.code),
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Server-Display-Name": DISPLAY_NAME,
        }
        return web.Response(status=self.engine.http_status(exc.code), text=body, headers=headers)


async def _prepend(head: bytes, body: AsyncIterator[bytes] | None) -> AsyncIterator[bytes]:
    if head:
        yield head
    if body is not None:
        async for chunk in body:
            yield chunk


def _decode(data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise ClickHouseError(36, f"The query is not valid UTF-8 ({exc.reason} at byte {exc.start})", "BAD_ARGUMENTS") from None


# --- the process ------------------------------------------------------------------------------


async def run_server(config: ServerConfig, *, on_ready: Callable[[str], Awaitable[None] | None] | None = None) -> int:
    """Open the engine, listen, serve until SIGTERM/SIGINT, then stop gracefully.

    Graceful: the listener closes first, requests in flight get ``shutdown_timeout_s`` to
    finish, then the engine closes its handles (its data directory is consistent at every
    moment anyway: MergeTree parts are written atomically).
    """
    if not is_loopback(config.host) and not config.password:
        raise ClickHouseError(36, f"refusing to listen on {config.host} without a password: put one in the "
                                  "ClickHouse URL (http://user:password@host:port)", "BAD_ARGUMENTS")  # fmt: skip
    engine = Engine(config.path)
    if config.create_database:
        conn = engine.open(Plan())
        try:
            conn.query(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(config.create_database)}", "TabSeparated")
        finally:
            engine.close_handle(conn)
    server = Server(engine, config)
    runner = web.AppRunner(
        server.app(), handle_signals=False, access_log=None, shutdown_timeout=config.shutdown_timeout_s,
        auto_decompress=False,  # Content-Encoding is ours: aiohttp knows fewer codecs (no lz4) and one frame each
    )  # fmt: skip
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
    except OSError:
        await runner.cleanup()
        engine.close()
        raise
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    url = f"http://{config.host}:{config.port}"
    log.info(
        "ClickHouse HTTP interface on %s (engine: ClickHouse %s via chDB, data %s)", url, engine.version, engine.path,
        extra={"url": url, "data_dir": engine.path, "engine_version": engine.version},
    )  # fmt: skip
    if on_ready is not None:
        maybe = on_ready(url)
        if maybe is not None:
            await maybe
    await stopping.wait()
    log.info("stopping: %d request(s) in flight", server.in_flight)
    await runner.cleanup()
    server.pool.shutdown(wait=True)
    engine.close()
    log.info("stopped")
    return 0
