"""The simulated Hérault: a pure, seeded model, served over the real protocols and read
back with our real Opendatasoft parser, DATEX II exporters and their schemas."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from lxml import etree

from collectors.opendatasoft_parse import (
    MAX_LIMIT,
    mapping_from_options,
    parse_export_json,
    parse_ods_error,
    parse_records_page,
    records_url,
)
from feed.config import SourceConfig
from feed.model import EventRecord, MeasurementRecord
from feed.simulator.clock import SimClock
from feed.simulator.datasets import COUNTERS_DATASET, EVENTS_DATASET
from feed.simulator.geography import herault_outline, inside_herault
from feed.simulator.server import DEFAULT_HISTORY_DAYS, build_simulator_app, run_simulator, simulator_clock
from feed.simulator.simulation import Simulation, iter_all_counter_records
from feed.simulator.sources import simulator_sources

SCHEMAS = Path(__file__).resolve().parent.parent / "data" / "schemas" / "datex2"
MONDAY = datetime(2026, 6, 22, 4, 0, tzinfo=UTC)  # 06:00 in Montpellier
WINTER = datetime(2026, 1, 12, 4, 0, tzinfo=UTC)
AUTUMN = datetime(2026, 10, 12, 4, 0, tzinfo=UTC)
SIM = Simulation(34)
CLEAN_SITES = [s for s in SIM.sites if s.fault is None and not s.gappy]
RECORDS = f"/api/explore/v2.1/catalog/datasets/{COUNTERS_DATASET}/records"
EVENT_RECORDS = f"/api/explore/v2.1/catalog/datasets/{EVENTS_DATASET}/records"


def site_day(sim: Simulation, site_id: str, day: date, vehicle_class: str | None = None) -> int:
    """Vehicles of one local day at a site, both directions (one class, or both)."""
    site = sim.sites_by_id[site_id]
    start = datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(hours=2)  # local midnight (CEST)
    classes = [vehicle_class] if vehicle_class else ["VL", "PL"]
    return sum(
        sim.count(site_id, d.code, c, start + timedelta(hours=h)) or 0
        for h in range(24)
        for d in site.directions
        for c in classes
    )


def local_hour(sim: Simulation, site_id: str, day: date, hour: int) -> int:
    site = sim.sites_by_id[site_id]
    t = datetime(day.year, day.month, day.day, hour, tzinfo=UTC) - timedelta(hours=2)
    return sum(sim.count(site_id, d.code, c, t) or 0 for d in site.directions for c in ("VL", "PL"))


# ---------------------------------------------------------------- the model


def test_sites_are_real_places_inside_the_outline() -> None:
    assert herault_outline()["properties"]["code"] == "34"
    assert 55 <= len(SIM.sites) <= 65
    assert len({s.id for s in SIM.sites}) == len(SIM.sites)
    assert len(SIM.channels) == 4 * len(SIM.sites)
    roads = {s.road.name for s in SIM.sites}
    assert {"RD613", "RD986", "RD5", "RD612", "RD908", "RD909", "RD32", "RD65", "RD66"} <= roads
    for s in SIM.sites:
        assert inside_herault(s.lon, s.lat), s.id
        assert len(s.insee) == 5 and s.insee.startswith("34"), s.id
        assert 1000 <= s.aadt <= 25000
        assert s.directions[0].code != s.directions[1].code
    assert not inside_herault(3.877, 43.836 + 1)  # far north, in the Cévennes
    assert not inside_herault(3.6, 43.3)  # the sea off Sète


def test_same_seed_same_world_other_seed_other_world() -> None:
    again, other = Simulation(34), Simulation(35)
    hours = [MONDAY + timedelta(hours=h) for h in range(0, 48, 7)]
    keys = [(ch.site.id, ch.direction.code, ch.vehicle_class) for ch in SIM.channels[::9]]
    mine = [SIM.count(*k, h) for k in keys for h in hours]
    assert mine == [again.count(*k, h) for k in keys for h in hours]
    theirs = [other.count(*k, h) for k in keys for h in hours]
    assert sum(a != b for a, b in zip(mine, theirs, strict=True)) > len(mine) // 2

    at = MONDAY + timedelta(days=3)
    listed = [(e.id, e.version, e.current) for e in SIM.events_at(at)]
    assert listed == [(e.id, e.version, e.current) for e in again.events_at(at)]
    assert listed != [(e.id, e.version, e.current) for e in other.events_at(at)]
    # any time range, any order: nothing is stored
    assert SIM.count(*keys[0], hours[3]) == Simulation(34).count(*keys[0], hours[3] + timedelta(minutes=25))


def test_daily_profiles_peak_at_rush_hours_and_sleep_at_night() -> None:
    tuesday = date(2026, 6, 23)
    for s in CLEAN_SITES:
        night = local_hour(SIM, s.id, tuesday, 3)
        assert local_hour(SIM, s.id, tuesday, 8) > 4 * night, s.id
        assert local_hour(SIM, s.id, tuesday, 18) > 4 * night, s.id
    # towards the town in the morning, away from it in the evening (Saint-Clément, RD986)
    site = SIM.sites_by_id["34-RD986-004"]
    inbound = next(d for d in site.directions if d.inbound)
    outbound = next(d for d in site.directions if not d.inbound)
    morning = MONDAY + timedelta(days=1, hours=3)  # 07:00 local
    evening = MONDAY + timedelta(days=1, hours=13)  # 17:00 local
    assert SIM.count(site.id, inbound.code, "VL", morning) > SIM.count(site.id, outbound.code, "VL", morning)
    assert SIM.count(site.id, inbound.code, "VL", evening) < SIM.count(site.id, outbound.code, "VL", evening)


def test_weekdays_busier_than_weekends_with_fewer_lorries() -> None:
    tuesday, sunday = date(2026, 6, 23), date(2026, 6, 28)
    for s in CLEAN_SITES:
        assert site_day(SIM, s.id, tuesday) > site_day(SIM, s.id, sunday), s.id
        assert site_day(SIM, s.id, sunday, "PL") < 0.3 * site_day(SIM, s.id, tuesday, "PL"), s.id


def test_volumes_and_heavy_share_are_realistic() -> None:
    week = [date(2026, 6, 22) + timedelta(days=d) for d in range(7)]
    for s in CLEAN_SITES:
        total = sum(site_day(SIM, s.id, d) for d in week)
        heavy = sum(site_day(SIM, s.id, d, "PL") for d in week)
        assert 1000 * 7 * 0.7 <= total <= 25000 * 7 * 1.4, s.id
        assert 0.04 <= heavy / total <= 0.12, (s.id, heavy / total)


def test_some_counters_have_gaps_and_faults() -> None:
    days = 14
    start = MONDAY - timedelta(days=days)
    missing: Counter[str] = Counter()
    zero_days: set[tuple[str, str]] = set()
    spikes = 0
    per_day: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    records = list(iter_all_counter_records(SIM, start, MONDAY))
    seen = Counter((r["id_site"], r["date_heure"]) for r in records)
    for s in SIM.sites:
        for h in range(days * 24):
            n = seen[(s.id, start + timedelta(hours=h))]
            assert n in (0, 4)
            if n == 0:
                missing[s.id] += 1
    assert set(missing) == {s.id for s in SIM.sites if s.gappy}
    assert all(n < days * 24 * 0.2 for n in missing.values())
    stuck = next(s for s in SIM.sites if s.fault == "stuck")
    spiky = next(s for s in SIM.sites if s.fault == "spike")
    for r in records:
        local_day = (r["date_heure"] + timedelta(hours=2)).date().isoformat()  # CEST
        per_day[(r["id_site"], r["sens"], local_day)].append(r["debit"])
        if r["id_site"] == spiky.id and r["debit"] > 1500:
            spikes += 1
    for (site_id, sens, day), counts in per_day.items():
        if site_id == stuck.id and len(counts) == 48 and sum(counts) == 0:
            zero_days.add((sens, day))
    assert zero_days and {sens for sens, _ in zero_days} == {stuck.directions[1].code}
    assert spikes >= 1
    assert max(r["debit"] for r in records if r["id_site"] != spiky.id) < 2000


def test_events_cover_every_kind_inside_the_outline() -> None:
    kinds: Counter[str] = Counter()
    shapes: Counter[str] = Counter()
    for start in (MONDAY, WINTER, AUTUMN):
        for day in range(0, 28, 3):
            for e in SIM.events_at(start + timedelta(days=day)):
                kinds[e.plan.label] += 1
                shapes[e.plan.geometry.type] += 1
                assert all(inside_herault(lon, lat) for lon, lat in e.plan.geometry.points), e.id
                assert e.current.fr and e.current.en and e.current.fr != e.current.en
                assert [v.at for v in e.plan.versions] == sorted(v.at for v in e.plan.versions)
                assert e.plan.versions[-1].status == "ended"
    assert set(kinds) == {"Travaux", "Accident", "Fermeture", "Neige/Verglas", "Inondation"}
    assert shapes["LineString"] > shapes["Point"] > 0


def test_events_change_and_end_over_time() -> None:
    before = {e.id: e for e in SIM.events_at(MONDAY)}
    after = {e.id: e for e in SIM.events_at(MONDAY + timedelta(hours=36))}
    kept = before.keys() & after.keys()
    assert any(after[i].version > before[i].version for i in kept)
    assert any(before[i].current.status != "ended" and after[i].current.status == "ended" for i in kept)
    assert after.keys() - before.keys()  # new ones
    assert before.keys() - after.keys()  # ended more than 48 h ago: gone
    extended = [e for e in after.values() if len({v.end for v in e.plan.versions if v.status != "ended"}) > 1]
    assert extended  # an extended end, a re-estimated clearance
    plans = SIM.event_plans(MONDAY)  # the month around
    assert sum(len({v.severity for v in p.versions}) > 1 for p in plans) >= 3


def test_clock_runs_at_its_speed_from_the_hour() -> None:
    real = [1000.0]
    clock = SimClock(MONDAY, speed=60, monotonic=lambda: real[0])
    assert clock.now() == MONDAY
    real[0] += 30
    assert clock.now() == MONDAY + timedelta(minutes=30)
    clock.advance(timedelta(hours=2))
    assert clock.now() == MONDAY + timedelta(hours=2, minutes=30)
    default = SimClock()
    assert default.start.minute == default.start.second == default.start.microsecond == 0
    assert abs(default.start - datetime.now(UTC)) < timedelta(hours=1, minutes=1)
    with pytest.raises(ValueError):
        SimClock(MONDAY.replace(tzinfo=None))
    with pytest.raises(ValueError):
        SimClock(MONDAY, speed=-1)


def test_sources_are_valid_config_for_our_collectors() -> None:
    sources = simulator_sources("http://127.0.0.1:8081/", datex2=True)
    assert [s["id"] for s in sources] == ["sim-comptages", "sim-evenements", "sim-datex2"]
    for raw in sources:
        config = SourceConfig.model_validate(raw)
        assert config.url.startswith("http://127.0.0.1:8081")
        if config.kind == "opendatasoft":
            mapping_from_options(config.options)
    assert not SourceConfig.model_validate(sources[2]).enabled  # same events as sim-evenements
    assert len(simulator_sources("http://x")) == 2


# ---------------------------------------------------------------- over HTTP


@pytest.fixture
async def served() -> AsyncIterator[tuple[TestClient, SimClock]]:
    clock = SimClock(MONDAY, speed=0)  # frozen: only advance() moves it
    app = build_simulator_app(seed=34, history_days=0, clock=clock)
    assert simulator_clock(app) is clock
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client, clock


def base_url(client: TestClient) -> str:
    return str(client.make_url("/"))


async def get(client: TestClient, url: str) -> tuple[int, bytes]:
    async with client.session.get(url) as response:
        return response.status, await response.read()


COUNTERS = simulator_sources("http://unused")[0]["options"]
EVENTS = simulator_sources("http://unused")[1]["options"]


async def page_counters(
    client: TestClient,
    cursor: tuple[datetime | None, int],
    pages: int | None,
    out: list[MeasurementRecord],
    extra_where: str | None = None,
) -> tuple[datetime | None, int]:
    """Read counter pages the way the collector does, from `cursor`; the new cursor."""
    mapping = mapping_from_options(COUNTERS)
    watermark, seen = cursor
    while pages is None or pages > 0:
        url = records_url(
            base_url(client),
            COUNTERS_DATASET,
            time_field="date_heure",
            watermark=watermark,
            seen_at_watermark=seen,
            order_by_id=COUNTERS["order_by_id"],
            extra_where=extra_where,
        )
        status, body = await get(client, url)
        assert status == 200, body
        page = parse_records_page(body, mapping)
        assert not page.quarantined
        out.extend(page.measurements)
        watermark, seen = page.cursor_after(watermark, seen)
        pages = None if pages is None else pages - 1
        if page.result_count < MAX_LIMIT:
            break
    return watermark, seen


def truth(start: datetime, end: datetime) -> dict[tuple[str, datetime], int]:
    return {(r["id_canal"], r["date_heure"]): r["debit"] for r in iter_all_counter_records(SIM, start, end)}


async def test_watermark_paging_reads_every_record_exactly_once(served: tuple[TestClient, SimClock]) -> None:
    client, clock = served
    clock.advance(timedelta(hours=3))  # hours 04:00, 05:00 and 06:00 UTC are complete
    read: list[MeasurementRecord] = []
    cursor = await page_counters(client, (None, 0), 4, read)  # part of the second hour
    assert cursor[1] > 0  # stopped among records sharing one hour: the offset is in use
    clock.advance(timedelta(hours=2))  # two more hours published while we page
    cursor = await page_counters(client, cursor, None, read)
    keys = [(m.channel_external_id, m.start) for m in read]
    assert len(keys) == len(set(keys))
    expected = truth(MONDAY, MONDAY + timedelta(hours=5))
    assert {k: m.count for k, m in zip(keys, read, strict=True)} == expected
    assert len(expected) > 5 * 230
    assert all(m.length == 3600 and m.start.utcoffset() is not None for m in read)
    # nothing new until the clock moves; then only the new hour
    more: list[MeasurementRecord] = []
    cursor = await page_counters(client, cursor, None, more)
    assert more == []
    clock.advance(timedelta(hours=1))
    await page_counters(client, cursor, None, more)
    assert {(m.channel_external_id, m.start) for m in more} == set(
        truth(MONDAY + timedelta(hours=5), MONDAY + timedelta(hours=6))
    )


async def test_channels_carry_the_direction_names_the_dataset_gives(served: tuple[TestClient, SimClock]) -> None:
    """The simulator's `libelle_sens` ("vers Sète") reaches every channel as its direction_name, for each code."""
    client, clock = served
    clock.advance(timedelta(hours=1))
    url = records_url(
        base_url(client),
        COUNTERS_DATASET,
        time_field="date_heure",
        watermark=None,
        seen_at_watermark=0,
        order_by_id=COUNTERS["order_by_id"],
    )
    status, body = await get(client, url)
    assert status == 200, body
    page = parse_records_page(body, mapping_from_options(COUNTERS))
    labels = {(s.id, d.code): d.label for s in SIM.sites for d in s.directions}
    assert page.channels and not page.quarantined
    for channel in page.channels:
        assert channel.direction_name == labels[(channel.site_external_id, channel.direction)]
        assert channel.direction_name.startswith("vers ")


