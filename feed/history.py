"""History queries over the rollups: a site's series at a step, the annual table.

Every value comes with its coverage (intervals present / intervals expected),
and buckets without any data are returned with coverage 0 rather than left out,
so a gap is visible. A site's total uses its all-vehicle channels when it has
them, otherwise light + heavy, so vehicles are never counted twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal

import asyncpg

Step = Literal["hour", "day", "month", "year"]
AGGREGATION_VERSION = "1"

# Channels of site $1 for direction $2 (any when NULL) and class $3 (the site's
# total when NULL).
_CHANNELS = """
WITH has_all AS (SELECT EXISTS (SELECT 1 FROM channels WHERE site_id = $1 AND vehicle_class = 'all') AS yes),
ch AS (
    SELECT c.id, c.time_step FROM channels c, has_all
     WHERE c.site_id = $1
       AND ($2::text IS NULL OR c.direction = $2)
       AND CASE WHEN $3::text IS NOT NULL THEN c.vehicle_class = $3
                WHEN has_all.yes THEN c.vehicle_class = 'all'
                ELSE c.vehicle_class IN ('light', 'heavy') END)"""

# $4 first bucket, $5 bucket after the last, $6 time zone.
_SERIES = {
    "hour": _CHANNELS + """
SELECT b AS period, coalesce(sum(r.count_sum), 0)::bigint AS count,
       coalesce(sum(r.intervals_present), 0)::bigint AS present,
       sum(coalesce(r.intervals_expected, greatest(1, 3600 / ch.time_step)))::bigint AS expected,
       coalesce(sum(r.intervals_estimated), 0)::bigint AS estimated,
       sum(r.speed_weighted_sum) / nullif(sum(r.speed_count), 0) AS speed
  FROM generate_series($4::timestamptz, $5::timestamptz - interval '1 hour', interval '1 hour') AS b
 CROSS JOIN ch
  LEFT JOIN hourly r ON r.channel_id = ch.id AND r.bucket = b
 WHERE ch.time_step <= 3600 AND $6::text IS NOT NULL  -- hours need no zone; same parameters for every step
 GROUP BY b ORDER BY b""",
    "day": _CHANNELS + """
SELECT d::date AS period, coalesce(sum(r.count_sum), 0)::bigint AS count,
       coalesce(sum(r.intervals_present), 0)::bigint AS present,
       sum(coalesce(r.intervals_expected,
                    extract(epoch FROM (((d::date + 1)::timestamp AT TIME ZONE $6)
                                        - (d::date::timestamp AT TIME ZONE $6)))::integer / ch.time_step))::bigint
           AS expected,
       coalesce(sum(r.intervals_estimated), 0)::bigint AS estimated,
       sum(r.speed_weighted_sum) / nullif(sum(r.speed_count), 0) AS speed
  FROM generate_series($4::timestamptz AT TIME ZONE $6, ($5::timestamptz AT TIME ZONE $6) - interval '1 day',
                       interval '1 day') AS d
 CROSS JOIN ch
  LEFT JOIN rollup_daily r ON r.channel_id = ch.id AND r.day = d::date
 GROUP BY d ORDER BY d""",
}
for _step, _view, _key in (("month", "rollup_monthly", "month"), ("year", "rollup_annual", "year")):
    _bucket = "date_trunc('month', d)::date" if _step == "month" else "extract(year FROM d)::integer"
    _SERIES[_step] = _CHANNELS + f"""
SELECT min(d)::date AS period, coalesce(sum(r.count_sum), 0)::bigint AS count,
       coalesce(sum(r.intervals_present), 0)::bigint AS present,
       sum(extract(epoch FROM ((((d + interval '1 {_step}')::timestamp) AT TIME ZONE $6)
                              - (d::timestamp AT TIME ZONE $6)))::integer / ch.time_step)::bigint AS expected,
       coalesce(sum(r.intervals_estimated), 0)::bigint AS estimated,
       sum(r.speed_weighted_sum) / nullif(sum(r.speed_count), 0) AS speed
  FROM generate_series(date_trunc('{_step}', $4::timestamptz AT TIME ZONE $6),
                       ($5::timestamptz AT TIME ZONE $6) - interval '1 {_step}', interval '1 {_step}') AS d
 CROSS JOIN ch
  LEFT JOIN {_view} r ON r.channel_id = ch.id AND r.{_key} = {_bucket}
 GROUP BY d ORDER BY d"""


@dataclass(frozen=True)
class Point:
    period: datetime | date
    count: int
    coverage: float  # share of expected intervals present, 0..1
    estimated_share: float  # share of present intervals that are estimated
    speed: float | None  # count-weighted mean, km/h


async def site_series(
    conn: asyncpg.Pool | asyncpg.Connection,
    site_id: int,
    start: datetime,
    end: datetime,
    step: Step,
    timezone: str,
    *,
    direction: str | None = None,
    vehicle_class: str | None = None,
) -> list[Point]:
    """Counts of one site from `start` (inclusive) to `end` (exclusive) at `step`."""
    rows = await conn.fetch(_SERIES[step], site_id, direction, vehicle_class, start, end, timezone)
    return [
        Point(
            r["period"], r["count"],
            r["present"] / r["expected"] if r["expected"] else 0.0,
            r["estimated"] / r["present"] if r["present"] else 0.0,
            None if r["speed"] is None else round(r["speed"], 1),
        )
        for r in rows
    ]


_ANNUAL = """
WITH site_total AS (
    SELECT c.id, c.site_id, c.vehicle_class, c.time_step
      FROM channels c
     WHERE c.vehicle_class = 'all'
        OR NOT EXISTS (SELECT 1 FROM channels x WHERE x.site_id = c.site_id AND x.vehicle_class = 'all')),
