"""Round trip: our DATEX II v3 and v2.3 situation feeds, read back by our own DATEX II
collector, give the same events."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from lxml import etree

from collectors.datex2_parse import parse_datex2
from collectors.opendatasoft_parse import event_mapping_from_options, parse_export_json
from exporters import datex2_v2, datex2_v3
from feed.config import PublicationConfig
from feed.model import EventRecord, Geometry, MeasurementRecord, StoredChannel, StoredEvent, StoredSite
from feed.simulator.datasets import _render
from feed.simulator.simulation import Simulation
from feed.simulator.sources import simulator_sources

PUB = PublicationConfig()
NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


def edge_cases() -> list[StoredEvent]:
    def ev(ext: str, **kw) -> StoredEvent:
        base = dict(
            external_id=ext,
            id=f"cd34:{ext}",
            source_id="cd34",
            version=3,
            type="roadworks",
            subtype="MaintenanceWorks",
            status="active",
            severity="medium",
            road="RD613",
            actual_start=NOW - timedelta(days=2),
            planned_end=NOW + timedelta(days=5),
            geometry=Geometry(type="LineString", coordinates=[[3.69, 43.51], [3.695, 43.515], [3.70, 43.52]]),
            descriptions={"fr": "Réfection de chaussée", "en": "Resurfacing"},
            first_seen=NOW - timedelta(days=3),
            last_seen=NOW,
            updated=NOW - timedelta(hours=1),
        )
        return StoredEvent(**{**base, **kw})

    return [
        ev("open-ended", planned_end=None),
        ev(
            "point",
            geometry=Geometry(type="Point", coordinates=[3.1234567, 43.7654321]),
            type="accident",
            subtype="Accident",
            severity="high",
        ),
        ev("planned", status="planned", actual_start=None, planned_start=NOW + timedelta(days=1)),
        ev("ended", status="ended", actual_end=NOW - timedelta(hours=2), planned_end=None, version=7),
        ev("closure", type="closure", subtype="RoadOrCarriagewayOrLaneManagement", severity="highest"),
        ev(
            "snow",
            type="weather",
            subtype="WeatherRelatedRoadConditions",
            descriptions={"fr": "Neige", "en": "Snow", "oc": "Nèu"},
        ),
    ]


def simulated() -> list[tuple[datetime, list[StoredEvent]]]:
    """The simulator's live events at six moments of a year, each with its moment."""
    sim = Simulation(seed=34)
    moments = []
    for k in range(6):
        t = datetime(2025, 2, 1, tzinfo=UTC) + timedelta(days=k * 53, hours=k * 5)
        moments.append((t, [e.stored_event().model_copy(update={"detour": None}) for e in sim.events_at(t)]))
    return moments


def read_back(body: bytes, now: datetime) -> dict[str, EventRecord]:
    items = list(parse_datex2(body, source_id="roundtrip", now=now))
    return {i.external_id: i for i in items if isinstance(i, EventRecord)}


def start(e: EventRecord) -> datetime | None:
    return e.actual_start or e.planned_start


def end(e: EventRecord) -> datetime | None:
    return e.actual_end or e.planned_end


def close(a: list[float], b: list[float]) -> bool:
    return abs(a[0] - b[0]) < 1e-6 and abs(a[1] - b[1]) < 1e-6


def same_event(ours: StoredEvent, back: EventRecord, *, full_line: bool) -> None:
    assert back.source_version == str(ours.version)
    assert (back.type, back.status, back.severity, back.road) == (ours.type, ours.status, ours.severity, ours.road)
    assert start(back) == start(ours) and end(back) == end(ours)
    assert back.descriptions == ours.descriptions
    assert back.geometry is not None and back.geometry.type == ours.geometry.type
    theirs, mine = back.geometry.points, ours.geometry.points
    if full_line or ours.geometry.type == "Point":
        assert len(theirs) == len(mine) and all(close(a, b) for a, b in zip(theirs, mine, strict=True))
    else:  # DATEX II v2.3 has no line geometry: a linear location goes from the first to the last point
        assert close(theirs[0], mine[0]) and close(theirs[-1], mine[-1])


