"""DATEX II parser: real feeds from France, the Netherlands, Finland and Norway, our own
export shapes, hostile documents (XXE, billion laughs, truncation) and a 20 MB stream."""

from __future__ import annotations

import io
import os
import re
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from collectors.datex2_parse import ParseStats, parse_datex2
from feed.errors import ParseError
from feed.model import ChannelRecord, EventRecord, MeasurementRecord, Quarantined, SiteRecord

DATA = Path(__file__).parent.parent / "data" / "datex2"
NOW = datetime(2026, 7, 25, 0, 0, tzinfo=UTC)
CEST = timezone(timedelta(hours=2))

BISON_EVENTS = "fr-bisonfute-tipi-evenementiel-situation-v2.2.xml"
BISON_SPEEDS = "fr-bisonfute-tipi-speeds-measureddata-v2.2.xml"
NDW_SITUATIONS = "nl-ndw-actueel_beeld-situations-messagecontainer.xml"
NDW_SRTI = "nl-ndw-srti-situation-messagecontainer.xml"
FI_TRANSIT = "fi-fintraffic-situation-GUID50456943-v3.5-payload.xml"
FI_PUBLIC_EVENT = "fi-fintraffic-situation-GUID50459771-v3.5-payload.xml"
FI_V2_ROADWORKS = "fi-fintraffic-roadworks-situation-v2.3-FIprofile.xml"
NPRA_SITUATIONS = "no-npra-situations-messagecontainer-v3.1.xml"
NPRA_SITE_TABLE = "no-npra-measurementsitetable-weather-v2.xml"
NPRA_WEATHER = "no-npra-measureddata-weather-v2.xml"
NPRA_TRAVEL_TIME = "no-npra-elaborateddata-traveltime-v2.xml"
SYNTHETIC_MINIMAL = "synthetic-minimal-messagecontainer-v3.7.xml"

NS3 = {
    "mc": "http://datex2.eu/schema/3/messageContainer",
    "com": "http://datex2.eu/schema/3/common",
    "sit": "http://datex2.eu/schema/3/situation",
    "loc": "http://datex2.eu/schema/3/locationReferencing",
    "roa": "http://datex2.eu/schema/3/roadTrafficData",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
}
XMLNS3 = " ".join(f'xmlns:{p}="{uri}"' for p, uri in NS3.items())


def read(name: str) -> bytes:
    return (DATA / name).read_bytes()


def parse(source: bytes | str, stats: ParseStats | None = None, **kw) -> list:
    data = read(source) if isinstance(source, str) else source
    return list(parse_datex2(data, source_id="test", now=kw.pop("now", NOW), stats=stats, **kw))


def events_by_id(items: list) -> dict[str, EventRecord]:
    return {i.external_id: i for i in items if isinstance(i, EventRecord)}


def collect_until_error(data: bytes) -> tuple[list, ParseError]:
    items = []
    with pytest.raises(ParseError) as caught:
        for item in parse_datex2(data, source_id="hostile", now=NOW):
            items.append(item)
    return items, caught.value


# --------------------------------------------------------------------------- documents we build


def v3_situations(*records: str, lang: str = "fr") -> bytes:
    """A DATEX II v3 message container holding one situation with the given records."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<mc:messageContainer {XMLNS3} modelBaseVersion="3">
  <mc:payload xsi:type="sit:SituationPublication" lang="{lang}" modelBaseVersion="3">
    <com:publicationTime>2026-07-25T00:00:00Z</com:publicationTime>
    <com:publicationCreator><com:country>fr</com:country><com:nationalIdentifier>CD34</com:nationalIdentifier></com:publicationCreator>
    <sit:situation id="S1" version="1">
      <sit:overallSeverity>low</sit:overallSeverity>
      <sit:situationVersionTime>2026-07-24T10:00:00Z</sit:situationVersionTime>
      <sit:headerInformation><com:confidentiality>noRestriction</com:confidentiality><com:informationStatus>real</com:informationStatus></sit:headerInformation>
      {"".join(records)}
    </sit:situation>
  </mc:payload>
</mc:messageContainer>""".encode()


POINT_RD613 = """<sit:locationReference xsi:type="loc:PointLocation">
  <loc:supplementaryPositionalDescription><loc:roadInformation><loc:roadNumber>RD613</loc:roadNumber></loc:roadInformation></loc:supplementaryPositionalDescription>
  <loc:pointByCoordinates><loc:pointCoordinates><loc:latitude>43.6107</loc:latitude><loc:longitude>3.8767</loc:longitude></loc:pointCoordinates></loc:pointByCoordinates>
</sit:locationReference>"""


def v3_record(
    record_id: str | None = "R1",
    record_type: str = "sit:MaintenanceWorks",
    *,
    validity_status: str = "definedByValidityTimeSpec",
    start: str = "2026-07-20T06:00:00Z",
    end: str | None = "2026-08-20T18:00:00Z",
    location: str = POINT_RD613,
    body: str = "",
    version: str = "4",
) -> str:
    ident = f' id="{record_id}"' if record_id is not None else ""
    end_xml = f"<com:overallEndTime>{end}</com:overallEndTime>" if end else ""
    return f"""<sit:situationRecord xsi:type="{record_type}"{ident} version="{version}">
  <sit:situationRecordCreationTime>2026-07-19T08:00:00Z</sit:situationRecordCreationTime>
  <sit:situationRecordVersionTime>2026-07-24T09:30:00+02:00</sit:situationRecordVersionTime>
  <sit:probabilityOfOccurrence>certain</sit:probabilityOfOccurrence>
  <sit:severity>high</sit:severity>
  <sit:validity><com:validityStatus>{validity_status}</com:validityStatus>
    <com:validityTimeSpecification><com:overallStartTime>{start}</com:overallStartTime>{end_xml}</com:validityTimeSpecification>
  </sit:validity>
  <sit:generalPublicComment><sit:comment><com:values>
    <com:value lang="fr">Travaux de chaussée</com:value><com:value lang="en">Resurfacing works</com:value>
  </com:values></sit:comment></sit:generalPublicComment>
  {location}
  {body}
</sit:situationRecord>"""


