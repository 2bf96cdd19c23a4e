"""Markings take effect (sql/016_markings_applied.sql).

- counter faulty: the site's stored intervals in the period become `invalid`, so
  rollups, aggregates, the annual table and downloads leave them out and coverage
  drops; their previous quality is kept, and removing the marking restores it.
- road closed: a closure event on the road (the PR range given, or the whole road
  of the referential) published in every feed by the `agents` source; removing
  the marking ends the event.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import asyncpg

from feed.errors import BadParameter
from feed.model import EventRecord, EventStatus, Geometry
from feed.roads import normalise_road
from feed.store.roads import OffRoad, section
from feed.store.storage import Storage
from feed.store.transactions import writing

__all__ = [
    "AGENTS_SOURCE",
    "MARKING_COLUMNS",
    "MarkingFields",
    "add_marking",
    "closure_record",
    "delete_marking",
    "list_markings",
    "mark_faulty",
    "marking_json",
    "unmark_faulty",
]

MARKING_COLUMNS = "id, kind, road, site_id, pr_from, pr_to, valid_from, valid_to, comment, created, author, event_id"


class MarkingFields(NamedTuple):
    kind: str
    road: str | None
    site_id: int | None
    pr_from: int | None
    pr_to: int | None
    start: datetime
    end: datetime | None
    comment: str


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def marking_json(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": r["id"],
        "kind": r["kind"],
        "road": r["road"],
        "site_id": r["site_id"],
        "pr_from": r["pr_from"],
        "pr_to": r["pr_to"],
        "from": _iso(r["valid_from"]),
        "to": _iso(r["valid_to"]),
        "comment": r["comment"],
        "created": _iso(r["created"]),
        "author": r["author"],
        "event_id": r["event_id"],
    }


async def list_markings(conn: asyncpg.Connection, limit: int, site_id: int | None = None) -> list[asyncpg.Record]:
    """The latest markings (of one site, or all), newest first."""
    return list(
        await conn.fetch(
            f"SELECT {MARKING_COLUMNS} FROM markings WHERE $1::int IS NULL OR site_id = $1 ORDER BY id DESC LIMIT $2",
            site_id,
            limit,
        )
    )


async def add_marking(storage: Storage, statement_timeout_ms: int, m: MarkingFields, author: str) -> asyncpg.Record:
    """Stores a marking with its effect, or refuses it (BadParameter): none is stored
    without effect. A closure's event is published once the marking is committed."""
    now = datetime.now(UTC)
    road = normalise_road(m.road) if m.road else None
    async with writing(storage.pool, statement_timeout_ms) as conn:
        if m.site_id is not None and not await conn.fetchval("SELECT 1 FROM sites WHERE id = $1", m.site_id):
            raise BadParameter(
                "site_id", str(m.site_id), "the id of a site (see /api/v1/sites)", f"no site {m.site_id}"
            )
        row = await conn.fetchrow(
            f"""INSERT INTO markings (kind, road, site_id, pr_from, pr_to, valid_from, valid_to, comment, author)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {MARKING_COLUMNS}""",
            m.kind,
            road,
            m.site_id,
            m.pr_from,
            m.pr_to,
            m.start,
            m.end,
            m.comment,
            author,
        )
        assert row is not None
        closure = None
        if m.kind == "counter_faulty":
            assert m.site_id is not None
            await mark_faulty(storage, conn, row["id"], m.site_id, m.start, m.end)
        else:
            assert road is not None
            try:
                closure = await closure_record(
                    conn, row["id"], road, m.pr_from, m.pr_to, m.start, m.end, m.comment, now
                )
            except OffRoad as exc:
                raise BadParameter(
                    "road", road, "a road (and PR) of the referential (see /api/v1/roads)", str(exc)
                ) from None
    if closure is None:
        return row
    try:
        await storage.ensure_source(AGENTS_SOURCE, "agents", "")
        await storage.upsert_events(AGENTS_SOURCE, [closure], seen_at=now, author=author)
        async with writing(storage.pool, statement_timeout_ms) as conn:
            row = await conn.fetchrow(
                f"UPDATE markings SET event_id = $2 WHERE id = $1 RETURNING {MARKING_COLUMNS}",
                row["id"],
                f"{AGENTS_SOURCE}:{closure.external_id}",
            )
    except BaseException:
        async with writing(storage.pool, statement_timeout_ms) as conn:
            await conn.execute("DELETE FROM markings WHERE id = $1", row["id"])
        raise
    assert row is not None
    return row


