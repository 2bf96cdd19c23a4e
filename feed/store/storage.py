"""Storage API (asyncpg): sources and runs, sites and channels, measurements with
exact rollups, versioned events, quarantine and retention.

Measurements travel as plain tuples (`MeasurementRow`), not pydantic objects:
ingest handles millions of rows and the per-object cost would dominate.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo
from typing import Any, TypeVar

import asyncpg
from pydantic import ValidationError

from feed.store import validation
from feed.deadlines import CLOSE_TIMEOUT, close_pool
from feed.store.replica import Notify, ReplayGate
from feed.model import (
    ChannelRecord,
    EventRecord,
    Geometry,
    Quarantined,
    SiteRecord,
    StoredChannel,
    StoredEvent,
    StoredSite,
    TimeSlot,
    public_event_id,
)

# (channel_id, start, length seconds, count, speed km/h, occupancy %, quality)
MeasurementRow = tuple[int, datetime, int, int | None, float | None, float | None, str]
MEASUREMENT_COLUMNS = ("channel_id", "start", "length", "count", "speed", "occupancy", "quality")

# LISTEN on this channel to hear, at commit, that 'events' or 'measurements' changed.
CHANGES_CHANNEL = "roadfeed_changes"
# Client-side bounds: a frozen server accepts TCP connections and then never
# answers, and its statement_timeout cannot fire, so only the client can give up.
CONNECT_TIMEOUT = 5.0  # seconds to open a connection
COMMAND_TIMEOUT = 120.0  # seconds any one statement may take (ingest batches included)
ACQUIRE_TIMEOUT = 2.0  # seconds a request waits for a pooled connection (`bounded_connection`, `transactions.reading`)
ROUND_TRIP_TIMEOUT = 2.0  # seconds a trivial statement (BEGIN, SELECT 1) may take before the server counts as away

# What "the database is away" looks like from the client: refused or reset
# connections, timeouts (TimeoutError is an OSError), a server shutting down or
# starting, no connection slot left, a connection that died under a query.
DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)
# A connection that met one of these (or was cancelled) is closed at once, never given back.
_TERMINATE_ON: tuple[type[BaseException], ...] = (*DATABASE_UNAVAILABLE, asyncio.CancelledError)


@asynccontextmanager
async def bounded_connection(pool: asyncpg.Pool, seconds: float) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection (within ACQUIRE_TIMEOUT) for `seconds` of work at most.

    A connection whose work failed because the server is away, ran out of time or
    was cancelled is closed at once, never given back: giving it back would wait
    for its cancellation, that is for the silent server."""
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
        try:
            async with asyncio.timeout(seconds):
                yield conn
        except _TERMINATE_ON:
            conn.terminate()
            raise


_LOCK_CHANNEL = 1  # advisory lock class for channels being ingested
EVENT_WRITER_LOCK = 2  # advisory lock class of a source's events: held by every event writer until it commits


@dataclass
class Counts:
    new: int = 0
    updated: int = 0
    unchanged: int = 0

    def __iadd__(self, other: Counts) -> Counts:
        self.new += other.new
        self.updated += other.updated
        self.unchanged += other.unchanged
        return self


@dataclass
class SourceState:
    id: str
    etag: str | None
    last_modified: str | None
    watermark: str | None
    last_success: datetime | None
    last_error: str | None


@dataclass
class RunStats:
    http_status: int | None = None
    bytes: int = 0
    counts: Counts = field(default_factory=Counts)
    quarantined: int = 0
    complete: bool = False
    error: str | None = None


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 10, connect_timeout: float = CONNECT_TIMEOUT,
                      command_timeout: float | None = COMMAND_TIMEOUT, **kwargs: Any) -> asyncpg.Pool:
    # Custom plans: generic ones cannot see the size of the arrays we pass and
    # turn the rollup refresh into full scans as the table grows.
    settings = {"timezone": "UTC", "plan_cache_mode": "force_custom_plan", **kwargs.pop("server_settings", {})}
    return await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, init=_init_connection, server_settings=settings,
        timeout=connect_timeout, command_timeout=command_timeout, **kwargs
    )


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
_HOURLY_BUCKETS = ("m.start >= date_trunc('hour', t.lo, 'UTC') "
                   "AND m.start < date_trunc('hour', t.hi, 'UTC') + interval '1 hour'")

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


# Sites and channels: known rows are updated (when changed) and only unknown ones
# are inserted, so that a poll of known rows draws no value from the id sequence.
# `INSERT ... ON CONFLICT DO UPDATE` alone would draw one per row and per poll
# (20,000 sites polled every minute would exhaust a 32-bit id in weeks). Only a
# row inserted concurrently by another poll between the check and the insert
# draws a value it does not keep (ON CONFLICT DO NOTHING; the next poll updates it).
_INSERT_NEW = """
    INSERT INTO {table} ({columns})
    SELECT {values} FROM input i
     WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE t.source_id = $1 AND t.external_id = i.external_id)
    ON CONFLICT (source_id, external_id) DO NOTHING
    RETURNING 1"""


