"""The database away while clients poll: stopped (connections refused), then
frozen (every process of the cluster stopped with SIGSTOP: connections accepted
by the kernel and never answered, so no server-side timeout can fire).

Throughout, clients poll the feeds and the API. Feeds keep answering 200 with
their last version; every API route that needs the database answers a JSON 503
with Retry-After within 5 s (never a 500, never a hang); /readyz is 503 and says
why; once the database is back everything answers 200 again without a restart.
Each test starts its own cluster: the servers the other tests share stay untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from feed.config import Config, ServerConfig, SourceConfig
from feed.http.app import build_app
from feed.http.context import CONTEXT
from feed.model import ChannelRecord, EventRecord, Geometry, SiteRecord
from feed.store.cluster import Cluster
from feed.store.migrations import migrate
from feed.store.storage import Storage

ANSWER_WITHIN = 5.0  # seconds: the bound the API must keep while the database is away
FEEDS = ["/feeds/events.geojson", "/feeds/datex2/v3/situations.xml", "/feeds/waze/cifs.xml", "/feeds/sites.geojson"]
OPERATIONS = ["/healthz", "/metrics", "/feeds/status.json"]  # answer 200 whatever the database does
TOKEN = "t0ken"
API = [
    "/api/v1/sites",
    "/api/v1/sites/1",
    "/api/v1/sites/1/counts",
    "/api/v1/events",
    "/api/v1/events/cd34:works",
    "/api/v1/sources",
    "/api/v1/annual?year=2025",
    "/api/v1/downloads",
    "/feeds/events/changes",
]
ADMIN = ["/api/v1/admin/sources", "/api/v1/admin/quarantine", "/api/v1/admin/markings"]
SOURCES = [
    SourceConfig(id="cd34", kind="datex2", url="http://127.0.0.1:9/cd34", interval=60),
    SourceConfig(id="cnt", kind="comptage-mobilites", url="http://127.0.0.1:9/cnt", interval=300),
]


@pytest.fixture
def cluster(server) -> Iterator[Cluster]:
    base = Path(tempfile.mkdtemp(prefix="roadfeed-away-", dir=server.engine.host_path("/tmp")))
    base.chmod(0o755)
    own = Cluster(server.engine, base / "data", durable=False)
    own.initdb()
    own.start()
    try:
        with psycopg.connect(own.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE roadfeed")
        migrate(own.url_for("roadfeed"))
        yield own
    finally:
        _signal_cluster(own, signal.SIGCONT)
        own.stop()
        shutil.rmtree(base, ignore_errors=True)


def _cluster_pids(cluster: Cluster) -> list[int]:
    """The postmaster and its children."""
    postmaster = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                pids.append(int(entry.name))
    return pids


def _signal_cluster(cluster: Cluster, sig: signal.Signals) -> None:
    if not cluster.running():
        return
    for pid in _cluster_pids(cluster):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


async def _seed(storage: Storage) -> None:
    now = datetime.now(UTC)
    await storage.ensure_source("cd34", "datex2", "http://127.0.0.1:9/cd34")
    await storage.ensure_source("cnt", "comptage-mobilites", "http://127.0.0.1:9/cnt")
    await storage.upsert_events(
        "cd34",
        [
            EventRecord(
                external_id="works",
                type="roadworks",
                status="active",
                severity="medium",
                planned_start=now - timedelta(days=1),
                planned_end=now + timedelta(days=3),
                road="RD613",
                geometry=Geometry(type="Point", coordinates=[3.87, 43.61]),
                descriptions={"fr": "Travaux"},
            )
        ],
        seen_at=now,
    )
    await storage.upsert_sites(
        "cnt", [SiteRecord(external_id="S1", name="Montbazin", road="RD613", lon=3.69, lat=43.51)]
    )
    await storage.upsert_channels(
        "cnt", [ChannelRecord(site_external_id="S1", external_id="S1-N", direction="N", time_step=3600)]
    )
    ids = await storage.channel_ids("cnt")
    hour = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    await storage.ingest_measurements([(ids["S1-N"], hour, 3600, 42, 71.5, None, "observed")])


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[TestClient]:
    storage = await Storage.open(cluster.url_for("roadfeed"))
    await _seed(storage)
    config = Config(sources=SOURCES, server=ServerConfig(admin_token=TOKEN, rate_limit_per_minute=0))
    app = build_app(config, storage)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        assert await app[CONTEXT].publisher.wait_ready(20)
        yield client
    finally:
        await client.close()
        await asyncio.wait_for(storage.pool.close(), 10)


async def _get(client: TestClient, path: str) -> tuple[int, CIMultiDict[str], bytes, float]:
    headers = {"Authorization": f"Bearer {TOKEN}"} if path.startswith("/api/v1/admin/") else {}
    t0 = time.monotonic()
    async with client.get(path, headers=headers) as resp:
        body = await resp.read()
        return resp.status, resp.headers.copy(), body, time.monotonic() - t0


async def _healthy(client: TestClient) -> dict[str, str]:
    """Every route answers 200; the feeds' ETags."""
    etags = {}
    for path in FEEDS + OPERATIONS + API + ADMIN + ["/readyz"]:
        status, headers, body, _ = await _get(client, path)
        assert status == 200, (path, status, body[:300])
        if path in FEEDS:
            etags[path] = headers["ETag"]
    return etags