days AS (
    SELECT ch.site_id, r.day,
           sum(r.count_sum) AS count,
           sum(r.count_sum) FILTER (WHERE ch.vehicle_class = 'heavy') AS heavy,
           sum(r.intervals_present)::float8 / nullif(sum(r.intervals_expected), 0) AS coverage,
           sum(r.speed_weighted_sum) AS sws, sum(r.speed_count) AS sc
      FROM rollup_daily r JOIN site_total ch ON ch.id = r.channel_id
     WHERE r.day >= make_date($1, 1, 1) AND r.day < make_date($1 + 1, 1, 1)
     GROUP BY ch.site_id, r.day),
heavy AS (  -- heavy vehicles from a site's heavy channels, when its total is an 'all' channel
    SELECT c.site_id, r.day, sum(r.count_sum) AS heavy
      FROM rollup_daily r JOIN channels c ON c.id = r.channel_id
     WHERE c.vehicle_class = 'heavy' AND r.day >= make_date($1, 1, 1) AND r.day < make_date($1 + 1, 1, 1)
     GROUP BY c.site_id, r.day)
SELECT s.id AS site_id, s.external_id, s.name, s.road,
       count(d.day) FILTER (WHERE d.coverage >= $2) AS days_valid,
       (make_date($1 + 1, 1, 1) - make_date($1, 1, 1)) - count(d.day) FILTER (WHERE d.coverage >= $2) AS days_excluded,
       avg(d.count) FILTER (WHERE d.coverage >= $2) AS tmja,
       avg(d.count) FILTER (WHERE d.coverage >= $2 AND extract(isodow FROM d.day) <= 5) AS tmjo,
       sum(coalesce(h.heavy, d.heavy)) FILTER (WHERE d.coverage >= $2)::float8
           / nullif(sum(d.count) FILTER (WHERE d.coverage >= $2 AND coalesce(h.heavy, d.heavy) IS NOT NULL), 0)
           AS heavy_share,
       sum(d.sws) FILTER (WHERE d.coverage >= $2) / nullif(sum(d.sc) FILTER (WHERE d.coverage >= $2), 0)
           AS mean_speed,
       avg(d.coverage) AS mean_coverage
  FROM sites s
  LEFT JOIN days d ON d.site_id = s.id
  LEFT JOIN heavy h ON h.site_id = d.site_id AND h.day = d.day
 GROUP BY s.id ORDER BY s.id"""


@dataclass(frozen=True)
class AnnualRow:
    site_id: int
    external_id: str
    name: str
    road: str | None
    tmja: float | None  # mean daily traffic over the valid days
    tmjo: float | None  # the same over valid working days (Monday to Friday)
    heavy_share: float | None  # heavy vehicles / all vehicles on valid days where classes are known
    mean_speed: float | None
    days_valid: int  # days whose coverage reached the threshold
    days_excluded: int  # days of the year below the threshold or without data
    mean_coverage: float | None  # over the days with data


async def annual_table(conn: asyncpg.Pool | asyncpg.Connection, year: int, threshold: float) -> list[AnnualRow]:
    """TMJA, TMJO, share of heavy vehicles per site; days under `threshold` coverage are left out."""
    rows = await conn.fetch(_ANNUAL, year, threshold)
    return [
        AnnualRow(
            r["site_id"], r["external_id"], r["name"], r["road"],
            None if r["tmja"] is None else round(float(r["tmja"]), 1),
            None if r["tmjo"] is None else round(float(r["tmjo"]), 1),
            None if r["heavy_share"] is None else round(r["heavy_share"], 4),
            None if r["mean_speed"] is None else round(r["mean_speed"], 1),
            r["days_valid"], r["days_excluded"],
            None if r["mean_coverage"] is None else round(r["mean_coverage"], 4),
        )
        for r in rows
    ]
