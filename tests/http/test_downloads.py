"""Yearly bulk files over real HTTP: listed with stable URLs, streamed in batches,
CSV that parses (formula cells neutralised) and Parquet that reads back with the
same rows, every value with its coverage, a dictionary covering every column,
and ETags that give 304 until the year's data change."""

from __future__ import annotations

import csv
import io
import json
import typing
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import geopandas
import pandas
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely.geometry
from aiohttp.test_utils import TestClient, TestServer

from feed.config import Config, SourceConfig
from feed.http import api
from feed.http.app import build_app
from feed.model import ChannelRecord, EventRecord, Geometry, Quality, SiteRecord
from feed.publish.publisher import FeedPublisher
from feed.store import downloads, yearly_files
from feed.store.storage import Storage

PARIS = ZoneInfo("Europe/Paris")
CONFIG = Config(sources=[SourceConfig(id="cnt", kind="comptage-mobilites", url="http://127.0.0.1:9/cnt")])
START = datetime(2024, 12, 30, tzinfo=PARIS)  # data over the turn of the year: 2024 and 2025
HOURS = 24 * 5


class NoFeeds(FeedPublisher):
    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


@dataclass(repr=False)
class Env:
    client: TestClient
    storage: Storage
    rows: list[tuple]
    ids: dict[str, int]


async def seed(storage: Storage) -> tuple[list[tuple], dict[str, int]]:
    await storage.ensure_source("cnt", "comptage-mobilites", "http://127.0.0.1:9/cnt")
    await storage.upsert_sites(
        "cnt",
        [
            SiteRecord(external_id="S1", name="RD613 Montbazin", road="RD613", insee="34165", lon=3.69, lat=43.51),
            SiteRecord(external_id='=HYPERLINK("http://x")', name="@SUM(A1)", road="-12", lon=3.7, lat=43.6),
            SiteRecord(external_id="S3", name='Quote "and", comma', road="+RD 5", lon=3.8, lat=43.6),
        ],
    )
    await storage.upsert_channels(
        "cnt",
        [
            ChannelRecord(
                site_external_id="S1",
                external_id="S1-N",
                direction="N",
                direction_name="vers Béziers",
                vehicle_class="light",
                time_step=3600,
            ),
            ChannelRecord(
                site_external_id="S1", external_id="S1-S", direction="S", vehicle_class="heavy", time_step=3600
            ),
            ChannelRecord(
                site_external_id='=HYPERLINK("http://x")', external_id="E-1", direction="=1+1", time_step=900
            ),
            ChannelRecord(site_external_id="S3", external_id="S3-1", direction="-", time_step=3600),
        ],
    )
    ids = await storage.channel_ids("cnt")
    rows = []
    for name, step in (("S1-N", 3600), ("S1-S", 3600), ("E-1", 900), ("S3-1", 3600)):
        for k in range(HOURS * 3600 // step):
            start = (START + timedelta(seconds=k * step)).astimezone(UTC)
            if name == "S1-S" and k % 24 < 3:
                continue  # three hours missing every day
            quality = "estimated" if k % 10 == 0 else "observed"
            rows.append((ids[name], start, step, 10 + k % 13, 60.0 + k % 5, None, quality))
    await storage.ingest_measurements(rows)
    t0 = datetime(2025, 1, 2, 9, tzinfo=PARIS)
    base = dict(
        type="roadworks",
        road="RD613",
        geometry=Geometry(type="Point", coordinates=[3.69, 43.51]),
        actual_start=t0,
        descriptions={"fr": '=danger, "travaux"\nsur 2 lignes'},
    )
    line = Geometry(type="LineString", coordinates=[[3.69, 43.51], [3.7, 43.52]])
    await storage.upsert_events(
        "cnt",
        [
            EventRecord(external_id="w1", **base),
            EventRecord(external_id="w2", **{**base, "type": "accident", "geometry": line}),
            EventRecord(external_id="w3", **{**base, "geometry": None}),
        ],
        seen_at=t0,
    )
    await storage.upsert_events(
        "cnt", [EventRecord(external_id="w1", severity="high", **base)], seen_at=t0 + timedelta(hours=1)
    )
    return rows, ids


@pytest.fixture(scope="module")
async def env(server: Any) -> AsyncIterator[Env]:
    storage = await Storage.open(server.new_database())
    try:
        rows, ids = await seed(storage)
        app = build_app(CONFIG, storage, publisher=NoFeeds(storage, CONFIG), routes=[api.api_routes])
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        try:
            yield Env(client, storage, rows, ids)
        finally:
            await client.close()
    finally:
        await storage.close()


async def fetch(client: TestClient, path: str, headers: dict[str, str] | None = None, status: int = 200):
    response = await client.get(path, headers={"Accept-Encoding": "identity", **(headers or {})})
    body = await response.read()
    assert response.status == status, body[:300]
    return response, body


def read_csv(body: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body.decode())))


