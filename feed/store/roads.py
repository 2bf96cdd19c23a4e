"""The road referential in PostgreSQL/PostGIS: storing the roads and their PR
(points de repère) parsed by feed.roads, and linear referencing (road + PR +
abscissa (+ side and lateral offset) <-> point; from/to -> the line along the road).
The side is left or right of the road's direction of increasing PR.

Positions along the line are metres in the ellipsoid (see
sql/015_road_referential.sql), counted from each PR. The linear-referencing
queries run in PostgreSQL/PostGIS.
"""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any, Literal

import asyncpg

from feed.errors import InputError
from feed.roads import ReferentialError, Road, normalise_road

__all__ = [
    "SIDES",
    "SITE_TOLERANCE_M",
    "OffRoad",
    "Side",
    "check_sites",
    "locate",
    "point",
    "prs",
    "road_exists",
    "road_list",
    "section",
    "store_referential",
]

Side = Literal["left", "right"]
SIDES: tuple[Side, ...] = ("left", "right")

_INSERT_ROAD = """
WITH pts AS (SELECT p.pr, ST_Transform(ST_SetSRID(ST_MakePoint(p.lon, p.lat), 4326), 2154) AS g
               FROM unnest($3::int[], $4::float8[], $5::float8[]) AS p(pr, lon, lat)),
     line AS (SELECT ST_MakeLine(g ORDER BY pr) AS line FROM pts)
INSERT INTO roads (road, name, line, length)
SELECT $1, $2, line, ST_Length(ST_Transform(line, 4326)::geography) FROM line"""
_INSERT_SHAPED_ROAD = """
WITH line AS (SELECT ST_Transform(ST_SetSRID(ST_MakeLine(array_agg(ST_MakePoint(x, y) ORDER BY n)), 4326), 2154)
                     AS line
                FROM unnest($3::float8[], $4::float8[]) WITH ORDINALITY AS p(x, y, n))
INSERT INTO roads (road, name, line, length)
SELECT $1, $2, line, ST_Length(ST_Transform(line, 4326)::geography) FROM line"""
# PR on a shaped road: the position along the shape nearest to the PR point.
_INSERT_SHAPED_PRS = """
INSERT INTO road_prs (road, pr, geom, measure)
SELECT $1, p.pr, ST_SetSRID(ST_MakePoint(p.lon, p.lat), 4326),
       ST_LineLocatePoint(r.line, ST_Transform(ST_SetSRID(ST_MakePoint(p.lon, p.lat), 4326), 2154)) * r.length
  FROM unnest($2::int[], $3::float8[], $4::float8[]) AS p(pr, lon, lat), roads r
 WHERE r.road = $1
RETURNING pr, measure"""
_INSERT_PRS = """
INSERT INTO road_prs (road, pr, geom, measure)
SELECT $1, pr, ST_SetSRID(ST_MakePoint(lon, lat), 4326),
       coalesce(sum(step) OVER (ORDER BY pr), 0)
  FROM (SELECT p.pr, p.lon, p.lat,
               ST_Distance(ST_SetSRID(ST_MakePoint(p.lon, p.lat), 4326)::geography,
                           lag(ST_SetSRID(ST_MakePoint(p.lon, p.lat), 4326)::geography) OVER (ORDER BY p.pr))
                   AS step
          FROM unnest($2::int[], $3::float8[], $4::float8[]) AS p(pr, lon, lat)) s"""


async def store_referential(conn: asyncpg.Connection, roads: list[Road]) -> int:
    """Replaces these roads (and their PR) in one transaction; other roads stay."""
    async with conn.transaction():
        for r in roads:
            ordered = sorted(r.prs.items())
            prs = [p for p, _ in ordered]
            lons = [c[0] for _, c in ordered]
            lats = [c[1] for _, c in ordered]
            await conn.execute("DELETE FROM roads WHERE road = $1", r.road)
            if r.shape is None:
                await conn.execute(_INSERT_ROAD, r.road, r.name, prs, lons, lats)
                await conn.execute(_INSERT_PRS, r.road, prs, lons, lats)
                continue
            await conn.execute(_INSERT_SHAPED_ROAD, r.road, r.name, [p[0] for p in r.shape], [p[1] for p in r.shape])
            placed = sorted(
                (row["pr"], row["measure"]) for row in await conn.fetch(_INSERT_SHAPED_PRS, r.road, prs, lons, lats)
            )
            for (a, ma), (b, mb) in pairwise(placed):
                if mb <= ma:
                    raise ReferentialError(
                        f"road {r.road}: PR {b} is not after PR {a} along the road's shape "
                        "(is the shape drawn from the lowest PR?)"
                    )
    return len(roads)


# --------------------------------------------------------------------------- linear referencing


class OffRoad(InputError, ValueError):
    """A position the referential cannot place: unknown road or PR, or beyond the road's ends."""


