"""Live feeds over real HTTP: validators and 304s, precompressed variants, filters,
CORS, re-rendering on database changes (LISTEN/NOTIFY), status and readiness."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import asyncpg
import brotli
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from lxml import etree

from feed.config import Config, SourceConfig
from feed.http.app import build_app
from feed.http.context import CONTEXT
from feed.model import ChannelRecord, EventRecord, Geometry, SiteRecord
from feed.publish.catalogue import EVENTS_GEOJSON, FEEDS, STATUS_PATH
from feed.publish.publisher import LISTENER_APPLICATION_NAME
from feed.store.storage import RunStats, Storage

ALL_PATHS = [spec.path for spec in FEEDS] + [STATUS_PATH]
WAIT = 15.0  # seconds a change may take to show, generous for loaded machines

CONFIG = Config(
    sources=[
        SourceConfig(id="cd34", kind="datex2", url="http://127.0.0.1:9/cd34", interval=60),
        SourceConfig(id="cnt", kind="comptage-mobilites", url="http://127.0.0.1:9/cnt", interval=300),
    ]
)

MONTPELLIER = Geometry(type="LineString", coordinates=[[3.870, 43.610], [3.880, 43.615], [3.890, 43.620]])
SETE = Geometry(type="Point", coordinates=[3.690, 43.400])
BEZIERS = Geometry(type="LineString", coordinates=[[3.210, 43.340], [3.220, 43.345]])


def event(ext: str, **changes: Any) -> EventRecord:
    now = datetime.now(UTC)
    fields: dict[str, Any] = dict(
        external_id=ext,
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
        geometry=MONTPELLIER,
        descriptions={"fr": "Travaux de chaussée", "en": "Road works"},
    )
    return EventRecord(**{**fields, **changes})


async def seed(storage: Storage) -> None:
    now = datetime.now(UTC)
    await storage.ensure_source("cd34", "datex2", "http://127.0.0.1:9/cd34")
    await storage.ensure_source("cnt", "comptage-mobilites", "http://127.0.0.1:9/cnt")
    await storage.upsert_events(
        "cd34",
        [
            event("works"),
            event("crash", type="accident", subtype="Accident", severity="high", geometry=SETE, road="RD2"),
            event(
                "closed",
                type="closure",
                subtype=None,
                status="planned",
                geometry=BEZIERS,
                road="RD909",
                planned_start=now + timedelta(hours=2),
                actual_start=None,
            ),
        ],
        seen_at=now - timedelta(minutes=5),
    )
    # Ended an hour ago: still published. Ended two days ago: gone from live feeds.
    await storage.upsert_events(
        "cd34", [event("recent", status="ended", actual_end=now - timedelta(hours=1))], seen_at=now - timedelta(hours=1)
    )
    await storage.upsert_events(
        "cd34", [event("old", status="ended", actual_end=now - timedelta(days=2))], seen_at=now - timedelta(days=2)
    )
    await storage.upsert_sites(
        "cnt", [SiteRecord(external_id="S1", name="RD613 Montbazin", road="RD613", lon=3.69, lat=43.51)]
    )
    await storage.upsert_channels(
        "cnt",
        [
            ChannelRecord(site_external_id="S1", external_id="S1-N", direction="N", time_step=900),
            ChannelRecord(site_external_id="S1", external_id="S1-S", direction="S", time_step=900),
        ],
    )
    ids = await storage.channel_ids("cnt")
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    await storage.ingest_measurements(
        [(ids["S1-N"], start, 900, 42, 71.5, None, "observed"), (ids["S1-S"], start, 900, 37, None, None, "observed")]
    )
    run = await storage.start_run("cd34")
    await storage.finish_run(run, RunStats(http_status=200, complete=True))
    run = await storage.start_run("cnt")
    await storage.finish_run(run, RunStats(http_status=503, error="HTTP 503 from the counting server"))


@asynccontextmanager
async def running(storage: Storage, *, wait_ready: bool = True) -> AsyncIterator[TestClient]:
    client = TestClient(TestServer(build_app(CONFIG, storage), host="127.0.0.1"), auto_decompress=False)
    await client.start_server()
    try:
        if wait_ready:
            await eventually(lambda: status_of(client, "/readyz", 200))
        yield client
    finally:
        await client.close()


@pytest.fixture(scope="module")
async def shared(server: Any) -> AsyncIterator[TestClient]:
    """One seeded application for the tests that only read (per engine)."""
    store = await Storage.open(server.new_database())
    try:
        await seed(store)
        async with running(store) as c:
            yield c
    finally:
        await store.close()


@pytest.fixture
async def client(storage: Storage) -> AsyncIterator[TestClient]:
    """A seeded application of the test's own, for tests that change data."""
    await seed(storage)
    async with running(storage) as c:
        yield c


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = WAIT) -> Any:
    """Polls `check` until it returns something true; fails after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition still false after {timeout} s")
        await asyncio.sleep(0.05)


async def status_of(client: TestClient, path: str, want: int) -> bool:
    async with client.get(path) as resp:
        return resp.status == want


def decoded(resp: ClientResponse, raw: bytes) -> bytes:
    coding = resp.headers.get("Content-Encoding", "identity")
    return {"identity": lambda b: b, "gzip": gzip.decompress, "br": brotli.decompress}[coding](raw)


async def fetch(client: TestClient, path: str, **headers: str) -> tuple[ClientResponse, bytes]:
    headers.setdefault("Accept-Encoding", "identity")
    async with client.get(path, headers=headers) as resp:
        return resp, await resp.read()


async def fetch_json(client: TestClient, path: str) -> Any:
    resp, body = await fetch(client, path)
    assert resp.status == 200, body
    return json.loads(body)


def ids(collection: dict[str, Any]) -> set[str]:
    return {f["id"] for f in collection["features"]}


# ---------------------------------------------------------------- serving and revalidation


@pytest.mark.parametrize("path", ALL_PATHS)
async def test_feed_is_served_then_revalidated(shared: TestClient, path: str):
    resp, body = await fetch(shared, path)
    assert resp.status == 200, body
    etag, last_modified = resp.headers["ETag"], resp.headers["Last-Modified"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
    assert resp.headers["Vary"] == "Accept-Encoding"
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "Content-Encoding" not in resp.headers
    if path == STATUS_PATH:
        assert resp.headers["Cache-Control"] == "no-cache"
    else:
        assert resp.headers["Cache-Control"] == f"public, max-age={CONFIG.server.feed_max_age}"
    if path.endswith(".xml"):
        assert resp.headers["Content-Type"].startswith("application/xml")
        etree.fromstring(body)
    else:
        assert resp.headers["Content-Type"] in ("application/json", "application/geo+json")
        json.loads(body)

    if path == STATUS_PATH:
        return  # re-rendered every few seconds: its validators move on their own
    for inm in (etag, "W/" + etag, f'"nope", {etag}', "*"):
        r, b = await fetch(shared, path, **{"If-None-Match": inm})
        assert (r.status, b) == (304, b""), inm
        assert r.headers["ETag"] == etag and r.headers["Cache-Control"].startswith("public")
        assert r.headers["Access-Control-Allow-Origin"] == "*"
    r, _ = await fetch(shared, path, **{"If-None-Match": '"something-else"'})
    assert r.status == 200
    r, b = await fetch(shared, path, **{"If-Modified-Since": last_modified})
    assert (r.status, b) == (304, b"")
    earlier = format_datetime(parsedate_to_datetime(last_modified) - timedelta(seconds=1), usegmt=True)
    r, _ = await fetch(shared, path, **{"If-Modified-Since": earlier})
    assert r.status == 200
    # If-None-Match wins over If-Modified-Since.
    r, _ = await fetch(shared, path, **{"If-None-Match": '"other"', "If-Modified-Since": last_modified})
    assert r.status == 200

    async with shared.head(path, headers={"Accept-Encoding": "identity"}) as head:
        assert head.status == 200 and await head.read() == b""
        assert head.headers["ETag"] == etag
        assert int(head.headers["Content-Length"]) == len(body)


async def test_compressed_variants_decode_to_the_identity_body(shared: TestClient):
    for path in ("/feeds/datex2/v3/situations.xml", EVENTS_GEOJSON, "/feeds/sites.geojson"):
        plain, body = await fetch(shared, path)
        cases = {
            "gzip, deflate, br": "br",
            "gzip": "gzip",
            "br;q=0, gzip": "gzip",
            "gzip;q=1.0, br;q=0.5": "gzip",
            "gzip;q=0.4, br;q=0.9": "br",
            "*": "br",
            "*;q=0.5, br;q=0": "gzip",
            "gzip;q=0, br;q=0": "identity",
            "identity": "identity",
            "deflate": "identity",
        }
        for accept, want in cases.items():
            resp, raw = await fetch(shared, path, **{"Accept-Encoding": accept})
            assert resp.status == 200
            assert resp.headers.get("Content-Encoding", "identity") == want, (path, accept)
            assert resp.headers["Vary"] == "Accept-Encoding"
            assert decoded(resp, raw) == body
            if want != "identity":
                assert len(raw) < len(body)
                # Its own strong ETag, and a 304 when revalidated with it.
                assert resp.headers["ETag"] == plain.headers["ETag"][:-1] + f'-{want}"'
                again, empty = await fetch(
                    shared, path, **{"Accept-Encoding": accept, "If-None-Match": resp.headers["ETag"]}
                )
                assert (again.status, empty) == (304, b"")


async def test_cors_preflight_and_headers(shared: TestClient):
    async with shared.options(
        EVENTS_GEOJSON,
        headers={
            "Origin": "https://maps.example.org",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "if-none-match",
        },
    ) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "GET" in resp.headers["Access-Control-Allow-Methods"]
        assert "if-none-match" in resp.headers["Access-Control-Allow-Headers"].lower()
    resp, _ = await fetch(shared, "/feeds/waze/cifs.xml", Origin="https://maps.example.org")
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "ETag" in resp.headers["Access-Control-Expose-Headers"]


# ---------------------------------------------------------------- content and filters


async def test_live_feeds_keep_recently_ended_events_only(shared: TestClient):
    doc = await fetch_json(shared, EVENTS_GEOJSON)
    assert ids(doc) == {"cd34:works", "cd34:crash", "cd34:closed", "cd34:recent"}
    statuses = {f["id"]: f["properties"]["status"] for f in doc["features"]}
    assert statuses["cd34:recent"] == "ended"
    _, xml = await fetch(shared, "/feeds/datex2/v3/situations.xml")
    assert b"cd34:recent" in xml and b"cd34:old" not in xml


async def test_event_filters(shared: TestClient):
    async def filtered(query: str) -> set[str]:
        return ids(await fetch_json(shared, f"{EVENTS_GEOJSON}?{query}"))

    assert await filtered("bbox=3.8,43.5,4.0,43.7") == {"cd34:works", "cd34:recent"}
    assert await filtered("type=accident,closure") == {"cd34:crash", "cd34:closed"}
    assert await filtered("type=accident&type=closure") == {"cd34:crash", "cd34:closed"}
    assert await filtered("status=planned") == {"cd34:closed"}
    assert await filtered("status=ended,active&type=roadworks&bbox=3.8,43.5,4.0,43.7") == {"cd34:works", "cd34:recent"}
    assert await filtered("bbox=0,0,1,1") == set()
    assert await filtered("_=1700000000") == ids(await fetch_json(shared, EVENTS_GEOJSON))  # cache busters ignored

    # Equal queries are one cached rendering: same validators, and 304 on revalidation.
    one, body = await fetch(shared, f"{EVENTS_GEOJSON}?type=closure,accident&bbox=3,43,4,44")
    two, body2 = await fetch(shared, f"{EVENTS_GEOJSON}?bbox=3.0,43.0,4.0,44.0&type=accident,closure")
    assert one.headers["ETag"] == two.headers["ETag"] and body == body2
    whole, _ = await fetch(shared, EVENTS_GEOJSON)
    assert one.headers["ETag"] != whole.headers["ETag"]
    assert one.headers["Last-Modified"] == whole.headers["Last-Modified"]
    r, b = await fetch(
        shared, f"{EVENTS_GEOJSON}?type=closure,accident&bbox=3,43,4,44", **{"If-None-Match": one.headers["ETag"]}
    )
    assert (r.status, b) == (304, b"")
    r, raw = await fetch(shared, f"{EVENTS_GEOJSON}?type=accident", **{"Accept-Encoding": "br, gzip"})
    assert ids(json.loads(decoded(r, raw))) == {"cd34:crash"}


@pytest.mark.parametrize(
    ("query", "parameter", "value", "says"),
    [
        ("bbox=3,43,4", "bbox", "3,43,4", "4 comma-separated numbers"),
        ("bbox=3,43,east,44", "bbox", "3,43,east,44", "not a number"),
        ("bbox=4,43,3,44", "bbox", "4,43,3,44", "greater than"),
        ("bbox=3,43,4,95", "bbox", "3,43,4,95", "latitude"),
        ("bbox=", "bbox", "", "empty"),
        ("bbox=3,43,4,44&bbox=1,1,2,2", "bbox", "3,43,4,44&1,1,2,2", "once"),
        ("type=roadworks,meteor", "type", "roadworks,meteor", "meteor"),
        ("type=", "type", "", "empty"),
        ("status=active,,ended", "status", "active,,ended", "empty"),
        ("status=closed", "status", "closed", "closed"),
    ],
)
async def test_bad_filters_get_a_clear_400(shared: TestClient, query: str, parameter: str, value: str, says: str):
    resp, body = await fetch(shared, f"{EVENTS_GEOJSON}?{query}")
    assert resp.status == 400
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    error = json.loads(body)
    assert (error["error"], error["parameter"], error["value"]) == ("invalid_parameter", parameter, value)
    assert says in error["detail"]
    if parameter == "bbox":
        assert "lon_min,lat_min,lon_max,lat_max" in error["expected"]
    else:
        assert "roadworks" in error["expected"] or "active" in error["expected"]


# ---------------------------------------------------------------- changes in the database


EVENT_FEED_PATHS = [spec.path for spec in FEEDS if spec.kind == "events" and spec.path != "/feeds/waze/report.json"]


def change_number(body: bytes) -> int:
    """The last of the changes `new-works-1` … `new-works-N` a feed's body shows."""
    shown = [int(m) for m in re.findall(rb"cd34:new-works-(\d+)", body)]
    return max(shown, default=0)


