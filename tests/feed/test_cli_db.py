"""`roadfeed db up && db migrate && db info && db down` from a fresh folder, as root
(the server then runs as the postgres user) and as an ordinary user."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from feed.store.cluster import host_engine, missing_binaries_message
from feed.store.migrations import load_migrations

pytestmark = pytest.mark.skipif(host_engine() is None, reason="no host PostgreSQL with PostGIS")


def roadfeed(cwd: Path, *args: str, user: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "feed.cli", *args]
    env = {k: v for k, v in os.environ.items() if k != "ROADFEED_DATABASE_URL"}
    if user:
        cmd = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", *cmd]
        env["HOME"] = str(cwd)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def lifecycle(cwd: Path, user: str | None = None) -> str:
    out = []
    try:
        for args in (["db", "up"], ["db", "migrate"], ["db", "migrate"], ["db", "info"]):
            done = roadfeed(cwd, *args, user=user)
            assert done.returncode == 0, f"roadfeed {' '.join(args)}: {done.stdout}{done.stderr}"
            out.append(done.stdout)
    finally:
        down = roadfeed(cwd, "db", "down", user=user)
    assert down.returncode == 0 and "stopped" in down.stdout
    after = roadfeed(cwd, "db", "info", user=user)
    assert after.returncode == 2 and "roadfeed db up" in after.stderr
    return "".join(out)


def check_output(text: str) -> None:
    assert "embedded PostgreSQL running: postgresql://postgres@127.0.0.1:" in text
    n = len(load_migrations())
    assert "applied 001_core.sql" in text and f"0 applied, {n} already applied" in text
    assert "PostGIS:      3." in text and "storage mode: postgresql" in text
    assert "measurements" in text


def test_db_lifecycle_as_this_user():
    with tempfile.TemporaryDirectory() as tmp:  # in /tmp, which the postgres user can reach
        home = Path(tmp)
        home.chmod(0o755)
        check_output(lifecycle(home))
        assert (home / "var" / "pg" / "url").exists()


@pytest.fixture
def traversable_checkout():
    """Lets other users reach the checkout and its virtual environment for the test
    (a checkout under a private folder, e.g. one made by mktemp, is not), as a user
    would with `chmod o+x`; the modes are restored afterwards."""
    changed = []
    for parent in [*Path(sys.executable).parents, *Path(__file__).resolve().parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            changed.append((parent, mode))
            parent.chmod(mode | 0o001)
    yield
    for parent, mode in changed:
        parent.chmod(mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to an ordinary user needs root")
def test_db_lifecycle_as_an_ordinary_user(traversable_checkout):
    probe = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c", "import feed.cli"],
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 0, f"an ordinary user cannot run roadfeed from here: {probe.stderr.strip()[-300:]}"
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        home.chmod(0o755)
        os.chown(home, 65534, 65534)
        check_output(lifecycle(home, user="nobody"))
        assert (home / "var" / "pg" / "data").stat().st_uid == 65534


def test_no_binaries_message_names_the_packages():
    assert "postgresql-15-postgis-3" in missing_binaries_message()
    assert "ROADFEED_DATABASE_URL" in missing_binaries_message()
