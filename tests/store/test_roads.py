"""The road referential and linear referencing against PostGIS: the simulator's
roads (the shape road authorities keep), known distances, round trips within 1 m,
named refusals of bad files, and the /api/v1/roads routes."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agents_support import load_simulated_roads
from feed.config import Config, PublicationConfig, ServerConfig
from feed.http.app import build_app
from feed.model import SiteRecord
from feed.roads import ReferentialError, Road, parse_referential
from feed.simulator.geography import SITES, referential_geojson
from feed.store import roads
from feed.store.storage import Storage

ADMIN = "admin-secret-token"


def geodesic_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat = math.radians((a[1] + b[1]) / 2)
    dx = math.radians(b[0] - a[0]) * math.cos(lat) * 6_371_000
    dy = math.radians(b[1] - a[1]) * 6_371_000
    return math.hypot(dx, dy)


# ---------------------------------------------------------------- parsing (pure)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"road,pr,lon,lat\nRD1,0,3.0,43.0\nRD1,0,3.1,43.0\n", "line 3: RD1 PR 0 is given twice"),
        (b"road,pr,lon,lat\nRD1,zero,3.0,43.0\n", "line 2: pr must be an integer"),
        (b"road,pr,lon\nRD1,0,3.0\n", "missing columns lat"),
        (b"road,pr,lon,lat\nRD1,0,3.0,43.0\n", "road RD1 has a single PR"),
        (b"road,pr,lon,lat\nRD1,0,3.0,43.0\nRD1,1,3.0,43.0\n", "PR 0 and PR 1 are at the same place"),
        (b"road,pr,lon,lat\n<script>,0,3.0,43.0\n", "is not a road reference"),
        (b"road,pr,lon,lat\nRD1,0,300,43.0\n", "out of range"),
        (
            b'{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Polygon"}, '
            b'"properties": {}}]}',
            "feature 0: a Point geometry is expected",
        ),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_bad_files_are_refused_naming_the_record_and_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ReferentialError, match=reason) as caught:
        parse_referential(data, "pr.csv")
    assert str(caught.value).startswith("pr.csv")


def test_csv_with_semicolons_and_french_decimals() -> None:
    parsed = parse_referential(
        "road;pr;lon;lat;name\nRD 613;0;3,80;43,50;Route de Sète\nrd613;1;3,81;43,50;\n".encode(), "pr.csv"
    )
    assert len(parsed) == 1 and parsed[0].road == "RD613" and parsed[0].name == "Route de Sète"
    assert parsed[0].prs == {0: (3.80, 43.50), 1: (3.81, 43.50)}


# ---------------------------------------------------------------- linear referencing (PostGIS)


async def ground_m(conn: Any, a: tuple[float, float], b: tuple[float, float]) -> float:
    """Metres on the ellipsoid (PostGIS geography), the reference of PR distances."""
    return await conn.fetchval(
        "SELECT ST_Distance(ST_SetSRID(ST_MakePoint($1, $2), 4326)::geography, "
        "ST_SetSRID(ST_MakePoint($3, $4), 4326)::geography)",
        *a,
        *b,
    )


async def test_known_distances_on_a_straight_road(storage: Storage) -> None:
    # A road due north with a PR about every kilometre.
    points = {k: (3.5, 43.5 + k * 0.009) for k in range(5)}
    csv = "road,pr,lon,lat\n" + "".join(f"RD1,{k},{lon},{lat}\n" for k, (lon, lat) in points.items())
    async with storage.pool.acquire() as conn:
        await roads.store_referential(conn, parse_referential(csv.encode(), "rd1.csv"))
        pr0 = points[0]
        for pr, abscissa in [(0, 0), (0, 500), (1, 250), (3, 900), (2, -300), (4, 0)]:
            lon, lat = await roads.point(conn, "RD1", pr, abscissa)
            expected = await ground_m(conn, pr0, points[pr]) + abscissa
            assert abs(await ground_m(conn, pr0, (lon, lat)) - expected) < 1.0, (pr, abscissa)
        half = (3.5, 43.5 + 2.5 * 0.009)
        pr, abscissa, offset, side = await roads.locate(conn, "RD1", *half)
        assert pr == 2 and abs(abscissa - await ground_m(conn, points[2], half)) < 1.0 and offset < 0.01
        assert side is None  # on the road's line
        east = (3.51, points[1][1])  # about 800 m east of PR 1
        pr, abscissa, offset, side = await roads.locate(conn, "RD1", *east)
        assert pr == 1 and abscissa < 1.0 and abs(offset - await ground_m(conn, points[1], east)) < 2.0
        assert side == "right"  # east of a road whose PR increase northwards
        west = (3.49, points[1][1])
        assert (await roads.locate(conn, "RD1", *west))[3] == "left"
        for side, sign in (("right", 1), ("left", -1)):
            lon, lat = await roads.point(conn, "RD1", 1, 0, side, 50)
            assert sign * (lon - points[1][0]) > 0 and abs(lat - points[1][1]) < 1e-6
            assert abs(await ground_m(conn, points[1], (lon, lat)) - 50) < 0.1
        line = await roads.section(conn, "RD1", (1, 200), (3, 100))
        assert line["type"] == "LineString"
        first, last = tuple(line["coordinates"][0]), tuple(line["coordinates"][-1])
        assert abs(await ground_m(conn, points[1], first) - 200) < 1.0
        assert abs(await ground_m(conn, points[3], last) - 100) < 1.0
        back = await roads.section(conn, "RD1", (3, 100), (1, 200))
        assert back["coordinates"] == line["coordinates"][::-1]
        for bad, why in [((9, 0), "has no PR 9"), ((4, 10), "beyond the road's ends"), ((0, -1), "beyond")]:
            with pytest.raises(roads.OffRoad, match=why):
                await roads.point(conn, "RD1", *bad)
        with pytest.raises(roads.OffRoad, match="not in the referential"):
            await roads.point(conn, "RD99", 0, 0)


async def test_simulated_sites_pr_and_abscissa_agree_with_the_referential(storage: Storage) -> None:
    await load_simulated_roads(storage)
    async with storage.pool.acquire() as conn:
        for site in SITES:
            km = site.road.project(site.lon, site.lat)
            on_road = site.road.point_at(km)
            lon, lat = await roads.point(conn, site.road.name, site.pr, site.abscissa)
            # the simulator measures with an equirectangular approximation: a few metres per km
            assert geodesic_m(on_road, (lon, lat)) < 10, site.id
            pr, abscissa, offset, _side = await roads.locate(conn, site.road.name, lon, lat)
            assert pr == site.pr and abscissa == pytest.approx(site.abscissa, abs=1.0), site.id
            assert offset < 1.0


Position = tuple[str, int, float, roads.Side | None, float]


@st.composite
def _positions(draw: st.DrawFn, referential: list[Road]) -> Position:
    road = draw(st.sampled_from(referential))
    prs = sorted(road.prs)
    i = draw(st.integers(0, len(prs) - 2))
    side = draw(st.sampled_from([None, *roads.SIDES]))
    offset = 0.0 if side is None else draw(st.floats(0.1, 30))  # a roadside: a counter, a stopped vehicle
    if prs[i + 1] != prs[i] + 1:  # a gap between two sections of the road
        return road.road, prs[i], 0.0, side, offset
    return road.road, prs[i], draw(st.floats(0, 900, allow_nan=False)), side, offset


REFERENTIAL = parse_referential(referential_geojson(), "simulator")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(positions=st.lists(_positions(REFERENTIAL), min_size=1, max_size=5))
@example(positions=[("RD64", 10, 898.0, "right", 3.0)])  # outside a bend
async def test_pr_and_abscissa_round_trip_within_a_metre(storage: Storage, positions: list[Position]) -> None:
    async with storage.pool.acquire() as conn:
        if not await roads.road_exists(conn, "RD613"):
            await roads.store_referential(conn, REFERENTIAL)
        for road, pr, abscissa, side, offset in positions:
            lon, lat = await roads.point(conn, road, pr, abscissa, side, offset)
            found_pr, found_abscissa, found_offset, found_side = await roads.locate(conn, road, lon, lat)
            assert found_side == side
            # the answer places the point back where it was
            again = await roads.point(conn, road, found_pr, found_abscissa, found_side, found_offset)
            assert geodesic_m((lon, lat), again) < 1.0
            if found_offset < offset - 1.0:
                continue  # inside a bend, another part of the road is nearer: that one is named
            assert found_offset == pytest.approx(offset, abs=1.0)
            if found_pr == pr:
                # On the road the position is unique; off it, a roadside point outside a bend
                # is nearest the bend's vertex, up to about its offset along the road (seen:
                # RD64 PR10+898 m, 3 m right, located at +899.4 m); the round trip above holds.
                assert found_abscissa == pytest.approx(abscissa, abs=1.0 + offset)
            else:  # a point on a PR may be named after the PR or as the end of the section before it
                assert abs(found_pr - pr) == 1 and min(abs(found_abscissa), abs(abscissa)) < 1.0
                assert (
                    geodesic_m(
                        await roads.point(conn, road, found_pr, found_abscissa),
                        await roads.point(conn, road, pr, abscissa),
                    )
                    < 1.0
                )


async def test_a_shape_drawn_backwards_is_refused(storage: Storage) -> None:
    document = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "LineString", "coordinates": [[3.6, 43.5], [3.5, 43.5]]},
                "properties": {"road": "RD2"},
            },
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [3.5, 43.5]},
                "properties": {"road": "RD2", "pr": 0},
            },
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [3.6, 43.5]},
                "properties": {"road": "RD2", "pr": 1},
            },
        ],
    }
    async with storage.pool.acquire() as conn:
        with pytest.raises(ReferentialError, match="PR 1 is not after PR 0"):
            await roads.store_referential(conn, parse_referential(json.dumps(document).encode(), "x"))
        assert not await roads.road_exists(conn, "RD2")


# ---------------------------------------------------------------- HTTP


def metres_off(line: list[list[float]], point: list[float]) -> float:
    """Distance from `point` to the polyline `line` (lon/lat), in metres, on a local plane."""
    k = math.cos(math.radians(point[1])) * 111_320.0  # metres per degree of longitude here
    px, py = point[0] * k, point[1] * 110_540.0
    best = math.inf
    for (x1, y1), (x2, y2) in itertools.pairwise((x * k, y * 110_540.0) for x, y in line):
        dx, dy = x2 - x1, y2 - y1
        t = 0.0 if dx == dy == 0 else max(0.0, min(1.0, ((px - x1) * dx + (py - y1) * dy) / (dx * dx + dy * dy)))
        best = min(best, math.hypot(px - (x1 + t * dx), py - (y1 + t * dy)))
    return best


async def test_routes_read_the_referential_and_only_an_administrator_imports(storage: Storage) -> None:
    config = Config(server=ServerConfig(admin_token=ADMIN, rate_limit_per_minute=0), publication=PublicationConfig())
    client = TestClient(TestServer(build_app(config, storage), host="127.0.0.1"))
    await client.start_server()
    try:
        body = referential_geojson()
        async with client.post("/api/v1/roads", data=body) as resp:
            assert resp.status == 401
        async with client.post(
            "/api/v1/roads", data=b"road,pr\n", headers={"Authorization": f"Bearer {ADMIN}"}
        ) as resp:
            assert resp.status == 400 and "missing columns" in (await resp.json())["detail"]
        async with client.post("/api/v1/roads", data=body, headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
            assert resp.status == 201 and (await resp.json())["roads"] == len(REFERENTIAL)
        async with client.get("/api/v1/roads") as resp:
            listed = {r["road"]: r for r in (await resp.json())["roads"]}
        assert listed["RD613"]["pr_min"] == 0 and listed["RD613"]["pr_max"] == 86
        # The whole network in one request: every listed road with its whole line, on
        # which the section from its first PR to its last lies (what a map draws).
        async with client.get("/api/v1/roads/network") as resp:
            network = await resp.json()
        assert network["type"] == "FeatureCollection"
        lines = {f["properties"]["road"]: f["geometry"] for f in network["features"]}
        assert lines.keys() == listed.keys()
        for road, line in lines.items():
            r = listed[road]
            async with client.get(f"/api/v1/roads/{road}/section?from={r['pr_min']}&to={r['pr_max']}") as resp:
                section = (await resp.json())["geometry"]["coordinates"]
            assert line["type"] == "LineString"
            for end in (section[0], section[-1]):
                assert metres_off(line["coordinates"], end) < 1.0, (road, end)
        async with client.get("/api/v1/roads/rd 613/pr") as resp:
            prs = (await resp.json())["prs"]
        assert [p["pr"] for p in prs][:3] == [0, 1, 2]
        async with client.get("/api/v1/roads/RD613/locate?pr=12&abscissa=250") as resp:
            at = await resp.json()
        async with client.get(f"/api/v1/roads/RD613/locate?lon={at['lon']}&lat={at['lat']}") as resp:
            back = await resp.json()
        assert back["pr"] == 12 and abs(back["abscissa"] - 250) < 1 and back["side"] is None
        async with client.get("/api/v1/roads/RD613/locate?pr=12&abscissa=250&side=left&offset=20") as resp:
            at = await resp.json()
        assert at["side"] == "left" and at["offset_m"] == 20
        async with client.get(f"/api/v1/roads/RD613/locate?lon={at['lon']}&lat={at['lat']}") as resp:
            back = await resp.json()
        assert back["pr"] == 12 and abs(back["abscissa"] - 250) < 1 and abs(back["offset_m"] - 20) < 1
        assert back["side"] == "left"
        async with client.get("/api/v1/roads/RD613/locate?pr=12&offset=20") as resp:
            assert resp.status == 400 and "needs a side" in (await resp.json())["detail"]
        async with client.get("/api/v1/roads/RD613/locate?pr=12&side=up") as resp:
            assert resp.status == 400
        async with client.get("/api/v1/roads/RD613/section?from=12+250&to=14") as resp:
            feature = await resp.json()
        assert feature["geometry"]["type"] == "LineString"
        async with client.get("/api/v1/roads/RD613/locate?pr=500") as resp:
            assert resp.status == 404 and "has no PR 500" in (await resp.json())["detail"]
        async with client.get("/api/v1/roads/RD613/section?from=x&to=3") as resp:
            assert resp.status == 400
    finally:
        await client.close()


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/roads/%00/pr",
        "/api/v1/roads/RD613/locate?pr=2147483648",
        "/api/v1/roads/RD613/locate?pr=1&abscissa=nan",
        "/api/v1/roads/RD613/locate?pr=1&side=right&offset=-inf",
        "/api/v1/roads/RD613/locate?lon=inf&lat=43",
        "/api/v1/roads/RD613/section?from=99999999999&to=1",
    ],
)
async def test_hostile_positions_are_refused_not_failed(storage: Storage, path: str) -> None:
    config = Config(server=ServerConfig(rate_limit_per_minute=0), publication=PublicationConfig())
    client = TestClient(TestServer(build_app(config, storage), host="127.0.0.1"))
    await client.start_server()
    try:
        async with client.get(path) as resp:
            assert resp.status in (400, 404), (path, resp.status, await resp.text())
    finally:
        await client.close()


async def test_sites_pr_and_abscissa_are_checked_against_the_referential(storage: Storage) -> None:
    await load_simulated_roads(storage)
    await storage.ensure_source("sim", "opendatasoft", "http://127.0.0.1:9/sim")
    records = [
        SiteRecord(
            external_id=s.id,
            name=s.name,
            road=s.road.name,
            pr=s.pr,
            abscissa=s.abscissa,
            lon=s.road.point_at(s.road.project(s.lon, s.lat))[0],
            lat=s.road.point_at(s.road.project(s.lon, s.lat))[1],
        )
        for s in SITES
    ]
    records += [
        SiteRecord(external_id="moved", road="RD613", pr=12, abscissa=0, lon=3.60, lat=43.60),
        SiteRecord(external_id="nowhere", road="RD613", pr=600, abscissa=0, lon=3.60, lat=43.60),
    ]
    await storage.upsert_sites("sim", records)
    config = Config(server=ServerConfig(rate_limit_per_minute=0), publication=PublicationConfig())
    client = TestClient(TestServer(build_app(config, storage), host="127.0.0.1"))
    await client.start_server()
    try:
        async with client.get("/api/v1/roads/site-check") as resp:
            found = {s["external_id"]: s["reason"] for s in (await resp.json())["sites"]}
    finally:
        await client.close()
    assert set(found) == {"moved", "nowhere"}  # every simulated site agrees with the referential
    assert "m from the site's position" in found["moved"] and "has no PR 600" in found["nowhere"]
