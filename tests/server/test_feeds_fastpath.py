"""The feeds' fast path answers exactly as aiohttp would, and hands everything else to it.

One application, two sites on it: a `FeedSite` (fast path first) and a plain aiohttp
`TCPSite`. The same raw requests go to both; statuses, headers (but Date) and bodies
must be the same."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import ClassVar

import pytest
from aiohttp import web

from feed.config import Config, SourceConfig
from feed.http.app import build_app
from feed.http.context import CONTEXT
from feed.model import ChannelRecord, EventRecord, Geometry, SiteRecord
from feed.publish.catalogue import EVENTS_GEOJSON, FEEDS, STATUS_PATH, FeedSpec
from feed.publish.publisher import FeedState
from feed.server import fastpath
from feed.server.fastpath import FeedFastPath, FeedSite
from feed.store.storage import Storage

CONFIG = Config(sources=[SourceConfig(id="cd34", kind="datex2", url="http://127.0.0.1:9/cd34", interval=60)])
WAIT = 15.0


async def seed(storage: Storage) -> None:
    now = datetime.now(UTC)
    await storage.ensure_source("cd34", "datex2", "http://127.0.0.1:9/cd34")
    await storage.ensure_source("cnt", "comptage-mobilites", "http://127.0.0.1:9/cnt")
    await storage.upsert_events(
        "cd34",
        [
            EventRecord(
                external_id=f"e{i}",
                type=("roadworks", "accident")[i % 2],
                status="active",
                severity="medium",
                planned_start=now - timedelta(days=1),
                planned_end=now + timedelta(days=2),
                road="RD613",
                geometry=Geometry(type="LineString", coordinates=[[3.8 + i / 100, 43.6], [3.81 + i / 100, 43.61]]),
                descriptions={"fr": f"Travaux {i}", "en": f"Works {i}"},
            )
            for i in range(5)
        ],
        seen_at=now,
    )
    await storage.upsert_sites(
        "cnt", [SiteRecord(external_id="S1", name="RD613 Montbazin", road="RD613", lon=3.69, lat=43.51)]
    )
    await storage.upsert_channels(
        "cnt", [ChannelRecord(site_external_id="S1", external_id="S1-N", direction="N", time_step=3600)]
    )
    ids = await storage.channel_ids("cnt")
    await storage.ingest_measurements(
        [
            (
                ids["S1-N"],
                now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1),
                3600,
                420,
                71.5,
                None,
                "observed",
            )
        ]
    )


@dataclass
class Sites:
    fast: int  # port of the FeedSite
    plain: int  # port of aiohttp's own TCPSite, same application
    path: FeedFastPath


@pytest.fixture(scope="module")
async def sites(server) -> AsyncIterator[Sites]:
    storage = await Storage.open(server.new_database())
    try:
        await seed(storage)
        app = build_app(CONFIG, storage)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        fast = FeedFastPath(app[CONTEXT].publisher, CONFIG.server.feed_max_age)
        fast_site = FeedSite(runner, fast, "127.0.0.1", 0)
        plain_site = web.TCPSite(runner, "127.0.0.1", 0)
        await fast_site.start()
        await plain_site.start()
        try:
            assert await app[CONTEXT].publisher.wait_ready(WAIT)
            yield Sites(fast_site.port, plain_site.port, fast)
        finally:
            await runner.cleanup()
    finally:
        await storage.close()


@dataclass
class Response:
    status_line: bytes
    headers: dict[str, str]
    body: bytes

    @property
    def status(self) -> int:
        return int(self.status_line.split()[1])

    def comparable(self) -> tuple[bytes, dict[str, str], bytes]:
        return self.status_line, {k: v for k, v in self.headers.items() if k != "date"}, self.body


async def read_response(reader: asyncio.StreamReader, head: bool = False) -> Response:
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    status_line, *lines = raw[:-4].split(b"\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.decode("latin-1").partition(":")
        assert name.lower() not in headers, f"header {name} twice"
        headers[name.lower()] = value.strip()
    status = int(status_line.split()[1])
    length = int(headers.get("content-length", "0"))
    body = b"" if head or status in (204, 304) else await asyncio.wait_for(reader.readexactly(length), WAIT)
    return Response(status_line, headers, body)


async def exchange(port: int, raw: bytes, count: int = 1, head: bool = False) -> list[Response]:
    """Sends `raw` (one or more requests) on one connection; reads `count` responses."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return [await read_response(reader, head) for _ in range(count)]
    finally:
        writer.close()