async def test_where_and_order_by(served: tuple[TestClient, SimClock]) -> None:
    client, clock = served
    clock.advance(timedelta(hours=4))
    heavy: list[MeasurementRecord] = []
    await page_counters(client, (None, 0), None, heavy, extra_where='categorie = "PL"')
    expected = {k: v for k, v in truth(MONDAY, MONDAY + timedelta(hours=4)).items() if k[0].endswith(":PL")}
    assert {(m.channel_external_id, m.start): m.count for m in heavy} == expected

    where = "date_heure >= date'2026-06-22T05:00:00Z' AND date_heure < date'2026-06-22T07:00:00+00:00'"
    response = await client.get(
        RECORDS,
        params={"where": where, "order_by": "date_heure desc, id_canal desc", "limit": "5", "timezone": "Europe/Paris"},
    )
    body = await response.json()
    assert body["total_count"] == len(truth(MONDAY + timedelta(hours=1), MONDAY + timedelta(hours=3)))
    first = body["results"][0]
    assert first["date_heure"] == "2026-06-22T08:00:00+02:00"
    assert [r["id_canal"] for r in body["results"]] == sorted((r["id_canal"] for r in body["results"]), reverse=True)
    assert set(first) >= {
        "id_site",
        "nom_site",
        "route",
        "sens",
        "categorie",
        "date_heure",
        "debit",
        "vitesse_moyenne",
        "geo_point_2d",
        "insee",
    }

    response = await client.get(
        RECORDS, params={"where": "debit > 1000", "order_by": "debit desc", "limit": "3", "select": "id_canal, debit"}
    )
    body = await response.json()
    assert all(set(r) == {"id_canal", "debit"} for r in body["results"])
    counts = [r["debit"] for r in body["results"]]
    assert counts == sorted(counts, reverse=True) and all(c > 1000 for c in counts)
    assert body["total_count"] == sum(1 for v in truth(MONDAY, MONDAY + timedelta(hours=4)).values() if v > 1000)


