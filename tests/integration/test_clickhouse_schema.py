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
        assert "ORDER BY (alert_type, alert_id)" in tables["proposition_log"][1]
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


def test_every_table_the_sink_writes_drops_a_block_resent_with_its_token(ch_url: str) -> None:
    """The dedup windows are what make a retried or replayed insert exactly once (MergeTree's is 0),
    down the views: decision_audit -> proposition_log -> proposition_minute."""
    from stream_engine.sinks.clickhouse.rows import LOG_COLUMNS, LOG_TYPES, METRIC_COLUMNS, METRIC_TYPES
    from tests.integration.clickhouse_data import make_metrics, make_rows

    database = unique_database("tok")
    admin = connect(ch_url, None)
    try:
        migrate(admin, database, ttl_days=7)
        client = connect(ch_url, database)
        rows, metrics = make_rows(10), make_metrics(3)
        settings = {"insert_deduplication_token": "seg-1", "deduplicate_blocks_in_dependent_materialized_views": 1}
        for _ in range(2):
            client.insert("decision_audit", list(zip(*rows)), column_names=LOG_COLUMNS, column_type_names=LOG_TYPES,
                          column_oriented=True, settings=settings)  # fmt: skip
            client.insert("latency_metrics", list(zip(*metrics)), column_names=METRIC_COLUMNS, column_type_names=METRIC_TYPES,
                          column_oriented=True, settings=settings)  # fmt: skip
        tables = ("proposition_log", "decision_audit", "latency_metrics")
        counts = {t: client.query(f"SELECT count() FROM {t}").result_rows[0][0] for t in tables}
        assert counts == {"proposition_log": 10, "decision_audit": 10, "latency_metrics": 3}
        assert client.query("SELECT countMerge(decisions) FROM proposition_minute").result_rows[0][0] == 10
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {database}")


def test_a_database_of_the_previous_schema_upgrades_and_keeps_its_rows(ch_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from stream_engine.sinks.clickhouse import schema

    database = unique_database("upg")
    admin = connect(ch_url, None)
    try:
        with monkeypatch.context() as m:
            m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:3])  # the schema as released before
            assert migrate(admin, database, ttl_days=7) == [1, 2, 3]
        client = connect(ch_url, database)
        client.command(
            "INSERT INTO proposition_log (alert_id, alert_type, key, severity, source, received_at, decided_at, mode,"
            " cache_tier, latency_ms, batch_size, partition, offset, worker, propositions, engine_version)"
            " VALUES ('old1', 'scam', 'k', 'high', 'src', now64(3), now64(3), 'auto', 'lru', 1.0, 1, 2, 7, 'w', '[]', 'v')"
        )
        assert migrate(admin, database, ttl_days=7) == [m.version for m in MIGRATIONS[3:]]
        got = client.query("SELECT alert_id, topic, origin, attempt FROM proposition_log").result_rows
        assert [tuple(r) for r in got] == [("old1", "", "stream", "")]
        ddl = dict(client.query("SELECT name, create_table_query FROM system.tables WHERE database = {db:String}",
                                parameters={"db": database}).result_rows)  # fmt: skip
        for table in ("proposition_log", "latency_metrics", "decision_audit"):
            assert "non_replicated_deduplication_window" in ddl[table], table
        assert migrate(admin, database, ttl_days=7) == []
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {database}")
