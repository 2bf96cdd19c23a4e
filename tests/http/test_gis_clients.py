"""GIS clients read our layers as they are: GDAL's `ogrinfo` / `ogr2ogr` (what QGIS
uses) on the PostGIS database and on the GeoJSON feeds. Every layer is listed with
its true geometry type and SRID, a GeoPackage export raises no warning, and the
typed download of the events exports to a Shapefile (one geometry type per file)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporters import geojson
from feed.config import Config, SourceConfig
from feed.http.app import build_app
from feed.model import EventRecord, Geometry, SiteRecord
from feed.store.storage import Storage

pytestmark = pytest.mark.skipif(
    shutil.which("ogrinfo") is None, reason="needs GDAL's ogrinfo/ogr2ogr (apt-get install gdal-bin)"
)

CONFIG = Config(sources=[SourceConfig(id="cd34", kind="datex2", url="http://127.0.0.1:9/cd34")])
LINE = Geometry(type="LineString", coordinates=[[3.870, 43.610], [3.880, 43.615], [3.890, 43.620]])
POINT = Geometry(type="Point", coordinates=[3.690, 43.400])
# The layers a GIS user adds, with the type GDAL must report for each.
LAYERS = {"events_lines": "Line String", "events_points": "Point", "sites": "Point"}


def event(ext: str, geometry: Geometry | None) -> EventRecord:
    now = datetime.now(UTC)
    return EventRecord(
        external_id=ext,
        type="roadworks",
        status="active",
        severity="medium",
        actual_start=now - timedelta(hours=1),
        road="RD613",
        geometry=geometry,
        descriptions={"fr": "Travaux", "en": "Works"},
    )


async def seed(storage: Storage) -> None:
    await storage.ensure_source("cd34", "datex2", "http://127.0.0.1:9/cd34")
    await storage.upsert_events(
        "cd34",
        [event("l1", LINE), event("l2", LINE), event("p1", POINT), event("none", None)],
        seen_at=datetime.now(UTC),
    )
    await storage.upsert_sites(
        "cd34", [SiteRecord(external_id="S1", name="Montbazin", road="RD613", lon=3.69, lat=43.51)]
    )


async def run(*argv: str) -> tuple[int, str, str]:
    """A GDAL command without blocking the loop that serves its HTTP requests."""
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def seeded(db_url: str) -> AsyncIterator[tuple[str, TestClient]]:
    storage = await Storage.open(db_url)
    try:
        await seed(storage)
        client = TestClient(TestServer(build_app(CONFIG, storage), host="127.0.0.1"))
        await client.start_server()
        try:
            yield db_url, client
        finally:
            await client.close()
    finally:
        await storage.close()


def listed_layers(ogrinfo_output: str) -> dict[str, str]:
    """`1: events_lines (Line String)` lines of `ogrinfo -so` as {layer: type}."""
    layers = {}
    for line in ogrinfo_output.splitlines():
        head, sep, rest = line.partition(": ")
        if sep and head.strip().isdigit():
            name, _, kind = rest.partition(" (")
            layers[name.strip()] = kind.rstrip(")") or "Unknown"
    return layers


async def test_ogrinfo_lists_every_postgis_layer_with_its_true_type(seeded):
    url, _ = seeded
    code, out, err = await run("ogrinfo", "-ro", "-q", f"PG:{url}")
    assert code == 0, err
    layers = listed_layers(out)
    for name, kind in LAYERS.items():
        assert layers.get(name) == kind, (name, out)
    # The table itself holds both kinds: it must not claim to hold only one.
    assert layers.get("events") not in ("Point", "Line String"), out
    for name in LAYERS:
        code, out, err = await run("ogrinfo", "-ro", "-so", f"PG:{url}", name)
        assert (code == 0 and 'EPSG",4326' in out.replace(" ", "")) or 'ID["EPSG",4326]' in out, (name, out, err)


async def test_ogr2ogr_exports_the_postgis_layers_to_geopackage_without_warning(seeded, tmp_path: Path):
    url, _ = seeded
    gpkg = tmp_path / "roadfeed.gpkg"
    code, out, err = await run("ogr2ogr", "-f", "GPKG", str(gpkg), f"PG:{url}", *LAYERS, "events")
    assert code == 0 and "warning" not in (out + err).lower(), out + err
    code, out, err = await run("ogrinfo", "-ro", "-q", str(gpkg))
    layers = listed_layers(out)
    assert {name: layers.get(name) for name in LAYERS} == LAYERS, out
    for name, expected in (("events_lines", 2), ("events_points", 1), ("events", 4), ("sites", 1)):
        code, out, _ = await run("ogrinfo", "-ro", "-so", str(gpkg), name)
        assert f"Feature Count: {expected}" in out, (name, out)


async def wait_for_feed(client: TestClient, path: str) -> dict[str, Any]:
    for _ in range(300):
        response = await client.get(path)
        if response.status == 200:
            return json.loads(await response.read())
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never became available")


async def test_ogrinfo_reads_each_geojson_feed_and_shapefile_export_uses_the_typed_download(seeded, tmp_path: Path):
    _, client = seeded
    base = f"http://127.0.0.1:{client.port}"
    await wait_for_feed(client, "/feeds/events.geojson")
    for path in ("/feeds/events.geojson", "/feeds/sites.geojson", "/feeds/wzdx/v4.2/work-zones.geojson"):
        code, out, err = await run("ogrinfo", "-ro", "-so", "-al", f"GeoJSON:{base}{path}")
        assert code == 0 and "Feature Count:" in out, (path, out, err)
    # The whole events feed mixes points and lines: a Shapefile cannot take it.
    code, out, err = await run(
        "ogr2ogr", "-f", "ESRI Shapefile", str(tmp_path / "mixed.shp"), f"GeoJSON:{base}/feeds/events.geojson"
    )
    assert code != 0 and "geometry" in err.lower(), (out, err)
    for kind, expected in (("LineString", 2), ("Point", 1)):
        target = tmp_path / f"events_{kind}.shp"
        code, out, err = await run(
            "ogr2ogr", "-f", "ESRI Shapefile", str(target), f"GeoJSON:{base}/feeds/events.geojson?geometry_type={kind}"
        )
        # Shapefile's own limits (10-character names, no date-time) still warn; geometry never.
        assert code == 0 and "geometry" not in err.lower() and "error" not in err.lower(), (kind, out, err)
        code, out, err = await run("ogrinfo", "-ro", "-so", "-al", str(target))
        assert f"Feature Count: {expected}" in out, (kind, out)
        assert ("Line String" if kind == "LineString" else "Point") in out, out


GEOMETRIES = st.one_of(
    st.none(),
    st.builds(lambda x, y: Geometry(type="Point", coordinates=[x, y]), st.floats(3.0, 4.0), st.floats(43.0, 44.0)),
    st.lists(st.tuples(st.floats(3.0, 4.0), st.floats(43.0, 44.0)), min_size=2, max_size=4).map(
        lambda ps: Geometry(type="LineString", coordinates=[list(p) for p in ps])
    ),
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(geometries=st.lists(GEOMETRIES, max_size=12))
async def test_typed_views_and_typed_downloads_partition_the_events(storage: Storage, db_url: str, geometries):
    """Whatever mix is stored: each typed view and each typed download holds exactly
    the events of its type, none lost, none in two."""
    await storage.ensure_source("gen", "datex2", "http://127.0.0.1:9/gen")
    records = [event(f"g{i}", g) for i, g in enumerate(geometries)]
    await storage.upsert_events("gen", records, seen_at=datetime.now(UTC))
    stored = await storage.events(source_id="gen")
    conn = await asyncpg.connect(db_url)
    try:
        lines = {
            r["external_id"] for r in await conn.fetch("SELECT external_id FROM events_lines WHERE source_id = 'gen'")
        }
        points = {
            r["external_id"] for r in await conn.fetch("SELECT external_id FROM events_points WHERE source_id = 'gen'")
        }
        registered = {
            (r["f_table_name"], r["type"], r["srid"])
            for r in await conn.fetch(
                "SELECT f_table_name, type, srid FROM geometry_columns WHERE f_table_name IN "
                "('events', 'events_lines', 'events_points', 'sites')"
            )
        }
        await conn.execute("DELETE FROM event_versions WHERE event_id LIKE 'gen:%'")
        await conn.execute("DELETE FROM events WHERE source_id = 'gen'")
    finally:
        await conn.close()
    assert registered == {
        ("events", "GEOMETRY", 4326),
        ("events_lines", "LINESTRING", 4326),
        ("events_points", "POINT", 4326),
        ("sites", "POINT", 4326),
    }
    want_lines = {r.external_id for r in records if r.geometry is not None and r.geometry.type == "LineString"}
    want_points = {r.external_id for r in records if r.geometry is not None and r.geometry.type == "Point"}
    assert lines == want_lines and points == want_points
    for kind, want in (("LineString", want_lines), ("Point", want_points)):
        chosen = [e.external_id for e in geojson.filter_events(stored, geometry_types=(kind,))]
        assert sorted(chosen) == sorted(want)
