"""Running the service: HTTP server, optionally the collectors, until a signal.

`roadfeed run` = collectors + scheduler + HTTP; `roadfeed serve` = HTTP only.
Both serve with `[server] workers` processes (0: one per CPU; see feed.server.workers):
this process renders the feeds and runs the collectors, every process serves.
Connections start on the feeds' fast path (feed.server.fastpath.FeedFastPath) and move to
aiohttp for anything else.

On SIGTERM/SIGINT: stop listening (no new connections; idle fast-path connections
close), then let in-flight HTTP requests and in-flight polls finish together,
each within SHUTDOWN_TIMEOUT seconds (polls still running then are interrupted and
their runs closed as such), then stop the followers and close the database pool.
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
from feed.collect.ingest import SinkResult
from feed.collect.scheduler import STOP_TIMEOUT, Collector
from feed.config import Config
from feed.errors import StorageError
from feed.http.admin import attach_collector
from feed.http.app import build_app
from feed.http.context import CONTEXT
from feed.publish.mqtt import MqttPusher
from feed.server.fastpath import FeedFastPath, FeedSite
from feed.server.workers import check_address_free, serving, serving_processes
from feed.store.migrations import is_migrated
from feed.store.replica import primary_of
from feed.store.storage import Storage

log = logging.getLogger("roadfeed.service")

SHUTDOWN_TIMEOUT = STOP_TIMEOUT  # seconds in-flight requests (and polls) get to finish when stopping


class NotMigrated(StorageError):
    """The database has no roadfeed schema yet."""


async def check_schema(storage: Storage) -> None:
    if not await is_migrated(storage.pool):
        raise NotMigrated("the database has no roadfeed schema: run `roadfeed db migrate` first")


@asynccontextmanager
async def http_server(
    config: Config, storage: Storage, host: str, port: int, *, workers: int = 1, database_url: str | None = None
) -> AsyncIterator[web.AppRunner]:
    """The HTTP application on host:port, in `workers` processes (this one renders the feeds).

    Followers need `database_url` (their own pools); with one worker nothing is started."""
    app = build_app(config, storage)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    try:
        if workers > 1:
            if database_url is None:
                raise ValueError("several workers need the database URL")
            check_address_free(host, port)  # SO_REUSEPORT would share it silently
        publisher = app[CONTEXT].publisher
        site = FeedSite(runner, FeedFastPath(publisher, config.server.feed_max_age), host, port, reuse_port=workers > 1)
        await site.start()
        async with serving(publisher, config, database_url or "", host, site.port, workers):
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
        pusher = MqttPusher(storage, config.mqtt) if config.mqtt is not None else None
        if pusher is not None:
            await pusher.start()
        try:
            yield collector
        finally:
            if pusher is not None:
                await pusher.stop()
            await collector.stop(SHUTDOWN_TIMEOUT)  # running polls finish with the session and pool still open


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


async def stop_listening(runner: web.AppRunner) -> None:
    """Closes the listening sockets (and idle fast-path connections): in-flight requests go on."""
    for site in list(runner.sites):
        await site.stop()


async def run(config: Config, url: str, host: str, port: int, *, collect: bool, workers: int | None = None) -> None:
    """Serves until SIGINT/SIGTERM; `workers` overrides `[server] workers` (0: one per CPU)."""
    processes = serving_processes(config.server.workers if workers is None else workers)
    # `serve` reads from the standby when there is one; `run` writes, so it reads the primary.
    read_url = config.database.read_url if not collect and config.database.read_url else url
    storage = await Storage.open(
        read_url, max_size=config.database.pool_size, primary_url=primary_of(config.database, read_url)
    )
    try:
        await check_schema(storage)
        async with http_server(config, storage, host, port, workers=processes, database_url=read_url) as runner:
            print(
                f"roadfeed serving on http://{host}:{port}/ (feeds under /feeds/, status at /feeds/status.json)"
                + (f" with {processes} processes" if processes > 1 else ""),
                flush=True,
            )
            if collect:
                async with collectors(config, storage) as collector:
                    attach_collector(runner.app, collector)  # POST /api/v1/admin/sources/{id}/run polls through it
                    await wait_for_signal()
                    log.info("stopping: no new connections; letting in-flight requests and polls finish")
                    await stop_listening(runner)
            else:
                await wait_for_signal()
                log.info("stopping: no new connections; letting in-flight requests finish")
                await stop_listening(runner)
        log.info("stopped")
    finally:
        await storage.close()
