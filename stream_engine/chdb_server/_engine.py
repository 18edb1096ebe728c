"""The engine side: chDB handles, one per request, on the one data directory this process owns.

chDB 4 hosts one engine per process, bound to one data directory, and hands out any number of
independent handles to it; each handle has its own session state (``USE``, ``SET``) and queries
on different handles run in parallel. So every request gets a fresh handle: its database, its
settings and its ``readonly`` level apply to that request only and can never leak into the next
(a stale ``insert_deduplication_token`` would silently drop someone else's insert). A handle
costs well under a millisecond. Everything here is blocking: the HTTP layer calls it from a
thread pool.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream_engine.chdb_server._protocol import (
    CONCATENABLE_FORMATS,
    STATUS_BY_ERROR_NAME,
    TSV_FORMATS,
    ClickHouseError,
    quote_identifier,
    setting_literal,
)

# chDB's Python wrapper turns these "formats" into Python objects; they are not ClickHouse formats.
PYTHON_ONLY_FORMATS = frozenset({"dataframe", "datastore", "arrowtable"})
NOT_STREAMABLE = "Streaming query is not supported"
SESSION_STATEMENT_PREFIXES = ("SET ", "USE ")
MAX_SESSION_STATEMENTS = 256
SUMMARY_FIELDS = ("read_rows", "read_bytes", "written_rows", "written_bytes", "total_rows_to_read", "result_rows",
                  "result_bytes", "elapsed_ns")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Plan:
    """How to prepare a handle for one request: session state, then the request's own."""

    database: str | None = None
    session_statements: tuple[str, ...] = ()
    settings: dict[str, str] = field(default_factory=dict)
    readonly: int = 0


@dataclass(slots=True)
class Answer:
    """A statement's outcome: ``format`` is None when it produced no result set (DDL, INSERT …)."""

    format: str | None
    body: bytes = b""
    stream: Any = None  # chDB StreamingResult: more chunks to fetch
    summary: dict[str, str] = field(default_factory=dict)


class Engine:
    """The chDB engine on ``path``; the first handle holds the directory's lock until ``close``."""

    def __init__(self, path: Path) -> None:
        from chdb import state

        path.mkdir(parents=True, exist_ok=True)
        self.path = str(path.resolve())
        self._connect: Callable[[str], Any] = state.connect
        try:
            self._keeper = state.connect(self.path)
        except Exception as exc:  # e.g. "Cannot lock file …/status": another process owns the directory
            raise ClickHouseError.from_engine(exc) from exc
        self.version, self.timezone = self._scalar_row("SELECT version(), timezone()")
        compression = self._scalar_row("SELECT value FROM system.settings WHERE name = 'enable_http_compression'")
        self.http_compression_default = (compression[0] if compression else "0") == "1"
        self._status_by_code = self._status_table()

    def _scalar_row(self, sql: str) -> list[str]:
        return self._keeper.query(sql, "TabSeparated").bytes().decode().rstrip("\n").split("\t")

    def _status_table(self) -> dict[int, int]:
        names = ", ".join(f"'{name}'" for name in STATUS_BY_ERROR_NAME)
        rows = self._keeper.query(
            f"SELECT number, errorCodeToName(number) AS name FROM numbers(2000) WHERE name IN ({names})", "TabSeparated"
        ).bytes().decode().splitlines()  # fmt: skip
        return {int(code): STATUS_BY_ERROR_NAME[name] for code, name in (row.split("\t") for row in rows)}

    def http_status(self, code: int) -> int:
        return self._status_by_code.get(code, 500)

    def close(self) -> None:
        self._keeper.close()

    # --- per request --------------------------------------------------------------------

    def open(self, plan: Plan) -> Any:
        """A fresh handle prepared by ``plan``; the caller closes it."""
        conn = self._connect(self.path)
        try:
            for statement in plan.session_statements:
                conn.query(statement, "TabSeparated")
            if plan.database:
                conn.query(f"USE {quote_identifier(plan.database)}", "TabSeparated")
            for name, value in plan.settings.items():
                conn.query(f"SET {name} = {setting_literal(value)}", "TabSeparated")
            if plan.readonly:  # last: readonly=1 forbids changing settings after it
                conn.query(f"SET readonly = {int(plan.readonly)}", "TabSeparated")
        except Exception as exc:
            conn.close()
            raise ClickHouseError.from_engine(exc) from exc
        return conn

    def execute(self, conn: Any, sql: str, fmt: str, fmt_named_in_query: bool, params: dict[str, str]) -> Answer:
        """Run a statement. SELECTs in a concatenable format stream; everything else is answered whole.

        chDB's streaming API parses the statement with ClickHouse's parser first (syntax errors,
        "Multi-statements are not allowed") and refuses statements that produce no stream
        (DDL, INSERT, SET, SHOW …), which tells a result set from a command.
        """
        if fmt.lower() in PYTHON_ONLY_FORMATS:
            raise ClickHouseError(73, f"Unknown format {fmt}", "UNKNOWN_FORMAT")
        try:
            stream = conn.send_query(sql, fmt, params=params)
        except Exception as exc:
            error = ClickHouseError.from_engine(exc)
            if error.code == 36 and NOT_STREAMABLE in error.text:
                return self._command(conn, sql, fmt, fmt_named_in_query, params)
            raise error from exc
        if fmt.lower() in CONCATENABLE_FORMATS:
            # Headers go out before the rows are counted (as clickhouse-server's, without wait_end_of_query).
            return Answer(fmt, stream=stream, summary=dict.fromkeys(SUMMARY_FIELDS, "0"))
        # chDB formats every streamed chunk as a whole document (header, footer): answer in one piece.
        stream.cancel()
        result = self._run(conn, sql, fmt, params)
        return Answer(fmt, result.bytes(), summary=_summary(result))

    def _command(self, conn: Any, sql: str, fmt: str, fmt_named_in_query: bool, params: dict[str, str]) -> Answer:
        # A command (DDL, INSERT … VALUES) emits nothing; SHOW/DESCRIBE/EXISTS emit a result set,
        # which may be empty. In TabSeparated a result set always has its names line, so run it
        # WithNames and strip that line: ClickHouse's header X-ClickHouse-Format (and
        # clickhouse-connect's command()) depends on the difference.
        probe = fmt.lower() in TSV_FORMATS and not fmt_named_in_query
        result = self._run(conn, sql, "TabSeparatedWithNames" if probe else fmt, params)
        body = result.bytes()
        if probe:
            if not body:
                return Answer(None, summary=_summary(result))
            return Answer(fmt, body[body.find(b"\n") + 1 :], summary=_summary(result))
        return Answer(fmt if body else None, body, summary=_summary(result))

    @staticmethod
    def _run(conn: Any, sql: str, fmt: str, params: dict[str, str]) -> Any:
        try:
            return conn.query(sql, fmt, params=params)
        except Exception as exc:
            raise ClickHouseError.from_engine(exc) from exc

    @staticmethod
    def fetch(stream: Any) -> bytes | None:
        """The next chunk of a streamed result, None at the end."""
        try:
            chunk = stream.fetch()
        except Exception as exc:
            raise ClickHouseError.from_engine(exc) from exc
        return None if chunk is None else chunk.bytes()

    @staticmethod
    def cancel(stream: Any) -> None:
        with contextlib.suppress(Exception):
            stream.cancel()

    @staticmethod
    def begin_insert(conn: Any, statement: str, fmt: str) -> Any:
        try:
            return conn.send_insert(statement, fmt)
        except Exception as exc:
            raise ClickHouseError.from_engine(exc) from exc

    @staticmethod
    def append(inserter: Any, data: bytes) -> None:
        try:
            inserter.append(data)
        except Exception as exc:
            raise ClickHouseError.from_engine(exc) from exc

    @staticmethod
    def finish(inserter: Any) -> dict[str, str]:
        try:
            result = inserter.finish()
        except Exception as exc:
            raise ClickHouseError.from_engine(exc) from exc
        return {
            "read_rows": "0", "read_bytes": "0",
            "written_rows": str(result.rows_written), "written_bytes": str(result.bytes_written),
            "total_rows_to_read": "0", "result_rows": str(result.rows_written),
            "result_bytes": str(result.bytes_written), "elapsed_ns": str(int(result.elapsed * 1e9)),
        }  # fmt: skip

    @staticmethod
    def abort_insert(inserter: Any) -> None:
        with contextlib.suppress(Exception):
            inserter.cancel()

    @staticmethod
    def close_handle(conn: Any) -> None:
        with contextlib.suppress(Exception):
            conn.close()


