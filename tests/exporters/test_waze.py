"""Waze CIFS: the publication rules, XML valid against cifsv2.xsd, JSON form, report."""

from __future__ import annotations

import json
import re
import typing
from datetime import timedelta
from functools import partial

import pytest
import xmlschema
from exporters_support import CIFS_XSD, T0, cd34_event
from lxml import etree

from exporters.geojson import render_events
from exporters.waze import (
    check_waze_rules,
    decide,
    polyline_length_m,
    render_cifs_json,
    render_cifs_xml,
    render_report,
    waze_type,
)
from exporters.wzdx import render_work_zones
from feed.config import PublicationConfig
from feed.model import EventType, Geometry, StoredEvent

DIALOG_SAMPLE = CIFS_XSD.parent / "samples" / "fr-dialog-cifs-incidents-expected-result.xml"
XMLSCHEMA = xmlschema.XMLSchema(str(CIFS_XSD))

PUB = PublicationConfig()
WAZE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}$")

# ~ 1e-5 degree of latitude is 1.11 m
LINE_500M = Geometry(
    type="LineString", coordinates=[[3.87654321, 43.6111], [3.87654321, 43.6131], [3.87654321, 43.6156]]
)
LINE_20M = Geometry(type="LineString", coordinates=[[3.5, 43.5], [3.5, 43.50018]])
LINE_12KM = Geometry(type="LineString", coordinates=[[3.5, 43.5], [3.5, 43.55], [3.5, 43.608]])
POINT = Geometry(type="Point", coordinates=[3.44, 43.45])


# The works of the other formats' tests, on a 500 m line.
make_event = partial(cd34_event, geometry=LINE_500M)


def sample_events() -> list[StoredEvent]:
    events = [make_event(f"all-{t}", t, version=3) for t in typing.get_args(EventType)]
    events += [
        make_event("closure-20m", "closure", geometry=LINE_20M),
        make_event("closure-12km", "closure", geometry=LINE_12KM),
        make_event("closure-ok", "closure", direction="both", subtype="MaintenanceWorks", planned_end=None, version=7),
        make_event("lanes-all-20m", "lane_management", lanes_affected="all", geometry=LINE_20M),
        make_event(
            "lanes-some-20m", "lane_management", lanes_affected="right lane", geometry=LINE_20M, direction="negative"
        ),
        make_event("point", "accident", geometry=POINT),
        make_event("no-geometry", "obstruction", geometry=None),
        make_event(
            "same-points", "obstruction", geometry=Geometry(type="LineString", coordinates=[[3.5, 43.5], [3.5, 43.5]])
        ),
        make_event("no-start", "roadworks", planned_start=None, actual_start=None),
        make_event("ended", "roadworks", status="ended", actual_end=T0 - timedelta(minutes=10), version=9),
        make_event("no-road", "roadworks", road=None),
        make_event(
            "planned",
            "roadworks",
            status="planned",
            planned_start=T0 + timedelta(days=1),
            planned_end=T0 + timedelta(days=1, hours=8),
            descriptions={"en": "Night works", "oc": "Trabalhs"},
        ),
        make_event(
            "accident-major", "accident", severity="highest", actual_start=T0 - timedelta(minutes=15), descriptions={}
        ),
        make_event("ice", "weather", subtype="black ice"),
        make_event("car", "obstruction", subtype="VehicleObstruction"),
    ]
    return events


# --- validator setup --------------------------------------------------------


def test_official_sample_validates(cifs_xsd: etree.XMLSchema):
    assert XMLSCHEMA.is_valid(str(DIALOG_SAMPLE))
    assert cifs_xsd.validate(etree.parse(str(DIALOG_SAMPLE)))


def test_validator_is_not_vacuous(cifs_xsd: etree.XMLSchema):
    broken = b"<incidents><incident id='abc'><type>FLOOD</type></incident></incidents>"
    assert not cifs_xsd.validate(etree.fromstring(broken))
    assert not XMLSCHEMA.is_valid(broken.decode())