def get(path: str, *headers: str, method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def both(sites: Sites, raw: bytes, head: bool = False) -> tuple[Response, Response]:
    for _ in range(3):  # status.json may be re-rendered between the two requests
        (fast,) = await exchange(sites.fast, raw, head=head)
        (plain,) = await exchange(sites.plain, raw, head=head)
        if fast.headers.get("etag", "").split("-")[0] == plain.headers.get("etag", "").split("-")[0]:
            break
    return fast, plain


PATHS = [spec.path for spec in FEEDS if spec.path != "/feeds/waze/report.json"] + [STATUS_PATH]


@pytest.mark.parametrize("path", PATHS)
async def test_fast_path_answers_like_aiohttp(sites: Sites, path: str):
    (first,) = await exchange(sites.plain, get(path))
    assert first.status == 200, first
    etag, last_modified = first.headers["etag"], first.headers["last-modified"]
    earlier = format_datetime(parsedate_to_datetime(last_modified) - timedelta(seconds=1), usegmt=True)
    cases = [
        [],
        ["Accept-Encoding: gzip, deflate, br"],
        ["Accept-Encoding: gzip"],
        ["Accept-Encoding: br;q=0, gzip"],
        ["Accept-Encoding: *;q=0.5, br;q=0"],
        ["Accept-Encoding: gzip;q=0, br;q=0"],
        ["Accept-Encoding: gzip", "Accept-Encoding: br"],
        [f"If-None-Match: {etag}"],
        [f"If-None-Match: W/{etag}"],
        [f'If-None-Match: "nope", {etag}'],
        ["If-None-Match: *"],
        ['If-None-Match: "something-else"'],
        [f'If-None-Match: {etag[:-1]}-gzip"', "Accept-Encoding: br"],
        [f"If-Modified-Since: {last_modified}"],
        [f"If-Modified-Since: {earlier}"],
        ["If-Modified-Since: not a date"],
        ['If-None-Match: "other"', f"If-Modified-Since: {last_modified}"],
        ["Connection: close"],
        ["Connection: keep-alive"],
        ["Content-Length: 0"],
        ["Origin: https://maps.example.org", "User-Agent: OsmAnd~ 4.6", "Accept: */*"],
    ]
    for headers in cases:
        fast, plain = await both(sites, get(path, *headers))
        assert fast.comparable() == plain.comparable(), headers
        assert fast.headers["date"]
    fast, plain = await both(sites, get(path, "Accept-Encoding: gzip", method="HEAD"), head=True)
    assert fast.comparable() == plain.comparable()
    assert int(fast.headers["content-length"]) > 0


async def test_everything_else_goes_to_aiohttp(sites: Sites):
    handed_off = sites.path.handed_off
    cases = [
        get(f"{EVENTS_GEOJSON}?type=accident"),  # filters
        get(f"{EVENTS_GEOJSON}?bbox=4,43,3,44"),  # a 400
        get("/readyz"),
        get("/feeds/nothing-here.xml"),
        get(EVENTS_GEOJSON, method="POST"),  # 405
        get(EVENTS_GEOJSON, method="OPTIONS"),  # CORS preflight
        get(EVENTS_GEOJSON, version="HTTP/1.0"),
        get("/feeds/%65vents.geojson"),
    ]
    for raw in cases:
        fast, plain = await both(sites, raw)
        assert fast.comparable() == plain.comparable(), raw
    assert sites.path.handed_off >= handed_off + len(cases)


async def test_malformed_requests_get_aiohttp_answers(sites: Sites):
    cases = [
        f"GET {EVENTS_GEOJSON} HTTP/1.1\nHost: x\n\n".encode(),  # bare LF
        f"GET {EVENTS_GEOJSON} HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n".encode(),  # obsolete line folding
        f"GET {EVENTS_GEOJSON} HTTP/1.1\r\nHost : x\r\n\r\n".encode(),  # space before the colon
        f"GET {EVENTS_GEOJSON} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode(),
        f"GET {EVENTS_GEOJSON} HTTP/1.1\r\nX-Long: {'a' * 20000}\r\n\r\n".encode(),
    ]
    for raw in cases:
        fast, plain = await both(sites, raw)
        assert fast.status == plain.status, raw[:60]


async def test_pipelined_requests_on_and_off_the_fast_path(sites: Sites):
    raw = (
        get(EVENTS_GEOJSON)
        + get(EVENTS_GEOJSON, "Accept-Encoding: gzip")
        + get("/healthz")
        + get("/feeds/sites.geojson")
    )
    answers = await exchange(sites.fast, raw, count=4)
    assert [a.status for a in answers] == [200, 200, 200, 200]
    assert answers[0].headers["content-type"] == "application/geo+json" and b'"features"' in answers[0].body
    assert answers[1].headers["content-encoding"] == "gzip"
    assert answers[2].body.startswith(b'{"status"')
    assert b'"features"' in answers[3].body  # aiohttp keeps the connection after a hand-off


async def test_connection_close_and_keepalive_timeout(server, storage: Storage):
    await seed(storage)
    app = build_app(CONFIG, storage)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    fast = FeedFastPath(app[CONTEXT].publisher, CONFIG.server.feed_max_age, keepalive_timeout=0.3)
    site = FeedSite(runner, fast, "127.0.0.1", 0)
    await site.start()
    try:
        assert await app[CONTEXT].publisher.wait_ready(WAIT)
        reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
        writer.write(get(EVENTS_GEOJSON, "Connection: close"))
        response = await read_response(reader)
        assert response.status == 200 and response.headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), WAIT) == b""  # closed by the server
        writer.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
        writer.write(get(EVENTS_GEOJSON))
        assert (await read_response(reader)).status == 200
        assert await asyncio.wait_for(reader.read(), WAIT) == b""  # idle: closed after the keep-alive timeout
        writer.close()
        assert not fast.connections
    finally:
        await runner.cleanup()


