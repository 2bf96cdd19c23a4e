"""Measurements with exact rollups: a batch of intervals is stored idempotently
(COPY when it is all new, else a staging table and an upsert that writes only
the rows that changed), judged by validation (feed/store/validation.py), and the
hourly and daily rollup buckets it touched are brought up to date in the same
transaction. Retention drops raw rows and keeps the rollups.

Measurements travel as plain tuples (`MeasurementRow`), not pydantic objects:
ingest handles millions of rows and the per-object cost would dominate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import asyncpg

from feed.store import validation
from feed.store.writes import CHANGES_CHANNEL, Counts

# (channel_id, start, length seconds, count, speed km/h, occupancy %, quality)
MeasurementRow = tuple[int, datetime, int, int | None, float | None, float | None, str]
MEASUREMENT_COLUMNS = ("channel_id", "start", "length", "count", "speed", "occupancy", "quality")

_LOCK_CHANNEL = 1  # advisory lock class for channels being ingested


@dataclass(frozen=True)
class Zone:
    """The zone whose local days the daily rollups count (`name`), and whether every UTC
    offset it has used since 1990 is a whole number of hours (`whole_hours`: then a
    day is summed from its hours, which never straddle two local days)."""

    name: str
    whole_hours: bool

    @classmethod
    def of(cls, timezone: str) -> Zone:
        zone = ZoneInfo(timezone)
        probes = (datetime(year, month, 1, tzinfo=UTC) for year in range(1990, 2041) for month in (1, 4, 7, 10))
        offsets = (p.astimezone(zone).utcoffset() for p in probes)
        return cls(timezone, all(o is not None and o.total_seconds() % 3600 == 0 for o in offsets))


# --- rollups -------------------------------------------------------------------

_PRESENT = "m.count IS NOT NULL AND m.quality IN ('observed', 'estimated') AND m.validation IS NULL"
_ROLLUP_VALUES = f"""
       coalesce(sum(m.count) FILTER (WHERE {_PRESENT}), 0),
       coalesce(sum(m.speed::float8 * m.count) FILTER (WHERE {_PRESENT} AND m.speed IS NOT NULL), 0),
       coalesce(sum(m.count) FILTER (WHERE {_PRESENT} AND m.speed IS NOT NULL), 0),
       count(*) FILTER (WHERE {_PRESENT}),
       count(*) FILTER (WHERE {_PRESENT} AND m.quality = 'estimated')"""
_ROLLUP_UPDATE = """
    count_sum = EXCLUDED.count_sum, speed_weighted_sum = EXCLUDED.speed_weighted_sum,
    speed_count = EXCLUDED.speed_count, intervals_present = EXCLUDED.intervals_present,
    intervals_estimated = EXCLUDED.intervals_estimated, intervals_expected = EXCLUDED.intervals_expected"""
# Adding a batch of rows that are all new (the COPY path) to the buckets' totals:
# exact, and it reads only the batch instead of whole buckets.
_ROLLUP_ADD = """
    count_sum = r.count_sum + EXCLUDED.count_sum,
    speed_weighted_sum = r.speed_weighted_sum + EXCLUDED.speed_weighted_sum,
    speed_count = r.speed_count + EXCLUDED.speed_count,
    intervals_present = r.intervals_present + EXCLUDED.intervals_present,
    intervals_estimated = r.intervals_estimated + EXCLUDED.intervals_estimated,
    intervals_expected = EXCLUDED.intervals_expected"""
_BATCH_ROWS = "m.start BETWEEN t.lo AND t.hi"

# $1 channel ids, $2 first and $3 last interval start per channel: every hour
# bucket between them is recomputed from the raw rows ({rows} = the buckets, with
# {update} replacing their totals), or the batch's rows are added ({rows} = the
# batch, {update} adding). Only channels finer than
# an hour have hourly rollups: an hourly channel's raw rows are its hourly
# series (the `hourly` view joins both), and storing them twice would halve
# ingest speed for nothing.
_REFRESH_HOURLY = f"""
INSERT INTO rollup_hourly AS r (channel_id, bucket, count_sum, speed_weighted_sum, speed_count,
                                intervals_present, intervals_estimated, intervals_expected)
