"""The pure rules of the ClickHouse HTTP endpoint: arguments, statements, encodings."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path

import pytest

from stream_engine.chdb_server import ClickHouseError, ServerConfig, run_server
from stream_engine.chdb_server._protocol import compressor, decompressor, match_insert, output_format, parse_args


def test_arguments_sort_into_settings_parameters_and_transport() -> None:
    args = parse_args(
        {"query": "SELECT {a:UInt8}", "param_a": "1", "max_threads": "2", "database": "db", "query_id": "q",
         "session_id": "s", "wait_end_of_query": "1", "enable_http_compression": "1", "insert_deduplication_token": "t"},
        {}, method="POST",
    )  # fmt: skip
    assert args.params == {"a": "1"}
    assert args.settings == {"max_threads": "2", "insert_deduplication_token": "t"}
    assert (args.database, args.query_id, args.session_id, args.wait_end_of_query, args.http_compression) == (
        "db", "q", "s", True, True,
    )
    assert args.readonly == 0


def test_get_is_readonly_2_unless_stricter_and_headers_fill_gaps() -> None:
    assert parse_args({"query": "SELECT 1"}, {}, method="GET").readonly == 2
    assert parse_args({"query": "SELECT 1", "readonly": "1"}, {}, method="GET").readonly == 1
    assert parse_args({}, {}, method="POST").readonly == 0
    headers = {"X-ClickHouse-Database": "h", "X-ClickHouse-Format": "JSON"}
    args = parse_args({}, headers, method="POST")
    assert (args.database, args.default_format) == ("h", "JSON")


def test_refused_arguments_carry_clickhouse_codes() -> None:
    for args, code in (({"compress": "1"}, 48), ({"bad name": "1"}, 115), ({"readonly": "x"}, 72), ({"session_timeout": "0"}, 36)):
        with pytest.raises(ClickHouseError) as raised:
            parse_args(args, {}, method="POST")
        assert raised.value.code == code and raised.value.text.startswith(f"Code: {code}. DB::Exception:")


def test_insert_statements_and_their_data_are_told_apart() -> None:
    insert = match_insert(b"INSERT INTO db.t (a, b) FORMAT Native\n\x02\x00binary")
    assert insert is not None and (insert.statement, insert.format, insert.head) == ("INSERT INTO db.t (a, b)", "Native", b"\x02\x00binary")
    with_settings = match_insert(b"insert into t SETTINGS async_insert=1 format CSV 1,2\n")
    assert with_settings is not None and with_settings.statement == "INSERT INTO t SETTINGS async_insert=1"
    assert with_settings.head == b"1,2\n"
    for text in (b"INSERT INTO t VALUES (1)", b"INSERT INTO t SELECT * FROM s FORMAT Native", b"SELECT 1 FORMAT JSON"):
        assert match_insert(text) is None
    assert output_format("SELECT 1 FORMAT JSONEachRow;", "TabSeparated") == ("JSONEachRow", True)
    assert output_format("SELECT 'FORMAT x' AS f", "CSV") == ("CSV", False)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "lz4", "zstd", "xz", "bz2"])
def test_every_encoding_round_trips_in_chunks_and_concatenated_frames(encoding: str) -> None:
    data = b"".join(b"%d,row %d\n" % (i, i) for i in range(20000))
    chosen = compressor(f"br;q=1, {encoding}")
    assert chosen is not None and chosen[0] == encoding
    packed = b"".join(chosen[1].feed(data[i : i + 7000]) for i in range(0, len(data), 7000)) + chosen[1].flush()
    second = compressor(encoding)
    assert second is not None
    packed += second[1].feed(b"tail\n") + second[1].flush()  # a client may send several frames
    reader = decompressor(encoding)
    assert reader is not None
    out = b"".join(reader.feed(packed[i : i + 1000]) for i in range(0, len(packed), 1000)) + reader.flush()
    assert out == data + b"tail\n"


def test_unknown_or_broken_request_encodings_are_errors() -> None:
    assert decompressor("") is None and decompressor("identity") is None
    with pytest.raises(ClickHouseError) as raised:
        decompressor("snappy-ish")
    assert raised.value.code == 89
    reader = decompressor("gzip")
    assert reader is not None
    with pytest.raises(ClickHouseError) as raised:
        reader.feed(gzip.compress(b"x")[:5] + b"garbage" * 10)
    assert raised.value.code == 27


def test_a_non_loopback_address_needs_a_password(tmp_path: Path) -> None:
    with pytest.raises(ClickHouseError, match="without a password"):
        asyncio.run(run_server(ServerConfig(path=tmp_path / "never-opened", host="0.0.0.0")))
    assert not (tmp_path / "never-opened").exists()  # refused before the engine opened anything
