"""What the engine here (chDB 26.9, embedded and behind the stack's HTTP endpoint) does with
``insert_deduplication_token`` on non-replicated MergeTree tables: the facts the sink's
exactly-once inserts rest on, checked rather than assumed.

* With ``non_replicated_deduplication_window`` > 0 a block re-sent with the same token is dropped,
  also by a new process on the same data directory (the dedup log is on disk); without the
  window (the MergeTree default, 0) the token does nothing.
* A materialized view is fed by the re-sent block even when its source table drops it, unless
  ``deduplicate_blocks_in_dependent_materialized_views`` is on (this engine's default is 1; older
  servers default to 0, so the sink sets it on every insert) and the view's target table has a
  window of its own.
* Without a token the window still drops a byte-identical re-sent block (by its content hash); a
  token makes the block's identity explicit, so the same rows under another token are stored again.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.clickhouse import start_server
from stream_engine.sinks.clickhouse.client import connect
from tests.integration.clickhouse_data import unique_database

pytestmark = pytest.mark.integration

DAYS = [datetime.date(2024, 1, 1), datetime.date(2024, 1, 1), datetime.date(2024, 1, 2)]  # a block over 2 partitions


@pytest.fixture(params=["embedded", "http-endpoint"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "embedded":
        return str(request.getfixturevalue("ch_url"))
    return str(request.getfixturevalue("clickhouse_server").url)


@pytest.fixture
def client(url: str) -> Iterator[Any]:
    database = unique_database("dedup")
    admin = connect(url, None)
    admin.command(f"CREATE DATABASE {database}")
    yield connect(url, database)
    admin.command(f"DROP DATABASE IF EXISTS {database}")


def _table(client: Any, name: str, window: int, engine: str = "ReplacingMergeTree") -> None:
    client.command(
        f"CREATE TABLE {name} (id String, day Date) ENGINE = {engine} PARTITION BY day ORDER BY id "
        f"SETTINGS non_replicated_deduplication_window = {window}"
    )


def _insert(client: Any, table: str, ids: list[str], token: str | None, **settings: Any) -> None:
    if token is not None:
        settings["insert_deduplication_token"] = token
    client.insert(table, [ids, DAYS[: len(ids)]], column_names=["id", "day"], column_type_names=["String", "Date"],
                  column_oriented=True, settings=settings)  # fmt: skip


def _count(client: Any, table: str) -> int:
    return int(client.query(f"SELECT count() FROM {table}").result_rows[0][0])  # no FINAL: what is stored


@pytest.mark.parametrize("engine", ["MergeTree", "ReplacingMergeTree"])
def test_the_same_token_is_stored_once_with_a_window_and_twice_without(client: Any, engine: str) -> None:
    _table(client, "with_window", 100, engine)
    _table(client, "without_window", 0, engine)
    for table in ("with_window", "without_window"):
        _insert(client, table, ["a", "b", "c"], "seg-1/t")
        _insert(client, table, ["a", "b", "c"], "seg-1/t")  # the retry of the same block
        _insert(client, table, ["a", "b", "c"], "seg-2/t")  # the same rows under another token: another block
    assert _count(client, "with_window") == 6
    assert _count(client, "without_window") == 9


def test_a_view_is_fed_by_a_dropped_block_unless_told_to_deduplicate(client: Any) -> None:
    counts = {}
    for name, dedup_views in (("plain", 0), ("dedup", 1)):
        _table(client, f"src_{name}", 100)
        client.command(
            f"CREATE TABLE agg_{name} (day Date, n AggregateFunction(count)) ENGINE = AggregatingMergeTree "
            "PARTITION BY day ORDER BY day SETTINGS non_replicated_deduplication_window = 100"
        )
        client.command(f"CREATE MATERIALIZED VIEW mv_{name} TO agg_{name} AS SELECT day, countState() AS n FROM src_{name} GROUP BY day")
        for _ in range(3):
            _insert(client, f"src_{name}", ["a", "b", "c"], "seg-1/t", deduplicate_blocks_in_dependent_materialized_views=dedup_views)
        assert _count(client, f"src_{name}") == 3
        counts[name] = int(client.query(f"SELECT countMerge(n) FROM agg_{name}").result_rows[0][0])
    assert counts == {"plain": 9, "dedup": 3}


def test_the_token_is_remembered_by_a_new_process_on_the_same_data(tmp_path: Path) -> None:
    data = tmp_path / "chdb"
    database = unique_database("dedup")
    for attempt in range(2):  # the second process is the worker after a crash, replaying the same block
        server = start_server(data)
        try:
            client = connect(server.url, None)
            client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
            client = connect(server.url, database)
            if attempt == 0:
                _table(client, "t", 100)
            _insert(client, "t", ["a", "b", "c"], "seg-1/t")
            assert _count(client, "t") == 3
        finally:
            server.stop()


def test_view_blocks_of_different_tokens_are_kept_even_when_identical(client: Any) -> None:
    """Deduplicating the view must not merge two real blocks whose aggregates happen to be equal."""
    _table(client, "src", 100)
    client.command(
        "CREATE TABLE agg (day Date, n AggregateFunction(count)) ENGINE = AggregatingMergeTree "
        "PARTITION BY day ORDER BY day SETTINGS non_replicated_deduplication_window = 100"
    )
    client.command("CREATE MATERIALIZED VIEW mv TO agg AS SELECT day, countState() AS n FROM src GROUP BY day")
    for token, ids in (("seg-1", ["a", "b", "c"]), ("seg-2", ["d", "e", "f"]), ("seg-1", ["a", "b", "c"])):
        _insert(client, "src", ids, token, deduplicate_blocks_in_dependent_materialized_views=1)
    assert _count(client, "src") == 6
    assert int(client.query("SELECT countMerge(n) FROM agg").result_rows[0][0]) == 6