async def test_index_lists_years_files_dictionary_and_licence(env: Env):
    doc = json.loads((await fetch(env.client, "/api/v1/downloads"))[1])
    assert [y["year"] for y in doc["years"]] == [2024, 2025]
    files = doc["years"][1]["files"]
    for name in (
        "hourly.csv",
        "hourly.parquet",
        "daily.csv",
        "daily.parquet",
        "events.csv",
        "events.parquet",
        "dictionary.json",
    ):
        assert files[name] == f"/api/v1/downloads/2025/{name}"
    assert doc["dictionary"] == "/api/v1/downloads/dictionary.json"
    assert doc["licence"]["name"] == CONFIG.publication.licence and doc["method"]["coverage"]


async def test_dictionary_describes_every_column_of_every_file(env: Env):
    doc = json.loads((await fetch(env.client, "/api/v1/downloads/dictionary.json"))[1])
    assert doc["licence"]["url"] == CONFIG.publication.licence_url
    described = {f["name"]: f for f in doc["files"]}
    for table in ("hourly", "daily", "events", "sites"):
        _, body = await fetch(env.client, f"/api/v1/downloads/2025/{table}.csv")
        header = body.decode().splitlines()[0].split(",")
        columns = described[table]["columns"]
        assert [c["field"] for c in columns] == header
        assert all(c["meaning"] and "unit" in c and c["type"] for c in columns)
    same = json.loads((await fetch(env.client, "/api/v1/downloads/2025/dictionary.json"))[1])
    assert same == doc


async def test_dictionary_gives_formulas_units_quality_and_direction_labels(env: Env):
    """Every unit a column uses is explained; every quality a stored interval can have and every direction a
    file holds has a meaning (directions in English and French); the annual figures have formulas."""
    doc = json.loads((await fetch(env.client, "/api/v1/downloads/dictionary.json"))[1])
    used = {c["unit"] for f in doc["files"] for c in f["columns"] if c["unit"]}
    assert used <= set(doc["units"]) and all(doc["units"].values())
    assert set(typing.get_args(Quality)) <= set(doc["quality"])
    for name in ("TMJA", "TMJO", "heavy_share", "coverage", "site_total(d)", "valid day"):
        assert doc["formulas"][name]
    assert "/ number of valid days" in doc["formulas"]["TMJA"] and "holidays" in doc["formulas"]["TMJO"]
    compass = doc["directions"]["counts"]["codes"]
    events = doc["directions"]["events"]["codes"]
    assert all(
        label["en"] and label["fr"].startswith(("vers", "les", "sens"))
        for label in [*compass.values(), *events.values()]
    )
    assert set(compass) == {"N", "NE", "E", "SE", "S", "SW", "W", "NW"} and set(events) == {
        "both",
        "positive",
        "negative",
    }
    stored = {r["direction"] for r in read_csv((await fetch(env.client, "/api/v1/downloads/2025/sites.csv"))[1])}
    assert {"N", "S"} <= stored  # the compass codes the files hold have their labels
    sites = next(f for f in doc["files"] if f["name"] == "sites")
    days = next(c for c in sites["columns"] if c["field"] == "days_with_data")
    assert "not a coverage" in days["meaning"] and "coverage of the year" not in days["meaning"]


