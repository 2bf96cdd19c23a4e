"""GeoJSON events and sites feeds, and the bbox/type/status filters."""

from __future__ import annotations

import json
import typing
from datetime import datetime, timedelta
from functools import partial

import jsonschema
import pytest
from exporters_support import LINE, POINT, T0, WZDX, cd34_event
from hypothesis import given
from hypothesis import strategies as st

from exporters.geojson import filter_events, parse_bbox, render_events, render_sites
from feed.config import PublicationConfig
from feed.model import EventType, Geometry, StoredChannel, StoredEvent, StoredSite

POINT_SCHEMA = json.loads((WZDX / "geojson" / "Point.json").read_text(encoding="utf-8"))
LINESTRING_SCHEMA = json.loads((WZDX / "geojson" / "LineString.json").read_text(encoding="utf-8"))

PUB = PublicationConfig()

# The works of the other formats' tests, here described at length and without a planned end.
make_event = partial(cd34_event, planned_end=None, descriptions={"fr": "Travaux sur la chaussée", "en": "Roadworks"})


def sample_events() -> list[StoredEvent]:
    events = [
        make_event(f"all-{t}", t, version=2, geometry=LINE if i % 2 else POINT)
        for i, t in enumerate(typing.get_args(EventType))
    ]
    events += [
        make_event("no-end", "closure", planned_end=None, direction="both", lanes_affected="all"),
        make_event("no-geom", "accident", geometry=None, severity="high", actual_start=T0 - timedelta(minutes=20)),
        make_event(
            "ended",
            "roadworks",
            status="ended",
            planned_end=T0 - timedelta(hours=1),
            actual_end=T0 - timedelta(minutes=30),
            version=5,
        ),
        make_event(
            "multi",
            "lane_management",
            subtype="RoadOrCarriagewayOrLaneManagement",
            descriptions={
                "fr": "Voie de droite fermée à Saint-Jean-de-Védas",
                "en": "Right lane closed",
                "oc": "Via drecha barrada",
            },
            detour="Déviation par la RD185",
            lanes_affected="right lane",
            direction="positive",
            planned_end=T0 + timedelta(days=3),
        ),
    ]
    return events


def test_render_events_is_an_rfc7946_feature_collection():
    events = sample_events()
    out = render_events(events, PUB, T0)
    doc = json.loads(out)
    assert doc["type"] == "FeatureCollection"
    assert doc["publication_time"] == "2026-07-14T08:00:00Z"
    assert doc["publisher"] == PUB.publisher
    assert doc["licence"] == PUB.licence
    assert [f["id"] for f in doc["features"]] == [e.id for e in events]
    for feature in doc["features"]:
        assert feature["type"] == "Feature"
        assert set(feature) == {"type", "id", "geometry", "properties"}
        geometry = feature["geometry"]
        if geometry is None:
            continue
        schema = POINT_SCHEMA if geometry["type"] == "Point" else LINESTRING_SCHEMA
        jsonschema.validate(geometry, schema)
        positions = [geometry["coordinates"]] if geometry["type"] == "Point" else geometry["coordinates"]
        for lon, lat in positions:  # RFC 7946: longitude first, 2D only here
            assert -180 <= lon <= 180 and -90 <= lat <= 90
            assert lon < lat  # Hérault: lon is 3 to 4, lat 43 to 44: catches swapped axes


def test_render_events_is_compact_utf8():
    out = render_events(sample_events(), PUB, T0)
    doc = json.loads(out.decode("utf-8"))
    assert out == json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    assert "Védas".encode() in out and b"\\u" not in out


def test_event_properties_and_times():
    events = {e.id: e for e in sample_events()}
    doc = json.loads(render_events(list(events.values()), PUB, T0))
    by_id = {f["id"]: f for f in doc["features"]}

    multi = by_id["cd34:multi"]["properties"]
    assert multi["id"] == "cd34:multi" and multi["version"] == 1 and multi["source"] == "cd34"
    assert multi["type"] == "lane_management" and multi["subtype"] == "RoadOrCarriagewayOrLaneManagement"
    assert multi["descriptions"] == {
        "fr": "Voie de droite fermée à Saint-Jean-de-Védas",
        "en": "Right lane closed",
        "oc": "Via drecha barrada",
    }
    assert multi["detour"] == "Déviation par la RD185"
    assert multi["lanes_affected"] == "right lane" and multi["direction"] == "positive"
    assert multi["planned_start"] == "2026-07-14T06:00:00Z"  # 08:00+02:00
    assert multi["planned_end"] == "2026-07-17T08:00:00Z"
    assert multi["actual_start"] is None and multi["actual_end"] is None
    assert multi["first_seen"] == "2026-07-14T05:00:00Z"
    assert "last_seen" not in multi  # every poll moves it: showing it would change the feed each poll
    assert multi["updated"] == "2026-07-14T07:00:00Z"

    no_end = by_id["cd34:no-end"]["properties"]
    assert no_end["planned_end"] is None and no_end["actual_end"] is None

    ended = by_id["cd34:ended"]["properties"]
    assert ended["status"] == "ended" and ended["version"] == 5
    assert ended["actual_end"] == "2026-07-14T07:30:00Z"

    assert by_id["cd34:no-geom"]["geometry"] is None
    assert by_id["cd34:no-geom"]["properties"]["severity"] == "high"

    for feature in doc["features"]:
        props = feature["properties"]
        assert props["id"] == feature["id"] == events[feature["id"]].id
        assert props["version"] == events[feature["id"]].version
        for key in ("planned_start", "planned_end", "actual_start", "actual_end", "updated", "first_seen"):
            value = props[key]
            original = getattr(events[feature["id"]], key)
            if original is None:
                assert value is None
            else:
                assert value.endswith("Z")
                assert datetime.fromisoformat(value) == original


