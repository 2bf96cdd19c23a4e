"""The history API over real HTTP and a real database: sites with filters and
pages, a site's counts (equal to a recomputation from the raw rows, gaps shown,
the same numbers in JSON, CSV and Parquet), limits and errors, the annual table,
events with every version, sources, conditional GET and the statement timeout."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import pandas
import pyarrow.parquet as pq
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from multidict import MultiDict

from feed.config import Config, DatabaseConfig, SourceConfig
from feed.http import api, documents, params
from feed.http.app import build_app
from feed.model import ChannelRecord, EventRecord, Geometry, SiteRecord
from feed.publish.publisher import FeedPublisher
from feed.store import history
from feed.store.storage import RunStats, Storage
from long_mode import examples, seconds

PARIS = ZoneInfo("Europe/Paris")
CONFIG = Config(
    sources=[
        SourceConfig(id="cnt", kind="comptage-mobilites", url="http://127.0.0.1:9/cnt", interval=300),
        SourceConfig(id="cd34", kind="datex2", url="http://127.0.0.1:9/cd34", interval=60),
        SourceConfig(id="idle", kind="datex2", url="http://127.0.0.1:9/idle", interval=120),
    ]
)
SITE_FIELDS = {
    "id",
    "external_id",
    "source",
    "name",
    "road",
    "pr",
    "abscissa",
    "insee",
    "lon",
    "lat",
    "directions",
    "vehicle_classes",
    "channels",
    "first_data",
    "last_data",
}
CHANNEL_FIELDS = {"id", "external_id", "direction", "vehicle_class", "time_step"}
POINT_FIELDS = ["period", "count", "coverage", "estimated_share", "speed", "invalid", "invalid_reasons"]
JULY1 = datetime(2025, 7, 1, tzinfo=PARIS)


class NoFeeds(FeedPublisher):
    """The API needs no live feed: nothing to render or listen to."""

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


# --------------------------------------------------------------------------- data


Row = tuple[int, datetime, int, int | None, float | None, float | None, str]


def s1_rows(ids: dict[str, int]) -> list[Row]:
    """S1: hourly light/heavy N/S channels, July 1-10 2025 (local), with a half-day gap on
    July 5, two estimated hours on July 6 and one 'missing' interval on July 7."""
    rows: list[Row] = []
    for name in ("S1-N-light", "S1-N-heavy", "S1-S-light", "S1-S-heavy"):
        base, speed = (100, 82.0) if name.endswith("light") else (10, 71.0)
        for h in range(24 * 10):
            start = JULY1 + timedelta(hours=h)
            local = start.astimezone(PARIS)
            if local.day == 5 and local.hour < 12:
                continue
            quality = "estimated" if local.day == 6 and local.hour < 2 else "observed"
            count: int | None = base + h % 7
            if local.day == 7 and local.hour == 3 and name == "S1-N-light":
                count, quality = None, "missing"
            rows.append((ids[name], start.astimezone(UTC), 3600, count, speed + h % 3, None, quality))
    return rows


def s2_rows(ids: dict[str, int]) -> list[Row]:
    """S2: two all-vehicle channels at 15 minutes, July 1-3, the south one silent 10:00-12:00 on July 2."""
    rows: list[Row] = []
    for name, count in (("S2-N", 25), ("S2-S", 20)):
        for q in range(96 * 3):
            start = JULY1 + timedelta(minutes=15 * q)
            local = start.astimezone(PARIS)
            if name == "S2-S" and local.day == 2 and 10 <= local.hour < 12:
                continue
            rows.append((ids[name], start.astimezone(UTC), 900, count + q % 4, 90.0, None, "observed"))
    return rows


def event(ext: str, **changes: Any) -> EventRecord:
    fields: dict[str, Any] = dict(
        external_id=ext,
        type="roadworks",
        status="active",
        severity="medium",
        actual_start=datetime(2025, 7, 2, 8, tzinfo=PARIS),
        road="RD613",
        direction="both",
        geometry=Geometry(type="Point", coordinates=[3.69, 43.51]),
        descriptions={"fr": "Travaux"},
    )
    return EventRecord(**{**fields, **changes})


@dataclass
class Seeded:
    ids: dict[str, int]
    rows: list[Row]
    site_ids: dict[str, int]


async def seed(storage: Storage) -> Seeded:
    for s in CONFIG.sources[:2]:
        await storage.ensure_source(s.id, s.kind, s.url)
    sites = [
        SiteRecord(
            external_id="S1",
            name="RD613 Montbazin",
            road="RD613",
            insee="34165",
            lon=3.69,
            lat=43.51,
            metadata={"commune": "Montbazin"},
        ),
        SiteRecord(
            external_id="S2",
            name="RD986 Saint-Gély",
            road="RD 986",
            insee="34255",
            lon=3.80,
            lat=43.69,
            metadata={"commune": "Saint-Gély-du-Fesc"},
        ),
        *[
            SiteRecord(external_id=f"X{i}", name=f"site {i}", road=f"RD{i}", lon=3.0 + i / 100, lat=43.3)
            for i in range(3, 12)
        ],
    ]
    await storage.upsert_sites("cnt", sites)
    await storage.upsert_channels(
        "cnt",
        [
            *[
                ChannelRecord(
                    site_external_id="S1",
                    external_id=f"S1-{d}-{c}",
                    direction=d,
                    vehicle_class=c,
                    direction_name={"N": "vers Montpellier", "S": "vers Sète"}[d],
                    time_step=3600,
                )
                for d in ("N", "S")
                for c in ("light", "heavy")
            ],
            *[
                ChannelRecord(site_external_id="S2", external_id=f"S2-{d}", direction=d, time_step=900)
                for d in ("N", "S")
            ],
        ],
    )
    ids = await storage.channel_ids("cnt")
    rows = s1_rows(ids) + s2_rows(ids)
    await storage.ingest_measurements(rows)
    site_ids = await storage.site_ids("cnt", [s.external_id for s in sites])

    t0 = datetime(2025, 7, 2, 8, tzinfo=PARIS)
    await storage.upsert_events(
        "cd34",
        [
            event("works"),
            event(
                "crash",
                type="accident",
                road="RD2",
                severity="high",
                geometry=Geometry(type="Point", coordinates=[3.9, 43.6]),
                actual_start=t0 + timedelta(hours=2),
            ),
            event(
                "a/b",
                type="closure",
                status="planned",
                actual_start=None,
                planned_start=datetime(2025, 9, 1, tzinfo=PARIS),
                planned_end=datetime(2025, 9, 5, tzinfo=PARIS),
            ),
        ],
        seen_at=t0,
    )
    await storage.upsert_events(
        "cd34", [event("works", severity="high", lanes_affected="1")], seen_at=t0 + timedelta(hours=5)
    )
    await storage.upsert_events(
        "cd34",
        [
            event(
                "works",
                status="ended",
                severity="high",
                lanes_affected="1",
                actual_end=datetime(2025, 7, 4, 18, tzinfo=PARIS),
            )
        ],
        seen_at=datetime(2025, 7, 4, 18, tzinfo=PARIS),
    )
    for i in range(8):
        await storage.upsert_events(
            "cd34",
            [
                event(
                    f"old{i}",
                    type="weather",
                    road=None,
                    geometry=None,
                    status="ended",
                    actual_start=datetime(2024, 1, 1 + i, tzinfo=PARIS),
                    actual_end=datetime(2024, 1, 1 + i, 12, tzinfo=PARIS),
                )
            ],
            seen_at=datetime(2024, 1, 1 + i, tzinfo=PARIS),
        )

    run = await storage.start_run("cnt")
    await storage.finish_run(run, RunStats(http_status=200, bytes=1234, complete=True))
    run = await storage.start_run("cd34")
    await storage.finish_run(run, RunStats(http_status=503, error="HTTP 503 from the server"))
    return Seeded(ids, rows, site_ids)


def app_client(storage: Storage, config: Config = CONFIG) -> TestClient:
    app = build_app(config, storage, publisher=NoFeeds(storage, config), routes=[api.api_routes])
    return TestClient(TestServer(app, host="127.0.0.1"))


@dataclass(repr=False)
class Env:
    client: TestClient
    storage: Storage
    seeded: Seeded


@pytest.fixture(scope="module")
async def env(server: Any) -> AsyncIterator[Env]:
    storage = await Storage.open(server.new_database())
    try:
        seeded = await seed(storage)
        client = app_client(storage)
        await client.start_server()
        try:
            yield Env(client, storage, seeded)
        finally:
            await client.close()
    finally:
        await storage.close()


async def get_json(client: TestClient, path: str, status: int = 200) -> Any:
    response = await client.get(path)
    body = await response.read()
    assert response.status == status, body[:500]
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    return json.loads(body)


def assert_document(doc: dict[str, Any]) -> None:
    assert doc["licence"] == {"name": CONFIG.publication.licence, "url": CONFIG.publication.licence_url}
    method = doc["method"]
    assert method["coverage_threshold"] == 0.95
    assert method["aggregation_version"] == history.AGGREGATION_VERSION
    assert method["coverage"] == "intervals present / intervals expected"
    assert "not computed" in method["v85"]


def assert_bad(doc: dict[str, Any], parameter: str) -> None:
    assert set(doc) == {"error", "parameter", "value", "expected", "detail"}
    assert doc["error"] == "invalid_parameter" and doc["parameter"] == parameter, doc


# --------------------------------------------------------------------------- recomputation from raw rows


def expected_intervals(start: datetime, end: datetime, time_step: int) -> int:
    seconds = int((end.astimezone(UTC) - start.astimezone(UTC)).total_seconds())  # real time, DST included
    return max(1, seconds // time_step)


def recompute(
    rows: list[Row],
    steps: dict[int, int],
    start: datetime,
    end: datetime,
    step: str,
    rejected: dict[tuple[int, datetime], str] | None = None,
) -> list[dict]:
    """The series from raw rows alone (and the intervals validation rejected, with their
    reasons): what the API must return."""
    rejected = rejected or {}

    def bucket_of(t: datetime) -> datetime:
        local = t.astimezone(PARIS)
        if step == "hour":
            return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        d = local.date()
        d = {"day": d, "month": d.replace(day=1), "year": date(d.year, 1, 1)}[step]
        return datetime(d.year, d.month, d.day, tzinfo=PARIS)

    def next_of(b: datetime) -> datetime:
        if step == "hour":
            return b + timedelta(hours=1)
        d = b.astimezone(PARIS).date()
        d = {
            "day": d + timedelta(days=1),
            "month": date(d.year + d.month // 12, d.month % 12 + 1, 1),
            "year": date(d.year + 1, 1, 1),
        }[step]
        return datetime(d.year, d.month, d.day, tzinfo=PARIS)

    agg: dict[datetime, list[float]] = defaultdict(lambda: [0, 0, 0, 0.0, 0])
    reasons: dict[datetime, list[str]] = defaultdict(list)
    for cid, t, _length, count, speed, _occ, quality in rows:
        if cid not in steps or not start <= t < end:
            continue
        if step == "hour" and steps[cid] > 3600:
            continue
        a = agg[bucket_of(t)]
        if (cid, t) in rejected:
            reasons[bucket_of(t)].append(rejected[(cid, t)])
        elif count is not None and quality in ("observed", "estimated"):
            a[0] += count
            a[1] += 1
            a[2] += quality == "estimated"
            if speed is not None:
                a[3] += speed * count
                a[4] += count
    out = []
    b = bucket_of(start)
    while b < end:
        n = next_of(b)
        expected = sum(expected_intervals(b, n, ts) for ts in steps.values() if step != "hour" or ts <= 3600)
        count, present, estimated, sws, sc = agg.get(b, [0, 0, 0, 0.0, 0])
        out.append(
            {
                "period": b.astimezone(PARIS).isoformat() if step == "hour" else b.date().isoformat(),
                "count": count if present else None,
                "coverage": present / expected if expected else 0.0,
                "estimated_share": estimated / present if present else None,
                "speed": sws / sc if sc else None,  # exact: the API rounds its own sum to 0.1
                "invalid": len(reasons.get(b, [])),
                "invalid_reasons": ",".join(sorted(set(reasons.get(b, [])))),
            }
        )
        b = n
    return out


def assert_points(got: list[dict], want: list[dict]) -> None:
    assert [p["period"] for p in got] == [p["period"] for p in want]
    for g, w in zip(got, want, strict=True):
        assert set(g) == set(POINT_FIELDS)
        assert g["count"] == w["count"], (g, w)
        assert g["coverage"] == pytest.approx(w["coverage"], abs=1e-12), (g, w)
        assert (g["invalid"], g["invalid_reasons"]) == (w["invalid"], w["invalid_reasons"]), (g, w)
        assert (g["estimated_share"] is None) == (w["estimated_share"] is None)
        if w["estimated_share"] is not None:
            assert g["estimated_share"] == pytest.approx(w["estimated_share"], abs=1e-12)
        if w["speed"] is None:
            assert g["speed"] is None
        else:
            # Within half a rounding unit of the exact mean (summing in another order may
            # put the API's float on the other side of a .x5 boundary than a recomputation's).
            assert g["speed"] == pytest.approx(w["speed"], abs=0.05 + 1e-9), (g, w)


# --------------------------------------------------------------------------- sites


async def test_sites_carry_the_contract_fields_licence_and_method(env: Env):
    doc = await get_json(env.client, "/api/v1/sites")
    assert_document(doc)
    assert doc["next_cursor"] is None and len(doc["sites"]) == 11
    s1 = next(s for s in doc["sites"] if s["external_id"] == "S1")
    assert set(s1) >= SITE_FIELDS
    assert s1["source"] == "cnt" and s1["road"] == "RD613" and s1["insee"] == "34165"
    assert (s1["lon"], s1["lat"]) == (3.69, 43.51)
    assert s1["directions"] == ["N", "S"] and s1["vehicle_classes"] == ["light", "heavy"]
    assert len(s1["channels"]) == 4 and all(set(c) >= CHANNEL_FIELDS for c in s1["channels"])
    assert s1["first_data"] == "2025-07-01T00:00:00+02:00"
    assert s1["last_data"] == "2025-07-11T00:00:00+02:00"  # end of the last hourly interval
    s2 = next(s for s in doc["sites"] if s["external_id"] == "S2")
    assert s2["vehicle_classes"] == ["all"] and s2["last_data"] == "2025-07-04T00:00:00+02:00"
    empty = next(s for s in doc["sites"] if s["external_id"] == "X3")
    assert empty["channels"] == [] and empty["first_data"] is None and empty["last_data"] is None


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("road=RD613", ["S1"]),
        ("road=rd986", ["S2"]),  # "RD 986": spaces and case do not matter
        ("road=RD613,RD 986", ["S1", "S2"]),
        ("commune=34165", ["S1"]),
        ("commune=saint-gély-du-fesc", ["S2"]),
        ("bbox=3.6,43.4,3.75,43.6", ["S1"]),
        ("bbox=3.6,43.4,3.9,43.7&road=RD986", ["S2"]),
        ("road=A9", []),
    ],
)
async def test_sites_filters(env: Env, query: str, expected: list[str]):
    doc = await get_json(env.client, f"/api/v1/sites?{query}")
    assert [s["external_id"] for s in doc["sites"]] == expected


@pytest.mark.parametrize("limit", [1, 2, 4])
async def test_sites_pagination_walks_every_site_exactly_once(env: Env, limit: int):
    seen: list[int] = []
    cursor = None
    for _ in range(20):
        doc = await get_json(env.client, f"/api/v1/sites?limit={limit}" + (f"&cursor={cursor}" if cursor else ""))
        assert len(doc["sites"]) <= limit
        seen += [s["id"] for s in doc["sites"]]
        cursor = doc["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(env.seeded.site_ids.values())


async def test_site_by_id_and_404s(env: Env):
    sid = env.seeded.site_ids["S2"]
    doc = await get_json(env.client, f"/api/v1/sites/{sid}")
    assert_document(doc)
    assert set(doc) >= SITE_FIELDS and doc["external_id"] == "S2"
    for bad in ("999999", "S2", "99999999999999"):
        missing = await get_json(env.client, f"/api/v1/sites/{bad}", 404)
        assert missing["error"] == "not_found" and missing["parameter"] == "id" and missing["value"] == bad
    await get_json(env.client, "/api/v1/sites/999999/counts", 404)


# --------------------------------------------------------------------------- counts


def _steps(env: Env, prefix: str) -> dict[int, int]:
    return {
        cid: (3600 if name.startswith("S1") else 900) for name, cid in env.seeded.ids.items() if name.startswith(prefix)
    }


async def test_daily_counts_equal_the_raw_rows_and_show_gaps(env: Env):
    sid = env.seeded.site_ids["S1"]
    doc = await get_json(env.client, f"/api/v1/sites/{sid}/counts?from=2025-07-01&to=2025-07-13&step=day")
    assert_document(doc)
    assert doc["site"]["id"] == sid and doc["step"] == "day" and doc["vehicle_class"] == "all"
    assert doc["from"] == "2025-07-01T00:00:00+02:00" and doc["to"] == "2025-07-13T00:00:00+02:00"
    assert doc["direction"] is None
    want = recompute(env.seeded.rows, _steps(env, "S1"), JULY1, datetime(2025, 7, 13, tzinfo=PARIS), "day")
    assert_points(doc["points"], want)
    by_day = {p["period"]: p for p in doc["points"]}
    assert by_day["2025-07-05"]["coverage"] == 0.5
    assert by_day["2025-07-06"]["estimated_share"] == pytest.approx(2 / 24)
    assert by_day["2025-07-07"]["coverage"] == pytest.approx(95 / 96)
    assert by_day["2025-07-11"] == {
        "period": "2025-07-11",
        "count": None,
        "coverage": 0.0,
        "estimated_share": None,
        "speed": None,
        "invalid": 0,
        "invalid_reasons": "",
    }


async def test_hour_month_and_year_steps_equal_the_raw_rows(env: Env):
    sid = env.seeded.site_ids["S2"]
    steps = _steps(env, "S2")
    for step, a, b in (
        ("hour", "2025-07-02T08:00", "2025-07-02T14:00"),
        ("month", "2025-06", "2025-09"),
        ("year", "2025", "2026"),
    ):
        doc = await get_json(env.client, f"/api/v1/sites/{sid}/counts?from={a}&to={b}&step={step}")
        start = params.parse_instant("from", a, PARIS)
        end = params.parse_instant("to", b, PARIS)
        assert_points(doc["points"], recompute(env.seeded.rows, steps, start, end, step))
    hours = (
        await get_json(env.client, f"/api/v1/sites/{sid}/counts?from=2025-07-02T09:00&to=2025-07-02T13:00&step=hour")
    )["points"]
    assert [p["coverage"] for p in hours] == [1.0, 0.5, 0.5, 1.0]  # the south channel is silent 10:00-12:00


async def test_direction_and_vehicle_class_choose_channels(env: Env):
    sid = env.seeded.site_ids["S1"]
    doc = await get_json(
        env.client, f"/api/v1/sites/{sid}/counts?from=2025-07-01&to=2025-07-02&direction=N&vehicle_class=heavy"
    )
    assert doc["direction"] == "N" and doc["vehicle_class"] == "heavy"
    assert doc["points"][0]["count"] == sum(10 + h % 7 for h in range(24))
    total = await get_json(env.client, f"/api/v1/sites/{sid}/counts?from=2025-07-01&to=2025-07-02")
    assert total["points"][0]["count"] == 2 * sum(110 + 2 * (h % 7) for h in range(24))

    # A direction or class the site does not count: no such series.
    bad = await get_json(env.client, f"/api/v1/sites/{sid}/counts?direction=W", 404)
    assert bad["error"] == "not_found" and bad["parameter"] == "direction"
    assert bad["value"] == "W" and "N, S" in bad["expected"]
    s2 = env.seeded.site_ids["S2"]
    bad = await get_json(env.client, f"/api/v1/sites/{s2}/counts?vehicle_class=heavy", 404)
    assert bad["error"] == "not_found" and bad["parameter"] == "vehicle_class"
    assert bad["expected"] == "one of this site's classes: all"


async def test_json_csv_and_parquet_hold_the_same_numbers(env: Env):
    sid = env.seeded.site_ids["S1"]
    for step, a, b in (
        ("hour", "2025-07-05T06:00", "2025-07-05T18:00"),
        ("day", "2025-06-28", "2025-07-12"),
        ("month", "2025-07", "2025-08"),
    ):
        base = f"/api/v1/sites/{sid}/counts?from={a}&to={b}&step={step}"
        points = (await get_json(env.client, base))["points"]

        response = await env.client.get(base + "&format=csv")
        assert response.status == 200 and response.content_type == "text/csv"
        disposition = response.headers["Content-Disposition"]
        assert disposition.startswith("attachment; filename=") and f"site-{sid}" in disposition
        assert step in disposition and a[:10] in disposition
        text = await response.text()
        utc = ",period_utc" if step == "hour" else ""
        assert text.splitlines()[0] == f"period{utc},count,coverage,estimated_share,speed,invalid,invalid_reasons"
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [r["period"] for r in rows] == [p["period"] for p in points]
        if step == "hour":
            assert [datetime.fromisoformat(r["period_utc"]) for r in rows] == [
                datetime.fromisoformat(r["period"]) for r in rows
            ]
        for r, p in zip(rows, points, strict=True):
            assert (int(r["count"]) if r["count"] else None) == p["count"]
            assert float(r["coverage"]) == p["coverage"]
            assert (float(r["estimated_share"]) if r["estimated_share"] else None) == p["estimated_share"]
            assert (float(r["speed"]) if r["speed"] else None) == p["speed"]

        response = await env.client.get(base + "&format=parquet")
        assert response.status == 200 and response.content_type == "application/vnd.apache.parquet"
        assert ".parquet" in response.headers["Content-Disposition"]
        table = pq.read_table(io.BytesIO(await response.read()))
        assert table.column_names == POINT_FIELDS
        for column in ("count", "coverage", "estimated_share", "speed", "invalid", "invalid_reasons"):
            assert table.column(column).to_pylist() == [p[column] for p in points]
        periods = table.column("period").to_pylist()
        if step == "hour":
            assert [t.astimezone(PARIS).isoformat() for t in periods] == [p["period"] for p in points]
        else:
            assert [d.isoformat() for d in periods] == [p["period"] for p in points]


@pytest.mark.parametrize(("a", "b"), [("2025-03-29", "2025-04-01"), ("2025-10-25", "2025-10-28")])
async def test_hourly_csv_has_a_utc_column_that_parses_across_dst_changes(env: Env, a: str, b: str):
    """Local periods carry two offsets around a DST change; period_utc has one (Z), so pandas reads it
    as instants without utc=True, and each is the local period's instant, in French files too."""
    sid = env.seeded.site_ids["S1"]
    base = f"/api/v1/sites/{sid}/counts?from={a}&to={b}&step=hour&format=csv"
    frame = pandas.read_csv(io.BytesIO(await (await env.client.get(base)).read()))
    assert {p[-6:] for p in frame["period"]} == {"+01:00", "+02:00"}
    utc = pandas.to_datetime(frame["period_utc"])
    assert isinstance(utc.dtype, pandas.DatetimeTZDtype) and str(utc.dtype.tz) == "UTC"
    assert utc.is_monotonic_increasing and utc.is_unique
    assert list(utc) == [pandas.Timestamp(datetime.fromisoformat(p)) for p in frame["period"]]
    assert (utc.diff().dropna() == pandas.Timedelta(hours=1)).all()
    body = await (await env.client.get(base + "&dialect=fr")).read()
    rows = list(csv.reader(io.StringIO(body.decode("utf-8-sig")), delimiter=";"))
    assert rows[0][:2] == ["période", "période_utc"] and [r[1] for r in rows[1:]] == list(frame["period_utc"])


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("from=2025-01-01&to=2025-06-01&step=hour", "to"),  # > 93 days of hours
        ("from=2020-01-01&to=2025-01-01&step=day", "to"),  # > 3 years of days
        ("from=1980-01&to=2025-01&step=month", "to"),  # > 30 years of months
        ("from=2025-07-02&to=2025-07-01", "to"),
        ("from=2025-07-01&to=2025-07-01", "to"),
        ("from=yesterday", "from"),
        ("from=2025-13-01", "from"),
        ("to=0999-01-01", "to"),
        ("step=week", "step"),
        ("format=xlsx", "format"),
        ("step=day&step=hour", "step"),
    ],
)
async def test_counts_refusals_name_the_parameter(env: Env, query: str, parameter: str):
    sid = env.seeded.site_ids["S1"]
    doc = await get_json(env.client, f"/api/v1/sites/{sid}/counts?{query}", 400)
    assert_bad(doc, parameter)
    assert doc["detail"] and doc["expected"]