async def _recovered(client: TestClient, within: float = 60.0) -> float:
    """Seconds until every route answers 200 again (no restart, no intervention)."""
    t0 = time.monotonic()
    deadline = t0 + within
    while True:
        statuses = {path: (await _get(client, path))[0] for path in API + ADMIN + ["/readyz"]}
        if set(statuses.values()) == {200}:
            return time.monotonic() - t0
        assert time.monotonic() < deadline, f"not recovered after {within} s: {statuses}"
        await asyncio.sleep(0.5)


async def _while_away(client: TestClient, etags: dict[str, str], seconds: float) -> Counter[str]:
    """Polls every route for `seconds` from four clients at once; checks each answer."""
    seen: Counter[str] = Counter()
    slowest = 0.0
    stop = time.monotonic() + seconds

    async def poll(paths: list[str]) -> None:
        nonlocal slowest
        while time.monotonic() < stop:
            for path in paths:
                status, headers, body, took = await _get(client, path)
                seen[f"{path} {status}"] += 1
                if path in FEEDS:
                    assert status == 200 and headers["ETag"] == etags[path], (path, status, body[:200])
                    continue
                slowest = max(slowest, took)
                if path in OPERATIONS:
                    assert status == 200 and took <= ANSWER_WITHIN, (path, status, took)
                    if path == "/metrics":
                        assert b"roadfeed_database_up{" in body and b"} 0" in body.split(b"roadfeed_database_up{")[1]
                    continue
                assert took <= ANSWER_WITHIN, (path, status, took)
                assert status == 503, (path, status, body[:300])
                assert headers["Content-Type"] == "application/json" and int(headers["Retry-After"]) > 0
                error = json.loads(body)
                if path == "/readyz":
                    assert error["status"] == "not_ready" and error["database"].startswith("unreachable"), error
                else:
                    assert error["error"] == "database_unavailable" and error["detail"], error
                    cors = "Access-Control-Allow-Origin" in headers
                    assert cors == (not path.startswith("/api/v1/admin/")), (path, headers)

    await asyncio.gather(poll(FEEDS), poll([*API[:4], "/readyz"]), poll(API[4:]), poll(ADMIN + OPERATIONS))
    seen["slowest_ms"] = round(slowest * 1000)
    return seen


def _summary(seen: Counter[str]) -> str:
    feeds = sum(n for key, n in seen.items() if key.startswith("/feeds/") and key.endswith(" 200"))
    refused = sum(n for key, n in seen.items() if key.endswith(" 503"))
    slowest = seen["slowest_ms"]
    return f"{feeds} feed answers 200 (same ETag), {refused} answers 503, slowest non-feed answer {slowest} ms"


async def test_database_stopped_then_started(cluster: Cluster, client: TestClient):
    etags = await _healthy(client)
    await asyncio.to_thread(cluster.stop)
    seen = await _while_away(client, etags, 6.0)
    assert all(seen[f"{path} 503"] for path in API + ADMIN + ["/readyz"]), seen
    await asyncio.to_thread(cluster.start)
    recovery = await _recovered(client)
    assert await _healthy(client) == etags  # the same data: the same versions
    print(f"stopped: {_summary(seen)}; every route 200 again {recovery:.1f} s after the start")


async def test_database_frozen_then_thawed(cluster: Cluster, client: TestClient):
    etags = await _healthy(client)
    _signal_cluster(cluster, signal.SIGSTOP)
    try:
        seen = await _while_away(client, etags, 8.0)
    finally:
        _signal_cluster(cluster, signal.SIGCONT)
    assert all(seen[f"{path} 503"] for path in API + ADMIN + ["/readyz"]), seen
    recovery = await _recovered(client)
    assert await _healthy(client) == etags
    print(f"frozen: {_summary(seen)}; every route 200 again {recovery:.1f} s after SIGCONT")
