"""DATEX II v3 exporters: schema-valid (3.6, and the RTTI traffic-data profile for
road traffic data) and saying what the domain objects say."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
import xmlschema
from exporters_support import DATEX2_V36_XSD, id_chars, positions, storable_chars, times, valid_datex
from exporters_support import one as _one
from exporters_support import text as _text
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from exporters.datex2_v3 import (
    NothingToPublish,
    render_measured_data,
    render_measurement_sites,
    render_situations,
    site_version,
)
from feed.config import PublicationConfig
from feed.model import (
    DATEX_RECORD_TYPES,
    DEFAULT_DATEX_RECORD,
    Geometry,
    StoredChannel,
    StoredEvent,
    StoredSite,
)

NS = {
    "mc": "http://datex2.eu/schema/3/messageContainer",
    "d2": "http://datex2.eu/schema/3/d2Payload",
    "com": "http://datex2.eu/schema/3/common",
    "sit": "http://datex2.eu/schema/3/situation",
    "loc": "http://datex2.eu/schema/3/locationReferencing",
    "roa": "http://datex2.eu/schema/3/roadTrafficData",
    "ex": "http://datex2.eu/schema/3/exchangeInformation",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
}
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"

NOW = datetime(2026, 7, 24, 8, 0, tzinfo=UTC)
PUBLICATION = PublicationConfig()
EVENT_TYPES = list(DEFAULT_DATEX_RECORD)  # every EventType


# ---------------------------------------------------------------- helpers

POINT = Geometry(type="Point", coordinates=[3.8767, 43.6108])
LINE = Geometry(type="LineString", coordinates=[[3.8767, 43.6108], [3.8801, 43.6152], [3.8912, 43.6203]])


def make_event(n: int = 1, **changes: Any) -> StoredEvent:
    """A realistic stored event of the Hérault inforoute; keyword arguments override."""
    fields: dict[str, Any] = {
        "external_id": f"EV{n:05d}",
        "type": "roadworks",
        "subtype": None,
        "status": "active",
        "severity": "medium",
        "planned_start": NOW - timedelta(days=2),
        "planned_end": NOW + timedelta(days=5),
        "road": "RD613",
        "direction": "both",
        "geometry": POINT,
        "descriptions": {"fr": "Travaux de réfection de chaussée", "en": "Resurfacing works"},
        "id": f"herault-inforoute:EV{n:05d}",
        "source_id": "herault-inforoute",
        "version": 3,
        "first_seen": NOW - timedelta(days=3),
        "last_seen": NOW - timedelta(minutes=1),
        "updated": NOW - timedelta(hours=2),
    }
    fields.update(changes)
    return StoredEvent(**fields)


def make_channel(n: int, site: str = "S1", **changes: Any) -> StoredChannel:
    fields: dict[str, Any] = {
        "site_external_id": site,
        "external_id": f"{site}-C{n}",
        "id": 100 + n,
        "direction": "positive",
        "lane": None,
        "vehicle_class": "all",
        "mobility_type": "car",
        "time_step": 300,
        "latest_start": NOW - timedelta(minutes=10),
        "latest_length": 300,
        "latest_count": 25,
        "latest_speed": 71.26,
        "latest_quality": "observed",
    }
    fields.update(changes)
    return StoredChannel(**fields)


def make_site(n: int = 1, channels: list[StoredChannel] | None = None, **changes: Any) -> StoredSite:
    ext = f"S{n}"
    fields: dict[str, Any] = {
        "external_id": ext,
        "name": f"RD613 Fabrègues {n}",
        "road": "RD613",
        "pr": 12,
        "abscissa": 350,
        "insee": "34095",
        "lon": 3.7762 + n / 1000,
        "lat": 43.5523,
        "id": n,
        "source_id": "herault-comptages",
        "channels": channels
        if channels is not None
        else [make_channel(1, ext), make_channel(2, ext, direction="negative")],
    }
    fields.update(changes)
    return StoredSite(**fields)


def mixed_sites() -> list[StoredSite]:
    """Sites with every vehicle class, lanes, a bike counter and channels without data."""
    return [
        make_site(1),
        make_site(
            2,
            [
                make_channel(
                    1,
                    "S2",
                    vehicle_class="light",
                    lane=1,
                    direction="N",
                    time_step=900,
                    latest_length=900,
                    latest_count=7,
                ),
                make_channel(2, "S2", vehicle_class="heavy", lane=2, direction="S", latest_speed=None),
                make_channel(
                    3,
                    "S2",
                    latest_start=None,
                    latest_length=None,
                    latest_count=None,
                    latest_speed=None,
                    latest_quality=None,
                ),
                make_channel(4, "S2", latest_quality="invalid", latest_count=9999),
                make_channel(5, "S2", latest_quality="missing", latest_count=None, latest_speed=None),
            ],
        ),
        make_site(
            3,
            [
                make_channel(
                    1,
                    "S3",
                    mobility_type="BIKE",
                    time_step=3600,
                    latest_length=3600,
                    latest_count=42,
                    latest_speed=None,
                )
            ],
        ),
    ]


one = partial(_one, namespaces=NS)
text = partial(_text, namespaces=NS)


def record(doc: etree._Element, event_id: str) -> etree._Element:
    return one(doc, f"//sit:situation[@id='{event_id}']/sit:situationRecord")


def all_kinds_of_events() -> list[StoredEvent]:
    events = []
    n = 0
    for event_type in EVENT_TYPES:  # every type with its default class
        n += 1
        events.append(make_event(n, type=event_type, geometry=LINE if n % 2 else POINT))
    for subtype, event_type in DATEX_RECORD_TYPES.items():  # every class the parsers keep
        n += 1
        events.append(make_event(n, type=event_type, subtype=subtype))
    events.append(make_event(90, type="accident", subtype="SomethingNew"))  # unknown subtype
    events.append(make_event(91, status="ended", actual_end=NOW - timedelta(minutes=30)))
    events.append(make_event(92, status="planned", planned_start=NOW + timedelta(days=1), planned_end=None))
    events.append(make_event(93, planned_end=None, descriptions={"fr": "Sans fin prévue"}))
    events.append(make_event(94, type="rerouting", detour="Déviation par la RD5 et la RD114"))
    events.append(
        make_event(95, detour="Déviation par Pignan", location_refs={"road": "RD613", "pr": 12, "distance": 350})
    )
    return events


# ---------------------------------------------------------------- situations


def test_situations_of_every_type_and_class_are_valid(datex2_v36_xsd: etree.XMLSchema) -> None:
    events = all_kinds_of_events()
    doc = valid_datex(datex2_v36_xsd, render_situations(events, PUBLICATION, NOW))

    assert len(doc.xpath("//sit:situation", namespaces=NS)) == len(events)
    written = {r.get("id"): r.get(XSI_TYPE) for r in doc.xpath("//sit:situationRecord", namespaces=NS)}
    for event in events[: len(EVENT_TYPES)]:
        assert written[event.id] == "sit:" + DEFAULT_DATEX_RECORD[event.type]
    for event in events[len(EVENT_TYPES) : len(EVENT_TYPES) + len(DATEX_RECORD_TYPES)]:
        if event.subtype in ("RoadworksInformation", "NetworkManagement"):
            # not a concrete class in any DATEX II schema: the type's default is written
            assert written[event.id] == "sit:" + DEFAULT_DATEX_RECORD[event.type]
        else:
            assert written[event.id] == "sit:" + event.subtype
    assert written["herault-inforoute:EV00090"] == "sit:Accident"  # unknown subtype


def test_mandatory_type_specific_elements(datex2_v36_xsd: etree.XMLSchema) -> None:
    events = [
        make_event(1, type="closure"),
        make_event(2, type="roadworks"),
        make_event(3, type="public_event"),
        make_event(4, type="environment"),
    ]
    doc = valid_datex(datex2_v36_xsd, render_situations(events, PUBLICATION, NOW))

    closure = record(doc, events[0].id)
    assert text(closure, "sit:complianceOption") == "mandatory"
    assert text(closure, "sit:roadOrCarriagewayOrLaneManagementType") == "roadClosed"
    assert text(record(doc, events[1].id), "sit:roadMaintenanceType") == "roadworks"
    assert text(record(doc, events[2].id), "sit:publicEventType") == "unknown"
    assert text(record(doc, events[3].id), "sit:poorEnvironmentType") == "badWeather"


def test_publication_header_and_exchange_information(datex2_v36_xsd: etree.XMLSchema) -> None:
    publication = PublicationConfig(country="FR", national_identifier="FR-HERAULT-34", languages=["fr", "en", "oc"])
    doc = valid_datex(datex2_v36_xsd, render_situations([make_event()], publication, NOW))

    assert doc.tag == f"{{{NS['mc']}}}messageContainer"
    payload = one(doc, "mc:payload")
    assert payload.get(XSI_TYPE) == "sit:SituationPublication"
    assert payload.get("lang") == "fr"
    assert payload.get("modelBaseVersion") == "3"
    assert text(payload, "com:publicationTime") == "2026-07-24T08:00:00Z"
    assert text(payload, "com:publicationCreator/com:country") == "fr"
    assert text(payload, "com:publicationCreator/com:nationalIdentifier") == "FR-HERAULT-34"
    info = one(doc, "mc:exchangeInformation")
    assert text(info, "ex:exchangeContext/ex:codedExchangeProtocol") == "snapshotPull"
    assert (
        text(info, ".//ex:supplierOrCisRequester/ex:internationalIdentifier/com:nationalIdentifier") == "FR-HERAULT-34"
    )
    assert text(info, "ex:dynamicInformation/ex:messageGenerationTimestamp") == "2026-07-24T08:00:00Z"


def test_ids_versions_and_times(datex2_v36_xsd: etree.XMLSchema) -> None:
    event = make_event(7, severity="high")
    doc = valid_datex(datex2_v36_xsd, render_situations([event], PUBLICATION, NOW))

    situation = one(doc, "//sit:situation")
    assert situation.get("id") == "herault-inforoute:EV00007"
    assert text(situation, "sit:overallSeverity") == "high"
    rec = one(situation, "sit:situationRecord")
    assert rec.get("id") == "herault-inforoute:EV00007"
    assert rec.get("version") == "3"
    assert text(rec, "sit:situationRecordCreationTime") == "2026-07-21T08:00:00Z"  # first_seen
    assert text(rec, "sit:situationRecordVersionTime") == "2026-07-24T06:00:00Z"  # updated
    assert text(rec, "sit:severity") == "high"
    assert text(rec, "sit:probabilityOfOccurrence") == "certain"
    assert text(rec, "sit:source/com:sourceIdentification") == "herault-inforoute"


def test_a_new_version_of_an_event_shows_its_higher_version(datex2_v36_xsd: etree.XMLSchema) -> None:
    before = make_event(8, version=3)
    after = before.model_copy(
        update={"version": 4, "updated": NOW - timedelta(minutes=5), "descriptions": {"fr": "Chaussée rétrécie"}}
    )
    old = valid_datex(datex2_v36_xsd, render_situations([before], PUBLICATION, NOW))
    new = valid_datex(datex2_v36_xsd, render_situations([after], PUBLICATION, NOW))

    assert record(old, before.id).get("version") == "3"
    assert record(new, after.id).get("version") == "4"
    assert text(record(new, after.id), "sit:situationRecordVersionTime") == "2026-07-24T07:55:00Z"
    assert (
        text(record(new, after.id), "sit:generalPublicComment/sit:comment/com:values/com:value") == "Chaussée rétrécie"
    )


def test_point_location_with_road_and_pr(datex2_v36_xsd: etree.XMLSchema) -> None:
    event = make_event(9, direction="negative", location_refs={"road": "RD613", "pr": 12, "distance": 350})
    doc = valid_datex(datex2_v36_xsd, render_situations([event], PUBLICATION, NOW))

    location = one(record(doc, event.id), "sit:locationReference")
    assert location.get(XSI_TYPE) == "loc:PointLocation"
    assert text(location, "loc:supplementaryPositionalDescription/loc:roadInformation/loc:roadNumber") == "RD613"
    assert float(text(location, "loc:pointByCoordinates/loc:pointCoordinates/loc:latitude")) == pytest.approx(43.6108)
    assert float(text(location, "loc:pointByCoordinates/loc:pointCoordinates/loc:longitude")) == pytest.approx(3.8767)
    along = one(location, "loc:pointAlongLinearElement")
    assert text(along, "loc:directionRelativeAtPoint") == "opposite"
    assert text(along, "loc:linearElement/loc:roadNumber") == "RD613"
    distance = one(along, "loc:distanceAlongLinearElement")
    assert distance.get(XSI_TYPE) == "loc:DistanceFromLinearElementReferent"
    assert float(text(distance, "loc:distanceAlong")) == 350
    assert text(distance, "loc:fromReferent/loc:referentIdentifier") == "PR12"
    assert text(distance, "loc:fromReferent/loc:referentType") == "referenceMarker"


def test_line_location_is_a_gml_line_in_latitude_longitude_order(datex2_v36_xsd: etree.XMLSchema) -> None:
    event = make_event(10, geometry=LINE)
    doc = valid_datex(datex2_v36_xsd, render_situations([event], PUBLICATION, NOW))

    location = one(record(doc, event.id), "sit:locationReference")
    assert location.get(XSI_TYPE) == "loc:LinearLocation"
    assert text(location, "loc:supplementaryPositionalDescription/loc:roadInformation/loc:roadNumber") == "RD613"
    assert float(text(location, "loc:coordinatesForDisplay/loc:latitude")) == pytest.approx(43.6108)
    numbers = [float(v) for v in text(location, "loc:gmlLineString/loc:posList").split()]
    assert numbers == pytest.approx([value for lon, lat in LINE.coordinates for value in (lat, lon)])


def test_line_between_two_prs_of_the_datex_parser(datex2_v36_xsd: etree.XMLSchema) -> None:
    refs = {
        "pr": [
            {"at": "from", "road": "RD613", "referent": "34PR12D", "pr": 12, "abscissa": 100},
            {"at": "to", "road": "RD613", "referent": "34PR14D", "pr": 14, "abscissa": 250},
        ]
    }
    event = make_event(11, geometry=LINE, direction="positive", location_refs=refs)
    doc = valid_datex(datex2_v36_xsd, render_situations([event], PUBLICATION, NOW))

    location = one(record(doc, event.id), "sit:locationReference")
    assert location.get(XSI_TYPE) == "loc:SingleRoadLinearLocation"
    within = one(location, "loc:linearWithinLinearElement")
    assert text(within, "loc:directionRelativeOnLinearSection") == "aligned"
    assert text(within, "loc:fromPoint/loc:fromReferent/loc:referentIdentifier") == "34PR12D"
    assert float(text(within, "loc:toPoint/loc:distanceAlong")) == 250
    assert one(location, "loc:gmlLineString") is not None


def test_descriptions_in_every_language_and_the_detour(datex2_v36_xsd: etree.XMLSchema) -> None:
    works = make_event(
        12, descriptions={"en": "Works", "fr": "Travaux", "de": "Bauarbeiten"}, detour="Déviation par Pignan"
    )
    rerouting = make_event(13, type="rerouting", detour="Suivre la RD5")
    doc = valid_datex(datex2_v36_xsd, render_situations([works, rerouting], PUBLICATION, NOW))

    comments = record(doc, works.id).xpath("sit:generalPublicComment", namespaces=NS)
    values = comments[0].xpath("sit:comment/com:values/com:value", namespaces=NS)
    assert [(v.get("lang"), v.text) for v in values] == [("fr", "Travaux"), ("en", "Works"), ("de", "Bauarbeiten")]
    assert text(comments[0], "sit:commentType") == "description"
    assert text(comments[1], "sit:comment/com:values/com:value") == "Déviation par Pignan"
    assert text(comments[1], "sit:commentType") == "other"
    rec = record(doc, rerouting.id)
    assert rec.get(XSI_TYPE) == "sit:ReroutingManagement"
    assert text(rec, "sit:reroutingManagementType") == "followDiversionSigns"
    assert text(rec, "sit:reroutingItineraryDescription/com:values/com:value") == "Suivre la RD5"


def test_ended_events_are_listed_with_their_end(datex2_v36_xsd: etree.XMLSchema) -> None:
    ended = make_event(14, status="ended", actual_start=NOW - timedelta(days=2), actual_end=NOW - timedelta(hours=1))
    ended_unknown_end = make_event(15, status="ended", planned_end=NOW + timedelta(days=3))
    doc = valid_datex(datex2_v36_xsd, render_situations([ended, ended_unknown_end], PUBLICATION, NOW))

    validity = one(record(doc, ended.id), "sit:validity")
    assert text(validity, "com:validityStatus") == "definedByValidityTimeSpec"
    assert text(validity, "com:validityTimeSpecification/com:overallStartTime") == "2026-07-22T08:00:00Z"
    assert text(validity, "com:validityTimeSpecification/com:overallEndTime") == "2026-07-24T07:00:00Z"
    # ended early, before its planned end: it ended when we saw it end
    validity = one(record(doc, ended_unknown_end.id), "sit:validity")
    assert text(validity, "com:validityTimeSpecification/com:overallEndTime") == "2026-07-24T06:00:00Z"


@pytest.mark.parametrize(
    ("changes", "status", "end", "overrunning"),
    [
        ({}, "definedByValidityTimeSpec", "2026-07-29T08:00:00Z", False),
        ({"planned_end": None}, "definedByValidityTimeSpec", None, False),
        ({"planned_end": NOW - timedelta(hours=1)}, "active", "2026-07-24T07:00:00Z", True),  # overrunning, end kept
        ({"planned_start": NOW + timedelta(hours=1)}, "active", "2026-07-29T08:00:00Z", False),  # source says active
        (
            {"status": "planned", "planned_start": NOW + timedelta(days=1)},
            "definedByValidityTimeSpec",
            "2026-07-29T08:00:00Z",
            False,
        ),
        ({"status": "planned"}, "planned", "2026-07-29T08:00:00Z", False),  # planned, start passed
    ],
)
def test_validity_agrees_with_the_status(
    datex2_v36_xsd: etree.XMLSchema, changes: dict[str, Any], status: str, end: str | None, overrunning: bool
) -> None:
    event = make_event(16, **changes)
    doc = valid_datex(datex2_v36_xsd, render_situations([event], PUBLICATION, NOW))

    validity = one(record(doc, event.id), "sit:validity")
    assert text(validity, "com:validityStatus") == status
    assert bool(validity.xpath("com:overrunning", namespaces=NS)) is overrunning
    ends = validity.xpath("com:validityTimeSpecification/com:overallEndTime/text()", namespaces=NS)
    assert ends == ([end] if end else [])


def test_events_without_a_place_are_left_out(datex2_v36_xsd: etree.XMLSchema) -> None:
    nowhere = make_event(17, geometry=None, road=None)
    road_only = make_event(18, geometry=None, road="RD986")
    doc = valid_datex(datex2_v36_xsd, render_situations([nowhere, road_only], PUBLICATION, NOW))

    assert [s.get("id") for s in doc.xpath("//sit:situation", namespaces=NS)] == [road_only.id]
    location = one(record(doc, road_only.id), "sit:locationReference")
    assert text(location, ".//loc:roadNumber") == "RD986"


def test_free_text_is_made_safe(datex2_v36_xsd: etree.XMLSchema) -> None:
    event = make_event(
        19,
        descriptions={"fr": "Accident\x0b <grave> & bouchon " + "x" * 2000, "not a language!": "???"},
    )
    doc = valid_datex(datex2_v36_xsd, render_situations([event], PUBLICATION, NOW))

    values = record(doc, event.id).xpath(".//sit:comment/com:values/com:value", namespaces=NS)
    assert values[0].text.startswith("Accident <grave> & bouchon xxx")
    assert len(values[0].text) == 1024 and values[0].text.endswith("…")
    assert values[1].get("lang") is None and values[1].text == "???"


def test_no_events_is_a_valid_empty_publication(datex2_v36_xsd: etree.XMLSchema) -> None:
    doc = valid_datex(datex2_v36_xsd, render_situations([], PUBLICATION, NOW))
    assert doc.xpath("//sit:situation", namespaces=NS) == []


def test_rendering_is_pure() -> None:
    events = all_kinds_of_events()
    assert render_situations(events, PUBLICATION, NOW) == render_situations(events, PUBLICATION, NOW)


def test_2000_events_stay_valid(datex2_v36_xsd: etree.XMLSchema) -> None:
    events = [
        make_event(
            i,
            type=EVENT_TYPES[i % len(EVENT_TYPES)],
            geometry=LINE if i % 2 else POINT,
            status=("active", "planned", "ended")[i % 3],
        )
        for i in range(2000)
    ]
    doc = valid_datex(datex2_v36_xsd, render_situations(events, PUBLICATION, NOW))
    assert len(doc.findall(".//{*}situation")) == 2000


# ---------------------------------------------------------------- measurement sites and measured data


def test_site_table_is_valid_against_3_6_and_the_rtti_profile(
    datex2_v36_xsd: etree.XMLSchema, rtti_xsd: etree.XMLSchema
) -> None:
    data = render_measurement_sites(mixed_sites(), PUBLICATION, NOW)
    valid_datex(datex2_v36_xsd, data)
    doc = valid_datex(rtti_xsd, data)
    assert doc.tag == f"{{{NS['d2']}}}payload"
    assert doc.get(XSI_TYPE) == "roa:MeasurementSiteTablePublication"

    contained = valid_datex(datex2_v36_xsd, render_measurement_sites(mixed_sites(), PUBLICATION, NOW, container=True))
    assert one(contained, "mc:payload").get(XSI_TYPE) == "roa:MeasurementSiteTablePublication"
    assert one(contained, "mc:exchangeInformation") is not None


def test_site_table_content(rtti_xsd: etree.XMLSchema) -> None:
    doc = valid_datex(rtti_xsd, render_measurement_sites(mixed_sites(), PUBLICATION, NOW))

    table = one(doc, "roa:measurementSiteTable")
    assert table.get("id") == "FR-HERAULT:measurement-sites"
    sites = table.xpath("roa:measurementSite", namespaces=NS)
    assert [s.get("id") for s in sites] == ["herault-comptages:S1", "herault-comptages:S2", "herault-comptages:S3"]
    site = sites[1]
    assert site.get("version") == site_version(mixed_sites()[1])
    assert text(site, "roa:measurementSiteName/com:values/com:value") == "RD613 Fabrègues 2"
    assert text(site, "roa:measurementSiteIdentification") == "S2"

    characteristics = {
        int(h.get("index")): h[0] for h in site.xpath("roa:measurementSpecificCharacteristics", namespaces=NS)
    }
    assert sorted(characteristics) == list(range(1, 11))  # 5 channels x (flow, speed)
    flow, speed = characteristics[1], characteristics[2]  # channel 1: light vehicles, lane 1, northbound, 15 min
    assert text(flow, "roa:specificMeasurementValueType") == "trafficFlow"
    assert text(speed, "roa:specificMeasurementValueType") == "trafficSpeed"
    assert text(flow, "roa:period") == "900"
    assert text(flow, "roa:measurementSide") == "northBound"
    assert text(flow, "roa:specificVehicleCharacteristics/com:vehicleType") == "carOrLightVehicle"
    assert text(flow, "roa:specificLane/loc:laneNumber") == "1"
    assert text(characteristics[3], "roa:specificVehicleCharacteristics/com:vehicleType") == "heavyVehicle"
    assert text(characteristics[5], "roa:specificVehicleCharacteristics/com:vehicleType") == "anyVehicle"
    bike = one(sites[2], "roa:measurementSpecificCharacteristics[@index='1']/roa:measurementSpecificCharacteristics")
    assert text(bike, "roa:specificVehicleCharacteristics/com:vehicleType") == "bicycle"
    assert text(bike, "roa:period") == "3600"

    location = one(sites[0], "roa:measurementSiteLocation")
    assert location.get(XSI_TYPE) == "loc:PointLocation"
    assert float(text(location, "loc:pointByCoordinates/loc:pointCoordinates/loc:longitude")) == pytest.approx(3.7772)
    assert float(text(location, "loc:pointByCoordinates/loc:pointCoordinates/loc:latitude")) == pytest.approx(43.5523)
    along = one(location, "loc:pointAlongLinearElement")
    assert text(along, "loc:linearElement/loc:roadNumber") == "RD613"
    assert text(along, ".//loc:referentIdentifier") == "34PR12"  # French style, département from INSEE
    assert float(text(along, ".//loc:distanceAlong")) == 350


def test_sites_and_channels_datex_cannot_carry_are_left_out(rtti_xsd: etree.XMLSchema) -> None:
    pedestrians_first = make_site(
        4, [make_channel(1, "S4", mobility_type="PEDESTRIAN"), make_channel(2, "S4", mobility_type="CAR")]
    )
    no_coordinates = make_site(5, lon=None, lat=None)
    doc = valid_datex(rtti_xsd, render_measurement_sites([pedestrians_first, no_coordinates], PUBLICATION, NOW))

    site = one(doc, "//roa:measurementSite")
    assert site.get("id") == "herault-comptages:S4"
    # the pedestrian channel keeps its number: the car channel is still channel 2
    assert [h.get("index") for h in site.xpath("roa:measurementSpecificCharacteristics", namespaces=NS)] == ["3", "4"]
    with pytest.raises(NothingToPublish):
        render_measurement_sites([no_coordinates], PUBLICATION, NOW)
    with pytest.raises(NothingToPublish):
        render_measured_data([], PUBLICATION, NOW)


def test_site_version_follows_the_description_not_the_data() -> None:
    site = make_site(1)
    newer_data = site.model_copy(update={"channels": [c.model_copy(update={"latest_count": 3}) for c in site.channels]})
    renamed = site.model_copy(update={"name": "RD613 Fabrègues (nord)"})
    moved_lane = site.model_copy(
        update={"channels": [site.channels[0].model_copy(update={"lane": 2}), site.channels[1]]}
    )

    assert site_version(newer_data) == site_version(site)
    assert site_version(renamed) != site_version(site)
    assert site_version(moved_lane) != site_version(site)


def test_measured_data_is_valid_against_3_6_and_the_rtti_profile(
    datex2_v36_xsd: etree.XMLSchema, rtti_xsd: etree.XMLSchema
) -> None:
    data = render_measured_data(mixed_sites(), PUBLICATION, NOW)
    valid_datex(datex2_v36_xsd, data)
    doc = valid_datex(rtti_xsd, data)
    assert doc.get(XSI_TYPE) == "roa:MeasuredDataPublication"
    valid_datex(datex2_v36_xsd, render_measured_data(mixed_sites(), PUBLICATION, NOW, container=True))


def test_measured_data_refers_to_the_site_table(rtti_xsd: etree.XMLSchema) -> None:
    table = valid_datex(rtti_xsd, render_measurement_sites(mixed_sites(), PUBLICATION, NOW))
    data = valid_datex(rtti_xsd, render_measured_data(mixed_sites(), PUBLICATION, NOW))

    reference = one(data, "roa:measurementSiteTableReference")
    assert reference.get("targetClass") == "roa:MeasurementSiteTable"
    site_table = one(table, "roa:measurementSiteTable")
    assert (reference.get("id"), reference.get("version")) == (site_table.get("id"), site_table.get("version"))
    listed = [(s.get("id"), s.get("version")) for s in table.xpath("//roa:measurementSite", namespaces=NS)]
    measured = [
        (r.get("id"), r.get("version"))
        for r in data.xpath("//roa:siteMeasurements/roa:measurementSiteReference", namespaces=NS)
    ]
    assert measured == listed


def test_measured_values(rtti_xsd: etree.XMLSchema) -> None:
    doc = valid_datex(rtti_xsd, render_measured_data(mixed_sites(), PUBLICATION, NOW))

    s1 = one(doc, "//roa:siteMeasurements[roa:measurementSiteReference/@id='herault-comptages:S1']")
    flow = one(s1, "roa:physicalQuantity[@index='1']/roa:physicalQuantity/roa:basicData")
    assert flow.get(XSI_TYPE) == "roa:TrafficFlow"
    assert text(flow, "roa:vehicleFlow/com:vehicleFlowRate") == "300"  # 25 vehicles in 5 minutes
    assert one(flow, "roa:vehicleFlow").get("numberOfInputValuesUsed") == "25"
    assert text(flow, "roa:measurementOrCalculationTime/roa:period/com:startOfPeriod") == "2026-07-24T07:50:00Z"
    assert text(flow, "roa:measurementOrCalculationTime/roa:period/com:endOfPeriod") == "2026-07-24T07:55:00Z"
    speed = one(s1, "roa:physicalQuantity[@index='2']/roa:physicalQuantity/roa:basicData")
    assert speed.get(XSI_TYPE) == "roa:TrafficSpeed"
    assert text(speed, "roa:averageVehicleSpeed/com:speed") == "71.3"
    assert text(s1, "roa:measurementTimeDefault/roa:timeValue") == "2026-07-24T07:55:00Z"
    assert text(s1, "roa:measurementTimeDefault/roa:timeMeaning") == "endTime"

    s2 = one(doc, "//roa:siteMeasurements[roa:measurementSiteReference/@id='herault-comptages:S2']")
    light = one(s2, "roa:physicalQuantity[@index='1']//roa:vehicleFlow/com:vehicleFlowRate")
    assert light.text == "28"  # 7 vehicles in 15 minutes
    assert s2.xpath("roa:physicalQuantity[@index='4']", namespaces=NS) == []  # no speed: nothing made up
    s3 = one(doc, "//roa:siteMeasurements[roa:measurementSiteReference/@id='herault-comptages:S3']")
    assert text(s3, "roa:physicalQuantity[@index='1']//com:vehicleFlowRate") == "42"  # 42 bikes in an hour


def test_channels_without_usable_data_are_marked_not_invented(rtti_xsd: etree.XMLSchema) -> None:
    doc = valid_datex(rtti_xsd, render_measured_data(mixed_sites(), PUBLICATION, NOW))
    s2 = one(doc, "//roa:siteMeasurements[roa:measurementSiteReference/@id='herault-comptages:S2']")

    def fault(index: int) -> str:
        quantity = one(s2, f"roa:physicalQuantity[@index='{index}']/roa:physicalQuantity")
        assert quantity.xpath("roa:basicData", namespaces=NS) == []
        return text(quantity, "roa:physicalQuantityFault/roa:physicalQuantityFaultType")

    assert fault(5) == "noDataValuesAvailable"  # channel 3: no data yet
    assert s2.xpath("roa:physicalQuantity[@index='6']", namespaces=NS) == []
    assert fault(7) == "spuriousUnreliableDataValues"  # channel 4: invalid
    assert fault(8) == "spuriousUnreliableDataValues"
    assert fault(9) == "noDataValuesAvailable"  # channel 5: missing


def test_a_site_without_any_data_is_still_listed(rtti_xsd: etree.XMLSchema) -> None:
    silent = make_site(
        6,
        [
            make_channel(
                1,
                "S6",
                latest_start=None,
                latest_length=None,
                latest_count=None,
                latest_speed=None,
                latest_quality=None,
            )
        ],
    )
    doc = valid_datex(rtti_xsd, render_measured_data([silent], PUBLICATION, NOW))
    block = one(doc, "roa:siteMeasurements")
    assert text(block, "roa:measurementTimeDefault/roa:timeValue") == "2026-07-24T08:00:00Z"
    assert text(block, ".//roa:physicalQuantityFaultType") == "noDataValuesAvailable"


def test_500_sites_stay_valid(rtti_xsd: etree.XMLSchema) -> None:
    sites = [
        make_site(
            n, [make_channel(c, f"S{n}", vehicle_class=("light", "heavy")[c % 2], lane=c // 2 + 1) for c in range(4)]
        )
        for n in range(500)
    ]
    valid_datex(rtti_xsd, render_measurement_sites(sites, PUBLICATION, NOW))
    doc = valid_datex(rtti_xsd, render_measured_data(sites, PUBLICATION, NOW))
    assert len(doc.findall(".//{*}siteMeasurements")) == 500


# ---------------------------------------------------------------- any input stays valid

_geometries = st.one_of(
    st.none(),
    positions.map(lambda p: Geometry(type="Point", coordinates=p)),
    st.lists(positions, min_size=2, max_size=6).map(lambda ps: Geometry(type="LineString", coordinates=ps)),
)
_texts = st.dictionaries(
    st.sampled_from(["fr", "en", "oc", "", "pas une langue"]), st.text(storable_chars, max_size=1200), max_size=3
)


@st.composite
def _events(draw: st.DrawFn) -> StoredEvent:
    return make_event(
        draw(st.integers(0, 99_999)),
        id=draw(st.text(id_chars, min_size=1, max_size=40)),
        type=draw(st.sampled_from(EVENT_TYPES)),
        subtype=draw(
            st.one_of(st.none(), st.sampled_from(list(DATEX_RECORD_TYPES)), st.text(storable_chars, max_size=20))
        ),
        status=draw(st.sampled_from(["planned", "active", "ended"])),
        severity=draw(st.sampled_from(["unknown", "low", "medium", "high", "highest"])),
        planned_start=draw(st.one_of(st.none(), times)),
        planned_end=draw(st.one_of(st.none(), times)),
        actual_start=draw(st.one_of(st.none(), times)),
        actual_end=draw(st.one_of(st.none(), times)),
        road=draw(st.one_of(st.none(), st.text(storable_chars, max_size=12))),
        direction=draw(st.sampled_from([None, "both", "positive", "negative", "N", "Montpellier"])),
        geometry=draw(_geometries),
        descriptions=draw(_texts),
        detour=draw(st.one_of(st.none(), st.text(storable_chars, max_size=50))),
        location_refs=draw(
            st.sampled_from([{}, {"pr": 3, "distance": "12.5"}, {"referent": "34PR3", "distance": "x"}])
        ),
        version=draw(st.integers(1, 10**6)),
        first_seen=draw(times),
        updated=draw(times),
    )


@settings(max_examples=60, deadline=None)
@given(events=st.lists(_events(), max_size=4, unique_by=lambda e: e.id))
def test_any_events_give_a_valid_document(datex2_v36_xsd: etree.XMLSchema, events: list[StoredEvent]) -> None:
    valid_datex(datex2_v36_xsd, render_situations(events, PUBLICATION, NOW))


@st.composite
def _sites(draw: st.DrawFn) -> StoredSite:
    n = draw(st.integers(1, 10**6))
    channels = []
    for c in range(draw(st.integers(0, 4))):
        step = draw(st.sampled_from([60, 300, 900, 3600, 86400]))
        channels.append(
            make_channel(
                c,
                f"S{n}",
                id=c,
                direction=draw(st.sampled_from([None, "positive", "negative", "both", "NE", "vers Sète"])),
                lane=draw(st.one_of(st.none(), st.integers(0, 6))),
                vehicle_class=draw(st.sampled_from(["all", "light", "heavy"])),
                mobility_type=draw(
                    st.sampled_from(["car", "BIKE", "PEDESTRIAN", "E-SCOOTER,PEDESTRIAN", "TRUCK", "?"])
                ),
                time_step=step,
                latest_start=draw(st.one_of(st.none(), times)),
                latest_length=draw(st.one_of(st.none(), st.just(step), st.integers(1, 86400))),
                latest_count=draw(st.one_of(st.none(), st.integers(0, 10**6))),
                latest_speed=draw(st.one_of(st.none(), st.floats(0, 300))),
                latest_quality=draw(st.sampled_from([None, "observed", "estimated", "missing", "invalid"])),
            )
        )
    return make_site(
        n,
        channels,
        name=draw(st.text(storable_chars, max_size=30)),
        external_id=draw(st.text(id_chars, min_size=1, max_size=20)),
        pr=draw(st.one_of(st.none(), st.integers(0, 200))),
        insee=draw(st.sampled_from([None, "34172", "2A004", "97411", "bad"])),
        lon=draw(st.one_of(st.none(), st.floats(-180, 180))),
        lat=draw(st.floats(-90, 90)),
    )


@settings(max_examples=60, deadline=None)
@given(sites=st.lists(_sites(), max_size=4, unique_by=lambda s: s.external_id))
def test_any_sites_give_valid_documents(
    datex2_v36_xsd: etree.XMLSchema, rtti_xsd: etree.XMLSchema, sites: list[StoredSite]
) -> None:
    for render in (render_measurement_sites, render_measured_data):
        try:
            data = render(sites, PUBLICATION, NOW)
        except NothingToPublish:
            continue
        valid_datex(datex2_v36_xsd, data)
        valid_datex(rtti_xsd, data)


# ---------------------------------------------------------------- second opinion


@pytest.fixture(scope="module")
def xmldatex2_v36_xsd() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(str(DATEX2_V36_XSD))


def test_xmlschema_agrees(xmldatex2_v36_xsd: xmlschema.XMLSchema) -> None:
    for data in (
        render_situations(all_kinds_of_events(), PUBLICATION, NOW),
        render_measurement_sites(mixed_sites(), PUBLICATION, NOW, container=True),
        render_measured_data(mixed_sites(), PUBLICATION, NOW),
    ):
        xmldatex2_v36_xsd.validate(data.decode("utf-8"))
