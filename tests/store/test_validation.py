"""Validation of every interval on simulated counts: each fault kind injected into
real-looking data (the simulator's département) is flagged with its reason, keeps its
raw value and stays out of the aggregates; nothing good is flagged; a channel dead
all day makes its day invalid; the audit of RD613 Mèze and RD909 Faugères no longer
publishes skewed figures; TMJO leaves out public holidays."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from feed.holidays import easter, public_holidays
from feed.model import ChannelRecord, SiteRecord
from feed.simulator.simulation import Simulation
from feed.store import history
from feed.store.storage import Storage
from feed.store.validation import REASONS
from long_mode import examples, seconds

PARIS = ZoneInfo("Europe/Paris")
SIM = Simulation()
NORMAL = "34-RD613-006"  # Fabrègues: no fault of its own
MEZE = "34-RD613-025"  # spikes of heavy vehicles
FAUGERES = "34-RD909-024"  # a direction stuck at zero for whole days
FIRST = date(2025, 6, 2)
DAYS = 21

Row = tuple[int, datetime, int, int | None, float | None, float | None, str]


def local_hours(first: date, days: int) -> list[datetime]:
    start = datetime(first.year, first.month, first.day, tzinfo=PARIS).astimezone(UTC)
    end = (datetime(first.year, first.month, first.day, tzinfo=PARIS) + timedelta(days=days)).astimezone(UTC)
    return [start + timedelta(hours=h) for h in range(int((end - start).total_seconds() // 3600))]


async def simulated_site(
    storage: Storage, sim: Simulation, site_id: str, first: date, days: int, *, with_all: bool = False
) -> tuple[int, dict[str, int], list[Row]]:
    """The site's hourly light and heavy channels (and all-vehicle ones) from the simulator."""
    site = sim.sites_by_id[site_id]
    await storage.ensure_source("sim", "opendatasoft", "http://127.0.0.1:9/sim")
    await storage.upsert_sites("sim", [SiteRecord(external_id=site.id, name=site.name, road="RD613")])
    classes = ("light", "heavy", "all") if with_all else ("light", "heavy")
    await storage.upsert_channels(
        "sim",
        [
            ChannelRecord(
                site_external_id=site.id,
                external_id=f"{site.id}:{d.code}:{c}",
                direction=d.code,
                vehicle_class=c,
                time_step=3600,
            )
            for d in site.directions
            for c in classes
        ],
    )
    ids = {k.split(":", 1)[1]: v for k, v in (await storage.channel_ids("sim")).items() if k.startswith(site.id)}
    rows: list[Row] = []
    for t in local_hours(first, days):
        for d in site.directions:
            light = sim.count(site.id, d.code, "light", t)
            heavy = sim.count(site.id, d.code, "heavy", t)
            if light is None or heavy is None:
                continue
            rows.append((ids[f"{d.code}:light"], t, 3600, light, None, None, "observed"))
            rows.append((ids[f"{d.code}:heavy"], t, 3600, heavy, None, None, "observed"))
            if with_all:
                rows.append((ids[f"{d.code}:all"], t, 3600, light + heavy, None, None, "observed"))
    sid = (await storage.site_ids("sim", [site.id]))[site.id]
    return sid, ids, rows


async def flags(storage: Storage, channels: list[int]) -> dict[tuple[int, datetime], str]:
    return {
        (r["channel_id"], r["start"]): r["flag"]
        for r in await storage.pool.fetch(
            "SELECT channel_id, start, flag FROM measurements "
            "WHERE channel_id = ANY($1::int[]) AND validation = 'invalid'",
            channels,
        )
    }


FAULTS = ["spike", "stuck_zero", "silent_direction", "flat_line", "class_inconsistent", "dead_channel"]