@pytest.mark.parametrize(
    ("params", "status", "says"),
    [
        ({"limit": "101"}, 400, "InvalidRESTParameterError"),
        ({"limit": "100", "offset": "9950"}, 400, "offset + limit"),
        ({"limit": "ten"}, 400, "InvalidRESTParameterError"),
        ({"where": "date_heure > date'2026-06-22T04:00:00Z' OR debit > 3"}, 400, "ODSQL query was refused"),
        ({"where": "nope > 3"}, 400, "Unknown field"),
        ({"order_by": "debit sideways"}, 400, "ODSQL"),
        ({"order_by": "geo_point_2d"}, 400, "ODSQL"),
        ({"select": "count(*)"}, 400, "ODSQL"),
        ({"group_by": "route"}, 400, "ODSQL"),
    ],
)
async def test_ods_errors_parse_with_our_parser(
    served: tuple[TestClient, SimClock], params: dict[str, str], status: int, says: str
) -> None:
    client, _ = served
    response = await client.get(RECORDS, params=params)
    assert response.status == status
    message = parse_ods_error(response.status, await response.read())
    assert message.startswith(f"HTTP {status}") and says in message, message


async def test_unknown_dataset_and_api_key() -> None:
    app = build_simulator_app(history_days=0, clock=SimClock(MONDAY, speed=0), api_key="s3cret")
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        response = await client.get(RECORDS)
        assert response.status == 401
        assert "check the API key" in parse_ods_error(401, await response.read())
        assert (await client.get(RECORDS, headers={"Authorization": "Apikey wrong"})).status == 401
        assert (await client.get(RECORDS, headers={"Authorization": "Apikey s3cret"})).status == 200
        assert (await client.get(RECORDS, params={"apikey": "s3cret"})).status == 200
        assert (await client.get("/datex2/v3/situations.xml")).status == 200  # public feeds need no key
        response = await client.get(
            "/api/explore/v2.1/catalog/datasets/nope/records", headers={"Authorization": "Apikey s3cret"}
        )
        assert response.status == 404
        assert "not found" in parse_ods_error(404, await response.read())
        index = await (await client.get("/")).json()  # the index needs no key
        assert index["api_key_required"] is True