async def delete_marking(
    storage: Storage, statement_timeout_ms: int, marking_id: int, author: str
) -> asyncpg.Record | None:
    """Removes a marking and undoes its effect: intervals restored, closure ended."""
    async with writing(storage.pool, statement_timeout_ms) as conn:
        row = await conn.fetchrow(f"SELECT {MARKING_COLUMNS} FROM markings WHERE id = $1 FOR UPDATE", marking_id)
        if row is None:
            return None
        if row["kind"] == "counter_faulty":
            await unmark_faulty(storage, conn, marking_id)
        await conn.execute("DELETE FROM markings WHERE id = $1", marking_id)
    if row["event_id"]:
        versions = await storage.event_versions(row["event_id"])
        if versions and versions[-1].status != "ended":
            now = datetime.now(UTC)
            old = versions[-1]
            ended = EventRecord.model_validate(
                {**old.model_dump(include=set(EventRecord.model_fields)), "status": "ended", "actual_end": now}
            )
            await storage.upsert_events(AGENTS_SOURCE, [ended], seen_at=now, author=author)
    return row


AGENTS_SOURCE = "agents"  # the source of everything agents publish

_MARK = """
WITH hit AS (
    SELECT m.channel_id, m.start, m.length, m.quality
      FROM measurements m JOIN channels c ON c.id = m.channel_id
     WHERE c.site_id = $2 AND m.start >= $3 AND ($4::timestamptz IS NULL OR m.start < $4)
       AND m.quality <> 'invalid'),
saved AS (INSERT INTO marking_overrides (marking_id, channel_id, start, quality)
          SELECT $1, channel_id, start, quality FROM hit)
UPDATE measurements m SET quality = 'invalid'
  FROM hit WHERE m.channel_id = hit.channel_id AND m.start = hit.start
RETURNING m.channel_id, m.start, m.length"""

_UNMARK = """
WITH back AS (DELETE FROM marking_overrides WHERE marking_id = $1 RETURNING channel_id, start, quality)
UPDATE measurements m SET quality = back.quality
  FROM back WHERE m.channel_id = back.channel_id AND m.start = back.start
RETURNING m.channel_id, m.start, m.length"""


async def _refresh(storage: Storage, conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> int:
    spans: dict[int, tuple[datetime, datetime]] = {}
    for r in rows:
        end = r["start"] + timedelta(seconds=r["length"])
        lo, hi = spans.get(r["channel_id"], (r["start"], end))
        spans[r["channel_id"]] = (min(lo, r["start"]), max(hi, end))
    channels = list(spans)
    await storage.refresh_rollups(conn, channels, [spans[c][0] for c in channels], [spans[c][1] for c in channels])
    return len(rows)


async def mark_faulty(
    storage: Storage, conn: asyncpg.Connection, marking_id: int, site_id: int, start: datetime, end: datetime | None
) -> int:
    """Sets the site's intervals in [start, end) invalid; returns how many changed."""
    return await _refresh(storage, conn, list(await conn.fetch(_MARK, marking_id, site_id, start, end)))


async def unmark_faulty(storage: Storage, conn: asyncpg.Connection, marking_id: int) -> int:
    """Gives the intervals the marking changed their quality back."""
    return await _refresh(storage, conn, list(await conn.fetch(_UNMARK, marking_id)))


async def closure_record(
    conn: asyncpg.Connection,
    marking_id: int,
    road: str,
    pr_from: int | None,
    pr_to: int | None,
    start: datetime,
    end: datetime | None,
    comment: str,
    now: datetime,
) -> EventRecord:
    """The closure event of a road-closed marking, placed with the referential."""
    if pr_from is None or pr_to is None:
        ends = await conn.fetchrow("SELECT min(pr) AS lo, max(pr) AS hi FROM road_prs WHERE road = $1", road)
        if ends is None or ends["lo"] is None:
            raise OffRoad(f"road {road} is not in the referential (import it: roadfeed roads import FILE)")
        pr_from, pr_to = ends["lo"], ends["hi"]
    line = await section(conn, road, (pr_from, 0.0), (pr_to, 0.0))
    refs: dict[str, Any] = {
        "pr": [
            {"at": "from", "road": road, "pr": pr_from, "abscissa": 0},
            {"at": "to", "road": road, "pr": pr_to, "abscissa": 0},
        ]
    }
    status: EventStatus = "planned" if start > now else "ended" if end is not None and end <= now else "active"
    return EventRecord(
        external_id=f"marking-{marking_id}",
        type="closure",
        status=status,
        severity="high",
        planned_start=start,
        planned_end=end,
        actual_start=None if status == "planned" else start,
        actual_end=end if status == "ended" else None,
        road=road,
        direction="both",
        lanes_affected="all",
        geometry=Geometry.model_validate(line),
        descriptions={"fr": comment or f"{road} fermée", "en": comment or f"{road} closed"},
        location_refs=refs,
    )