async def test_range_limit_is_per_step_and_says_so(env: Env):
    sid = env.seeded.site_ids["S1"]
    ok = await get_json(env.client, f"/api/v1/sites/{sid}/counts?from=2025-04-01&to=2025-07-03&step=hour")
    assert len(ok["points"]) == 93 * 24 - 0  # exactly the limit (no DST change in between)
    doc = await get_json(env.client, f"/api/v1/sites/{sid}/counts?from=2025-04-01&to=2025-07-03T01:00&step=hour", 400)
    assert "2232" in doc["detail"] and "93 days" in doc["expected"]
    assert doc["value"] == "2025-07-03T01:00"


async def test_default_range_is_the_last_periods(env: Env):
    sid = env.seeded.site_ids["S1"]
    doc = await get_json(env.client, f"/api/v1/sites/{sid}/counts?step=month")
    assert len(doc["points"]) == params.DEFAULT_PERIODS["month"]
    doc = await get_json(env.client, f"/api/v1/sites/{sid}/counts?from=2025-07-01")
    assert len(doc["points"]) == params.DEFAULT_PERIODS["day"] and doc["points"][0]["period"] == "2025-07-01"


@st.composite
def channel_data(draw: st.DrawFn) -> tuple[list[int], list[tuple[int, int, int | None, float | None, str]]]:
    """Time steps of 1-3 channels and random intervals (channel index, interval index, count, speed,
    quality) over 3 local days around the spring DST change, with gaps."""
    steps = draw(st.lists(st.sampled_from([300, 900, 3600]), min_size=1, max_size=3))
    intervals = []
    for i, step in enumerate(steps):
        n = 3 * 86400 // step
        chosen = draw(st.sets(st.integers(0, n - 1), max_size=min(n, 60)))
        for k in sorted(chosen):
            count = draw(st.one_of(st.none(), st.integers(0, 500)))
            speed = draw(st.one_of(st.none(), st.floats(5, 130).map(lambda v: round(v, 1))))
            quality = draw(st.sampled_from(["observed", "observed", "estimated", "missing", "invalid"]))
            intervals.append((i, k, count, speed, quality))
    return steps, intervals


