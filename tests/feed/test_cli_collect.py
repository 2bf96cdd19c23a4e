"""`roadfeed collect --once` against a real local source and a real database."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer

SPEEDS = Path(__file__).resolve().parents[1] / "data" / "datex2" / "fr-bisonfute-tipi-speeds-measureddata-v2.2.xml"


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "feed.cli", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_collect_once_prints_what_the_poll_did(db_url, tmp_path):
    body = SPEEDS.read_bytes()

    async def feed(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == '"s1"':
            return web.Response(status=304, headers={"ETag": '"s1"'})
        return web.Response(body=body, content_type="text/xml", headers={"ETag": '"s1"'})

    app = web.Application()
    app.router.add_get("/speeds.xml", feed)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        config = tmp_path / "roadfeed.toml"
        config.write_text(f"""
[publication]
bbox = [-5.0, 41.0, 10.0, 51.5]

[[sources]]
id = "tipi-speeds"
kind = "datex2"
url = "{server.make_url("/speeds.xml")}"
""")
        env = {**os.environ, "ROADFEED_DATABASE_URL": db_url}
        code, out, err = await run_cli("collect", "--config", str(config), "--source", "tipi-speeds", "--once", env=env)
        assert code == 0, err
        assert "tipi-speeds: ok; new 2, updated 0, unchanged 0, quarantined 0;" in out
        assert f"{len(body):,} bytes" in out
        code, out, _ = await run_cli("collect", "--config", str(config), "--source", "tipi-speeds", "--once", env=env)
        assert code == 0 and "(not modified)" in out and "new 0" in out
        code, _, err = await run_cli("collect", "--config", str(config), "--source", "nope", "--once", env=env)
        assert code == 2 and "no source 'nope' (sources: tipi-speeds)" in err
    finally:
        await server.close()
