"""WZDx 4.2 Work Zone Feed: validated offline against the official schemas."""

from __future__ import annotations

import json
import typing
from datetime import UTC, datetime, timedelta

import pytest
from exporters_support import LINE, POINT, T0, WZDX, cd34_event, schema_errors
from jsonschema import Draft7Validator

from exporters.geojson import render_events
from exporters.wzdx import OPEN_END_HORIZON, check_wzdx_rules, lane_closure, render_work_zones, wzdx_direction
from feed.config import PublicationConfig
from feed.model import EventType, StoredEvent

EXAMPLES = sorted((WZDX / "examples" / "WorkZoneFeed").glob("*.geojson"))

PUB = PublicationConfig()


def sample_events() -> list[StoredEvent]:
    events = [cd34_event(f"all-{t}", t) for t in typing.get_args(EventType)]
    events += [
        cd34_event("works-point", "roadworks", geometry=POINT, version=4, direction="nord"),
        cd34_event(
            "closure-open",
            "closure",
            planned_end=None,
            direction="both",
            source_id="cd34-bis",
            id="cd34-bis:closure-open",
        ),
        cd34_event(
            "closure-started",
            "closure",
            actual_start=T0 - timedelta(minutes=90),
            descriptions={"en": "Road closed", "fr": "Route barrée à Lodève"},
        ),
        cd34_event("lanes", "lane_management", lanes_affected="voie de droite", direction="positive"),
        cd34_event("all-lanes", "lane_management", lanes_affected="toutes les voies"),
        cd34_event("no-lanes", "lane_management", lanes_affected=None),
        cd34_event("ended", "roadworks", status="ended", actual_end=T0 - timedelta(minutes=5)),
        cd34_event("no-geometry", "roadworks", geometry=None),
        cd34_event("no-road", "roadworks", road=None),
        cd34_event(
            "planned",
            "roadworks",
            status="planned",
            planned_start=T0 + timedelta(days=1),
            planned_end=T0 + timedelta(days=4),
        ),
        cd34_event("planned-no-start", "roadworks", status="planned", planned_start=None),
        cd34_event("active-no-start", "roadworks", planned_start=None, planned_end=None, descriptions={}),
    ]
    return events


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_official_examples_validate(path, wzdx_validator: Draft7Validator):
    assert schema_errors(wzdx_validator, json.loads(path.read_text(encoding="utf-8"))) == []


def test_validator_is_not_vacuous(wzdx_validator: Draft7Validator):
    example = json.loads(EXAMPLES[0].read_text(encoding="utf-8"))
    broken = dict(example, feed_info={**example["feed_info"], "license": "https://example.org/other"})
    assert schema_errors(wzdx_validator, broken)
    feature = example["features"][0]
    point = dict(feature, geometry={"type": "Point", "coordinates": [1.0, 2.0]})
    assert schema_errors(wzdx_validator, dict(example, features=[point]))
    assert len(EXAMPLES) == 9


def test_feed_validates_against_workzonefeed_schema(wzdx_validator: Draft7Validator):
    doc = json.loads(render_work_zones(sample_events(), PUB, T0))
    assert schema_errors(wzdx_validator, doc) == []
    assert schema_errors(wzdx_validator, json.loads(render_work_zones([], PUB, T0))) == []


def test_feed_info():
    doc = json.loads(render_work_zones(sample_events(), PUB, T0))
    info = doc["feed_info"]
    assert info["publisher"] == PUB.publisher
    assert info["version"] == "4.2"
    assert info["update_date"] == "2026-07-14T08:00:00Z"
    assert "license" not in info  # 4.2 only allows CC0; our licence is not CC0
    assert info["data_sources"] == [
        {"data_source_id": "cd34", "organization_name": PUB.publisher, "update_date": "2026-07-14T07:00:00Z"},
        {"data_source_id": "cd34-bis", "organization_name": PUB.publisher, "update_date": "2026-07-14T07:00:00Z"},
    ]
    empty = json.loads(render_work_zones([], PUB, T0))
    assert empty["features"] == []
    assert [s["data_source_id"] for s in empty["feed_info"]["data_sources"]] == [PUB.national_identifier]


def test_which_events_are_published():
    events = sample_events()
    doc = json.loads(render_work_zones(events, PUB, T0))
    published = [f["id"] for f in doc["features"]]
    assert published == [
        "cd34:all-roadworks",
        "cd34:all-closure",
        "cd34:works-point",
        "cd34-bis:closure-open",
        "cd34:closure-started",
        "cd34:lanes",
        "cd34:all-lanes",
        "cd34:planned",
        "cd34:active-no-start",
    ]
    reasons = {e.id: check_wzdx_rules(e) for e in events}
    assert [i for i, r in reasons.items() if r is None] == published
    assert "not a work zone" in reasons["cd34:all-accident"]
    assert "not a work zone" in reasons["cd34:all-lane_management"]  # closes nothing
    assert "not a work zone" in reasons["cd34:no-lanes"]
    assert reasons["cd34:ended"].startswith("ended")
    assert reasons["cd34:no-geometry"] == "no geometry"
    assert "road name" in reasons["cd34:no-road"]
    assert "start" in reasons["cd34:planned-no-start"]