async def test_exports_json_streams_the_whole_dataset(served: tuple[TestClient, SimClock]) -> None:
    client, clock = served
    clock.advance(timedelta(hours=3))
    response = await client.get(f"/api/explore/v2.1/catalog/datasets/{COUNTERS_DATASET}/exports/json")
    assert response.status == 200
    assert response.headers["Transfer-Encoding"] == "chunked"
    body = await response.read()
    records = json.loads(body)
    assert len(records) == len(truth(MONDAY, MONDAY + timedelta(hours=3)))
    items = list(parse_export_json(body, mapping_from_options(COUNTERS), chunk_size=4096))
    measures = [i for i in items if isinstance(i, MeasurementRecord)]
    assert len(measures) == len(records)
    count = await (await client.get(RECORDS, params={"limit": "0"})).json()
    assert count == {"total_count": len(records), "results": []}


async def test_events_dataset_through_our_parser(served: tuple[TestClient, SimClock]) -> None:
    client, clock = served
    mapping = mapping_from_options(EVENTS)
    url = f"{base_url(client)}api/explore/v2.1/catalog/datasets/{EVENTS_DATASET}/exports/json"
    statuses: dict[str, set[str]] = defaultdict(set)
    versions: dict[str, list[datetime]] = defaultdict(list)
    for _step in range(6):
        status, body = await get(client, url)
        assert status == 200
        items = list(parse_export_json(body, mapping))
        events = [i for i in items if isinstance(i, EventRecord)]
        assert len(events) == len(items)  # nothing quarantined
        now = clock.now()
        assert {e.external_id for e in events} == {e.id for e in SIM.events_at(now)}
        for e in events:
            assert e.geometry is not None and e.descriptions["fr"] and e.road
            statuses[e.external_id].add(e.status)
            if e.source_updated not in versions[e.external_id]:
                versions[e.external_id].append(e.source_updated)
        assert {e.type for e in events} <= {"roadworks", "accident", "closure", "weather", "obstruction"}
        clock.advance(timedelta(hours=9))
    assert any({"active", "ended"} <= s for s in statuses.values())
    assert any({"planned", "active"} <= s for s in statuses.values())
    assert any(len(v) >= 3 for v in versions.values())

    # the same events, paged by their update time as a records consumer would
    seen: list[str] = []
    watermark, at = None, 0
    while True:
        page_url = records_url(
            base_url(client),
            EVENTS_DATASET,
            time_field="mise_a_jour",
            watermark=watermark,
            seen_at_watermark=at,
            order_by_id="id",
            limit=7,
        )
        status, body = await get(client, page_url)
        page = parse_records_page(body, mapping, now=clock.now())
        seen += [e.external_id for e in page.events]
        watermark, at = page.cursor_after(watermark, at)
        if page.result_count < 7:
            break
    assert sorted(seen) == sorted(e.id for e in SIM.events_at(clock.now()))