_example = iter(range(10**6))


@pytest.mark.timeout(seconds(90))
@settings(max_examples=examples(12), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=channel_data(), batches=st.integers(1, 3))
# the hour after the spring-forward gap (2025-03-30T03:00+02:00), one 5-minute interval in it
@example(data=([300, 300], [(0, 312, 0, None, "observed")]), batches=1)
@example(data=([300], [(0, 312, 7, 50.0, "observed")]), batches=1)
@example(data=([900, 3600], [(0, 104, 3, None, "observed"), (1, 26, 5, None, "observed")]), batches=1)
@example(data=([300, 300], [(0, 300, 4, None, "observed"), (0, 312, 0, None, "observed")]), batches=2)
# a direction silent while the other flows: rejected, and counted as such in its hour, day and month
@example(data=([300, 300], [(0, 120, 0, None, "observed"), (1, 120, 10, None, "observed")]), batches=1)
async def test_random_series_equal_a_recomputation_from_raw_rows(env: Env, data, batches: int):
    steps, intervals = data
    storage = env.storage
    n = next(_example)
    ext = f"H{n}"
    await storage.upsert_sites("cnt", [SiteRecord(external_id=ext, name=ext)])
    await storage.upsert_channels(
        "cnt",
        [
            ChannelRecord(site_external_id=ext, external_id=f"{ext}-{i}", direction=f"D{i}", time_step=ts)
            for i, ts in enumerate(steps)
        ],
    )
    ids = await storage.channel_ids("cnt", [f"{ext}-{i}" for i in range(len(steps))])
    start = datetime(2025, 3, 29, tzinfo=PARIS)
    rows = [
        (
            ids[f"{ext}-{i}"],
            (start + timedelta(seconds=k * steps[i])).astimezone(UTC),
            steps[i],
            count,
            speed,
            None,
            quality,
        )
        for i, k, count, speed, quality in intervals
    ]
    # Intervals follow real time, so the 23-hour day shifts the later ones; keep those inside the 3 days.
    end = datetime(2025, 4, 1, tzinfo=PARIS)
    rows = [r for r in rows if r[1] < end]
    # Several ingests, interleaved in time (late rows reach buckets already rolled up).
    for b in range(batches):
        if rows[b::batches]:
            await storage.ingest_measurements(rows[b::batches])
    sid = (await storage.site_ids("cnt", [ext]))[ext]
    channel_steps = {ids[f"{ext}-{i}"]: ts for i, ts in enumerate(steps)}
    # Intervals the plausibility tests rejected (e.g. a direction silent while another flows) are not present.
    rejected = {
        (r["channel_id"], r["start"]): r["flag"]
        for r in await storage.pool.fetch(
            "SELECT channel_id, start, flag FROM measurements "
            "WHERE channel_id = ANY($1::int[]) AND validation = 'invalid'",
            list(channel_steps),
        )
    }
    for step, a, b in (
        ("hour", "2025-03-29T20:00", "2025-03-31T04:00"),
        ("day", "2025-03-28", "2025-04-02"),
        ("month", "2025-03", "2025-05"),
    ):
        doc = await get_json(env.client, f"/api/v1/sites/{sid}/counts?from={a}&to={b}&step={step}")
        want = recompute(
            rows,
            channel_steps,
            params.parse_instant("from", a, PARIS),
            params.parse_instant("to", b, PARIS),
            step,
            rejected,
        )
        assert_points(doc["points"], want)