@pytest.mark.parametrize("name", ["hourly", "events"])
async def test_every_time_is_followed_by_the_same_instant_in_utc(env: Env, name: str):
    """Local times change offset with DST; each is followed by its UTC twin (Z), which pandas reads as UTC
    instants without utc=True, in the CSV and as UTC timestamps in Parquet."""
    table = yearly_files.TABLES[name]
    pairs = [
        (a.name, b.name) for a, b in pairwise(table.columns) if a.type == "timestamp" and b.type == "timestamp_utc"
    ]
    assert len(pairs) == sum(c.type == "timestamp" for c in table.columns) > 0
    body = (await fetch(env.client, f"/api/v1/downloads/2025/{name}.csv"))[1]
    rows = read_csv(body)
    frame = pandas.read_csv(io.BytesIO(body), keep_default_na=False)
    parquet = pq.read_table(io.BytesIO((await fetch(env.client, f"/api/v1/downloads/2025/{name}.parquet"))[1]))
    assert any(r[local] for r in rows for local, _ in pairs)
    for local, utc in pairs:
        for r in rows:
            assert (r[utc] == "") == (r[local] == "")
            if r[local]:
                assert r[utc].endswith("Z") and datetime.fromisoformat(r[utc]) == datetime.fromisoformat(r[local])
        if any(r[utc] for r in rows):
            parsed = pandas.to_datetime(frame[utc].replace("", None))
            assert isinstance(parsed.dtype, pandas.DatetimeTZDtype) and str(parsed.dtype.tz) == "UTC"
        assert parquet.schema.field(utc).type == pa.timestamp("ms", tz="UTC")
        assert parquet.column(utc).to_pylist() == parquet.column(local).to_pylist()


@pytest.mark.parametrize("name", ["hourly", "daily", "sites"])
async def test_files_give_each_channels_direction_name_when_its_source_names_it(env: Env, name: str):
    rows = read_csv((await fetch(env.client, f"/api/v1/downloads/2025/{name}.csv"))[1])
    names = {(r["direction"], r["direction_name"]) for r in rows if r["channel_id"]}
    assert ("N", "vers Béziers") in names and ("S", "") in names
    table = pq.read_table(io.BytesIO((await fetch(env.client, f"/api/v1/downloads/2025/{name}.parquet"))[1]))
    assert table.column("direction_name").to_pylist() == [r["direction_name"] or None for r in rows]