async def road_exists(conn: asyncpg.Connection, road: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM roads WHERE road = $1", road))


def _cm(metres: float) -> float:
    """Abscissas to the centimetre: finer is noise (and subnormal floats underflow in PostgreSQL)."""
    return round(metres, 2) + 0.0


async def point(
    conn: asyncpg.Connection, road: str, pr: int, abscissa: float, side: Side | None = None, offset: float = 0.0
) -> tuple[float, float]:
    """The point at PR + abscissa, moved `offset` metres to the `side` of the road
    (left or right of the direction of increasing PR)."""
    abscissa = _cm(abscissa)
    signed = 0.0 if side is None else _cm(offset if side == "right" else -offset)
    row = await conn.fetchrow(
        "SELECT ST_X(g) AS lon, ST_Y(g) AS lat FROM road_point($1, $2, $3, $4) g", road, pr, abscissa, signed
    )
    if row is None or row["lon"] is None:
        raise OffRoad(await _why(conn, road, pr, abscissa))
    return row["lon"], row["lat"]


async def locate(conn: asyncpg.Connection, road: str, lon: float, lat: float) -> tuple[int, float, float, Side | None]:
    """(PR, abscissa, distance from the road, side) of a point, metres; the side is
    None within a centimetre of the road's line."""
    row = await conn.fetchrow("SELECT * FROM road_locate($1, ST_SetSRID(ST_MakePoint($2, $3), 4326))", road, lon, lat)
    if row is None or row["pr"] is None:
        raise OffRoad(f"road {road} is not in the referential")
    return row["pr"], row["abscissa"], row["offset_m"], row["side"]


async def section(
    conn: asyncpg.Connection, road: str, start: tuple[int, float], end: tuple[int, float]
) -> dict[str, Any]:
    """The GeoJSON LineString along the road from `start` to `end` (PR, abscissa)."""
    start, end = (start[0], _cm(start[1])), (end[0], _cm(end[1]))
    geojson = await conn.fetchval(
        "SELECT ST_AsGeoJSON(road_section($1, $2, $3, $4, $5), 7)", road, start[0], start[1], end[0], end[1]
    )
    if geojson is None:
        for pr, abscissa in (start, end):
            await point(conn, road, pr, abscissa)  # raises with the reason
        raise OffRoad(f"{road}: from and to are the same place")
    return json.loads(geojson)


async def _why(conn: asyncpg.Connection, road: str, pr: int, abscissa: float) -> str:
    known = await conn.fetchrow(
        "SELECT min(pr) AS lo, max(pr) AS hi, bool_or(pr = $2) AS has FROM road_prs WHERE road = $1", road, pr
    )
    if known is None or known["lo"] is None:
        return f"road {road} is not in the referential"
    if not known["has"]:
        return f"{road} has no PR {pr} (its PR go from {known['lo']} to {known['hi']})"
    return f"{road} PR {pr} + {abscissa:g} m falls beyond the road's ends (PR {known['lo']} to {known['hi']})"


async def road_list(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every road of the referential: road, name, length (metres), lowest and highest PR."""
    return list(
        await conn.fetch(
            "SELECT r.road, r.name, r.length, min(p.pr) AS pr_min, max(p.pr) AS pr_max "
            "FROM roads r JOIN road_prs p USING (road) GROUP BY r.road ORDER BY r.road"
        )
    )


async def network(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """Every road of the referential with its line, as GeoJSON features (WGS 84, 7 decimals)."""
    rows = await conn.fetch(
        "SELECT road, name, length, ST_AsGeoJSON(ST_Transform(line, 4326), 7) AS line FROM roads ORDER BY road"
    )
    return [
        {
            "type": "Feature",
            "geometry": json.loads(r["line"]),
            "properties": {"road": r["road"], "name": r["name"], "length_m": round(r["length"], 1)},
        }
        for r in rows
    ]


async def prs(conn: asyncpg.Connection, road: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT pr, ST_X(geom) AS lon, ST_Y(geom) AS lat, measure FROM road_prs WHERE road = $1 ORDER BY pr", road
    )
    return [{"pr": r["pr"], "lon": r["lon"], "lat": r["lat"], "measure_m": round(r["measure"], 1)} for r in rows]


SITE_TOLERANCE_M = 100.0

# Each site with road + PR: where the referential puts its PR + abscissa, and how far
# that is from the site's own coordinates (metres on the ellipsoid).
_SITE_CHECK = """
SELECT s.id, s.source_id, s.external_id, s.name, s.road, s.pr, s.abscissa,
       p.g IS NOT NULL AS placed,
       ST_Distance(p.g::geography, s.geom::geography) AS distance_m
  FROM sites s
  LEFT JOIN LATERAL (SELECT road_point(upper(replace(s.road, ' ', '')), s.pr, coalesce(s.abscissa, 0)) AS g) p ON true
 WHERE s.road IS NOT NULL AND s.pr IS NOT NULL AND s.geom IS NOT NULL
 ORDER BY s.id"""


async def check_sites(conn: asyncpg.Connection, tolerance_m: float = SITE_TOLERANCE_M) -> list[dict[str, Any]]:
    """Sites whose PR + abscissa the referential cannot place, or places more than
    `tolerance_m` from their coordinates, with the reason."""
    out = []
    for r in await conn.fetch(_SITE_CHECK):
        if not r["placed"]:
            reason = await _why(conn, normalise_road(r["road"]), r["pr"], float(r["abscissa"] or 0))
        elif r["distance_m"] > tolerance_m:
            reason = f"PR {r['pr']} + {r['abscissa'] or 0} m lies {r['distance_m']:.0f} m from the site's position"
        else:
            continue
        out.append(
            {
                "site_id": r["id"],
                "source": r["source_id"],
                "external_id": r["external_id"],
                "name": r["name"],
                "road": r["road"],
                "pr": r["pr"],
                "abscissa": r["abscissa"],
                "distance_m": None if r["distance_m"] is None else round(r["distance_m"], 1),
                "reason": reason,
            }
        )
    return out