async def test_stored_changes_publish_new_versions(client: TestClient, storage: Storage):
    """One change publishes one new version of every feed it touches, switched together.

    Checked where versions change: at every publication the publisher announces
    (what every request and every other serving process reads), all the event
    feeds show the same change. And as a client sees it: reading events.geojson,
    then each other event feed, it never finds an older version after a newer one."""
    publisher = client.app[CONTEXT].publisher
    views: list[dict[str, int]] = []

    def on_publication(_path: str) -> None:
        current = {path: publisher.state(path).current for path in EVENT_FEED_PATHS}
        views.append({path: change_number(feed.body) for path, feed in current.items() if feed is not None})

    publisher.add_observer(on_publication)
    sites_before, _ = await fetch(client, "/feeds/datex2/v3/measured-data.xml")
    changes = 6
    done = asyncio.Event()
    rounds: list[dict[str, int]] = []

    async def read_in_order() -> None:
        while not done.is_set():
            seen = {}
            for path in [EVENTS_GEOJSON, *[p for p in EVENT_FEED_PATHS if p != EVENTS_GEOJSON]]:
                resp, body = await fetch(client, path)
                assert resp.status == 200, (path, body[:300])
                seen[path] = change_number(body)
            rounds.append(seen)

    reader = asyncio.create_task(read_in_order())
    try:
        for k in range(1, changes + 1):
            await storage.upsert_events(
                "cd34", [event(f"new-works-{k}", geometry=BEZIERS, road="RD909")], seen_at=datetime.now(UTC)
            )

            async def shown(k: int = k) -> bool:
                return change_number((await fetch(client, EVENTS_GEOJSON))[1]) >= k

            await eventually(shown)
        done.set()
        await reader
    finally:
        reader.cancel()
    assert views and all(len(set(view.values())) == 1 for view in views), [v for v in views if len(set(v.values())) > 1]
    assert {max(view.values()) for view in views} >= set(range(1, changes + 1))
    # Every feed shows every change once the GeoJSON does, and all are present at the end.
    for seen in rounds:
        newest = seen[EVENTS_GEOJSON]
        assert all(n >= newest for n in seen.values()), seen
    final = {path: change_number((await fetch(client, path))[1]) for path in EVENT_FEED_PATHS}
    assert set(final.values()) == {changes}, final
    # Filtered renderings follow the new version too.
    assert f"cd34:new-works-{changes}" in ids(await fetch_json(client, f"{EVENTS_GEOJSON}?type=roadworks"))
    # Site feeds did not change: only events were notified.
    resp, _ = await fetch(client, "/feeds/datex2/v3/measured-data.xml")
    assert resp.headers["ETag"] == sites_before.headers["ETag"]

    ids_ = await storage.channel_ids("cnt")
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    await storage.ingest_measurements([(ids_["S1-N"], start, 900, 123, 88.0, None, "observed")])

    async def sites_changed() -> dict[str, Any] | None:
        _resp, body = await fetch(client, "/feeds/sites.geojson")
        doc = json.loads(body)
        latest = [c["latest"] for f in doc["features"] for c in f["properties"]["channels"]]
        return doc if any(lat and lat["count"] == 123 for lat in latest) else None

    await eventually(sites_changed)
    resp, _xml = await fetch(client, "/feeds/datex2/v3/measured-data.xml")
    assert resp.headers["ETag"] != sites_before.headers["ETag"]


