from __future__ import annotations

import pytest

from stream_engine.sinks.clickhouse.client import connect
from stream_engine.sinks.clickhouse.schema import MIGRATIONS, migrate
from tests.integration.clickhouse_data import unique_database

pytestmark = pytest.mark.integration


def test_migrate_twice_is_idempotent(ch_url: str) -> None:
    database = unique_database("mig")
    admin = connect(ch_url, None)
    try:
        assert migrate(admin, database, ttl_days=7) == [m.version for m in MIGRATIONS]
        assert migrate(admin, database, ttl_days=7) == []
        client = connect(ch_url, database)
        versions = client.query("SELECT version FROM schema_migrations ORDER BY version").result_rows
        assert [v for (v,) in versions] == [m.version for m in MIGRATIONS]  # recorded once each
        tables = {
            name: (engine, ddl)
            for name, engine, ddl in client.query(
                "SELECT name, engine, create_table_query FROM system.tables WHERE database = {db:String}",
                parameters={"db": database},
            ).result_rows
        }
        assert tables["proposition_log"][0] == "ReplacingMergeTree"
        assert "toIntervalDay(7)" in tables["proposition_log"][1]
        assert "idx_alert_id" in tables["proposition_log"][1]
        assert "ORDER BY (alert_type, alert_id, origin)" in tables["proposition_log"][1]
        assert tables["latency_metrics"][0] == "ReplacingMergeTree"
        assert tables["proposition_minute"][0] == "AggregatingMergeTree"
        assert tables["proposition_minute_mv"][0] == "MaterializedView"
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {database}")


def test_migrate_rejects_unsafe_names_and_ttl(ch_url: str) -> None:
    admin = connect(ch_url, None)
    with pytest.raises(ValueError):
        migrate(admin, "x; DROP DATABASE system", ttl_days=7)
    with pytest.raises(ValueError):
        migrate(admin, unique_database(), ttl_days=0)


def test_cli_migrate_and_info(ch_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from stream_engine.cli import main

    database = unique_database("cli")
    try:
        assert main(["--clickhouse-url", ch_url, "--clickhouse-database", database, "clickhouse", "migrate"]) == 0
        assert f"applied migrations {[m.version for m in MIGRATIONS]}" in capsys.readouterr().out
        assert main(["--clickhouse-url", ch_url, "--clickhouse-database", database, "clickhouse", "migrate"]) == 0
        assert "schema up to date" in capsys.readouterr().out
        assert main(["--clickhouse-url", ch_url, "--clickhouse-database", database, "clickhouse", "info"]) == 0
        assert "proposition_log      0 rows" in capsys.readouterr().out
    finally:
        connect(ch_url, None).command(f"DROP DATABASE IF EXISTS {database}")
