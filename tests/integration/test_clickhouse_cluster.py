"""The cluster DDL (`clickhouse migrate --cluster`), rendered from the migrations and parsed by ClickHouse.

chDB cannot run a cluster (no Keeper, no remote servers), so the rendering is checked two ways:
every statement parses with ClickHouse's own parser (``formatQuery`` in the real engine), and its
structure is what a cluster needs (ON CLUSTER, Replicated engines with shard/replica paths and the
replicated dedup settings, a Distributed table beside each MergeTree table).
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest

from stream_engine.sinks.clickhouse import schema
from stream_engine.sinks.clickhouse.cluster import DEDUP_WINDOW_BLOCKS, UnknownStatement, render, render_text

pytestmark = pytest.mark.integration

CREATE_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)\.(\w+) ON CLUSTER 'prod'")


def _parsed(client: Any, statement: str) -> str:
    """ClickHouse's own parser, through the real engine: raises on a syntax error."""
    return str(client.query("SELECT formatQuery({q:String})", parameters={"q": statement}).result_rows[0][0])


@pytest.fixture
def parser(ch_url: str) -> Any:
    from stream_engine.sinks.clickhouse.client import connect

    return connect(ch_url, None)


def _all_statements(migrations: Any = schema.MIGRATIONS) -> list[str]:
    bootstrap, rendered = render("stream_engine", 90, "prod", migrations)
    return bootstrap + [s for m in rendered for s in m.statements]


def test_every_statement_parses_and_runs_on_the_whole_cluster(parser: Any) -> None:
    statements = _all_statements()
    for statement in statements:
        formatted = _parsed(parser, statement)
        assert "ON CLUSTER prod" in formatted, formatted
    assert statements[0] == "CREATE DATABASE IF NOT EXISTS stream_engine ON CLUSTER 'prod'"


def test_every_mergetree_table_is_replicated_with_dedup_and_has_a_distributed_twin(parser: Any) -> None:
    statements = _all_statements()
    creates = {m.group(2): s for s in statements if (m := CREATE_TABLE.match(s))}
    sources = [s for m in schema.MIGRATIONS for s in m.statements if "MergeTree" in s and "CREATE TABLE" in s]
    local = [name for name, s in creates.items() if "Replicated" in s]
    assert len(local) == len(sources) + 1  # + schema_migrations
    for name in local:
        formatted = _parsed(parser, creates[name])
        assert f"'/clickhouse/tables/{{shard}}/stream_engine/{name}', '{{replica}}'" in formatted
        assert f"replicated_deduplication_window = {DEDUP_WINDOW_BLOCKS}" in formatted
        assert "replicated_deduplication_window_seconds = " in formatted
        assert "non_replicated" not in formatted
        if name != "schema_migrations":  # metadata, read on the node migrate talks to
            twin = creates[f"{name}_all"]
            assert twin.endswith(f"AS stream_engine.{name} ENGINE = Distributed('prod', 'stream_engine', '{name}')")
    assert "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/stream_engine/proposition_log', " \
           "'{replica}', decided_at)" in creates["proposition_log"]  # fmt: skip
    # the columns are the migration's, untouched
    source = next(s for s in sources if "proposition_log" in s.split("(")[0])
    columns = source[source.index("(") : source.index("ENGINE")]
    assert columns.strip() in creates["proposition_log"]


def test_a_new_migration_reaches_the_cluster_ddl_by_itself(parser: Any) -> None:
    """The rendering is generic: shapes a future migration may use (as the sink's next ones do)."""
    future = (
        *schema.MIGRATIONS,
        schema.Migration(90, "audit", (
            "CREATE TABLE IF NOT EXISTS $db.audit (id String, v UInt64, at DateTime64(3, 'UTC')) "
            "ENGINE = ReplacingMergeTree(toUInt64(v)) ORDER BY id TTL toDateTime(at) + INTERVAL $ttl_days DAY "
            "SETTINGS index_granularity = 4096, non_replicated_deduplication_window = 100",
            "CREATE MATERIALIZED VIEW IF NOT EXISTS $db.audit_mv TO $db.proposition_log AS SELECT * FROM $db.audit",
            "ALTER TABLE $db.audit ADD COLUMN IF NOT EXISTS note String DEFAULT ''",
            "ALTER TABLE $db.audit MODIFY SETTING non_replicated_deduplication_window = 100",
        )),
    )  # fmt: skip
    _, rendered = render("stream_engine", 7, "prod", future)
    audit = rendered[-1].statements
    for statement in audit:
        _parsed(parser, statement)
    create, twin, view, alter, alter_twin, setting = audit
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/stream_engine/audit', '{replica}', toUInt64(v))" in create
    assert "index_granularity = 4096, replicated_deduplication_window = 100" in create
    assert "replicated_deduplication_window_seconds" in create and "INTERVAL 7 DAY" in create
    assert "audit_all ON CLUSTER 'prod' AS stream_engine.audit ENGINE = Distributed" in twin
    assert view.startswith("CREATE MATERIALIZED VIEW IF NOT EXISTS stream_engine.audit_mv ON CLUSTER 'prod' TO ")
    assert alter.startswith("ALTER TABLE stream_engine.audit ON CLUSTER 'prod' ADD COLUMN")
    assert alter_twin.startswith("ALTER TABLE stream_engine.audit_all ON CLUSTER 'prod' ADD COLUMN")
    assert setting == "ALTER TABLE stream_engine.audit ON CLUSTER 'prod' MODIFY SETTING replicated_deduplication_window = 100"


def test_an_unknown_statement_shape_is_an_error_not_a_pass_through() -> None:
    for statement in ("INSERT INTO $db.t VALUES (1)", "CREATE TABLE IF NOT EXISTS $db.m (a UInt8) ENGINE = Memory"):
        with pytest.raises(UnknownStatement):
            render("stream_engine", 7, "prod", (schema.Migration(1, "x", (statement,)),))
    with pytest.raises(ValueError, match="cluster name"):
        render("stream_engine", 7, "prod'; DROP", schema.MIGRATIONS)


def test_the_cli_prints_the_script() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "stream_engine", "clickhouse", "migrate", "--cluster", "prod", "--print"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert done.stdout == render_text("stream_engine", 90, "prod")
    assert done.stdout.count("ON CLUSTER 'prod'") == len(_all_statements())
    assert "INSERT INTO stream_engine.schema_migrations" in done.stdout
