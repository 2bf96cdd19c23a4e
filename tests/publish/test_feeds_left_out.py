"""A record one renderer cannot write never holds a feed hostage.

Records with extreme values within the ingest bounds go through the storage API
into the real database, and rows beyond them (stored before the bounds existed,
or by another writer) are written with SQL; the running application's publisher
renders every feed from it over real HTTP. Whatever a format cannot carry (a date whose end or
local time overflows, say) is left out of that feed only, counted and listed
with the reason in /feeds/status.json; every other record and every other feed
goes on, and /readyz stays ready.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feed import model
from feed.config import Config, SourceConfig
from feed.http.app import build_app
from feed.model import ChannelRecord, EventRecord, EventStatus, EventType, Geometry, Severity, SiteRecord, StoredEvent
from feed.publish.catalogue import EVENTS_GEOJSON, FEEDS, STATUS_PATH
from feed.store.storage import Storage
from feed.store.writes import CHANGES_CHANNEL

WAIT = 15.0
LATEST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)  # the last instant Python (and so asyncpg) can carry
BOUND_LATEST = model.LATEST - timedelta(seconds=1)  # the ingest bounds (feed.model)
BOUND_EARLIEST = model.EARLIEST
CONFIG = Config(
    sources=[
        SourceConfig(id="gen", kind="datex2", url="http://127.0.0.1:9/gen", interval=60),
        SourceConfig(id="cnt", kind="comptage-mobilites", url="http://127.0.0.1:9/cnt", interval=60),
    ]
)
EVENT_FEEDS = [spec for spec in FEEDS if spec.kind == "events"]
SITE_FEEDS = [spec for spec in FEEDS if spec.kind == "sites"]
WORKS = Geometry(type="LineString", coordinates=[[3.87, 43.61], [3.88, 43.615]])


@pytest.fixture
async def client(storage: Storage) -> AsyncIterator[TestClient]:
    await storage.ensure_source("gen", "datex2", "http://127.0.0.1:9/gen")
    await storage.ensure_source("cnt", "comptage-mobilites", "http://127.0.0.1:9/cnt")
    async with TestClient(TestServer(build_app(CONFIG, storage), host="127.0.0.1")) as c:
        await _until(lambda: _ready(c))
        yield c


async def _until(check: Any, timeout: float = WAIT) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        assert asyncio.get_running_loop().time() < deadline, f"still false after {timeout} s"
        await asyncio.sleep(0.05)


async def _status(client: TestClient, path: str) -> int:
    async with client.get(path) as resp:
        await resp.read()
        return resp.status


async def _ready(client: TestClient) -> bool:
    return await _status(client, "/readyz") == 200


async def _get(client: TestClient, path: str) -> bytes:
    async with client.get(path) as resp:
        body = await resp.read()
        assert resp.status == 200, (path, resp.status, body[:300])
        return body


def _left_out(status: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Per feed: left-out record id -> reason."""
    out = {}
    for feed in status["feeds"]:
        assert feed["left_out"] == len(feed["left_out_records"]), feed
        out[feed["path"]] = {r["id"]: r["reason"] for r in feed["left_out_records"]}
    return out


def _works(external_id: str, **changes: Any) -> EventRecord:
    now = datetime.now(UTC)
    fields: dict[str, Any] = dict(
        external_id=external_id,
        type="roadworks",
        status="active",
        severity="medium",
        planned_start=now - timedelta(days=1),
        planned_end=now + timedelta(days=2),
        road="RD613",
        direction="both",
        lanes_affected="all",
        geometry=WORKS,
        descriptions={"fr": "Travaux"},
    )
    return EventRecord(**{**fields, **changes})


