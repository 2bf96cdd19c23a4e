"""The migration runner: once, idempotent, refuses edits, safe when concurrent."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import psycopg
import pytest

from feed.store.migrations import SQL_DIR, MigrationError, detect_engine, load_migrations, migrate, table_sizes


def test_fresh_database_applies_every_file_once_then_nothing(server):
    url = server.new_database(migrated=False)
    first = migrate(url)
    assert first.applied == [m.name for m in load_migrations()]
    second = migrate(url)
    assert second.applied == []
    assert second.already == first.applied
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(first.applied)


def test_edited_applied_migration_is_refused(server, tmp_path: Path):
    url = server.new_database(migrated=False)
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    migrate(url, sql_dir)
    edited = sql_dir / "001_core.sql"
    edited.write_text(edited.read_text() + "\n-- an innocent-looking edit\n")
    with pytest.raises(MigrationError, match=r"001_core\.sql has changed since it was applied"):
        migrate(url, sql_dir)


def test_two_concurrent_runs_apply_each_file_exactly_once(server):
    url = server.new_database(migrated=False)
    reports, errors = [], []

    def run() -> None:
        try:
            reports.append(migrate(url))
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    applied = sorted(name for r in reports for name in r.applied)
    assert applied == sorted(m.name for m in load_migrations())


def test_engine_detection_matches_the_server(server):
    url = server.new_database()
    with psycopg.connect(url) as conn:
        info = detect_engine(conn)
        mode = conn.execute("SELECT value FROM roadfeed_meta WHERE key = 'storage_mode'").fetchone()[0]
        hypertable = conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'").fetchone()[0]
        sizes = dict(table_sizes(conn))
    assert info.postgis_version
    if server.engine.timescaledb:
        assert info.storage_mode == "timescaledb-apache"
        assert info.timescaledb_license == "apache"
        assert hypertable == 1
    else:
        assert info.storage_mode == "postgresql"
        assert info.timescaledb_version is None
        assert hypertable == 0
    assert mode == info.storage_mode
    assert "measurements" in sizes and "events" in sizes


def test_database_without_postgis_is_explained(tmp_path):
    # A server with no PostGIS cannot be faked here, but a wrong folder can: the
    # runner must name it instead of failing obscurely.
    with pytest.raises(MigrationError, match="not found"):
        load_migrations(tmp_path / "nowhere")