class Storage:
    """Everything the collectors and the HTTP layer read and write.

    Reads go to `pool`. Change notifications are heard on `listen_pool` through
    `listener(callback)`: the same pool, or, when `pool` is a hot standby, the
    primary's, with each notification held back until the standby replayed it
    (feed.store.replica).
    """

    def __init__(self, pool: asyncpg.Pool, timezone: str, *, listen_pool: asyncpg.Pool | None = None):
        self.pool = pool
        self.timezone = timezone
        self.whole_hour_zone = _whole_hour_offsets(timezone)
        self.listen_pool = listen_pool or pool
        self.replay_gate = ReplayGate(listen_pool, pool) if listen_pool is not None else None

    @classmethod
    async def open(cls, url: str, *, min_size: int = 1, max_size: int = 10, connect_timeout: float = CONNECT_TIMEOUT,
                   command_timeout: float | None = COMMAND_TIMEOUT, primary_url: str | None = None) -> Storage:
        """`url` is read; with `primary_url`, `url` is a standby of it (serving nodes)."""
        pool = await create_pool(url, min_size=min_size, max_size=max_size, connect_timeout=connect_timeout,
                                 command_timeout=command_timeout)
        try:
            tz = await pool.fetchval("SELECT value FROM roadfeed_meta WHERE key = 'timezone'")
            # The feeds' listener, the change stream's, and the replay gate's look at the WAL position.
            listen_pool = (await create_pool(primary_url, min_size=1, max_size=3, connect_timeout=connect_timeout,
                                             command_timeout=command_timeout) if primary_url else None)
        except BaseException:
            await close_pool(pool, CLOSE_TIMEOUT)
            raise
        return cls(pool, tz, listen_pool=listen_pool)

    def listener(self, callback: Notify) -> Notify:
        """The LISTEN callback that reaches `callback` once the change is readable from `pool`."""
        return callback if self.replay_gate is None else self.replay_gate.wrap(callback)

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Closes the pool(s); connections not given back within `timeout` s are terminated."""
        if self.replay_gate is not None:
            await self.replay_gate.close()
            await close_pool(self.listen_pool, timeout)
        await close_pool(self.pool, timeout)

    async def ping(self, timeout: float = ROUND_TRIP_TIMEOUT) -> None:
        """Raises one of DATABASE_UNAVAILABLE unless the server answers within `timeout` seconds.

        A connection that did not answer is closed at once rather than given back
        (giving it back would wait for its cancellation, i.e. for the server)."""
        async with bounded_connection(self.pool, timeout) as conn:
            await conn.fetchval("SELECT 1")

    # --- sources and runs ------------------------------------------------------

    async def ensure_source(self, source_id: str, kind: str, url: str) -> None:
        await self.pool.execute(
            """INSERT INTO sources (id, kind, url) VALUES ($1, $2, $3)
               ON CONFLICT (id) DO UPDATE SET kind = EXCLUDED.kind, url = EXCLUDED.url
               WHERE (sources.kind, sources.url) IS DISTINCT FROM (EXCLUDED.kind, EXCLUDED.url)""",
            source_id, kind, url,
        )

    async def source_state(self, source_id: str) -> SourceState:
        row = await self.pool.fetchrow(
            "SELECT id, etag, last_modified, watermark, last_success, last_error FROM sources WHERE id = $1",
            source_id,
        )
        if row is None:
            raise KeyError(f"unknown source {source_id!r}")
        return SourceState(**dict(row))

    async def source_statuses(self) -> list[dict[str, Any]]:
        """Every stored source's kind, last success and last error (what /feeds/status.json shows)."""
        rows = await self.pool.fetch(
            "SELECT id, kind, last_success, last_error, last_error_at FROM sources ORDER BY id")
        return [dict(r) for r in rows]

    async def source_times(self, timeout: float) -> list[asyncpg.Record]:
        """Every source's `id`, last success (`ok`) and last error (`err`) as Unix times, read within
        `timeout` seconds (a frozen server cannot hold the caller, a /metrics scrape)."""
        async with bounded_connection(self.pool, timeout) as conn:
            return await conn.fetch(
                "SELECT id, extract(epoch FROM last_success)::float8 AS ok, "
                "extract(epoch FROM last_error_at)::float8 AS err FROM sources ORDER BY id")

    async def claim_poll(self, source_id: str, owner: str, interval: float, lease: float, *,
                         due_only: bool = True) -> bool:
        """Takes the source for one poll: when it is due (unless `due_only` is off)
        and no other worker holds a live lease. The next due time moves one interval on."""
        claimed = await self.pool.fetchval(
            """UPDATE sources
                  SET lease_owner = $2, lease_until = now() + make_interval(secs => $4),
                      next_poll_at = now() + make_interval(secs => $3)
                WHERE id = $1
                  AND (NOT $5 OR next_poll_at IS NULL OR next_poll_at <= now())
                  AND (lease_until IS NULL OR lease_until < now() OR lease_owner = $2)
               RETURNING true""",
            source_id, owner, float(interval), float(lease), due_only,
        )
        return bool(claimed)

    async def close_interrupted_runs(self, source_id: str) -> int:
        """Runs of a source left open by a worker that died: called by the worker that
        has just claimed the source, so none of them can still be running."""
        closed = await self.pool.execute(
            """UPDATE source_runs SET finished = now(), error = 'interrupted: its worker stopped before the end'
                WHERE source_id = $1 AND finished IS NULL""", source_id)
        return int(closed.split()[-1])

    async def renew_poll(self, source_id: str, owner: str, lease: float) -> bool:
        renewed = await self.pool.fetchval(
            """UPDATE sources SET lease_until = now() + make_interval(secs => $3)
                WHERE id = $1 AND lease_owner = $2 RETURNING true""",
            source_id, owner, float(lease))
        return bool(renewed)

    async def release_poll(self, source_id: str, owner: str) -> None:
        await self.pool.execute(
            "UPDATE sources SET lease_until = NULL WHERE id = $1 AND lease_owner = $2", source_id, owner)

    async def start_run(self, source_id: str) -> int:
        return await self.pool.fetchval("INSERT INTO source_runs (source_id) VALUES ($1) RETURNING id", source_id)

    async def finish_run(
        self,
        run_id: int,
        stats: RunStats,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
        watermark: str | None = None,
    ) -> None:
        """Closes a run; a successful one also moves the source's polling state forward."""
        async with self.pool.acquire() as conn, conn.transaction():
            source_id = await conn.fetchval(
                """UPDATE source_runs SET finished = now(), http_status = $2, bytes = $3,
                          records_new = $4, records_updated = $5, records_unchanged = $6,
                          records_quarantined = $7, complete = $8, error = $9
                    WHERE id = $1 RETURNING source_id""",
                run_id, stats.http_status, stats.bytes, stats.counts.new, stats.counts.updated,
                stats.counts.unchanged, stats.quarantined, stats.complete, stats.error,
            )
            if stats.error is None:
                await conn.execute(
                    """UPDATE sources SET last_success = now(), updated = now(),
                              etag = coalesce($2, etag), last_modified = coalesce($3, last_modified),
                              watermark = coalesce($4, watermark)
                        WHERE id = $1""",
                    source_id, etag, last_modified, watermark,
                )
            else:
                await conn.execute(
                    "UPDATE sources SET last_error = $2, last_error_at = now(), updated = now() WHERE id = $1",
                    source_id, stats.error,
                )
            await conn.execute("SELECT pg_notify($1, 'sources')", CHANGES_CHANNEL)

    async def save_watermark(self, source_id: str, watermark: str | None) -> None:
        """Progress inside a run (page by page), so a crash resumes where it stopped."""
        await self.pool.execute("UPDATE sources SET watermark = $2, updated = now() WHERE id = $1",
                                source_id, watermark)

    async def quarantine(self, source_id: str, run_id: int | None, items: Sequence[Quarantined]) -> None:
        """One row per (source, record, reason): seen again, it is counted, not repeated."""
        if items:
            await self.pool.executemany(
                """INSERT INTO quarantine AS q (source_id, run_id, record_ref, reason, excerpt)
                   VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT (source_id, record_key) DO UPDATE
                      SET last_seen = now(), times_seen = q.times_seen + 1, run_id = EXCLUDED.run_id""",
                [(source_id, run_id, q.record_ref, q.reason, q.excerpt) for q in items],
            )

    async def drop_quarantine_before(self, cutoff: datetime) -> int:
        """Retention of the quarantine: records not seen again since `cutoff` go."""
        done = await self.pool.execute("DELETE FROM quarantine WHERE last_seen < $1", cutoff)
        return int(done.split()[-1])

    # --- sites and channels ----------------------------------------------------

    async def upsert_sites(self, source_id: str, sites: Sequence[SiteRecord]) -> Counts:
        rows = [
            (s.external_id, s.name, s.road, s.pr, s.abscissa, s.insee, s.lon, s.lat, s.metadata)
            for s in {s.external_id: s for s in sites}.values()
        ]
        if not rows:
            return Counts()
        result = await self.pool.fetchrow(
            f"""WITH input AS (
                   SELECT external_id, name, road, pr, abscissa, insee, metadata,
                          CASE WHEN lon IS NOT NULL AND lat IS NOT NULL
                               THEN ST_SetSRID(ST_MakePoint(lon, lat), 4326) END AS geom
                     FROM unnest($2::text[], $3::text[], $4::text[], $5::int[], $6::int[],
                                 $7::text[], $8::float8[], $9::float8[], $10::jsonb[])
                          AS i(external_id, name, road, pr, abscissa, insee, lon, lat, metadata)),
               changed AS (
                   UPDATE sites AS s
                      SET name = i.name, road = i.road, pr = i.pr, abscissa = i.abscissa, insee = i.insee,
                          geom = i.geom, metadata = i.metadata, updated = now()
                     FROM input i
                    WHERE s.source_id = $1 AND s.external_id = i.external_id
                      AND ((s.name, s.road, s.pr, s.abscissa, s.insee, s.metadata)
                           IS DISTINCT FROM (i.name, i.road, i.pr, i.abscissa, i.insee, i.metadata)
                           OR NOT (s.geom IS NOT DISTINCT FROM i.geom))
                   RETURNING 1),
               added AS ({_INSERT_NEW.format(
                   table="sites", columns="source_id, external_id, name, road, pr, abscissa, insee, geom, metadata",
                   values="$1, external_id, name, road, pr, abscissa, insee, geom, metadata")})
               SELECT (SELECT count(*) FROM added), (SELECT count(*) FROM changed)""",
            source_id, *map(list, zip(*rows, strict=True)),
        )
        if result[0] or result[1]:
            await self.pool.execute("SELECT pg_notify($1, 'sites')", CHANGES_CHANNEL)
        return Counts(result[0], result[1], len(rows) - result[0] - result[1])

    async def upsert_channels(self, source_id: str, channels: Sequence[ChannelRecord]) -> Counts:
        """Channels of sites already stored; a channel of an unknown site raises KeyError."""
        chans = list({c.external_id: c for c in channels}.values())
        if not chans:
            return Counts()
        site_ids = await self.site_ids(source_id, {c.site_external_id for c in chans})
        missing = sorted({c.site_external_id for c in chans} - site_ids.keys())
        if missing:
            raise KeyError(f"source {source_id}: channels refer to unknown sites {missing[:5]}")
        rows = [
            (site_ids[c.site_external_id], c.external_id, c.direction, c.direction_name, c.lane, c.vehicle_class,
             c.mobility_type, c.time_step)
            for c in chans
        ]
        result = await self.pool.fetchrow(
            f"""WITH input AS (
                   SELECT * FROM unnest($2::int[], $3::text[], $4::text[], $5::text[], $6::int[], $7::text[],
                                        $8::text[], $9::int[])
                          AS i(site_id, external_id, direction, direction_name, lane, vehicle_class, mobility_type,
                               time_step)),
               changed AS (
                   UPDATE channels AS c
                      SET site_id = i.site_id, direction = i.direction, direction_name = i.direction_name,
                          lane = i.lane,
                          vehicle_class = i.vehicle_class, mobility_type = i.mobility_type, time_step = i.time_step
                     FROM input i
                    WHERE c.source_id = $1 AND c.external_id = i.external_id
                      AND (c.site_id, c.direction, c.direction_name, c.lane, c.vehicle_class, c.mobility_type,
                           c.time_step)
                          IS DISTINCT FROM (i.site_id, i.direction, i.direction_name, i.lane, i.vehicle_class,
                                            i.mobility_type, i.time_step)
                   RETURNING 1),
               added AS ({_INSERT_NEW.format(
                   table="channels",
                   columns="source_id, site_id, external_id, direction, direction_name, lane, vehicle_class, "
                           "mobility_type, time_step",
                   values="$1, site_id, external_id, direction, direction_name, lane, vehicle_class, mobility_type, "
                          "time_step")})
               SELECT (SELECT count(*) FROM added), (SELECT count(*) FROM changed)""",
            source_id, *map(list, zip(*rows, strict=True)),
        )
        if result[0] or result[1]:
            await self.pool.execute("SELECT pg_notify($1, 'sites')", CHANGES_CHANNEL)
        return Counts(result[0], result[1], len(rows) - result[0] - result[1])

    async def site_ids(self, source_id: str, external_ids: Iterable[str]) -> dict[str, int]:
        rows = await self.pool.fetch(
            "SELECT external_id, id FROM sites WHERE source_id = $1 AND external_id = ANY($2::text[])",
            source_id, list(external_ids),
        )
        return {r[0]: r[1] for r in rows}

    async def channel_ids(self, source_id: str, external_ids: Iterable[str] | None = None) -> dict[str, int]:
        """Channel ids by external id (all of the source's channels when none are named)."""
        if external_ids is None:
            rows = await self.pool.fetch("SELECT external_id, id FROM channels WHERE source_id = $1", source_id)
        else:
            rows = await self.pool.fetch(
                "SELECT external_id, id FROM channels WHERE source_id = $1 AND external_id = ANY($2::text[])",
                source_id, list(external_ids),
            )
        return {r[0]: r[1] for r in rows}

    # --- measurements ----------------------------------------------------------

    async def ingest_measurements(self, rows: Sequence[MeasurementRow], run_id: int | None = None) -> Counts:
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
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT set_config('roadfeed.run_id', $1, true)", "" if run_id is None else str(run_id))
            # Serialise ingests of the same channels, so rollups see every committed row.
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, c) FROM unnest($2::int[]) AS c ORDER BY c", _LOCK_CHANNEL, channels
            )
            overlap = await conn.fetchval(
                """SELECT EXISTS (SELECT 1 FROM measurements
                                   WHERE channel_id = ANY($1::int[]) AND start BETWEEN $2 AND $3)""",
                channels, lo, hi,
            )
            if not overlap and await self._copy_new(conn, rows):
                revised = await self._validate(conn, channels, lo, hi)
                await self._refresh_rollups(conn, channels, [lo] * len(channels), [hi] * len(channels), all_new=True)
                counts = Counts(new=len(rows))
            else:
                counts, revised = await self._upsert(conn, rows, run_id, lo, hi)
            if revised:  # judgements changed around the batch: recompute those buckets from the raw rows
                await self._refresh_rollups(
                    conn, [r["channel_id"] for r in revised], [r["lo"] for r in revised], [r["hi"] for r in revised])
            if counts.new or counts.updated:
                await conn.execute("SELECT pg_notify($1, 'measurements')", CHANGES_CHANNEL)
            return counts

    async def _copy_new(self, conn: asyncpg.Connection, rows: Sequence[MeasurementRow]) -> bool:
        """COPY straight into measurements; False when the batch repeats a key."""
        try:
            async with conn.transaction():
                await conn.copy_records_to_table("measurements", records=rows, columns=MEASUREMENT_COLUMNS)
            return True
        except asyncpg.UniqueViolationError:
            return False

    async def _upsert(
        self, conn: asyncpg.Connection, rows: Sequence[MeasurementRow], run_id: int | None, lo: datetime, hi: datetime
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
            revised = await self._validate(conn, [r["channel_id"] for r in changed], lo, hi)
            await self._refresh_rollups(
                conn, [r["channel_id"] for r in changed], [r["lo"] for r in changed], [r["hi"] for r in changed]
            )
        return Counts(new=new, updated=updated, unchanged=distinct - new - updated), revised

    async def _validate(
        self, conn: asyncpg.Connection, channels: list[int], lo: datetime, hi: datetime
    ) -> list[asyncpg.Record]:
        """Judges the intervals of the batch's sites around [lo, hi] (feed/store/validation.py);
        returns, per channel, the range of intervals whose judgement changed."""
        return list(await conn.fetch(
            f"WITH v AS ({validation.VALIDATE}) "
            "SELECT channel_id, min(start) AS lo, max(start) AS hi FROM v GROUP BY channel_id",
            channels, lo, hi, self.timezone))

    async def _refresh_rollups(
        self, conn: asyncpg.Connection, channels: list[int], los: list[datetime], his: list[datetime],
        *, all_new: bool = False,
    ) -> None:
        """Brings the rollup buckets of these ranges up to date. `all_new`: every raw
        row in the ranges was just inserted, so its totals are added to the buckets."""
        finer, coarser = await conn.fetchrow(
            "SELECT bool_or(time_step < 3600), bool_or(time_step >= 3600) FROM channels WHERE id = ANY($1::int[])",
            channels)
        update = _ROLLUP_ADD if all_new else _ROLLUP_UPDATE
        if finer:
            rows = _BATCH_ROWS if all_new else _HOURLY_BUCKETS
            await conn.execute(_REFRESH_HOURLY.format(rows=rows, update=update), channels, los, his)
        daily = _REFRESH_DAILY.format(rows=_BATCH_ROWS if all_new else _DAILY_BUCKETS, update=update,
                                      channels="{channels}")
        if finer and self.whole_hour_zone:
            await conn.execute(_REFRESH_DAILY_FROM_HOURLY, channels, los, his, self.timezone)
            if coarser:
                await conn.execute(daily.format(channels="AND c.time_step >= 3600"),
                                   channels, los, his, self.timezone)
        else:
            await conn.execute(daily.format(channels=""), channels, los, his, self.timezone)

    async def refresh_rollups(
        self, conn: asyncpg.Connection, channels: list[int], los: list[datetime], his: list[datetime]
    ) -> None:
        """Recomputes the rollup buckets over these ranges from the raw rows, after their
        quality changed (a counter marked faulty, or the marking removed)."""
        if channels:
            await self._refresh_rollups(conn, channels, los, his)
            await conn.execute("SELECT pg_notify($1, 'measurements')", CHANGES_CHANNEL)

    async def drop_measurements_before(self, cutoff: datetime, batch: int = 50_000) -> int:
        """Retention: removes raw rows older than `cutoff`; rollups stay."""
        mode = await self.pool.fetchval("SELECT value FROM roadfeed_meta WHERE key = 'storage_mode'")
        if mode and mode.startswith("timescaledb"):
            # Whole chunks first, then the rows of the chunk that straddles the cutoff.
            before = await self.pool.fetchval("SELECT count(*) FROM measurements WHERE start < $1", cutoff)
            await self.pool.execute("SELECT drop_chunks('measurements', older_than => $1::timestamptz)", cutoff)
            await self.pool.execute("DELETE FROM measurements WHERE start < $1", cutoff)
            return before
        removed = 0
        while True:
            n = await self.pool.fetchval(
                """WITH gone AS (
                       DELETE FROM measurements WHERE ctid = ANY (ARRAY(
                           SELECT ctid FROM measurements WHERE start < $1 LIMIT $2))
                       RETURNING 1)
                   SELECT count(*) FROM gone""",
                cutoff, batch,
            )
            removed += n
            if n < batch:
                return removed

    # --- events ----------------------------------------------------------------

    async def upsert_events(
        self,
        source_id: str,
        records: Sequence[EventRecord],
        *,
        seen_at: datetime,
        run_id: int | None = None,
        complete_snapshot: bool = False,
        author: str | None = None,
    ) -> Counts:
        """New version for each changed event; unchanged ones only move `last_seen`.

        `author`: the agent who wrote these versions (None: a collector).

        With `complete_snapshot`, the source's open events absent from `records`
        are ended (status ended, actual end = `seen_at`), never deleted.
        """
        latest = {r.external_id: r for r in records}
        counts = Counts()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", EVENT_WRITER_LOCK, source_id)
            existing = {
                r["external_id"]: r
                for r in await conn.fetch(
                    """SELECT external_id, id, version, content_hash, status, first_seen FROM events
                        WHERE source_id = $1 AND external_id = ANY($2::text[])""",
                    source_id, list(latest),
                )
            }
            unchanged: list[str] = []
            writes: list[tuple[EventRecord, str, int, str, datetime]] = []
            for ext, rec in latest.items():
                digest = _content_hash(rec)
                old = existing.get(ext)
                if old is None:
                    writes.append((rec, public_event_id(source_id, ext), 1, "created", seen_at))
                    counts.new += 1
                elif old["content_hash"] == digest:
                    unchanged.append(old["id"])
                    counts.unchanged += 1
                else:
                    change = "reopened" if old["status"] == "ended" and rec.status != "ended" else (
                        "ended" if rec.status == "ended" else "updated")
                    writes.append((rec, old["id"], old["version"] + 1, change, old["first_seen"]))
                    counts.updated += 1
            if writes:
                await self._write_event_versions(conn, source_id, writes, seen_at, run_id, author)
            if unchanged:
                await conn.execute("UPDATE events SET last_seen = $2, last_run = $3 WHERE id = ANY($1::text[])",
                                   unchanged, seen_at, run_id)
            if complete_snapshot:
                counts.updated += await self._end_missing(conn, source_id, list(latest), seen_at, run_id)
            if counts.new or counts.updated:
                await conn.execute("SELECT pg_notify($1, 'events')", CHANGES_CHANNEL)
        return counts

    async def events_seen_by_run(self, source_id: str, run_id: int, external_ids: Sequence[str]) -> set[str]:
        """Which of these events run `run_id` has already stored."""
        rows = await self.pool.fetch(
            "SELECT external_id FROM events WHERE source_id = $1 AND external_id = ANY($2::text[]) AND last_run = $3",
            source_id, list(external_ids), run_id)
        return {r[0] for r in rows}

    async def end_events_not_seen(self, source_id: str, run_id: int, seen_at: datetime) -> int:
        """The end of a complete snapshot stored in batches by run `run_id`: the source's
        open events that no batch of the run listed are ended (never deleted)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", EVENT_WRITER_LOCK, source_id)
            gone = await conn.fetch(
                f"""SELECT {_EVENT_COLUMNS} FROM events
                     WHERE source_id = $1 AND status <> 'ended' AND last_run IS DISTINCT FROM $2""",
                source_id, run_id,
            )
            ended = await self._end(conn, source_id, gone, seen_at, run_id)
            if ended:
                await conn.execute("SELECT pg_notify($1, 'events')", CHANGES_CHANNEL)
        return ended

    async def _end_missing(
        self, conn: asyncpg.Connection, source_id: str, present: list[str], seen_at: datetime, run_id: int | None
    ) -> int:
        gone = await conn.fetch(
            f"""SELECT {_EVENT_COLUMNS} FROM events
                 WHERE source_id = $1 AND status <> 'ended' AND NOT (external_id = ANY($2::text[]))""",
            source_id, present,
        )
        return await self._end(conn, source_id, gone, seen_at, run_id)

    async def _end(self, conn: asyncpg.Connection, source_id: str, gone: list[asyncpg.Record], seen_at: datetime,
                   run_id: int | None) -> int:
        writes = []
        for row in gone:
            old = _stored_event(row)
            fields = {k: v for k, v in old if k in EventRecord.model_fields}
            ended = _as_stored(EventRecord, {**fields, "status": "ended", "actual_end": seen_at})
            writes.append((ended, old.id, old.version + 1, "ended", old.first_seen))
        if writes:
            await self._write_event_versions(conn, source_id, writes, seen_at, run_id)
        return len(writes)

    async def _write_event_versions(
        self,
        conn: asyncpg.Connection,
        source_id: str,
        writes: list[tuple[EventRecord, str, int, str, datetime]],
        seen_at: datetime,
        run_id: int | None,
        author: str | None = None,
    ) -> None:
        event_rows = []
        version_rows = []
        for rec, event_id, version, change, first_seen in writes:
            geometry = rec.geometry.model_dump_json() if rec.geometry else None
            event_rows.append((
                event_id, source_id, rec.external_id, version, rec.type, rec.subtype, rec.status, rec.severity,
                rec.planned_start, rec.planned_end, rec.actual_start, rec.actual_end, rec.road, rec.direction,
                rec.lanes_affected, geometry, rec.descriptions, rec.detour, rec.location_refs,
                rec.source_version, rec.source_updated, _content_hash(rec), first_seen, seen_at, seen_at,
                [slot.model_dump() for slot in rec.schedule], run_id,
            ))
            state = _as_stored(StoredEvent, dict(
                dict(rec), id=event_id, source_id=source_id, version=version,
                first_seen=first_seen, last_seen=seen_at, updated=seen_at,
            )).model_dump(mode="json")
            version_rows.append((event_id, version, change, seen_at, run_id, state, author))
        await conn.executemany(
            """INSERT INTO events (id, source_id, external_id, version, type, subtype, status, severity,
                                   planned_start, planned_end, actual_start, actual_end, road, direction,
                                   lanes_affected, geom, descriptions, detour, location_refs, source_version,
                                   source_updated, content_hash, first_seen, last_seen, updated, schedule, last_run)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                       ST_SetSRID(ST_GeomFromGeoJSON($16), 4326), $17, $18, $19, $20, $21, $22, $23, $24, $25, $26,
                       $27)
               ON CONFLICT (id) DO UPDATE SET
                   version = EXCLUDED.version, type = EXCLUDED.type, subtype = EXCLUDED.subtype,
                   status = EXCLUDED.status, severity = EXCLUDED.severity,
                   planned_start = EXCLUDED.planned_start, planned_end = EXCLUDED.planned_end,
                   actual_start = EXCLUDED.actual_start, actual_end = EXCLUDED.actual_end,
                   road = EXCLUDED.road, direction = EXCLUDED.direction, lanes_affected = EXCLUDED.lanes_affected,
                   geom = EXCLUDED.geom, descriptions = EXCLUDED.descriptions, detour = EXCLUDED.detour,
                   location_refs = EXCLUDED.location_refs, source_version = EXCLUDED.source_version,
                   source_updated = EXCLUDED.source_updated, content_hash = EXCLUDED.content_hash,
                   last_seen = EXCLUDED.last_seen, updated = EXCLUDED.updated, schedule = EXCLUDED.schedule,
                   last_run = EXCLUDED.last_run""",
            event_rows,
        )
        await conn.executemany(
            """INSERT INTO event_versions (event_id, version, change, recorded, run_id, state, author)
               VALUES ($1, $2, $3, $4, $5, $6, $7)""",
            version_rows,
        )

    async def events(self, *, ended_since: datetime | None = None, source_id: str | None = None) -> list[StoredEvent]:
        """Open events, plus those ended since `ended_since` (all ended ones when None), as the
        live feeds publish them: placed on the road referential when they have no PR (see
        _LOCATED_REFS)."""
        rows = await self.pool.fetch(
            f"""SELECT {_EVENT_FIELDS}, coalesce(located.refs, e.location_refs) AS location_refs
                  FROM events e LEFT JOIN LATERAL ({_LOCATED_REFS}) located ON true
                 WHERE ($1::timestamptz IS NULL OR status <> 'ended' OR updated >= $1)
                   AND ($2::text IS NULL OR source_id = $2)
                 ORDER BY id""",
            ended_since, source_id, LOCATE_TOLERANCE_M,
        )
        return [_stored_event(r) for r in rows]

    async def event_versions(self, event_id: str) -> list[StoredEvent]:
        rows = await self.pool.fetch("SELECT state FROM event_versions WHERE event_id = $1 ORDER BY version", event_id)
        return [StoredEvent.model_validate(r["state"]) for r in rows]

    # --- reading sites ---------------------------------------------------------

    async def sites(self) -> list[StoredSite]:
        """All sites with their channels and each channel's latest interval."""
        site_rows = await self.pool.fetch(
            """SELECT id, source_id, external_id, name, road, pr, abscissa, insee,
                      ST_X(geom) AS lon, ST_Y(geom) AS lat, metadata
                 FROM sites ORDER BY id"""
        )
        chan_rows = await self.pool.fetch(
            """SELECT c.id, c.site_id, s.external_id AS site_external_id, c.external_id, c.direction, c.lane,
                      c.vehicle_class, c.mobility_type, c.time_step,
                      l.start AS latest_start, l.length AS latest_length, l.count AS latest_count,
                      l.speed AS latest_speed, l.quality::text AS latest_quality
                 FROM channels c JOIN sites s ON s.id = c.site_id
                 LEFT JOIN LATERAL (SELECT start, length, count, speed, quality FROM measurements m
                                     WHERE m.channel_id = c.id ORDER BY start DESC LIMIT 1) l ON true
                ORDER BY c.site_id, c.id"""
        )
        by_site: dict[int, list[StoredChannel]] = {}
        for r in chan_rows:
            d = dict(r)
            site_id = d.pop("site_id")
            by_site.setdefault(site_id, []).append(StoredChannel(**d))
        return [StoredSite(**dict(r), channels=by_site.get(r["id"], [])) for r in site_rows]


