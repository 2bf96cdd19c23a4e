"""Road conditions as stored: the agents' events that carry a section's winter state,
one per section, found by their external id."""

from __future__ import annotations

import asyncpg

__all__ = ["condition_events"]


async def condition_events(conn: asyncpg.Connection, source_id: str, prefix: str) -> list[asyncpg.Record]:
    """(id, road, status, level, geometry as GeoJSON, updated) of the events of `source_id`
    whose external id starts with `prefix`."""
    return list(
        await conn.fetch(
            """SELECT id, road, status::text AS status, location_refs->>'winter_level' AS level,
                  ST_AsGeoJSON(geom, 7)::json AS geometry, updated
             FROM events WHERE source_id = $1 AND external_id LIKE $2 ORDER BY id""",
            source_id,
            prefix + "%",
        )
    )