def recompute_daily(rows: list[tuple]) -> dict[tuple[int, str], tuple[int, int]]:
    """(channel, local day) -> (count, present intervals) from the raw rows."""
    out: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])
    for cid, start, _l, count, _s, _o, quality in rows:
        if count is not None and quality in ("observed", "estimated"):
            a = out[(cid, start.astimezone(PARIS).date().isoformat())]
            a[0] += count
            a[1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


async def test_daily_csv_equals_the_raw_rows_with_coverage_on_every_value(env: Env):
    response, body = await fetch(env.client, "/api/v1/downloads/2025/daily.csv")
    assert response.content_type == "text/csv"
    assert 'filename="roadfeed_2025_daily.csv"' in response.headers["Content-Disposition"]
    assert response.headers.get("Transfer-Encoding") == "chunked"  # streamed, not built whole
    rows = read_csv(body)
    want = recompute_daily(env.rows)
    assert len(rows) == sum(1 for (_c, d) in want if d.startswith("2025"))
    for r in rows:
        count, present = want[(int(r["channel_id"]), r["day"])]
        assert int(r["count"]) == count and int(r["intervals_present"]) == present
        expected = 24 * 3600 // (900 if r["channel_id"] == str(env.ids["E-1"]) else 3600)
        assert int(r["intervals_expected"]) == expected
        assert float(r["coverage"]) == present / expected
        assert r["estimated_share"] != ""
    assert [(int(r["site_id"]), int(r["channel_id"]), r["day"]) for r in rows] == sorted(
        (int(r["site_id"]), int(r["channel_id"]), r["day"]) for r in rows
    )
    s1_south = [r for r in rows if r["channel_id"] == str(env.ids["S1-S"])]
    assert {r["coverage"] for r in s1_south} == {str(21 / 24)}


async def test_hourly_parquet_reads_back_with_the_csv_rows(env: Env):
    _, csv_body = await fetch(env.client, "/api/v1/downloads/2025/hourly.csv")
    rows = read_csv(csv_body)
    response, body = await fetch(env.client, "/api/v1/downloads/2025/hourly.parquet")
    assert response.content_type == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(body))
    assert table.column_names == list(rows[0])
    assert table.num_rows == len(rows) == 3 * (HOURS - 24 * 2) - 3 * 3 + (HOURS - 24 * 2)
    assert table.schema.field("period_start").type == pa.timestamp("ms", tz="Europe/Paris")
    assert table.schema.field("count").type == pa.int64() and table.schema.field("coverage").type == pa.float64()
    metadata = pq.read_metadata(io.BytesIO(body)).metadata
    assert metadata[b"licence"] == CONFIG.publication.licence.encode()
    assert table.schema.field("period_utc").type == pa.timestamp("ms", tz="UTC")
    for r, p in zip(rows, table.to_pylist(), strict=True):
        assert p["period_start"].astimezone(PARIS).isoformat() == r["period_start"]
        assert p["period_utc"] == p["period_start"] and r["period_utc"].endswith("Z")
        assert datetime.fromisoformat(r["period_utc"]) == datetime.fromisoformat(r["period_start"])
        assert p["count"] == int(r["count"]) and p["coverage"] == float(r["coverage"])
        assert p["speed"] == float(r["speed"]) and p["intervals_expected"] == int(r["intervals_expected"])
        assert p["site_external_id"] == r["site_external_id"].removeprefix("'")
    quarter = [p for p in table.to_pylist() if p["channel_id"] == env.ids["E-1"]]
    assert quarter and all(p["intervals_expected"] == 4 for p in quarter)
    first = datetime(2025, 1, 1, tzinfo=PARIS)
    assert min(p["period_start"] for p in table.to_pylist()) == first


async def test_csv_cells_never_run_as_formulas(env: Env):
    for name in ("hourly.csv", "daily.csv", "sites.csv"):
        rows = read_csv((await fetch(env.client, f"/api/v1/downloads/2025/{name}"))[1])
        evil = [r for r in rows if "HYPERLINK" in r["site_external_id"]]
        assert evil and all(r["site_external_id"] == '\'=HYPERLINK("http://x")' for r in evil)
        assert all(r["direction"] == "'=1+1" for r in evil)
        assert {r["road"] for r in evil} == {"-12"}  # a number stays a number
        plus = [r for r in rows if r["site_external_id"] == "S3"]
        assert plus and {r["road"] for r in plus} == {"'+RD 5"} and {r["direction"] for r in plus} == {"'-"}
    sites = read_csv((await fetch(env.client, "/api/v1/downloads/2025/sites.csv"))[1])
    assert {r["name"] for r in sites} >= {"'@SUM(A1)", 'Quote "and", comma'}
    events = read_csv((await fetch(env.client, "/api/v1/downloads/2025/events.csv"))[1])
    assert all(json.loads(r["descriptions"])["fr"].startswith("=danger") for r in events)  # JSON text: no formula
    assert yearly_files.neutralise("=1+1") == "'=1+1" and yearly_files.neutralise("-3.5e2") == "-3.5e2"
    assert yearly_files.neutralise("@x") == "'@x" and yearly_files.neutralise("\tx") == "'\tx"


