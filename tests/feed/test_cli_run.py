"""`roadfeed run`: collectors and feeds in one process, stopped cleanly by SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import UTC, datetime, timedelta

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from exporters.datex2_v3 import render_situations
from feed.cluster import free_port
from feed.config import PublicationConfig
from feed.model import Geometry, StoredEvent


def snapshot() -> bytes:
    now = datetime.now(UTC)
    event = StoredEvent(id="cd34:RD986-1", source_id="cd34", external_id="RD986-1", version=1, type="roadworks",
                        status="active", severity="medium", actual_start=now - timedelta(hours=2), road="RD986",
                        geometry=Geometry(type="LineString", coordinates=[[3.8, 43.7], [3.81, 43.71]]),
                        descriptions={"fr": "Travaux à Saint-Martin-de-Londres"},
                        first_seen=now, last_seen=now, updated=now)
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
url = "{origin.make_url('/situations.xml')}"
interval = 30
""")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "feed.cli", "run", "--config", str(config),
        env={**os.environ, "ROADFEED_DATABASE_URL": db_url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
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
