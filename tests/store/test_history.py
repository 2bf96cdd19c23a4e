"""History queries: series equal recomputation from raw rows, coverage shows gaps,
annual means leave out days under the threshold."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from feed.model import ChannelRecord, SiteRecord
from feed.store.history import annual_table, site_series
from feed.store.storage import Storage

PARIS = ZoneInfo("Europe/Paris")
JAN1 = datetime(2025, 1, 1, tzinfo=PARIS)


async def setup_site(storage: Storage, classes=("light", "heavy")) -> dict[str, int]:
    await storage.ensure_source("cd34", "opendatasoft", "http://127.0.0.1/cd34")
    await storage.upsert_sites("cd34", [SiteRecord(external_id="S1", name="Montbazin", road="RD613")])
    await storage.upsert_channels(
        "cd34",
        [
            ChannelRecord(site_external_id="S1", external_id=f"{d}-{c}", direction=d, vehicle_class=c, time_step=3600)
            for d in ("N", "S")
            for c in classes
        ],
    )
    return await storage.channel_ids("cd34")


def wobble(name: str, base: int):
    """`base` ± 1 hour by hour, opposite in each direction: both directions sum to 2 x base every hour,
    and no channel looks like a frozen counter."""
    sign = 1 if name.startswith("N") else -1
    return lambda h: base + sign * (1 if h % 2 else -1)


def hours(channel: int, start: datetime, n: int, count) -> list[tuple]:
    return [
        (channel, (start + timedelta(hours=h)).astimezone(UTC), 3600, count(h), 70.0, None, "observed")
        for h in range(n)
    ]


async def test_daily_series_matches_raw_and_shows_gaps(storage: Storage):
    ids = await setup_site(storage)
    rows = []
    for name, cid in ids.items():
        per_hour = 100 if name.endswith("light") else 10
        rows += hours(cid, JAN1, 24 * 10, lambda h, c=per_hour: c + h % 3)
    rows = [r for r in rows if not (r[1].astimezone(PARIS).day == 5 and r[1].astimezone(PARIS).hour < 12)]
    await storage.ingest_measurements(rows)
    series = await site_series(storage.pool, 1, JAN1, JAN1 + timedelta(days=12), "day", "Europe/Paris")
    assert [p.period for p in series] == [date(2025, 1, d) for d in range(1, 13)]
    for p in series:
        raw = sum(r[3] for r in rows if r[1].astimezone(PARIS).date() == p.period)
        assert p.count == raw
    cov = {p.period.day: p.coverage for p in series}
    assert cov[1] == 1.0 and cov[5] == 0.5 and cov[11] == 0.0 and cov[12] == 0.0
    north_heavy = await site_series(
        storage.pool, 1, JAN1, JAN1 + timedelta(days=1), "day", "Europe/Paris", direction="N", vehicle_class="heavy"
    )
    assert north_heavy[0].count == sum(10 + h % 3 for h in range(24))


async def test_hourly_monthly_and_yearly_steps_agree(storage: Storage):
    ids = await setup_site(storage, classes=("all",))
    rows = [r for name, cid in ids.items() for r in hours(cid, JAN1, 24 * 40, wobble(name, 50))]
    await storage.ingest_measurements(rows)
    hourly = await site_series(storage.pool, 1, JAN1, JAN1 + timedelta(days=2), "hour", "Europe/Paris")
    assert len(hourly) == 48 and all(p.count == 100 and p.coverage == 1.0 for p in hourly)
    monthly = await site_series(storage.pool, 1, JAN1, datetime(2025, 3, 1, tzinfo=PARIS), "month", "Europe/Paris")
    assert [p.count for p in monthly] == [31 * 24 * 100, 9 * 24 * 100]
    assert monthly[0].coverage == 1.0 and abs(monthly[1].coverage - 9 / 28) < 1e-9
    yearly = await site_series(storage.pool, 1, JAN1, datetime(2026, 1, 1, tzinfo=PARIS), "year", "Europe/Paris")
    assert yearly[0].count == 40 * 24 * 100 and abs(yearly[0].coverage - 40 / 365) < 1e-9


async def test_annual_table_leaves_out_days_below_the_threshold(storage: Storage):
    ids = await setup_site(storage)
    rows = []
    for name, cid in ids.items():
        per_hour = 90 if name.endswith("light") else 10
        rows += hours(cid, JAN1, 24 * 20, wobble(name, per_hour))
    # Day 3 loses two hours (coverage 22/24 < 95 %) and has double counts: it must not weigh.
    rows = [r for r in rows if not (r[1].astimezone(PARIS).day == 3 and r[1].astimezone(PARIS).hour < 2)]
    rows = [(*r[:3], 2 * r[3], *r[4:]) if r[1].astimezone(PARIS).day == 3 else r for r in rows]
    await storage.ingest_measurements(rows)
    (row,) = await annual_table(storage.pool, 2025, 0.95)
    assert row.days_valid == 19 and row.days_excluded == 365 - 19
    assert row.tmja == 2 * 24 * 100  # both directions, light + heavy
    assert row.heavy_share == 0.1
    assert row.tmjo == 2 * 24 * 100  # working days; 1 January, a public holiday, is left out
    (lenient,) = await annual_table(storage.pool, 2025, 0.9)
    assert lenient.days_valid == 20 and lenient.tmja > row.tmja