SELECT m.channel_id, date_trunc('hour', m.start, 'UTC'), {_ROLLUP_VALUES},
       greatest(1, 3600 / min(c.time_step))
  FROM unnest($1::int[], $2::timestamptz[], $3::timestamptz[]) AS t(channel_id, lo, hi)
  JOIN measurements m ON m.channel_id = t.channel_id AND {{rows}}
  JOIN channels c ON c.id = m.channel_id AND c.time_step < 3600
 GROUP BY m.channel_id, date_trunc('hour', m.start, 'UTC')
ON CONFLICT (channel_id, bucket) DO UPDATE SET {{update}}"""
# Hours are UTC hours, named explicitly: the session's TimeZone (UTC in our pools,
# but a pool configured elsewhere may differ) must not move a bucket.
_HOURLY_BUCKETS = (
    "m.start >= date_trunc('hour', t.lo, 'UTC') AND m.start < date_trunc('hour', t.hi, 'UTC') + interval '1 hour'"
)

# At least one interval a day: a daily channel owes one even on a 23-hour day.
_DAILY_EXPECTED = """greatest(1, extract(epoch FROM ((({day} + 1)::timestamp AT TIME ZONE $4)
                         - (({day})::timestamp AT TIME ZONE $4)))::integer / min(c.time_step))"""

# The same for local days of zone $4; expected intervals follow the day's real
# length (23 or 25 hours on DST changes). {channels} narrows the channels.
_REFRESH_DAILY = f"""
INSERT INTO rollup_daily AS r (channel_id, day, count_sum, speed_weighted_sum, speed_count,
                               intervals_present, intervals_estimated, intervals_expected)
SELECT m.channel_id, (m.start AT TIME ZONE $4)::date AS day, {_ROLLUP_VALUES},
       {_DAILY_EXPECTED.format(day="(m.start AT TIME ZONE $4)::date")}
  FROM unnest($1::int[], $2::timestamptz[], $3::timestamptz[]) AS t(channel_id, lo, hi)
  JOIN measurements m ON m.channel_id = t.channel_id AND {{rows}}
  JOIN channels c ON c.id = m.channel_id {{channels}}
 GROUP BY m.channel_id, (m.start AT TIME ZONE $4)::date
ON CONFLICT (channel_id, day) DO UPDATE SET {{update}}"""
_DAILY_BUCKETS = """m.start >= (date_trunc('day', t.lo AT TIME ZONE $4) AT TIME ZONE $4)
                     AND m.start < ((date_trunc('day', t.hi AT TIME ZONE $4) + interval '1 day') AT TIME ZONE $4)"""

# Channels finer than an hour: their days summed from the hourly rollup just
# refreshed (an hour never straddles two local days in a zone whose offsets are
# whole hours), which reads 4 to 60 times fewer rows than the raw intervals.
_REFRESH_DAILY_FROM_HOURLY = f"""
INSERT INTO rollup_daily AS r (channel_id, day, count_sum, speed_weighted_sum, speed_count,
                               intervals_present, intervals_estimated, intervals_expected)
SELECT h.channel_id, (h.bucket AT TIME ZONE $4)::date AS day,
       sum(h.count_sum), sum(h.speed_weighted_sum), sum(h.speed_count),
       sum(h.intervals_present), sum(h.intervals_estimated),
       {_DAILY_EXPECTED.format(day="(h.bucket AT TIME ZONE $4)::date")}
  FROM unnest($1::int[], $2::timestamptz[], $3::timestamptz[]) AS t(channel_id, lo, hi)
  JOIN rollup_hourly h ON h.channel_id = t.channel_id
                      AND h.bucket >= (date_trunc('day', t.lo AT TIME ZONE $4) AT TIME ZONE $4)
                      AND h.bucket < ((date_trunc('day', t.hi AT TIME ZONE $4) + interval '1 day') AT TIME ZONE $4)
  JOIN channels c ON c.id = h.channel_id AND c.time_step < 3600
 GROUP BY h.channel_id, (h.bucket AT TIME ZONE $4)::date
ON CONFLICT (channel_id, day) DO UPDATE SET {_ROLLUP_UPDATE}"""

_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS rf_staging (
    channel_id integer, start timestamptz, length integer, count integer,
    speed real, occupancy real, quality quality
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS rf_changed (
    channel_id integer, start timestamptz, inserted boolean
) ON COMMIT DELETE ROWS"""

