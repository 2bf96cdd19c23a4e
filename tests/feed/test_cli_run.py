"""`roadfeed run`: collectors and feeds in one process, stopped cleanly by SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestServer

from exporters.datex2_v3 import render_situations
from feed.config import PublicationConfig
from feed.model import Geometry, StoredEvent
from feed.store.cluster import free_port


def snapshot() -> bytes:
    now = datetime.now(UTC)
    event = StoredEvent(
        id="cd34:RD986-1",
        source_id="cd34",
        external_id="RD986-1",
        version=1,
        type="roadworks",
        status="active",
        severity="medium",
        actual_start=now - timedelta(hours=2),
        road="RD986",
        geometry=Geometry(type="LineString", coordinates=[[3.8, 43.7], [3.81, 43.71]]),
        descriptions={"fr": "Travaux à Saint-Martin-de-Londres"},
        first_seen=now,
        last_seen=now,
        updated=now,
    )
    return render_situations([event], PublicationConfig(), now)


async def test_run_collects_serves_and_stops_on_sigterm(db_url, tmp_path):
    body = snapshot()

    async def situations(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/xml")

    app = web.Application()
    app.router.add_get("/situations.xml", situations)
    origin = TestServer(app, host="127.0.0.1")
    await origin.start_server()
    port = free_port()
    config = tmp_path / "roadfeed.toml"
    config.write_text(f"""
[server]
port = {port}

[[sources]]
id = "inforoute"
kind = "datex2"
url = "{origin.make_url("/situations.xml")}"
interval = 30
""")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "feed.cli",
        "run",
        "--config",
        str(config),
        env={**os.environ, "ROADFEED_DATABASE_URL": db_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        features = []
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                await asyncio.sleep(0.2)
                try:
                    async with session.get(f"http://127.0.0.1:{port}/feeds/events.geojson") as r:
                        if r.status == 200:
                            features = (await r.json())["features"]
                            if features:
                                break
                except aiohttp.ClientConnectionError:
                    continue
        assert [f["id"] for f in features] == ["inforoute:cd34:RD986-1"]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        await origin.close()
    assert proc.returncode == 0, out.decode()[-2000:]


def big_snapshot(n: int, variant: int) -> bytes:
    """A v3 situation feed of `n` events; each variant gives every event a new version."""
    now = datetime.now(UTC)
    events = []
    for i in range(n):
        lon, lat = 2.7 + (i * 0.618) % 1.4, 43.3 + (i * 0.414) % 0.6
        geometry = (
            Geometry(type="LineString", coordinates=[[lon, lat], [lon + 0.001, lat + 0.001]])
            if i % 2
            else Geometry(type="Point", coordinates=[lon, lat])
        )
        events.append(
            StoredEvent(
                id=f"cd34:E{i}",
                source_id="cd34",
                external_id=f"E{i}",
                version=variant,
                type="roadworks",
                status="active",
                severity="medium",
                actual_start=now - timedelta(hours=2),
                road=f"RD{i % 900}",
                geometry=geometry,
                descriptions={"fr": f"Travaux n° {i}, version {variant}"},
                first_seen=now,
                last_seen=now,
                updated=now,
            )
        )
    return render_situations(events, PublicationConfig(), now)


SITUATIONS = 10_000
RUNS = 3


async def test_run_survives_polls_of_big_snapshots(db_url, tmp_path):
    """One parser, one thread: `run` parses 10,000-situation documents, storing each in
    batches while the next is parsed, poll after poll, without aborting."""
    bodies = [big_snapshot(SITUATIONS, v) for v in (1, 2)]
    served = 0

    async def situations(_request: web.Request) -> web.Response:
        nonlocal served
        served += 1
        return web.Response(body=bodies[served % 2], content_type="text/xml")

    app = web.Application()
    app.router.add_get("/situations.xml", situations)
    origin = TestServer(app, host="127.0.0.1")
    await origin.start_server()
    config = tmp_path / "roadfeed.toml"
    config.write_text(f"""
[server]
port = {free_port()}
workers = 1

[[sources]]
id = "big"
kind = "datex2"
url = "{origin.make_url("/situations.xml")}"
interval = 1
""")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "feed.cli",
        "run",
        "--config",
        str(config),
        env={**os.environ, "ROADFEED_DATABASE_URL": db_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = asyncio.create_task(proc.stdout.read())
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
    try:
        runs = []
        for _ in range(1200):  # at most 2 minutes
            await asyncio.sleep(0.1)
            assert proc.returncode is None, (await output).decode()[-3000:]
            runs = await pool.fetch("""SELECT error, records_new, records_updated FROM source_runs
                                        WHERE source_id = 'big' AND finished IS NOT NULL ORDER BY id""")
            if len(runs) >= RUNS:
                break
        assert len(runs) >= RUNS and all(r["error"] is None for r in runs), runs
        assert runs[0]["records_new"] == SITUATIONS
        assert all(r["records_updated"] == SITUATIONS for r in runs[1:RUNS])
        assert await pool.fetchval("SELECT count(*) FROM events WHERE source_id = 'big'") == SITUATIONS
    finally:
        await pool.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 60)
        await origin.close()
    out = (await output).decode()
    assert proc.returncode == 0, out[-3000:]
    assert "invalid pointer" not in out and "Fatal Python error" not in out