async def test_unchanged_data_keeps_the_same_version(client: TestClient, storage: Storage):
    async def status_after(reads: dict[str, int] | None = None) -> dict[str, Any] | None:
        doc = await fetch_json(client, STATUS_PATH)
        if reads is None:  # a status that has seen the first renders
            return doc if all(f["renders"] for f in doc["feeds"]) else None
        return doc if all(doc["data_reads"][k] > n for k, n in reads.items()) else None

    seen = await eventually(status_after)
    renders = {f["path"]: f["renders"] for f in seen["feeds"]}
    before, _ = await fetch(client, "/feeds/datex2/v2/situations.xml")
    # A NOTIFY without any change in the data: the data is read again, its
    # fingerprint is the same, nothing is re-rendered and the ETags stay.
    # A poll that saw every event unchanged only moves last_seen, which no feed shows.
    await storage.pool.execute("UPDATE events SET last_seen = last_seen + interval '1 minute'")
    await storage.pool.execute("SELECT pg_notify('roadfeed_changes', 'events')")
    await storage.pool.execute("SELECT pg_notify('roadfeed_changes', 'measurements')")
    later = await eventually(lambda: status_after(seen["data_reads"]))
    assert {f["path"]: f["renders"] for f in later["feeds"]} == renders
    after, _ = await fetch(client, "/feeds/datex2/v2/situations.xml")
    assert after.headers["ETag"] == before.headers["ETag"]


