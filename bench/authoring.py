"""Authoring benchmark: from an agent's `POST /api/v1/events` to the new version in
every live feed (DATEX II v3 and v2.3, GeoJSON, WZDx, Waze CIFS).

A private cluster (host engine) holds the simulated roads' referential and EVENTS
collector events; the application runs in this process on 127.0.0.1. Each round
publishes (alternately creates and updates) an alternating-traffic event by PR
range and polls every feed on loopback until each lists the new version. The
reference, measured in the same run, is the collectors' path: one event stored
through the storage API, polled the same way. Prints a table, then one JSON line
with the targets (p95 publish-to-every-feed at most 1 s).

Usage: python bench/authoring.py [--events 2000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from feed.config import Config, PublicationConfig, ServerConfig  # noqa: E402
from feed.http.app import build_app  # noqa: E402
from feed.http.context import CONTEXT  # noqa: E402
from feed.model import EventRecord, Geometry  # noqa: E402
from feed.roads import parse_referential  # noqa: E402
from feed.simulator.geography import referential_geojson  # noqa: E402
from feed.store import roads  # noqa: E402
from feed.store.cluster import Cluster, free_port, host_engine  # noqa: E402
from feed.store.migrations import migrate  # noqa: E402
from feed.store.storage import Storage  # noqa: E402

TOKEN = "bench-admin-token"
FEEDS = (
    "/feeds/datex2/v3/situations.xml",
    "/feeds/datex2/v2/situations.xml",
    "/feeds/events.geojson",
    "/feeds/wzdx/v4.2/work-zones.geojson",
    "/feeds/waze/cifs.xml",
)


async def until_everywhere(http: aiohttp.ClientSession, base: str, needle: bytes, started: float) -> float:
    pending = set(FEEDS)
    while pending:
        for path in list(pending):
            async with http.get(base + path) as resp:
                if needle in await resp.read():
                    pending.discard(path)
        if pending:
            await asyncio.sleep(0.005)
    return time.perf_counter() - started


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


async def run(url: str, events: int, rounds: int) -> dict[str, list[float]]:
    storage = await Storage.open(url)
    async with storage.pool.acquire() as conn:
        await roads.store_referential(conn, parse_referential(referential_geojson(), "simulator"))
    await storage.ensure_source("cd34", "datex2", "http://127.0.0.1:9/cd34")
    now = datetime.now(UTC)
    background = [
        EventRecord(
            external_id=f"bg{i}",
            type="roadworks",
            road="RD986",
            descriptions={"fr": f"travaux {i}"},
            geometry=Geometry(type="Point", coordinates=[3.8 + i * 1e-5, 43.7]),
            actual_start=now,
        )
        for i in range(events)
    ]
    await storage.upsert_events("cd34", background, seen_at=now)
    config = Config(
        server=ServerConfig(admin_token=TOKEN, rate_limit_per_minute=0),
        publication=PublicationConfig(bbox=(-5.0, 41.0, 10.0, 51.5)),
    )
    app = build_app(config, storage)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    times: dict[str, list[float]] = {"agent": [], "collector": []}
    try:
        assert await app[CONTEXT].publisher.wait_ready(120)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession() as http:
            event_id = None
            for n in range(rounds):
                body = {
                    "kind": "alternating_traffic",
                    "road": "RD613",
                    "from": {"pr": 12, "abscissa": 150},
                    "to": {"pr": 13, "abscissa": 400},
                    "description": {"fr": f"alternat, version {n}"},
                    "schedule": [{"days": ["monday", "tuesday"], "start": "21:00", "end": "06:00"}],
                }
                started = time.perf_counter()
                if event_id is None:
                    async with http.post(base + "/api/v1/events", json=body, headers=headers) as resp:
                        event_id = (await resp.json())["event"]["id"]
                else:
                    async with http.put(f"{base}/api/v1/events/{event_id}", json=body, headers=headers) as resp:
                        assert resp.status == 200, await resp.text()
                times["agent"].append(await until_everywhere(http, base, f"version {n}".encode(), started))

                record = EventRecord(
                    external_id="ref",
                    type="roadworks",
                    road="RD613",
                    descriptions={"fr": f"référence {n}"},
                    actual_start=now,
                    geometry=Geometry(type="LineString", coordinates=[[3.70, 43.50], [3.71, 43.51]]),
                )
                started = time.perf_counter()
                await storage.upsert_events("cd34", [record], seen_at=datetime.now(UTC))
                times["collector"].append(await until_everywhere(http, base, f"référence {n}".encode(), started))
    finally:
        await runner.cleanup()
        await storage.close()
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=2000, help="collector events already published")
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    engine = host_engine()
    if engine is None:
        raise SystemExit("no host PostgreSQL with PostGIS (apt-get install postgresql-15-postgis-3)")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        base.chmod(0o755)
        cluster = Cluster(engine, base / "data", durable=False)
        cluster.initdb()
        cluster.start()
        try:
            import psycopg  # noqa: PLC0415

            with psycopg.connect(cluster.url, autocommit=True) as conn:
                conn.execute("CREATE DATABASE bench")
            url = cluster.url_for("bench")
            migrate(url)
            times = asyncio.run(run(url, args.events, args.rounds))
        finally:
            cluster.stop()
    print(f"{'path':<40}{'median s':>10}{'p95 s':>10}{'max s':>10}")
    for name, label in (("agent", "agent POST -> every feed"), ("collector", "collector upsert -> every feed (ref)")):
        v = times[name]
        print(f"{label:<40}{statistics.median(v):>10.3f}{p95(v):>10.3f}{max(v):>10.3f}")
    print(
        json.dumps(
            {
                "bench": "authoring",
                "targets": {
                    "agent_publish_to_every_feed_p95_s": {
                        "value": round(p95(times["agent"]), 3),
                        "op": "<=",
                        "target": 1.0,
                    },
                    "agent_vs_collector_median_ratio": {
                        "value": round(statistics.median(times["agent"]) / statistics.median(times["collector"]), 3),
                        "op": "<=",
                        "target": 1.5,
                    },
                },
                "events": args.events,
                "rounds": args.rounds,
            }
        )
    )


if __name__ == "__main__":
    main()