# --- rules ------------------------------------------------------------------


def test_rule_decisions():
    decisions = {e.id: decide(e) for e in sample_events()}
    codes = {i: d.code for i, d in decisions.items()}
    assert codes == {
        "cd34:all-roadworks": None,
        "cd34:all-accident": None,
        "cd34:all-closure": None,
        "cd34:all-lane_management": None,
        "cd34:all-congestion": "type_not_mappable",
        "cd34:all-obstruction": None,
        "cd34:all-weather": None,
        "cd34:all-environment": None,
        "cd34:all-speed_management": "type_not_mappable",
        "cd34:all-rerouting": "type_not_mappable",
        "cd34:all-public_event": "type_not_mappable",
        "cd34:all-other": "type_not_mappable",
        "cd34:closure-20m": "closure_too_short",
        "cd34:closure-12km": "closure_too_long",
        "cd34:closure-ok": None,
        "cd34:lanes-all-20m": "closure_too_short",
        "cd34:lanes-some-20m": None,  # not a road closure: no length rule
        "cd34:point": "point_geometry",
        "cd34:no-geometry": "no_geometry",
        "cd34:same-points": "degenerate_polyline",
        "cd34:no-start": "no_start_time",
        "cd34:ended": "ended",
        "cd34:no-road": "no_street",
        "cd34:planned": None,
        "cd34:accident-major": None,
        "cd34:ice": None,
        "cd34:car": None,
    }
    for event in sample_events():
        assert check_waze_rules(event) == decisions[event.id].reason
    assert "20 m" in decisions["cd34:closure-20m"].reason and "35 m" in decisions["cd34:closure-20m"].reason
    assert "12.0 km" in decisions["cd34:closure-12km"].reason and "10 km" in decisions["cd34:closure-12km"].reason
    assert "Point" in decisions["cd34:point"].reason


def test_haversine_lengths():
    assert polyline_length_m([(3.5, 43.0), (3.5, 44.0)]) == pytest.approx(111_195, abs=5)  # 1° of latitude
    assert polyline_length_m(LINE_500M.points) == pytest.approx(500, abs=1)
    assert polyline_length_m(LINE_20M.points) == pytest.approx(20, abs=0.5)
    assert polyline_length_m(LINE_12KM.points) == pytest.approx(12_009, abs=10)


def test_closure_limits_are_inclusive():
    def closure(metres: float) -> StoredEvent:
        lat = 43.5 + metres / 111_195
        return make_event("c", "closure", geometry=Geometry(type="LineString", coordinates=[[3.5, 43.5], [3.5, lat]]))

    assert decide(closure(34)).code == "closure_too_short"
    assert decide(closure(36)).code is None
    assert decide(closure(9_990)).code is None
    assert decide(closure(10_010)).code == "closure_too_long"


@pytest.mark.parametrize(
    ("type_", "kw", "expected"),
    [
        ("roadworks", {}, ("CONSTRUCTION", None)),
        ("roadworks", {"lanes_affected": "all"}, ("ROAD_CLOSED", "ROAD_CLOSED_CONSTRUCTION")),
        ("closure", {}, ("ROAD_CLOSED", None)),
        ("closure", {"subtype": "PublicEvent"}, ("ROAD_CLOSED", "ROAD_CLOSED_EVENT")),
        ("closure", {"subtype": "Accident"}, ("ROAD_CLOSED", "ROAD_CLOSED_HAZARD")),
        ("public_event", {"lanes_affected": "toutes les voies"}, ("ROAD_CLOSED", "ROAD_CLOSED_EVENT")),
        ("accident", {}, ("ACCIDENT", None)),
        ("accident", {"severity": "high"}, ("ACCIDENT", "ACCIDENT_MAJOR")),
        ("accident", {"severity": "low"}, ("ACCIDENT", "ACCIDENT_MINOR")),
        ("lane_management", {"lanes_affected": "1 voie"}, ("HAZARD", "HAZARD_ON_ROAD_LANE_CLOSED")),
        ("lane_management", {}, ("HAZARD", "HAZARD_ON_ROAD")),
        ("obstruction", {}, ("HAZARD", "HAZARD_ON_ROAD")),
        ("obstruction", {"subtype": "VehicleObstruction"}, ("HAZARD", "HAZARD_ON_ROAD_CAR_STOPPED")),
        ("weather", {}, ("HAZARD", "HAZARD_WEATHER")),
        ("weather", {"subtype": "fog"}, ("HAZARD", "HAZARD_WEATHER_FOG")),
        ("environment", {"subtype": "PoorEnvironmentConditions"}, ("HAZARD", "HAZARD_WEATHER")),
        ("environment", {"subtype": "NonWeatherRelatedRoadConditions"}, ("HAZARD", "HAZARD_ON_ROAD")),
        ("congestion", {}, None),
        ("speed_management", {}, None),
        ("rerouting", {}, None),
        ("public_event", {}, None),
        ("other", {}, None),
    ],
)
def test_type_mapping(type_, kw, expected):
    assert waze_type(make_event("t", type_, **kw)) == expected