def test_every_event_type_is_rendered():
    doc = json.loads(render_events(sample_events(), PUB, T0))
    assert {f["properties"]["type"] for f in doc["features"]} == set(typing.get_args(EventType))


def test_coordinates_are_rounded_to_6_decimals():
    doc = json.loads(render_events([make_event("r", geometry=LINE), make_event("p", geometry=POINT)], PUB, T0))
    line, point = (f["geometry"] for f in doc["features"])
    assert line["coordinates"][0] == [3.876543, 43.611111]
    assert point == {"type": "Point", "coordinates": [3.440123, 43.456789]}


def test_empty_feed():
    doc = json.loads(render_events([], PUB, T0))
    assert doc["features"] == [] and doc["type"] == "FeatureCollection"


# --- sites ------------------------------------------------------------------


def make_channel(cid: int, **kw: typing.Any) -> StoredChannel:
    fields: dict[str, typing.Any] = {
        "id": cid,
        "site_external_id": "S1",
        "external_id": f"S1-{cid}",
        "direction": "Montpellier",
        "vehicle_class": "all",
        "time_step": 360 * 10,
        "latest_start": T0 - timedelta(hours=2),
        "latest_length": 3600,
        "latest_count": 840,
        "latest_speed": 71.5,
        "latest_quality": "observed",
    }
    fields.update(kw)
    return StoredChannel(**fields)


def sample_sites() -> list[StoredSite]:
    return [
        StoredSite(
            id=1,
            source_id="cd34-comptage",
            external_id="S1",
            name="RD613 Fabrègues",
            road="RD613",
            pr=12,
            abscissa=350,
            insee="34095",
            lon=3.7771234567,
            lat=43.5512345678,
            channels=[
                make_channel(11),
                make_channel(
                    12,
                    direction="Sète",
                    vehicle_class="heavy",
                    time_step=900,
                    latest_start=T0 - timedelta(minutes=20),
                    latest_length=900,
                    latest_count=12,
                    latest_speed=None,
                ),
            ],
        ),
        StoredSite(  # one channel estimated, one never reported
            id=2,
            source_id="cd34-comptage",
            external_id="S2",
            name="RD986",
            lon=3.9,
            lat=43.7,
            channels=[
                make_channel(21, latest_quality="estimated"),
                make_channel(
                    22,
                    latest_start=None,
                    latest_length=None,
                    latest_count=None,
                    latest_speed=None,
                    latest_quality=None,
                ),
            ],
        ),
        StoredSite(  # data marked missing, and no coordinates
            id=3,
            source_id="cd34-comptage",
            external_id="S3",
            channels=[make_channel(31, latest_count=None, latest_speed=None, latest_quality="missing")],
        ),
        StoredSite(id=4, source_id="cd34-comptage", external_id="S4", lon=3.5, lat=43.4),  # no channel
    ]


