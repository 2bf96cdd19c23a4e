"""What the MQTT push has published (sql/012_push.sql): the advisory lock that makes one
node the publisher, the events cursor and each site's last published fingerprint, so
a node taking over goes on from the next change."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

__all__ = [
    "PUSH_LOCK",
    "events_cursor",
    "previous_roads",
    "record_events_cursor",
    "record_site_fingerprints",
    "release_push_lock",
    "site_fingerprints",
    "try_push_lock",
]

PUSH_LOCK = (0x52464D51, 1)  # pg_advisory_lock(classid, objid): "RFMQ", the publishing node


async def try_push_lock(conn: asyncpg.Connection) -> bool:
    """Takes the publisher's lock on this connection's session, if no other node holds it."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", *PUSH_LOCK))


async def release_push_lock(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1, $2)", *PUSH_LOCK)


async def events_cursor(conn: asyncpg.Connection) -> int:
    """The sequence number of the last event change the broker acknowledged (0 before any)."""
    return await conn.fetchval("SELECT seq FROM push_cursors WHERE channel = 'events'") or 0


async def record_events_cursor(conn: asyncpg.Connection, seq: int) -> None:
    await conn.execute(
        """INSERT INTO push_cursors VALUES ('events', $1)
                          ON CONFLICT (channel) DO UPDATE SET seq = EXCLUDED.seq""",
        seq,
    )


async def previous_roads(conn: asyncpg.Connection, seqs: Sequence[int]) -> dict[int, str | None]:
    """For each change (by sequence number) of an event that had a previous version: that version's road."""
    return dict(
        await conn.fetch(
            """SELECT v.seq, p.state ->> 'road' FROM event_versions v
             JOIN event_versions p ON p.event_id = v.event_id AND p.version = v.version - 1
            WHERE v.seq = ANY($1::bigint[])""",
            list(seqs),
        )
    )


async def site_fingerprints(conn: asyncpg.Connection) -> dict[int, bytes]:
    """Site id -> the fingerprint of its last published message."""
    return dict(await conn.fetch("SELECT site_id, fingerprint FROM push_sites"))


async def record_site_fingerprints(
    conn: asyncpg.Connection, site_ids: Sequence[int], fingerprints: Sequence[bytes]
) -> None:
    await conn.execute(
        """INSERT INTO push_sites SELECT * FROM unnest($1::bigint[], $2::bytea[])
           ON CONFLICT (site_id) DO UPDATE SET fingerprint = EXCLUDED.fingerprint""",
        list(site_ids),
        list(fingerprints),
    )