@pytest.mark.timeout(seconds(90))
@settings(max_examples=examples(8), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(FAULTS),
    day=st.integers(7, DAYS - 2),
    hour=st.integers(9, 13),
    direction=st.integers(0, 1),
    vclass=st.sampled_from(["light", "heavy"]),
    batches=st.integers(1, 2),
)
@example(kind="spike", day=8, hour=10, direction=0, vclass="heavy", batches=1)
@example(kind="stuck_zero", day=9, hour=9, direction=1, vclass="light", batches=2)
@example(kind="stuck_zero", day=7, hour=9, direction=1, vclass="light", batches=1)  # Whit Monday: quiet at 6
@example(kind="silent_direction", day=10, hour=11, direction=0, vclass="light", batches=1)
@example(kind="flat_line", day=11, hour=9, direction=1, vclass="light", batches=1)
@example(kind="class_inconsistent", day=12, hour=12, direction=0, vclass="light", batches=1)
@example(kind="dead_channel", day=13, hour=9, direction=1, vclass="heavy", batches=2)
async def test_each_injected_fault_is_flagged_with_its_reason_and_left_out(
    server, kind: str, day: int, hour: int, direction: int, vclass: str, batches: int
):
    storage = await Storage.open(server.new_database())
    try:
        with_all = kind == "class_inconsistent"
        sid, ids, rows = await simulated_site(storage, SIM, NORMAL, FIRST, DAYS, with_all=with_all)
        site = SIM.sites_by_id[NORMAL]
        code = site.directions[direction].code
        target = ids[f"{code}:{vclass}"]
        fault_day = FIRST + timedelta(days=day)

        def at(h: int) -> datetime:
            return datetime(fault_day.year, fault_day.month, fault_day.day, h, tzinfo=PARIS).astimezone(UTC)

        by_key = {(r[0], r[1]): r for r in rows}
        changed: dict[tuple[int, datetime], int] = {}  # the injected values
        want: dict[tuple[int, datetime], set[str]] = {}  # what must be flagged, and with which reasons
        may: dict[tuple[int, datetime], set[str]] = {}  # what may be flagged (it depends on the other direction)
        if kind == "spike":
            n = by_key[(target, at(hour))][3] or 0
            changed[(target, at(hour))] = n * 9 + 2400
            want[(target, at(hour))] = {"spike"}
        elif kind == "stuck_zero":
            target = ids[f"{code}:light"]  # the busy class: its daytime median is far above zero
            for h in range(6, 21):
                changed[(target, at(h))] = 0
                if 8 <= h <= 18:
                    want[(target, at(h))] = {"stuck_zero"}
                else:  # early and late: flagged only while the other direction flows (not on a quiet holiday)
                    may[(target, at(h))] = {"silent_direction"}
        elif kind == "silent_direction":
            target = ids[f"{code}:light"]
            changed[(target, at(hour))] = 0
            want[(target, at(hour))] = {"silent_direction"}
        elif kind == "flat_line":
            target = ids[f"{code}:light"]
            frozen = by_key[(target, at(hour))][3] or 0
            for h in range(hour, hour + 6):
                changed[(target, at(h))] = frozen
                want[(target, at(h))] = {"flat_line"}
        elif kind == "class_inconsistent":
            light = ids[f"{code}:light"]
            changed[(light, at(hour))] = (by_key[(light, at(hour))][3] or 0) * 3 // 2 + 10
            want[(light, at(hour))] = want[(ids[f"{code}:heavy"], at(hour))] = {"class_inconsistent"}
        rows = [(*r[:3], changed.get((r[0], r[1]), r[3]), *r[4:]) for r in rows]
        if kind == "dead_channel":  # nothing at all from one channel that day
            rows = [r for r in rows if not (r[0] == target and r[1].astimezone(PARIS).date() == fault_day)]
        cut = len(rows) // 2
        for part in [rows] if batches == 1 else [rows[cut:], rows[:cut]]:  # late data arrives after
            await storage.ingest_measurements(part)

        got = await flags(storage, list(ids.values()))
        assert set(want) <= set(got) <= set(want) | set(may), (kind, sorted(got.items())[:5], sorted(want)[:5])
        for key, reason in got.items():
            assert reason in want.get(key, may.get(key, set())) and reason in REASONS
        raw = {
            (r[0], r[1]): r[2]
            for r in await storage.pool.fetch(
                "SELECT channel_id, start, count FROM measurements WHERE channel_id = ANY($1::int[])",
                list(ids.values()),
            )
        }
        for key, value in changed.items():
            assert raw[key] == value  # the raw value is kept

        # The day's figures leave the flagged intervals out: count and coverage from valid rows only.
        start = datetime(fault_day.year, fault_day.month, fault_day.day, tzinfo=PARIS)
        series = await history.site_series(storage.pool, sid, start, start + timedelta(days=1), "day", "Europe/Paris")
        total_ids = (
            {v for k, v in ids.items() if k.endswith(":all")}
            if with_all
            else {v for k, v in ids.items() if not k.endswith(":all")}
        )
        valid = [
            r
            for r in rows
            if r[0] in total_ids and r[1].astimezone(PARIS).date() == fault_day and (r[0], r[1]) not in got
        ]
        assert series[0].count == sum(r[3] for r in valid)
        assert series[0].coverage == pytest.approx(len(valid) / (24 * len(total_ids)))
        table = {r.site_id: r for r in await history.annual_table(storage.pool, 2025, 0.95)}
        lost = len([k for k in got if k[0] in total_ids]) + (24 if kind == "dead_channel" else 0)
        expected_valid = DAYS - (1 if lost > 0.05 * 24 * len(total_ids) else 0)
        assert table[sid].days_valid == expected_valid, (kind, lost)
    finally:
        await storage.close()


