"""`roadfeed demo` from a fresh folder: fills the database with counts and events
within a minute and keeps them moving (simulated time runs 3600 times faster here,
so a new hour of counts arrives every second)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
from pathlib import Path

import aiohttp
import pytest

from feed.store.cluster import free_port, host_engine

pytestmark = pytest.mark.skipif(host_engine() is None, reason="no host PostgreSQL with PostGIS")


async def wait_for_line(stream: asyncio.StreamReader, needle: str, seen: list[str], timeout: float) -> None:
    async def read() -> None:
        while True:
            line = (await stream.readline()).decode()
            if not line:
                raise AssertionError("demo exited early:\n" + "".join(seen))
            seen.append(line)
            if needle in line:
                return

    await asyncio.wait_for(read(), timeout)


async def feed_counts(base: str) -> tuple[int, int, int, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/feeds/events.geojson") as r:
            events = (await r.json())["features"]
        async with session.get(f"{base}/feeds/sites.geojson") as r:
            sites = (await r.json())["features"]
        async with session.get(f"{base}/feeds/status.json") as r:
            status = await r.json()
    assert status  # the status document answers
    latest = max(ch["latest"]["start"] for s in sites for ch in s["properties"]["channels"] if ch.get("latest"))
    return len(events), len(sites), sum(e["properties"]["version"] for e in events), latest


# The waits below only bound a hang (the first polls, newer counts, a graceful stop):
# generous, since under heavy CPU contention each takes several times its quiet length.
@pytest.mark.timeout(420)
async def test_demo_fills_the_database_and_keeps_moving():
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        home.chmod(0o755)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "ROADFEED_DATABASE_URL"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "feed.cli",
            "demo",
            "--port",
            str(port),
            "--speed",
            "3600",
            "--interval",
            "2",
            cwd=home,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        seen: list[str] = []
        try:
            await wait_for_line(proc.stdout, "first polls done", seen, timeout=150)
            text = "".join(seen)
            assert "records stored so far" in text or "sim-comptages: ok" in text
            base = f"http://127.0.0.1:{port}"
            events, sites, versions, latest = await feed_counts(base)
            assert events > 0 and sites == 61
            # Keeps moving: newer intervals arrive and events gain versions.
            for _ in range(120):
                await asyncio.sleep(1)
                later = await feed_counts(base)
                if later[3] > latest and later[2] != versions:
                    break
            assert later[3] > latest, "no newer counts arrived"
            assert later[2] != versions, "events never changed"
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(proc.wait(), 120)
                except TimeoutError:
                    proc.kill()
            down = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "feed.cli", "db", "down", cwd=home, env=env, stdout=asyncio.subprocess.PIPE
            )
            await down.communicate()
        assert proc.returncode == 0, "".join(seen[-20:])
