"""The admin API over the real app and the real databases: the token, sources'
state, a poll now through the process's collectors, the quarantine and markings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from collectors.fetch import Fetcher
from feed.collect.scheduler import Collector
from feed.config import Config, PublicationConfig, ServerConfig, SourceConfig
from feed.http.admin import attach_collector
from feed.http.app import build_app
from feed.model import ChannelRecord, Quarantined, SiteRecord
from feed.roads import parse_referential
from feed.simulator.geography import referential_geojson
from feed.store import roads
from feed.store.storage import RunStats, Storage

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SPEEDS = Path(__file__).resolve().parents[1] / "data" / "datex2" / "fr-bisonfute-tipi-speeds-measureddata-v2.2.xml"
ERROR_KEYS = {"error", "parameter", "value", "expected", "detail"}


def config(source_url: str = "http://127.0.0.1:9/speeds.xml", token: str | None = TOKEN) -> Config:
    return Config(
        server=ServerConfig(admin_token=token, rate_limit_per_minute=0),
        publication=PublicationConfig(bbox=(-5.0, 41.0, 10.0, 51.5)),
        sources=[
            SourceConfig(id="tipi-speeds", kind="datex2", url=source_url, interval=60),
            SourceConfig(
                id="ods",
                kind="opendatasoft",
                url="http://127.0.0.1:9/ods",
                interval=300,
                options={"dataset": "comptages", "api_key": "do-not-show", "dataset_type": "counters"},
            ),
        ],
    )


async def seed(storage: Storage) -> int:
    async with storage.pool.acquire() as conn:  # a closure is placed on the referential's road
        await roads.store_referential(conn, parse_referential(referential_geojson(), "simulator"))
    await storage.ensure_source("ods", "opendatasoft", "http://127.0.0.1:9/ods")
    await storage.upsert_sites(
        "ods", [SiteRecord(external_id="S1", name="RD613 Montbazin", road="RD613", lon=3.69, lat=43.51)]
    )
    await storage.upsert_channels(
        "ods", [ChannelRecord(site_external_id="S1", external_id="S1-N", direction="N", time_step=3600)]
    )
    run = await storage.start_run("ods")
    await storage.quarantine(
        "ods",
        run,
        [
            Quarantined(reason="count is negative", excerpt='{"count": -3}', record_ref="row 7"),
            Quarantined(reason="no site", excerpt="{}", record_ref="row 9"),
        ],
    )
    await storage.finish_run(run, RunStats(http_status=200, complete=True, quarantined=2))
    return (await storage.site_ids("ods", ["S1"]))["S1"]


@asynccontextmanager
async def running(storage: Storage, cfg: Config) -> AsyncIterator[TestClient]:
    client = TestClient(TestServer(build_app(cfg, storage), host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def client(storage: Storage) -> AsyncIterator[TestClient]:
    """A seeded app of the test's own, for tests that write."""
    await seed(storage)
    async with running(storage, config()) as c:
        yield c


@pytest.fixture(scope="module")
async def shared(server: Any) -> AsyncIterator[tuple[TestClient, Storage]]:
    """One seeded app per engine for the tests that change nothing."""
    store = await Storage.open(server.new_database())
    try:
        await seed(store)
        async with running(store, config()) as c:
            yield c, store
    finally:
        await store.close()


async def assert_error(resp: aiohttp.ClientResponse, status: int, parameter: str | None = None) -> dict[str, Any]:
    body = await resp.json()
    assert resp.status == status, body
    assert set(body) == ERROR_KEYS, body
    assert resp.headers["Cache-Control"] == "no-store"
    if parameter is not None:
        assert body["error"] == "invalid_parameter" and body["parameter"] == parameter, body
    return body


ROUTES = [
    ("GET", "/api/v1/admin/sources"),
    ("POST", "/api/v1/admin/sources/ods/run"),
    ("GET", "/api/v1/admin/quarantine"),
    ("GET", "/api/v1/admin/markings"),
    ("POST", "/api/v1/admin/markings"),
    ("DELETE", "/api/v1/admin/markings/1"),
]


async def test_every_route_needs_the_token(shared: tuple[TestClient, Storage]):
    client, _ = shared
    for method, path in ROUTES:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": f"Bearer {TOKEN}x"},
            {"Authorization": "Bearer"},
        ):
            async with client.request(method, path, headers=headers) as resp:
                body = await assert_error(resp, 401)
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                assert "Access-Control-Allow-Origin" not in resp.headers
                assert body["error"] == "unauthorized", (method, path, headers)


async def test_admin_api_is_off_without_a_token(storage: Storage):
    async with running(storage, config(token=None)) as c:
        for method, path in ROUTES:
            async with c.request(method, path, headers=AUTH) as resp:
                body = await assert_error(resp, 403)
                assert body["detail"] == "admin API disabled: set [server] admin_token"