def _summary(result: Any) -> dict[str, str]:
    return {
        "read_rows": str(result.rows_read()), "read_bytes": str(result.bytes_read()),
        "written_rows": str(result.rows_written()), "written_bytes": str(result.bytes_written()),
        "total_rows_to_read": str(result.rows_read()), "result_rows": "0", "result_bytes": str(len(result.bytes())),
        "elapsed_ns": str(int(result.elapsed() * 1e9)),
    }  # fmt: skip


# --- HTTP sessions ----------------------------------------------------------------------------


@dataclass(slots=True)
class Session:
    """``session_id`` state: the ``SET``/``USE`` statements run in it, replayed on each handle."""

    statements: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_SESSION_STATEMENTS))
    busy: bool = False
    expires_at: float = 0.0

    def remember(self, sql: str) -> None:
        if sql.lstrip().upper().startswith(SESSION_STATEMENT_PREFIXES):
            self.statements.append(sql.strip().rstrip(";"))


class Sessions:
    """Named sessions as clickhouse-server keeps them: one request at a time, expiring when idle.

    (Temporary tables do not outlive a request here: each request runs on a new handle.)
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._live: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._live)

    @contextlib.asynccontextmanager
    async def use(self, session_id: str | None, timeout_s: float, check: bool) -> AsyncIterator[Session | None]:
        if session_id is None:
            yield None
            return
        now = self._clock()
        for expired in [k for k, s in self._live.items() if not s.busy and s.expires_at <= now]:
            del self._live[expired]
        session = self._live.get(session_id)
        if session is None:
            if check:
                raise ClickHouseError(372, f"Session {session_id} not found", "SESSION_NOT_FOUND")
            session = self._live[session_id] = Session()
        if session.busy:
            raise ClickHouseError(373, f"Session {session_id} is locked by a concurrent client", "SESSION_IS_LOCKED")
        session.busy = True
        try:
            yield session
        finally:
            session.busy = False
            session.expires_at = self._clock() + timeout_s

    def statements(self, session: Session | None) -> tuple[str, ...]:
        return tuple(session.statements) if session is not None else ()