async def test_a_far_future_event_is_left_out_of_the_feeds_that_cannot_write_it(client: TestClient, storage: Storage):
    """The reported case: an event starting at 9999-12-31T23:59:59Z with no end. Ingest
    refuses such a date now (feed.model); a row stored before that, or by another
    writer, is what the renderers meet, so the row is written with SQL."""
    await storage.upsert_events("gen", [_works("fine"), _works("far")], seen_at=datetime.now(UTC))
    await storage.pool.execute(
        """UPDATE events SET planned_start = $1, planned_end = NULL, status = 'planned',
                             version = version + 1, updated = now()
            WHERE id = 'gen:far'""",
        LATEST,
    )
    await storage.pool.execute("SELECT pg_notify($1, 'events')", CHANGES_CHANNEL)

    async def settled() -> dict[str, Any] | None:
        status = json.loads(await _get(client, STATUS_PATH))
        wzdx = _left_out(status)["/feeds/wzdx/v4.2/work-zones.geojson"]
        return status if "gen:far" in wzdx else None

    status = await _until(settled)
    left_out = _left_out(status)
    for path in ("/feeds/wzdx/v4.2/work-zones.geojson", "/feeds/waze/cifs.xml", "/feeds/waze/cifs.json"):
        assert set(left_out[path]) == {"gen:far"} and "OverflowError" in left_out[path]["gen:far"], left_out[path]
        body = await _get(client, path)
        assert b"gen:fine" in body and b"gen:far" not in body
    # The formats that can carry it still publish it; nothing is pending; ready.
    assert {"gen:fine", "gen:far"} <= {f["id"] for f in json.loads(await _get(client, EVENTS_GEOJSON))["features"]}
    assert b"gen:far" in await _get(client, "/feeds/datex2/v3/situations.xml")
    assert all(f["state"] in ("ok", "empty") for f in status["feeds"]), status["feeds"]
    assert await _status(client, "/readyz") == 200
    # Once the record changes into something writable, it is published again.
    await storage.upsert_events("gen", [_works("far", status="planned")], seen_at=datetime.now(UTC))
    await _until(lambda: _has(client, "/feeds/wzdx/v4.2/work-zones.geojson", b"gen:far"))

    async def none_left_out() -> bool:
        return not any(_left_out(json.loads(await _get(client, STATUS_PATH))).values())

    await _until(none_left_out)  # status.json follows the feeds


async def test_a_row_beyond_the_bounds_is_ended_by_a_snapshot_like_any_other(storage: Storage):
    await storage.ensure_source("gen", "datex2", "http://127.0.0.1:9/gen")
    fine = _works("fine")
    await storage.upsert_events("gen", [fine, _works("far")], seen_at=datetime.now(UTC))
    await storage.pool.execute("UPDATE events SET planned_start = $1, planned_end = NULL WHERE id = 'gen:far'", LATEST)
    counts = await storage.upsert_events("gen", [fine], seen_at=datetime.now(UTC), complete_snapshot=True)
    assert counts.updated == 1
    ended = {e.id: e for e in await storage.events()}["gen:far"]
    assert ended.status == "ended" and ended.planned_start == LATEST


async def _has(client: TestClient, path: str, needle: bytes) -> bool:
    return needle in await _get(client, path)


async def test_a_site_with_a_far_future_interval_is_left_out_not_the_feed(client: TestClient, storage: Storage):
    await storage.upsert_sites(
        "cnt",
        [
            SiteRecord(external_id="OK", name="Montbazin", lon=3.69, lat=43.51),
            SiteRecord(external_id="FAR", name="Far away", lon=180.0, lat=-90.0, pr=2**31 - 1, abscissa=2**31 - 1),
        ],
    )
    await storage.upsert_channels(
        "cnt",
        [
            ChannelRecord(site_external_id="OK", external_id="OK-N", direction="N", time_step=3600),
            ChannelRecord(site_external_id="FAR", external_id="FAR-N", direction="N", time_step=3600),
        ],
    )
    ids = await storage.channel_ids("cnt")
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    await storage.ingest_measurements(
        [
            (ids["OK-N"], hour, 3600, 42, 70.0, None, "observed"),
            (ids["FAR-N"], LATEST.replace(minute=0, second=0), 3600, 2**31 - 1, 300.0, None, "observed"),
        ]
    )
    sites = {s.external_id: s.id for s in await storage.sites()}

    async def settled() -> dict[str, Any] | None:
        status = json.loads(await _get(client, STATUS_PATH))
        return status if str(sites["FAR"]) in _left_out(status)["/feeds/sites.geojson"] else None

    status = await _until(settled)
    for spec in SITE_FEEDS:
        body = await _get(client, spec.path)
        reasons = _left_out(status)[spec.path]
        assert set(reasons) <= {str(sites["FAR"])}, reasons
        if spec.path == "/feeds/sites.geojson":
            features = {f["id"] for f in json.loads(body)["features"]}
            assert sites["OK"] in features and sites["FAR"] not in features
    assert await _status(client, "/readyz") == 200


# --------------------------------------------------------------------------- generated records

TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=60)
INSTANT = st.one_of(  # every instant the ingest bounds accept, their edges first
    st.none(),
    st.sampled_from(
        [BOUND_LATEST, BOUND_EARLIEST, BOUND_LATEST - timedelta(hours=1), BOUND_EARLIEST + timedelta(hours=1)]
    ),
    st.datetimes(
        min_value=BOUND_EARLIEST.replace(tzinfo=None),
        max_value=BOUND_LATEST.replace(tzinfo=None),
        timezones=st.just(UTC),
    ),
)
POSITION = st.tuples(
    st.sampled_from([-180.0, 180.0, 0.0, 3.8]) | st.floats(-180, 180),
    st.sampled_from([-90.0, 90.0, 0.0, 43.6]) | st.floats(-90, 90),
).map(list)
GEOMETRY = st.one_of(
    st.none(),
    POSITION.map(lambda p: Geometry(type="Point", coordinates=p)),
    st.lists(POSITION, min_size=2, max_size=6).map(lambda ps: Geometry(type="LineString", coordinates=ps)),
)
_numbers = itertools.count()


