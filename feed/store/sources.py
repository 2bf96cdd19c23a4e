"""Sources as the admin API shows them to operators: each source's stored state with
its quarantine counts, its last runs, and the quarantined records themselves."""

from __future__ import annotations

import asyncpg

__all__ = ["last_runs", "quarantined", "source_states"]

_SOURCE_STATES = """
SELECT s.id, s.kind, s.url, s.etag, s.last_modified, s.watermark, s.last_success, s.last_error, s.last_error_at,
       s.lease_owner, s.lease_until, s.next_poll_at,
       (SELECT count(*) FROM quarantine q WHERE q.source_id = s.id) AS quarantined_total,
       (SELECT count(*) FROM quarantine q WHERE q.source_id = s.id AND q.last_seen > now() - interval '1 day')
           AS quarantined_day
  FROM sources s"""
_LAST_RUNS = """
SELECT r.* FROM sources s
  CROSS JOIN LATERAL (SELECT * FROM source_runs x WHERE x.source_id = s.id ORDER BY x.started DESC LIMIT $1) r
 ORDER BY r.source_id, r.started DESC"""


async def source_states(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every stored source with its state, and how many records it had quarantined (ever, last 24 h)."""
    return list(await conn.fetch(_SOURCE_STATES))


async def last_runs(conn: asyncpg.Connection, per_source: int) -> list[asyncpg.Record]:
    """The last `per_source` runs of every source, by source, latest first."""
    return list(await conn.fetch(_LAST_RUNS, per_source))


async def quarantined(conn: asyncpg.Connection, source: str | None, limit: int) -> list[asyncpg.Record]:
    """The quarantined records (of one source, or all), last seen first."""
    return list(
        await conn.fetch(
            "SELECT id, source_id, run_id, record_ref, reason, excerpt, recorded, last_seen, times_seen"
            " FROM quarantine WHERE ($1::text IS NULL OR source_id = $1) ORDER BY last_seen DESC, id DESC LIMIT $2",
            source,
            limit,
        )
    )