class GeneratedStream(io.RawIOBase):
    """A binary stream over a generator of chunks: the document never exists whole."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:  # type: ignore[override]
        while len(self._buffer) < len(target):
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        self.size += n
        return n


def big_situation_publication(target_bytes: int) -> Iterator[bytes]:
    """A v3 SituationPublication of about `target_bytes`, one situation at a time."""
    head, tail = v3_situations("@@").split(b"@@")
    head = head.rsplit(b"<sit:situation ", 1)[0]
    tail = tail.split(b"</sit:situation>", 1)[1]
    yield head
    written, n = len(head), 0
    positions = " ".join(f"{43.5 + k * 1e-4:.6f} {3.7 + k * 1e-4:.6f}" for k in range(80))
    line = f"""<sit:locationReference xsi:type="loc:LinearLocation">
      <loc:gmlLineString srsName="EPSG:4326"><loc:posList>{positions}</loc:posList></loc:gmlLineString>
    </sit:locationReference>"""
    while written < target_bytes:
        record = v3_record(
            f"R{n}",
            location=line,
            body="<sit:roadMaintenanceType>roadworks</sit:roadMaintenanceType>",
        )
        chunk = f'<sit:situation id="S{n}" version="1">{record}</sit:situation>\n'.encode()
        yield chunk
        written += len(chunk)
        n += 1
    yield tail


# --------------------------------------------------------------------------- France: Bison Futé / Tipi


def test_bison_fute_vehicle_obstruction_keeps_pr_abscissa_and_alert_c():
    [event] = parse(BISON_EVENTS)
    assert event.external_id == "260724-000456-1"
    assert (event.type, event.subtype) == ("obstruction", "VehicleObstruction")
    assert (event.status, event.severity) == ("active", "medium")
    # an unplanned obstruction: its start is an observation, so actual
    assert event.actual_start == datetime(2026, 7, 24, 8, 4, 50, tzinfo=CEST)
    assert event.planned_start is event.planned_end is event.actual_end is None
    assert event.road == "A0004"
    assert event.direction == "negative"
    assert event.lanes_affected == "hardShoulder, lane1"
    assert event.geometry is not None and event.geometry.type == "Point"
    assert event.geometry.coordinates == [2.3988867, 48.821583]  # lon, lat
    assert event.descriptions["fr"].split("\n") == [
        "Sur 500 m",
        "situé 582 m à l'est de Paris - Porte de Bercy",
        "Hors voie de circulation",
        "DIR Île-de-France",
        "De Strasbourg vers Paris",
    ]
    assert event.location_refs["pr"] == [
        {
            "at": "point",
            "road": "A0004",
            "referent": "94PR0G",
            "abscissa": 628,
            "direction": "opposite",
            "departement": "94",
            "pr": 0,
            "side": "G",
        }
    ]
    assert event.location_refs["alert_c"] == [
        {
            "method": "AlertCMethod4Point",
            "country": "F",
            "table": "32",
            "table_version": "11.0",
            "direction": "negative",
            "primary": {"location": 14494, "offset": 582, "name": "Paris - Porte de Bercy"},
        }
    ]
    assert event.source_version == "1"
    assert event.source_updated == datetime(2026, 7, 24, 8, 6, 4, 287000, tzinfo=CEST)


def test_soap_envelope_around_d2logicalmodel_is_tolerated():
    body = read(BISON_EVENTS).split(b"?>", 1)[1]
    soap = (
        b'<?xml version="1.0" encoding="UTF-8"?>'
        b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
        b"<soapenv:Header/><soapenv:Body>" + body + b"</soapenv:Body></soapenv:Envelope>"
    )
    assert parse(soap) == parse(BISON_EVENTS)


def test_soap_fault_is_a_parse_error():
    fault = (
        b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>'
        b"<soapenv:Fault><faultcode>soapenv:Server</faultcode><faultstring>Service indisponible</faultstring>"
        b"</soapenv:Fault></soapenv:Body></soapenv:Envelope>"
    )
    _, error = collect_until_error(fault)
    assert "SOAP fault" in error.reason and "Service indisponible" in error.reason


def test_bison_fute_speeds_become_counts_per_minute_with_derived_sites_and_channels():
    stats = ParseStats()
    items = parse(BISON_SPEEDS, stats)
    assert [type(i) for i in items] == [SiteRecord, ChannelRecord, MeasurementRecord] * 2
    site, channel, measurement = items[:3]
    assert site.external_id == "MUM76.h1" and site.metadata == {"derived_from": "MeasuredDataPublication"}
    assert channel == ChannelRecord(site_external_id="MUM76.h1", external_id="MUM76.h1:0", time_step=60)
    assert measurement.channel_external_id == "MUM76.h1:0"
    assert measurement.start == datetime(2026, 7, 25, 8, 30, tzinfo=CEST)
    assert measurement.length == 60
    assert measurement.count == 17  # 1010 veh/h over 60 s = 16.83
    assert measurement.speed == 112.0
    assert measurement.quality == "observed"
    second = items[5]
    assert (second.channel_external_id, second.count, second.speed) == (
        "A0001011200:0",
        24,
        85.0,
    )  # 1420 veh/h
    assert stats.version == "2" and stats.publications == ["MeasuredDataPublication"]
    assert stats.quarantined == 0


def test_default_period_is_configurable():
    items = parse(BISON_SPEEDS, default_period=300)
    measurement = next(i for i in items if isinstance(i, MeasurementRecord))
    channel = next(i for i in items if isinstance(i, ChannelRecord))
    assert (measurement.count, measurement.length, channel.time_step) == (
        84,
        300,
        300,
    )  # 1010 * 300 / 3600


# --------------------------------------------------------------------------- Netherlands: NDW


def test_ndw_situations_every_record_kept_with_lines_and_closures():
    stats = ParseStats()
    events = events_by_id(parse(NDW_SITUATIONS, stats))
    assert len(events) == 11 and stats.quarantined == 0
    assert stats.version == "3"

    speed = events["RWS01_M1162215_SPEED_MANAGEMENT_D2_WWA"]
    assert (speed.type, speed.subtype, speed.source_version) == (
        "speed_management",
        "SpeedManagement",
        "18",
    )
    assert speed.severity == "medium"  # from the situation's overallSeverity
    # operatorActionStatus "implemented": the action began, its end is still a plan
    assert speed.actual_start == datetime(2026, 7, 3, 10, 25, 45, tzinfo=UTC)
    assert speed.planned_end == datetime(2026, 12, 1, 11, 0, tzinfo=UTC)
    assert speed.planned_start is None and speed.actual_end is None
    assert speed.status == "active"
    assert speed.geometry is not None and speed.geometry.type == "LineString"
    assert len(speed.geometry.coordinates) == 20
    assert speed.geometry.coordinates[0] == [6.207613, 52.693642]  # posList is lat lon
    assert speed.geometry.coordinates[-1] == [6.193355, 52.678352]
    assert speed.direction == "negative"
    assert speed.location_refs["alert_c"][0]["primary"] == {"location": 8802, "offset": 500}
    assert speed.location_refs["alert_c"][0]["secondary"] == {"location": 8803, "offset": 400}

    lanes = events["RWS01_M1162215_CLOSED_LANES_D2_WWA"]
    assert (lanes.type, lanes.lanes_affected) == ("lane_management", "1 of 2 lanes")  # laneClosures

    junction = events["RWS01_M1168188_JUNCTION_CLOSURE_1_D2_WWA"]
    assert (junction.type, junction.subtype) == ("closure", "RoadOrCarriagewayOrLaneManagement")
    assert junction.geometry is None  # Alert-C only: no coordinates to invent
    assert junction.location_refs["alert_c"][0]["primary"] == {"location": 14969}

    rerouting = events["RWS01_M1168188_REROUTING_1_D2_WWA"]
    assert rerouting.type == "rerouting"
    assert rerouting.geometry is not None and rerouting.geometry.type == "Point"


def test_ndw_status_follows_the_clock():
    after = datetime(2026, 7, 25, 5, 0, tzinfo=UTC)
    before = datetime(2026, 7, 24, 12, 0, tzinfo=UTC)
    ended = events_by_id(parse(NDW_SITUATIONS, now=after))["RWS01_M1168188_SPEED_MANAGEMENT_D2_WWA"]
    assert ended.status == "ended"
    assert ended.actual_end == datetime(2026, 7, 25, 4, 0, tzinfo=UTC) and ended.planned_end is None
    planned = events_by_id(parse(NDW_SITUATIONS, now=before))["RWS01_M1168188_SPEED_MANAGEMENT_D2_WWA"]
    assert planned.status == "planned" and planned.actual_start is None
    assert planned.planned_start == datetime(2026, 7, 24, 20, 13, 31, tzinfo=UTC)


def test_ndw_srti_vehicle_obstruction_point():
    [event] = parse(NDW_SRTI)
    assert event.external_id == "NDW08_9d8afcc1-fd11-44f5-9653-0efae246856a"
    assert (event.type, event.subtype, event.severity) == (
        "obstruction",
        "VehicleObstruction",
        "unknown",
    )
    assert event.geometry is not None and event.geometry.coordinates == [4.0216646, 51.46491]
    assert event.descriptions == {"nl": "Botsabsorber"}
    assert event.direction == "positive"
    assert event.location_refs["alert_c"][0]["primary"] == {"location": 9564, "offset": 706}
    assert event.source_updated == datetime(2026, 7, 24, 20, 5, 0, 43328, tzinfo=UTC)  # ns truncated


# --------------------------------------------------------------------------- Finland: Fintraffic


def test_fintraffic_v35_payload_unknown_record_type_is_other():
    [event] = parse(FI_TRANSIT)
    assert event.external_id == "GUID5046133001"
    assert (event.type, event.subtype) == ("other", "TransitInformation")
    assert event.severity == "high"
    assert event.status == "ended"  # ended 2025-11-27 07:50Z
    assert event.actual_end == datetime(2025, 11, 27, 7, 50, tzinfo=UTC)
    lines = event.descriptions["fi"].split("\n")
    assert lines[0] == "Tie 15358, eli Pihlajaniementie, Savonlinna. Liikennetiedote.s"
    assert "Tarkempi paikka: Koivukannan lossi.s" in lines  # indentation removed
    assert event.location_refs["alert_c"][0]["method"] == "AlertCMethod2Point"
    assert event.location_refs["alert_c"][0]["primary"] == {"location": 36973}
    assert event.geometry is None

    planned = parse(FI_TRANSIT, now=datetime(2025, 11, 27, 7, 0, tzinfo=UTC))[0]
    assert planned.status == "planned" and planned.actual_start is None


def test_fintraffic_v35_public_event():
    [event] = parse(FI_PUBLIC_EVENT)
    assert (event.external_id, event.type, event.source_version) == (
        "GUID5046248001",
        "public_event",
        "11",
    )
    assert event.direction == "both"
    assert event.actual_start == datetime(2025, 12, 31, 21, 30, tzinfo=UTC)  # it happened
    assert event.actual_end == datetime(2025, 12, 31, 22, 59, 56, 206000, tzinfo=UTC)
    assert event.source_updated == datetime(2025, 12, 31, 22, 59, 52, 937000, tzinfo=UTC)


def test_fintraffic_v2_road_closed_is_a_closure():
    events = events_by_id(parse(FI_V2_ROADWORKS))
    assert {e: ev.type for e, ev in events.items()} == {
        "GUID5047012301": "roadworks",
        "GUID5047012302": "closure",
        "GUID5047012303": "rerouting",
    }
    works = events["GUID5047012301"]
    assert works.status == "active" and works.severity == "highest"
    assert works.actual_start is None  # planned works: the source does not say they began
    assert works.planned_start == datetime(2026, 7, 19, 21, 0, tzinfo=UTC)
    assert works.location_refs["alert_c"][0]["secondary"] == {"location": 7627}


# --------------------------------------------------------------------------- Norway: NPRA


def test_npra_v3_situations_utm_line_converted_to_wgs84():
    events = events_by_id(parse(NPRA_SITUATIONS))
    assert len(events) == 3
    works = events["534737a7-f27b-437d-813e-0f9fd784d77a_1"]
    assert (works.type, works.road, works.severity) == ("roadworks", "E16", "low")
    assert works.descriptions == {"no": "Vegarbeid.|Lysregulering, manuell dirigering."}
    assert works.direction == "both"
    assert works.status == "ended" and works.actual_end == datetime(2022, 8, 20, 19, 0, tzinfo=CEST)
    assert works.geometry is not None and works.geometry.type == "LineString"
    assert len(works.geometry.coordinates) == 52  # 104 numbers; srsName 25833 = ETRS89 / UTM 33N
    display_lon, display_lat = 8.710909, 61.145523  # the feed's own coordinatesForDisplay
    for lon, lat in works.geometry.points:
        assert abs(lon - display_lon) < 0.01 and abs(lat - display_lat) < 0.005
    assert works.location_refs["alert_c"][0]["primary"]["name"] == "Hemsing bru"
    assert events["b372fe1c-5e5a-47c7-8039-fa4a59b63006_2"].type == "lane_management"


def test_npra_weather_site_table_keeps_the_site_and_counts_weather_channels():
    stats = ParseStats()
    [site] = parse(NPRA_SITE_TABLE, stats)
    assert site.external_id == "205" and site.name == "E6 Rosten"
    assert (site.lat, site.lon) == (61.878395, 9.41545)
    assert site.metadata == {"datex_version": "10", "site_table": "WOST"}
    assert stats.skipped == {
        "channel:precipitationInformation": 3,
        "channel:temperatureInformation": 2,
        "channel:roadSurfaceConditionInformation": 1,
        "channel:humidityInformation": 1,
    }


def test_npra_weather_measured_data_is_skipped_and_counted_without_crashing():
    stats = ParseStats()
    assert parse(NPRA_WEATHER, stats) == []
    assert stats.publications == ["MeasuredDataPublication"]
    assert stats.skipped["value:WindInformation"] == 429  # wind speed is not traffic speed
    assert stats.skipped["value:TemperatureInformation"] == 687
    assert sum(stats.skipped.values()) == 2338


def test_unsupported_publication_is_counted_not_failed():
    stats = ParseStats()
    assert parse(NPRA_TRAVEL_TIME, stats) == []
    assert stats.skipped == {"publication:ElaboratedDataPublication": 1}


def test_synthetic_minimal_container_is_empty():
    stats = ParseStats()
    assert parse(SYNTHETIC_MINIMAL, stats) == []
    assert (stats.version, stats.publications) == ("3", ["SituationPublication"])


# --------------------------------------------------------------------------- mapping rules


def test_unknown_record_type_kept_as_other_with_its_xsi_type():
    doc = read(BISON_EVENTS).replace(b'xsi:type="VehicleObstruction"', b'xsi:type="FrenchSpecialRecord"')
    [event] = parse(doc)
    assert (event.type, event.subtype, event.external_id) == (
        "other",
        "FrenchSpecialRecord",
        "260724-000456-1",
    )


@pytest.mark.parametrize(
    ("validity_status", "start", "end", "status", "actual_start"),
    [
        (
            "definedByValidityTimeSpec",
            "2026-07-20T06:00:00Z",
            "2026-08-20T18:00:00Z",
            "active",
            False,
        ),
        (
            "definedByValidityTimeSpec",
            "2026-07-26T06:00:00Z",
            "2026-08-20T18:00:00Z",
            "planned",
            False,
        ),
        (
            "definedByValidityTimeSpec",
            "2026-07-20T06:00:00Z",
            "2026-07-24T18:00:00Z",
            "ended",
            False,
        ),
        ("active", "2026-07-20T06:00:00Z", "2026-07-24T18:00:00Z", "active", True),  # explicit wins
        ("suspended", "2026-07-20T06:00:00Z", None, "active", True),
        ("planned", "2026-07-20T06:00:00Z", None, "planned", False),
    ],
)
def test_status_rules(validity_status, start, end, status, actual_start):
    [event] = parse(v3_situations(v3_record(validity_status=validity_status, start=start, end=end)))
    assert event.status == status
    assert (event.actual_start or event.planned_start) == datetime.fromisoformat(start)
    assert (event.actual_start is not None) is actual_start
    assert (event.actual_end is not None) is (status == "ended")
    if end is not None:
        assert (event.actual_end or event.planned_end) == datetime.fromisoformat(end)


@pytest.mark.parametrize(
    ("datex", "ours"),
    [("lowest", "low"), ("low", "low"), ("medium", "medium"), ("high", "high"), ("highest", "highest"),
     ("none", "low"), ("unknown", "unknown")],
)  # fmt: skip
def test_severity_mapping(datex, ours):
    record = v3_record().replace("<sit:severity>high</sit:severity>", f"<sit:severity>{datex}</sit:severity>")
    [event] = parse(v3_situations(record))
    assert event.severity == ours


def test_detour_from_the_rerouting_description_and_internal_notes_left_out():
    body = """<sit:reroutingManagementType>followDiversionSigns</sit:reroutingManagementType>
      <sit:reroutingItineraryDescription><com:values>
        <com:value lang="fr">Déviation par la RD17 puis la RD986</com:value>
      </com:values></sit:reroutingItineraryDescription>"""
    note = """<sit:generalPublicComment><sit:comment><com:values><com:value lang="fr">appeler M. X</com:value>
      </com:values></sit:comment><sit:commentType>internalNote</sit:commentType></sit:generalPublicComment>"""
    record = v3_record("R9", "sit:ReroutingManagement", body=body).replace(
        "<sit:locationReference", note + "<sit:locationReference"
    )
    [event] = parse(v3_situations(record))
    assert event.type == "rerouting"
    assert event.detour == "Déviation par la RD17 puis la RD986"
    assert event.descriptions == {"fr": "Travaux de chaussée", "en": "Resurfacing works"}


def test_v2_tpeg_point_gives_road_and_compass_direction():
    """Without Alert-C or linear referencing, the TPEG point names the road and the bound."""
    doc = read(BISON_EVENTS)
    start, end = doc.index(b"<alertCPoint"), doc.index(b"</pointAlongLinearElement>")
    doc = doc[:start] + doc[end + len(b"</pointAlongLinearElement>") :]
    [event] = parse(doc)
    assert (event.road, event.direction) == ("A4", "W")  # linkName "A4", westBound
    assert event.location_refs == {}


# --------------------------------------------------------------------------- our own feeds back


def test_own_v36_export_shape_survives():
    """What the exporters write (v3.6 container, itinerary + GML line) reads back intact."""
    line = """<sit:locationReference xsi:type="loc:ItineraryByIndexedLocations">
      <loc:locationContainedInItinerary index="0"><loc:location xsi:type="loc:LinearLocation">
        <loc:supplementaryPositionalDescription><loc:roadInformation><loc:roadNumber>RD613</loc:roadNumber></loc:roadInformation></loc:supplementaryPositionalDescription>
        <loc:gmlLineString srsName="EPSG:4326"><loc:posList>43.61 3.87 43.62 3.88 43.63 3.90</loc:posList></loc:gmlLineString>
      </loc:location></loc:locationContainedInItinerary></sit:locationReference>"""
    record = v3_record(
        "cd34:EV-12",
        location=line,
        body="<sit:roadMaintenanceType>roadworks</sit:roadMaintenanceType>",
    )
    [event] = parse(v3_situations(record))
    assert (event.external_id, event.type, event.subtype) == (
        "cd34:EV-12",
        "roadworks",
        "MaintenanceWorks",
    )
    assert (event.status, event.severity, event.road, event.source_version) == (
        "active",
        "high",
        "RD613",
        "4",
    )
    assert event.planned_start == datetime(2026, 7, 20, 6, tzinfo=UTC)
    assert event.planned_end == datetime(2026, 8, 20, 18, tzinfo=UTC)
    assert event.geometry is not None
    assert event.geometry.model_dump() == {
        "type": "LineString",
        "coordinates": [[3.87, 43.61], [3.88, 43.62], [3.90, 43.63]],
    }
    assert event.descriptions == {"fr": "Travaux de chaussée", "en": "Resurfacing works"}
    assert event.source_updated == datetime(2026, 7, 24, 7, 30, tzinfo=UTC)


def test_own_v3_closure_point_survives():
    record = v3_record(
        "cd34:EV-13",
        "sit:RoadOrCarriagewayOrLaneManagement",
        body="<sit:roadOrCarriagewayOrLaneManagementType>roadClosed</sit:roadOrCarriagewayOrLaneManagementType>",
    )
    [event] = parse(v3_situations(record))
    assert (event.type, event.subtype, event.road) == (
        "closure",
        "RoadOrCarriagewayOrLaneManagement",
        "RD613",
    )
    assert event.geometry is not None and event.geometry.model_dump() == {
        "type": "Point",
        "coordinates": [3.8767, 43.6107],
    }


@pytest.mark.parametrize(
    "extension",
    [
        # NDW-style linear-by-coordinates extension
        """<linearExtension><linearByCoordinatesExtension>
             <linearCoordinatesStartPoint><pointCoordinates><latitude>43.61</latitude><longitude>3.87</longitude></pointCoordinates></linearCoordinatesStartPoint>
             <linearCoordinatesEndPoint><pointCoordinates><latitude>43.63</latitude><longitude>3.90</longitude></pointCoordinates></linearCoordinatesEndPoint>
           </linearByCoordinatesExtension></linearExtension>""",
        # a v3-style GML line carried in the v2 extension
        """<linearExtension><gmlLineString srsName="EPSG:4326"><posList>43.61 3.87 43.63 3.90</posList></gmlLineString></linearExtension>""",
    ],
)
def test_own_v23_export_line_survives(extension):
    doc = f"""<?xml version="1.0" encoding="UTF-8"?>