async def test_listener_reconnects_and_catches_up(client: TestClient, storage: Storage):
    find = "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()"
    old_pid = await eventually(lambda: storage.pool.fetchval(find, LISTENER_APPLICATION_NAME))
    before, _ = await fetch(client, EVENTS_GEOJSON)
    assert await storage.pool.fetchval("SELECT pg_terminate_backend($1)", old_pid)
    # Stored while the listener may be away: the reconnection's catch-up must publish it.
    await storage.upsert_events(
        "cd34", [event("while-away", type="accident", subtype="Accident", geometry=SETE)], seen_at=datetime.now(UTC)
    )

    async def published() -> bool:
        return "cd34:while-away" in ids(await fetch_json(client, EVENTS_GEOJSON))

    await eventually(published)

    async def new_listener() -> int | None:
        pid = await storage.pool.fetchval(find, LISTENER_APPLICATION_NAME)
        return pid if pid and pid != old_pid else None

    await eventually(new_listener)

    async def status_connected() -> bool:
        listener = (await fetch_json(client, STATUS_PATH))["listener"]
        return listener["connected"] and listener["connections"] >= 2

    await eventually(status_connected)
    # The new connection hears changes again.
    await storage.upsert_events("cd34", [event("after", geometry=SETE)], seen_at=datetime.now(UTC))

    async def heard() -> bool:
        return "cd34:after" in ids(await fetch_json(client, EVENTS_GEOJSON))

    await eventually(heard)
    resp, _ = await fetch(client, EVENTS_GEOJSON)
    assert resp.headers["ETag"] != before.headers["ETag"]