async def test_clean_simulated_weeks_have_no_flag(storage: Storage):
    """No false alarm: three weeks of every class at a busy and a quiet site pass every test."""
    for site_id in (NORMAL, "34-RD11-046"):
        _, ids, rows = await simulated_site(storage, SIM, site_id, date(2025, 7, 7), 21, with_all=True)
        await storage.ingest_measurements(rows)
        assert await flags(storage, list(ids.values())) == {}


def clean(sim: Simulation, site_id: str) -> Simulation:
    """The same département without the site's fault: what the counter should have said."""
    fixed = Simulation(sim.seed)
    fixed.sites_by_id = {**sim.sites_by_id, site_id: replace(sim.sites_by_id[site_id], fault=None)}
    return fixed


async def annual_of(storage: Storage, sim: Simulation, site_id: str) -> history.AnnualRow:
    sid, _, rows = await simulated_site(storage, sim, site_id, date(2025, 1, 1), 365)
    rows.sort(key=lambda r: r[1])
    month = 24 * 31 * 4
    for i in range(0, len(rows), month):  # a month per ingest, as a backfill would
        await storage.ingest_measurements(rows[i : i + month])
    return {r.site_id: r for r in await history.annual_table(storage.pool, 2025, 0.95, today=date(2026, 1, 5))}[sid]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("site_id", [MEZE, FAUGERES])
async def test_the_audit_sites_are_no_longer_skewed(server, site_id: str):
    """The year of the audit: the faulty counter's figures match what a healthy counter
    would have given (within 1 %), where they were 11 % (TMJA) and 4 points (% heavy) off."""
    got_storage = await Storage.open(server.new_database())
    ref_storage = await Storage.open(server.new_database())
    try:
        got = await annual_of(got_storage, SIM, site_id)
        ref = await annual_of(ref_storage, clean(SIM, site_id), site_id)
        assert got.tmja == pytest.approx(ref.tmja, rel=0.01), (got, ref)
        assert got.heavy_share == pytest.approx(ref.heavy_share, abs=0.002), (got, ref)
        assert got.tmjo == pytest.approx(ref.tmjo, rel=0.01), (got, ref)
        assert 250 <= got.days_valid <= ref.days_valid
        if site_id == FAUGERES:  # every stuck day is left out
            stuck = sum(SIM._stuck(site_id, date(2025, 1, 1) + timedelta(days=i)) for i in range(365))
            assert got.days_valid <= ref.days_valid - stuck
    finally:
        await got_storage.close()
        await ref_storage.close()


def test_french_public_holidays_include_the_easter_based_ones():
    assert easter(2025) == date(2025, 4, 20) and easter(2026) == date(2026, 4, 5) and easter(2024) == date(2024, 3, 31)
    h = public_holidays("fr", 2026)
    assert len(h) == 11
    assert {date(2026, 4, 6), date(2026, 5, 14), date(2026, 5, 25), date(2026, 7, 14), date(2026, 11, 11)} <= h
    assert public_holidays("none", 2026) == frozenset()