<d2LogicalModel xmlns="http://datex2.eu/schema/2/2_0" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" modelBaseVersion="2">
 <exchange><supplierIdentification><country>fr</country><nationalIdentifier>CD34</nationalIdentifier></supplierIdentification></exchange>
 <payloadPublication xsi:type="SituationPublication" lang="fr">
  <publicationTime>2026-07-25T00:00:00Z</publicationTime>
  <publicationCreator><country>fr</country><nationalIdentifier>CD34</nationalIdentifier></publicationCreator>
  <situation id="cd34:EV-14" version="2"><headerInformation><confidentiality>noRestriction</confidentiality><informationStatus>real</informationStatus></headerInformation>
   <situationRecord xsi:type="Accident" id="cd34:EV-14" version="2">
    <situationRecordCreationTime>2026-07-24T21:00:00Z</situationRecordCreationTime>
    <situationRecordVersionTime>2026-07-24T21:10:00Z</situationRecordVersionTime>
    <probabilityOfOccurrence>certain</probabilityOfOccurrence><severity>highest</severity>
    <validity><validityStatus>active</validityStatus><validityTimeSpecification><overallStartTime>2026-07-24T21:00:00Z</overallStartTime></validityTimeSpecification></validity>
    <generalPublicComment><comment><values><value lang="fr">Accident, voie de droite neutralisée</value></values></comment></generalPublicComment>
    <groupOfLocations xsi:type="Linear">
      <linearWithinLinearElement>
        <linearElement><roadNumber>RD613</roadNumber></linearElement>
        <fromPoint xsi:type="DistanceFromLinearElementReferent"><distanceAlong>120</distanceAlong><fromReferent><referentIdentifier>34PR12D</referentIdentifier><referentType>referenceMarker</referentType></fromReferent></fromPoint>
        <toPoint xsi:type="DistanceFromLinearElementReferent"><distanceAlong>300</distanceAlong><fromReferent><referentIdentifier>34PR13D</referentIdentifier><referentType>referenceMarker</referentType></fromReferent></toPoint>
      </linearWithinLinearElement>
      {extension}
    </groupOfLocations>
    <accidentType>collision</accidentType>
   </situationRecord>
  </situation>
 </payloadPublication>