async def test_directions_are_shown_with_the_names_their_source_gives(env: Env):
    """A named direction comes with its name on the site, each channel and a series of that direction;
    an unnamed one (S2) has none, never a made-up one."""
    s1, s2 = env.seeded.site_ids["S1"], env.seeded.site_ids["S2"]
    site = await get_json(env.client, f"/api/v1/sites/{s1}")
    assert site["direction_names"] == {"N": "vers Montpellier", "S": "vers Sète"}
    assert {(c["direction"], c["direction_name"]) for c in site["channels"]} == {
        ("N", "vers Montpellier"),
        ("S", "vers Sète"),
    }
    for direction, name in (("S", "vers Sète"), ("all", None)):
        path = f"/api/v1/sites/{s1}/counts?from=2025-07-01&to=2025-07-02&direction={direction}"
        doc = await get_json(env.client, path)
        assert doc["direction_name"] == name
    other = await get_json(env.client, f"/api/v1/sites/{s2}")
    assert other["direction_names"] == {} and all(c["direction_name"] is None for c in other["channels"])


# --------------------------------------------------------------------------- annual


async def test_annual_table_applies_the_threshold_and_its_override(env: Env):
    doc = await get_json(env.client, "/api/v1/annual?year=2025")
    assert_document(doc)
    assert doc["year"] == 2025 and doc["threshold"] == 0.95
    rows = {r["external_id"]: r for r in doc["rows"]}
    assert set(rows["S1"]) == {
        "site_id",
        "external_id",
        "name",
        "road",
        "tmja",
        "tmjo",
        "heavy_share",
        "mean_speed",
        "days_valid",
        "days_excluded",
        "mean_coverage",
    }
    s1 = rows["S1"]
    # July 1-10 except July 5 (half a day) and July 7 (one interval missing: 95/96 >= 0.95 still counts).
    assert s1["days_valid"] == 9 and s1["days_excluded"] == 365 - 9
    valid_days = [d for d in range(1, 11) if d != 5]
    daily = [
        sum(
            r[3] or 0
            for r in env.seeded.rows
            if r[0] in _steps(env, "S1") and r[1].astimezone(PARIS).day == d and r[6] in ("observed", "estimated")
        )
        for d in valid_days
    ]
    assert s1["tmja"] == pytest.approx(sum(daily) / len(daily), abs=0.05)
    working = [c for d, c in zip(valid_days, daily, strict=True) if date(2025, 7, d).isoweekday() <= 5]
    assert s1["tmjo"] == pytest.approx(sum(working) / len(working), abs=0.05)
    heavy_ids = {cid for name, cid in env.seeded.ids.items() if name.endswith("heavy")}
    heavy = sum(r[3] for r in env.seeded.rows if r[0] in heavy_ids and r[1].astimezone(PARIS).day in valid_days)
    assert s1["heavy_share"] == round(heavy / sum(daily), 4)
    assert rows["X3"]["tmja"] is None and rows["X3"]["days_valid"] == 0
    lenient = await get_json(env.client, "/api/v1/annual?year=2025&threshold=0.5")
    assert lenient["threshold"] == 0.5 and lenient["method"]["coverage_threshold"] == 0.5
    assert {r["external_id"]: r for r in lenient["rows"]}["S1"]["days_valid"] == 10


