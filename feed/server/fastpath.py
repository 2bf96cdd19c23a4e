"""The feeds' HTTP/1.1 fast path: polls of a whole feed answered from prepared bytes.

`FeedFastPath` answers the plain GET/HEAD of a whole feed (what polling apps
send) before aiohttp sees the request, with the same answers; `FeedSite` puts
it in front of an aiohttp runner.

A GPS app polling a feed sends a GET of a known path with a few headers and gets
a 304 (or the bytes of the current version): work that aiohttp does with a
Request, a router, a Response and a header multidict per request. `FeedFastPath`
answers exactly those requests straight from the connection's bytes, with every
response's headers prepared once per feed version, and hands everything else
(other paths, query strings, other methods, HTTP/1.0, bodies, upgrades, anything
unusual) to aiohttp on the same connection, which then keeps it. Both paths send
the same status, headers and body for the same request (tests/server/test_feeds_fastpath.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

from feed.http.feeds import feed_cache_control
from feed.http.responses import CORS_HEADERS, etag_matches, modified_since, negotiate_encoding
from feed.http.security import FEED_SECURITY_HEADERS, NOT_MODIFIED_COST, RATE_LIMITER, RateLimiter
from feed.metrics import REGISTRY as METRICS
from feed.publish.publisher import FeedPublisher, FeedState
from feed.publish.render import RenderedFeed

__all__ = ["BODY_CHUNK", "KEEPALIVE_TIMEOUT", "MAX_HEAD", "FeedFastPath", "FeedSite"]

MAX_HEAD = 8190  # longer request heads go to aiohttp, which refuses lines beyond this
BODY_CHUNK = 256 * 1024  # bigger bodies are handed to the socket this much at a time, as the client reads
KEEPALIVE_TIMEOUT = 75.0  # idle keep-alive connections are closed after this (aiohttp's default)
_HANDOFF_FIELDS = frozenset({b"transfer-encoding", b"expect", b"upgrade", b"content-length"})
_SERVER_LINE = b"Server: " + SERVER_SOFTWARE.encode() + b"\r\n"
_CORS_LINES = "".join(f"{name}: {value}\r\n" for name, value in CORS_HEADERS.items())
# What feed.http.security's response hook adds to the same feeds on aiohttp's side.
_SECURITY_LINES = "".join(f"{name}: {value}\r\n" for name, value in FEED_SECURITY_HEADERS.items())
_date_cache: list[Any] = [0, b""]


def _date_line() -> bytes:
    now = int(time.time())
    if now != _date_cache[0]:
        _date_cache[0], _date_cache[1] = now, f"Date: {formatdate(now, usegmt=True)}\r\n".encode()
    return _date_cache[1]


class _Prepared:
    """One feed version's responses, as bytes, for each content coding."""

    __slots__ = ("bodies", "codings", "feed", "last_modified", "matching", "not_modified", "ok")

    def __init__(self, feed: RenderedFeed, cache_control: str) -> None:
        self.feed = feed
        self.codings: dict[bytes | None, str] = {}  # Accept-Encoding value -> chosen coding
        self.last_modified = feed.last_modified_http.encode()
        self.ok: dict[str, bytes] = {}
        self.not_modified: dict[str, bytes] = {}
        self.bodies: dict[str, bytes] = {}
        self.matching: set[bytes] = set()  # If-None-Match values that match as they are
        for coding in ("identity", *feed.encoded):
            body = feed.body if coding == "identity" else feed.encoded[coding]
            etag = feed.etag_for(coding)
            common = (
                f"{_CORS_LINES}{_SECURITY_LINES}ETag: {etag}\r\nLast-Modified: {feed.last_modified_http}\r\n"
                f"Cache-Control: {cache_control}\r\nVary: Accept-Encoding\r\n"
            )
            encoding = "" if coding == "identity" else f"Content-Encoding: {coding}\r\n"
            self.not_modified[coding] = f"HTTP/1.1 304 Not Modified\r\n{common}".encode()
            self.ok[coding] = (
                f"HTTP/1.1 200 OK\r\n{common}Content-Type: {feed.content_type}\r\n{encoding}"
                f"Content-Length: {len(body)}\r\n"
            ).encode()
            self.bodies[coding] = body
            self.matching.update((etag.encode(), b"W/" + etag.encode()))
        self.matching.add(b"*")

    def coding(self, accept_encoding: bytes | None) -> str:
        coding = self.codings.get(accept_encoding)
        if coding is None:
            text = accept_encoding.decode("latin-1") if accept_encoding is not None else None
            coding = negotiate_encoding(text, self.feed.encoded)
            if len(self.codings) < 256:  # clients send few distinct values; do not grow on garbage
                self.codings[accept_encoding] = coding
        return coding