# Writes only rows that are new or whose values differ, and records which ones.
# Unchanged rows are filtered out by a read-only join first: ON CONFLICT alone
# would lock (and so write) every conflicting row even when nothing changes.
# {pick} is the staging table or its de-duplicated form.
_UPSERT = """
WITH up AS (
    INSERT INTO measurements AS m (channel_id, start, length, count, speed, occupancy, quality, run_id)
    SELECT s.channel_id, s.start, s.length, s.count, s.speed, s.occupancy, s.quality, $1
      FROM {pick}
      LEFT JOIN measurements o ON o.channel_id = s.channel_id AND o.start = s.start
                              AND o.start BETWEEN $2 AND $3  -- lets the planner read only the batch's time range
     WHERE o.channel_id IS NULL
        OR (o.length, o.count, o.speed, o.occupancy, o.quality)
           IS DISTINCT FROM (s.length, s.count, s.speed, s.occupancy, s.quality)
    ON CONFLICT (channel_id, start) DO UPDATE
       SET length = EXCLUDED.length, count = EXCLUDED.count, speed = EXCLUDED.speed,
           occupancy = EXCLUDED.occupancy, quality = EXCLUDED.quality, run_id = EXCLUDED.run_id
    RETURNING m.channel_id, m.start, (xmax = 0) AS inserted
)
INSERT INTO rf_changed SELECT channel_id, start, inserted FROM up"""

# The last row of a key wins when a batch repeats it (COPY fills a fresh heap in order).
_DEDUPED = """(SELECT DISTINCT ON (channel_id, start) * FROM rf_staging
               ORDER BY channel_id, start, ctid DESC) AS s"""


# --- writing and dropping ------------------------------------------------------


async def ingest(pool: asyncpg.Pool, zone: Zone, rows: Sequence[MeasurementRow], run_id: int | None = None) -> Counts:
    """Stores a batch idempotently and refreshes the rollup buckets it changed.

    New data (the usual case: the next intervals of each channel) is copied
    straight into the table; anything overlapping stored rows goes through a
    staging table and an upsert that writes only rows whose values changed.
    """
    if not rows:
        return Counts()
    channels = sorted({r[0] for r in rows})
    lo = min(r[1] for r in rows)
    hi = max(r[1] for r in rows)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('roadfeed.run_id', $1, true)", "" if run_id is None else str(run_id))
        # Serialise ingests of the same channels, so rollups see every committed row.
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, c) FROM unnest($2::int[]) AS c ORDER BY c", _LOCK_CHANNEL, channels
        )
        overlap = await conn.fetchval(
            """SELECT EXISTS (SELECT 1 FROM measurements
                               WHERE channel_id = ANY($1::int[]) AND start BETWEEN $2 AND $3)""",
            channels,
            lo,
            hi,
        )
        if not overlap and await _copy_new(conn, rows):
            revised = await _validate(conn, zone, channels, lo, hi)
            await _refresh_rollups(conn, zone, channels, [lo] * len(channels), [hi] * len(channels), all_new=True)
            counts = Counts(new=len(rows))
        else:
            counts, revised = await _upsert(conn, zone, rows, run_id, lo, hi)
        if revised:  # judgements changed around the batch: recompute those buckets from the raw rows
            await _refresh_rollups(
                conn, zone, [r["channel_id"] for r in revised], [r["lo"] for r in revised], [r["hi"] for r in revised]
            )
        if counts.new or counts.updated:
            await conn.execute("SELECT pg_notify($1, 'measurements')", CHANGES_CHANNEL)
        return counts


async def _copy_new(conn: asyncpg.Connection, rows: Sequence[MeasurementRow]) -> bool:
    """COPY straight into measurements; False when the batch repeats a key."""
    try:
        async with conn.transaction():
            await conn.copy_records_to_table("measurements", records=rows, columns=MEASUREMENT_COLUMNS)
        return True
    except asyncpg.UniqueViolationError:
        return False