async def test_annual_formats_and_refusals(env: Env):
    doc = await get_json(env.client, "/api/v1/annual?year=2025")
    response = await env.client.get("/api/v1/annual?year=2025&format=csv")
    assert "annual_2025.csv" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(await response.text())))
    assert [int(r["site_id"]) for r in rows] == [r["site_id"] for r in doc["rows"]]
    assert [float(r["tmja"]) if r["tmja"] else None for r in rows] == [r["tmja"] for r in doc["rows"]]
    response = await env.client.get("/api/v1/annual?year=2025&format=parquet")
    table = pq.read_table(io.BytesIO(await response.read()))
    assert table.to_pylist() == doc["rows"]
    for query, parameter in (
        ("", "year"),
        ("year=abc", "year"),
        ("year=2025&threshold=1.5", "threshold"),
        ("year=2025&threshold=nan", "threshold"),
        ("year=2025&format=xml", "format"),
    ):
        assert_bad(await get_json(env.client, f"/api/v1/annual?{query}", 400), parameter)


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("rd613", {"S1"}),
        ("  SAINT-GELY ", {"S2"}),
        ("gély", {"S2"}),
        ("RD 986", {"S2"}),
        ("x1", {"X10", "X11"}),
        ("site 1", {"X10", "X11"}),
        ("montbazin rd613 s1", {"S1"}),
        ("montbazin s1", set()),
        ("none", set()),
        ("", None),
    ],
)
async def test_annual_filter_q_gives_the_same_rows_in_every_format(env: Env, q: str, expected: set[str] | None):
    """q is the page's table filter: accents and case ignored over `name road external_id`; JSON, CSV (both
    dialects) and Parquet hold exactly the rows the unfiltered table has that match, in its order."""
    whole = (await get_json(env.client, "/api/v1/annual?year=2025"))["rows"]
    query = f"/api/v1/annual?{urlencode({'year': 2025, 'q': q})}"
    doc = await get_json(env.client, query)
    want = [r for r in whole if expected is None or r["external_id"] in expected]
    assert doc["rows"] == want and doc["q"] == (q.strip() or None)
    assert [r for r in whole if documents.matches_filter(q.strip(), r["name"], r["road"], r["external_id"])] == want
    rows = list(csv.DictReader(io.StringIO(await (await env.client.get(query + "&format=csv")).text())))
    assert [int(r["site_id"]) for r in rows] == [r["site_id"] for r in want]
    body = await (await env.client.get(query + "&format=csv&dialect=fr")).read()
    assert len(list(csv.reader(io.StringIO(body.decode("utf-8-sig")), delimiter=";"))) == len(want) + 1
    table = pq.read_table(io.BytesIO(await (await env.client.get(query + "&format=parquet")).read()))
    assert table.to_pylist() == want


