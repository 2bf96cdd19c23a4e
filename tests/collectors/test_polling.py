"""Source kinds end to end: a real local HTTP server serves real samples (or hostile
bodies), our fetch + parse + storage path stores them, runs are recorded."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from collectors.fetch import Fetcher, FetchPolicy, retry_delay
from exporters.datex2_v2 import render_situations
from feed.collect.poll import poll_source
from feed.collect.scheduler import Collector
from feed.config import Config, PublicationConfig, SourceConfig
from feed.model import Geometry, StoredEvent
from feed.store.storage import Storage

DATA = Path(__file__).resolve().parents[1] / "data"
NDW = DATA / "datex2" / "nl-ndw-actueel_beeld-situations-messagecontainer.xml"
BISON_SPEEDS = DATA / "datex2" / "fr-bisonfute-tipi-speeds-measureddata-v2.2.xml"
BISON_EVENTS = DATA / "datex2" / "fr-bisonfute-tipi-evenementiel-situation-v2.2.xml"
NPRA_V3 = DATA / "datex2" / "no-npra-situations-messagecontainer-v3.1.xml"
FINTRAFFIC = DATA / "datex2" / "fi-fintraffic-situation-GUID50456943-v3.5-payload.xml"
PARIS = DATA / "opendatasoft" / "comptages-routiers-permanents_records-v2.1_2026-06-21T00.json"
COMPTAGE = DATA / "comptage"

EUROPE = PublicationConfig(bbox=(-10.0, 35.0, 32.0, 71.0))  # the samples come from all over Europe
HERAULT = PublicationConfig()
FAST = FetchPolicy(timeout=2.0, retries=1, backoff_base=0.01, backoff_max=0.05, max_bytes=5_000_000)


class Origin:
    """A local HTTP server whose answer each test sets; it counts requests."""

    def __init__(self) -> None:
        self.respond: Callable[[web.Request], web.StreamResponse] | None = None
        self.requests: list[web.Request] = []
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self.server = TestServer(app, host="127.0.0.1")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        result = self.respond(request)
        return await result if asyncio.iscoroutine(result) else result

    def url(self, path: str = "/feed") -> str:
        return str(self.server.make_url(path))


def conditional(body: bytes, etag: str = '"v1"', content_type: str = "application/xml"):
    def respond(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=body, content_type=content_type, headers={"ETag": etag})

    return respond


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    o = Origin()
    await o.server.start_server()
    yield o
    await o.server.close()


@pytest.fixture
async def fetcher() -> AsyncIterator[Fetcher]:
    async with aiohttp.ClientSession() as session:
        yield Fetcher(session, FAST)


def datex(origin: Origin, source_id: str = "dx", **options) -> SourceConfig:
    return SourceConfig(id=source_id, kind="datex2", url=origin.url(), interval=60, options=options)


async def runs(storage: Storage, source_id: str) -> list[dict]:
    return [
        dict(r)
        for r in await storage.pool.fetch("SELECT * FROM source_runs WHERE source_id = $1 ORDER BY id", source_id)
    ]


async def quarantine(storage: Storage) -> list[dict]:
    return [dict(r) for r in await storage.pool.fetch("SELECT * FROM quarantine ORDER BY id")]


# --- DATEX II on the real samples ----------------------------------------------


async def test_ndw_v3_situations_then_304(storage, origin, fetcher):
    origin.respond = conditional(NDW.read_bytes())
    report = await poll_source(datex(origin), storage, fetcher, EUROPE)
    assert report.stats.error is None and report.stats.counts.new == 11
    events = await storage.events()
    assert len(events) == 11 and {e.source_id for e in events} == {"dx"}
    assert sum(e.type == "closure" for e in events) == 3
    again = await poll_source(datex(origin), storage, fetcher, EUROPE)
    assert again.stats.http_status == 304 and again.stats.counts.new == 0
    assert origin.requests[-1].headers["If-None-Match"] == '"v1"'
    assert [r["records_new"] for r in await runs(storage, "dx")] == [11, 0]
    # A 304 is no snapshot: nothing was ended.
    assert all(e.status != "ended" or e.actual_end for e in await storage.events())
    assert len([e for e in await storage.events() if e.status == "ended"]) == len(
        [e for e in events if e.status == "ended"]
    )


@pytest.mark.parametrize("sample,expected", [(BISON_EVENTS, 1), (NPRA_V3, 3), (FINTRAFFIC, 1)])
async def test_more_real_situation_feeds(storage, origin, fetcher, sample, expected):
    origin.respond = conditional(sample.read_bytes())
    report = await poll_source(datex(origin), storage, fetcher, EUROPE)
    assert report.stats.error is None
    assert len(await storage.events()) == expected


async def test_bison_fute_speeds_become_measurements(storage, origin, fetcher):
    origin.respond = conditional(BISON_SPEEDS.read_bytes())
    report = await poll_source(datex(origin, "tipi"), storage, fetcher, EUROPE, now=datetime(2030, 1, 1, tzinfo=UTC))
    assert report.stats.error is None
    rows = await storage.pool.fetch("SELECT count, speed FROM measurements ORDER BY count")
    assert [(r["count"], r["speed"]) for r in rows] == [(17, 112.0), (24, 85.0)]
    assert await storage.pool.fetchval("SELECT count(*) FROM rollup_daily") == 2


# --- comptage des mobilités and Opendatasoft ------------------------------------


async def test_comptage_mobilites_csv_files(storage, origin, fetcher):
    files = {
        "/site.csv": "site.exemple-valide.csv",
        "/channel.csv": "channel.exemple-valide.csv",
        "/measure.csv": "measure.exemple-valide.csv",
    }
    origin.respond = lambda r: web.Response(body=(COMPTAGE / files[r.path]).read_bytes(), content_type="text/csv")
    source = SourceConfig(
        id="baix",
        kind="comptage-mobilites",
        url=origin.url("/measure.csv"),
        options={"sites_url": origin.url("/site.csv"), "channels_url": origin.url("/channel.csv")},
    )
    report = await poll_source(source, storage, fetcher, EUROPE, now=datetime(2030, 1, 1, tzinfo=UTC))
    assert report.stats.error is None
    assert await storage.pool.fetchval("SELECT external_id FROM sites") == "C01-Baix"
    measured = await storage.pool.fetchval("SELECT count(*) FROM measurements")
    assert measured >= 1
    # Measures of channels the channel file does not describe are quarantined, not lost.
    q = await quarantine(storage)
    assert measured + len(q) == 9
    assert all("unknown channel" in r["reason"] for r in q)


async def test_opendatasoft_counters_page_by_watermark(storage, origin, fetcher):
    records = json.loads(PARIS.read_bytes())

    def respond(request: web.Request) -> web.Response:
        assert request.path.endswith("/catalog/datasets/comptages-routiers-permanents/records")
        where = request.query.get("where", "")
        offset = int(request.query.get("offset", 0))
        page = [] if "t_1h >" in where and "t_1h >=" not in where else records[offset : offset + 100]
        return web.json_response({"total_count": len(records), "results": page})

    origin.respond = respond
    source = SourceConfig(
        id="paris",
        kind="opendatasoft",
        url=origin.url("/"),
        options={
            "dataset": "comptages-routiers-permanents",
            "dataset_type": "counters",
            "mapping": {
                "site_id": "iu_ac",
                "time": "t_1h",
                "count": "q",
                "occupancy": "k",
                "site_name": "libelle",
                "quality": "etat_barre",
                "quality_map": {"Invalide": "invalid"},
            },
        },
    )
    report = await poll_source(source, storage, fetcher, EUROPE)
    assert report.stats.error is None
    assert await storage.pool.fetchval("SELECT count(*) FROM measurements") == 100
    assert (
        await storage.pool.fetchval(
            "SELECT count FROM measurements m JOIN channels c ON c.id = m.channel_id WHERE c.external_id = '5381'"
        )
        == 4859
    )
    state = await storage.source_state("paris")
    assert json.loads(state.watermark) == {"time": "2026-06-21T00:00:00+02:00", "seen": 100}
    again = await poll_source(source, storage, fetcher, EUROPE)
    assert again.stats.counts.new == 0
    assert "offset=100" in str(origin.requests[-1].url)


async def test_opendatasoft_rate_limit_is_reported(storage, origin, fetcher):
    body = {
        "error_code": "TooManyRequests",
        "message": "Too many requests",
        "reset_time": "2030-01-01T00:00:00Z",
        "call_limit": 5000,
        "limit_time_unit": "day",
    }
    origin.respond = lambda r: web.json_response(body, status=429, headers={"Retry-After": "0"})
    source = SourceConfig(
        id="ods",
        kind="opendatasoft",
        url=origin.url("/"),
        options={"dataset": "x", "dataset_type": "counters", "mapping": {"site_id": "a", "time": "b", "count": "c"}},
    )
    report = await poll_source(source, storage, fetcher, EUROPE)
    assert report.stats.http_status == 429 and "5000" in report.stats.error
    assert len(origin.requests) == FAST.retries + 1
    assert (await storage.source_state("ods")).last_error == report.stats.error


# --- event lifecycle ------------------------------------------------------------


def situation_v2(ids: list[str]) -> bytes:
    """A minimal real-shaped DATEX II v2 snapshot listing the given situation ids."""
    now = datetime(2026, 11, 28, 8, tzinfo=UTC)
    events = [
        StoredEvent(
            id=f"herault:{i}",
            source_id="herault",
            external_id=i,
            version=1,
            type="roadworks",
            status="active",
            severity="medium",
            actual_start=now - timedelta(hours=1),
            road="RD613",
            geometry=Geometry(type="Point", coordinates=[3.7, 43.5]),
            descriptions={"fr": f"Travaux {i}"},
            first_seen=now,
            last_seen=now,
            updated=now,
        )
        for i in ids
    ]
    return render_situations(events, HERAULT, now)


async def test_lifecycle_end_reopen_and_failed_polls_end_nothing(storage, origin, fetcher):
    source = datex(origin, "life")
    origin.respond = conditional(situation_v2(["A", "B"]), '"1"')
    await poll_source(source, storage, fetcher, HERAULT)
    assert {e.external_id: e.status for e in await storage.events()} == {"herault:A": "active", "herault:B": "active"}
    # A failed poll (500s) ends nothing.
    origin.respond = lambda r: web.Response(status=500, text="boom")
    failed = await poll_source(source, storage, fetcher, HERAULT)
    assert failed.stats.error and "HTTP 500" in failed.stats.error
    assert {e.status for e in await storage.events()} == {"active"}
    # A truncated snapshot (only A's part arrived) ends nothing either.
    full = situation_v2(["A", "B"])
    origin.respond = lambda r: web.Response(body=full[: full.index(b"herault:B") - 40], content_type="text/xml")
    cut = await poll_source(source, storage, fetcher, HERAULT)
    assert cut.stats.error and "document refused" in cut.stats.error
    assert {e.status for e in await storage.events()} == {"active"}
    # A complete snapshot without B ends B (kept, with its end time).
    origin.respond = conditional(situation_v2(["A"]), '"2"')
    await poll_source(source, storage, fetcher, HERAULT)
    status = {e.external_id: (e.status, e.actual_end is not None) for e in await storage.events()}
    assert status == {"herault:A": ("active", False), "herault:B": ("ended", True)}
    # B comes back: reopened as a new version.
    origin.respond = conditional(situation_v2(["A", "B"]), '"3"')
    await poll_source(source, storage, fetcher, HERAULT)
    b = next(e for e in await storage.events() if e.external_id == "herault:B")
    assert (b.status, b.version) == ("active", 3)


# --- bad input ------------------------------------------------------------------


async def test_malformed_xml_keeps_the_process_and_records_the_error(storage, origin, fetcher):
    origin.respond = lambda r: web.Response(body=b"<d2LogicalModel><payloadPublication", content_type="text/xml")
    report = await poll_source(datex(origin), storage, fetcher, EUROPE)
    assert report.stats.error and "document refused" in report.stats.error
    assert (await runs(storage, "dx"))[0]["error"] == report.stats.error


@pytest.mark.parametrize(
    "doctype",
    [
        '<!DOCTYPE d2LogicalModel [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>',
        '<!DOCTYPE d2LogicalModel [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>',
    ],
)
async def test_xxe_and_entity_bombs_are_refused(storage, origin, fetcher, doctype):
    doc = BISON_EVENTS.read_bytes().replace(b"<d2LogicalModel", doctype.encode() + b"\n<d2LogicalModel", 1)
    origin.respond = lambda r: web.Response(body=doc, content_type="text/xml")
    report = await poll_source(datex(origin), storage, fetcher, EUROPE)
    assert report.stats.error and "DTD" in report.stats.error
    assert await storage.events() == []
    assert "root:" not in json.dumps(await quarantine(storage), default=str)


async def test_gzip_bomb_and_oversized_bodies_are_cut_off(storage, origin, fetcher):
    bomb = gzip.compress(b"<" + b"a" * 50_000_000)  # 50 MB once inflated, about 50 kB on the wire
    origin.respond = lambda r: web.Response(body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "text/xml"})
    report = await poll_source(datex(origin), storage, fetcher, EUROPE)
    assert "exceeds the limit" in report.stats.error
    origin.respond = lambda r: web.Response(body=b"x" * (FAST.max_bytes + 1), content_type="text/xml")
    report = await poll_source(datex(origin), storage, fetcher, EUROPE)
    assert "exceeds the limit" in report.stats.error


async def test_closed_mid_body_is_retried_then_reported(storage, origin, fetcher):
    async def respond(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "100000", "Content-Type": "text/xml"})
        await resp.prepare(request)
        await resp.write(b"<d2LogicalModel>")
        request.transport.close()
        return resp

    origin.respond = respond
    report = await poll_source(datex(origin), storage, fetcher, EUROPE)
    assert report.stats.error and len(origin.requests) == FAST.retries + 1


async def test_impossible_records_are_quarantined_and_good_ones_stored(storage, origin, fetcher):
    now = datetime(2026, 11, 28, 8, tzinfo=UTC)
    header = "channel_id,counter_id,start_datetime,end_datetime,count\n"
    rows = [
        "C-C-01-Baix,C01,2021-09-07T13:15:00Z,2021-09-07T13:30:00Z,20",  # good
        "C-C-01-Baix,C01,2021-09-07T13:30:00Z,2021-09-07T13:45:00Z,-4",  # negative count
        "C-C-01-Baix,C01,2031-09-07T13:30:00Z,2031-09-07T13:45:00Z,3",  # far in the future
        "C-C-01-Baix,C01,pas une date,2021-09-07T14:00:00Z,3",  # not a time
        "C-C-01-Baix,C01,2021-09-07T14:00:00Z,2021-09-07T14:15:00Z,7",  # good
    ]
    files = {
        "/site.csv": (COMPTAGE / "site.exemple-valide.csv").read_bytes(),
        "/channel.csv": (COMPTAGE / "channel.exemple-valide.csv").read_bytes(),
        "/measure.csv": (header + "\n".join(rows) + "\n").encode("latin-1"),
    }
    origin.respond = lambda r: web.Response(body=files[r.path], content_type="text/csv")
    source = SourceConfig(
        id="baix",
        kind="comptage-mobilites",
        url=origin.url("/measure.csv"),
        options={"sites_url": origin.url("/site.csv"), "channels_url": origin.url("/channel.csv")},
    )
    report = await poll_source(source, storage, fetcher, EUROPE, now=now)
    assert report.stats.error is None
    assert sorted(r["count"] for r in await storage.pool.fetch("SELECT count FROM measurements")) == [7, 20]
    reasons = [r["reason"] for r in await quarantine(storage)]
    assert len(reasons) == 3 and report.stats.quarantined == 3
    assert any("future" in r for r in reasons)
    assert (await runs(storage, "baix"))[0]["records_quarantined"] == 3


async def test_sites_and_events_outside_the_area_are_quarantined(storage, origin, fetcher):
    origin.respond = conditional(NDW.read_bytes())  # the Netherlands, far from Hérault
    report = await poll_source(datex(origin), storage, fetcher, HERAULT)
    assert report.stats.error is None
    kept = await storage.events()
    # Only an event without coordinates cannot be placed, so it cannot be refused either.
    assert all(e.geometry is None for e in kept)
    q = await quarantine(storage)
    assert len(q) + len(kept) == 11 and len(q) >= 9
    assert all("outside the configured area" in r["reason"] for r in q)


async def test_one_hanging_source_does_not_delay_another(storage, origin, fetcher):
    hang = asyncio.Event()

    async def respond(request: web.Request) -> web.Response:
        if request.path == "/hang":
            await hang.wait()
        return web.Response(body=situation_v2(["A"]), content_type="text/xml")

    origin.respond = respond
    config = Config(
        publication=HERAULT,
        sources=[
            SourceConfig(id="slow", kind="datex2", url=origin.url("/hang"), interval=1),
            SourceConfig(id="quick", kind="datex2", url=origin.url("/ok"), interval=1),
        ],
    )
    collector = Collector(config, storage, fetcher)
    collector.start()
    try:
        for _ in range(100):
            await asyncio.sleep(0.1)
            quick = await runs(storage, "quick")
            if len([r for r in quick if r["finished"]]) >= 3:
                break
        quick = [r for r in await runs(storage, "quick") if r["finished"]]
        slow = await runs(storage, "slow")
        # The quick source kept its rhythm while the slow one hung (never overlapping itself).
        assert len(quick) >= 3 and all(r["error"] is None for r in quick)
        gaps = [(b["started"] - a["started"]).total_seconds() for a, b in pairwise(quick)]
        assert max(gaps) < 2.5
        assert sum(r["finished"] is None for r in slow) <= 1
    finally:
        collector.shutdown()
        hang.set()


@pytest.mark.parametrize(
    "sample,events,sites",
    [
        (DATA / "datex2" / "nl-ndw-srti-situation-messagecontainer.xml", 1, 0),
        (DATA / "datex2" / "no-npra-measurementsitetable-weather-v2.xml", 0, 1),
        (DATA / "datex2" / "no-npra-measureddata-weather-v2.xml", 0, 0),
    ],
)
async def test_other_real_publications(storage, origin, fetcher, sample, events, sites):
    origin.respond = conditional(sample.read_bytes())
    report = await poll_source(datex(origin), storage, fetcher, EUROPE)
    assert report.stats.error is None
    assert len(await storage.events()) == events
    assert await storage.pool.fetchval("SELECT count(*) FROM sites") == sites


async def test_lying_encoding_is_refused_with_the_reason(storage, origin, fetcher):
    # Declared UTF-8, written in Latin-1: the accented bytes are not UTF-8.
    doc = BISON_EVENTS.read_bytes().decode("utf-8").encode("latin-1", "replace")
    assert doc != BISON_EVENTS.read_bytes()
    origin.respond = lambda r: web.Response(body=doc, content_type="text/xml")
    report = await poll_source(datex(origin), storage, fetcher, EUROPE)
    assert report.stats.error and "document refused" in report.stats.error
    assert await storage.events() == []


async def test_malformed_json_from_opendatasoft_is_reported(storage, origin, fetcher):
    origin.respond = lambda r: web.Response(
        body=b'{"total_count": 3, "results": [{"a": ', content_type="application/json"
    )
    source = SourceConfig(
        id="ods",
        kind="opendatasoft",
        url=origin.url("/"),
        options={"dataset": "x", "dataset_type": "counters", "mapping": {"site_id": "a", "time": "b", "count": "c"}},
    )
    report = await poll_source(source, storage, fetcher, EUROPE)
    assert report.stats.error and "not valid JSON" in report.stats.error
    assert (await storage.source_state("ods")).watermark is None


async def test_malformed_csv_rows_and_impossible_speeds_are_quarantined(storage, origin, fetcher):
    records = [
        {"iu_ac": "1", "t_1h": "2026-06-21T00:00:00+02:00", "q": 100, "v": 88.0},
        {"iu_ac": "2", "t_1h": "2026-06-21T00:00:00+02:00", "q": 100, "v": 420.0},  # 420 km/h
        {"iu_ac": "3", "t_1h": "2026-06-21T00:00:00+02:00", "q": -5, "v": 50.0},  # negative count
    ]
    origin.respond = lambda r: web.json_response({"total_count": 3, "results": records})
    source = SourceConfig(
        id="ods",
        kind="opendatasoft",
        url=origin.url("/"),
        options={
            "dataset": "x",
            "dataset_type": "counters",
            "mapping": {"site_id": "iu_ac", "time": "t_1h", "count": "q", "speed": "v", "geo_point": None},
        },
    )
    report = await poll_source(source, storage, fetcher, EUROPE)
    assert report.stats.error is None and report.stats.quarantined == 2
    assert await storage.pool.fetchval("SELECT count(*) FROM measurements") == 1
    reasons = " | ".join(r["reason"] for r in await quarantine(storage))
    assert "300" in reasons or "speed" in reasons

    header = "channel_id,counter_id,start_datetime,end_datetime,count\n"
    body = header + 'C-C-01-Baix,C01,2021-09-07T13:15:00Z,2021-09-07T13:30:00Z,20\n"unterminated,quote\nx,y\n'
    files = {
        "/site.csv": (COMPTAGE / "site.exemple-valide.csv").read_bytes(),
        "/channel.csv": (COMPTAGE / "channel.exemple-valide.csv").read_bytes(),
        "/measure.csv": body.encode(),
    }
    origin.respond = lambda r: web.Response(body=files[r.path], content_type="text/csv")
    csv_source = SourceConfig(
        id="baix",
        kind="comptage-mobilites",
        url=origin.url("/measure.csv"),
        options={"sites_url": origin.url("/site.csv"), "channels_url": origin.url("/channel.csv")},
    )
    report = await poll_source(csv_source, storage, fetcher, EUROPE, now=datetime(2030, 1, 1, tzinfo=UTC))
    assert report.stats.error is None and report.stats.quarantined >= 1
    assert (
        await storage.pool.fetchval(
            "SELECT count(*) FROM measurements m JOIN channels c ON c.id = m.channel_id WHERE c.source_id = 'baix'"
        )
        == 1
    )


def test_retry_delay_backs_off_with_jitter_and_obeys_the_server():
    policy = FetchPolicy(backoff_base=1.0, backoff_max=60.0)
    assert [retry_delay(n, policy, rand=lambda: 0.5) for n in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert retry_delay(10, policy, rand=lambda: 0.5) == 60.0
    low, high = retry_delay(2, policy, rand=lambda: 0.0), retry_delay(2, policy, rand=lambda: 0.999)
    assert low == 2.0 and 5.99 < high < 6.0
    assert retry_delay(0, policy, {"Retry-After": "7"}) == 7.0
    assert retry_delay(0, policy, {"Retry-After": "600"}) == 60.0  # capped
    assert 0 <= retry_delay(0, policy, {"X-RateLimit-Reset": "5"}) <= 5