async def test_datex_feeds_are_valid_and_conditional(served: tuple[TestClient, SimClock]) -> None:
    client, clock = served
    schemas = {
        "v3": etree.XMLSchema(etree.parse(str(SCHEMAS / "v3.6" / "DATEXII_3_MessageContainer.xsd"))),
        "v2": etree.XMLSchema(etree.parse(str(SCHEMAS / "v2.3" / "DATEXIISchema_2_2_3.xsd"))),
    }
    sit = {"v3": "{http://datex2.eu/schema/3/situation}situation", "v2": "{http://datex2.eu/schema/2/2_0}situation"}
    for version, schema in schemas.items():
        path = f"/datex2/{version}/situations.xml"
        response = await client.get(path)
        assert response.status == 200 and response.content_type == "application/xml"
        doc = etree.fromstring(await response.read())
        assert schema.validate(doc), schema.error_log.last_error
        ids = {s.get("id") for s in doc.iter(sit[version])}
        assert ids == {f"sim:{e.id}" for e in SIM.events_at(clock.now())}
        etag, modified = response.headers["ETag"], response.headers["Last-Modified"]
        assert (await client.get(path, headers={"If-None-Match": etag})).status == 304
        assert (await client.get(path, headers={"If-Modified-Since": modified})).status == 304
        clock.advance(timedelta(seconds=1))  # nothing happens in one simulated second here
        assert (await client.get(path, headers={"If-None-Match": etag})).status == 304
        clock.advance(timedelta(hours=6))
        response = await client.get(path, headers={"If-None-Match": etag})
        assert response.status == 200 and response.headers["ETag"] != etag
        assert schema.validate(etree.fromstring(await response.read()))


