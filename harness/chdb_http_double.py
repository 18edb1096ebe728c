"""TEST DOUBLE — NOT A CLICKHOUSE SERVER.

A small HTTP server that speaks just enough of ClickHouse's HTTP interface, over the embedded
chDB engine, for clickhouse-connect's HTTP client to run this project's code paths (connect,
``command`` DDL, ``query`` with server-side ``{name:Type}`` parameters, ``insert`` in Native and
``insert_arrow``). It exists so the HTTP code path (URL parsing, the urllib3 transport, the wire
formats, error mapping, reconnect after an outage) is exercised in CI on machines where no modern
ClickHouse server can be installed. The real-server path runs when STREAM_ENGINE_CLICKHOUSE_URL
names an http(s) server (``tests/integration/test_clickhouse_http.py``).

Run it in its OWN process (``start_double``): chDB allows one data directory per process and the
test process may already hold another one.

What it does like a server:
- ``GET /ping`` and ``GET /`` answer ``Ok.``; queries come as ``query=`` URL argument and/or the
  POST body (plain, chunked, or multipart form fields), with ``database=``, ``param_<name>=``
  (handed to chDB's own parameter binding: nothing is spliced into SQL), ``query_id=`` and any
  other argument treated as a ClickHouse setting (applied with SET for the one request, then
  reset to DEFAULT).
- ``INSERT INTO t [(cols)] FORMAT <fmt>`` followed by data (in the body, after the statement or
  after a ``query=`` argument) is executed as ``INSERT … FROM INFILE`` of that data, so the engine's
  own input formats (Native, Arrow, …) parse it. Request bodies with ``Content-Encoding``
  lz4/zstd/gzip/deflate are decompressed first.
- Results are chDB's bytes in the requested format (the query's trailing FORMAT, else
  ``default_format``, else TabSeparated), with the response headers the client reads:
  ``X-ClickHouse-Query-Id``, ``X-ClickHouse-Format`` (only for result-producing statements),
  ``X-ClickHouse-Timezone``, ``X-ClickHouse-Summary``; responses are compressed when the client
  asked for it (``enable_http_compression`` + ``Accept-Encoding``), as a server does.
- Errors: the status a server would use for the common codes, ``X-ClickHouse-Exception-Code``
  and the ``Code: N. DB::Exception: … (NAME)`` body.

Where it is NOT a server (deliberately):
- Authentication: ANY user/password (Basic auth or none) is accepted; there are no users,
  roles, quotas or readonly profiles.
- Sessions: ``session_id`` is accepted and ignored; there is no per-session state.
- ``client_protocol_version`` is ignored, so Native output carries no block info and
  clickhouse-connect falls back to protocol version 0 (a real server negotiates 54405).
- Results are buffered whole (as with ``wait_end_of_query=1``): no streaming, no progress
  headers, no mid-stream exceptions.
- One request at a time (a lock around the engine); external data (multipart files) is refused.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import gzip
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, urlsplit

DISPLAY_NAME = "chdb-http-double"
READY_PREFIX = "CHDB_HTTP_DOUBLE_LISTENING"

# URL arguments that steer the HTTP layer rather than name a ClickHouse setting.
TRANSPORT_ARGS = frozenset(
    {
        "query", "database", "query_id", "session_id", "session_timeout", "session_check", "default_format",
        "wait_end_of_query", "compress", "decompress", "enable_http_compression", "send_progress_in_http_headers",
        "http_headers_progress_interval_ms", "cancel_http_readonly_queries_on_client_close",
        "client_protocol_version", "user", "password", "quota_key", "buffer_size", "role",
    }
)  # fmt: skip

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
TRAILING_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*$", re.IGNORECASE)
# "INSERT INTO <target> FORMAT <fmt>" then the data, separated by blanks up to one line break.
INSERT_WITH_DATA = re.compile(
    rb"\s*INSERT\s+INTO\s+(?P<target>.+?)\s+FORMAT\s+(?P<fmt>[A-Za-z0-9_]+)[ \t]*(?:\r?\n)?", re.IGNORECASE | re.DOTALL
)
NOT_A_DATA_TARGET = re.compile(rb"\b(VALUES|SELECT|INFILE)\b", re.IGNORECASE)
ERROR_CODE = re.compile(r"Code:\s*(\d+)")
STATEMENT_PREFIX_SCAN = 1 << 16  # the INSERT statement is found in the first 64 KiB of a body

# ClickHouse's HTTP status for the exception codes this project can meet; anything else is 500.
STATUS_BY_CODE = {
    516: 401, 497: 403, 164: 403,  # auth failed, access denied, readonly
    6: 400, 26: 400, 27: 400, 38: 400, 41: 400, 53: 400, 62: 400, 69: 400, 72: 400, 117: 400, 456: 400,
    16: 404, 46: 404, 47: 404, 50: 404, 60: 404, 81: 404, 115: 404,  # unknown column/function/id/type/table/db/setting
}  # fmt: skip


class DoubleError(Exception):
    """An error the double reports the way ClickHouse would (code + message)."""

    def __init__(self, code: int, message: str, name: str) -> None:
        super().__init__(f"Code: {code}. DB::Exception: {message}. ({name})")
        self.code = code


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _setting_literal(value: str) -> str:
    if NUMBER.match(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _decompress(data: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding == "lz4":
        import lz4.frame

        return lz4.frame.decompress(data)
    if encoding == "zstd":
        return _zstd().decompress(data)
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "deflate":
        return zlib.decompress(data)
    raise DoubleError(1, f"Content-Encoding {encoding!r} is not supported by the test double", "NOT_IMPLEMENTED")


def _zstd() -> Any:
    if sys.version_info >= (3, 14):
        from compression import zstd
    else:
        from backports import zstd
    return zstd


def _compressor(accept_encoding: str) -> tuple[str, Any] | None:
    """The first encoding the client accepts that this process can produce."""
    for name in (e.strip().lower() for e in accept_encoding.split(",")):
        try:
            if name == "lz4":
                import lz4.frame

                return name, lz4.frame.compress
            if name == "zstd":
                return name, _zstd().compress
        except ImportError:
            continue
        if name == "gzip":
            return name, gzip.compress
        if name == "deflate":
            return name, zlib.compress
    return None


class Engine:
    """chDB behind one lock: each request runs USE + SET + the statement + SET … DEFAULT atomically."""

    def __init__(self, data_dir: str) -> None:
        from chdb.session import Session

        Path(data_dir).mkdir(parents=True, exist_ok=True)
        self._session = Session(data_dir)
        self._lock = threading.Lock()
        # Insert data is spooled next to the data directory: a killed double leaves nothing in /tmp
        # and the next start clears what it left.
        self._spool = str(Path(data_dir).resolve()) + ".http-double-spool"
        shutil.rmtree(self._spool, ignore_errors=True)
        os.mkdir(self._spool)
        self.version, self.timezone = self._raw("SELECT version(), timezone()").decode().rstrip("\n").split("\t")
        compression = self._raw("SELECT value FROM system.settings WHERE name = 'enable_http_compression'")
        self.http_compression_default = compression.decode().strip() or "0"

    def _raw(self, sql: str, fmt: str = "TabSeparated", params: dict[str, str] | None = None) -> Any:
        result = self._session.query(sql, fmt, params=params or {})
        return result.bytes() if hasattr(result, "bytes") else bytes(result)

    def close(self) -> None:
        with self._lock:
            self._session.close()
        shutil.rmtree(self._spool, ignore_errors=True)

    def execute(self, args: dict[str, str], body: bytes) -> tuple[bytes, str | None, dict[str, str]]:
        """(result bytes, result format or None for a statement without a result set, summary)."""
        database = args.get("database") or "default"
        if not IDENTIFIER.match(database):
            raise DoubleError(81, f"Database {database!r} is not a plain identifier (test double)", "UNKNOWN_DATABASE")
        params = {k[len("param_") :]: v for k, v in args.items() if k.startswith("param_")}
        settings = {k: v for k, v in args.items() if k not in TRANSPORT_ARGS and not k.startswith("param_")}
        for name in settings:
            if not IDENTIFIER.match(name):
                raise DoubleError(115, f"Unknown setting {name!r}", "UNKNOWN_SETTING")
        sql, data = self._split(args.get("query", ""), body)
        with self._lock:
            self._raw(f"USE `{database}`")
            applied: list[str] = []
            try:
                for name, value in settings.items():
                    self._raw(f"SET {name} = {_setting_literal(value)}")
                    applied.append(name)
                if data is not None:
                    return self._insert(sql, data, params)
                return self._query(sql, args.get("default_format"), params)
            finally:
                for name in applied:
                    self._raw(f"SET {name} = DEFAULT")

    @staticmethod
    def _split(url_query: str, body: bytes) -> tuple[str, bytes | None]:
        """The SQL text, and the insert data if this is ``INSERT … FORMAT x`` with data."""
        if url_query:
            match = INSERT_WITH_DATA.fullmatch(url_query.rstrip().encode())
            if match and not NOT_A_DATA_TARGET.search(match["target"]):
                return url_query, body
            # like the server: the body continues the query given in the URL
            return (f"{url_query}\n{body.decode()}" if body else url_query), None
        match = INSERT_WITH_DATA.match(body[:STATEMENT_PREFIX_SCAN])
        if match and not NOT_A_DATA_TARGET.search(match["target"]):
            return body[: match.end()].decode(), body[match.end() :]
        if not body.strip():
            raise DoubleError(62, "Empty query", "SYNTAX_ERROR")
        return body.decode(), None

    def _insert(self, statement: str, data: bytes, params: dict[str, str]) -> tuple[bytes, None, dict[str, str]]:
        match = INSERT_WITH_DATA.match(statement.encode())
        assert match is not None  # _split only returns data for such statements
        fd, path = tempfile.mkstemp(dir=self._spool, suffix=".data")
        try:
            with os.fdopen(fd, "wb") as spool:
                spool.write(data)
            target, fmt = match["target"].decode(), match["fmt"].decode()
            quoted = "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"
            result = self._session.query(f"INSERT INTO {target} FROM INFILE {quoted} FORMAT {fmt}", "TabSeparated", params=params)
            # an INFILE insert reads exactly the rows it writes
            summary = {"written_rows": str(result.rows_read()), "written_bytes": str(result.bytes_read())}
            summary["elapsed_ns"] = str(int(result.elapsed() * 1e9))
            return b"", None, summary
        finally:
            os.unlink(path)

    def _query(self, sql: str, default_format: str | None, params: dict[str, str]) -> tuple[bytes, str | None, dict[str, str]]:
        embedded = TRAILING_FORMAT.search(sql)
        fmt = embedded.group(1) if embedded else (default_format or "TabSeparated")
        probe_names = embedded is None and fmt in ("TabSeparated", "TSV")
        # A statement with a result set always emits the names line, a DDL emits nothing: that is
        # how the double knows whether to send X-ClickHouse-Format, as a server does.
        result = self._session.query(sql, "TabSeparatedWithNames" if probe_names else fmt, params=params)
        data = result.bytes()
        summary = {"read_rows": str(result.rows_read()), "read_bytes": str(result.bytes_read())}
        summary["elapsed_ns"] = str(int(result.elapsed() * 1e9))
        if probe_names:
            if not data:
                return b"", None, summary
            return data[data.find(b"\n") + 1 :], fmt, summary
        return data, fmt, summary


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clickhouse-connect's pooled connections expect
    server_version = "ClickHouse-test-double"
    engine: Engine
    verbose = False

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        if self.verbose:
            super().log_message(format, *args)

    def _handle(self) -> None:
        split = urlsplit(self.path)
        args = dict(parse_qsl(split.query, keep_blank_values=True))
        query_id = args.get("query_id") or str(uuid.uuid4())
        try:
            body = self._read_body()
            if split.path == "/ping" or (split.path in ("", "/") and not body and "query" not in args):
                self._send(Reply(body=b"Ok.\n", headers={"Content-Type": "text/html; charset=UTF-8"}))
                return
            if split.path not in ("", "/"):
                raise DoubleError(1, f"no handler for {split.path} in the test double", "UNSUPPORTED_METHOD")
            # Basic auth (or none) is NOT checked: any user/password is accepted (test double).
            content_type = self.headers.get("Content-Type", "")
            if content_type.startswith("multipart/form-data"):
                args.update(self._form_fields(content_type, body))
                body = b""
            else:
                body = _decompress(body, self.headers.get("Content-Encoding", ""))
            data, fmt, summary = self.engine.execute(args, body)
        except DoubleError as exc:
            self._send_error(exc.code, str(exc), query_id)
            return
        except Exception as exc:  # chDB raises ChdbError("Code: N. DB::Exception: …")
            match = ERROR_CODE.search(str(exc))
            self._send_error(int(match.group(1)) if match else 1001, str(exc), query_id)
            return
        headers = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": self.engine.timezone,
            "X-ClickHouse-Server-Display-Name": DISPLAY_NAME,
            "X-ClickHouse-Summary": json.dumps(summary),
            "Content-Type": "text/tab-separated-values; charset=UTF-8" if fmt in ("TabSeparated", "TSV") else "application/octet-stream",
        }
        if fmt is not None:
            headers["X-ClickHouse-Format"] = fmt
        if data and args.get("enable_http_compression", self.engine.http_compression_default) == "1":
            chosen = _compressor(self.headers.get("Accept-Encoding", ""))
            if chosen is not None:
                headers["Content-Encoding"] = chosen[0]
                data = chosen[1](data)
        self._send(Reply(body=data, headers=headers))

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    @staticmethod
    def _form_fields(content_type: str, body: bytes) -> dict[str, str]:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
        )
        fields: dict[str, str] = {}
        for part in message.iter_parts():
            if part.get_filename():
                raise DoubleError(1, "external data (multipart files) is not supported by the test double", "NOT_IMPLEMENTED")
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            fields[str(name)] = payload.decode()
        return fields

    def _send_error(self, code: int, message: str, query_id: str) -> None:
        text = message if message.startswith("Code:") else f"Code: {code}. DB::Exception: {message}"
        body = f"{text} (version {self.engine.version} {DISPLAY_NAME})\n".encode()
        headers = {
            "X-ClickHouse-Exception-Code": str(code),
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Server-Display-Name": DISPLAY_NAME,
            "Content-Type": "text/plain; charset=UTF-8",
        }
        self._send(Reply(STATUS_BY_CODE.get(code, 500), body, headers))

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("X-Test-Double", "chDB behind a minimal ClickHouse HTTP interface; not a ClickHouse server")
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Keep-Alive", "timeout=10")
        self.end_headers()
        self.wfile.write(reply.body)


def serve(data_dir: str, host: str, port: int, *, verbose: bool = False) -> None:
    """Open chDB on ``data_dir``, listen, print the ready line, serve until SIGTERM/SIGINT."""
    engine = Engine(data_dir)
    handler = type("BoundHandler", (Handler,), {"engine": engine, "verbose": verbose})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True

    def shutdown(*_: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    bound_host, bound_port = server.server_address[:2]
    print(f"{READY_PREFIX} {bound_host} {bound_port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
        engine.close()


# --- the test side: run the double in its own process -------------------------------------


@dataclass
class RunningDouble:
    """A double subprocess. ``url`` carries made-up credentials: the double accepts any."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    data_dir: Path

    @property
    def url(self) -> str:
        return f"http://default:any-password@{self.host}:{self.port}"

    def kill(self) -> None:
        """SIGKILL: an abrupt outage (the chDB lock is released with the process)."""
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_double(
    data_dir: Path, *, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 60.0, stderr: IO[bytes] | int | None = None
) -> RunningDouble:
    """Start the double on ``data_dir`` (port 0 = any free port) and wait until it listens."""
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--path", str(data_dir), "--host", host, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=stderr,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    line = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                process.kill()
                raise RuntimeError(f"chDB HTTP double did not start within {timeout_s}s")
            chunk = os.read(process.stdout.fileno(), 1)
            if not chunk:
                raise RuntimeError(f"chDB HTTP double exited with {process.wait()} before listening")
            line += chunk
    prefix, bound_host, bound_port = line.decode().split()
    if prefix != READY_PREFIX:
        process.kill()
        raise RuntimeError(f"unexpected first line from the chDB HTTP double: {line!r}")
    return RunningDouble(process, bound_host, int(bound_port), Path(data_dir))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="TEST DOUBLE: minimal ClickHouse HTTP interface over chDB")
    parser.add_argument("--path", required=True, help="chDB data directory (one process per directory)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port (printed on the ready line)")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    serve(args.path, args.host, args.port, verbose=args.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
