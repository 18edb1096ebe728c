"""The pure parts of ClickHouse's HTTP interface: arguments, statements, errors, encodings.

Nothing here touches the engine or the network, so every rule is unit-testable.
"""

from __future__ import annotations

import bz2
import lzma
import re
import sys
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# URL arguments that steer the HTTP layer; every other argument is a ClickHouse setting, and
# `param_<name>` binds `{name:Type}` in the query (ClickHouse's own parameter substitution).
TRANSPORT_ARGS = frozenset(
    {
        "query", "database", "default_format", "query_id", "session_id", "session_timeout", "session_check",
        "wait_end_of_query", "compress", "decompress", "enable_http_compression", "http_zlib_compression_level",
        "send_progress_in_http_headers", "http_headers_progress_interval_ms", "cancel_http_readonly_queries_on_client_close",
        "client_protocol_version", "user", "password", "quota_key", "buffer_size", "role", "stacktrace",
        "http_response_buffer_size", "http_wait_end_of_query", "add_http_cors_header",
    }
)  # fmt: skip
PARAM_PREFIX = "param_"
DEFAULT_FORMAT = "TabSeparated"
DEFAULT_SESSION_TIMEOUT_S = 60.0
MAX_SESSION_TIMEOUT_S = 3600.0

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
ERROR_CODE = re.compile(r"Code:\s*(\d+)\.")
TRAILING_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*$", re.IGNORECASE)
# "INSERT INTO <target> FORMAT <fmt>" then the data: blanks up to one line break separate them,
# as in clickhouse-server. The target may carry a column list and a SETTINGS clause.
INSERT_WITH_DATA = re.compile(
    rb"\s*INSERT\s+INTO\s+(?P<target>.+?)\s+FORMAT\s+(?P<fmt>[A-Za-z0-9_]+)[ \t]*(?:\r?\n)?", re.IGNORECASE | re.DOTALL
)
NOT_A_DATA_TARGET = re.compile(rb"\b(VALUES|SELECT|INFILE|WITH)\b", re.IGNORECASE)
STATEMENT_PREFIX_BYTES = 1 << 16  # an INSERT statement in the body is found in its first 64 KiB

# Output formats whose streamed chunks concatenate into one valid document. chDB formats each
# streamed chunk as a whole document, so formats with a header or a footer (…WithNames, JSON,
# Pretty, XML, Parquet …) are answered in one piece instead.
CONCATENABLE_FORMATS = frozenset(
    {
        "tabseparated", "tsv", "tabseparatedraw", "tsvraw", "csv", "jsoneachrow", "jsonlines", "ndjson",
        "jsoncompacteachrow", "jsonstringseachrow", "jsoncompactstringseachrow", "rowbinary", "native", "values",
        "tskv", "lineasstring", "rawblob", "customseparated",
    }
)  # fmt: skip
TSV_FORMATS = frozenset({"tabseparated", "tsv"})

CONTENT_TYPES = {
    "tabseparated": "text/tab-separated-values; charset=UTF-8",
    "tsv": "text/tab-separated-values; charset=UTF-8",
    "csv": "text/csv; charset=UTF-8; header=absent",
    "csvwithnames": "text/csv; charset=UTF-8; header=present",
    "json": "application/json; charset=UTF-8",
    "jsoncompact": "application/json; charset=UTF-8",
    "jsoneachrow": "application/x-ndjson; charset=UTF-8",
    "xml": "application/xml; charset=UTF-8",
    "native": "application/octet-stream",
    "rowbinary": "application/octet-stream",
    "parquet": "application/octet-stream",
    "arrow": "application/octet-stream",
    "arrowstream": "application/octet-stream",
}

