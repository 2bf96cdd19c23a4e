"""Hardening over the real app and the real databases: security headers on every
path (the feeds' fast path included), the per-client rate limit, request size
limits, the API's read-only role and statement timeout, and SQL injection
attempts on every public parameter."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from feed.config import Config, DatabaseConfig, ServerConfig, SourceConfig
from feed.http.api import _guarded
from feed.http.app import build_app
from feed.http.context import CONTEXT
from feed.http.security import FEED_SECURITY_HEADERS, RATE_LIMITER, RateLimiter
from feed.model import ChannelRecord, EventRecord, Geometry, SiteRecord
from feed.publish.catalogue import EVENTS_GEOJSON
from feed.server.fastpath import FeedFastPath, FeedSite
from feed.store.storage import Storage
from feed.store.transactions import reading

WAIT = 15.0
SOURCES = [
    SourceConfig(id="cd34", kind="datex2", url="http://127.0.0.1:9/cd34", interval=60),
    SourceConfig(id="cnt", kind="comptage-mobilites", url="http://127.0.0.1:9/cnt", interval=300),
]


def config(**server: Any) -> Config:
    return Config(sources=SOURCES, server=ServerConfig(**server))


async def seed(storage: Storage) -> None:
    now = datetime.now(UTC)
    await storage.ensure_source("cd34", "datex2", "http://127.0.0.1:9/cd34")
    await storage.ensure_source("cnt", "comptage-mobilites", "http://127.0.0.1:9/cnt")
    await storage.upsert_events(
        "cd34",
        [
            EventRecord(
                external_id="works",
                type="roadworks",
                subtype="MaintenanceWorks",
                status="active",
                severity="medium",
                planned_start=now - timedelta(days=1),
                planned_end=now + timedelta(days=3),
                actual_start=now - timedelta(days=1),
                road="RD613",
                direction="both",
                lanes_affected="all",
                geometry=Geometry(type="LineString", coordinates=[[3.870, 43.610], [3.880, 43.615]]),
                descriptions={"fr": "Travaux", "en": "Works"},
            )
        ],
        seen_at=now - timedelta(minutes=5),
    )
    await storage.upsert_sites(
        "cnt", [SiteRecord(external_id="S1", name="RD613 Montbazin", road="RD613", lon=3.69, lat=43.51)]
    )
    await storage.upsert_channels(
        "cnt", [ChannelRecord(site_external_id="S1", external_id="S1-N", direction="N", time_step=3600)]
    )
    ids = await storage.channel_ids("cnt")
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    await storage.ingest_measurements([(ids["S1-N"], start, 3600, 42, 71.5, None, "observed")])


@asynccontextmanager
async def running(storage: Storage, cfg: Config) -> AsyncIterator[TestClient]:
    app = build_app(cfg, storage)
    client = TestClient(TestServer(app, host="127.0.0.1"), auto_decompress=False)
    await client.start_server()
    try:
        assert await app[CONTEXT].publisher.wait_ready(WAIT)
        yield client
    finally:
        await client.close()


@pytest.fixture(scope="module")
async def shared(server: Any) -> AsyncIterator[tuple[TestClient, Storage]]:
    """One seeded app per engine, rate limit off, for the tests that only read."""
    store = await Storage.open(server.new_database())
    try:
        await seed(store)
        async with running(store, config(rate_limit_per_minute=0)) as client:
            yield client, store
    finally:
        await store.close()


# --------------------------------------------------------------------------- headers


async def test_security_headers_on_every_kind_of_response(shared):
    client, _ = shared
    cases = {
        "/feeds/events.geojson": "cross-origin",
        "/feeds/status.json": "cross-origin",
        "/api/v1/sites": "cross-origin",
        "/api/v1/sites?limit=0": "cross-origin",  # a 400
        "/api/v1/nope": "cross-origin",  # aiohttp's own 404
        "/healthz": "same-origin",
        "/api/v1/admin/sources": "same-origin",  # a 403: no token configured
    }
    for path, corp in cases.items():
        async with client.get(path) as resp:
            await resp.read()
            h = resp.headers
            assert h["X-Content-Type-Options"] == "nosniff", path
            assert h["X-Frame-Options"] == "DENY", path
            assert h["Referrer-Policy"] == "no-referrer", path
            assert h["Cross-Origin-Resource-Policy"] == corp, path
            assert h["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'", path
    # A 304 carries them too.
    async with client.get("/api/v1/sites") as resp:
        etag = resp.headers["ETag"]
    async with client.get("/api/v1/sites", headers={"If-None-Match": etag}) as resp:
        assert resp.status == 304
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Cross-Origin-Resource-Policy"] == "cross-origin"


async def test_the_web_page_keeps_its_own_policy(shared):
    client, _ = shared
    async with client.get("/") as resp:
        assert resp.status == 200
        h = resp.headers
        assert h["Content-Type"].startswith("text/html")
        assert "default-src" in h["Content-Security-Policy"] and h["Content-Security-Policy"] != (
            "default-src 'none'; frame-ancestors 'none'"
        )
        assert h["Referrer-Policy"] == "same-origin"  # the page's own
        assert h["X-Frame-Options"] == "DENY" and h["X-Content-Type-Options"] == "nosniff"
        assert h["Cross-Origin-Resource-Policy"] == "same-origin"


async def raw_exchange(port: int, request: bytes) -> tuple[bytes, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        status, *lines = head[:-4].split(b"\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), WAIT) if length else b""
        return status, headers, body
    finally:
        writer.close()


@asynccontextmanager
async def fast_site(storage: Storage, cfg: Config) -> AsyncIterator[tuple[int, FeedFastPath, web.Application]]:
    app = build_app(cfg, storage)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        fast = FeedFastPath(app[CONTEXT].publisher, cfg.server.feed_max_age)
        site = FeedSite(runner, fast, "127.0.0.1", 0)
        await site.start()
        assert await app[CONTEXT].publisher.wait_ready(WAIT)
        yield site.port, fast, app
    finally:
        await runner.cleanup()


def get(path: str, *headers: str) -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *headers]) + "\r\n\r\n").encode()


async def test_fast_path_sends_the_security_headers_and_applies_the_limit(storage: Storage):
    await seed(storage)
    cfg = config(rate_limit_per_minute=1, rate_limit_burst=2, rate_limit_exempt=[])
    async with fast_site(storage, cfg) as (port, fast, app):
        assert fast.limiter is app[RATE_LIMITER]  # one budget for both paths
        status, headers, _ = await raw_exchange(port, get(EVENTS_GEOJSON))
        assert status == b"HTTP/1.1 200 OK"
        for name, value in FEED_SECURITY_HEADERS.items():
            assert headers[name.lower()] == value
        handed = fast.handed_off
        status, headers, _ = await raw_exchange(port, get(EVENTS_GEOJSON, f"If-None-Match: {headers['etag']}"))
        assert status.startswith(b"HTTP/1.1 304") and headers["x-frame-options"] == "DENY"
        assert fast.handed_off == handed  # answered on the fast path, half a token
        status, _, _ = await raw_exchange(port, get(EVENTS_GEOJSON))  # half a token left: refused
        assert status.startswith(b"HTTP/1.1 429")
        assert fast.handed_off == handed + 1  # aiohttp explained it


# --------------------------------------------------------------------------- rate limit


def test_token_bucket_refills_and_exempts():
    now = [0.0]
    limiter = RateLimiter(60, 3, exempt=["127.0.0.0/8"], clock=lambda: now[0])
    assert [limiter.take("192.0.2.1") for _ in range(3)] == [0, 0, 0]
    assert limiter.take("192.0.2.1") == pytest.approx(1.0)  # one a second
    assert limiter.take("192.0.2.2") == 0  # each client its own bucket
    now[0] += 1.0
    assert limiter.take("192.0.2.1") == 0 and limiter.take("192.0.2.1") > 0
    now[0] += 3600
    assert [limiter.take("192.0.2.1") for _ in range(3)] == [0, 0, 0]  # the burst, not more
    assert limiter.take("192.0.2.1") > 0
    assert all(limiter.take("127.0.0.1") == 0 for _ in range(100))
    assert RateLimiter(0, 1).take("192.0.2.1") == 0 and not RateLimiter(0, 1).enabled


def test_forwarded_for_only_from_trusted_proxies():
    limiter = RateLimiter(60, 3, trusted_proxies=["10.0.0.0/8"])
    assert limiter.client("192.0.2.9", "198.51.100.1") == "192.0.2.9"  # not a proxy: ignored
    assert limiter.client("10.1.2.3", "198.51.100.1") == "198.51.100.1"
    # The nearest untrusted hop: a client cannot pick its address by prepending one.
    assert limiter.client("10.1.2.3", "203.0.113.7, 198.51.100.1, 10.0.0.5") == "198.51.100.1"
    assert limiter.client("10.1.2.3", "10.0.0.9") == "10.0.0.9"
    assert limiter.client("10.1.2.3", None) == "10.1.2.3"


async def test_rate_limit_answers_429_with_retry_after(storage: Storage):
    await seed(storage)
    cfg = config(rate_limit_per_minute=1, rate_limit_burst=3, rate_limit_exempt=[])
    async with running(storage, cfg) as client:
        async with client.get("/api/v1/sites") as resp:  # 1 token
            assert resp.status == 200
            etag = resp.headers["ETag"]
        for _ in range(4):  # 304s cost half: 2 tokens buy 4
            async with client.get("/api/v1/sites", headers={"If-None-Match": etag}) as resp:
                assert resp.status == 304
        async with client.get("/api/v1/sites") as resp:
            assert resp.status == 429
            assert 1 <= int(resp.headers["Retry-After"]) <= 60
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            body = await resp.json()
            assert body["error"] == "rate_limited" and set(body) == {
                "error",
                "parameter",
                "value",
                "expected",
                "detail",
            }
        async with client.get("/feeds/events.geojson") as resp:  # feeds share the budget
            assert resp.status == 429


async def test_forwarded_clients_get_their_own_budget(storage: Storage):
    await seed(storage)
    cfg = config(rate_limit_per_minute=1, rate_limit_burst=1, rate_limit_exempt=[], trusted_proxies=["127.0.0.1"])
    async with running(storage, cfg) as client:
        for address in ("198.51.100.1", "198.51.100.2"):
            async with client.get("/healthz", headers={"X-Forwarded-For": address}) as resp:
                assert resp.status == 200
        async with client.get("/healthz", headers={"X-Forwarded-For": "198.51.100.1"}) as resp:
            assert resp.status == 429


def test_loopback_is_not_limited_by_default():
    server = Config().server
    limiter = RateLimiter(server.rate_limit_per_minute, server.rate_limit_burst, exempt=server.rate_limit_exempt)
    assert limiter.take("127.0.0.1") == 0 and limiter.exempts("::1") and not limiter.exempts("192.0.2.1")


# --------------------------------------------------------------------------- size limits


async def test_oversized_bodies_and_headers_are_refused(storage: Storage):
    cfg = config(rate_limit_per_minute=0, max_request_bytes=1024, admin_token="t0ken")
    async with running(storage, cfg) as client:
        async with client.post(
            "/api/v1/admin/markings",
            data=b"{" + b" " * 4096 + b"}",
            headers={"Authorization": "Bearer t0ken", "Content-Type": "application/json"},
        ) as r:
            assert r.status == 413
        async with client.get("/api/v1/sites", headers={"X-Padding": "x" * 9000}) as r:
            assert r.status in (400, 431)


# --------------------------------------------------------------------------- read-only role, timeout


async def test_api_transactions_run_as_the_read_only_role(storage: Storage):
    await seed(storage)
    app = build_app(config(), storage)
    ctx = app[CONTEXT]
    async with reading(ctx.storage.pool, ctx.config.database.statement_timeout_ms) as conn:
        assert await conn.fetchval("SELECT current_user") == "roadfeed_reader"
        assert await conn.fetchval("SHOW transaction_read_only") == "on"
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute("INSERT INTO markings (kind, road, valid_from) VALUES ('road_closed', 'X', now())")
    async with reading(ctx.storage.pool, ctx.config.database.statement_timeout_ms) as conn:
        with pytest.raises(asyncpg.PostgresError):  # too late to become read-write
            await conn.execute("SET LOCAL transaction_read_only = off; DELETE FROM sites")
    # Beyond READ ONLY: the role itself holds no write privilege.
    async with storage.pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL ROLE roadfeed_reader; SET LOCAL transaction_read_only = off")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM sites")
    assert await storage.pool.fetchval("SELECT count(*) FROM sites") == 1
    assert await storage.pool.fetchval("SELECT count(*) FROM markings") == 0


async def test_statement_timeout_cuts_a_slow_api_query(storage: Storage):
    cfg = config(rate_limit_per_minute=0).model_copy(update={"database": DatabaseConfig(statement_timeout_ms=100)})
    app = build_app(cfg, storage)
    ctx = app[CONTEXT]
    async with reading(ctx.storage.pool, ctx.config.database.statement_timeout_ms) as conn:
        assert await conn.fetchval("SHOW statement_timeout") == "100ms"
    with pytest.raises(asyncpg.QueryCanceledError):
        async with reading(ctx.storage.pool, ctx.config.database.statement_timeout_ms) as conn:
            await conn.execute("SELECT pg_sleep(30)")

    async def slow(_request: web.Request) -> web.Response:  # the API's own wrapper over a slow read
        async with reading(ctx.storage.pool, ctx.config.database.statement_timeout_ms) as conn:
            await conn.execute("SELECT pg_sleep(30)")
        return web.Response()

    app.router.add_get("/api/v1/test-slow", _guarded(slow))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        async with client.get("/api/v1/test-slow") as resp:
            assert resp.status == 503 and resp.headers["Retry-After"]
            assert (await resp.json())["error"] == "query_timeout"
    finally:
        await client.close()


# --------------------------------------------------------------------------- SQL injection


PAYLOADS = [
    "RD613'; DROP TABLE sites;--",
    "1 OR 1=1",
    "'); DELETE FROM events;--",
    "1; UPDATE sources SET url=''",
    "\\'; TRUNCATE markings; --",
    "$$; DROP TABLE events; $$",
]


def cursor_of(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


async def snapshot(storage: Storage) -> dict[str, Any]:
    async with storage.pool.acquire() as conn:
        return {
            t: await conn.fetchval(f"SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {t} x")
            for t in ("sites", "channels", "events", "event_versions", "sources", "markings", "measurements")
        }


async def test_injection_attempts_on_every_public_parameter_change_nothing(shared):
    client, storage = shared
    before = await snapshot(storage)
    urls: list[str] = []
    for p in PAYLOADS:
        q = quote(p, safe="")
        urls += [
            f"/api/v1/sites?road={q}",
            f"/api/v1/sites?commune={q}",
            f"/api/v1/sites?bbox={q}",
            f"/api/v1/sites?limit={q}",
            f"/api/v1/sites?cursor={q}",
            f"/api/v1/sites/{q}",
            f"/api/v1/sites/{q}/counts",
            f"/api/v1/sites/1/counts?direction={q}",
            f"/api/v1/sites/1/counts?vehicle_class={q}",
            f"/api/v1/sites/1/counts?step={q}",
            f"/api/v1/sites/1/counts?format={q}",
            f"/api/v1/sites/1/counts?from={q}",
            f"/api/v1/sites/1/counts?to={q}",
            f"/api/v1/annual?year={q}",
            f"/api/v1/annual?year=2025&threshold={q}",
            f"/api/v1/events?road={q}",
            f"/api/v1/events?type={q}",
            f"/api/v1/events?status={q}",
            f"/api/v1/events?bbox={q}",
            f"/api/v1/events?from={q}",
            f"/api/v1/events?cursor={q}",
            f"/api/v1/events/{q}",
            f"/api/v1/events?cursor={cursor_of(['events', p])}",
            f"/api/v1/sites?cursor={cursor_of(['sites', p])}",
            f"/api/v1/downloads/{q}/counts_daily.csv",
            f"/api/v1/downloads/2025/{q}",
            f"/feeds/events.geojson?bbox={q}",
            f"/feeds/events.geojson?type={q}",
            f"/feeds/events.geojson?status={q}",
            f"/feeds/events/changes?since={q}",
            f"/?lang={q}",
            f"/api/v1/admin/quarantine?source={q}",
        ]
    for url in urls:
        async with client.get(url) as resp:
            body = await resp.read()
            assert resp.status in (200, 400, 403, 404), (url, resp.status, body[:300])
            if resp.status == 400 and resp.headers.get("Content-Type", "").startswith("application/json"):
                error = json.loads(body)
                assert error["error"] == "invalid_parameter" and error["parameter"], url
            if resp.status == 200 and url.startswith(("/api/v1/sites?road", "/api/v1/events?road")):
                document = json.loads(body)
                assert document.get("sites", document.get("events")) == [], url
    assert await snapshot(storage) == before
