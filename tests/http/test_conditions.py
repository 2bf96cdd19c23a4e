"""Road conditions: winter service sets sections C1-C4 by road + PR range; each state
is published (DATEX II v3 valid, GeoJSON), C1 ends it, every change is in history
with its author, and the coloured network lists each section's level."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from lxml import etree

from agents_support import ADMIN, DATEX_V2, DATEX_V3, agents_app, until_in_feed, xml_valid
from feed.store.storage import Storage

AUTH = {"Authorization": f"Bearer {ADMIN}"}
SECTION = {"road": "RD986", "from": {"pr": 20}, "to": {"pr": 28, "abscissa": 500}}


@pytest.fixture
async def client(storage: Storage) -> AsyncIterator[TestClient]:
    async with agents_app(storage) as c:
        yield c


async def set_level(client: TestClient, level: str, **extra: Any) -> dict[str, Any]:
    async with client.post("/api/v1/road-conditions", json={**SECTION, "level": level, **extra}, headers=AUTH) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return body


async def network(client: TestClient) -> dict[str, str]:
    async with client.get("/api/v1/road-conditions") as resp:
        return {f["id"]: f["properties"]["level"] for f in (await resp.json())["features"]}


async def test_a_section_goes_through_the_scale(client: TestClient) -> None:
    assert (await set_level(client, "C1"))["event"] is None  # normal and never reported: nothing to publish
    c3 = await set_level(client, "C3", surface="ice", comment="verglas sur le plateau")
    event_id = c3["event"]["id"]
    v3 = await until_in_feed(client, "/feeds/datex2/v3/situations.xml", event_id)
    situation = xml_valid(DATEX_V3, v3).xpath(f"//*[local-name()='situation'][@id='{event_id}']")[0]
    texts = [e.text for e in situation.iter() if etree.QName(e).localname == "weatherRelatedRoadConditionType"]
    assert texts == ["ice"]
    xml_valid(DATEX_V2, await until_in_feed(client, "/feeds/datex2/v2/situations.xml", event_id))
    assert "C3, conditions difficiles" in (await until_in_feed(client, "/feeds/events.geojson", event_id)).decode()
    assert await network(client) == {event_id: "C3"}
    c4 = await set_level(client, "C4")
    assert c4["event"]["type"] == "closure" and c4["event"]["version"] == 2
    await until_in_feed(client, "/feeds/wzdx/v4.2/work-zones.geojson", event_id)  # impassable: a closure
    await set_level(client, "C1")
    assert await network(client) == {event_id: "C1"}
    async with client.get(f"/api/v1/events/{event_id}") as resp:
        versions = (await resp.json())["versions"]
    assert [(v["change"], v["author"], v["location_refs"]["winter_level"]) for v in versions] == [
        ("created", "admin-token", "C3"),
        ("updated", "admin-token", "C4"),
        ("ended", "admin-token", "C1"),
    ]


@pytest.mark.parametrize(
    ("body", "parameter"),
    [
        ({**SECTION, "level": "C5"}, "level"),
        ({**SECTION, "level": "C2", "surface": "lava"}, "surface"),
        ({**SECTION, "to": {"pr": 999}, "level": "C2"}, "from"),
        ({"road": "RD986", "from": {"pr": 20}, "level": "C2"}, "to"),
    ],
)
async def test_bad_states_are_refused(client: TestClient, body: dict[str, Any], parameter: str) -> None:
    async with client.post("/api/v1/road-conditions", json=body, headers=AUTH) as resp:
        error = await resp.json()
        assert resp.status == 400 and error["parameter"] == parameter, error
    async with client.post("/api/v1/road-conditions", json={**SECTION, "level": "C2"}) as resp:
        assert resp.status == 401
