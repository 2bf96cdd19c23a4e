"""Every format, validated offline against its official schema, on realistic data:
a year of the simulated département's events and sites, and events read from
the real DATEX II samples of France, the Netherlands, Finland and Norway."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from exporters_support import valid_datex, valid_xml
from jsonschema import Draft7Validator
from lxml import etree

from collectors.datex2_parse import parse_datex2
from exporters import datex2_v2, datex2_v3, geojson, waze, wzdx
from feed.config import PublicationConfig
from feed.model import EventRecord, StoredChannel, StoredEvent, StoredSite
from feed.simulator.simulation import Simulation

DATA = Path(__file__).resolve().parents[1] / "data"
PUB = PublicationConfig()
NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
REAL_SAMPLES = [
    "fr-bisonfute-tipi-evenementiel-situation-v2.2.xml",
    "nl-ndw-actueel_beeld-situations-messagecontainer.xml",
    "nl-ndw-srti-situation-messagecontainer.xml",
    "fi-fintraffic-situation-GUID50456943-v3.5-payload.xml",
    "fi-fintraffic-situation-GUID50459771-v3.5-payload.xml",
    "fi-fintraffic-roadworks-situation-v2.3-FIprofile.xml",
    "no-npra-situations-messagecontainer-v3.1.xml",
]


def stored(rec: EventRecord, source_id: str, seen: datetime) -> StoredEvent:
    return StoredEvent(
        **rec.model_dump(),
        id=f"{source_id}:{rec.external_id}",
        source_id=source_id,
        version=1,
        first_seen=seen,
        last_seen=seen,
        updated=seen,
    )


def simulated_events() -> list[StoredEvent]:
    """The simulator's live events at 40 moments of a year, in every state they pass
    through (ids made unique per moment, as if 40 départements published at once)."""
    sim = Simulation(seed=34)
    events = []
    for k in range(40):
        t = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(hours=k * 219 + 7)
        for e in sim.events_at(t):
            ev = e.stored_event()
            events.append(ev.model_copy(update={"id": f"{ev.id}@{k}", "external_id": f"{ev.external_id}@{k}"}))
    return events


def real_sample_events() -> list[StoredEvent]:
    events = []
    for name in REAL_SAMPLES:
        items = parse_datex2((DATA / "datex2" / name).read_bytes(), source_id="sample", now=NOW)
        events += [stored(i, name.split("-")[0], NOW) for i in items if isinstance(i, EventRecord)]
    return events


def simulated_sites() -> list[StoredSite]:
    """The simulated sites with their latest hour, gaps (no value) included."""
    sim = Simulation(seed=34)
    hour = datetime(2026, 11, 28, 8, tzinfo=UTC)
    sites = []
    for n, site in enumerate(sim.sites, start=1):
        channels = []
        for k, ch in enumerate(c for c in sim.channels if c.site.id == site.id):
            count = sim.count(site.id, ch.direction.code, ch.vehicle_class, hour)
            known = count is not None
            channels.append(
                StoredChannel(
                    id=n * 10 + k,
                    site_external_id=site.id,
                    external_id=ch.id,
                    direction=ch.direction.code,
                    vehicle_class="heavy" if ch.vehicle_class == "PL" else "light",
                    time_step=3600,
                    latest_start=hour if known else None,
                    latest_length=3600 if known else None,
                    latest_count=count,
                    latest_speed=sim.mean_speed(site.id, ch.direction.code, ch.vehicle_class, hour) if known else None,
                    latest_quality="observed" if known else None,
                )
            )
        sites.append(
            StoredSite(
                id=n,
                source_id="sim",
                external_id=site.id,
                name=site.name,
                road=site.road.name,
                pr=site.pr,
                abscissa=site.abscissa,
                lon=site.lon,
                lat=site.lat,
                insee=site.insee,
                channels=channels,
            )
        )
    # A site that never sent anything.
    sites[0] = sites[0].model_copy(
        update={
            "channels": [
                c.model_copy(
                    update={
                        "latest_start": None,
                        "latest_length": None,
                        "latest_count": None,
                        "latest_speed": None,
                        "latest_quality": None,
                    }
                )
                for c in sites[0].channels
            ]
        }
    )
    return sites


@pytest.fixture(scope="module", params=["simulated", "real-samples"])
def events(request) -> list[StoredEvent]:
    return simulated_events() if request.param == "simulated" else real_sample_events()


def test_the_data_is_varied(events):
    assert len(events) >= 10
    assert any(e.geometry and e.geometry.type == "LineString" for e in events)
    assert any(e.status == "ended" for e in events) or any(e.planned_end is None for e in events)


def test_datex2_v3_situations(events, datex2_v36_xsd):
    doc = valid_datex(datex2_v36_xsd, datex2_v3.render_situations(events, PUB, NOW))
    ids = {r.get("id") for r in doc.iter("{*}situationRecord")}
    # An event we cannot locate (only an Alert-C code, no coordinates, no road) is left out.
    assert ids == {e.id for e in events if e.geometry or e.road}


def test_datex2_v2_situations(events, datex2_v2_xsd):
    valid_datex(datex2_v2_xsd, datex2_v2.render_situations(events, PUB, NOW))


def test_waze_cifs(events, cifs_xsd):
    doc = valid_xml(cifs_xsd, waze.render_cifs_xml(events, PUB, NOW))
    report = json.loads(waze.render_report(events, NOW))
    published = {i.get("id") for i in doc.iter("incident")}
    assert len(published) + report["counts"]["left_out"] == len({e.id for e in events})
    assert {i["incident"]["id"] for i in json.loads(waze.render_cifs_json(events, PUB, NOW))["incidents"]} == published


def test_wzdx_work_zones(events, wzdx_validator: Draft7Validator):
    feed = json.loads(wzdx.render_work_zones(events, PUB, NOW))
    errors = [e.message for e in wzdx_validator.iter_errors(feed)]
    assert errors == []


def test_geojson_events(events):
    feed = json.loads(geojson.render_events(events, PUB, NOW))
    assert feed["type"] == "FeatureCollection" and len(feed["features"]) == len(events)
    for f in feed["features"]:
        g = f["geometry"]
        assert g is None or (
            g["type"] in ("Point", "LineString")
            and all(
                -180 <= p[0] <= 180 and -90 <= p[1] <= 90
                for p in ([g["coordinates"]] if g["type"] == "Point" else g["coordinates"])
            )
        )


def test_sites_in_every_format(rtti_xsd: etree.XMLSchema, datex2_v36_payload_xsd: etree.XMLSchema):
    sites = simulated_sites()
    assert any(ch.latest_count is None for s in sites for ch in s.channels)  # sites with gaps
    for render in (datex2_v3.render_measurement_sites, datex2_v3.render_measured_data):
        body = render(sites, PUB, NOW)
        valid_datex(rtti_xsd, body)
        valid_datex(datex2_v36_payload_xsd, body)
    feed = json.loads(geojson.render_sites(sites, PUB, NOW))
    assert len(feed["features"]) == len(sites)
