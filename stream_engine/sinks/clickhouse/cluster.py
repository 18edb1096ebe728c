"""The schema for a ClickHouse cluster: ``stream-engine clickhouse migrate --cluster NAME [--print]``.

Rendered from :data:`schema.MIGRATIONS` statement by statement (never a hand-kept copy), so a new
migration reaches the cluster DDL by itself; a statement shape this module does not know is an
error, not a silent pass-through. For each statement:

* ``ON CLUSTER 'NAME'`` after the object name (CREATE DATABASE/TABLE/VIEW, ALTER, DROP), so every
  node runs it;
* every ``…MergeTree`` engine becomes ``Replicated…MergeTree('/clickhouse/tables/{shard}/DB/TABLE',
  '{replica}', …)`` (the ``{shard}``/``{replica}`` macros come from each server's config), with the
  replicated deduplication settings: ``replicated_deduplication_window`` (the blocks whose
  ``insert_deduplication_token`` a table remembers: a re-sent sink block is dropped on any replica)
  and ``replicated_deduplication_window_seconds``; a non-replicated dedup setting becomes its
  replicated twin;
* next to each MergeTree table a ``TABLE_all`` table, ``ENGINE = Distributed('NAME', DB, TABLE)``,
  for reads across shards (column changes reach it too).

Workers keep inserting into the table names they know, on the replica they connect to; views run
on that replica and their targets replicate. With one shard (replicas only) every table is complete
on every node; with several, read ``*_all`` (duplicates collapse within a shard only).
chDB cannot run a cluster (no Keeper, no remote servers), so this output is checked by parsing it
with ClickHouse's own parser (tests), not by running it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from string import Template
from typing import TYPE_CHECKING

from stream_engine.sinks.clickhouse import schema
from stream_engine.sinks.clickhouse.client import check_identifier

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
DISTRIBUTED_SUFFIX = "_all"
DEDUP_WINDOW_BLOCKS = 10_000  # as many blocks as the single-server tables remember
DEDUP_WINDOW_SECONDS = 7 * 24 * 3600  # ClickHouse's default, written out: replays come within days

_NAME = r"(?P<name>[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*)"
CREATE_TABLE = re.compile(rf"^\s*CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?{_NAME}", re.IGNORECASE)
CREATE_VIEW = re.compile(rf"^\s*CREATE\s+(?:MATERIALIZED\s+)?VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?{_NAME}", re.IGNORECASE)
ALTER_TABLE = re.compile(rf"^\s*ALTER\s+TABLE\s+{_NAME}", re.IGNORECASE)
DROP = re.compile(rf"^\s*DROP\s+(?:TABLE|VIEW|DICTIONARY)\s+(?:IF\s+EXISTS\s+)?{_NAME}", re.IGNORECASE)
ENGINE = re.compile(r"ENGINE\s*=\s*(?P<engine>[A-Za-z]*MergeTree)\b", re.IGNORECASE)
SETTINGS_CLAUSE = re.compile(r"^\s*SETTINGS\b(?P<settings>.*)$", re.MULTILINE | re.DOTALL)
MODIFY_SETTING = re.compile(r"\bMODIFY\s+SETTING\b", re.IGNORECASE)
COLUMN_CHANGE = re.compile(r"\b(?:ADD|DROP|MODIFY|RENAME|CLEAR|COMMENT)\s+COLUMN\b", re.IGNORECASE)
NON_REPLICATED_DEDUP = re.compile(r"\bnon_replicated_deduplication_window\b")


class UnknownStatement(ValueError):
    """A migration statement whose cluster form this module cannot derive."""


@dataclass(frozen=True, slots=True)
class ClusterMigration:
    version: int
    name: str
    statements: tuple[str, ...]


def check_cluster(name: str) -> str:
    if not CLUSTER_NAME.match(name):
        raise ValueError(f"not a plain cluster name: {name!r}")
    return name


def dedup_settings() -> str:
    """The replicated tables' deduplication settings (a SETTINGS list)."""
    return f"replicated_deduplication_window = {DEDUP_WINDOW_BLOCKS}, replicated_deduplication_window_seconds = {DEDUP_WINDOW_SECONDS}"


def render(database: str, ttl_days: int, cluster: str, migrations: Sequence[schema.Migration] = schema.MIGRATIONS) -> tuple[
    list[str], list[ClusterMigration]
]:  # fmt: skip
    """(the bootstrap statements: database and ``schema_migrations``, then each migration's statements)."""
    db, cluster = check_identifier(database), check_cluster(cluster)
    on = f"ON CLUSTER '{cluster}'"
    bootstrap = [
        f"CREATE DATABASE IF NOT EXISTS {db} {on}",
        *_table(
            f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32, name String, applied_at DateTime64(3, 'UTC')) "
            "ENGINE = MergeTree ORDER BY version", db, cluster, distributed=False,
        ),
    ]  # fmt: skip
    rendered = []
    for migration in sorted(migrations, key=lambda m: m.version):
        statements: list[str] = []
        for template in migration.statements:
            text = Template(template).substitute(db=db, ttl_days=ttl_days, dedup=dedup_settings()).strip()
            statements += _statement(text, db, cluster)
        rendered.append(ClusterMigration(migration.version, migration.name, tuple(statements)))
    return bootstrap, rendered