# ClickHouse's exceptionCodeToHTTPStatus (src/Server/HTTP/exceptionCodeToHTTPStatus.cpp), by error
# name; the engine resolves names to codes, so the table cannot drift from the engine's codes.
STATUS_BY_ERROR_NAME: dict[str, int] = {
    "REQUIRED_PASSWORD": 401,
    **dict.fromkeys(("UNKNOWN_USER", "WRONG_PASSWORD", "AUTHENTICATION_FAILED", "SET_NON_GRANTED_ROLE", "ACCESS_DENIED"), 403),
    **dict.fromkeys(
        (
            "BAD_ARGUMENTS", "CANNOT_COMPILE_REGEXP", "CANNOT_PARSE_TEXT", "CANNOT_PARSE_ESCAPE_SEQUENCE",
            "CANNOT_PARSE_QUOTED_STRING", "CANNOT_PARSE_DATE", "CANNOT_PARSE_DATETIME", "CANNOT_PARSE_NUMBER",
            "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING", "CANNOT_PARSE_IPV4", "CANNOT_PARSE_IPV6",
            "CANNOT_PARSE_INPUT_ASSERTION_FAILED", "CANNOT_PARSE_UUID", "DUPLICATE_COLUMN", "ILLEGAL_COLUMN",
            "UNKNOWN_ELEMENT_IN_AST", "UNKNOWN_TYPE_OF_AST_NODE", "THERE_IS_NO_COLUMN", "TOO_DEEP_AST", "TOO_BIG_AST",
            "UNEXPECTED_AST_STRUCTURE", "SYNTAX_ERROR", "INCORRECT_DATA", "TYPE_MISMATCH",
            "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
        ),
        400,
    ),
    **dict.fromkeys(
        (
            "UNKNOWN_TABLE", "UNKNOWN_FUNCTION", "UNKNOWN_IDENTIFIER", "UNKNOWN_TYPE", "UNKNOWN_STORAGE",
            "UNKNOWN_DATABASE", "UNKNOWN_SETTING", "UNKNOWN_DIRECTION_OF_SORTING", "UNKNOWN_AGGREGATE_FUNCTION",
            "UNKNOWN_FORMAT", "UNKNOWN_DATABASE_ENGINE", "UNKNOWN_TYPE_OF_QUERY", "UNKNOWN_ROLE",
        ),
        404,
    ),
    "QUERY_IS_TOO_LARGE": 413,
    "NOT_IMPLEMENTED": 501,
    "SOCKET_TIMEOUT": 503,
    "CANNOT_OPEN_FILE": 503,
    "HTTP_LENGTH_REQUIRED": 411,
    "TIMEOUT_EXCEEDED": 408,
    "CANNOT_SCHEDULE_TASK": 503,
    "UNSUPPORTED_MEDIA_TYPE": 415,
}  # fmt: skip


class ClickHouseError(Exception):
    """An error answered the way ClickHouse answers it: ``Code: N. DB::Exception: … (NAME)``."""

    def __init__(self, code: int, message: str, name: str = "") -> None:
        self.code = code
        self.text = message if message.startswith("Code:") else f"Code: {code}. DB::Exception: {message}. ({name})"
        super().__init__(self.text)

    @classmethod
    def from_engine(cls, exc: BaseException) -> ClickHouseError:
        """chDB raises ``ChdbError``/``RuntimeError`` whose text holds the server's own message."""
        text = str(exc)
        match = ERROR_CODE.search(text)
        if match is None:
            return cls(1001, f"{type(exc).__name__}: {text}", "STD_EXCEPTION")
        return cls(int(match.group(1)), text[match.start() :].strip())


# --- request arguments ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestArgs:
    """What one HTTP request asks for, sorted into ClickHouse's categories."""

    query: str = ""
    database: str | None = None
    default_format: str = DEFAULT_FORMAT
    query_id: str = ""
    session_id: str | None = None
    session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S
    session_check: bool = False
    wait_end_of_query: bool = False
    http_compression: bool | None = None  # None: the engine's default
    readonly: int = 0
    settings: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