async def test_annual_filter_refusals(env: Env):
    for query in ("year=2025&q=a%00b", "year=2025&q=a&q=b"):
        assert_bad(await get_json(env.client, f"/api/v1/annual?{query}", 400), "q")


# --------------------------------------------------------------------------- events


async def test_events_come_with_every_version(env: Env):
    doc = await get_json(env.client, "/api/v1/events?from=2025-07-01&to=2025-08-01")
    assert_document(doc)
    events = {e["id"]: e for e in doc["events"]}
    assert set(events) == {"cd34:works", "cd34:crash"}  # the closure is planned for September
    works = events["cd34:works"]
    assert works["status"] == "ended" and works["version"] == 3
    assert [(v["version"], v["change"]) for v in works["versions"]] == [(1, "created"), (2, "updated"), (3, "ended")]
    assert works["versions"][0]["severity"] == "medium" and works["versions"][1]["severity"] == "high"
    assert all(v["recorded"].endswith("Z") and v["id"] == "cd34:works" for v in works["versions"])

    one = await get_json(env.client, "/api/v1/events/cd34:a/b")
    assert one["id"] == "cd34:a/b" and one["status"] == "planned" and len(one["versions"]) == 1
    assert_document(one)
    missing = await get_json(env.client, "/api/v1/events/cd34:nope", 404)
    assert missing["error"] == "not_found" and missing["value"] == "cd34:nope"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("from=2025-07-05", ["cd34:a/b", "cd34:crash"]),  # works ended on July 4
        ("to=2024-06-01", [f"cd34:old{i}" for i in range(8)]),
        ("type=accident,closure", ["cd34:a/b", "cd34:crash"]),
        ("status=ended&from=2025-01-01", ["cd34:works"]),
        ("road=rd2", ["cd34:crash"]),
        ("bbox=3.8,43.5,4.0,43.7", ["cd34:crash"]),
        ("from=2025-09-02&to=2025-09-03&status=planned", ["cd34:a/b"]),
    ],
)
async def test_events_filters(env: Env, query: str, expected: list[str]):
    doc = await get_json(env.client, f"/api/v1/events?{query}")
    assert [e["id"] for e in doc["events"]] == expected


