"""The change log of road events: every stored change after a cursor, read in `seq` order.

Nothing is skipped, even when writers commit out of `seq` order. Two sources
storing events at the same time can commit seq 11 before seq 10; a reader that
answered "up to 11" would never send 10. So a change is only served once every
smaller `seq` is final (committed or rolled back): when the rows after the
cursor are contiguous they are final; when there is a hole, the reader waits for
the event writers that were in flight (they hold the source's advisory lock, EVENT_WRITER_LOCK, from
`Storage.upsert_events` until they commit, visible in `pg_locks`), then reads
again. Holes left by rolled-back transactions are thus skipped, never waited on
forever. Anything that writes `event_versions` must hold that lock.

Each change comes with its JSON document encoded once (`Change.data`, and
`Change.sse` as one server-sent event), whoever reads it: the delta feed, the
stream, the MQTT push.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from exporters import geojson
from exporters.geojson import event_feature
from feed.model import Geometry, StoredEvent
from feed.store.events import EVENT_WRITER_LOCK
from feed.store.storage import bounded_connection

__all__ = ["READ_TIMEOUT", "Change", "ChangeLog", "encode_cursor", "iso_ms"]

log = logging.getLogger("roadfeed.changes")

READ_TIMEOUT = 3.0  # seconds one read of the change log may take: past it the database counts as away (a 503)

_READ = """
SELECT v.seq, v.change, v.recorded, v.state,
       p.state -> 'geometry' AS previous_geometry, p.state ->> 'type' AS previous_type
  FROM event_versions v
  LEFT JOIN event_versions p ON p.event_id = v.event_id AND p.version = v.version - 1
 WHERE v.seq > $1 AND ($2::bigint IS NULL OR v.seq <= $2)
 ORDER BY v.seq
 LIMIT $3"""

_WRITERS = """
SELECT coalesce(array_agg(virtualtransaction), '{}') FROM pg_locks
 WHERE locktype = 'advisory' AND granted AND classid = $1 AND objsubid = 2
   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"""

_STILL_WRITING = """
SELECT count(*) FROM pg_locks
 WHERE locktype = 'advisory' AND granted AND classid = $1 AND objsubid = 2 AND virtualtransaction = ANY($2)"""


def encode_cursor(seq: int) -> str:
    return str(seq)


def iso_ms(value: datetime) -> str:
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


@dataclass(frozen=True, slots=True)
class Change:
    """One stored change of one event, with its JSON document encoded once."""

    seq: int
    kind: str  # created, updated, ended, reopened
    recorded: datetime
    event: StoredEvent
    previous_type: str | None  # the version before, for filters (None when created)
    previous_geometry: Geometry | None
    data: bytes  # the change document, compact JSON
    sse: bytes  # the same as one server-sent event

    @property
    def cursor(self) -> str:
        return encode_cursor(self.seq)


def _change(row: Mapping[str, Any]) -> Change:
    event = StoredEvent.model_validate(row["state"])
    previous = row["previous_geometry"]
    document = {
        "cursor": encode_cursor(row["seq"]),
        "change": row["change"],
        "recorded": iso_ms(row["recorded"]),
        "event": event_feature(event),
    }
    data = geojson.dumps(document)
    sse = f"id: {document['cursor']}\nevent: {row['change']}\ndata: ".encode() + data + b"\n\n"
    return Change(
        row["seq"],
        row["change"],
        row["recorded"],
        event,
        row["previous_type"],
        Geometry.model_validate(previous) if previous else None,
        data,
        sse,
    )


def _changes(rows: Sequence[Mapping[str, Any]]) -> list[Change]:
    return [_change(r) for r in rows]


class ChangeLog:
    """Reads changes after a cursor, only ever those no earlier change can still join."""

    def __init__(self, pool: asyncpg.Pool, *, writer_wait: float = 5.0, poll_interval: float = 0.01) -> None:
        self.pool = pool
        self.writer_wait = writer_wait  # longest wait for in-flight writers before answering without them
        self.poll_interval = poll_interval

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with bounded_connection(self.pool, READ_TIMEOUT) as conn:
            return await conn.fetch(query, *args)

    async def _fetchval(self, query: str, *args: Any) -> Any:
        async with bounded_connection(self.pool, READ_TIMEOUT) as conn:
            return await conn.fetchval(query, *args)

    async def read(self, since: int, limit: int) -> tuple[list[Change], bool]:
        """Up to `limit` final changes after `since`, and whether more are there already."""
        rows = await self._fetch(_READ, since, None, limit + 1)
        hole = next((i for i, r in enumerate(rows) if r["seq"] != since + 1 + i), None)
        if hole is not None:
            # Every seq up to the last one seen was handed out before this read: once
            # the writers in flight now are done, each is committed or abandoned.
            last = rows[-1]["seq"]
            if await self._writers_done():
                rows = await self._fetch(_READ, since, last, limit + 1)
            else:
                rows = rows[:hole]  # what was final anyway; the rest next time
        changes = await asyncio.to_thread(_changes, rows[:limit])
        return changes, len(rows) > limit

    async def head(self) -> int:
        """The newest position such that every change up to it is final."""
        top = await self._fetchval("SELECT coalesce(max(seq), 0) FROM event_versions")
        while not await self._writers_done():
            pass  # a writer still holds changes at or below `top`: it has to finish first
        return top

    async def latest(self) -> int:
        """The newest stored change (final or not): no valid cursor is beyond it."""
        return await self._fetchval("SELECT coalesce(max(seq), 0) FROM event_versions")

    async def _writers_done(self) -> bool:
        """Waits (up to `writer_wait`) until the event writers in flight now have finished."""
        writers = await self._fetchval(_WRITERS, EVENT_WRITER_LOCK)
        deadline = time.monotonic() + self.writer_wait
        while writers:
            if time.monotonic() > deadline:
                log.warning(
                    "event writers %s still running after %.1f s; serving the changes before them",
                    writers,
                    self.writer_wait,
                )
                return False
            await asyncio.sleep(self.poll_interval)
            if not await self._fetchval(_STILL_WRITING, EVENT_WRITER_LOCK, writers):
                break
        return True