async def test_tmjo_leaves_out_public_holidays_and_future_days_are_not_missing(storage: Storage):
    """May 2026 at a normal site: TMJO over working days only (1, 8, 14 and 25 May are
    holidays, driven like Sundays, so including them lowers TMJO); a year seen on 7
    December has 25 days still to come, not excluded."""
    sid, _, rows = await simulated_site(storage, SIM, NORMAL, date(2026, 5, 1), 31)
    await storage.ingest_measurements(rows)
    (row,) = [
        r for r in await history.annual_table(storage.pool, 2026, 0.95, today=date(2026, 12, 7)) if r.site_id == sid
    ]
    daily: dict[date, int] = {}
    for r in rows:
        d = r[1].astimezone(PARIS).date()
        daily[d] = daily.get(d, 0) + r[3]
    holidays = public_holidays("fr", 2026)
    working = [v for d, v in daily.items() if d.isoweekday() <= 5 and d not in holidays]
    with_holidays = [v for d, v in daily.items() if d.isoweekday() <= 5]
    assert row.tmjo == pytest.approx(sum(working) / len(working), abs=0.05)
    assert row.tmjo > sum(with_holidays) / len(with_holidays)
    (none,) = [
        r
        for r in await history.annual_table(storage.pool, 2026, 0.95, holidays="none", today=date(2026, 12, 7))
        if r.site_id == sid
    ]
    assert none.tmjo == pytest.approx(sum(with_holidays) / len(with_holidays), abs=0.05)
    assert row.days_valid == 31 and row.days_excluded == (date(2026, 12, 7) - date(2026, 1, 1)).days - 31


async def test_periods_still_to_come_are_not_shown_as_missing(storage: Storage):
    """Seen on 7 December at 12:30, December's days after the 7th are not in the series
    (they are not gaps), today is, and so are the days of data."""
    sid, _ids, rows = await simulated_site(storage, SIM, NORMAL, date(2026, 12, 1), 7)
    await storage.ingest_measurements(rows)
    site = await history.site(storage.pool, sid, "Europe/Paris")
    assert site is not None
    now = datetime(2026, 12, 7, 12, 30, tzinfo=PARIS)
    start, end = datetime(2026, 12, 1, tzinfo=PARIS), datetime(2027, 1, 1, tzinfo=PARIS)
    days = await history.channel_series(storage.pool, site.channels, start, end, "day", "Europe/Paris", now)
    assert [p.period for p in days] == [date(2026, 12, d) for d in range(1, 8)]
    assert all(p.coverage == 1.0 for p in days[:6])
    hours = await history.channel_series(storage.pool, site.channels, start, end, "hour", "Europe/Paris", now)
    assert hours[-1].period == datetime(2026, 12, 7, 11, tzinfo=UTC)  # 12:00 local, the hour under way
    (month,) = await history.channel_series(storage.pool, site.channels, start, end, "month", "Europe/Paris", now)
    assert month.period == date(2026, 12, 1)


async def test_a_channel_is_expected_from_its_validity_or_its_first_data(storage: Storage):
    """A site whose heavy channels start on the 8th: the days before are judged on the
    light channels alone (valid), not made invalid by channels that did not exist yet;
    with valid_from set earlier, those days lack the heavy channels and are invalid."""
    sid, ids, rows = await simulated_site(storage, SIM, NORMAL, date(2025, 3, 3), 14)
    heavy = {v for k, v in ids.items() if k.endswith(":heavy")}
    start_heavy = datetime(2025, 3, 10, tzinfo=PARIS)
    await storage.ingest_measurements([r for r in rows if r[0] not in heavy or r[1] >= start_heavy])
    (row,) = [r for r in await history.annual_table(storage.pool, 2025, 0.95) if r.site_id == sid]
    assert row.days_valid == 14
    await storage.pool.execute("UPDATE channels SET valid_from = '2025-03-03' WHERE id = ANY($1::int[])", sorted(heavy))
    (row,) = [r for r in await history.annual_table(storage.pool, 2025, 0.95) if r.site_id == sid]
    assert row.days_valid == 7
