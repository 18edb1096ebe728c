"""A ClickHouse HTTP endpoint on the real ClickHouse engine (chDB), for the local stack.

``stream-engine clickhouse serve`` (which ``stream-engine stack up`` runs on 127.0.0.1:8123)
opens ONE chDB data directory in its own process and answers ClickHouse's HTTP interface on it,
so every worker, ``stream-engine sql``, curl and clickhouse-connect share one store while they all
run: the shape production has with a ClickHouse server (docker-compose). chDB is ClickHouse's
own engine in-process (clickhouse-local): SQL, every input and output format, ``{name:Type}``
parameter binding, MergeTree and its deduplication, settings and error codes are the engine's.
This package is only the HTTP layer, kept close to clickhouse-server's:

- ``GET /ping``, ``GET /`` → ``Ok.``; the query comes as the ``query`` argument and/or the POST
  body (plain, chunked, multipart form), with ``database``, ``default_format``, ``query_id``,
  ``param_<name>`` bindings, ``session_id`` (+ ``session_timeout``, ``session_check``), and every
  other argument a setting for that request only (``readonly``, ``max_threads``,
  ``insert_deduplication_token`` …). GET implies ``readonly=2``; only POST writes.
- ``INSERT INTO t [(cols)] [SETTINGS …] FORMAT <fmt>`` followed by data streams the data into the
  engine's own parser (Native as clickhouse-connect sends it, RowBinary, CSV, JSONEachRow …).
- Result sets in row formats (TabSeparated, CSV, JSONEachRow, Native, RowBinary …) stream in
  chunks; formats with a header or footer (JSON, Pretty, …WithNames, Parquet) come in one piece.
  ``wait_end_of_query=1`` buffers the whole result so a late error still gets its status.
- HTTP compression both ways: request ``Content-Encoding`` and, with
  ``enable_http_compression=1``, the response (lz4, zstd, gzip, deflate, xz, bz2; br if brotli is
  installed). Response headers ``X-ClickHouse-Query-Id``, ``-Format``, ``-Timezone``, ``-Summary``.
- Errors: ``Code: N. DB::Exception: … (NAME)``, ``X-ClickHouse-Exception-Code`` and the HTTP
  status clickhouse-server uses for that code.
- One user (``default`` without password unless the ClickHouse URL names one); a non-loopback
  address is refused without a password.

Not a clickhouse-server (say so, do not discover it): no users/roles/quotas beyond that one
login; ``compress=1``/``decompress=1`` (ClickHouse's block compression) and external data are
refused; ``client_protocol_version`` is ignored (Native output is revision 0; clickhouse-connect
probes and uses that); temporary tables do not outlive a request; the engine runs as
clickhouse-local, so table functions such as ``file()`` reach this machine's files with the
service's rights — it is a loopback development service, not for untrusted clients.
"""

from stream_engine.chdb_server._app import ServerConfig, is_loopback, run_server
from stream_engine.chdb_server._protocol import ClickHouseError

__all__ = ["ClickHouseError", "ServerConfig", "is_loopback", "run_server"]