async def test_events_pagination_walks_every_event_exactly_once(env: Env):
    seen: list[str] = []
    cursor = None
    while True:
        doc = await get_json(env.client, "/api/v1/events?limit=3" + (f"&cursor={cursor}" if cursor else ""))
        seen += [e["id"] for e in doc["events"]]
        cursor = doc["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 11 and seen == sorted(set(seen))


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/api/v1/events?type=fire", "type"),
        ("/api/v1/events?status=open", "status"),
        ("/api/v1/events?limit=0", "limit"),
        ("/api/v1/events?limit=501", "limit"),
        ("/api/v1/events?limit=ten", "limit"),
        ("/api/v1/events?bbox=3,44,2,43", "bbox"),
        ("/api/v1/events?from=2025-07-02&to=2025-07-01", "to"),
        ("/api/v1/events?cursor=%%%", "cursor"),
        ("/api/v1/sites?limit=1001", "limit"),
        ("/api/v1/sites?cursor=bm90LWpzb24", "cursor"),
        ("/api/v1/sites?bbox=1,2,3", "bbox"),
    ],
)
async def test_list_refusals(env: Env, path: str, parameter: str):
    assert_bad(await get_json(env.client, path, 400), parameter)


async def test_a_cursor_belongs_to_its_list(env: Env):
    events = await get_json(env.client, "/api/v1/events?limit=1")
    doc = await get_json(env.client, f"/api/v1/sites?cursor={events['next_cursor']}", 400)
    assert_bad(doc, "cursor")


# --------------------------------------------------------------------------- sources


async def test_sources_state(env: Env):
    doc = await get_json(env.client, "/api/v1/sources")
    assert_document(doc)
    sources = {s["id"]: s for s in doc["sources"]}
    assert set(sources) == {"cnt", "cd34", "idle"}
    assert sources["cnt"]["interval"] == 300 and sources["cnt"]["kind"] == "comptage-mobilites"
    assert sources["cnt"]["last_success"] is not None and sources["cnt"]["last_error"] is None
    assert sources["cnt"]["last_run"]["bytes"] == 1234 and sources["cnt"]["last_run"]["complete"] is True
    assert sources["cd34"]["last_error"] == "HTTP 503 from the server"
    assert sources["cd34"]["last_run"]["http_status"] == 503
    assert sources["idle"]["last_run"] is None and sources["idle"]["configured"] is True


# --------------------------------------------------------------------------- HTTP behaviour