_EVENT_FIELDS = """id, source_id, external_id, version, type, subtype, status::text AS status, severity,
    planned_start, planned_end, actual_start, actual_end, road, direction, lanes_affected,
    ST_AsGeoJSON(geom) AS geometry, descriptions, detour, schedule, source_version, source_updated,
    first_seen, last_seen, updated"""
_EVENT_COLUMNS = _EVENT_FIELDS + ", location_refs"

# How far (metres, in Lambert-93) an event's position may lie from its road for the
# referential to give it a PR + abscissa.
LOCATE_TOLERANCE_M = 200.0

# For the live feeds: an event `e` with a road and a geometry but no PR reference, on
# a road of the referential, gets the PR + abscissa of its point (or of its line's
# first and last positions, from / to) in `location_refs`, in the shape the DATEX II
# parser gives, so that every DATEX II writer puts the road number in a linear
# reference. No row (the event is read as stored) when the road is unknown or a
# position lies more than $3 metres from it; stored versions never change.
_LOCATED_REFS = """
    SELECT e.location_refs || jsonb_build_object('pr', jsonb_agg(jsonb_build_object(
               'at', a.at, 'road', e.road, 'pr', l.pr, 'abscissa', round(l.abscissa::numeric, 1)) ORDER BY a.n)) AS refs
      FROM unnest(CASE GeometryType(e.geom) WHEN 'POINT' THEN ARRAY['point'] ELSE ARRAY['from', 'to'] END,
                  CASE GeometryType(e.geom) WHEN 'POINT' THEN ARRAY[e.geom]
                       ELSE ARRAY[ST_StartPoint(e.geom), ST_EndPoint(e.geom)] END) WITH ORDINALITY AS a(at, g, n)
     CROSS JOIN LATERAL road_locate(upper(replace(e.road, ' ', '')), a.g) l
     WHERE e.road IS NOT NULL AND e.geom IS NOT NULL AND NOT e.location_refs ?| ARRAY['pr', 'referent']
    HAVING bool_and(coalesce(l.offset_m <= $3, false))"""


