"""Two collector workers on one database poll each source exactly once per interval,
and never at the same time."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from collectors.fetch import Fetcher, FetchPolicy
from feed.collect.scheduler import Collector
from feed.config import Config, PublicationConfig, SourceConfig
from feed.store.storage import Storage


async def test_two_workers_poll_each_source_once_per_interval(storage: Storage, db_url: str):
    hits: list[tuple[str, float, float]] = []
    busy: set[str] = set()
    overlaps: list[str] = []

    async def feed(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name in busy:
            overlaps.append(name)
        busy.add(name)
        start = asyncio.get_running_loop().time()
        await asyncio.sleep(0.3)  # a poll that takes a while, so overlaps would show
        busy.discard(name)
        hits.append((name, start, asyncio.get_running_loop().time()))
        return web.Response(
            body=b'<d2LogicalModel xmlns="http://datex2.eu/schema/2/2_0" modelBaseVersion="2"/>',
            content_type="text/xml",
        )

    app = web.Application()
    app.router.add_get("/{name}", feed)
    origin = TestServer(app, host="127.0.0.1")
    await origin.start_server()
    config = Config(
        publication=PublicationConfig(),
        sources=[
            SourceConfig(id=f"s{i}", kind="datex2", url=str(origin.make_url(f"/s{i}")), interval=1) for i in range(2)
        ],
    )
    second = await Storage.open(db_url)  # the other worker: its own connections, the same database
    async with aiohttp.ClientSession() as session:
        fetcher = Fetcher(session, FetchPolicy(timeout=5, retries=0))
        workers = [Collector(config, s, fetcher) for s in (storage, second)]
        assert workers[0].owner != workers[1].owner
        began = asyncio.get_running_loop().time()
        for w in workers:
            w.start()
        await asyncio.sleep(5.2)
        for w in workers:
            w.shutdown()
        elapsed = asyncio.get_running_loop().time() - began
        await asyncio.sleep(0.5)  # let an in-flight poll finish
    await origin.close()
    await second.close()
    # The guarantees, whatever the machine's load: never two polls of a source at once, and
    # never more than one claim per interval (each claim moves the source's due time one
    # interval on, in PostgreSQL), so a source is not polled twice as often with two workers.
    assert overlaps == []
    runs = await storage.pool.fetch(  # finished or not: a poll cut by the shutdown may still be closing
        "SELECT source_id, finished IS NOT NULL AND error IS NULL AS ok FROM source_runs ORDER BY started"
    )
    for name in ("s0", "s1"):
        polled = [r for r in runs if r["source_id"] == name]
        assert 2 <= len(polled) <= elapsed / 1 + 1, (name, len(polled), elapsed)
    # Every poll that reached the source's server is a run; a poll cut by the shutdown may
    # have been answered or not, so it may or may not show as a hit.
    assert sum(r["ok"] for r in runs) <= len(hits) <= len(runs)