async def test_index_describes_datasets_feeds_and_clock(served: tuple[TestClient, SimClock]) -> None:
    client, clock = served
    clock.advance(timedelta(minutes=90))
    index: dict[str, Any] = await (await client.get("/")).json()
    assert index["seed"] == 34
    assert index["clock"]["now"] == "2026-06-22T05:30:00+00:00"
    assert [d["dataset_id"] for d in index["datasets"]] == [COUNTERS_DATASET, EVENTS_DATASET]
    assert index["feeds"]["datex2_v3_situations"].endswith("/datex2/v3/situations.xml")
    assert index["sources"][0]["url"] == base_url(client).rstrip("/")
    info = await (await client.get(f"/api/explore/v2.1/catalog/datasets/{COUNTERS_DATASET}")).json()
    assert {f["name"] for f in info["fields"]} >= {"id_site", "date_heure", "debit", "categorie", "sens"}


async def test_run_simulator_serves_until_cancelled() -> None:
    lines: list[str] = []
    task = asyncio.create_task(run_simulator("127.0.0.1", 0, seed=7, speed=60, announce=lines.append))
    while not lines and not task.done():
        await asyncio.sleep(0.01)
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", lines[0])
    assert match and f"{DEFAULT_HISTORY_DAYS} days of history" in lines[0], lines
    try:
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{match.group(1)}/") as r:
            index = await r.json()
        assert index["seed"] == 7 and index["clock"]["speed"] == 60
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
