"""Markings take effect: a counter marked faulty over a period leaves those intervals
out of every aggregate (counts, the annual table) with coverage lowered and the
reason listed, and removing the marking restores everything exactly; a road marked
closed becomes a closure in every live feed, ended when the marking goes. Periods
are generated over sub-hourly and hourly channels alike."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents_support import load_simulated_roads, until_in_feed
from feed.config import Config, PublicationConfig, ServerConfig
from feed.http.agents import create_token
from feed.http.app import build_app
from feed.http.context import CONTEXT
from feed.model import ChannelRecord, SiteRecord
from feed.store.storage import Storage

PARIS = ZoneInfo("Europe/Paris")
DAY0 = datetime(2025, 7, 1, tzinfo=PARIS)
DAYS = 4
STEPS = {"S1-N": 900, "S1-S": 3600}  # a sub-hourly channel (hourly rollup) and an hourly one (raw rows)


def count_of(start: datetime) -> int:
    """Distinct counts per day and hour, so that leaving any interval out shows."""
    local = start.astimezone(PARIS)
    return local.day * 100 + local.hour


@pytest.fixture
async def env(storage: Storage, db_url: str) -> AsyncIterator[tuple[TestClient, dict[str, str], int, list[Any]]]:
    await load_simulated_roads(storage)
    await storage.ensure_source("cnt", "opendatasoft", "http://127.0.0.1:9/cnt")
    await storage.upsert_sites(
        "cnt",
        [SiteRecord(external_id="S1", name="RD613 Montbazin", road="RD613", pr=12, abscissa=250, lon=3.69, lat=43.51)],
    )
    await storage.upsert_channels(
        "cnt",
        [
            ChannelRecord(site_external_id="S1", external_id=c, direction=c[-1], time_step=step)
            for c, step in STEPS.items()
        ],
    )
    ids = await storage.channel_ids("cnt")
    rows = []
    for name, step in STEPS.items():
        t = DAY0
        while t < DAY0 + timedelta(days=DAYS):
            rows.append((ids[name], t, step, count_of(t), None, None, "observed"))
            t += timedelta(seconds=step)
    await storage.ingest_measurements(rows)
    site_id = (await storage.site_ids("cnt", ["S1"]))["S1"]
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO agents (username, role, password_hash) VALUES ('eddie', 'editor', 'x')")
        token = create_token(conn, "eddie")
    config = Config(server=ServerConfig(rate_limit_per_minute=0), publication=PublicationConfig(bbox=(-5, 41, 10, 52)))
    app = build_app(config, storage)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        assert await app[CONTEXT].publisher.wait_ready(30)
        yield client, {"Authorization": f"Bearer {token}"}, site_id, rows
    finally:
        await client.close()


async def daily(client: TestClient, site_id: int) -> dict[str, tuple[int, float]]:
    async with client.get(f"/api/v1/sites/{site_id}/counts?from=2025-07-01&to=2025-07-05&step=day") as resp:
        doc = await resp.json()
        assert resp.status == 200, doc
    return {p["period"]: (p["count"], p["coverage"]) for p in doc["points"]}


async def annual(client: TestClient) -> dict[str, Any]:
    async with client.get("/api/v1/annual?year=2025&threshold=0.5") as resp:
        return (await resp.json())["rows"][0]


def expected_daily(rows: list[Any], start: datetime, end: datetime) -> dict[str, tuple[int, float]]:
    out: dict[str, list[int]] = {}
    for _, t, _step, count, *_ in rows:
        day = t.astimezone(PARIS).date().isoformat()
        kept = not (start <= t < end)
        acc = out.setdefault(day, [0, 0, 0])
        acc[0] += count if kept else 0
        acc[1] += kept  # coverage counts intervals: present / expected, over the channels
        acc[2] += 1
    # a day without any valid interval has no count (not zero)
    return {d: (c if present else None, present / total) for d, (c, present, total) in out.items()}


_quarters = st.integers(0, DAYS * 96 - 1).map(lambda q: DAY0 + timedelta(minutes=15 * q))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(period=st.tuples(_quarters, st.integers(1, 2 * 96)).map(lambda p: (p[0], p[0] + timedelta(minutes=15 * p[1]))))
async def test_a_faulty_counter_leaves_the_aggregates_and_comes_back(
    env: tuple[TestClient, dict[str, str], int, list[Any]], period: tuple[datetime, datetime]
) -> None:
    client, auth, site_id, rows = env
    before = await daily(client, site_id)
    assert before == expected_daily(rows, DAY0, DAY0)  # the seed, as stored
    table = await annual(client)
    start, end = period
    body = {
        "kind": "counter_faulty",
        "site_id": site_id,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "comment": "boucle arrachée",
    }
    async with client.post("/api/v1/markings", json=body, headers=auth) as resp:
        marking = await resp.json()
        assert resp.status == 201, marking
    try:
        assert marking["author"] == "eddie"
        # intervals that start in [from, to) are left out (an hourly channel's whole hour)
        assert await daily(client, site_id) == expected_daily(rows, start, end)
        async with client.get(f"/api/v1/markings?site_id={site_id}") as resp:
            listed = (await resp.json())["markings"]
        assert [(m["id"], m["comment"]) for m in listed] == [(marking["id"], "boucle arrachée")]  # the reason
    finally:
        async with client.delete(f"/api/v1/markings/{marking['id']}", headers=auth) as resp:
            assert resp.status == 200
    assert await daily(client, site_id) == before  # reversible, exactly
    assert await annual(client) == table


async def test_the_annual_table_changes_with_a_faulty_day(env: tuple[TestClient, dict[str, str], int, list[Any]]):
    client, auth, site_id, _ = env
    table = await annual(client)
    assert table["days_valid"] == DAYS
    body = {"kind": "counter_faulty", "site_id": site_id, "from": "2025-07-02", "to": "2025-07-03"}
    async with client.post("/api/v1/markings", json=body, headers=auth) as resp:
        assert resp.status == 201
    marked = await annual(client)
    assert marked["days_valid"] == DAYS - 1 and marked["tmja"] != table["tmja"]


async def test_a_closed_road_is_a_closure_in_every_feed(env: tuple[TestClient, dict[str, str], int, list[Any]]):
    client, auth, _, _ = env
    now = datetime.now(PARIS).replace(microsecond=0)
    body = {
        "kind": "road_closed",
        "road": "RD613",
        "pr_from": 12,
        "pr_to": 14,
        "from": (now - timedelta(hours=1)).isoformat(),
        "to": (now + timedelta(days=1)).isoformat(),
        "comment": "Éboulement",
    }
    async with client.post("/api/v1/markings", json=body, headers=auth) as resp:
        marking = await resp.json()
        assert resp.status == 201, marking
    event_id = marking["event_id"]
    for path in (
        "/feeds/datex2/v3/situations.xml",
        "/feeds/datex2/v2/situations.xml",
        "/feeds/events.geojson",
        "/feeds/wzdx/v4.2/work-zones.geojson",
        "/feeds/waze/cifs.xml",
    ):
        assert "Éboulement".encode() in await until_in_feed(client, path, event_id)
    async with client.delete(f"/api/v1/markings/{marking['id']}", headers=auth) as resp:
        assert resp.status == 200
    await until_in_feed(client, "/feeds/events.geojson", '"ended"')
    async with client.get(f"/api/v1/events/{event_id}") as resp:
        versions = (await resp.json())["versions"]
    assert [(v["change"], v["author"]) for v in versions] == [("created", "eddie"), ("ended", "eddie")]