class _FastRoute:
    __slots__ = ("cache_control", "latency_200", "latency_304", "prepared", "state")

    def __init__(self, state: FeedState, cache_control: str) -> None:
        self.state = state
        self.cache_control = cache_control
        self.prepared: _Prepared | None = None
        # /metrics: looked up once here, so a request costs a bisect and two additions
        self.latency_200 = METRICS.http.child(state.spec.path, "2xx", "fast")
        self.latency_304 = METRICS.http.child(state.spec.path, "3xx", "fast")


_ANSWERED, _CLOSE, _HANDOFF = 0, 1, 2


class FeedFastPath:
    """Answers GET/HEAD of the whole feeds of `publisher`; `protocol_factory` wraps aiohttp's."""

    def __init__(self, publisher: FeedPublisher, max_age: int, *, keepalive_timeout: float = KEEPALIVE_TIMEOUT):
        self.routes = {
            path.encode(): _FastRoute(publisher.state(path), feed_cache_control(path, max_age))
            for path in publisher.paths
        }
        self.keepalive_timeout = keepalive_timeout
        self.connections: set[_FeedConnection] = set()
        self.handed_off = 0  # connections given to aiohttp (a gauge of what the fast path misses)
        # The app's per-client limit (set by FeedSite.start): a refused poll goes to aiohttp, which says 429.
        self.limiter: RateLimiter | None = None

    def protocol_factory(self, fallback: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _FeedConnection(self, fallback)

    def close_connections(self) -> None:
        """Closes every connection still on the fast path (pending writes are sent first;
        a body being sent is finished first)."""
        for conn in list(self.connections):
            if conn.sending is not None:
                conn.close_after = True
            else:
                conn.close()

    def answer(self, head: bytes, conn: _FeedConnection) -> int:
        """Writes the response to one request head (without its final CRLF CRLF), or says _HANDOFF."""
        t0 = time.perf_counter()
        line_end = head.find(b"\r\n")
        request_line = head if line_end < 0 else head[:line_end]
        method, _, rest = request_line.partition(b" ")
        target, _, version = rest.partition(b" ")
        route = self.routes.get(target)
        if route is None or version != b"HTTP/1.1" or (method != b"GET" and method != b"HEAD"):
            return _HANDOFF
        feed = route.state.current
        if feed is None:
            return _HANDOFF  # aiohttp explains the 503
        inm = ims = accept = forwarded = None
        close = False
        if line_end >= 0:
            for line in head[line_end + 2 :].split(b"\r\n"):
                name, colon, value = line.partition(b":")
                if not colon or not name or name[-1] in b" \t" or name[0] in b" \t" or b"\r" in line or b"\n" in line:
                    return _HANDOFF  # malformed, folded or bare-CR/LF: aiohttp refuses it properly
                name = name.lower()  # a repeated field counts once, as `request.headers.get` reads it
                if name == b"if-none-match":
                    if inm is None:
                        inm = value.strip()
                elif name == b"accept-encoding":
                    if accept is None:
                        accept = value.strip()
                elif name == b"if-modified-since":
                    if ims is None:
                        ims = value.strip()
                elif name == b"x-forwarded-for":
                    forwarded = value.strip() if forwarded is None else forwarded + b"," + value.strip()
                elif name == b"connection":
                    tokens = {t.strip() for t in value.lower().split(b",")}
                    if b"upgrade" in tokens:
                        return _HANDOFF
                    close = b"close" in tokens
                elif name in _HANDOFF_FIELDS and not (name == b"content-length" and value.strip() == b"0"):
                    return _HANDOFF
        prepared = route.prepared
        if prepared is None or prepared.feed is not feed:
            prepared = route.prepared = _Prepared(feed, route.cache_control)
        coding = prepared.coding(accept)
        if inm is not None:  # takes precedence over If-Modified-Since (RFC 9110 §13.2.2)
            not_modified = inm in prepared.matching or etag_matches(inm.decode("latin-1"), feed.tag)
        elif ims is not None:
            not_modified = ims == prepared.last_modified or not modified_since(
                ims.decode("latin-1"), feed.last_modified
            )
        else:
            not_modified = False
        limiter = self.limiter
        if limiter is not None and limiter.enabled:
            client = limiter.client(conn.peer, forwarded.decode("latin-1") if forwarded is not None else None)
            if limiter.take(client, NOT_MODIFIED_COST if not_modified else 1.0):
                return _HANDOFF
        end = b"Connection: close\r\n" + _SERVER_LINE + b"\r\n" if close else _SERVER_LINE + b"\r\n"
        transport = conn.transport
        assert transport is not None
        if not_modified:
            transport.write(prepared.not_modified[coding] + _date_line() + end)
            route.latency_304.observe(time.perf_counter() - t0)
        else:
            transport.write(prepared.ok[coding] + _date_line() + end)
            if method == b"GET":
                conn.send_body(prepared.bodies[coding])
            route.latency_200.observe(time.perf_counter() - t0)
        return _CLOSE if close else _ANSWERED


class _FeedConnection(asyncio.Protocol):
    """One client connection, on the fast path until a request needs aiohttp."""

    __slots__ = (
        "buffer",
        "close_after",
        "fallback",
        "fast",
        "last_active",
        "loop",
        "paused",
        "peer",
        "sending",
        "timer",
        "transport",
    )

    def __init__(self, fast: FeedFastPath, fallback: Callable[[], asyncio.Protocol]) -> None:
        self.fast = fast
        self.fallback = fallback
        self.buffer = b""
        self.paused = False  # the client reads slower than we write
        self.sending: memoryview | None = None  # the rest of a big body, handed over as the client reads
        self.close_after = False
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()
        self.last_active = 0.0
        self.peer: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peername = transport.get_extra_info("peername")
        self.peer = peername[0] if isinstance(peername, tuple | list) and peername else None
        self.fast.connections.add(self)
        self.last_active = self.loop.time()
        self.timer = self.loop.call_later(self.fast.keepalive_timeout, self._check_idle)

    def data_received(self, data: bytes) -> None:
        self.last_active = self.loop.time()
        self.buffer = self.buffer + data if self.buffer else data
        if not self.paused:
            self._process()

    def _process(self) -> None:
        buffer, answer = self.buffer, self.fast.answer
        while buffer:
            end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
            if end < 0:
                if len(buffer) > MAX_HEAD or b"\n\n" in buffer:  # too long, or bare LF line ends
                    self._hand_off(buffer)
                    return
                break
            outcome = answer(buffer[:end], self)
            if outcome == _HANDOFF:
                self._hand_off(buffer)
                return
            buffer = buffer[end + 4 :]
            if outcome == _CLOSE:
                buffer = b""
                if self.sending is None:
                    self.close()
                else:
                    self.close_after = True
                break
            if self.paused or self.sending is not None:  # the next request waits for resume_writing
                break
        self.buffer = buffer

    def send_body(self, body: bytes) -> None:
        """Small bodies go at once; big ones a chunk at a time, so a connection never
        buffers a whole feed and every client's download moves at each turn of the loop."""
        if len(body) <= BODY_CHUNK:
            assert self.transport is not None
            self.transport.write(body)
        else:
            self.sending = memoryview(body)
            self._pump()

    def _pump(self) -> None:
        view, transport = self.sending, self.transport
        assert transport is not None
        while view is not None and not self.paused:
            transport.write(view[:BODY_CHUNK])  # pause_writing may come from inside this call
            view = view[BODY_CHUNK:] or None
        self.sending = view

    def _hand_off(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        self._detach()
        self.fast.handed_off += 1
        protocol = self.fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(data)

    def _detach(self) -> None:
        self.fast.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.buffer = b""
        self.sending = None

    def _check_idle(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        idle = self.loop.time() - self.last_active
        if idle >= self.fast.keepalive_timeout and not transport.get_write_buffer_size() and self.sending is None:
            self.close()
        else:
            self.timer = self.loop.call_later(max(self.fast.keepalive_timeout - idle, 1.0), self._check_idle)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self._detach()

    def pause_writing(self) -> None:
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is None or self.transport.is_closing():
            return
        if self.sending is not None:
            self._pump()
            if self.sending is not None:
                return  # paused again
        if self.close_after:
            self.close()
            return
        self.transport.resume_reading()
        if self.buffer:
            self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        self._detach()
        self.transport = None


class FeedSite(web.BaseSite):
    """A TCP site of an aiohttp runner whose connections start on a `FeedFastPath`.

    `reuse_port` lets several processes listen on the same address (SO_REUSEPORT):
    the kernel spreads new connections over them.
    """

    __slots__ = ("_bound_port", "_fast", "_host", "_port", "_reuse_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        fast: FeedFastPath,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        backlog: int = 1024,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._fast = fast
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._bound_port: int | None = None

    @property
    def port(self) -> int:
        return self._bound_port if self._bound_port is not None else self._port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        if self._fast.limiter is None and isinstance(self._runner, web.AppRunner):
            self._fast.limiter = self._runner.app.get(RATE_LIMITER)
        self._server = await asyncio.get_running_loop().create_server(
            self._fast.protocol_factory(server),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=True,
            reuse_port=self._reuse_port or None,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        await super().stop()
        self._fast.close_connections()
