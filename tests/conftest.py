"""Test harness: real PostgreSQL servers, one per engine, started once per session.

Every test that asks for `db_url` (or `storage`) runs on both engines:
- `pg15-postgis`: the host's PostgreSQL with PostGIS;
- `pg17-timescaledb`: PostgreSQL 17 + TimescaleDB + PostGIS from the Debian 13
  root filesystem built by `scripts/engine-b-rootfs`.
Each test gets a fresh database cloned from a migrated template.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

from feed.store.cluster import Cluster, Engine, chroot_engine, host_engine
from feed.store.migrations import migrate
from feed.store.storage import Storage
from timeouts import pytest_timeout_set_timer  # noqa: F401  (the hook: stacks of threads and tasks)

ENGINES = ["pg15-postgis", "pg17-timescaledb"]
BUILD_HINT = "build it with: sudo scripts/engine-b-rootfs"
_counter = itertools.count()


class Server:
    """A running test cluster with a migrated template database."""

    def __init__(self, engine: Engine, cluster: Cluster):
        self.engine = engine
        self.cluster = cluster

    def new_database(self, migrated: bool = True) -> str:
        if not self.cluster.running():  # a fault test that stopped it and failed before starting it again
            self.cluster.start()
        name = f"t{os.getpid()}_{next(_counter)}"
        template = "roadfeed_template" if migrated else "template0"
        with psycopg.connect(self.cluster.url, autocommit=True) as conn:
            for _attempt in range(50):
                try:
                    conn.execute(f'CREATE DATABASE "{name}" TEMPLATE {template}')
                    break
                except psycopg.errors.ObjectInUse:  # a TimescaleDB worker still attached
                    _disconnect_all(conn, template)
                    time.sleep(0.05)
        return self.cluster.url_for(name)


def _disconnect_all(conn: psycopg.Connection, dbname: str) -> None:
    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,))


def _find_engine(name: str) -> Engine | None:
    return host_engine() if name == "pg15-postgis" else chroot_engine()


@pytest.fixture(scope="session", params=ENGINES)
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    name = request.param
    engine = _find_engine(name)
    if engine is None:
        why = (
            "no host PostgreSQL with PostGIS (apt-get install postgresql-15-postgis-3)"
            if name == "pg15-postgis"
            else f"the TimescaleDB engine's root filesystem is missing ({BUILD_HINT})"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"engine {name} unavailable under CI: {why}")
        pytest.skip(f"engine {name} unavailable: {why}")
    base = Path(tempfile.mkdtemp(prefix="roadfeed-test-", dir=engine.host_path("/tmp")))
    base.chmod(0o755)
    cluster = Cluster(engine, base / "data", durable=False)
    cluster.initdb()
    cluster.start()
    try:
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE roadfeed_template")
        migrate(cluster.url_for("roadfeed_template"))
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            # TimescaleDB's background workers would otherwise hold the template open.
            conn.execute("ALTER DATABASE roadfeed_template ALLOW_CONNECTIONS false")
            _disconnect_all(conn, "roadfeed_template")
        yield Server(engine, cluster)
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def db_url(server: Server) -> str:
    return server.new_database()


@pytest.fixture
async def storage(db_url: str) -> AsyncIterator[Storage]:
    store = await Storage.open(db_url)
    try:
        yield store
    finally:
        await store.close()
