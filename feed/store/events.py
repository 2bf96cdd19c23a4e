"""Versioned events: each change of an event is a new version (the event's row
holds the latest, `event_versions` every one), unchanged ones only move
`last_seen`, and a complete snapshot ends the events it no longer lists (never
deletes them). Reads place an event without a PR on the road referential.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
from pydantic import ValidationError

from feed.model import EventRecord, Geometry, StoredEvent, TimeSlot, public_event_id
from feed.store.writes import CHANGES_CHANNEL, Counts

EVENT_WRITER_LOCK = 2  # advisory lock class of a source's events: held by every event writer until it commits


async def upsert_events(
    pool: asyncpg.Pool,
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
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", EVENT_WRITER_LOCK, source_id)
        existing = {
            r["external_id"]: r
            for r in await conn.fetch(
                """SELECT external_id, id, version, content_hash, status, first_seen FROM events
                    WHERE source_id = $1 AND external_id = ANY($2::text[])""",
                source_id,
                list(latest),
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
                change = (
                    "reopened"
                    if old["status"] == "ended" and rec.status != "ended"
                    else ("ended" if rec.status == "ended" else "updated")
                )
                writes.append((rec, old["id"], old["version"] + 1, change, old["first_seen"]))
                counts.updated += 1
        if writes:
            await _write_versions(conn, source_id, writes, seen_at, run_id, author)
        if unchanged:
            await conn.execute(
                "UPDATE events SET last_seen = $2, last_run = $3 WHERE id = ANY($1::text[])", unchanged, seen_at, run_id
            )
        if complete_snapshot:
            counts.updated += await _end_missing(conn, source_id, list(latest), seen_at, run_id)
        if counts.new or counts.updated:
            await conn.execute("SELECT pg_notify($1, 'events')", CHANGES_CHANNEL)
    return counts


async def events_seen_by_run(pool: asyncpg.Pool, source_id: str, run_id: int, external_ids: Sequence[str]) -> set[str]:
    """Which of these events run `run_id` has already stored."""
    rows = await pool.fetch(
        "SELECT external_id FROM events WHERE source_id = $1 AND external_id = ANY($2::text[]) AND last_run = $3",
        source_id,
        list(external_ids),
        run_id,
    )
    return {r[0] for r in rows}


async def end_events_not_seen(pool: asyncpg.Pool, source_id: str, run_id: int, seen_at: datetime) -> int:
    """The end of a complete snapshot stored in batches by run `run_id`: the source's
    open events that no batch of the run listed are ended (never deleted)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", EVENT_WRITER_LOCK, source_id)
        gone = await conn.fetch(
            f"""SELECT {_EVENT_COLUMNS} FROM events
                 WHERE source_id = $1 AND status <> 'ended' AND last_run IS DISTINCT FROM $2""",
            source_id,
            run_id,
        )
        ended = await _end(conn, source_id, gone, seen_at, run_id)
        if ended:
            await conn.execute("SELECT pg_notify($1, 'events')", CHANGES_CHANNEL)
    return ended


async def _end_missing(
    conn: asyncpg.Connection, source_id: str, present: list[str], seen_at: datetime, run_id: int | None
) -> int:
    gone = await conn.fetch(
        f"""SELECT {_EVENT_COLUMNS} FROM events
             WHERE source_id = $1 AND status <> 'ended' AND NOT (external_id = ANY($2::text[]))""",
        source_id,
        present,
    )
    return await _end(conn, source_id, gone, seen_at, run_id)


async def _end(
    conn: asyncpg.Connection, source_id: str, gone: list[asyncpg.Record], seen_at: datetime, run_id: int | None
) -> int:
    writes = []
    for row in gone:
        old = _stored_event(row)
        fields = {k: v for k, v in old if k in EventRecord.model_fields}
        ended = _as_stored(EventRecord, {**fields, "status": "ended", "actual_end": seen_at})
        writes.append((ended, old.id, old.version + 1, "ended", old.first_seen))
    if writes:
        await _write_versions(conn, source_id, writes, seen_at, run_id)
    return len(writes)


async def _write_versions(
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
        event_rows.append(
            (
                event_id,
                source_id,
                rec.external_id,
                version,
                rec.type,
                rec.subtype,
                rec.status,
                rec.severity,
                rec.planned_start,
                rec.planned_end,
                rec.actual_start,
                rec.actual_end,
                rec.road,
                rec.direction,
                rec.lanes_affected,
                geometry,
                rec.descriptions,
                rec.detour,
                rec.location_refs,
                rec.source_version,
                rec.source_updated,
                _content_hash(rec),
                first_seen,
                seen_at,
                seen_at,
                [slot.model_dump() for slot in rec.schedule],
                run_id,
            )
        )
        state = _as_stored(
            StoredEvent,
            dict(
                dict(rec),
                id=event_id,
                source_id=source_id,
                version=version,
                first_seen=first_seen,
                last_seen=seen_at,
                updated=seen_at,
            ),
        ).model_dump(mode="json")
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


async def events(
    pool: asyncpg.Pool, *, ended_since: datetime | None = None, source_id: str | None = None
) -> list[StoredEvent]:
    """Open events, plus those ended since `ended_since` (all ended ones when None), as the
    live feeds publish them: placed on the road referential when they have no PR (see
    _LOCATED_REFS)."""
    rows = await pool.fetch(
        f"""SELECT {_EVENT_FIELDS}, coalesce(located.refs, e.location_refs) AS location_refs
              FROM events e LEFT JOIN LATERAL ({_LOCATED_REFS}) located ON true
             WHERE ($1::timestamptz IS NULL OR status <> 'ended' OR updated >= $1)
               AND ($2::text IS NULL OR source_id = $2)
             ORDER BY id""",
        ended_since,
        source_id,
        LOCATE_TOLERANCE_M,
    )
    return [_stored_event(r) for r in rows]


async def event_versions(pool: asyncpg.Pool, event_id: str) -> list[StoredEvent]:
    rows = await pool.fetch("SELECT state FROM event_versions WHERE event_id = $1 ORDER BY version", event_id)
    return [StoredEvent.model_validate(r["state"]) for r in rows]


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
        slots = [
            slot if isinstance(slot, TimeSlot) else TimeSlot.model_validate(slot) for slot in data.get("schedule") or []
        ]
        return model.model_construct(**{**data, "schedule": slots})


def _content_hash(rec: EventRecord) -> bytes:
    # Without a schedule, the hash every event had before schedules existed: no spurious new versions.
    return hashlib.sha256(rec.model_dump_json(exclude=None if rec.schedule else {"schedule"}).encode()).digest()
