"""The embedded default database: a private cluster under `./var/pg`.

`roadfeed db up` creates and starts it and remembers its URL in
`./var/pg/url`; later commands use that URL when neither
`ROADFEED_DATABASE_URL` nor `[database] url` names another database.
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg

from feed.config import Config
from feed.errors import StorageError
from feed.store.cluster import Cluster, ClusterError, Engine, host_engine, missing_binaries_message

HOME = Path("var/pg")
DBNAME = "roadfeed"


class NoDatabase(StorageError):
    """No database is configured and the embedded one is not set up."""


def _cluster(engine: Engine, home: Path) -> Cluster:
    port_file = home / "port"
    port = int(port_file.read_text()) if port_file.exists() else None
    return Cluster(engine, home.resolve() / "data", port)


def _check_reachable(home: Path) -> None:
    """As root the server runs as `postgres`, which must be able to reach the folder."""
    if os.geteuid() != 0:
        return
    for parent in [home.resolve(), *home.resolve().parents]:
        if parent.exists() and not parent.stat().st_mode & 0o001:
            raise ClusterError(
                f"{parent} is not searchable by other users, so the postgres user cannot reach "
                f"{home.resolve()}; run from a folder others can traverse (chmod o+x {parent}) "
                "or set ROADFEED_DATABASE_URL"
            )


def up(home: Path = HOME) -> str:
    """Creates (first time) and starts the embedded cluster; returns its URL."""
    engine = host_engine()
    if engine is None:
        raise ClusterError(missing_binaries_message())
    home.mkdir(parents=True, exist_ok=True)
    _check_reachable(home)
    cluster = _cluster(engine, home)
    created = not cluster.datadir.exists()
    if created:
        cluster.initdb()
        (home / "port").write_text(str(cluster.port))
    if not cluster.running():
        cluster.start()
    url = cluster.url_for(DBNAME)
    if created:
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DBNAME}")
    (home / "url").write_text(url + "\n")
    return url


def down(home: Path = HOME) -> bool:
    """Stops the embedded cluster; False when it was not running."""
    engine = host_engine()
    if engine is None or not (home / "port").exists():
        return False
    cluster = _cluster(engine, home)
    if not cluster.running():
        return False
    cluster.stop()
    return True


def database_url(config: Config, home: Path = HOME) -> str:
    """The URL every command uses: environment, then config file, then embedded."""
    if config.database.url:
        return config.database.url
    url_file = home / "url"
    if url_file.exists():
        return url_file.read_text().strip()
    raise NoDatabase(
        "no database configured: run `roadfeed db up` to start the embedded one, "
        "or set ROADFEED_DATABASE_URL (or [database] url in the config file)"
    )
