"""Event authoring: every kind an agent can enter is valid in every format (DATEX II
v3.6 and v2.3 XSDs, WZDx 4.2 JSON schema, Waze CIFS XSD, GeoJSON), whole payloads
generated; published through the API it reaches every live feed, its versions carry
their author, ending keeps it listed as ended, and the preview says what each
consumer accepts and why one refuses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree
from pydantic import ValidationError

from agents_support import ADMIN, CIFS, DATEX_V2, DATEX_V3, WZDX, agents_app, until_in_feed, xml_valid
from exporters import datex2_v2, datex2_v3, geojson, waze, wzdx
from feed.config import PublicationConfig
from feed.http.authoring import _CONTROL as CONTROL
from feed.http.authoring import KINDS, EventInput, event_record
from feed.model import DAYS, StoredEvent
from feed.simulator.geography import ROADS
from feed.store.storage import Storage

PUBLICATION = PublicationConfig()
NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


def every_format_valid(events: list[StoredEvent], at: datetime) -> dict[str, Any]:
    """Renders the events in every format, checks each against its schema, returns the documents."""
    v3 = xml_valid(DATEX_V3, datex2_v3.render_situations(events, PUBLICATION, at))
    v2 = xml_valid(DATEX_V2, datex2_v2.render_situations(events, PUBLICATION, at))
    work_zones = json.loads(wzdx.render_work_zones(events, PUBLICATION, at))
    assert not [e.message for e in WZDX.iter_errors(work_zones)]
    cifs = xml_valid(CIFS, waze.render_cifs_xml(events, PUBLICATION, at))
    features = json.loads(geojson.render_events(events, PUBLICATION, at))
    assert features["type"] == "FeatureCollection"
    return {"v3": v3, "v2": v2, "wzdx": work_zones, "cifs": cifs, "geojson": features}


# ---------------------------------------------------------------- every kind, generated payloads (pure)


_times = st.tuples(st.integers(0, 23), st.sampled_from([0, 15, 30, 59])).map(lambda t: f"{t[0]:02d}:{t[1]:02d}")
_slots = st.fixed_dictionaries(
    {"days": st.lists(st.sampled_from(list(DAYS)), min_size=1, max_size=7, unique=True), "start": _times, "end": _times}
).filter(lambda s: s["start"] != s["end"])


@st.composite
def _drawn(draw: st.DrawFn) -> tuple[EventInput, StoredEvent]:
    road = draw(st.sampled_from(list(ROADS.values())))
    km = draw(st.floats(0, road.length - 0.1))
    span = draw(st.sampled_from([None, 0.01, 0.02, 0.5, 3.0, 12.0]))  # km: too short and too long for Waze too
    if span is None:
        geometry = {"type": "Point", "coordinates": list(road.point_at(km))}
    else:
        geometry = {
            "type": "LineString",
            "coordinates": [list(p) for p in road.between(km, min(road.length, km + span))],
        }
    kind = draw(st.sampled_from(list(KINDS)))
    text = st.text(st.characters(codec="utf-8"), max_size=60)
    start = NOW + timedelta(hours=draw(st.integers(-72, 72)))
    body: dict[str, Any] = {
        "kind": kind,
        "geometry": geometry,
        "road": road.name,
        "direction": draw(st.sampled_from(["both", "positive", "negative"])),
        "severity": draw(st.sampled_from(["unknown", "low", "medium", "high", "highest"])),
        "lanes": draw(st.sampled_from([None, "1 voie", "voie de droite", "toutes voies", "all"]))
        if kind != "lane_closure"
        else "voie de gauche",
        "description": {"fr": draw(text), "en": draw(text)},
        "detour": draw(text) + "D2 puis D5" if kind == "detour" else None,
        "start": start.isoformat(),
        "end": draw(st.sampled_from([None, (start + timedelta(hours=8)).isoformat()])),
        "schedule": draw(st.lists(_slots, max_size=3)),
    }
    try:
        entry = EventInput.model_validate(body)
    except ValidationError as exc:  # typed control characters are refused, naming the field
        assert "control character" in str(exc)
        clean = {k: CONTROL.sub("", v) for k, v in body["description"].items()}
        body = {**body, "description": clean, "detour": CONTROL.sub("", body["detour"]) if body["detour"] else None}
        entry = EventInput.model_validate(body)
    return entry, StoredEvent(
        **body_record(entry).model_dump(),
        id=f"agents:{kind}",
        source_id="agents",
        version=draw(st.integers(1, 50)),
        first_seen=NOW,
        last_seen=NOW,
        updated=NOW,
    )


def body_record(entry: EventInput) -> Any:
    return asyncio.run(event_record(None, entry, f"x-{entry.kind}", NOW))


@settings(max_examples=80, deadline=None)
@given(drawn=st.lists(_drawn(), min_size=1, max_size=6))
def test_every_kind_of_event_is_valid_in_every_format(drawn: list[tuple[EventInput, StoredEvent]]) -> None:
    events = {e.id: e for _, e in drawn}  # one per kind: ids are unique in a feed
    documents = every_format_valid(list(events.values()), NOW)
    assert len(documents["geojson"]["features"]) == len(events)  # nothing lost on the way
    written = set(documents["v3"].xpath("//*[local-name()='situation']/@id"))
    assert written == set(events)
    published = {i.get("id") for i in documents["cifs"].iter("incident")}
    reported = {e.id for e in events.values() if waze.check_waze_rules(e) is not None}
    assert published == set(events) - reported  # Waze: each event published or refused with a reason


def test_kinds_are_written_as_each_format_expresses_them() -> None:
    line = {"type": "LineString", "coordinates": [list(p) for p in ROADS["rd613o"].between(10, 11.5)]}

    def one(kind: str, **extra: Any) -> StoredEvent:
        entry = EventInput.model_validate({"kind": kind, "geometry": line, "road": "RD613", **extra})
        return StoredEvent(
            **body_record(entry).model_dump(),
            id=f"agents:{kind}",
            source_id="agents",
            version=1,
            first_seen=NOW,
            last_seen=NOW,
            updated=NOW,
        )

    nights = [{"days": ["monday", "tuesday", "wednesday", "thursday", "friday"], "start": "21:00", "end": "06:00"}]
    events = [
        one("alternating_traffic", schedule=nights),
        one("lane_closure", lanes="voie de droite"),
        one("closure"),
        one("detour", detour="par la D5 et la D27"),
        one("winter_conditions"),
        one("speed_limit"),
    ]
    docs = every_format_valid(events, NOW)
    v3 = {s.get("id"): s for s in docs["v3"].xpath("//*[local-name()='situation']")}

    def values(situation: etree._Element, name: str) -> list[str]:
        return [e.text for e in situation.iter() if etree.QName(e).localname == name]

    assert values(v3["agents:alternating_traffic"], "roadOrCarriagewayOrLaneManagementType") == [
        "singleAlternateLineTraffic"
    ]
    assert values(v3["agents:lane_closure"], "roadOrCarriagewayOrLaneManagementType") == ["laneClosures"]
    assert values(v3["agents:closure"], "roadOrCarriagewayOrLaneManagementType") == ["roadClosed"]
    assert values(v3["agents:detour"], "reroutingManagementType") == ["followDiversionSigns"]
    assert "par la D5 et la D27" in "".join(values(v3["agents:detour"], "value"))
    assert values(v3["agents:winter_conditions"], "weatherRelatedRoadConditionType") == ["snowOnTheRoad"]
    impacts = {f["id"]: f["properties"]["vehicle_impact"] for f in docs["wzdx"]["features"]}
    assert "alternating-one-way" in impacts.values()
    assert "some-lanes-closed" in impacts.values() and "all-lanes-closed" in impacts.values()
    period = v3["agents:alternating_traffic"]
    assert values(period, "startTimeOfPeriod") == ["21:00:00"] and values(period, "endTimeOfPeriod") == ["06:00:00"]
    assert values(period, "applicableDay") == nights[0]["days"]
    v2 = {s.get("id"): s for s in docs["v2"].xpath("//*[local-name()='situation']")}
    assert values(v2["agents:alternating_traffic"], "applicableDay") == nights[0]["days"]
    cifs = {i.get("id"): i for i in docs["cifs"].iter("incident")}
    schedule = cifs["agents:alternating_traffic"].find("schedule")
    assert {day.tag: day.text for day in schedule} == {  # split at midnight, continued the next morning
        "monday": "21:00-23:59",
        "tuesday": "00:00-06:00,21:00-23:59",
        "wednesday": "00:00-06:00,21:00-23:59",
        "thursday": "00:00-06:00,21:00-23:59",
        "friday": "00:00-06:00,21:00-23:59",
        "saturday": "00:00-06:00",
    }
    assert cifs["agents:closure"].findtext("type") == "ROAD_CLOSED"
    assert cifs["agents:lane_closure"].findtext("subtype") == "HAZARD_ON_ROAD_LANE_CLOSED"


# ---------------------------------------------------------------- through the API, into every live feed


@pytest.fixture
async def client(storage: Storage) -> AsyncIterator[TestClient]:
    async with agents_app(storage) as c:
        yield c


AUTH = {"Authorization": f"Bearer {ADMIN}"}


ALTERNATING = {
    "kind": "alternating_traffic",
    "road": "RD613",
    "from": {"pr": 12, "abscissa": 150},
    "to": {"pr": 13, "abscissa": 400},
    "direction": "both",
    "lanes": "1 voie sur 2",
    "schedule": [{"days": ["monday", "tuesday", "wednesday", "thursday", "friday"], "start": "21:00", "end": "06:00"}],
    "severity": "medium",
    "description": {"fr": "Circulation alternée par feux", "en": "Alternating traffic"},
}


async def test_published_in_every_feed_versioned_with_author_and_ended(client: TestClient) -> None:
    async with client.post("/api/v1/events", json=ALTERNATING, headers=AUTH) as resp:
        created = await resp.json()
        assert resp.status == 201, created
    event = created["event"]
    event_id, version = event["id"], event["version"]
    assert event_id.startswith("agents:") and version == 1
    assert event["geometry"]["type"] == "LineString" and event["subtype"] == "singleAlternateLineTraffic"
    bodies = {
        path: await until_in_feed(client, path, event_id)
        for path in (
            "/feeds/datex2/v3/situations.xml",
            "/feeds/datex2/v2/situations.xml",
            "/feeds/events.geojson",
            "/feeds/wzdx/v4.2/work-zones.geojson",
            "/feeds/waze/cifs.xml",
        )
    }
    xml_valid(DATEX_V3, bodies["/feeds/datex2/v3/situations.xml"])
    xml_valid(DATEX_V2, bodies["/feeds/datex2/v2/situations.xml"])
    xml_valid(CIFS, bodies["/feeds/waze/cifs.xml"])
    assert not list(WZDX.iter_errors(json.loads(bodies["/feeds/wzdx/v4.2/work-zones.geojson"])))
    assert (
        b"<schedule>" in bodies["/feeds/waze/cifs.xml"]
        and b"<monday>21:00-23:59</monday>" in bodies["/feeds/waze/cifs.xml"]
    )
    assert b"recurringTimePeriodOfDay" in bodies["/feeds/datex2/v3/situations.xml"]
    # the PR range travels in DATEX II v2.3 as the French feeds write it
    assert b"PR12" in bodies["/feeds/datex2/v2/situations.xml"]

    changed = {**ALTERNATING, "to": {"pr": 14}, "description": {"fr": "Alternat prolongé"}}
    async with client.put(f"/api/v1/events/{event_id}", json=changed, headers=AUTH) as resp:
        assert resp.status == 200 and (await resp.json())["event"]["version"] == 2
    await until_in_feed(client, "/feeds/events.geojson", "Alternat prolongé")
    async with client.post(f"/api/v1/events/{event_id}/end", headers=AUTH) as resp:
        ended = (await resp.json())["event"]
    assert ended["status"] == "ended" and ended["version"] == 3
    features = json.loads(await until_in_feed(client, "/feeds/events.geojson", '"ended"'))["features"]
    assert [f["properties"]["status"] for f in features if f["id"] == event_id] == ["ended"]  # still listed
    async with client.post(f"/api/v1/events/{event_id}/end", headers=AUTH) as resp:
        assert resp.status == 409
    async with client.get(f"/api/v1/events/{event_id}") as resp:
        history = await resp.json()
    assert [(v["version"], v["change"], v["author"]) for v in history["versions"]] == [
        (1, "created", "admin-token"),
        (2, "updated", "admin-token"),
        (3, "ended", "admin-token"),
    ]


async def test_other_sources_events_are_not_edited_here(client: TestClient) -> None:
    async with client.post("/api/v1/events/cd34:1/end", headers=AUTH) as resp:
        assert resp.status == 404 and "not an agents' event" in (await resp.json())["detail"]


@pytest.mark.parametrize(
    ("body", "parameter", "detail"),
    [
        ({**ALTERNATING, "kind": "meteor"}, "kind", "kind"),
        ({**ALTERNATING, "from": {"pr": 500}}, "from", "has no PR 500"),
        ({"kind": "works", "road": "RD613"}, "body", "locate the event"),
        ({"kind": "detour", "road": "RD613", "from": {"pr": 3}}, "body", "a detour needs its route"),
        ({"kind": "lane_closure", "road": "RD613", "from": {"pr": 3}}, "body", "lanes closed"),
        ({**ALTERNATING, "start": "2026-07-01T21:00"}, "start", "offset"),
        ({**ALTERNATING, "unknown": 1}, "unknown", "Extra inputs"),
        (
            {**ALTERNATING, "schedule": [{"days": ["monday"], "start": "25:00", "end": "06:00"}]},
            "schedule.0",
            "not HH:MM",
        ),
        (
            {**ALTERNATING, "schedule": [{"days": ["lundi"], "start": "21:00", "end": "06:00"}]},
            "schedule.0.days.0",
            "Input should be",
        ),
        ({**ALTERNATING, "road": "RD9999"}, "from", "not in the referential"),
    ],
)
async def test_bad_entries_are_refused_with_the_field_and_reason(
    client: TestClient, body: dict[str, Any], parameter: str, detail: str
) -> None:
    async with client.post("/api/v1/events", json=body, headers=AUTH) as resp:
        error = await resp.json()
        assert resp.status == 400, error
    assert error["parameter"] == parameter and detail in error["detail"]


async def test_preview_shows_what_each_consumer_receives_and_why_one_refuses(client: TestClient) -> None:
    async with client.post("/api/v1/events/preview", json=ALTERNATING, headers=AUTH) as resp:
        preview = await resp.json()
        assert resp.status == 200, preview
    consumers = preview["consumers"]
    assert set(consumers) == {"datex2_v3", "datex2_v2", "wzdx", "waze", "geojson"}
    assert all(c["accepted"] for c in consumers.values()), consumers
    xml_valid(DATEX_V3, consumers["datex2_v3"]["document"].encode())
    short = {"kind": "closure", "road": "RD613", "from": {"pr": 12}, "to": {"pr": 12, "abscissa": 20}}
    async with client.post("/api/v1/events/preview", json=short, headers=AUTH) as resp:
        refused = (await resp.json())["consumers"]["waze"]
    assert refused["accepted"] is False and "at least 35 m" in refused["reason"]
    async with client.get("/feeds/events.geojson") as resp:
        assert "preview" not in (await resp.text())  # nothing stored


async def test_the_openapi_document_lists_the_agents_routes(client: TestClient) -> None:
    async with client.get("/api/v1/openapi.json") as resp:
        document = await resp.json()
    for path in (
        "/api/v1/events",
        "/api/v1/events/preview",
        "/api/v1/events/{id}",
        "/api/v1/events/{id}/end",
        "/api/v1/session",
        "/api/v1/roads",
        "/api/v1/roads/{road}/pr",
        "/api/v1/markings",
    ):
        assert path in document["paths"], path
    assert "EventInput" in document["components"]["schemas"]
    assert document["paths"]["/api/v1/events"]["post"]["security"]
