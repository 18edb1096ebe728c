"""ClickHouse: schema migrations, the journaled batching sink, temporal queries.

Importing this package is cheap; clickhouse_connect (and chdb, only for ``chdb://`` URLs) are
imported by the modules that need them.
"""