async def test_events_files_hold_one_row_per_version(env: Env):
    rows = read_csv((await fetch(env.client, "/api/v1/downloads/2025/events.csv"))[1])
    assert [(r["event_id"], r["version"], r["change"]) for r in rows] == [
        ("cnt:w1", "1", "created"),
        ("cnt:w1", "2", "updated"),
        ("cnt:w2", "1", "created"),
        ("cnt:w3", "1", "created"),
    ]
    assert rows[1]["severity"] == "high" and rows[0]["severity"] == "unknown"
    assert rows[0]["actual_start"] == "2025-01-02T09:00:00+01:00"
    assert json.loads(rows[0]["geometry"]) == {"type": "Point", "coordinates": [3.69, 43.51]}
    assert json.loads(rows[0]["descriptions"])["fr"].endswith("sur 2 lignes")
    table = pq.read_table(io.BytesIO((await fetch(env.client, "/api/v1/downloads/2025/events.parquet"))[1]))
    assert table.column("event_id").to_pylist() == ["cnt:w1", "cnt:w1", "cnt:w2", "cnt:w3"]
    assert table.column("descriptions").to_pylist()[0] == rows[0]["descriptions"]
    assert table.column("actual_end").to_pylist() == [None] * 4
    empty = read_csv((await fetch(env.client, "/api/v1/downloads/2024/events.csv"))[1])
    assert empty == []


async def test_batches_stream_as_row_groups_with_the_same_content(env: Env, monkeypatch: pytest.MonkeyPatch):
    _, whole_csv = await fetch(env.client, "/api/v1/downloads/2025/hourly.csv")
    _, whole_parquet = await fetch(env.client, "/api/v1/downloads/2025/hourly.parquet")
    monkeypatch.setattr(downloads, "BATCH_ROWS", 30)
    _, small_csv = await fetch(env.client, "/api/v1/downloads/2025/hourly.csv")
    _, small_parquet = await fetch(env.client, "/api/v1/downloads/2025/hourly.parquet")
    assert small_csv == whole_csv
    assert pq.read_metadata(io.BytesIO(whole_parquet)).num_row_groups == 1
    assert pq.read_metadata(io.BytesIO(small_parquet)).num_row_groups > 3
    assert pq.read_table(io.BytesIO(small_parquet)).equals(pq.read_table(io.BytesIO(whole_parquet)))


async def test_etag_gives_304_until_the_years_data_change(env: Env):
    paths = {name: f"/api/v1/downloads/2025/{name}" for name in ("hourly.csv", "daily.parquet", "events.csv")}
    tags = {}
    for name, path in paths.items():
        response, _ = await fetch(env.client, path)
        tags[name] = response.headers["ETag"]
        identity = {"Accept-Encoding": "identity"}
        head = await env.client.head(path, headers={"If-None-Match": tags[name], **identity})
        assert head.status == 304
        head = await env.client.head(path, headers=identity)
        assert head.status == 200 and head.headers["ETag"] == tags[name] and not await head.read()
        await fetch(env.client, path, {"If-None-Match": tags[name]}, status=304)
    other = (await fetch(env.client, "/api/v1/downloads/2024/hourly.csv"))[0].headers["ETag"]

    # One corrected hour in 2025 changes the 2025 count files, not events nor 2024.
    cid = env.ids["S1-N"]
    hour = datetime(2025, 1, 2, 10, tzinfo=PARIS).astimezone(UTC)
    await env.storage.ingest_measurements([(cid, hour, 3600, 99, 60.0, None, "observed")])  # 999: a spike
    for name, path in paths.items():
        response, body = await fetch(
            env.client, path, {"If-None-Match": tags[name]}, status=304 if name == "events.csv" else 200
        )
        if name == "hourly.csv":
            assert any(r["count"] == "99" for r in read_csv(body))
    assert (await fetch(env.client, "/api/v1/downloads/2024/hourly.csv"))[0].headers["ETag"] == other

    await env.storage.upsert_events(
        "cnt",
        [
            EventRecord(
                external_id="w2", type="accident", status="ended", actual_start=datetime(2025, 1, 2, 9, tzinfo=PARIS)
            )
        ],
        seen_at=datetime(2025, 1, 3, tzinfo=PARIS),
    )
    await fetch(env.client, paths["events.csv"], {"If-None-Match": tags["events.csv"]}, status=200)