@pytest.mark.parametrize("moments", [[(NOW, edge_cases())], simulated()], ids=["edge-cases", "simulated"])
@pytest.mark.parametrize("version", ["v3", "v2.3"])
def test_our_situation_feeds_read_back_as_the_same_events(moments, version):
    render = datex2_v3.render_situations if version == "v3" else datex2_v2.render_situations
    for now, events in moments:
        back = read_back(render(events, PUB, now), now)
        assert set(back) == {e.id for e in events}
        for e in events:
            same_event(e, back[e.id], full_line=version == "v3")


def test_our_measured_data_reads_back_with_its_counts_and_hourly_periods():
    hour = datetime(2026, 11, 28, 7, tzinfo=UTC)
    sites = [
        StoredSite(
            id=n,
            source_id="cd34",
            external_id=f"S{n}",
            name=f"site {n}",
            road="RD613",
            lon=3.6 + n / 100,
            lat=43.5,
            channels=[
                StoredChannel(
                    id=n * 10 + k,
                    site_external_id=f"S{n}",
                    external_id=f"S{n}-{k}",
                    direction="N",
                    vehicle_class="light",
                    time_step=3600,
                    latest_start=hour,
                    latest_length=3600,
                    latest_count=100 * n + k,
                    latest_speed=70.0,
                    latest_quality="observed",
                )
                for k in range(2)
            ],
        )
        for n in range(1, 4)
    ]
    body = datex2_v3.render_measured_data(sites, PUB, hour + timedelta(hours=1))
    items = list(parse_datex2(body, source_id="roundtrip", now=hour + timedelta(hours=1)))
    counts = sorted(m.count for m in items if isinstance(m, MeasurementRecord) and m.count is not None)
    assert counts == sorted(100 * n + k for n in range(1, 4) for k in range(2))
    flows = [m for m in items if isinstance(m, MeasurementRecord) and m.count is not None]
    assert {(m.start, m.length) for m in flows} == {(hour, 3600)}


V23_XSD = Path(__file__).resolve().parents[1] / "data" / "schemas" / "datex2" / "v2.3" / "DATEXIISchema_2_2_3.xsd"
D2 = {"d": "http://datex2.eu/schema/2/2_0"}


def test_opendatasoft_events_reach_datex2_v23_with_their_road_number():
    """The demo's chain: the simulated inforoute dataset (Opendatasoft), read by our
    collector with the demo's mapping, published as DATEX II v2.3 (valid against the
    schema): every event has its road as linearElement/roadNumber, where v2.3
    consumers read it, and reads back with the same road and PR references."""
    schema = etree.XMLSchema(etree.parse(str(V23_XSD)))
    [options] = [s["options"] for s in simulator_sources("http://127.0.0.1:9") if s["id"] == "sim-evenements"]
    mapping = event_mapping_from_options(options)
    sim = Simulation(seed=34)
    checked = 0
    for k in range(6):
        now = datetime(2025, 2, 1, tzinfo=UTC) + timedelta(days=k * 53, hours=k * 5)
        body = json.dumps([_render(e.ods_record(), UTC) for e in sim.events_at(now)]).encode()
        records = [r for r in parse_export_json(body, mapping, now=now) if isinstance(r, EventRecord)]
        assert records
        events = [
            StoredEvent(
                **r.model_dump(),
                id=f"ods:{r.external_id}",
                source_id="ods",
                version=1,
                first_seen=now,
                last_seen=now,
                updated=now,
            )
            for r in records
        ]
        xml = datex2_v2.render_situations(events, PUB, now)
        root = etree.fromstring(xml)
        schema.assertValid(root)
        for situation in root.iterfind(".//d:situationRecord", D2):
            roads = situation.xpath(".//d:linearElement/d:roadNumber/text()", namespaces=D2)
            assert roads, etree.tostring(situation)[:400]
        back = read_back(xml, now)
        for e in events:
            again = back[e.id]
            assert again.road == e.road
            assert [(p["road"], p["pr"], p["abscissa"]) for p in again.location_refs["pr"]] == [
                (p["road"], p["pr"], p["abscissa"]) for p in e.location_refs["pr"]
            ]
            checked += 1
    assert checked > 30
