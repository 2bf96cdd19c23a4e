"""`roadfeed demo`: everything on the embedded default, with one command.

The embedded database, the simulated département (served over the real
protocols), our real collectors polling it, and the HTTP server. Counters are
backfilled on the first poll through one streamed export, with progress shown.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web

from collectors.fetch import Fetcher
from feed.collect.ingest import SinkResult
from feed.collect.scheduler import Collector
from feed.config import Config, ServerConfig, SourceConfig
from feed.http.admin import attach_collector
from feed.roads import parse_referential
from feed.server.service import http_server, wait_for_signal
from feed.simulator.geography import referential_geojson
from feed.simulator.server import build_simulator_app, simulator_clock
from feed.simulator.sources import simulator_sources
from feed.store import embedded, roads
from feed.store.cluster import free_port
from feed.store.migrations import migrate
from feed.store.storage import Storage

BACKFILL_DAYS = 7


class Progress:
    """Prints how far each source's current poll has got, at most every 2 s per source."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def __call__(self, source_id: str, result: SinkResult) -> None:
        now = time.monotonic()
        if now - self.last.get(source_id, 0.0) >= 2.0:
            self.last[source_id] = now
            c = result.counts
            print(
                f"  {source_id}: {c.new + c.updated + c.unchanged:,} records stored so far "
                f"({c.new:,} new, {result.quarantined:,} quarantined)",
                flush=True,
            )


def demo_config(simulator_url: str, host: str, port: int, interval: int) -> Config:
    sources = []
    for entry in simulator_sources(simulator_url, interval=interval):
        if entry["kind"] == "opendatasoft" and entry["options"].get("dataset_type") == "counters":
            entry["options"] = {**entry["options"], "backfill_days": BACKFILL_DAYS}
        sources.append(SourceConfig(**entry))
    return Config(server=ServerConfig(host=host, port=port), sources=sources)


async def _first_polls(collector: Collector, config: Config) -> None:
    print(
        f"collecting: first poll of {len(config.sources)} sources (counters: the last {BACKFILL_DAYS} days)", flush=True
    )
    started = time.monotonic()
    await asyncio.gather(*(collector.poll(s) for s in config.sources if s.enabled))
    interval = min(s.interval for s in config.sources)
    print(f"first polls done in {time.monotonic() - started:.1f} s; polling every {interval} s from now on", flush=True)


async def run_demo(host: str, port: int, seed: int, speed: float = 1.0, interval: int = 60) -> None:
    """With `speed` above 1 the simulated département lives faster than the clock;
    the collectors then judge records by simulated time."""
    url = embedded.up()
    report = migrate(url)
    print(f"database: {url} ({report.engine.storage_mode}, {len(report.applied)} migration(s) applied)", flush=True)

    sim_port = free_port()
    sim_app = build_simulator_app(seed, speed, BACKFILL_DAYS)
    sim = web.AppRunner(sim_app, access_log=None)
    await sim.setup()
    await web.TCPSite(sim, "127.0.0.1", sim_port).start()
    simulator_url = f"http://127.0.0.1:{sim_port}"
    config = demo_config(simulator_url, host, port, interval)
    progress = Progress()

    storage = await Storage.open(url, max_size=config.database.pool_size)
    try:
        async with storage.pool.acquire() as conn:  # the simulated roads' referential, for agents' entries
            await roads.store_referential(conn, parse_referential(referential_geojson(), "simulator"))
        async with http_server(config, storage, host, port) as runner:
            base = f"http://{host}:{port}"
            print(f"simulated département (Opendatasoft API + DATEX II): {simulator_url}/")
            print(f"web page: {base}/")
            print(f"feeds:  {base}/feeds/events.geojson  {base}/feeds/datex2/v3/situations.xml")
            print(
                f"        {base}/feeds/sites.geojson  {base}/feeds/waze/cifs.xml  "
                f"{base}/feeds/wzdx/v4.2/work-zones.geojson"
            )
            print(
                f"status: {base}/feeds/status.json   (Ctrl-C stops; `roadfeed db down` stops the database)", flush=True
            )
            clock = simulator_clock(sim_app).now
            async with aiohttp.ClientSession() as session:
                collector = Collector(config, storage, Fetcher(session), progress=progress, clock=clock)
                await _first_polls(collector, config)  # before the schedule starts: backfill first
                collector.start()
                attach_collector(runner.app, collector)  # POST /api/v1/admin/sources/{id}/run
                try:
                    await wait_for_signal()
                finally:
                    await collector.stop()  # running polls finish (bounded)
    finally:
        await storage.close()
        await sim.cleanup()