def _statement(text: str, db: str, cluster: str) -> list[str]:
    if CREATE_TABLE.match(text):
        return _table(text, db, cluster, distributed=True)
    for pattern in (CREATE_VIEW, DROP):
        match = pattern.match(text)
        if match:
            return [_on_cluster(text, match, cluster)]
    text = NON_REPLICATED_DEDUP.sub("replicated_deduplication_window", text)
    match = ALTER_TABLE.match(text)
    if match:
        statements = [_on_cluster(text, match, cluster)]
        if COLUMN_CHANGE.search(text) and not MODIFY_SETTING.search(text):  # the Distributed table has columns, no settings
            statements.append(f"ALTER TABLE {match['name']}{DISTRIBUTED_SUFFIX} ON CLUSTER '{cluster}'{text[match.end('name'):]}")
        return statements
    raise UnknownStatement(f"no cluster form for this migration statement: {text[:120]!r}")


def _on_cluster(text: str, match: re.Match[str], cluster: str) -> str:
    end = match.end("name")
    return f"{text[:end]} ON CLUSTER '{cluster}'{text[end:]}"


def _table(text: str, db: str, cluster: str, *, distributed: bool) -> list[str]:
    match = CREATE_TABLE.match(text)
    assert match is not None
    engine = ENGINE.search(text)
    if engine is None:
        raise UnknownStatement(f"a table without a MergeTree engine has no cluster form here: {text[:120]!r}")
    name = match["name"]
    table = name.split(".", 1)[1]
    own_args, end = _engine_args(text, engine.end())
    args = [f"'/clickhouse/tables/{{shard}}/{db}/{table}'", "'{replica}'", *([own_args] if own_args else [])]
    replicated = f"ENGINE = Replicated{engine['engine']}({', '.join(args)})"
    text = text[: engine.start()] + replicated + text[end:]
    text = NON_REPLICATED_DEDUP.sub("replicated_deduplication_window", text)
    text = _with_dedup_settings(text)
    statements = [_on_cluster(text, CREATE_TABLE.match(text), cluster)]  # type: ignore[arg-type]
    if distributed:
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {name}{DISTRIBUTED_SUFFIX} ON CLUSTER '{cluster}' AS {name} "
            f"ENGINE = Distributed('{cluster}', '{db}', '{table}')"
        )
    return statements


def _engine_args(text: str, at: int) -> tuple[str, int]:
    """(the engine's own arguments, where they end) for ``ENGINE = X…`` ending at ``at``; parentheses may nest."""
    rest = text[at:]
    stripped = rest.lstrip()
    if not stripped.startswith("("):
        return "", at
    start = at + len(rest) - len(stripped)
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + 1 : i].strip(), i + 1
    raise UnknownStatement(f"unbalanced engine arguments: {text[start:start + 80]!r}")


def _with_dedup_settings(text: str) -> str:
    """Both replicated dedup settings in the table's SETTINGS clause (added where missing)."""
    wanted = {
        "replicated_deduplication_window": str(DEDUP_WINDOW_BLOCKS),
        "replicated_deduplication_window_seconds": str(DEDUP_WINDOW_SECONDS),
    }
    clause = SETTINGS_CLAUSE.search(text)
    present = clause["settings"] if clause else ""
    missing = [f"{k} = {v}" for k, v in wanted.items() if not re.search(rf"\b{k}\s*=", present)]
    if not missing:
        return text
    if clause is None:
        return f"{text.rstrip()}\nSETTINGS {', '.join(missing)}"
    return f"{text.rstrip()}, {', '.join(missing)}"


def render_text(database: str, ttl_days: int, cluster: str) -> str:
    """The whole cluster DDL as a script (``;``-terminated statements), for review or clickhouse-client."""
    bootstrap, migrations = render(database, ttl_days, cluster)
    parts = [f"-- stream_engine schema for cluster '{cluster}', database {database} (stream-engine clickhouse migrate --cluster)"]
    parts += [s + ";" for s in bootstrap]
    for migration in migrations:
        parts.append(f"\n-- migration {migration.version}: {migration.name}")
        parts += [s + ";" for s in migration.statements]
        parts.append(
            f"INSERT INTO {database}.schema_migrations (version, name, applied_at) "
            f"VALUES ({migration.version}, '{_quote(migration.name)}', now64(3));"
        )
    return "\n".join(parts) + "\n"


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def migrate_on_cluster(client: Client, database: str, ttl_days: int, cluster: str) -> list[int]:
    """Apply the pending migrations to every node of ``cluster`` through one of them."""
    bootstrap, migrations = render(database, ttl_days, cluster)
    for statement in bootstrap:
        client.command(statement)
    done = {int(r[0]) for r in client.query(f"SELECT DISTINCT version FROM {database}.schema_migrations").result_rows}
    applied: list[int] = []
    for migration in migrations:
        if migration.version in done:
            continue
        for statement in migration.statements:
            client.command(statement)
        client.command(
            f"INSERT INTO {database}.schema_migrations (version, name, applied_at) "
            "VALUES ({version:UInt32}, {name:String}, now64(3))",
            parameters={"version": migration.version, "name": migration.name},
        )
        applied.append(migration.version)
    return applied
