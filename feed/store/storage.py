"""The Storage class: the connection pool (and, on a hot standby, the primary's
for listening), sources and runs, sites and channels, quarantine and its
retention. Measurements with exact rollups (feed.store.measurements) and
versioned events (feed.store.events) are written and read through it too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from feed.deadlines import CLOSE_TIMEOUT, close_pool
from feed.model import ChannelRecord, EventRecord, Quarantined, SiteRecord, StoredChannel, StoredEvent, StoredSite
from feed.store import events, measurements
from feed.store.measurements import MeasurementRow, Zone
from feed.store.replica import Notify, ReplayGate
from feed.store.writes import CHANGES_CHANNEL, Counts

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


async def create_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    connect_timeout: float = CONNECT_TIMEOUT,
    command_timeout: float | None = COMMAND_TIMEOUT,
    **kwargs: Any,
) -> asyncpg.Pool:
    # Custom plans: generic ones cannot see the size of the arrays we pass and
    # turn the rollup refresh into full scans as the table grows.
    settings = {"timezone": "UTC", "plan_cache_mode": "force_custom_plan", **kwargs.pop("server_settings", {})}
    return await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        server_settings=settings,
        timeout=connect_timeout,
        command_timeout=command_timeout,
        **kwargs,
    )


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
        self.zone = Zone.of(timezone)
        self.listen_pool = listen_pool or pool
        self.replay_gate = ReplayGate(listen_pool, pool) if listen_pool is not None else None

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = CONNECT_TIMEOUT,
        command_timeout: float | None = COMMAND_TIMEOUT,
        primary_url: str | None = None,
    ) -> Storage:
        """`url` is read; with `primary_url`, `url` is a standby of it (serving nodes)."""
        pool = await create_pool(
            url, min_size=min_size, max_size=max_size, connect_timeout=connect_timeout, command_timeout=command_timeout
        )
        try:
            tz = await pool.fetchval("SELECT value FROM roadfeed_meta WHERE key = 'timezone'")
            # The feeds' listener, the change stream's, and the replay gate's look at the WAL position.
            listen_pool = (
                await create_pool(
                    primary_url,
                    min_size=1,
                    max_size=3,
                    connect_timeout=connect_timeout,
                    command_timeout=command_timeout,
                )
                if primary_url
                else None
            )
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
            source_id,
            kind,
            url,
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
            "SELECT id, kind, last_success, last_error, last_error_at FROM sources ORDER BY id"
        )
        return [dict(r) for r in rows]

    async def source_times(self, timeout: float) -> list[asyncpg.Record]:
        """Every source's `id`, last success (`ok`) and last error (`err`) as Unix times, read within
        `timeout` seconds (a frozen server cannot hold the caller, a /metrics scrape)."""
        async with bounded_connection(self.pool, timeout) as conn:
            return await conn.fetch(
                "SELECT id, extract(epoch FROM last_success)::float8 AS ok, "
                "extract(epoch FROM last_error_at)::float8 AS err FROM sources ORDER BY id"
            )

    async def claim_poll(
        self, source_id: str, owner: str, interval: float, lease: float, *, due_only: bool = True
    ) -> bool:
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
            source_id,
            owner,
            float(interval),
            float(lease),
            due_only,
        )
        return bool(claimed)

    async def close_interrupted_runs(self, source_id: str) -> int:
        """Runs of a source left open by a worker that died: called by the worker that
        has just claimed the source, so none of them can still be running."""
        closed = await self.pool.execute(
            """UPDATE source_runs SET finished = now(), error = 'interrupted: its worker stopped before the end'
                WHERE source_id = $1 AND finished IS NULL""",
            source_id,
        )
        return int(closed.split()[-1])

    async def renew_poll(self, source_id: str, owner: str, lease: float) -> bool:
        renewed = await self.pool.fetchval(
            """UPDATE sources SET lease_until = now() + make_interval(secs => $3)
                WHERE id = $1 AND lease_owner = $2 RETURNING true""",
            source_id,
            owner,
            float(lease),
        )
        return bool(renewed)

    async def release_poll(self, source_id: str, owner: str) -> None:
        await self.pool.execute(
            "UPDATE sources SET lease_until = NULL WHERE id = $1 AND lease_owner = $2", source_id, owner
        )

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
                run_id,
                stats.http_status,
                stats.bytes,
                stats.counts.new,
                stats.counts.updated,
                stats.counts.unchanged,
                stats.quarantined,
                stats.complete,
                stats.error,
            )
            if stats.error is None:
                await conn.execute(
                    """UPDATE sources SET last_success = now(), updated = now(),
                              etag = coalesce($2, etag), last_modified = coalesce($3, last_modified),
                              watermark = coalesce($4, watermark)
                        WHERE id = $1""",
                    source_id,
                    etag,
                    last_modified,
                    watermark,
                )
            else:
                await conn.execute(
                    "UPDATE sources SET last_error = $2, last_error_at = now(), updated = now() WHERE id = $1",
                    source_id,
                    stats.error,
                )
            await conn.execute("SELECT pg_notify($1, 'sources')", CHANGES_CHANNEL)

    async def save_watermark(self, source_id: str, watermark: str | None) -> None:
        """Progress inside a run (page by page), so a crash resumes where it stopped."""
        await self.pool.execute(
            "UPDATE sources SET watermark = $2, updated = now() WHERE id = $1", source_id, watermark
        )

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
               added AS ({
                _INSERT_NEW.format(
                    table="sites",
                    columns="source_id, external_id, name, road, pr, abscissa, insee, geom, metadata",
                    values="$1, external_id, name, road, pr, abscissa, insee, geom, metadata",
                )
            })
               SELECT (SELECT count(*) FROM added), (SELECT count(*) FROM changed)""",
            source_id,
            *map(list, zip(*rows, strict=True)),
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
            (
                site_ids[c.site_external_id],
                c.external_id,
                c.direction,
                c.direction_name,
                c.lane,
                c.vehicle_class,
                c.mobility_type,
                c.time_step,
            )
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
               added AS ({
                _INSERT_NEW.format(
                    table="channels",
                    columns="source_id, site_id, external_id, direction, direction_name, lane, vehicle_class, "
                    "mobility_type, time_step",
                    values="$1, site_id, external_id, direction, direction_name, lane, vehicle_class, mobility_type, "
                    "time_step",
                )
            })
               SELECT (SELECT count(*) FROM added), (SELECT count(*) FROM changed)""",
            source_id,
            *map(list, zip(*rows, strict=True)),
        )
        if result[0] or result[1]:
            await self.pool.execute("SELECT pg_notify($1, 'sites')", CHANGES_CHANNEL)
        return Counts(result[0], result[1], len(rows) - result[0] - result[1])

    async def site_ids(self, source_id: str, external_ids: Iterable[str]) -> dict[str, int]:
        rows = await self.pool.fetch(
            "SELECT external_id, id FROM sites WHERE source_id = $1 AND external_id = ANY($2::text[])",
            source_id,
            list(external_ids),
        )
        return {r[0]: r[1] for r in rows}

    async def channel_ids(self, source_id: str, external_ids: Iterable[str] | None = None) -> dict[str, int]:
        """Channel ids by external id (all of the source's channels when none are named)."""
        if external_ids is None:
            rows = await self.pool.fetch("SELECT external_id, id FROM channels WHERE source_id = $1", source_id)
        else:
            rows = await self.pool.fetch(
                "SELECT external_id, id FROM channels WHERE source_id = $1 AND external_id = ANY($2::text[])",
                source_id,
                list(external_ids),
            )
        return {r[0]: r[1] for r in rows}

    # --- measurements (feed.store.measurements) -----------------------------

    async def ingest_measurements(self, rows: Sequence[MeasurementRow], run_id: int | None = None) -> Counts:
        return await measurements.ingest(self.pool, self.zone, rows, run_id)

    async def refresh_rollups(
        self, conn: asyncpg.Connection, channels: list[int], los: list[datetime], his: list[datetime]
    ) -> None:
        await measurements.refresh_rollups(conn, self.zone, channels, los, his)

    async def drop_measurements_before(self, cutoff: datetime, batch: int = 50_000) -> int:
        return await measurements.drop_before(self.pool, cutoff, batch)

    # --- events (feed.store.events) ------------------------------------------

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
        return await events.upsert_events(
            self.pool,
            source_id,
            records,
            seen_at=seen_at,
            run_id=run_id,
            complete_snapshot=complete_snapshot,
            author=author,
        )

    async def events_seen_by_run(self, source_id: str, run_id: int, external_ids: Sequence[str]) -> set[str]:
        return await events.events_seen_by_run(self.pool, source_id, run_id, external_ids)

    async def end_events_not_seen(self, source_id: str, run_id: int, seen_at: datetime) -> int:
        return await events.end_events_not_seen(self.pool, source_id, run_id, seen_at)

    async def events(self, *, ended_since: datetime | None = None, source_id: str | None = None) -> list[StoredEvent]:
        return await events.events(self.pool, ended_since=ended_since, source_id=source_id)

    async def event_versions(self, event_id: str) -> list[StoredEvent]:
        return await events.event_versions(self.pool, event_id)

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