def test_feature_content():
    doc = json.loads(render_work_zones(sample_events(), PUB, T0))
    by_id = {f["id"]: f for f in doc["features"]}
    for feature in doc["features"]:
        props = feature["properties"]
        core = props["core_details"]
        assert core["event_type"] == "work-zone"
        assert core["road_names"] == ["RD613"]
        assert core["data_source_id"] == feature["id"].split(":")[0]
        assert props["location_method"] == "unknown"
        assert props["is_start_position_verified"] is False and props["is_end_position_verified"] is False
        for key in ("start_date", "end_date"):
            assert props[key].endswith("Z") and datetime.fromisoformat(props[key])
        assert props["start_date"] <= props["end_date"]

    works = by_id["cd34:all-roadworks"]["properties"]
    assert works["start_date"] == "2026-07-14T06:00:00Z" and works["end_date"] == "2026-07-16T08:00:00Z"
    assert works["is_start_date_verified"] is False and works["is_end_date_verified"] is False
    assert works["vehicle_impact"] == "unknown"
    assert works["core_details"]["description"] == "Travaux"  # first publication language
    assert works["core_details"]["direction"] == "unknown"
    assert works["core_details"]["creation_date"] == "2026-07-14T05:00:00Z"
    assert works["core_details"]["update_date"] == "2026-07-14T07:00:00Z"
    assert by_id["cd34:all-roadworks"]["geometry"] == {
        "type": "LineString",
        "coordinates": [[3.876543, 43.611111], [3.8801, 43.6123], [3.885, 43.614]],
    }

    point = by_id["cd34:works-point"]
    assert point["geometry"] == {"type": "MultiPoint", "coordinates": [[3.440123, 43.456789]]}
    assert point["properties"]["core_details"]["direction"] == "northbound"

    open_closure = by_id["cd34-bis:closure-open"]["properties"]
    assert open_closure["vehicle_impact"] == "all-lanes-closed"
    assert open_closure["end_date"] == "2026-07-15T08:00:00Z"  # published_at + 24 h, an estimate
    assert open_closure["is_end_date_verified"] is False
    assert open_closure["core_details"]["direction"] == "unknown"  # both directions: no WZDx value

    started = by_id["cd34:closure-started"]["properties"]
    assert started["start_date"] == "2026-07-14T06:30:00Z" and started["is_start_date_verified"] is True
    assert started["core_details"]["description"] == "Route barrée à Lodève"

    assert by_id["cd34:lanes"]["properties"]["vehicle_impact"] == "some-lanes-closed"
    assert by_id["cd34:all-lanes"]["properties"]["vehicle_impact"] == "all-lanes-closed"

    planned = by_id["cd34:planned"]["properties"]
    assert planned["start_date"] == "2026-07-15T08:00:00Z" and planned["is_start_date_verified"] is False

    unknown_start = by_id["cd34:active-no-start"]["properties"]
    assert unknown_start["start_date"] == "2026-07-14T05:00:00Z"  # first seen, not verified
    assert unknown_start["end_date"] == "2026-07-15T08:00:00Z"
    assert "description" not in unknown_start["core_details"]


def test_open_end_after_a_future_start():
    event = cd34_event("future", status="planned", planned_start=T0 + timedelta(days=3), planned_end=None)
    props = json.loads(render_work_zones([event], PUB, T0))["features"][0]["properties"]
    expected = (T0 + timedelta(days=3) + OPEN_END_HORIZON).astimezone(UTC)
    assert datetime.fromisoformat(props["end_date"]) == expected


@pytest.mark.parametrize(
    ("ours", "wzdx"),
    [
        (None, "unknown"),
        ("both", "unknown"),
        ("positive", "unknown"),
        ("negative", "unknown"),
        ("Montpellier", "unknown"),
        ("Nord", "northbound"),
        ("southbound", "southbound"),
        ("est", "eastbound"),
        ("W", "westbound"),
    ],
)
def test_direction_mapping(ours, wzdx):
    assert wzdx_direction(ours) == wzdx


@pytest.mark.parametrize(
    ("type_", "lanes", "expected"),
    [
        ("closure", None, "road"),
        ("lane_management", "all", "road"),
        ("lane_management", "Toutes les voies", "road"),
        ("lane_management", "1 voie sur 2", "lanes"),
        ("lane_management", None, None),
        ("lane_management", "none", None),
        ("roadworks", "chaussée", "road"),
    ],
)
def test_lane_closure(type_, lanes, expected):
    assert lane_closure(cd34_event("x", type_, lanes_affected=lanes)) == expected


def test_same_id_as_geojson():
    events = sample_events()
    geo = {f["id"]: f["properties"]["version"] for f in json.loads(render_events(events, PUB, T0))["features"]}
    for feature in json.loads(render_work_zones(events, PUB, T0))["features"]:
        assert feature["id"] in geo


def test_2000_events_validate(wzdx_validator: Draft7Validator):
    kinds: list[EventType] = ["roadworks", "closure", "lane_management"]
    events = [
        cd34_event(
            str(i),
            kinds[i % 3],
            geometry=LINE if i % 2 else POINT,
            lanes_affected="1 voie",
            planned_end=None if i % 5 == 0 else T0 + timedelta(days=1),
        )
        for i in range(2000)
    ]
    doc = json.loads(render_work_zones(events, PUB, T0))
    assert len(doc["features"]) == 2000
    assert schema_errors(wzdx_validator, doc) == []
