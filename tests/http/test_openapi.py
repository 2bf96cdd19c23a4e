"""The OpenAPI document tells the truth: every /api/v1 route of the real
application is documented (and nothing else), and real responses, successes and
errors, validate against the documented schemas."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from feed.config import Config, SourceConfig
from feed.http import api, documents
from feed.http.app import build_app
from feed.http.openapi import openapi_document, openapi_routes
from feed.http.openapi import paths as history_paths
from feed.model import ChannelRecord, EventRecord, Geometry, SiteRecord
from feed.publish.publisher import FeedPublisher
from feed.store.storage import RunStats, Storage

PARIS = ZoneInfo("Europe/Paris")
CONFIG = Config(
    sources=[
        SourceConfig(id="cnt", kind="comptage-mobilites", url="http://127.0.0.1:9/cnt"),
        SourceConfig(id="never", kind="datex2", url="http://127.0.0.1:9/never"),
    ]
)
DOC = openapi_document(CONFIG)
BASE = "urn:roadfeed:openapi"
REGISTRY = Registry().with_resource(BASE, Resource.from_contents(DOC, default_specification=DRAFT202012))


class NoFeeds(FeedPublisher):
    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def api_paths(app: Any) -> set[str]:
    """The canonical paths of the routes the application registered under /api/v1."""
    paths = set()
    for resource in app.router.resources():
        info = resource.get_info()
        path = info.get("path") or info.get("formatter")
        if path and path.startswith(documents.API):
            paths.add(path)
    return paths


async def test_every_api_route_of_the_real_application_is_documented(storage: Storage):
    app = build_app(CONFIG, storage)  # every RouteSetup of feed.http.app.ROUTES, as served
    registered = api_paths(app)
    assert f"{documents.API}/sites/{{id}}/counts" in registered and f"{documents.API}/events/{{id}}" in registered
    assert registered == set(DOC["paths"]), registered ^ set(DOC["paths"])
    for path, item in DOC["paths"].items():
        for method, operation in item.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == {part[1:-1] for part in path.split("/") if part.startswith("{")}, (method, path)
            assert {"200", "201"} & set(operation["responses"]), (method, path)


def test_the_document_is_openapi_31_with_valid_schemas():
    assert DOC["openapi"].startswith("3.1")
    assert DOC["info"]["license"]["name"] == CONFIG.publication.licence
    for schema in DOC["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    operation_ids = [operation["operationId"] for item in DOC["paths"].values() for operation in item.values()]
    assert len(operation_ids) == len(set(operation_ids))


async def seed(storage: Storage) -> dict[str, int]:
    await storage.ensure_source("cnt", "comptage-mobilites", "http://127.0.0.1:9/cnt")
    await storage.upsert_sites(
        "cnt",
        [
            SiteRecord(
                external_id="S1",
                name="Montbazin",
                road="RD613",
                insee="34165",
                lon=3.69,
                lat=43.51,
                metadata={"commune": "Montbazin"},
            ),
            SiteRecord(external_id="S2", name="nowhere"),
        ],
    )
    await storage.upsert_channels(
        "cnt",
        [
            ChannelRecord(site_external_id="S1", external_id=f"S1-{d}", direction=d, vehicle_class="all", time_step=900)
            for d in ("N", "S")
        ],
    )
    ids = await storage.channel_ids("cnt")
    start = datetime(2025, 7, 1, tzinfo=PARIS)
    await storage.ingest_measurements(
        [
            (
                cid,
                (start + timedelta(minutes=15 * q)).astimezone(UTC),
                900,
                20 + q % 5,
                80.0 if q % 3 else None,
                None,
                "estimated" if q % 7 == 0 else "observed",
            )
            for cid in ids.values()
            for q in range(96 * 3)
            if q % 11
        ]
    )
    t0 = datetime(2025, 7, 1, 8, tzinfo=PARIS)
    works = EventRecord(
        external_id="w1",
        type="roadworks",
        road="RD613",
        actual_start=t0,
        geometry=Geometry(type="LineString", coordinates=[[3.69, 43.51], [3.70, 43.52]]),
        descriptions={"fr": "Travaux", "en": "Works"},
    )
    await storage.upsert_events("cnt", [works], seen_at=t0)
    await storage.upsert_events(
        "cnt", [works.model_copy(update={"status": "ended", "actual_end": t0})], seen_at=t0 + timedelta(hours=3)
    )
    run = await storage.start_run("cnt")
    await storage.finish_run(run, RunStats(http_status=200, bytes=10, complete=True))
    return await storage.site_ids("cnt", ["S1", "S2"])


@pytest.fixture(scope="module")
async def client(server: Any) -> AsyncIterator[tuple[TestClient, dict[str, int]]]:
    storage = await Storage.open(server.new_database())
    try:
        sites = await seed(storage)
        app = build_app(CONFIG, storage, publisher=NoFeeds(storage, CONFIG), routes=[api.api_routes, openapi_routes])
        c = TestClient(TestServer(app, host="127.0.0.1"))
        await c.start_server()
        try:
            yield c, sites
        finally:
            await c.close()
    finally:
        await storage.close()


def documented_schema(template: str, status: int, content_type: str) -> dict[str, Any] | None:
    response = DOC["paths"][template]["get"]["responses"][str(status)]
    content = response.get("content", {})
    assert content_type in content, f"{template} {status}: {content_type} is not documented"
    return content[content_type].get("schema")


def validate(instance: Any, schema: dict[str, Any]) -> None:
    resolved = {"$ref": BASE + schema["$ref"]} if "$ref" in schema else schema
    errors = sorted(Draft202012Validator(resolved, registry=REGISTRY).iter_errors(instance), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])


REQUESTS = [  # (template, query or concrete path suffix, status)
    ("/api/v1/sites", "", 200),
    ("/api/v1/sites", "?limit=1", 200),
    ("/api/v1/sites", "?road=RD613&commune=montbazin&bbox=3,43,4,44", 200),
    ("/api/v1/sites", "?limit=0", 400),
    ("/api/v1/sites/{id}", "{S1}", 200),
    ("/api/v1/sites/{id}", "{S2}", 200),
    ("/api/v1/sites/{id}", "12345", 404),
    ("/api/v1/sites/{id}/counts", "{S1}/counts?from=2025-07-01&to=2025-07-05", 200),
    ("/api/v1/sites/{id}/counts", "{S1}/counts?from=2025-07-01T06:00&to=2025-07-01T12:00&step=hour&direction=N", 200),
    ("/api/v1/sites/{id}/counts", "{S1}/counts?from=2025&to=2026&step=month&vehicle_class=all", 200),
    ("/api/v1/sites/{id}/counts", "{S2}/counts?from=2025&step=year", 200),
    ("/api/v1/sites/{id}/counts", "{S1}/counts?step=hour&from=2025-01-01&to=2025-12-01", 400),
    ("/api/v1/sites/{id}/counts", "{S1}/counts?vehicle_class=heavy", 404),
    ("/api/v1/sites/{id}/counts", "{S1}/counts?from=1900&to=1901&step=month", 200),
    ("/api/v1/sites/{id}/counts", "12345/counts", 404),
    ("/api/v1/annual", "?year=2025", 200),
    ("/api/v1/annual", "?year=2025&threshold=0", 200),
    ("/api/v1/annual", "?threshold=2", 400),
    ("/api/v1/events", "", 200),
    ("/api/v1/events", "?from=2025-07-01&to=2025-08-01&type=roadworks&status=ended&road=RD613&limit=1", 200),
    ("/api/v1/events", "?type=nope", 400),
    ("/api/v1/events/{id}", "cnt:w1", 200),
    ("/api/v1/events/{id}", "cnt:none", 404),
    ("/api/v1/sources", "", 200),
    ("/api/v1/downloads", "", 200),
    ("/api/v1/downloads/dictionary.json", "", 200),
    ("/api/v1/downloads/{year}/{name}", "2025/dictionary.json", 200),
    ("/api/v1/downloads/{year}/{name}", "2025/nothing.csv", 404),
    ("/api/v1/catalog.jsonld", "", 200),
]


async def test_real_responses_validate_against_the_documented_schemas(client):
    c, sites = client
    checked = set()
    for template, suffix, status in REQUESTS:
        if "{" in template:  # the suffix replaces the templated part
            suffix = suffix.replace("{S1}", str(sites["S1"])).replace("{S2}", str(sites["S2"]))
            path = template[: template.index("{")] + suffix
        else:
            path = template + suffix
        response = await c.get(path)
        assert response.status == status, (path, await response.text())
        content_type = response.content_type
        schema = documented_schema(template, status, content_type)
        assert schema is not None
        validate(json.loads(await response.read()), schema)
        checked.add(template)
    # every history route answered at least once (agents' routes: tests/http/test_authoring.py and others)
    documented = {p for p in history_paths() if p != "/api/v1/openapi.json"}
    assert checked == documented


async def test_csv_and_parquet_answers_are_documented(client):
    c, sites = client
    for template, path in (
        ("/api/v1/sites/{id}/counts", f"/api/v1/sites/{sites['S1']}/counts?from=2025-07-01"),
        ("/api/v1/annual", "/api/v1/annual?year=2025"),
        ("/api/v1/downloads/{year}/{name}", "/api/v1/downloads/2025/daily"),
    ):
        for fmt, media in (("csv", "text/csv"), ("parquet", "application/vnd.apache.parquet")):
            url = f"{path}.{fmt}" if path.endswith("daily") else f"{path}&format={fmt}"
            response = await c.get(url)
            assert response.status == 200 and response.content_type == media and await response.read()
            assert documented_schema(template, 200, media) is not None


async def test_the_served_document_is_this_document(client):
    c, _ = client
    response = await c.get("/api/v1/openapi.json")
    assert response.status == 200 and json.loads(await response.read()) == DOC


@pytest.mark.parametrize(
    ("template", "parameter", "value"),
    [
        ("/api/v1/annual", "year", 0),
        ("/api/v1/events", "status", ""),
        ("/api/v1/events", "type", "nope"),
        ("/api/v1/sites", "bbox", "1,2,3"),
        ("/api/v1/sites/{id}/counts", "from", ".exe"),
        ("/api/v1/sites/{id}/counts", "to", "2025-02-30"),
    ],
)
def test_values_the_server_refuses_are_refused_by_the_document(template, parameter, value):
    """The four cases schemathesis found (and kin): the document's schema rejects them too."""
    [param] = [p for p in DOC["paths"][template]["get"]["parameters"] if p["name"] == parameter]
    assert not Draft202012Validator(param["schema"], format_checker=Draft202012Validator.FORMAT_CHECKER).is_valid(
        value
    ), (parameter, value)