</d2LogicalModel>""".encode()
    [event] = parse(doc)
    assert (event.external_id, event.type, event.subtype) == ("cd34:EV-14", "accident", "Accident")
    assert (event.status, event.severity, event.road, event.source_version) == (
        "active",
        "highest",
        "RD613",
        "2",
    )
    assert event.actual_start == datetime(2026, 7, 24, 21, tzinfo=UTC)
    assert event.geometry is not None
    assert event.geometry.model_dump() == {
        "type": "LineString",
        "coordinates": [[3.87, 43.61], [3.90, 43.63]],
    }
    assert event.descriptions == {"fr": "Accident, voie de droite neutralisée"}
    assert [(r["at"], r["departement"], r["pr"], r["abscissa"], r["side"]) for r in event.location_refs["pr"]] == [
        ("from", "34", 12, 120, "D"),
        ("to", "34", 13, 300, "D"),
    ]


def test_v3_site_table_and_measured_data_in_one_container():
    """v3 RoadTrafficData: channels from the table, their period and the time meaning used."""
    doc = f"""<?xml version="1.0" encoding="UTF-8"?>
<mc:messageContainer {XMLNS3} modelBaseVersion="3">
 <mc:payload xsi:type="roa:MeasurementSiteTablePublication" lang="fr" modelBaseVersion="3">
  <com:publicationTime>2026-07-25T00:00:00Z</com:publicationTime>
  <com:publicationCreator><com:country>fr</com:country><com:nationalIdentifier>CD34</com:nationalIdentifier></com:publicationCreator>
  <roa:headerInformation><com:confidentiality>noRestriction</com:confidentiality><com:informationStatus>real</com:informationStatus></roa:headerInformation>
  <roa:measurementSiteTable id="CD34-COMPTAGES" version="7">
   <roa:measurementSite id="34-RD613-PR12" version="3">
    <roa:measurementSiteName><com:values><com:value lang="fr">RD613 Montpellier sud</com:value></com:values></roa:measurementSiteName>
    <roa:measurementSpecificCharacteristics index="1"><roa:measurementSpecificCharacteristics>
      <roa:measurementSide>northBound</roa:measurementSide><roa:period>300</roa:period>
      <roa:specificMeasurementValueType>trafficFlow</roa:specificMeasurementValueType>
      <roa:specificVehicleCharacteristics><com:vehicleType>lorry</com:vehicleType></roa:specificVehicleCharacteristics>
      <roa:specificLane><loc:laneNumber>2</loc:laneNumber></roa:specificLane>
    </roa:measurementSpecificCharacteristics></roa:measurementSpecificCharacteristics>
    <roa:measurementSpecificCharacteristics index="2"><roa:measurementSpecificCharacteristics>
      <roa:period>300</roa:period><roa:specificMeasurementValueType>trafficSpeed</roa:specificMeasurementValueType>
    </roa:measurementSpecificCharacteristics></roa:measurementSpecificCharacteristics>
    <roa:measurementSpecificCharacteristics index="3"><roa:measurementSpecificCharacteristics>
      <roa:specificMeasurementValueType>temperatureInformation</roa:specificMeasurementValueType>
    </roa:measurementSpecificCharacteristics></roa:measurementSpecificCharacteristics>
    <roa:measurementSiteLocation xsi:type="loc:PointLocation">
      <loc:pointAlongLinearElement><loc:linearElement><loc:roadNumber>RD613</loc:roadNumber></loc:linearElement>
        <loc:distanceAlongLinearElement xsi:type="loc:DistanceFromLinearElementReferent"><loc:distanceAlong>450</loc:distanceAlong>
          <loc:fromReferent><loc:referentIdentifier>34PR12</loc:referentIdentifier><loc:referentType>referenceMarker</loc:referentType></loc:fromReferent>
        </loc:distanceAlongLinearElement></loc:pointAlongLinearElement>
      <loc:pointByCoordinates><loc:pointCoordinates><loc:latitude>43.58</loc:latitude><loc:longitude>3.89</loc:longitude></loc:pointCoordinates></loc:pointByCoordinates>
    </roa:measurementSiteLocation>
   </roa:measurementSite>
  </roa:measurementSiteTable>
 </mc:payload>
 <mc:payload xsi:type="roa:MeasuredDataPublication" lang="fr" modelBaseVersion="3">
  <com:publicationTime>2026-07-25T00:05:00Z</com:publicationTime>
  <com:publicationCreator><com:country>fr</com:country><com:nationalIdentifier>CD34</com:nationalIdentifier></com:publicationCreator>
  <roa:measurementSiteTableReference targetClass="roa:MeasurementSiteTable" id="CD34-COMPTAGES" version="7"/>
  <roa:headerInformation><com:confidentiality>noRestriction</com:confidentiality><com:informationStatus>real</com:informationStatus></roa:headerInformation>
  <roa:siteMeasurements>
   <roa:measurementSiteReference targetClass="roa:MeasurementSite" id="34-RD613-PR12" version="3"/>
   <roa:physicalQuantity index="1"><roa:physicalQuantity xsi:type="roa:SinglePhysicalQuantity">
     <roa:basicData xsi:type="roa:TrafficFlow"><roa:vehicleFlow><com:vehicleFlowRate>96</com:vehicleFlowRate></roa:vehicleFlow></roa:basicData>
   </roa:physicalQuantity></roa:physicalQuantity>
   <roa:physicalQuantity index="2"><roa:physicalQuantity xsi:type="roa:SinglePhysicalQuantity">
     <roa:basicData xsi:type="roa:TrafficSpeed"><roa:averageVehicleSpeed><com:speed>71.5</com:speed></roa:averageVehicleSpeed></roa:basicData>
   </roa:physicalQuantity></roa:physicalQuantity>
   <roa:physicalQuantity index="3"><roa:physicalQuantity xsi:type="roa:SinglePhysicalQuantity">
     <roa:basicData xsi:type="roa:TemperatureInformation"><roa:temperature><com:airTemperature><com:temperature>24.5</com:temperature></com:airTemperature></roa:temperature></roa:basicData>
   </roa:physicalQuantity></roa:physicalQuantity>
   <roa:measurementTimeDefault><roa:timeMeaning>endTime</roa:timeMeaning><roa:timeValue>2026-07-25T00:05:00Z</roa:timeValue></roa:measurementTimeDefault>
  </roa:siteMeasurements>
 </mc:payload>