def test_feeds_not_rendered_yet_are_left_to_aiohttp():
    class Unrendered:
        paths: ClassVar[list[str]] = [EVENTS_GEOJSON]

        def state(self, path: str) -> FeedState:
            return FeedState(FeedSpec(path, "events", "application/geo+json", None))

    class Connection:
        transport = None  # nothing may be written

    fast = FeedFastPath(Unrendered(), 30)  # type: ignore[arg-type]
    assert fast.answer(get(EVENTS_GEOJSON)[:-4], Connection()) == 2  # type: ignore[arg-type] # aiohttp explains the 503


async def test_big_bodies_go_out_in_chunks(sites: Sites, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(fastpath, "BODY_CHUNK", 333)  # every feed here is "big"
    path = "/feeds/datex2/v3/situations.xml"
    (whole,) = await exchange(sites.plain, get(path))
    assert len(whole.body) > 3 * 333
    raw = get(path) + get(path, "Accept-Encoding: gzip") + get(path, method="HEAD") + get(path, "Connection: close")
    answers = await exchange(sites.fast, raw, count=2)
    assert answers[0].body == whole.body and answers[1].headers["content-encoding"] == "gzip"
    reader, writer = await asyncio.open_connection("127.0.0.1", sites.fast)
    try:
        writer.write(raw)
        await asyncio.sleep(0.2)  # the client reads late: the server waits, then goes on
        first, second = await read_response(reader), await read_response(reader)
        head = await read_response(reader, head=True)
        last = await read_response(reader)
        assert first.body == last.body == whole.body and second.headers["content-encoding"] == "gzip"
        assert head.headers["content-length"] == str(len(whole.body)) and head.body == b""
        assert last.headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
    finally:
        writer.close()
