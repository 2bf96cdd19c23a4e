"""Running the service: HTTP server, optionally the collectors, until a signal.

`roadfeed run` = collectors + scheduler + HTTP; `roadfeed serve` = HTTP only.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

import aiohttp
from aiohttp import web

from collectors.fetch import Fetcher
from feed.config import Config
from feed.http import build_app
from feed.ingest import SinkResult
from feed.scheduler import Collector
from feed.storage import Storage

log = logging.getLogger("roadfeed.service")


class NotMigrated(Exception):
    """The database has no roadfeed schema yet."""


async def check_schema(storage: Storage) -> None:
    if not await storage.pool.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
        raise NotMigrated("the database has no roadfeed schema: run `roadfeed db migrate` first")


@asynccontextmanager
async def http_server(config: Config, storage: Storage, host: str, port: int) -> AsyncIterator[web.AppRunner]:
    runner = web.AppRunner(build_app(config, storage), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    try:
        yield runner
    finally:
        await runner.cleanup()


@asynccontextmanager
async def collectors(
    config: Config,
    storage: Storage,
    *,
    progress: Callable[[str, SinkResult], None] | None = None,
    clock: Callable[[], datetime] | None = None,
) -> AsyncIterator[Collector]:
    async with aiohttp.ClientSession() as session:
        collector = Collector(config, storage, Fetcher(session), progress=progress, clock=clock)
        collector.start()
        try:
            yield collector
        finally:
            collector.shutdown()


async def wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def run(config: Config, url: str, host: str, port: int, *, collect: bool) -> None:
    storage = await Storage.open(url, max_size=config.database.pool_size)
    try:
        await check_schema(storage)
        async with http_server(config, storage, host, port):
            print(f"roadfeed serving on http://{host}:{port}/ (feeds under /feeds/, status at /feeds/status.json)",
                  flush=True)
            if collect:
                async with collectors(config, storage):
                    await wait_for_signal()
            else:
                await wait_for_signal()
        log.info("stopped")
    finally:
        await storage.close()