</mc:messageContainer>""".encode()
    stats = ParseStats()
    items = parse(doc, stats)
    site, flow_channel, speed_channel, flow, speed = items
    assert site == SiteRecord(
        external_id="34-RD613-PR12",
        name="RD613 Montpellier sud",
        road="RD613",
        pr=12,
        abscissa=450,
        lon=3.89,
        lat=43.58,
        metadata={"datex_version": "3", "site_table": "CD34-COMPTAGES", "referent": "34PR12"},
    )
    assert flow_channel == ChannelRecord(
        site_external_id="34-RD613-PR12",
        external_id="34-RD613-PR12:1",
        direction="N",  # northBound
        lane=2,
        vehicle_class="heavy",
        time_step=300,
    )
    assert (speed_channel.external_id, speed_channel.vehicle_class, speed_channel.lane) == (
        "34-RD613-PR12:2",
        "all",
        None,
    )
    interval_start = datetime(2026, 7, 25, 0, 0, tzinfo=UTC)  # endTime 00:05 minus 300 s
    assert flow == MeasurementRecord(channel_external_id="34-RD613-PR12:1", start=interval_start, length=300, count=8)
    assert speed == MeasurementRecord(
        channel_external_id="34-RD613-PR12:2", start=interval_start, length=300, speed=71.5
    )
    assert stats.publications == ["MeasurementSiteTablePublication", "MeasuredDataPublication"]
    assert stats.skipped == {"channel:temperatureInformation": 1, "value:TemperatureInformation": 1}


@pytest.mark.parametrize(
    ("srs", "pos_list", "first"),
    [
        ("EPSG:2154", "700000 6600000 700100 6600100", [3.0, 46.5]),  # Lambert-93 origin
        # expected values from an independent forward projection (Snyder, USGS PP 1395)
        ("EPSG:2154", "770255.5 6279381.2 770300 6279400", [3.87, 43.61]),  # Montpellier
        ("25833", "161662.5 6794670.4 161700 6794700", [8.71, 61.14]),  # ETRS89 / UTM 33N
        (
            "http://www.opengis.net/gml/srs/epsg.xml#32631",
            "500000 0 500100 100",
            [3.0, 0.0],
        ),  # UTM 31N
        ("urn:ogc:def:crs:OGC:1.3:CRS84", "3.87 43.61 3.88 43.62", [3.87, 43.61]),  # lon lat order
        ("urn:ogc:def:crs:EPSG::4326", "43.61 3.87 43.62 3.88", [3.87, 43.61]),  # lat lon order
    ],
)
def test_gml_coordinate_systems_converted(srs, pos_list, first):
    line = f"""<sit:locationReference xsi:type="loc:LinearLocation">
      <loc:gmlLineString srsName="{srs}"><loc:posList>{pos_list}</loc:posList></loc:gmlLineString></sit:locationReference>"""
    [event] = parse(v3_situations(v3_record(location=line)))
    assert event.geometry is not None and event.geometry.type == "LineString"
    assert event.geometry.coordinates[0] == pytest.approx(first, abs=1e-6)


def test_gml_in_an_unknown_crs_is_kept_native_not_guessed():
    line = """<sit:locationReference xsi:type="loc:LinearLocation">
      <loc:coordinatesForDisplay><loc:latitude>43.61</loc:latitude><loc:longitude>3.87</loc:longitude></loc:coordinatesForDisplay>
      <loc:gmlLineString srsName="EPSG:3857"><loc:posList>430800 5405000 431000 5405200</loc:posList></loc:gmlLineString></sit:locationReference>"""
    [event] = parse(v3_situations(v3_record(location=line)))
    assert event.location_refs["gml"] == [
        {"srs": "EPSG:3857", "coordinates": [[430800.0, 5405000.0], [431000.0, 5405200.0]]}
    ]
    assert event.geometry is not None and event.geometry.model_dump() == {
        "type": "Point",
        "coordinates": [3.87, 43.61],
    }

    without_display = line.replace(
        line[line.index("<loc:coordinatesForDisplay>") : line.index("<loc:gmlLineString")], ""
    )
    [event] = parse(v3_situations(v3_record(location=without_display)))
    assert event.geometry is None and event.location_refs["gml"][0]["srs"] == "EPSG:3857"


# --------------------------------------------------------------------------- bad records, bad documents


def test_bad_record_is_quarantined_and_its_siblings_are_yielded():
    bad_point = POINT_RD613.replace("<loc:latitude>43.6107</loc:latitude>", "<loc:latitude>123.4</loc:latitude>")
    naive = v3_record("R4").replace("2026-07-20T06:00:00Z", "2026-07-20T06:00:00")
    doc = v3_situations(
        v3_record("R1"),
        v3_record("R2", location=bad_point),
        v3_record(None),
        naive,
        v3_record("R5"),
    )
    stats = ParseStats()
    items = parse(doc, stats)
    assert [type(i).__name__ for i in items] == [
        "EventRecord",
        "Quarantined",
        "Quarantined",
        "Quarantined",
        "EventRecord",
    ]
    assert (items[0].external_id, items[4].external_id) == ("R1", "R5")
    bad, missing_id, no_timezone = items[1:4]
    assert bad.record_ref == "R2" and "123.4" in bad.reason
    assert bad.excerpt.startswith("<sit:situationRecord") and len(bad.excerpt) == 500
    assert "without an id" in missing_id.reason and missing_id.record_ref.startswith("line ")
    assert no_timezone.record_ref == "R4" and "timezone" in no_timezone.reason
    assert stats.quarantined == 3


def test_bad_measurement_is_quarantined_and_the_other_site_yielded():
    doc = read(BISON_SPEEDS).replace(b"<speed>112.0</speed>", b"<speed>-5</speed>")
    items = parse(doc)
    quarantined = [i for i in items if isinstance(i, Quarantined)]
    assert len(quarantined) == 1 and quarantined[0].record_ref == "MUM76.h1:0"
    assert "speed" in quarantined[0].reason
    measurements = [i for i in items if isinstance(i, MeasurementRecord)]
    assert [(m.channel_external_id, m.count) for m in measurements] == [("A0001011200:0", 24)]

    doc = read(BISON_SPEEDS).replace(
        b"<vehicleFlowRate>1420</vehicleFlowRate>", b"<vehicleFlowRate>lots</vehicleFlowRate>"
    )
    items = parse(doc)
    assert [i.record_ref for i in items if isinstance(i, Quarantined)] == ["A0001011200:0"]
    assert "<measuredValue" in next(i for i in items if isinstance(i, Quarantined)).excerpt


def _record_ends(doc: bytes) -> dict[str, int]:
    """Where the situation of each record ends (after its closing tag) in a document:
    a situation is parsed, and its records yielded, as one unit."""
    ends = {}
    for m in re.finditer(rb'<sit:situationRecord\b[^>]*\bid="([^"]+)"', doc):
        ends[m.group(1).decode()] = doc.index(b"</sit:situation>", m.end()) + len(b"</sit:situation>")
    return ends


def _cut_contract(doc: bytes, cut: int) -> None:
    """What a document cut at any byte must give, whatever the XML library's buffering:
    the records it yields are complete (their situation closed before the cut), in order, each equal to
    its counterpart in the whole document; then an error that names the source and a line."""
    whole = {i.external_id: i for i in parse_datex2(doc, source_id="hostile", now=NOW)}
    ends = _record_ends(doc)
    items, error = collect_until_error(doc[:cut])
    ids = [i.external_id for i in items]
    assert ids == list(whole)[: len(ids)], "a prefix of the whole document's records, in order"
    for item in items:
        assert item == whole[item.external_id]
        assert ends[item.external_id] <= cut, f"{item.external_id} was cut through at byte {cut} but yielded"
    # every record whose situation closed well before the cut (more than any parser's
    # lookahead) is there
    assert {r for r, end in ends.items() if end + 4096 <= cut} <= set(ids)
    assert error.source_id == "hostile"
    assert error.line is not None and 1 <= error.line <= doc[:cut].count(b"\n") + 1
    assert "hostile" in str(error) and f"line {error.line}" in str(error)


def test_truncated_document_yields_what_came_before_then_fails_with_a_line():
    tree = etree.fromstring(read(NDW_SITUATIONS))
    pretty = etree.tostring(tree, pretty_print=True, xml_declaration=True, encoding="UTF-8")
    cut = pretty.index(b'<sit:situation id="RWS01_SM1168188_D2_WWA"') + 2000
    _cut_contract(pretty, cut)
    items, error = collect_until_error(pretty[:cut])
    # the cut falls inside RWS01_M1168188_SPEED_MANAGEMENT_D2_WWA: it must not come out
    assert "RWS01_M1168188_SPEED_MANAGEMENT_D2_WWA" not in [i.external_id for i in items]
    assert "RWS01_M1162215_CLOSED_LANES_D2_WWA" in [i.external_id for i in items]
    assert "Premature end of data" in error.reason or "expected" in error.reason


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fraction=st.floats(min_value=0.02, max_value=0.98))
def test_a_document_cut_anywhere_yields_only_complete_records(fraction: float):
    tree = etree.fromstring(read(NDW_SITUATIONS))
    pretty = etree.tostring(tree, pretty_print=True, xml_declaration=True, encoding="UTF-8")
    _cut_contract(pretty, int(len(pretty) * fraction))


@pytest.mark.parametrize(
    "doctype",
    [
        '<!DOCTYPE d2LogicalModel [<!ENTITY xxe SYSTEM "{uri}">]>',
        '<!DOCTYPE d2LogicalModel [<!ENTITY % remote SYSTEM "{uri}"> %remote;]>',
        '<!DOCTYPE d2LogicalModel SYSTEM "{uri}">',
    ],
)
def test_xxe_is_refused_and_nothing_leaks(tmp_path, doctype):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-PASSWORD-4242")
    doc = read(BISON_EVENTS).replace(
        b"<d2LogicalModel", doctype.format(uri=secret.as_uri()).encode() + b"\n<d2LogicalModel", 1
    )
    if b"ENTITY xxe" in doc:
        doc = doc.replace(b"Sur 500 m", b"&xxe;")
    items, error = collect_until_error(doc)
    assert items == []
    assert "DTD" in error.reason
    assert "TOP-SECRET" not in str(error) and "TOP-SECRET" not in repr(error.__dict__)


def test_billion_laughs_is_refused_quickly():
    entities = '<!ENTITY lol "lol">' + "".join(
        f'<!ENTITY lol{i} "{(f"&lol{i - 1};" if i > 1 else "&lol;") * 10}">' for i in range(1, 10)
    )
    doc = (
        read(BISON_EVENTS)
        .replace(
            b"<d2LogicalModel",
            f"<!DOCTYPE d2LogicalModel [{entities}]>\n<d2LogicalModel".encode(),
            1,
        )
        .replace(b"Sur 500 m", b"&lol9;")
    )
    items, error = collect_until_error(doc)
    assert items == [] and "DTD" in error.reason and error.line == 3  # the root element


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (b"", "no element found"),
        (b"<html><body>Bad gateway</body></html>", "not a DATEX II"),
        (b'<d2LogicalModel xmlns="http://datex2.eu/schema/1_0/1_0"/>', "not a DATEX II"),
        (b"\x89PNG\r\n\x1a\n", "Start tag expected"),
    ],
)
def test_not_datex_is_a_parse_error(doc, reason):
    _, error = collect_until_error(doc)
    assert reason in error.reason


def test_now_must_be_timezone_aware():
    with pytest.raises(ValueError, match="timezone"):
        list(parse_datex2(read(BISON_EVENTS), source_id="test", now=datetime(2026, 7, 25)))


# --------------------------------------------------------------------------- big documents


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def test_twenty_megabyte_document_is_parsed_with_flat_memory():
    stream = GeneratedStream(big_situation_publication(20_000_000))
    rss_before = _resident_bytes()
    rss_peak = rss_before
    count = 0
    tracemalloc.start()
    try:
        for item in parse_datex2(stream, source_id="big", now=NOW):
            assert isinstance(item, EventRecord)
            count += 1
            if count % 500 == 0 and rss_before is not None:
                rss_peak = max(rss_peak, _resident_bytes() or 0)
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stream.size >= 20_000_000
    assert count > 5000
    assert python_peak < stream.size / 20  # < 1 MB of Python objects for 20 MB
    if rss_before is not None:  # libxml2's tree is invisible to tracemalloc: watch RSS too
        assert rss_peak - rss_before < stream.size / 4


# --------------------------------------------------------------------------- properties

SAMPLES = sorted(p.name for p in DATA.glob("*.xml") if p.stat().st_size < 100_000)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_raise_only_parse_error(data):
    try:
        for item in parse_datex2(data, source_id="fuzz", now=NOW):
            assert isinstance(item, SiteRecord | ChannelRecord | MeasurementRecord | EventRecord | Quarantined)
    except ParseError as error:
        assert error.source_id == "fuzz" and error.reason


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SAMPLES), st.floats(min_value=0, max_value=1), st.binary(max_size=8))
def test_damaged_real_samples_raise_only_parse_error(name, where, junk):
    data = read(name)
    cut = int(len(data) * where)
    damaged = data[:cut] + junk + data[cut + len(junk) :]
    try:
        for item in parse_datex2(damaged, source_id="fuzz", now=NOW):
            assert isinstance(item, SiteRecord | ChannelRecord | MeasurementRecord | EventRecord | Quarantined)
    except ParseError as error:
        assert error.source_id == "fuzz"