async def test_sources_show_config_state_runs_and_quarantine(shared: tuple[TestClient, Storage]):
    client, _ = shared
    async with client.get("/api/v1/admin/sources", headers=AUTH) as resp:
        assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
        document = await resp.json()
    assert document["collectors_running"] is False
    by_id = {s["id"]: s for s in document["sources"]}
    assert set(by_id) == {"ods", "tipi-speeds"}
    ods = by_id["ods"]
    assert ods["config"]["options"]["api_key"] == "(set)"  # secrets are never shown
    assert ods["config"]["options"]["dataset"] == "comptages"
    assert ods["state"]["kind"] == "opendatasoft" and ods["state"]["last_success"]
    assert ods["quarantine"] == {"total": 2, "last_24h": 2}
    assert len(ods["last_runs"]) == 1 and ods["last_runs"][0]["quarantined"] == 2
    assert by_id["tipi-speeds"]["state"] is None and by_id["tipi-speeds"]["last_runs"] == []


async def test_quarantine_lists_records_by_source(shared: tuple[TestClient, Storage]):
    client, _ = shared
    async with client.get("/api/v1/admin/quarantine?source=ods&limit=1", headers=AUTH) as resp:
        document = await resp.json()
        assert resp.status == 200, document
    assert document["limit"] == 1 and len(document["records"]) == 1
    assert document["records"][0]["source"] == "ods" and document["records"][0]["reason"]
    async with client.get("/api/v1/admin/quarantine?source=nope", headers=AUTH) as resp:
        assert (await resp.json())["records"] == []
    async with client.get("/api/v1/admin/quarantine?source=ods';DELETE FROM quarantine;--", headers=AUTH) as resp:
        assert (await resp.json())["records"] == []
    async with client.get("/api/v1/admin/quarantine", headers=AUTH) as resp:
        assert len((await resp.json())["records"]) == 2
    for bad in ("0", "501", "ten"):
        async with client.get(f"/api/v1/admin/quarantine?limit={bad}", headers=AUTH) as resp:
            await assert_error(resp, 400, "limit")


async def test_run_needs_collectors_in_this_process(shared: tuple[TestClient, Storage]):
    client, _ = shared
    async with client.post("/api/v1/admin/sources/tipi-speeds/run", headers=AUTH) as resp:
        body = await assert_error(resp, 409)
        assert body["detail"].startswith("collectors are not running in this process")
    async with client.post("/api/v1/admin/sources/nope/run", headers=AUTH) as resp:
        await assert_error(resp, 404)