@st.composite
def events(draw: st.DrawFn) -> EventRecord:
    return EventRecord(
        external_id=f"e{next(_numbers)}",
        type=draw(st.sampled_from(get_args(EventType))),
        subtype=draw(st.none() | TEXT),
        status=draw(st.sampled_from(get_args(EventStatus))),
        severity=draw(st.sampled_from(get_args(Severity))),
        planned_start=draw(INSTANT),
        planned_end=draw(INSTANT),
        actual_start=draw(INSTANT),
        actual_end=draw(INSTANT),
        road=draw(st.none() | TEXT),
        direction=draw(st.none() | TEXT),
        lanes_affected=draw(st.none() | TEXT),
        geometry=draw(GEOMETRY),
        descriptions=draw(st.dictionaries(st.sampled_from(["fr", "en", "oc", "de", "x-y"]), TEXT, max_size=3)),
        detour=draw(st.none() | TEXT),
        source_version=draw(st.none() | TEXT),
        source_updated=draw(INSTANT),
    )


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(batch=st.lists(events(), min_size=1, max_size=6))
async def test_every_renderer_leaves_out_only_what_it_cannot_write(client: TestClient, storage: Storage, batch):
    """Invariants, after each generated batch is stored: every feed answers 200 and
    /readyz stays ready; a record left out of a feed is listed with a reason and
    absent from it; a record not left out is in every feed that publishes it
    (as the same exporter renders it alone); events.geojson publishes or lists every event."""
    await storage.upsert_events("gen", batch, seen_at=datetime.now(UTC))
    cutoff = datetime.now(UTC) - timedelta(hours=CONFIG.publication.ended_events_hours - 1)
    stored = {e.id: e for e in await storage.events(ended_since=cutoff)}
    wanted = {f"gen:{e.external_id}" for e in batch} & stored.keys()

    async def published() -> tuple[dict[str, Any], dict[str, dict[str, str]], dict[str, bytes]] | None:
        """status.json and the event feeds, once status.json describes the versions served."""
        status = json.loads(await _get(client, STATUS_PATH))
        left_out = _left_out(status)
        etags = {f["path"]: f["etag"] for f in status["feeds"]}
        bodies = {}
        for spec in EVENT_FEEDS:
            async with client.get(spec.path, headers={"Accept-Encoding": "identity"}) as resp:
                bodies[spec.path] = await resp.read()
                assert resp.status == 200, (spec.path, resp.status, bodies[spec.path][:300])
                if resp.headers["ETag"] != etags[spec.path]:
                    return None
        features = {f["id"] for f in json.loads(bodies[EVENTS_GEOJSON])["features"]}
        return (status, left_out, bodies) if wanted <= features | left_out[EVENTS_GEOJSON].keys() else None

    status, left_out, bodies = await _until(published)
    assert all(f["state"] in ("ok", "empty") for f in status["feeds"]), status["feeds"]
    assert await _status(client, "/readyz") == 200
    now = datetime.now(UTC)
    for spec in EVENT_FEEDS:
        assert spec.render is not None
        body = bodies[spec.path]
        for record, reason in left_out[spec.path].items():
            assert record in stored and reason, (spec.path, record, reason)
            assert f'"{record}"'.encode() not in body, (spec.path, record)
            with pytest.raises(Exception):  # noqa: B017 - whatever the exporter raises: it cannot write it
                spec.render([stored[record]], CONFIG.publication, now)
        for record in wanted - left_out[spec.path].keys():
            alone = spec.render([stored[record]], CONFIG.publication, now)
            if record.encode() in alone:
                assert record.encode() in body, (spec.path, record)


def test_generated_events_reach_the_limits():
    """A row beyond the ingest bounds (the SQL-written one above) is one a renderer
    cannot write: the reason the renderers must isolate records."""
    fields = {**dict(_works("x")), "planned_start": LATEST, "planned_end": None}
    far = StoredEvent.model_construct(
        **fields, id="gen:x", source_id="gen", version=1, first_seen=LATEST, last_seen=LATEST, updated=LATEST
    )
    failing = []
    for spec in EVENT_FEEDS:
        assert spec.render is not None
        try:
            spec.render([far], CONFIG.publication, datetime.now(UTC))
        except OverflowError:
            failing.append(spec.path)
    assert "/feeds/wzdx/v4.2/work-zones.geojson" in failing