async def test_gzip_is_offered_for_csv(env: Env):
    plain = (await fetch(env.client, "/api/v1/downloads/2025/daily.csv"))[1]
    response = await env.client.get("/api/v1/downloads/2025/daily.csv", headers={"Accept-Encoding": "gzip"})
    assert response.headers["Content-Encoding"] == "gzip" and response.headers["ETag"].endswith('-gzip"')
    assert await response.read() == plain  # the client decompresses


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/api/v1/downloads/1999/hourly.csv", "year"),
        ("/api/v1/downloads/20x5/hourly.csv", "year"),
        ("/api/v1/downloads/2025/hourly.xlsx", "name"),
        ("/api/v1/downloads/2025/monthly.csv", "name"),
    ],
)
async def test_unknown_years_and_files_are_404(env: Env, path: str, parameter: str):
    doc = json.loads((await fetch(env.client, path, status=404))[1])
    assert doc["error"] == "not_found" and doc["parameter"] == parameter


@pytest.mark.parametrize(("table", "kinds"), [("events", {"Point", "LineString"}), ("sites", {"Point"})])
async def test_parquet_locations_are_geoparquet_read_back_as_geometry(env: Env, table: str, kinds: set[str]):
    """GeoPandas reads the geometry column as geometries equal to the CSV's GeoJSON."""
    csv_rows = read_csv((await fetch(env.client, f"/api/v1/downloads/2025/{table}.csv"))[1])
    body = (await fetch(env.client, f"/api/v1/downloads/2025/{table}.parquet"))[1]
    geo = json.loads(pq.read_metadata(io.BytesIO(body)).metadata[b"geo"])
    assert geo["primary_column"] == "geometry" and geo["columns"]["geometry"]["encoding"] == "WKB"
    assert set(geo["columns"]["geometry"]["geometry_types"]) == kinds
    frame = geopandas.read_parquet(io.BytesIO(body))
    assert isinstance(frame, geopandas.GeoDataFrame) and frame.geometry.name == "geometry"
    assert frame.crs is not None and frame.crs.equals("OGC:CRS84")
    got = list(frame.geometry)
    want = [
        None if r["geometry"] in ("", "null") else shapely.geometry.shape(json.loads(r["geometry"])) for r in csv_rows
    ]
    assert [g is None for g in got] == [w is None for w in want], (got, want)
    assert all(g.equals(w) for g, w in zip(got, want, strict=True) if w is not None)
    assert {g.geom_type for g in got if g is not None} == kinds
    if table == "events":
        assert None in want  # an event without a location stays a row, with no geometry
    else:
        assert all(g.x == float(r["lon"]) and g.y == float(r["lat"]) for g, r in zip(got, csv_rows, strict=True))


@pytest.mark.parametrize("name", ["hourly.csv", "daily.csv", "sites.csv"])
async def test_csv_decimal_columns_are_typed_as_decimals_by_readers_that_guess(env: Env, name: str, tmp_path):
    """Whole ratios are written 1.0 / 0.0, so DuckDB and pandas type every float column as a float."""
    body = (await fetch(env.client, f"/api/v1/downloads/2025/{name}"))[1]
    table = yearly_files.TABLES[name.removesuffix(".csv")]
    floats = [c.name for c in table.columns if c.type == "float64"]
    assert floats
    frame = pandas.read_csv(io.BytesIO(body))
    for column in floats:
        assert frame[column].dtype == "float64", (column, frame[column].dtype)
    path = tmp_path / name
    path.write_bytes(body)
    with duckdb.connect() as db:  # read_csv is DuckDB's own, no extension
        types = {row[0]: row[1] for row in db.execute(f"DESCRIBE SELECT * FROM read_csv('{path}')").fetchall()}
    assert {column: types[column] for column in floats} == {column: "DOUBLE" for column in floats}
    rows = read_csv(body)
    for column in floats:
        assert all("." in r[column] for r in rows if r[column] != ""), column
    if name == "hourly.csv":  # one offset all year: instants without utc=True
        dtype = pandas.to_datetime(frame["period_utc"]).dtype
        assert isinstance(dtype, pandas.DatetimeTZDtype) and str(dtype.tz) == "UTC"
        assert types["period_utc"] == "TIMESTAMP WITH TIME ZONE"
    if name == "hourly.csv":  # whole ratios are there, written as decimals
        assert {"1.0", "0.0"} <= {r["estimated_share"] for r in rows} | {r["coverage"] for r in rows}