async def test_run_polls_now_through_the_apps_collector(storage: Storage):
    body = SPEEDS.read_bytes()

    async def feed(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/xml")

    source_app = web.Application()
    source_app.router.add_get("/speeds.xml", feed)
    source = TestServer(source_app, host="127.0.0.1")
    await source.start_server()
    cfg = config(str(source.make_url("/speeds.xml")))
    app = build_app(cfg, storage)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            collector = Collector(cfg, storage, Fetcher(session))  # not started: polls only when asked
            attach_collector(app, collector)
            async with client.post("/api/v1/admin/sources/tipi-speeds/run", headers=AUTH) as resp:
                report = await resp.json()
                assert resp.status == 200, report
            assert report["source"] == "tipi-speeds" and report["error"] is None
            assert report["new"] == 2 and report["http_status"] == 200 and report["bytes"] == len(body)
            async with client.get("/api/v1/admin/sources", headers=AUTH) as resp:
                document = await resp.json()
                assert document["collectors_running"] is True
                speeds = next(s for s in document["sources"] if s["id"] == "tipi-speeds")
                assert speeds["last_runs"][0]["id"] == report["run_id"]
            # Another worker holds the source: no second poll at once.
            assert await storage.claim_poll("tipi-speeds", "other-worker", 60, 300, due_only=False)
            async with client.post("/api/v1/admin/sources/tipi-speeds/run", headers=AUTH) as resp:
                assert (await assert_error(resp, 409))["error"] == "busy"
    finally:
        await client.close()
        await source.close()


async def test_markings_are_recorded_listed_and_deleted(client: TestClient, storage: Storage):
    site_id = await storage.pool.fetchval("SELECT id FROM sites")
    closed = {
        "kind": "road_closed",
        "road": "RD613",
        "from": "2025-07-01",
        "to": "2025-07-03T18:00",
        "comment": "works, road closed both ways",
    }
    async with client.post("/api/v1/admin/markings", json=closed, headers=AUTH) as resp:
        first = await resp.json()
        assert resp.status == 201, first
        assert resp.headers["Location"] == f"/api/v1/admin/markings/{first['id']}"
    assert first["road"] == "RD613" and first["site_id"] is None and first["author"] == "admin-token"
    assert first["from"] == "2025-06-30T22:00:00Z" and first["to"] == "2025-07-03T16:00:00Z"  # local time
    closure = (await storage.event_versions(first["event_id"]))[-1]  # the marking's effect: a closure event
    assert closure.type == "closure" and closure.road == "RD613" and closure.status == "ended"
    assert closure.geometry is not None and closure.geometry.type == "LineString"
    faulty = {"kind": "counter_faulty", "site_id": site_id, "from": "2025-07-01T00:00:00+02:00"}
    async with client.post("/api/v1/admin/markings", json=faulty, headers=AUTH) as resp:
        second = await resp.json()
        assert resp.status == 201, second
    assert second["site_id"] == site_id and second["to"] is None and second["comment"] == ""
    async with client.get("/api/v1/admin/markings", headers=AUTH) as resp:
        listed = (await resp.json())["markings"]
    assert [m["id"] for m in listed] == [second["id"], first["id"]]
    async with client.delete(f"/api/v1/admin/markings/{first['id']}", headers=AUTH) as resp:
        assert resp.status == 200 and (await resp.json())["deleted"]["id"] == first["id"]
    async with client.delete(f"/api/v1/admin/markings/{first['id']}", headers=AUTH) as resp:
        await assert_error(resp, 404)
    async with client.delete("/api/v1/admin/markings/1;DROP TABLE markings", headers=AUTH) as resp:
        await assert_error(resp, 404)
    assert await storage.pool.fetchval("SELECT array_agg(id) FROM markings") == [second["id"]]


@pytest.mark.parametrize(
    "body,parameter",
    [
        ({"kind": "closed", "road": "RD613", "from": "2025-07-01"}, "kind"),
        ({"road": "RD613", "from": "2025-07-01"}, "kind"),
        ({"kind": "road_closed", "from": "2025-07-01"}, "road"),
        ({"kind": "road_closed", "road": "RD613'; DROP TABLE sites;--", "from": "2025-07-01"}, "road"),
        ({"kind": "road_closed", "road": "RD613"}, "from"),
        ({"kind": "road_closed", "road": "RD613", "from": "yesterday"}, "from"),
        ({"kind": "road_closed", "road": "RD613", "from": 20250701}, "from"),
        ({"kind": "road_closed", "road": "RD613", "from": "2025-07-02", "to": "2025-07-01"}, "to"),
        ({"kind": "road_closed", "road": "RD613", "from": "2025-07-01", "comment": "x" * 2001}, "comment"),
        ({"kind": "road_closed", "road": "RD613", "from": "2025-07-01", "site_id": 1}, "site_id"),
        ({"kind": "road_closed", "road": "RD613", "from": "2025-07-01", "extra": 1}, "extra"),
        ({"kind": "counter_faulty", "site_id": "1", "from": "2025-07-01"}, "site_id"),
        ({"kind": "counter_faulty", "site_id": True, "from": "2025-07-01"}, "site_id"),
        ({"kind": "counter_faulty", "site_id": 999999, "from": "2025-07-01"}, "site_id"),
        ({"kind": "road_closed", "road": "RD9999", "from": "2025-07-01"}, "road"),  # not in the referential
        ({"kind": "road_closed", "road": "RD613", "pr_from": 3, "from": "2025-07-01"}, "pr_from"),
        ({"kind": "road_closed", "road": "RD613", "pr_from": 3, "pr_to": 500, "from": "2025-07-01"}, "road"),
        (["not", "an", "object"], "body"),
    ],
)
async def test_invalid_markings_are_refused_in_the_api_error_shape(
    shared: tuple[TestClient, Storage], body: Any, parameter: str
):
    client, storage = shared
    async with client.post("/api/v1/admin/markings", json=body, headers=AUTH) as resp:
        await assert_error(resp, 400, parameter)
    assert await storage.pool.fetchval("SELECT count(*) FROM markings") == 0
    assert await storage.pool.fetchval("SELECT count(*) FROM sites") == 1


async def test_a_body_that_is_not_json_is_refused(shared: tuple[TestClient, Storage]):
    client, _ = shared
    async with client.post("/api/v1/admin/markings", data=b"kind=road_closed", headers=AUTH) as resp:
        await assert_error(resp, 400, "body")


async def test_markings_are_written_by_the_writer_and_readable_not_writable_by_the_reader(
    client: TestClient, storage: Storage
):
    async with storage.pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL ROLE roadfeed_writer")
        await conn.execute("INSERT INTO markings (kind, road, valid_from) VALUES ('road_closed', 'RD1', now())")
        await conn.execute("SET LOCAL ROLE roadfeed_reader; SET LOCAL transaction_read_only = off")
        assert await conn.fetchval("SELECT count(*) FROM markings") == 1
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM markings")


async def test_the_admin_api_has_its_own_openapi_document(shared: tuple[TestClient, Storage]):
    client, _ = shared
    async with client.get("/api/v1/admin/openapi.json") as resp:
        assert resp.status == 401
    async with client.get("/api/v1/admin/openapi.json", headers=AUTH) as resp:
        document = await resp.json()
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == {
        f"/api/v1/admin{p}" for p in ("/sources", "/sources/{id}/run", "/quarantine", "/markings", "/markings/{id}")
    }
    async with client.get("/api/v1/openapi.json") as resp:  # the public document leaves them out
        assert not any(p.startswith("/api/v1/admin") for p in (await resp.json())["paths"])