def test_render_sites():
    out = render_sites(sample_sites(), PUB, T0)
    doc = json.loads(out)
    assert doc["type"] == "FeatureCollection" and doc["publication_time"] == "2026-07-14T08:00:00Z"
    assert doc["publisher"] == PUB.publisher and doc["licence"] == PUB.licence
    s1, s2, s3, s4 = doc["features"]

    jsonschema.validate(s1["geometry"], POINT_SCHEMA)
    assert s1["id"] == 1 and s1["geometry"]["coordinates"] == [3.777123, 43.551235]
    p = s1["properties"]
    assert (p["id"], p["external_id"], p["name"], p["road"], p["pr"], p["abscissa"], p["insee"]) == (
        1,
        "S1",
        "RD613 Fabrègues",
        "RD613",
        12,
        350,
        "34095",
    )
    c11, c12 = p["channels"]
    assert (c11["direction"], c11["vehicle_class"], c11["time_step"]) == ("Montpellier", "all", 3600)
    assert c11["latest"] == {
        "start": "2026-07-14T06:00:00Z",
        "end": "2026-07-14T07:00:00Z",
        "length": 3600,
        "count": 840,
        "flow_per_hour": 840.0,
        "speed": 71.5,
        "quality": "observed",
    }
    assert c12["latest"]["flow_per_hour"] == 48.0  # 12 vehicles in 15 min
    assert c12["latest"]["speed"] is None
    # newest interval with a value ends at 07:55Z; published at 08:00Z
    assert p["freshness_seconds"] == 300
    assert p["quality"] == "observed"

    p2 = s2["properties"]
    assert p2["quality"] == "estimated"
    assert p2["channels"][1]["latest"] is None
    assert p2["freshness_seconds"] == 3600

    assert s3["geometry"] is None
    assert s3["properties"]["quality"] == "missing"
    assert s3["properties"]["freshness_seconds"] is None
    assert s3["properties"]["channels"][0]["latest"]["quality"] == "missing"
    assert s3["properties"]["channels"][0]["latest"]["flow_per_hour"] is None

    assert s4["properties"]["channels"] == []
    assert s4["properties"]["quality"] == "missing" and s4["properties"]["freshness_seconds"] is None


# --- filters ----------------------------------------------------------------


def test_parse_bbox_valid():
    assert parse_bbox("2.53,43.2,4.2,43.98") == (2.53, 43.2, 4.2, 43.98)
    assert parse_bbox(" -1.5 , -10 , 1.5 , 10 ") == (-1.5, -10.0, 1.5, 10.0)
    assert parse_bbox("3,43,3,43") == (3.0, 43.0, 3.0, 43.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("1,2,3", "4 comma-separated numbers"),
        ("1,2,3,4,5", "got 5"),
        ("1,2,,4", "lon_max is empty"),
        ("a,43,4,44", "lon_min 'a' is not a number"),
        ("3,43,4,nan", "not a finite number"),
        ("3,43,inf,44", "not a finite number"),
        ("181,43,182,44", "longitude range"),
        ("3,-91,4,44", "latitude range"),
        ("4,43,3,44", "lon_min 4 is greater than lon_max 3"),
        ("3,44,4,43", "lat_min 44 is greater than lat_max 43"),
    ],
)
def test_parse_bbox_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_bbox(text)


def test_filter_events_by_bbox_type_and_status():
    inside_point = make_event("in", geometry=Geometry(type="Point", coordinates=[3.5, 43.5]))
    outside_point = make_event("out", geometry=Geometry(type="Point", coordinates=[5.0, 45.0]))
    # a line with both ends outside the box that crosses it
    across = Geometry(type="LineString", coordinates=[[3.0, 43.5], [4.0, 43.5]])
    crossing = make_event("cross", "closure", geometry=across)
    passing_by = make_event("by", geometry=Geometry(type="LineString", coordinates=[[3.0, 44.0], [4.0, 44.1]]))
    no_geometry = make_event("none", geometry=None)
    ended = make_event("ended", status="ended", geometry=Geometry(type="Point", coordinates=[3.5, 43.5]))
    events = [inside_point, outside_point, crossing, passing_by, no_geometry, ended]
    bbox = (3.4, 43.4, 3.6, 43.6)

    assert [e.id for e in filter_events(events, bbox=bbox)] == ["cd34:in", "cd34:cross", "cd34:ended"]
    assert [e.id for e in filter_events(events, types={"closure"})] == ["cd34:cross"]
    assert [e.id for e in filter_events(events, statuses=["ended"])] == ["cd34:ended"]
    assert [e.id for e in filter_events(events, bbox=bbox, statuses={"active", "planned"})] == ["cd34:in", "cd34:cross"]
    assert filter_events(events) == events
    assert filter_events(events, types=set()) == []


_lon = st.floats(min_value=2.0, max_value=5.0, allow_nan=False)
_lat = st.floats(min_value=42.5, max_value=44.5, allow_nan=False)


@given(a=st.tuples(_lon, _lat), b=st.tuples(_lon, _lat))
def test_a_segment_with_a_sampled_point_in_the_box_intersects(a, b):
    bbox = (3.4, 43.4, 3.6, 43.6)
    event = make_event("h", geometry=Geometry(type="LineString", coordinates=[list(a), list(b)]))
    samples = [(a[0] + (b[0] - a[0]) * i / 200, a[1] + (b[1] - a[1]) * i / 200) for i in range(201)]
    if any(bbox[0] <= x <= bbox[2] and bbox[1] <= y <= bbox[3] for x, y in samples):
        assert filter_events([event], bbox=bbox) == [event]
    lo_x, hi_x = sorted((a[0], b[0]))
    lo_y, hi_y = sorted((a[1], b[1]))
    if hi_x < bbox[0] or lo_x > bbox[2] or hi_y < bbox[1] or lo_y > bbox[3]:
        assert filter_events([event], bbox=bbox) == []
