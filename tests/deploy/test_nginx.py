"""The cache tier: deploy/nginx.conf itself, run by a real nginx in front of a real
roadfeed node, both on 127.0.0.1. Only the addresses and paths are rewritten."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from feed.config import Config, ServerConfig, SourceConfig
from feed.http.app import build_app
from feed.model import EventRecord, Geometry
from feed.publish.catalogue import EVENTS_GEOJSON
from feed.store.cluster import free_port
from feed.store.storage import Storage

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
DEPLOYED = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
MAX_AGE = 1  # seconds a feed may be cached before nginx revalidates it
CONFIG = Config(
    server=ServerConfig(feed_max_age=MAX_AGE),
    sources=[SourceConfig(id="cd34", kind="datex2", url="http://127.0.0.1:9/cd34")],
)
WAIT = 30.0  # a bound for loaded machines, not a speed check


def nginx_config(upstream_ports: list[int], port: int, home: Path) -> str:
    """deploy/nginx.conf with our upstreams, port and directories (everything else as shipped)."""
    text = DEPLOYED.read_text()
    servers = "".join(f"        server 127.0.0.1:{p};\n" for p in upstream_ports)
    text, n = re.subn(r"        server roadfeed:8080;\n", servers, text)
    assert n == 1, "deploy/nginx.conf has no `server roadfeed:8080;` upstream line"
    text, n = re.subn(r"listen 80;", f"listen 127.0.0.1:{port};", text)
    assert n == 1
    text, n = re.subn(r"/var/cache/nginx/roadfeed", str(home / "cache"), text)
    assert n == 1
    temp = "".join(f"    {d}_temp_path {home / d};\n" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"pid {home / 'nginx.pid'};\nerror_log {home / 'error.log'};\nuser root;\n" + text.replace(
        "http {\n", "http {\n" + temp, 1
    )


@pytest.fixture
def nginx_home() -> Iterator[Path]:
    if not Path(NGINX).exists():
        why = "nginx is not installed (scripts/system-packages test)"
        if os.environ.get("CI") == "true":  # as for the engines: under CI a missing piece fails
            pytest.fail(why)
        pytest.skip(why)
    home = Path(tempfile.mkdtemp(prefix="roadfeed-nginx-"))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


async def start_nginx(home: Path, upstream_ports: list[int]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    (home / "nginx.conf").write_text(nginx_config(upstream_ports, port, home))
    proc = subprocess.Popen(
        [NGINX, "-p", str(home), "-c", str(home / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    async with asyncio.timeout(WAIT):
        while True:
            assert proc.poll() is None, (home / "error.log").read_text() if (home / "error.log").exists() else ""
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return proc, port
            except OSError:
                await asyncio.sleep(0.05)


class Node:
    """A roadfeed HTTP node on a fixed port, which can be stopped and started again."""

    def __init__(self, storage: Storage, port: int) -> None:
        self.storage, self.port = storage, port
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        self.runner = web.AppRunner(build_app(CONFIG, self.storage), shutdown_timeout=0.5)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def node(storage: Storage) -> AsyncIterator[Node]:
    await storage.ensure_source("cd34", "datex2", "http://127.0.0.1:9/cd34")
    await storage.upsert_events("cd34", [event("works")], seen_at=datetime.now(UTC))
    n = Node(storage, free_port())
    await n.start()
    try:
        yield n
    finally:
        await n.stop()


def event(ext: str) -> EventRecord:
    now = datetime.now(UTC)
    return EventRecord(
        external_id=ext,
        type="roadworks",
        status="active",
        severity="medium",
        road="RD613",
        planned_start=now - timedelta(days=1),
        planned_end=now + timedelta(days=2),
        geometry=Geometry(type="Point", coordinates=[3.7, 43.5]),
    )


async def get(session: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, CIMultiDict[str], bytes]:
    async with session.get(url, headers={"Accept-Encoding": "identity", **headers}) as resp:
        return resp.status, resp.headers.copy(), await resp.read()


@pytest.mark.timeout(120)
async def test_cache_tier_revalidates_answers_304s_and_outlives_a_node_restart(
    node: Node, storage: Storage, nginx_home: Path
):
    proc, port = await start_nginx(nginx_home, [node.port])
    url = f"http://127.0.0.1:{port}{EVENTS_GEOJSON}"
    try:
        # One connection per request, as many polling apps do: a kept-alive client connection
        # waits for nginx's background revalidation to end before its next request is read.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(auto_decompress=False, connector=connector) as session:
            async with asyncio.timeout(WAIT):  # the node renders its feeds first (503 until then)
                while (await get(session, f"http://127.0.0.1:{node.port}{EVENTS_GEOJSON}"))[0] != 200:
                    await asyncio.sleep(0.05)
            status, headers, body = await get(session, url)
            assert status == 200 and headers["X-Cache-Status"] == "MISS" and b"cd34:works" in body
            etag = headers["ETag"]
            status, headers, cached = await get(session, url)
            assert (status, headers["X-Cache-Status"], cached, headers["ETag"]) == (200, "HIT", body, etag)
            # The client's own validator: a 304 from the cache, with roadfeed's ETag.
            status, headers, empty = await get(session, url, **{"If-None-Match": etag})
            assert (status, headers["ETag"], empty) == (304, etag, b"")
            # Once max-age has passed, nginx revalidates with our ETag: roadfeed answers 304.
            await asyncio.sleep(MAX_AGE + 1.1)  # nginx counts whole seconds
            status, headers, again = await get(session, url)
            assert (status, again) == (200, body) and headers["X-Cache-Status"] in ("REVALIDATED", "STALE", "UPDATING")
            # The node goes away: the cached feed is still served.
            await node.stop()
            await asyncio.sleep(MAX_AGE + 1.1)  # nginx counts whole seconds
            for _ in range(5):
                status, headers, stale = await get(session, url)
                assert (status, stale) == (200, body) and headers["X-Cache-Status"] in ("STALE", "UPDATING")
            # A change made while it was away shows once it is back.
            await storage.upsert_events("cd34", [event("new")], seen_at=datetime.now(UTC))
            await node.start()
            async with asyncio.timeout(WAIT):
                while b"cd34:new" not in (await get(session, url))[2]:
                    await asyncio.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(10)
