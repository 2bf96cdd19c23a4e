"""Several processes serving one address: one renders, every one serves.

With `[server] workers` = N > 1 (0: one per CPU), `roadfeed run` / `serve` start N
HTTP processes listening on the same host and port (SO_REUSEPORT: the kernel
spreads connections over them). The process the command started is the leader:
it runs the collectors (`run`), the feed publisher (reads the database, LISTENs,
renders) and supervises the others. A follower (`python -m feed.server.workers`) renders
nothing: the leader sends it every feed state its publisher makes
(`FeedPublisher.copy_state`, pickled over a socket pair), and it serves those very
bytes. So every process answers with the same versions, ETags and Last-Modified,
a client polling different processes keeps getting 304s, the database sees one
reader and one listener for the feeds, and each change is rendered once.

Filtered `/feeds/events.geojson?bbox=...` queries are rendered by the leader
(cached there once for all processes) and sent back. Everything else (health, the
change stream, the API) each process answers itself, with its own database pool.

A follower starts listening only once it holds the leader's feeds, stops on
SIGTERM (the leader sends it when it stops; Ctrl-C is the leader's business) or
when the leader goes away (end of the socket pair), and is restarted by the
leader if it dies.

Frames on the socket pair: 8-byte big-endian length, then a pickle of a tuple
whose first item says what it is. Leader to follower: ("init", FollowerSpec),
("states", [FeedStateCopy, ...]), ("filtered", request id, RenderedFeed | None,
error | None). Follower to leader: ("serving",), ("filter", request id, EventFilter).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from feed.config import Config
from feed.deadlines import cancel_and_wait
from feed.errors import PublishError
from feed.publish.catalogue import EVENTS_GEOJSON
from feed.publish.filters import EventFilter
from feed.publish.publisher import FeedPublisher
from feed.publish.render import RenderedFeed
from feed.server.fastpath import FeedFastPath, FeedSite
from feed.store.replica import primary_of
from feed.store.storage import Storage

__all__ = ["FeedMirror", "FollowerSpec", "Workers", "check_address_free", "serving_processes"]

log = logging.getLogger("roadfeed.workers")

_HEADER = struct.Struct("!Q")
RESTART_DELAY = (1.0, 30.0)  # first and longest wait before restarting a follower that died
STOP_TIMEOUT = 10.0  # seconds a follower has to stop before it is killed


def serving_processes(configured: int) -> int:
    """`[server] workers`: 0 means one per CPU the process may run on."""
    if configured > 0:
        return configured
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def check_address_free(host: str, port: int) -> None:
    """Raises OSError (address in use) when something already listens on host:port.

    SO_REUSEPORT would otherwise let us silently share the port with another
    server of the same user (an older roadfeed still running, say)."""
    if port == 0:
        return
    for family, kind, proto, _name, address in socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)


@dataclass(frozen=True, slots=True)
class FollowerSpec:
    """What a follower needs to serve like the leader."""

    index: int
    config: Config
    database_url: str
    host: str
    port: int


async def _send(writer: asyncio.StreamWriter, message: tuple[Any, ...]) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_HEADER.pack(len(payload)) + payload)  # one write: frames never interleave
    await writer.drain()


async def _receive(reader: asyncio.StreamReader) -> tuple[Any, ...]:
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return pickle.loads(await reader.readexactly(size))


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


# --------------------------------------------------------------------------- leader side


@dataclass(eq=False)
class _Follower:
    index: int
    process: subprocess.Popen[bytes] | None = None
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    pending: dict[str, None] = field(default_factory=dict)  # paths to send (their state at sending time)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    serving: bool = False
    starts: int = 0


class Workers:
    """The leader's side: starts the followers, feeds them, answers their questions, restarts them."""

    def __init__(
        self, publisher: FeedPublisher, config: Config, database_url: str, host: str, port: int, count: int
    ) -> None:
        self.publisher = publisher
        self.config = config
        self.database_url = database_url
        self.host = host
        self.port = port
        self.count = count
        self._followers = [_Follower(i) for i in range(1, count)]
        self._tasks: list[asyncio.Task[None]] = []
        self._answering: set[asyncio.Task[None]] = set()
        self._stopping = False

    def describe(self) -> dict[str, Any]:
        """For status.json: how many processes serve, and how many should."""
        return {
            "configured": self.count,
            "serving": 1 + sum(f.serving for f in self._followers),
            "restarts": sum(max(f.starts - 1, 0) for f in self._followers),
        }

    async def start(self) -> None:
        self.publisher.add_observer(self._changed)
        self.publisher.processes = self.describe
        self._tasks = [asyncio.create_task(self._run(f), name=f"follower-{f.index}") for f in self._followers]

    async def stop(self) -> None:
        self._stopping = True
        for f in self._followers:
            if f.process is not None and f.process.poll() is None:
                f.process.terminate()
        await asyncio.gather(*(asyncio.to_thread(self._reap, f) for f in self._followers))
        await cancel_and_wait(self._tasks, "worker processes' feeds")

    @staticmethod
    def _end(f: _Follower) -> int | None:
        """The exit status of a follower that left; one that lingers gets killed."""
        if f.process is None:
            return None
        try:
            return f.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            f.process.kill()
            return f.process.wait()

    @staticmethod
    def _reap(f: _Follower) -> None:
        if f.process is None:
            return
        try:
            f.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("worker %d did not stop in %.0f s; killing it", f.index, STOP_TIMEOUT)
            f.process.kill()
            f.process.wait()

    def _changed(self, path: str) -> None:
        for f in self._followers:
            if f.writer is not None:
                f.pending[path] = None
                f.wake.set()

    async def _run(self, f: _Follower) -> None:
        """Keeps follower `f` running: start, serve it, and start it again if it dies."""
        delay = RESTART_DELAY[0]
        loop = asyncio.get_running_loop()
        while not self._stopping:
            problem = "its connection closed"
            started = loop.time()
            try:
                await self._serve_follower(f)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever stopped it, the follower is restarted
                problem = str(exc)
            finally:
                f.serving = False
                if f.writer is not None:
                    f.writer.close()
                f.writer = f.reader = None
            if self._stopping:
                return
            code = await asyncio.to_thread(self._end, f)
            self.publisher.request("status")
            if loop.time() - started > 60:  # it had been running fine: no reason to wait long
                delay = RESTART_DELAY[0]
            log.warning(
                "worker %d stopped (%s; exit status %s); restarting it in %.0f s", f.index, problem, code, delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_DELAY[1])

    async def _serve_follower(self, f: _Follower) -> None:
        ours, theirs = socket.socketpair()
        try:
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH")) if p)
            f.process = subprocess.Popen(  # noqa: ASYNC220 - returns once started; watched through its socket
                [sys.executable, "-m", "feed.server.workers", "--fd", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                env=env,
            )
        finally:
            theirs.close()
        f.starts += 1
        f.reader, f.writer = await asyncio.open_connection(sock=ours)
        spec = FollowerSpec(f.index, self.config, self.database_url, self.host, self.port)
        await _send(f.writer, ("init", spec))
        f.pending = dict.fromkeys(self.publisher.paths)  # everything, then every change
        f.wake.set()
        sender = asyncio.create_task(self._sender(f))
        try:
            while True:
                try:
                    message = await _receive(f.reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # it stopped
                if message[0] == "serving":
                    f.serving = True
                    self.publisher.request("status")
                    log.info("worker %d serving (pid %d)", f.index, f.process.pid)
                elif message[0] == "filter":
                    task = asyncio.create_task(self._answer_filter(f, message[1], message[2]))
                    self._answering.add(task)  # a reference until done, as asyncio asks
                    task.add_done_callback(self._answering.discard)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def _sender(self, f: _Follower) -> None:
        while True:
            await f.wake.wait()
            f.wake.clear()
            paths, f.pending = list(f.pending), {}
            if paths and f.writer is not None:
                await _send(f.writer, ("states", [self.publisher.copy_state(p) for p in paths]))

    async def _answer_filter(self, f: _Follower, request_id: int, query: EventFilter) -> None:
        try:
            feed, error = await self.publisher.filtered_events(query), None
        except Exception as exc:  # noqa: BLE001 - the follower answers 500, as the leader would
            feed, error = None, f"{type(exc).__name__}: {exc}"
        if f.writer is not None:
            with contextlib.suppress(ConnectionError):
                await _send(f.writer, ("filtered", request_id, feed, error))


# --------------------------------------------------------------------------- follower side


class _NotRendered(PublishError):
    """The leader has not rendered this filtered feed (yet): not cached, asked again next time."""


class FeedMirror(FeedPublisher):
    """A publisher that renders nothing: the leader's publisher hands it every version."""

    def __init__(self, storage: Storage, config: Config, ask: Callable[[EventFilter], Any]) -> None:
        super().__init__(storage, config)
        self._ask = ask

    async def start(self) -> None:
        pass  # states arrive through apply_state

    async def stop(self) -> None:
        self._filtered.clear()

    async def filtered_events(self, query: EventFilter) -> RenderedFeed | None:
        current = self.state(EVENTS_GEOJSON).current
        if current is None:
            return None

        async def ask() -> RenderedFeed:
            feed = await self._ask(query)
            if feed is None:
                raise _NotRendered  # not cached: ask again next time
            return feed

        try:
            return await self._cached_filtered(current.tag, query, ask)
        except _NotRendered:
            return None


class _FollowerProcess:
    """The follower process: mirror the leader's feeds and serve them."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, spec: FollowerSpec) -> None:
        self.reader, self.writer, self.spec = reader, writer, spec
        self._asked: dict[int, asyncio.Future[RenderedFeed | None]] = {}
        self._next_id = 0

    async def ask(self, query: EventFilter) -> RenderedFeed | None:
        """The leader's rendering of events.geojson filtered by `query` (None: not rendered yet)."""
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future[RenderedFeed | None] = asyncio.get_running_loop().create_future()
        self._asked[request_id] = future
        try:
            await _send(self.writer, ("filter", request_id, query))
            return await future
        finally:
            self._asked.pop(request_id, None)

    def _answered(self, request_id: int, feed: RenderedFeed | None, error: str | None) -> None:
        future = self._asked.get(request_id)
        if future is not None and not future.done():
            if error is not None:
                future.set_exception(RuntimeError(f"the leader could not render it: {error}"))
            else:
                future.set_result(feed)

    async def run(self) -> None:
        spec, config = self.spec, self.spec.config
        storage = await Storage.open(
            spec.database_url,
            max_size=config.database.pool_size,
            primary_url=primary_of(config.database, spec.database_url),
        )
        try:
            from feed.http.app import build_app  # noqa: PLC0415 - after the spec: keeps `-m feed.server.workers` light to start

            mirror = FeedMirror(storage, config, self.ask)
            runner = web.AppRunner(build_app(config, storage, publisher=mirror), access_log=None)
            await runner.setup()
            try:
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                loop.add_signal_handler(signal.SIGTERM, stop.set)
                receiving = asyncio.create_task(self._receive(mirror, runner, stop))
                await stop.wait()
                receiving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await receiving
            finally:
                await runner.cleanup()
        finally:
            await storage.close()

    async def _receive(self, mirror: FeedMirror, runner: web.AppRunner, stop: asyncio.Event) -> None:
        site: FeedSite | None = None
        try:
            while True:
                message = await _receive(self.reader)
                if message[0] == "states":
                    for copy in message[1]:
                        mirror.apply_state(copy)
                    # Listen only once every feed is here, rendered (or known empty): a process
                    # that listened earlier answered 503 for feeds the others already served.
                    if site is None and not mirror.pending_paths():
                        fast = FeedFastPath(mirror, self.spec.config.server.feed_max_age)
                        site = FeedSite(runner, fast, self.spec.host, self.spec.port, reuse_port=True)
                        await site.start()
                        await _send(self.writer, ("serving",))
                elif message[0] == "filtered":
                    self._answered(message[1], message[2], message[3])
        except (asyncio.IncompleteReadError, ConnectionError):
            log.info("the leader went away; stopping")
        finally:
            stop.set()


async def _follower_main(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    kind, spec = await _receive(reader)
    assert kind == "init", kind
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s %(levelname)s %(name)s[worker {spec.index}]: %(message)s"
    )
    await _FollowerProcess(reader, writer, spec).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m feed.server.workers", description="a roadfeed HTTP follower process"
    )
    parser.add_argument("--fd", type=int, required=True, help="the socket pair end shared with the leader")
    args = parser.parse_args(argv)
    # Ctrl-C reaches the whole process group: the leader stops us (SIGTERM) once its own shutdown allows it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_follower_main(args.fd))
    return 0


@asynccontextmanager
async def serving(
    publisher: FeedPublisher, config: Config, database_url: str, host: str, port: int, count: int
) -> AsyncIterator[Workers | None]:
    """The followers of a leader already listening on host:port (None when count is 1)."""
    if count <= 1:
        yield None
        return
    workers = Workers(publisher, config, database_url, host, port, count)
    await workers.start()
    try:
        yield workers
    finally:
        await workers.stop()


if __name__ == "__main__":
    sys.exit(main())