async def test_conditional_get_and_gzip(env: Env):
    sid = env.seeded.site_ids["S1"]
    path = f"/api/v1/sites/{sid}/counts?from=2025-07-01&to=2025-07-11&step=hour"
    first = await env.client.get(path, headers={"Accept-Encoding": "identity"})
    etag = first.headers["ETag"]
    again = await env.client.get(path, headers={"If-None-Match": etag, "Accept-Encoding": "identity"})
    assert again.status == 304
    zipped = await env.client.get(path, headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip" and zipped.headers["ETag"] == etag[:-1] + '-gzip"'
    assert json.loads(await zipped.read()) == json.loads(await first.read())
    preflight = await env.client.options(path)
    assert preflight.status == 204 and preflight.headers["Access-Control-Allow-Origin"] == "*"


async def test_statement_timeout_bounds_every_api_query(env: Env, monkeypatch: pytest.MonkeyPatch):
    config = CONFIG.model_copy(update={"database": DatabaseConfig(statement_timeout_ms=150)})
    client = app_client(env.storage, config)
    await client.start_server()
    try:

        async def slow_sites(conn, *args, **kwargs):
            assert await conn.fetchval("SHOW statement_timeout") == "150ms"
            await conn.execute("SELECT pg_sleep(2)")
            return []

        monkeypatch.setattr(history, "sites", slow_sites)
        doc = await get_json(client, "/api/v1/sites", 503)
        assert doc["error"] == "query_timeout" and set(doc) == {"error", "parameter", "value", "expected", "detail"}
        monkeypatch.undo()
        assert (await get_json(client, "/api/v1/sites?limit=1"))["sites"]
    finally:
        await client.close()


def test_csv_cells_are_quoted_and_never_formulas():
    body = documents.csv_bytes(["name", "n"], [["=1+1", 1], ["-3", -3], ["@a, b", None], ['say "hi"', 0.5], ["+x", 2]])
    assert body.decode().splitlines() == ["name,n", "'=1+1,1", "-3,-3", '"\'@a, b",', '"say ""hi""",0.5', "'+x,2"]


def test_cursor_round_trip_and_period_arithmetic():
    assert params.decode_cursor(MultiDict(cursor=params.encode_cursor("events", "cd34:a/b")), "events") == "cd34:a/b"
    spring = datetime(2025, 3, 30, tzinfo=PARIS)
    assert params.shift(spring, "day", 1, PARIS) == datetime(2025, 3, 31, tzinfo=PARIS)
    assert params.count_periods(spring, params.shift(spring, "hour", 24, PARIS), "hour", PARIS) == 24
    assert params.ceil_to(datetime(2025, 3, 30, 12, 30, tzinfo=PARIS), "day", PARIS) == datetime(
        2025, 3, 31, tzinfo=PARIS
    )
    assert params.floor_to(datetime(2025, 7, 17, 9, tzinfo=PARIS), "month", PARIS) == JULY1


async def test_french_csv_opens_in_columns_with_decimal_commas_and_says_what_it_holds(env: Env):
    """dialect=fr: what a French spreadsheet expects (BOM, `;`, decimal comma, French headers);
    the file's name carries the site, class, direction and the inclusive period."""
    sid = env.seeded.site_ids["S1"]
    base = f"/api/v1/sites/{sid}/counts?from=2025-07-01&to=2025-07-11&step=day&vehicle_class=heavy&direction=N"
    doc = await get_json(env.client, base)
    response = await env.client.get(base + "&format=csv&dialect=fr")
    assert response.status == 200
    disposition = response.headers["Content-Disposition"]
    assert f'filename="site-{sid}_heavy_N_2025-07-01_2025-07-10_day_fr.csv"' in disposition
    body = await response.read()
    assert body.startswith("\ufeff".encode())
    rows = list(csv.reader(io.StringIO(body.decode("utf-8-sig")), delimiter=";"))
    assert rows[0] == [
        "période",
        "comptage",
        "couverture",
        "part_estimée",
        "vitesse_moyenne_kmh",
        "intervalles_rejetés",
        "motifs_de_rejet",
    ]
    assert len(rows) == len(doc["points"]) + 1
    for row, p in zip(rows[1:], doc["points"], strict=True):
        assert row[0] == p["period"] and (int(row[1]) if row[1] else None) == p["count"]
        assert float(row[2].replace(",", ".")) == p["coverage"]
        if p["speed"] is not None:
            assert "," in row[4] and float(row[4].replace(",", ".")) == p["speed"]
    standard = await env.client.get(base + "&format=csv")
    assert 'filename="site-' in standard.headers["Content-Disposition"]
    assert "_heavy_N_2025-07-01_2025-07-10_day.csv" in standard.headers["Content-Disposition"]
    annual = await env.client.get("/api/v1/annual?year=2025&format=csv&dialect=fr")
    text = (await annual.read()).decode("utf-8-sig")
    header, *lines = list(csv.reader(io.StringIO(text), delimiter=";"))
    assert header[:6] == ["id_site", "id_externe", "nom", "route", "TMJA", "TMJO"]
    s1 = next(r for r in lines if r[1] == "S1")
    assert "," in s1[4] and "annual_2025_fr.csv" in annual.headers["Content-Disposition"]
    doc = await get_json(env.client, f"/api/v1/sites/{sid}/counts?format=csv&dialect=excel", 400)
    assert_bad(doc, "dialect")


async def test_series_and_dictionary_explain_rejections_and_the_annual_figures(env: Env):
    sid = env.seeded.site_ids["S1"]
    method = (await get_json(env.client, f"/api/v1/sites/{sid}/counts?from=2025-07-01&to=2025-07-02"))["method"]
    assert set(method["invalid_reasons"]) == {
        "spike",
        "stuck_zero",
        "silent_direction",
        "flat_line",
        "class_inconsistent",
    }
    assert all(text["fr"] and text["en"] for text in method["invalid_reasons"].values())
    dictionary = (await get_json(env.client, "/api/v1/downloads/dictionary.json"))["method"]
    assert "public holidays" in dictionary["tmjo"] and "'fr' calendar" in dictionary["tmjo"]
    assert "TMJA" in dictionary["tmja"] and dictionary["invalid_reasons"] == method["invalid_reasons"]
