"""Graceful shutdown of a real `roadfeed run`: SIGTERM stops new connections, lets the
running poll and an in-flight request finish, then the process exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import aiohttp
import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestServer

from collectors.fetch import Fetcher
from feed.collect.scheduler import Collector
from feed.config import Config, SourceConfig
from feed.store.cluster import free_port
from tests.feed.test_metrics import situations

SLOW = 2.0  # seconds the source takes to answer


async def _bounded(check, what: str, attempts: int = 300, pause: float = 0.05):
    for _ in range(attempts):
        result = await check()
        if result:
            return result
        await asyncio.sleep(pause)
    raise AssertionError(f"gave up waiting for {what}")


async def test_sigterm_lets_the_running_poll_and_request_finish(db_url, tmp_path):
    body = situations()
    poll_started = asyncio.Event()

    async def slow_source(_request: web.Request) -> web.Response:
        poll_started.set()
        await asyncio.sleep(SLOW)
        return web.Response(body=body, content_type="text/xml")

    app = web.Application()
    app.router.add_get("/situations.xml", slow_source)
    origin = TestServer(app, host="127.0.0.1")
    await origin.start_server()
    port = free_port()
    config = tmp_path / "roadfeed.toml"
    config.write_text(f"""
[server]
port = {port}
workers = 1

[[sources]]
id = "slow"
kind = "datex2"
url = "{origin.make_url("/situations.xml")}"
interval = 2
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
    output = asyncio.create_task(proc.stdout.read())  # drained all along: the pipe never fills
    locker = await asyncpg.connect(db_url)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def healthy() -> bool:
                try:
                    async with session.get(f"{base}/healthz") as r:
                        return r.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await _bounded(healthy, "the server", attempts=200, pause=0.1)

            # An API request held in flight: the sites table is locked until we say so.
            lock = locker.transaction()
            await lock.start()
            await locker.execute("LOCK TABLE sites IN ACCESS EXCLUSIVE MODE")

            async def get_sites() -> tuple[int, dict]:
                async with aiohttp.ClientSession() as own, own.get(f"{base}/api/v1/sites") as r:
                    return r.status, await r.json()

            request = asyncio.create_task(get_sites())

            async def request_in_handler() -> bool:  # /metrics counts itself, and the API request
                async with session.get(f"{base}/metrics") as r:
                    text = await r.text()
                line = next(x for x in text.splitlines() if x.startswith("roadfeed_http_requests_in_flight{"))
                return float(line.rsplit(" ", 1)[1]) >= 2

            await _bounded(request_in_handler, "the API request to be handled")

            poll_started.clear()  # a poll that starts from now on is surely in flight when we stop
            await asyncio.wait_for(poll_started.wait(), 30)
            proc.send_signal(signal.SIGTERM)

            async def refused() -> bool:
                try:
                    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
                except ConnectionRefusedError:
                    return True
                writer.close()
                return False

            await _bounded(refused, "the listening socket to close")
            assert proc.returncode is None and not request.done()  # still finishing what it had begun

            await lock.rollback()  # the request may go on now
            status, document = await asyncio.wait_for(request, 30)
            assert status == 200, document
        await asyncio.wait_for(proc.wait(), 40)
        out = (await output).decode()
        assert proc.returncode == 0, out[-3000:]
        assert "waiting for 1 running poll(s) to finish" in out, out[-3000:]
        runs = await locker.fetch("SELECT id, finished, error FROM source_runs WHERE source_id = 'slow' ORDER BY id")
        assert runs, out[-3000:]
        assert all(r["finished"] is not None for r in runs), (runs, out[-3000:])
        assert runs[-1]["error"] is None  # the poll in flight at SIGTERM was allowed to complete
        assert await locker.fetchval("SELECT count(*) FROM source_runs WHERE finished IS NULL") == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        output.cancel()
        await locker.close()
        await origin.close()


async def test_a_poll_beyond_the_stop_timeout_is_interrupted_and_its_run_closed(storage):
    started = asyncio.Event()

    async def stuck(_request: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(60)
        return web.Response(body=b"", content_type="text/xml")

    app = web.Application()
    app.router.add_get("/situations.xml", stuck)
    origin = TestServer(app, host="127.0.0.1")
    await origin.start_server()
    source = SourceConfig(id="stuck", kind="datex2", url=str(origin.make_url("/situations.xml")))
    try:
        async with aiohttp.ClientSession() as session:
            collector = Collector(Config(sources=[source]), storage, Fetcher(session))
            poll = asyncio.create_task(collector.poll(source))
            await asyncio.wait_for(started.wait(), 10)
            assert collector.polls_running == 1
            await collector.stop(timeout=0.2)
            assert poll.cancelled() and collector.polls_running == 0
    finally:
        await origin.close()
    runs = await storage.pool.fetch("SELECT finished, complete, error FROM source_runs WHERE source_id = 'stuck'")
    assert len(runs) == 1 and runs[0]["finished"] is not None and runs[0]["error"].startswith("interrupted")
    # and the source is free for the next process
    assert await storage.pool.fetchval("SELECT count(*) FROM source_runs WHERE finished IS NULL") == 0