def test_mapped_types_and_subtypes_are_in_the_xsd():
    schema = etree.parse(str(CIFS_XSD))
    ns = {"xs": "http://www.w3.org/2001/XMLSchema"}

    def enum(name: str) -> set[str]:
        return set(schema.xpath(f"//xs:element[@name='{name}']//xs:enumeration/@value", namespaces=ns))

    types, subtypes = enum("type"), enum("subtype")
    for event in sample_events():
        mapped = waze_type(event)
        if mapped:
            assert mapped[0] in types and (mapped[1] is None or mapped[1] in subtypes)


# --- XML --------------------------------------------------------------------


def _xml_incidents(xml: bytes) -> dict[str, dict[str, typing.Any]]:
    root = etree.fromstring(xml)
    out = {}
    for el in root.findall("incident"):
        fields: dict[str, typing.Any] = {"id": el.get("id")}
        for child in el:
            fields[child.tag] = {c.tag: c.text for c in child} if len(child) else child.text
        out[fields["id"]] = fields
    return out


def test_cifs_xml_validates_with_both_engines(cifs_xsd: etree.XMLSchema):
    xml = render_cifs_xml(sample_events(), PUB, T0)
    assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    XMLSCHEMA.validate(xml.decode("utf-8"))
    doc = etree.fromstring(xml)
    assert cifs_xsd.validate(doc), cifs_xsd.error_log
    assert doc.tag == "incidents" and doc.get("timestamp") == "2026-07-14T10:00:00+02:00"
    empty = render_cifs_xml([], PUB, T0)
    assert cifs_xsd.validate(etree.fromstring(empty))


def test_cifs_xml_content():
    events = sample_events()
    incidents = _xml_incidents(render_cifs_xml(events, PUB, T0))
    assert sorted(incidents) == sorted(e.id for e in events if decide(e).code is None)

    closure = incidents["cd34:closure-ok"]
    assert closure["type"] == "ROAD_CLOSED" and closure["subtype"] == "ROAD_CLOSED_CONSTRUCTION"
    # "lat lon lat lon …", 6 decimals, in the geometry's order
    assert closure["polyline"] == "43.611100 3.876543 43.613100 3.876543 43.615600 3.876543"
    assert closure["street"] == "RD613"
    assert closure["direction"] == "BOTH_DIRECTIONS"
    assert closure["starttime"] == "2026-07-14T08:00:00+02:00"
    assert "endtime" not in closure  # no end known: none invented
    assert closure["description"] == "Travaux"
    assert closure["creationtime"] == "2026-07-14T07:00:00+02:00"
    assert closure["updatetime"] == "2026-07-14T09:00:00+02:00"
    assert closure["source"] == {"reference": PUB.national_identifier, "name": PUB.publisher}

    assert incidents["cd34:lanes-some-20m"]["direction"] == "ONE_DIRECTION"
    assert "direction" not in incidents["cd34:all-roadworks"]
    assert incidents["cd34:all-roadworks"]["endtime"] == "2026-07-16T10:00:00+02:00"
    assert "subtype" not in incidents["cd34:all-roadworks"]

    planned = incidents["cd34:planned"]
    assert planned["starttime"] == "2026-07-15T10:00:00+02:00" and planned["endtime"] == "2026-07-15T18:00:00+02:00"
    assert planned["description"] == "Night works"  # no French text: the next language

    major = incidents["cd34:accident-major"]
    assert (major["type"], major["subtype"]) == ("ACCIDENT", "ACCIDENT_MAJOR")
    assert major["starttime"] == "2026-07-14T09:45:00+02:00"  # actual start wins
    assert major["description"] == "Accident"  # no text at all: a label, never empty

    assert incidents["cd34:ice"]["subtype"] == "HAZARD_ON_ROAD_ICE"
    for incident in incidents.values():
        for key in ("starttime", "endtime", "creationtime", "updatetime"):
            if key in incident:
                assert WAZE_TIME.match(incident[key]), incident[key]
        assert len(incident["polyline"].split()) >= 4