def _stored_event(row: asyncpg.Record) -> StoredEvent:
    d = dict(row)
    geometry = d.pop("geometry")
    d["geometry"] = Geometry.model_validate_json(geometry) if geometry else None
    for key, value in d.items():
        # asyncpg reads -infinity and infinity (what it writes for datetime.min and
        # datetime.max) as naive datetime.min / datetime.max: they are UTC instants,
        # and one such row must not make every event unreadable.
        if isinstance(value, datetime) and value.tzinfo is None:
            d[key] = value.replace(tzinfo=UTC)
    return _as_stored(StoredEvent, d)


_Stored = TypeVar("_Stored", EventRecord, StoredEvent)


def _as_stored(model: type[_Stored], data: dict[str, Any]) -> _Stored:
    """A model of what the database already holds. A row stored before today's ingest
    bounds (or by another writer) stays readable and can be ended, as it is: each
    renderer leaves out what it cannot write, and no feed or snapshot is held hostage."""
    try:
        return model(**data)
    except ValidationError:
        slots = [slot if isinstance(slot, TimeSlot) else TimeSlot.model_validate(slot)
                 for slot in data.get("schedule") or []]
        return model.model_construct(**{**data, "schedule": slots})


def _whole_hour_offsets(timezone: str) -> bool:
    """Whether every UTC offset the zone has used since 1990 is a whole number of hours."""
    zone = ZoneInfo(timezone)
    probes = (datetime(year, month, 1, tzinfo=UTC) for year in range(1990, 2041) for month in (1, 4, 7, 10))
    offsets = (p.astimezone(zone).utcoffset() for p in probes)
    return all(o is not None and o.total_seconds() % 3600 == 0 for o in offsets)


def _content_hash(rec: EventRecord) -> bytes:
    # Without a schedule, the hash every event had before schedules existed: no spurious new versions.
    return hashlib.sha256(rec.model_dump_json(exclude=None if rec.schedule else {"schedule"}).encode()).digest()