def parse_args(args: Mapping[str, str], headers: Mapping[str, str], *, method: str) -> RequestArgs:
    """URL (or form) arguments and ``X-ClickHouse-*`` headers → :class:`RequestArgs`.

    GET implies ``readonly=2`` (reads, and settings changes) unless the request asks for stricter,
    as clickhouse-server does; only POST may write.
    """
    if args.get("compress") == "1" or args.get("decompress") == "1":
        raise ClickHouseError(48, "ClickHouse's own block compression (compress=1/decompress=1) is not supported "
                                  "by this endpoint; use HTTP compression (enable_http_compression=1, Content-Encoding)",
                              "NOT_IMPLEMENTED")  # fmt: skip
    settings: dict[str, str] = {}
    params: dict[str, str] = {}
    for name, value in args.items():
        if name.startswith(PARAM_PREFIX):
            params[name[len(PARAM_PREFIX) :]] = value
        elif name not in TRANSPORT_ARGS:
            if not IDENTIFIER.match(name):
                raise ClickHouseError(115, f"Unknown setting '{name}'", "UNKNOWN_SETTING")
            settings[name] = value
    readonly = _int_arg(settings.pop("readonly", "0"), "readonly")
    if method == "GET" and readonly == 0:
        readonly = 2
    timeout = _float_arg(args.get("session_timeout", str(DEFAULT_SESSION_TIMEOUT_S)), "session_timeout")
    if not 0 < timeout <= MAX_SESSION_TIMEOUT_S:
        raise ClickHouseError(36, f"session_timeout must be in (0, {MAX_SESSION_TIMEOUT_S:.0f}] seconds", "BAD_ARGUMENTS")
    compression = args.get("enable_http_compression")
    return RequestArgs(
        query=args.get("query", ""),
        database=args.get("database") or headers.get("X-ClickHouse-Database") or None,
        default_format=args.get("default_format") or headers.get("X-ClickHouse-Format") or DEFAULT_FORMAT,
        query_id=args.get("query_id", ""),
        session_id=args.get("session_id") or None,
        session_timeout_s=timeout,
        session_check=args.get("session_check") == "1",
        wait_end_of_query=args.get("wait_end_of_query") == "1",
        http_compression=None if compression is None else compression == "1",
        readonly=readonly,
        settings=settings,
        params=params,
    )


