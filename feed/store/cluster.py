"""Private PostgreSQL clusters: the embedded default (`roadfeed db up`) and the test engines.

Two kinds of server binaries are supported:
- the host's own PostgreSQL with PostGIS (Debian: `postgresql-15-postgis-3`);
- a Debian 13 root filesystem with PostgreSQL 17 + TimescaleDB + PostGIS, run
  through chroot (built by `scripts/engine-b-rootfs`), because Debian 12 has no
  TimescaleDB package.
PostgreSQL refuses to run as root, so when we are root the server runs as the
`postgres` user of the tree that holds the binaries.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from feed.errors import StorageError

ENGINE_B_ROOT = Path(os.environ.get("ROADFEED_ENGINE_B_ROOT", "/var/cache/roadfeed/engine-b"))
READY_STAMP = ".roadfeed-ready"


class ClusterError(StorageError):
    """A private cluster could not be created, started or stopped."""


@dataclass(frozen=True)
class Engine:
    """Where a PostgreSQL server lives and how it is started."""

    name: str
    major: int
    root: Path | None  # chroot root, None for the host
    timescaledb: bool

    @property
    def bindir(self) -> str:  # as seen from inside the root
        return f"/usr/lib/postgresql/{self.major}/bin"

    def host_path(self, inner: str | Path) -> Path:
        return Path(inner) if self.root is None else self.root / str(inner).lstrip("/")

    def inner_path(self, host: Path) -> str:
        if self.root is None:
            return str(host)
        return "/" + str(host.resolve().relative_to(self.root.resolve()))

    def postgres_ids(self) -> tuple[int, int] | None:
        """uid/gid of `postgres` in the engine's tree, when we must drop root."""
        if os.geteuid() != 0:
            return None
        passwd = self.host_path("/etc/passwd").read_text()
        m = re.search(r"^postgres:[^:]*:(\d+):(\d+):", passwd, re.M)
        if not m:
            raise ClusterError(f"no postgres user in {self.host_path('/etc/passwd')}")
        return int(m.group(1)), int(m.group(2))

    def command(self, program: str, *args: str) -> list[str]:
        cmd = [f"{self.bindir}/{program}", *args]
        if os.geteuid() == 0:
            cmd = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *cmd]
        if self.root is not None:
            cmd = ["chroot", str(self.root), "env", "LC_ALL=C.UTF-8", *cmd]
        return cmd


def _has_postgis(share: Path) -> bool:
    return (share / "extension" / "postgis.control").exists()


def host_engine() -> Engine | None:
    """The newest host PostgreSQL that has PostGIS."""
    base = Path("/usr/lib/postgresql")
    majors = sorted((int(p.name) for p in base.iterdir() if p.name.isdigit()), reverse=True) if base.is_dir() else []
    for major in majors:
        if (base / str(major) / "bin" / "postgres").exists() and _has_postgis(Path(f"/usr/share/postgresql/{major}")):
            ts = Path(f"/usr/share/postgresql/{major}/extension/timescaledb.control").exists()
            return Engine(f"pg{major}-postgis" + ("-timescaledb" if ts else ""), major, None, ts)
    return None


def chroot_engine(root: Path = ENGINE_B_ROOT) -> Engine | None:
    """The PostgreSQL 17 + TimescaleDB + PostGIS tree, when built and usable here."""
    if not (root / READY_STAMP).exists() or os.geteuid() != 0:
        return None
    return Engine("pg17-timescaledb", 17, root, True)


def missing_binaries_message() -> str:
    return (
        "no PostgreSQL server with PostGIS found on this machine.\n"
        "Install one (Debian/Ubuntu: apt-get install postgresql-15-postgis-3, or the\n"
        "postgresql-NN-postgis-3 package matching your PostgreSQL), or point roadfeed\n"
        "at an existing database with ROADFEED_DATABASE_URL=postgresql://user@host/db."
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A private cluster in one data directory, on 127.0.0.1:port, trust auth."""

    def __init__(self, engine: Engine, datadir: Path, port: int | None = None, *, durable: bool = True):
        self.engine = engine
        self.datadir = datadir
        self.port = port or free_port()
        self.durable = durable

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, dbname: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    @property
    def logfile(self) -> Path:
        return self.datadir.parent / f"{self.datadir.name}.log"

    def _run(self, program: str, *args: str) -> None:
        cmd = self.engine.command(program, *args)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise ClusterError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def _chown(self, path: Path) -> None:
        ids = self.engine.postgres_ids()
        if ids:
            os.chown(path, *ids)

    def initdb(self) -> None:
        self.datadir.mkdir(parents=True, exist_ok=False)
        self.datadir.chmod(0o700)
        self._chown(self.datadir)
        self.logfile.touch()
        self._chown(self.logfile)
        args = [
            "-D",
            self.engine.inner_path(self.datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ]
        if not self.durable:
            args.append("--no-sync")
        self._run("initdb", *args)
        settings = [
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.engine.inner_path(self.datadir)}'",
            "max_connections = 200",
            "shared_buffers = 256MB",
            "max_wal_size = 4GB",
            "timezone = 'UTC'",
        ]
        if self.engine.timescaledb:
            settings += ["shared_preload_libraries = 'timescaledb'", "timescaledb.telemetry_level = off"]
        if not self.durable:  # throwaway test clusters: no crash safety needed
            settings += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        with (self.datadir / "postgresql.auto.conf").open("a") as f:
            f.write("\n".join(settings) + "\n")

    def start(self, timeout: float = 30) -> None:
        self._run(
            "pg_ctl",
            "-D",
            self.engine.inner_path(self.datadir),
            "-l",
            self.engine.inner_path(self.logfile),
            "-w",
            "-t",
            str(int(timeout)),
            "start",
        )

    def stop(self) -> None:
        if not (self.datadir / "postmaster.pid").exists():
            return
        self._run("pg_ctl", "-D", self.engine.inner_path(self.datadir), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return (self.datadir / "postmaster.pid").exists()

    def wait_stopped(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() > deadline:
                raise ClusterError(f"server in {self.datadir} did not stop")
            time.sleep(0.05)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.datadir, ignore_errors=True)
        self.logfile.unlink(missing_ok=True)
