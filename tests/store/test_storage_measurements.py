"""Measurement ingest: idempotent, corrections counted, rollups always exact, retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feed.model import ChannelRecord, SiteRecord
from feed.store import history
from feed.store.storage import Storage, create_pool

T0 = datetime(2026, 3, 28, 20, 0, tzinfo=UTC)  # the night France moves to summer time


async def make_channels(storage: Storage, steps: tuple[int, ...] = (900, 3600)) -> list[int]:
    await storage.ensure_source("cnt", "comptage-mobilites", "http://127.0.0.1/cnt")
    await storage.upsert_sites(
        "cnt", [SiteRecord(external_id="S1", name="RD613 Montbazin", road="RD613", lon=3.69, lat=43.51)]
    )
    await storage.upsert_channels(
        "cnt",
        [
            ChannelRecord(site_external_id="S1", external_id=f"C{i}", direction="N", time_step=step)
            for i, step in enumerate(steps)
        ],
    )
    ids = await storage.channel_ids("cnt")
    return [ids[f"C{i}"] for i in range(len(steps))]


def series(channel: int, step: int, n: int, start: datetime = T0, base: int = 10) -> list[tuple]:
    return [
        (channel, start + timedelta(seconds=step * i), step, base + i % 7, 80.0 + i % 5, None, "observed")
        for i in range(n)
    ]


RECOMPUTE_HOURLY = """
SELECT m.channel_id, date_trunc('hour', m.start) AS bucket,
       coalesce(sum(count) FILTER (WHERE ok), 0) AS count_sum,
       count(*) FILTER (WHERE ok) AS present,
       coalesce(sum(speed::float8 * count) FILTER (WHERE ok AND speed IS NOT NULL), 0) AS speed_weighted_sum
  FROM measurements m, LATERAL (SELECT count IS NOT NULL AND quality IN ('observed', 'estimated')
                                      AND validation IS NULL AS ok) q
 GROUP BY 1, 2 ORDER BY 1, 2"""

RECOMPUTE_DAILY = """
SELECT m.channel_id, (m.start AT TIME ZONE 'Europe/Paris')::date AS day,
       coalesce(sum(count) FILTER (WHERE ok), 0) AS count_sum,
       count(*) FILTER (WHERE ok) AS present,
       coalesce(sum(speed::float8 * count) FILTER (WHERE ok AND speed IS NOT NULL), 0) AS speed_weighted_sum
  FROM measurements m, LATERAL (SELECT count IS NOT NULL AND quality IN ('observed', 'estimated')
                                      AND validation IS NULL AS ok) q
 GROUP BY 1, 2 ORDER BY 1, 2"""


async def assert_rollups_exact(pool: asyncpg.Pool) -> None:
    sub_hourly = {r[0] for r in await pool.fetch("SELECT id FROM channels WHERE time_step < 3600")}
    want_h = [tuple(r) for r in await pool.fetch(RECOMPUTE_HOURLY) if r[0] in sub_hourly]
    got_h = [
        tuple(r)
        for r in await pool.fetch(
            "SELECT channel_id, bucket, count_sum, intervals_present, speed_weighted_sum "
            "FROM rollup_hourly ORDER BY 1, 2"
        )
    ]
    assert got_h == want_h
    hourly_or_finer = {r[0] for r in await pool.fetch("SELECT id FROM channels WHERE time_step <= 3600")}
    want_all = [tuple(r) for r in await pool.fetch(RECOMPUTE_HOURLY) if r[0] in hourly_or_finer]
    got_all = [
        tuple(r)
        for r in await pool.fetch(
            "SELECT channel_id, bucket, count_sum, intervals_present, speed_weighted_sum FROM hourly ORDER BY 1, 2"
        )
    ]
    assert got_all == want_all
    want_d = [tuple(r) for r in await pool.fetch(RECOMPUTE_DAILY)]
    got_d = [
        tuple(r)
        for r in await pool.fetch(
            "SELECT channel_id, day, count_sum, intervals_present, speed_weighted_sum FROM rollup_daily ORDER BY 1, 2"
        )
    ]
    assert got_d == want_d


async def test_reingest_reports_unchanged_and_writes_nothing(storage: Storage):
    c15, c60 = await make_channels(storage)
    batch = series(c15, 900, 200) + series(c60, 3600, 50)
    first = await storage.ingest_measurements(batch, run_id=None)
    assert (first.new, first.updated, first.unchanged) == (250, 0, 0)
    before = await storage.pool.fetch("SELECT xmin::text, * FROM measurements ORDER BY channel_id, start")
    rollups_before = await storage.pool.fetch("SELECT xmin::text, * FROM rollup_daily ORDER BY 2, 3")
    again = await storage.ingest_measurements(batch)
    assert (again.new, again.updated, again.unchanged) == (0, 0, 250)
    assert await storage.pool.fetch("SELECT xmin::text, * FROM measurements ORDER BY channel_id, start") == before
    assert await storage.pool.fetch("SELECT xmin::text, * FROM rollup_daily ORDER BY 2, 3") == rollups_before


async def test_corrected_value_is_counted_and_updates_its_rollups(storage: Storage):
    c15, c60 = await make_channels(storage)
    batch = series(c15, 900, 96) + series(c60, 3600, 24)
    await storage.ingest_measurements(batch)
    fixed = list(batch)
    ch, start, length, count, speed, occ, q = fixed[5]
    fixed[5] = (ch, start, length, count + 9, speed, occ, q)  # plausible: +1000 would be judged a spike
    counts = await storage.ingest_measurements(fixed)
    assert (counts.new, counts.updated, counts.unchanged) == (0, 1, 119)
    hour = start.replace(minute=0)
    assert await storage.pool.fetchval(
        "SELECT count_sum FROM rollup_hourly WHERE channel_id = $1 AND bucket = $2", c15, hour
    ) == sum(r[3] for r in fixed if r[0] == c15 and r[1].replace(minute=0) == hour)
    await assert_rollups_exact(storage.pool)


async def test_run_id_is_recorded_on_written_rows(storage: Storage):
    c15, _ = await make_channels(storage)
    run = await storage.start_run("cnt")
    await storage.ingest_measurements(series(c15, 900, 4), run_id=run)
    assert {r[0] for r in await storage.pool.fetch("SELECT run_id FROM measurements")} == {run}


async def test_batch_repeating_a_key_keeps_the_last_value(storage: Storage):
    c15, _ = await make_channels(storage)
    row = series(c15, 900, 1)[0]
    later = (*row[:3], 99, *row[4:])
    counts = await storage.ingest_measurements([row, later])
    assert counts.new == 1 and counts.unchanged == 0
    assert await storage.pool.fetchval("SELECT count FROM measurements") == 99
    await assert_rollups_exact(storage.pool)


async def test_coverage_counts_expected_intervals_of_a_dst_day(storage: Storage):
    _c15, c60 = await make_channels(storage)
    day_start = datetime(2026, 3, 28, 23, 0, tzinfo=UTC)  # 29 March 00:00 in Paris, a 23-hour day
    await storage.ingest_measurements(series(c60, 3600, 20, start=day_start))
    row = await storage.pool.fetchrow(
        "SELECT intervals_present, intervals_expected FROM rollup_daily WHERE channel_id = $1 AND day = '2026-03-29'",
        c60,
    )
    assert (row["intervals_present"], row["intervals_expected"]) == (20, 23)


async def test_missing_and_invalid_intervals_do_not_count_as_present(storage: Storage):
    c15, _ = await make_channels(storage)
    rows = series(c15, 900, 4)
    rows[1] = (*rows[1][:3], None, None, None, "missing")
    rows[2] = (*rows[2][:6], "invalid")
    await storage.ingest_measurements(rows)
    r = await storage.pool.fetchrow("SELECT count_sum, intervals_present, intervals_expected FROM rollup_hourly")
    assert (r["intervals_present"], r["intervals_expected"]) == (2, 4)
    assert r["count_sum"] == rows[0][3] + rows[3][3]


batches = st.lists(
    st.lists(
        st.tuples(
            st.integers(0, 1),
            st.integers(0, 400),
            st.integers(0, 500) | st.none(),
            st.sampled_from(["observed", "estimated", "missing", "invalid"]),
        ),
        min_size=1,
        max_size=60,
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=batches)
async def test_rollups_equal_recomputation_across_late_and_out_of_order_batches(server, batches):
    storage = await Storage.open(server.new_database())
    try:
        channels = await make_channels(storage)
        steps = (900, 3600)
        for batch in batches:
            rows = [
                (channels[c], T0 + timedelta(seconds=steps[c] * k), steps[c], n, 70.0 if n else None, None, q)
                for c, k, n, q in batch
            ]
            await storage.ingest_measurements(rows)
        await assert_rollups_exact(storage.pool)
    finally:
        await storage.close()


async def test_retention_drops_old_raw_rows_and_keeps_rollups(storage: Storage):
    c15, c60 = await make_channels(storage)
    await storage.ingest_measurements(series(c15, 900, 96 * 30) + series(c60, 3600, 24 * 30))
    daily_before = await storage.pool.fetch("SELECT * FROM rollup_daily ORDER BY 1, 2")
    cutoff = T0 + timedelta(days=20)
    expected_removed = await storage.pool.fetchval("SELECT count(*) FROM measurements WHERE start < $1", cutoff)
    removed = await storage.drop_measurements_before(cutoff)
    assert removed == expected_removed > 0
    assert await storage.pool.fetchval("SELECT min(start) FROM measurements") >= cutoff
    assert await storage.pool.fetch("SELECT * FROM rollup_daily ORDER BY 1, 2") == daily_before


@pytest.mark.parametrize("session_zone", ["Asia/Kolkata", "Europe/Paris", "America/St_Johns"])
async def test_hour_buckets_do_not_depend_on_the_sessions_time_zone(server, session_zone: str):
    """Rollup hours are UTC hours whatever the session's TimeZone (a pool configured
    elsewhere, a role's default): written in a +05:30 or -03:30 session, or in Paris
    across the spring-forward gap, they are the buckets every reader looks up, so the
    hour after the gap is not reported empty."""
    url = server.new_database()
    pool = await create_pool(url, server_settings={"timezone": session_zone})
    storage = Storage(pool, "Europe/Paris")
    try:
        (c5,) = await make_channels(storage, (300,))
        rows = series(c5, 300, 12 * 8, T0 + timedelta(hours=2))  # 22:00Z to 06:00Z: the gap at 01:00Z
        await storage.ingest_measurements(rows[::2])
        await storage.ingest_measurements(rows[1::2])  # late rows, into buckets already rolled up
        site = await history.site(storage.pool, 1, "Europe/Paris")
        assert site is not None
        points = await history.channel_series(
            storage.pool, site.channels, T0 + timedelta(hours=2), T0 + timedelta(hours=10), "hour", "Europe/Paris"
        )
        assert [p.count for p in points] == [sum(r[3] for r in rows[12 * h : 12 * (h + 1)]) for h in range(8)]
        assert all(p.coverage == 1.0 for p in points)
        buckets = [r[0] for r in await pool.fetch("SELECT bucket FROM rollup_hourly ORDER BY bucket")]
        assert buckets == [T0 + timedelta(hours=2 + h) for h in range(8)]
    finally:
        await storage.close()
