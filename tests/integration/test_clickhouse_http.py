"""The same client/schema/sink/query path over HTTP, against a real ClickHouse server and the chDB endpoint.

``real-server`` runs only when STREAM_ENGINE_CLICKHOUSE_URL is an http(s) URL (no modern server is
installable on the dev machines, see shared notes); otherwise it is SKIPPED, which is not a pass.
``chdb-server`` runs the same test against the local stack's endpoint (`stream-engine clickhouse
serve`: ClickHouse's HTTP interface over chDB, not a clickhouse-server), so the HTTP path runs everywhere.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stream_engine.sinks.clickhouse import queries
from stream_engine.sinks.clickhouse.client import connect
from stream_engine.sinks.clickhouse.schema import MIGRATIONS, migrate
from stream_engine.sinks.clickhouse.sink import ClickHouseSink
from tests.integration.clickhouse_data import make_rows, unique_database

pytestmark = pytest.mark.integration


async def test_http_migrate_write_query(http_clickhouse: str, tmp_path: Path) -> None:
    database = unique_database("http")
    admin = connect(http_clickhouse, None)
    try:
        assert migrate(admin, database, ttl_days=30) == [m.version for m in MIGRATIONS]
        assert migrate(admin, database, ttl_days=30) == []
        sink = ClickHouseSink(lambda: connect(http_clickhouse, database), tmp_path / "j", flush_interval_s=0.05)
        await sink.start()
        rows = make_rows(500)
        await sink.write(rows, [])
        await sink.stop()
        client = connect(http_clickhouse, database)
        assert client.query("SELECT count() FROM proposition_log FINAL").result_rows[0][0] == 500
        got = queries.get_proposition_logs_batch(client, ["a1", "a2", "x' OR 1=1 --"])
        assert set(got) == {"a1", "a2"}
        now = datetime.now(UTC)
        result = queries.latency_percentiles(client, now - timedelta(hours=1), now + timedelta(hours=1), "1h")
        assert sum(r["count"] for r in result) == 500
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {database}")
