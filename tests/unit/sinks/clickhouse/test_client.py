"""ClickHouse URLs and identifiers (client.py)."""

from __future__ import annotations

import pytest

from stream_engine.sinks.clickhouse.client import Target, check_identifier, parse_url


def test_url_parsing() -> None:
    assert parse_url("chdb:///var/lib/ch") == Target("chdb", path="/var/lib/ch")
    assert parse_url("http://bob:p%40ss@ch.local:9000") == Target(
        "http", host="ch.local", port=9000, username="bob", password="p@ss"
    )
    assert parse_url("https://ch.local").port == 8443
    assert parse_url("http://ch.local").username == "default"
    with pytest.raises(ValueError):
        parse_url("tcp://ch.local:9000")
    with pytest.raises(ValueError):
        parse_url("chdb://")


@pytest.mark.parametrize("name", ["db; DROP TABLE x", "a-b", "1abc", "", "x" * 200, "db`"])
def test_identifiers_are_plain_names_only(name: str) -> None:
    with pytest.raises(ValueError):
        check_identifier(name)