def _int_arg(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ClickHouseError(72, f"Cannot parse '{value}' as a number for '{name}'", "CANNOT_PARSE_NUMBER") from None


def _float_arg(value: str, name: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ClickHouseError(72, f"Cannot parse '{value}' as a number for '{name}'", "CANNOT_PARSE_NUMBER") from None


def quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def setting_literal(value: str) -> str:
    """A URL setting value as SQL: numbers as they are, anything else a quoted string (the engine
    converts a string to the setting's type, as the server does with URL arguments)."""
    if NUMBER.match(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# --- statements -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InsertWithData:
    """``INSERT INTO target FORMAT fmt`` followed by data in that format."""

    statement: str  # "INSERT INTO target" (without FORMAT: the engine takes the format apart)
    format: str
    head: bytes  # data that came in the same buffer as the statement


def match_insert(text: bytes) -> InsertWithData | None:
    match = INSERT_WITH_DATA.match(text)
    if match is None or NOT_A_DATA_TARGET.search(match["target"]):
        return None
    target = match["target"].decode("utf-8", errors="strict")
    return InsertWithData(f"INSERT INTO {target}", match["fmt"].decode(), text[match.end() :])


def output_format(sql: str, default_format: str) -> tuple[str, bool]:
    """(the format the result will be in, whether the query names it itself)."""
    embedded = TRAILING_FORMAT.search(sql)
    return (embedded.group(1), True) if embedded else (default_format, False)


def statement_head(sql: str, limit: int = 160) -> str:
    """The start of a statement on one line, for logs (the data of an INSERT is never included)."""
    head = " ".join(sql.split())
    return head if len(head) <= limit else head[: limit - 1] + "…"


# --- HTTP compression -----------------------------------------------------------------------


@dataclass(slots=True)
class Stream:
    """An incremental (de)compressor: ``feed`` chunks, then ``flush`` once."""

    feed: Callable[[bytes], bytes]
    flush: Callable[[], bytes]


def _zstd() -> Any:
    if sys.version_info >= (3, 14):
        from compression import zstd
    else:
        from backports import zstd  # clickhouse-connect's own zstd dependency before 3.14
    return zstd


def decompressor(encoding: str) -> Stream | None:
    """For a request's ``Content-Encoding`` (None for identity); unknown → ClickHouseError."""
    name = encoding.strip().lower()
    if name in ("", "identity"):
        return None
    factories: dict[str, Callable[[], Any]] = {
        "gzip": lambda: zlib.decompressobj(wbits=31),
        "x-gzip": lambda: zlib.decompressobj(wbits=31),
        "deflate": lambda: zlib.decompressobj(wbits=15),
        "xz": lzma.LZMADecompressor,
        "bz2": bz2.BZ2Decompressor,
    }
    if name == "lz4":
        import lz4.frame

        factories[name] = lz4.frame.LZ4FrameDecompressor
    elif name == "zstd":
        factories[name] = _zstd().ZstdDecompressor
    elif name == "br":
        try:
            import brotli
        except ImportError:
            pass
        else:
            reader = brotli.Decompressor()
            return Stream(reader.process, lambda: b"")
    if name not in factories:
        raise ClickHouseError(89, f"Unknown HTTP Content-Encoding '{encoding}'", "UNKNOWN_COMPRESSION_METHOD")
    return _frames(factories[name])


def _frames(new: Callable[[], Any]) -> Stream:
    """A decompressor over concatenated frames (members): a client may send several, and each
    of these decompressors stops at the end of one."""
    current = new()

    def feed(data: bytes) -> bytes:
        nonlocal current
        out: list[bytes] = []
        while data:
            if current.eof:
                current = new()
            try:
                out.append(current.decompress(data))
            except Exception as exc:  # each codec has its own error type
                raise ClickHouseError(
                    27, f"Cannot decompress the request body: {type(exc).__name__}: {exc}", "CANNOT_PARSE_INPUT_ASSERTION_FAILED"
                ) from None
            data = current.unused_data if current.eof else b""
        return b"".join(out)

    def flush() -> bytes:
        if not current.eof and hasattr(current, "flush"):
            return bytes(current.flush())
        return b""

    return Stream(feed, flush)


def compressor(accept_encoding: str) -> tuple[str, Stream] | None:
    """The first encoding of ``Accept-Encoding`` this process can produce, as a stream."""
    for name in (part.split(";")[0].strip().lower() for part in accept_encoding.split(",")):
        if name in ("gzip", "deflate"):
            deflate = zlib.compressobj(wbits=31 if name == "gzip" else 15)
            return name, Stream(deflate.compress, deflate.flush)
        if name == "lz4":
            import lz4.frame

            lz4_writer = lz4.frame.LZ4FrameCompressor()
            started = False

            def lz4_feed(data: bytes) -> bytes:
                nonlocal started
                prefix = b"" if started else lz4_writer.begin()
                started = True
                return prefix + lz4_writer.compress(data)

            return name, Stream(lz4_feed, lambda: (b"" if started else lz4_writer.begin()) + lz4_writer.flush())
        if name == "zstd":
            zstd_writer = _zstd().ZstdCompressor()
            return name, Stream(zstd_writer.compress, lambda: zstd_writer.flush())
        if name == "xz":
            xz_writer = lzma.LZMACompressor()
            return name, Stream(xz_writer.compress, xz_writer.flush)
        if name == "bz2":
            bz2_writer = bz2.BZ2Compressor()
            return name, Stream(bz2_writer.compress, bz2_writer.flush)
    return None
