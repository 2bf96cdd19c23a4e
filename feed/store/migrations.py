"""The migration runner (psycopg): applies `sql/NNN_*.sql` in order, once each.

Each applied file is recorded with its checksum; a file changed after it was
applied stops the run. An advisory lock makes concurrent runs safe. Before the
files run, the engine is detected and the extensions created, so the plain SQL
files can branch on `pg_extension` (see 002_storage_engine.sql).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psycopg

from feed.errors import StorageError

SQL_DIR = Path(os.environ.get("ROADFEED_SQL_DIR", Path(__file__).resolve().parents[2] / "sql"))
LOCK_KEY = 7_210_415_001  # advisory lock held while migrating
_NAME = re.compile(r"^\d{3}_[a-z0-9_]+\.sql$")


class MigrationError(StorageError):
    """Migrations cannot be applied; the message says which file and why."""


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass
class EngineInfo:
    server_version: str
    postgis_version: str | None
    timescaledb_version: str | None
    timescaledb_license: str | None
    storage_mode: str  # postgresql | timescaledb-apache | timescaledb-timescale
    notes: list[str] = field(default_factory=list)


@dataclass
class MigrationReport:
    applied: list[str]
    already: list[str]
    engine: EngineInfo


def load_migrations(sql_dir: Path = SQL_DIR) -> list[Migration]:
    if not sql_dir.is_dir():
        raise MigrationError(f"migrations folder {sql_dir} not found (set ROADFEED_SQL_DIR)")
    files = sorted(p for p in sql_dir.iterdir() if p.suffix == ".sql")
    for p in files:
        if not _NAME.match(p.name):
            raise MigrationError(f"{p.name}: migration files are named NNN_words.sql")
    return [Migration(p.name, p.read_text(encoding="utf-8")) for p in files]


def _one(conn: psycopg.Connection, sql: str) -> Any:
    """The first column of the query's first row (None without a row)."""
    row = conn.execute(sql).fetchone()
    return None if row is None else row[0]


def detect_engine(conn: psycopg.Connection) -> EngineInfo:
    """What the server offers, and the storage mode that follows from it."""
    notes: list[str] = []
    server = _one(conn, "SHOW server_version") or "?"
    postgis = _one(conn, "SELECT extversion FROM pg_extension WHERE extname = 'postgis'") or _one(
        conn, "SELECT default_version FROM pg_available_extensions WHERE name = 'postgis'"
    )
    ts_installed = _one(conn, "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    ts_available = _one(conn, "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'")
    preload = _one(conn, "SHOW shared_preload_libraries") or ""
    ts_version, licence, mode = None, None, "postgresql"
    if ts_installed or (ts_available and "timescaledb" in preload):
        ts_version = ts_installed or ts_available
        # The setting exists once the library is loaded in this database.
        licence = _one(conn, "SELECT current_setting('timescaledb.license', true)") or None
        mode = f"timescaledb-{licence or 'pending'}"
    elif ts_available:
        notes.append("timescaledb is installed but not in shared_preload_libraries: using plain PostgreSQL")
    return EngineInfo(server, postgis, ts_version, licence, mode, notes)


def _prepare(conn: psycopg.Connection) -> EngineInfo:
    conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               name       text PRIMARY KEY,
               checksum   text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now())"""
    )
    engine = detect_engine(conn)
    if engine.postgis_version is None:
        raise MigrationError(
            "PostGIS is not available on this server: install it "
            "(Debian/Ubuntu: postgresql-NN-postgis-3) or use a server that has it"
        )
    conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    if engine.storage_mode.startswith("timescaledb"):
        conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    return detect_engine(conn)


def migrate(url: str, sql_dir: Path = SQL_DIR) -> MigrationReport:
    migrations = load_migrations(sql_dir)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            engine = _prepare(conn)
            done: dict[str, str] = dict(conn.execute("SELECT name, checksum FROM schema_migrations").fetchall())
            applied, already = [], []
            for m in migrations:
                if m.name in done:
                    if done[m.name] != m.checksum:
                        raise MigrationError(
                            f"{m.name} has changed since it was applied "
                            f"(checksum {done[m.name][:12]} applied, {m.checksum[:12]} now): "
                            "write a new migration instead of editing an applied one"
                        )
                    already.append(m.name)
                    continue
                with conn.transaction():
                    try:
                        conn.execute(m.sql)
                    except psycopg.Error as err:
                        raise MigrationError(f"{m.name} failed: {err}") from err
                    conn.execute("INSERT INTO schema_migrations (name, checksum) VALUES (%s, %s)", (m.name, m.checksum))
                applied.append(m.name)
            conn.execute(
                """INSERT INTO roadfeed_meta VALUES ('storage_mode', %s)
                   ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value""",
                (engine.storage_mode,),
            )
            return MigrationReport(applied, already, engine)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))


def table_sizes(conn: psycopg.Connection) -> list[tuple[str, int]]:
    """Total size per table; hypertables counted with their chunks."""
    rows = conn.execute(
        """SELECT c.relname, pg_total_relation_size(c.oid)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
            ORDER BY c.relname"""
    ).fetchall()
    sizes: dict[str, int] = dict(rows)
    has_ts = _one(conn, "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
    if has_ts:
        for (name,) in conn.execute("SELECT hypertable_name FROM timescaledb_information.hypertables").fetchall():
            sizes[name] = _one(conn, f"SELECT hypertable_size('{name}'::regclass)") or 0
    return sorted(sizes.items())


def storage_mode(conn: psycopg.Connection) -> str | None:
    """The storage mode the migrations recorded (postgresql, timescaledb-...); None before any migration."""
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", ("roadfeed_meta",)).fetchone()
    if row is None or not row[0]:
        return None
    return _one(conn, "SELECT value FROM roadfeed_meta WHERE key = 'storage_mode'")


async def is_migrated(pool: asyncpg.Pool) -> bool:
    """Whether the database has the roadfeed schema (the migrations' own table)."""
    return bool(await pool.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"))