async def _upsert(
    conn: asyncpg.Connection,
    zone: Zone,
    rows: Sequence[MeasurementRow],
    run_id: int | None,
    lo: datetime,
    hi: datetime,
) -> tuple[Counts, list[asyncpg.Record]]:
    await conn.execute(_STAGING)
    await conn.copy_records_to_table("rf_staging", records=rows, columns=MEASUREMENT_COLUMNS)
    await conn.execute("ANALYZE rf_staging")
    distinct = len(rows)
    try:
        async with conn.transaction():
            await conn.execute(_UPSERT.format(pick="rf_staging AS s"), run_id, lo, hi)
    except asyncpg.CardinalityViolationError:  # the batch repeats a key
        await conn.execute(_UPSERT.format(pick=_DEDUPED), run_id, lo, hi)
        distinct = await conn.fetchval("SELECT count(*) FROM (SELECT DISTINCT channel_id, start FROM rf_staging) s")
    changed = await conn.fetch(
        """SELECT channel_id, min(start) AS lo, max(start) AS hi,
                  count(*) FILTER (WHERE inserted) AS new, count(*) FILTER (WHERE NOT inserted) AS updated
             FROM rf_changed GROUP BY channel_id"""
    )
    new = sum(r["new"] for r in changed)
    updated = sum(r["updated"] for r in changed)
    revised: list[asyncpg.Record] = []
    if changed:
        revised = await _validate(conn, zone, [r["channel_id"] for r in changed], lo, hi)
        await _refresh_rollups(
            conn, zone, [r["channel_id"] for r in changed], [r["lo"] for r in changed], [r["hi"] for r in changed]
        )
    return Counts(new=new, updated=updated, unchanged=distinct - new - updated), revised


async def _validate(
    conn: asyncpg.Connection, zone: Zone, channels: list[int], lo: datetime, hi: datetime
) -> list[asyncpg.Record]:
    """Judges the intervals of the batch's sites around [lo, hi] (feed/store/validation.py);
    returns, per channel, the range of intervals whose judgement changed."""
    return list(
        await conn.fetch(
            f"WITH v AS ({validation.VALIDATE}) "
            "SELECT channel_id, min(start) AS lo, max(start) AS hi FROM v GROUP BY channel_id",
            channels,
            lo,
            hi,
            zone.name,
        )
    )


async def _refresh_rollups(
    conn: asyncpg.Connection,
    zone: Zone,
    channels: list[int],
    los: list[datetime],
    his: list[datetime],
    *,
    all_new: bool = False,
) -> None:
    """Brings the rollup buckets of these ranges up to date. `all_new`: every raw
    row in the ranges was just inserted, so its totals are added to the buckets."""
    finer, coarser = await conn.fetchrow(
        "SELECT bool_or(time_step < 3600), bool_or(time_step >= 3600) FROM channels WHERE id = ANY($1::int[])", channels
    )
    update = _ROLLUP_ADD if all_new else _ROLLUP_UPDATE
    if finer:
        rows = _BATCH_ROWS if all_new else _HOURLY_BUCKETS
        await conn.execute(_REFRESH_HOURLY.format(rows=rows, update=update), channels, los, his)
    daily = _REFRESH_DAILY.format(rows=_BATCH_ROWS if all_new else _DAILY_BUCKETS, update=update, channels="{channels}")
    if finer and zone.whole_hours:
        await conn.execute(_REFRESH_DAILY_FROM_HOURLY, channels, los, his, zone.name)
        if coarser:
            await conn.execute(daily.format(channels="AND c.time_step >= 3600"), channels, los, his, zone.name)
    else:
        await conn.execute(daily.format(channels=""), channels, los, his, zone.name)


async def refresh_rollups(
    conn: asyncpg.Connection, zone: Zone, channels: list[int], los: list[datetime], his: list[datetime]
) -> None:
    """Recomputes the rollup buckets over these ranges from the raw rows, after their
    quality changed (a counter marked faulty, or the marking removed)."""
    if channels:
        await _refresh_rollups(conn, zone, channels, los, his)
        await conn.execute("SELECT pg_notify($1, 'measurements')", CHANGES_CHANNEL)


async def drop_before(pool: asyncpg.Pool, cutoff: datetime, batch: int = 50_000) -> int:
    """Retention: removes raw rows older than `cutoff`; rollups stay."""
    mode = await pool.fetchval("SELECT value FROM roadfeed_meta WHERE key = 'storage_mode'")
    if mode and mode.startswith("timescaledb"):
        # Whole chunks first, then the rows of the chunk that straddles the cutoff.
        before = await pool.fetchval("SELECT count(*) FROM measurements WHERE start < $1", cutoff)
        await pool.execute("SELECT drop_chunks('measurements', older_than => $1::timestamptz)", cutoff)
        await pool.execute("DELETE FROM measurements WHERE start < $1", cutoff)
        return before
    removed = 0
    while True:
        n = await pool.fetchval(
            """WITH gone AS (
                   DELETE FROM measurements WHERE ctid = ANY (ARRAY(
                       SELECT ctid FROM measurements WHERE start < $1 LIMIT $2))
                   RETURNING 1)
               SELECT count(*) FROM gone""",
            cutoff,
            batch,
        )
        removed += n
        if n < batch:
            return removed