# ---------------------------------------------------------------- status and readiness


async def test_status_reports_sources_and_feeds(shared: TestClient):
    status = await fetch_json(shared, STATUS_PATH)
    sources = {s["id"]: s for s in status["sources"]}
    assert sources["cd34"]["last_success"] is not None and sources["cd34"]["lag_seconds"] >= 0
    assert sources["cd34"]["failing"] is False and sources["cd34"]["interval_seconds"] == 60
    assert sources["cnt"]["last_success"] is None and sources["cnt"]["lag_seconds"] is None
    assert sources["cnt"]["last_error"] == "HTTP 503 from the counting server" and sources["cnt"]["failing"]
    feeds = {f["path"]: f for f in status["feeds"]}
    assert set(feeds) == {spec.path for spec in FEEDS}
    for path, f in feeds.items():
        resp, body = await fetch(shared, path)
        assert f["state"] == "ok", f
        assert f["size"] == len(body) and f["etag"] == resp.headers["ETag"]
        assert f["generation_ms"] >= 0 and f["published_at"].endswith("Z")
    assert status["listener"]["connected"] is True


async def test_health_and_readiness(shared: TestClient):
    resp, body = await fetch(shared, "/healthz")
    assert resp.status == 200 and json.loads(body)["status"] == "alive"
    resp, body = await fetch(shared, "/readyz")
    assert resp.status == 200
    assert json.loads(body) == {"status": "ready", "database": "ok", "feeds_pending": []}


