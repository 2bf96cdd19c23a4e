"""DATEX II v2.3 situations: valid against the official 2.3 schema, French location style."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
import xmlschema
from exporters_support import DATEX2_V2_XSD, id_chars, positions, storable_chars, times, valid_datex
from exporters_support import one as _one
from exporters_support import text as _text
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from exporters.datex2_v2 import render_situations
from feed.config import PublicationConfig
from feed.model import DATEX_RECORD_TYPES, DEFAULT_DATEX_RECORD, Geometry, StoredEvent

NS = {"d": "http://datex2.eu/schema/2/2_0", "xsi": "http://www.w3.org/2001/XMLSchema-instance"}
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"

NOW = datetime(2026, 7, 24, 8, 0, tzinfo=UTC)
PUBLICATION = PublicationConfig()
EVENT_TYPES = list(DEFAULT_DATEX_RECORD)

POINT = Geometry(type="Point", coordinates=[3.4667, 43.3431])
LINE = Geometry(type="LineString", coordinates=[[3.4667, 43.3431], [3.4702, 43.3478], [3.4811, 43.3522]])


def make_event(n: int = 1, **changes: Any) -> StoredEvent:
    """A realistic stored event of the Hérault inforoute; keyword arguments override."""
    fields: dict[str, Any] = {
        "external_id": f"EV{n:05d}",
        "type": "accident",
        "subtype": None,
        "status": "active",
        "severity": "high",
        "actual_start": NOW - timedelta(hours=1),
        "road": "RD612",
        "direction": "positive",
        "geometry": POINT,
        "descriptions": {"fr": "Accident, circulation alternée", "en": "Accident, alternating traffic"},
        "id": f"herault-inforoute:EV{n:05d}",
        "source_id": "herault-inforoute",
        "version": 2,
        "first_seen": NOW - timedelta(hours=1),
        "last_seen": NOW,
        "updated": NOW - timedelta(minutes=20),
    }
    fields.update(changes)
    return StoredEvent(**fields)


one = partial(_one, namespaces=NS)
text = partial(_text, namespaces=NS)


def record(doc: etree._Element, event_id: str) -> etree._Element:
    return one(doc, f"//d:situation[@id='{event_id}']/d:situationRecord")


def all_kinds_of_events() -> list[StoredEvent]:
    events = [make_event(n, type=t, geometry=LINE if n % 2 else POINT) for n, t in enumerate(EVENT_TYPES)]
    events += [make_event(100 + n, type=t, subtype=s) for n, (s, t) in enumerate(DATEX_RECORD_TYPES.items())]
    events += [
        make_event(200, subtype="SomethingNew"),
        make_event(201, status="ended", actual_end=NOW - timedelta(minutes=5)),
        make_event(202, status="planned", actual_start=None, planned_start=NOW + timedelta(days=1)),
        make_event(203, type="rerouting", detour="Déviation par la RD2"),
        make_event(204, location_refs={"road": "RD612", "pr": 21, "distance": 628}),
    ]
    return events


def test_every_type_and_class_is_valid(datex2_v2_xsd: etree.XMLSchema) -> None:
    events = all_kinds_of_events()
    doc = valid_datex(datex2_v2_xsd, render_situations(events, PUBLICATION, NOW))

    written = {r.get("id"): r.get(XSI_TYPE) for r in doc.xpath("//d:situationRecord", namespaces=NS)}
    assert len(written) == len(events)
    for event in events[: len(EVENT_TYPES)]:
        assert written[event.id] == DEFAULT_DATEX_RECORD[event.type]
    assert written["herault-inforoute:EV00100"] == "MaintenanceWorks"
    assert written["herault-inforoute:EV00102"] == "MaintenanceWorks"  # RoadworksInformation: no such class
    assert written["herault-inforoute:EV00200"] == "Accident"  # unknown subtype
    for public_event in doc.xpath("//d:situationRecord[@xsi:type='PublicEvent']", namespaces=NS):
        assert text(public_event, "d:publicEventType") == "other"  # v2.3 has no "unknown"


def test_document_header(datex2_v2_xsd: etree.XMLSchema) -> None:
    doc = valid_datex(datex2_v2_xsd, render_situations([make_event()], PUBLICATION, NOW))

    assert doc.tag == f"{{{NS['d']}}}d2LogicalModel"
    assert doc.get("modelBaseVersion") == "2"
    assert text(doc, "d:exchange/d:supplierIdentification/d:country") == "fr"
    assert text(doc, "d:exchange/d:supplierIdentification/d:nationalIdentifier") == "FR-HERAULT"
    payload = one(doc, "d:payloadPublication")
    assert payload.get(XSI_TYPE) == "SituationPublication"
    assert payload.get("lang") == "fr"
    assert text(payload, "d:publicationTime") == "2026-07-24T08:00:00Z"
    assert text(payload, "d:publicationCreator/d:nationalIdentifier") == "FR-HERAULT"


def test_a_country_outside_the_v2_list_is_other(datex2_v2_xsd: etree.XMLSchema) -> None:
    doc = valid_datex(datex2_v2_xsd, render_situations([make_event()], PublicationConfig(country="ad"), NOW))
    assert text(doc, "d:exchange/d:supplierIdentification/d:country") == "other"


def test_ids_and_versions(datex2_v2_xsd: etree.XMLSchema) -> None:
    before = make_event(5)
    after = before.model_copy(update={"version": 3, "updated": NOW - timedelta(minutes=1), "severity": "highest"})
    old = valid_datex(datex2_v2_xsd, render_situations([before], PUBLICATION, NOW))
    new = valid_datex(datex2_v2_xsd, render_situations([after], PUBLICATION, NOW))

    situation = one(new, "//d:situation")
    assert situation.get("id") == "herault-inforoute:EV00005"
    assert one(old, "//d:situation").get("version") == "2"
    assert situation.get("version") == "3"
    rec = record(new, after.id)
    assert rec.get("id") == after.id and rec.get("version") == "3"
    assert text(rec, "d:situationRecordCreationTime") == "2026-07-24T07:00:00Z"
    assert text(rec, "d:situationRecordVersionTime") == "2026-07-24T07:59:00Z"
    assert text(rec, "d:severity") == "highest"
    assert text(situation, "d:overallSeverity") == "highest"


def test_point_in_the_french_style(datex2_v2_xsd: etree.XMLSchema) -> None:
    event = make_event(6, location_refs={"road": "RD612", "referent": "34PR21D", "pr": 21, "distance": 628})
    doc = valid_datex(datex2_v2_xsd, render_situations([event], PUBLICATION, NOW))

    location = one(record(doc, event.id), "d:groupOfLocations")
    assert location.get(XSI_TYPE) == "Point"
    assert float(text(location, "d:locationForDisplay/d:latitude")) == pytest.approx(43.3431)
    assert float(text(location, "d:locationForDisplay/d:longitude")) == pytest.approx(3.4667)
    tpeg = one(location, "d:tpegPointLocation")
    assert tpeg.get(XSI_TYPE) == "TpegSimplePoint"
    assert text(tpeg, "d:tpegSimplePointLocationType") == "nonLinkedPoint"
    point = one(tpeg, "d:point")
    assert point.get(XSI_TYPE) == "TpegNonJunctionPoint"
    assert float(text(point, "d:pointCoordinates/d:latitude")) == pytest.approx(43.3431)
    assert text(point, "d:name/d:descriptor/d:values/d:value") == "RD612"
    assert text(point, "d:name/d:tpegOtherPointDescriptorType") == "linkName"
    along = one(location, "d:pointAlongLinearElement")  # like Tipi's 94PR0G + distanceAlong
    assert text(along, "d:directionRelativeAtPoint") == "aligned"
    assert text(along, "d:linearElement/d:roadNumber") == "RD612"
    distance = one(along, "d:distanceAlongLinearElement")
    assert distance.get(XSI_TYPE) == "DistanceFromLinearElementReferent"
    assert float(text(distance, "d:distanceAlong")) == 628
    assert text(distance, "d:fromReferent/d:referentIdentifier") == "34PR21D"
    assert text(distance, "d:fromReferent/d:referentType") == "referenceMarker"
    assert location.xpath("d:pointByCoordinates", namespaces=NS) == []  # the TPEG point has them


def test_point_without_road_by_coordinates(datex2_v2_xsd: etree.XMLSchema) -> None:
    event = make_event(15, road=None)
    doc = valid_datex(datex2_v2_xsd, render_situations([event], PUBLICATION, NOW))

    location = one(record(doc, event.id), "d:groupOfLocations")
    assert location.xpath("d:tpegPointLocation", namespaces=NS) == []  # TPEG needs a name
    assert float(text(location, "d:locationForDisplay/d:longitude")) == pytest.approx(3.4667)
    assert float(text(location, "d:pointByCoordinates/d:pointCoordinates/d:latitude")) == pytest.approx(43.3431)


def test_pr_refs_in_the_datex_parser_shape(datex2_v2_xsd: etree.XMLSchema) -> None:
    refs = {"pr": [{"at": "point", "road": "RD612", "departement": "34", "pr": 21, "side": "D", "abscissa": 40}]}
    event = make_event(7, geometry=None, location_refs=refs)
    doc = valid_datex(datex2_v2_xsd, render_situations([event], PUBLICATION, NOW))

    location = one(record(doc, event.id), "d:groupOfLocations")
    assert location.xpath("d:locationForDisplay", namespaces=NS) == []  # no coordinates known
    assert text(location, ".//d:referentIdentifier") == "34PR21D"
    assert float(text(location, ".//d:distanceAlong")) == 40


def test_line_as_a_tpeg_segment_and_between_prs(datex2_v2_xsd: etree.XMLSchema) -> None:
    refs = {
        "pr": [
            {"at": "from", "road": "RD612", "referent": "34PR21D", "abscissa": 0},
            {"at": "to", "road": "RD612", "referent": "34PR22D", "abscissa": 500},
        ]
    }
    event = make_event(8, geometry=LINE, direction="both", location_refs=refs)
    doc = valid_datex(datex2_v2_xsd, render_situations([event], PUBLICATION, NOW))

    location = one(record(doc, event.id), "d:groupOfLocations")
    assert location.get(XSI_TYPE) == "Linear"
    assert float(text(location, "d:locationForDisplay/d:latitude")) == pytest.approx(43.3431)
    tpeg = one(location, "d:tpegLinearLocation")
    assert text(tpeg, "d:tpegDirection") == "bothWays"
    assert text(tpeg, "d:tpegLinearLocationType") == "segment"
    assert float(text(tpeg, "d:from/d:pointCoordinates/d:longitude")) == pytest.approx(3.4667)
    assert float(text(tpeg, "d:to/d:pointCoordinates/d:longitude")) == pytest.approx(3.4811)
    assert text(tpeg, "d:to/d:name/d:descriptor/d:values/d:value") == "RD612"
    within = one(location, "d:linearWithinLinearElement")
    assert text(within, "d:directionRelativeOnLinearSection") == "both"
    assert text(within, "d:fromPoint/d:fromReferent/d:referentIdentifier") == "34PR21D"
    assert float(text(within, "d:toPoint/d:distanceAlong")) == 500


def test_descriptions_in_several_languages(datex2_v2_xsd: etree.XMLSchema) -> None:
    event = make_event(
        9, descriptions={"en": "Crash", "fr": "Accident", "es": "Accidente"}, detour="Déviation par Mèze"
    )
    doc = valid_datex(datex2_v2_xsd, render_situations([event], PUBLICATION, NOW))

    comments = record(doc, event.id).xpath("d:generalPublicComment", namespaces=NS)
    values = comments[0].xpath("d:comment/d:values/d:value", namespaces=NS)
    assert [(v.get("lang"), v.text) for v in values] == [("fr", "Accident"), ("en", "Crash"), ("es", "Accidente")]
    assert text(comments[0], "d:commentType") == "description"
    assert text(comments[1], "d:comment/d:values/d:value") == "Déviation par Mèze"


def test_ended_and_planned_events(datex2_v2_xsd: etree.XMLSchema) -> None:
    ended = make_event(10, status="ended", actual_end=NOW - timedelta(minutes=5))
    planned = make_event(
        11,
        status="planned",
        actual_start=None,
        planned_start=NOW + timedelta(days=1),
        planned_end=NOW + timedelta(days=2),
    )
    planned_late = make_event(12, status="planned", actual_start=None, planned_start=NOW - timedelta(hours=1))
    doc = valid_datex(datex2_v2_xsd, render_situations([ended, planned, planned_late], PUBLICATION, NOW))

    validity = one(record(doc, ended.id), "d:validity")
    assert text(validity, "d:validityStatus") == "definedByValidityTimeSpec"
    assert text(validity, "d:validityTimeSpecification/d:overallStartTime") == "2026-07-24T07:00:00Z"
    assert text(validity, "d:validityTimeSpecification/d:overallEndTime") == "2026-07-24T07:55:00Z"
    validity = one(record(doc, planned.id), "d:validity")
    assert text(validity, "d:validityTimeSpecification/d:overallStartTime") == "2026-07-25T08:00:00Z"
    assert text(validity, "d:validityTimeSpecification/d:overallEndTime") == "2026-07-26T08:00:00Z"
    # v2.3 has no "planned" status: the time specification is all it can say
    assert text(record(doc, planned_late.id), "d:validity/d:validityStatus") == "definedByValidityTimeSpec"


def test_events_v2_cannot_locate_are_left_out(datex2_v2_xsd: etree.XMLSchema) -> None:
    events = [make_event(13, geometry=None), make_event(14)]
    doc = valid_datex(datex2_v2_xsd, render_situations(events, PUBLICATION, NOW))
    assert [s.get("id") for s in doc.xpath("//d:situation", namespaces=NS)] == ["herault-inforoute:EV00014"]


@st.composite
def _events(draw: st.DrawFn) -> StoredEvent:
    geometry = draw(
        st.one_of(
            st.none(),
            positions.map(lambda p: Geometry(type="Point", coordinates=p)),
            st.lists(positions, min_size=2, max_size=5).map(lambda ps: Geometry(type="LineString", coordinates=ps)),
        )
    )
    refs = draw(
        st.sampled_from(
            [
                {},
                {"pr": 4, "distance": 10},
                {
                    "pr": [
                        {"at": "from", "road": "RD2", "referent": "34PR1"},
                        {"at": "to", "road": "RD2", "pr": 2, "departement": "34"},
                    ]
                },
            ]
        )
    )
    return make_event(
        draw(st.integers(0, 99_999)),
        id=draw(st.text(id_chars, min_size=1, max_size=40)),
        type=draw(st.sampled_from(EVENT_TYPES)),
        subtype=draw(st.one_of(st.none(), st.sampled_from(list(DATEX_RECORD_TYPES)))),
        status=draw(st.sampled_from(["planned", "active", "ended"])),
        planned_start=draw(st.one_of(st.none(), times)),
        planned_end=draw(st.one_of(st.none(), times)),
        actual_start=draw(st.one_of(st.none(), times)),
        actual_end=draw(st.one_of(st.none(), times)),
        road=draw(st.one_of(st.none(), st.text(storable_chars, max_size=12))),
        direction=draw(st.sampled_from([None, "both", "positive", "SW", "Béziers"])),
        geometry=geometry,
        descriptions=draw(
            st.dictionaries(st.sampled_from(["fr", "en", "", "?"]), st.text(storable_chars, max_size=1200), max_size=3)
        ),
        detour=draw(st.one_of(st.none(), st.text(storable_chars, max_size=50))),
        location_refs=refs,
        first_seen=draw(times),
        updated=draw(times),
    )


@settings(max_examples=60, deadline=None)
@given(events=st.lists(_events(), max_size=4, unique_by=lambda e: e.id))
def test_any_events_give_a_valid_document(datex2_v2_xsd: etree.XMLSchema, events: list[StoredEvent]) -> None:
    valid_datex(datex2_v2_xsd, render_situations(events, PUBLICATION, NOW))


def test_2000_events_stay_valid(datex2_v2_xsd: etree.XMLSchema) -> None:
    events = [
        make_event(
            i,
            type=EVENT_TYPES[i % len(EVENT_TYPES)],
            geometry=LINE if i % 2 else POINT,
            status=("active", "ended")[i % 2],
        )
        for i in range(2000)
    ]
    doc = valid_datex(datex2_v2_xsd, render_situations(events, PUBLICATION, NOW))
    assert len(doc.findall(".//{*}situation")) == 2000


def test_xmlschema_agrees() -> None:
    document = render_situations(all_kinds_of_events(), PUBLICATION, NOW)
    xmlschema.XMLSchema(str(DATEX2_V2_XSD)).validate(document.decode())
