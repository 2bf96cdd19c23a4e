"""Events with a road and a geometry but no PR: the live feeds read them with the PR +
abscissa the road referential gives, so DATEX II v2.3 consumers get the road number
(`linearElement/roadNumber`); our own DATEX II collector reads the same road back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents_support import DATEX_V2, load_simulated_roads, until_in_feed, xml_valid
from collectors.datex2_parse import parse_datex2
from exporters.datex2_v2 import render_situations
from feed.config import Config, PublicationConfig, ServerConfig
from feed.http.app import build_app
from feed.model import EventRecord, Geometry
from feed.roads import parse_referential
from feed.simulator.geography import referential_geojson
from feed.store import roads
from feed.store.storage import Storage

NS = {"d": "http://datex2.eu/schema/2/2_0"}
V2_FEED = "/feeds/datex2/v2/situations.xml"
PUBLICATION = PublicationConfig()
REFERENTIAL = parse_referential(referential_geojson(), "simulator")


def event(ext: str, road: str, geometry: Geometry, **changes: Any) -> EventRecord:
    now = datetime.now(UTC)
    return EventRecord(
        external_id=ext,
        type="roadworks",
        subtype="MaintenanceWorks",
        status="active",
        severity="medium",
        actual_start=now - timedelta(hours=1),
        road=road,
        direction="both",
        geometry=geometry,
        descriptions={"fr": "Travaux"},
        **changes,
    )


def located(doc: Any, event_id: str) -> list[tuple[str, str, float]]:
    """(roadNumber, referentIdentifier, distanceAlong) of each linear reference of a v2.3 situation."""
    out = []
    for distance in doc.xpath(f"//d:situation[@id='{event_id}']//d:fromReferent/..", namespaces=NS):
        holder = distance.getparent()
        out.append(
            (
                holder.findtext("d:linearElement/d:roadNumber", namespaces=NS),
                distance.findtext("d:fromReferent/d:referentIdentifier", namespaces=NS),
                float(distance.findtext("d:distanceAlong", namespaces=NS)),
            )
        )
    return out


async def test_events_placed_by_geometry_carry_road_and_pr_in_the_v2_feed(storage: Storage) -> None:
    await load_simulated_roads(storage)
    async with storage.pool.acquire() as conn:
        point = await roads.point(conn, "RD613", 12, 250)
        line = await roads.section(conn, "RD986", (3, 100), (5, 600))
        far = (point[0] + 0.01, point[1])  # about 800 m east of the road
        expected_point = await roads.locate(conn, "RD613", *point)
        expected_from = await roads.locate(conn, "RD986", *line["coordinates"][0])
        expected_to = await roads.locate(conn, "RD986", *line["coordinates"][-1])
    await storage.ensure_source("cd34", "datex2", "http://127.0.0.1:9/cd34")
    await storage.upsert_events(
        "cd34",
        [
            event("point", "RD 613", Geometry(type="Point", coordinates=list(point))),
            event("line", "RD986", Geometry.model_validate(line)),
            event("unknown-road", "RD9999", Geometry(type="Point", coordinates=list(point))),
            event("too-far", "RD613", Geometry(type="Point", coordinates=list(far)), location_refs={"insee": "34172"}),
            event(
                "with-pr",
                "RD613",
                Geometry(type="Point", coordinates=list(point)),
                location_refs={"pr": [{"at": "point", "road": "RD613", "pr": 7, "abscissa": 5}]},
            ),
        ],
        seen_at=datetime.now(UTC),
    )

    config = Config(server=ServerConfig(rate_limit_per_minute=0), publication=PUBLICATION)
    client = TestClient(TestServer(build_app(config, storage), host="127.0.0.1"))
    await client.start_server()
    try:
        body = await until_in_feed(client, V2_FEED, "cd34:with-pr")
    finally:
        await client.close()
    doc = xml_valid(DATEX_V2, body)

    [(road, referent, distance)] = located(doc, "cd34:point")
    assert road == "RD 613" and referent == f"PR{expected_point[0]}"
    assert abs(distance - expected_point[1]) < 1.0 and abs(distance - 250) < 1.0
    assert doc.xpath("//d:situation[@id='cd34:point']//d:pointAlongLinearElement", namespaces=NS)
    (road_from, from_referent, from_distance), (road_to, to_referent, to_distance) = located(doc, "cd34:line")
    assert road_from == road_to == "RD986"
    assert from_referent == f"PR{expected_from[0]}" and abs(from_distance - expected_from[1]) < 1.0
    assert to_referent == f"PR{expected_to[0]}" and abs(to_distance - expected_to[1]) < 1.0
    assert located(doc, "cd34:unknown-road") == [] and located(doc, "cd34:too-far") == []
    assert [referent for _, referent, _ in located(doc, "cd34:with-pr")] == ["PR7"]

    stored = {e.external_id: e for e in await storage.events()}
    assert stored["too-far"].location_refs == {"insee": "34172"}
    assert stored["unknown-road"].location_refs == {}
    assert stored["with-pr"].location_refs["pr"][0]["pr"] == 7
    [version] = await storage.event_versions("cd34:point")
    assert version.location_refs == {}  # the stored version is left as it came

    read_back = {e.external_id: e for e in parse_datex2(body, source_id="again") if isinstance(e, EventRecord)}
    assert read_back["cd34:point"].road == "RD 613" and read_back["cd34:line"].road == "RD986"
    assert [(r["at"], r["road"], r["referent"]) for r in read_back["cd34:line"].location_refs["pr"]] == [
        ("from", "RD986", from_referent),
        ("to", "RD986", to_referent),
    ]


@st.composite
def _positions(draw: st.DrawFn) -> tuple[str, int, float]:
    road = draw(st.sampled_from(REFERENTIAL))
    prs = sorted(road.prs)
    i = draw(st.integers(0, len(prs) - 2))
    if prs[i + 1] != prs[i] + 1:  # a gap between two sections of the road
        return road.road, prs[i], 0.0
    return road.road, prs[i], draw(st.floats(0, 900, allow_nan=False))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(positions=st.lists(_positions(), min_size=1, max_size=4))
async def test_positions_along_a_road_round_trip_through_the_v2_feed(
    storage: Storage, positions: list[tuple[str, int, float]]
) -> None:
    async with storage.pool.acquire() as conn:
        if not await roads.road_exists(conn, "RD613"):
            await roads.store_referential(conn, REFERENTIAL)
        placed = [(road, await roads.point(conn, road, pr, abscissa)) for road, pr, abscissa in positions]
        expected = [await roads.locate(conn, road, *lonlat) for road, lonlat in placed]
    await storage.ensure_source("gen", "datex2", "http://127.0.0.1:9/gen")
    await storage.upsert_events(
        "gen",
        [
            event(f"e{n}", road, Geometry(type="Point", coordinates=list(lonlat)))
            for n, (road, lonlat) in enumerate(placed)
        ],
        seen_at=datetime.now(UTC),
    )
    drawn = {f"e{n}" for n in range(len(placed))}  # earlier examples' events stay in the database
    events = [e for e in await storage.events(source_id="gen") if e.external_id in drawn]
    body = render_situations(events, PUBLICATION, datetime.now(UTC))
    doc = xml_valid(DATEX_V2, body)
    read_back = {e.external_id: e for e in parse_datex2(body, source_id="again") if isinstance(e, EventRecord)}
    for n, ((road, _), (pr, abscissa, _offset, _side)) in enumerate(zip(placed, expected, strict=True)):
        [(number, referent, distance)] = located(doc, f"gen:e{n}")
        assert number == road and referent == f"PR{pr}" and distance == pytest.approx(abscissa, abs=1.0)
        [ref] = read_back[f"gen:e{n}"].location_refs["pr"]
        assert read_back[f"gen:e{n}"].road == road and ref["road"] == road and ref["referent"] == f"PR{pr}"
        assert ref["abscissa"] == pytest.approx(abscissa, abs=1.0)