def test_cifs_xml_escapes_text(cifs_xsd: etree.XMLSchema):
    event = make_event("esc", descriptions={"fr": 'Chantier <RD613> & "déviation"'})
    xml = render_cifs_xml([event], PUB, T0)
    assert cifs_xsd.validate(etree.fromstring(xml))
    assert _xml_incidents(xml)["cd34:esc"]["description"] == 'Chantier <RD613> & "déviation"'


# --- JSON -------------------------------------------------------------------


def test_cifs_json_is_the_documented_form_and_matches_the_xml():
    events = sample_events()
    doc = json.loads(render_cifs_json(events, PUB, T0))
    assert set(doc) == {"incidents"}
    assert all(set(item) == {"incident"} for item in doc["incidents"])
    from_json = {item["incident"]["id"]: item["incident"] for item in doc["incidents"]}
    assert from_json == _xml_incidents(render_cifs_xml(events, PUB, T0))
    assert json.loads(render_cifs_json([], PUB, T0)) == {"incidents": []}


# --- report and cross-format consistency ------------------------------------


def test_report_lists_every_left_out_event():
    events = sample_events()
    report = json.loads(render_report(events, T0))
    assert report["generated_at"] == "2026-07-14T08:00:00Z"
    left_out = {item["id"]: item for item in report["left_out"]}
    expected = {e.id for e in events if decide(e).code is not None}
    assert set(left_out) == expected
    assert left_out["cd34:ended"]["version"] == 9
    assert left_out["cd34:closure-12km"]["code"] == "closure_too_long"
    assert left_out["cd34:point"]["reason"] == check_waze_rules(make_event("point", "accident", geometry=POINT))
    counts = report["counts"]
    assert counts["events"] == len(events)
    assert counts["left_out"] == len(expected)
    assert counts["published"] == len(events) - len(expected)
    assert counts["by_reason"] == {
        "closure_too_long": 1,
        "closure_too_short": 2,
        "degenerate_polyline": 1,
        "ended": 1,
        "no_geometry": 1,
        "no_start_time": 1,
        "no_street": 1,
        "point_geometry": 1,
        "type_not_mappable": 5,
    }
    published = len(etree.fromstring(render_cifs_xml(events, PUB, T0)).findall("incident"))
    assert published == counts["published"]


def test_same_id_and_version_in_every_format():
    events = sample_events()
    versions = {e.id: e.version for e in events}
    geo = {f["id"]: f["properties"]["version"] for f in json.loads(render_events(events, PUB, T0))["features"]}
    assert geo == versions
    for feature in json.loads(render_work_zones(events, PUB, T0))["features"]:
        assert feature["id"] in versions
    for incident_id in _xml_incidents(render_cifs_xml(events, PUB, T0)):
        assert incident_id in versions
    for item in json.loads(render_report(events, T0))["left_out"]:
        assert versions[item["id"]] == item["version"]