async def test_feeds_answer_503_until_first_rendered(storage: Storage, db_url: str):
    await seed(storage)
    blocker = await asyncpg.connect(db_url)
    tx = blocker.transaction()
    await tx.start()
    await blocker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")  # event feeds cannot render yet
    try:
        async with running(storage, wait_ready=False) as client:
            await eventually(lambda: status_of(client, "/feeds/sites.geojson", 200))
            resp, body = await fetch(client, "/feeds/datex2/v3/situations.xml")
            assert resp.status == 503 and resp.headers["Retry-After"]
            assert json.loads(body)["error"] == "not_ready"
            resp, body = await fetch(client, f"{EVENTS_GEOJSON}?type=accident")
            assert resp.status == 503
            resp, body = await fetch(client, f"{EVENTS_GEOJSON}?type=meteor")
            assert resp.status == 400  # validation does not wait for data
            resp, body = await fetch(client, "/readyz")
            ready = json.loads(body)
            assert resp.status == 503 and ready["status"] == "not_ready"
            assert EVENTS_GEOJSON in ready["feeds_pending"] and "/feeds/sites.geojson" not in ready["feeds_pending"]
            await tx.rollback()
            await eventually(lambda: status_of(client, "/readyz", 200))
            resp, _ = await fetch(client, "/feeds/datex2/v3/situations.xml")
            assert resp.status == 200
    finally:
        await blocker.close()


async def test_nothing_to_publish_is_explained(storage: Storage):
    await storage.ensure_source("cd34", "datex2", "http://127.0.0.1:9/cd34")
    await storage.upsert_events("cd34", [event("works")], seen_at=datetime.now(UTC))
    async with running(storage) as client:  # ready: an empty feed is a settled feed
        resp, body = await fetch(client, "/feeds/datex2/v3/measurement-sites.xml")
        assert resp.status == 503 and json.loads(body)["error"] == "nothing_to_publish"
        assert "site" in json.loads(body)["detail"]
        feeds = {f["path"]: f for f in (await fetch_json(client, STATUS_PATH))["feeds"]}
        assert feeds["/feeds/datex2/v3/measured-data.xml"]["state"] == "empty"
        sites = await fetch_json(client, "/feeds/sites.geojson")
        assert sites["features"] == []
