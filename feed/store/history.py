"""History queries over the rollups: sites, a site's series at a step, the annual
table, events with their versions, sources' state.

Every value comes with its coverage (intervals present / intervals expected),
and buckets without any data are returned with coverage 0 rather than left out,
so a gap is visible. A site's total uses its all-vehicle channels when it has
them, otherwise light + heavy, so vehicles are never counted twice.

Expected intervals come from the calendar of the publication's time zone (a
local day lasts 23 or 25 hours on DST changes) and each channel's time step (at
least one a day), the same in every answer and file. The queries read the rollups by primary
key ranges (`channel_id = ANY(...)` and a time range): a year of one site is a
few thousand index entries, whatever the size of the tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal, TypeAlias
from zoneinfo import ZoneInfo

import asyncpg

from feed.holidays import Calendar, public_holidays
from feed.model import StoredEvent

Step = Literal["hour", "day", "month", "year"]
STEPS: tuple[Step, ...] = ("hour", "day", "month", "year")
AGGREGATION_VERSION = "1"

Conn: TypeAlias = asyncpg.Pool | asyncpg.Connection


# --------------------------------------------------------------------------- calendar


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=tz)


def next_period(start: date, step: Step) -> date:
    """The first day of the period after the one starting on `start` (day, month or year)."""
    if step == "day":
        return start + timedelta(days=1)
    if step == "month":
        return date(start.year + start.month // 12, start.month % 12 + 1, 1)
    return date(start.year + 1, 1, 1)


def period_start(day: date, step: Step) -> date:
    if step == "month":
        return day.replace(day=1)
    if step == "year":
        return date(day.year, 1, 1)
    return day


@lru_cache(maxsize=512)
def odd_days(year: int, timezone: str) -> dict[date, int]:
    """The local days of `year` that do not last 86,400 s (DST changes), with their length."""
    tz = ZoneInfo(timezone)
    out = {}
    day = date(year, 1, 1)
    start = local_midnight(day, tz).astimezone(UTC)
    while day.year == year:
        after = day + timedelta(days=1)
        end = local_midnight(after, tz).astimezone(UTC)
        seconds = int((end - start).total_seconds())
        if seconds != 86400:
            out[day] = seconds
        day, start = after, end
    return out


def day_seconds_sql(years: Sequence[int], timezone: str, column: str) -> str:
    """The length in seconds of the local day in `column` (a date of one of `years`), as SQL:
    86400 except on the DST days, listed as constants (cheaper than zone arithmetic per row)."""
    odd = " ".join(
        f"WHEN '{day.isoformat()}'::date THEN {seconds}"
        for year in years
        for day, seconds in sorted(odd_days(year, timezone).items())
    )
    return f"(CASE {column} {odd} ELSE 86400 END)" if odd else "86400"


def expected_intervals(seconds: int, time_step: int) -> int:
    """Intervals a channel should deliver in `seconds`; at least one for a non-empty period,
    so that a daily channel still owes one interval on a 23-hour day."""
    return max(1, seconds // time_step) if seconds > 0 else 0


# --------------------------------------------------------------------------- sites


@dataclass(frozen=True, slots=True)
class Channel:
    id: int
    external_id: str
    direction: str | None
    direction_name: str | None  # as the source names it, e.g. "vers Béziers"
    lane: int | None
    vehicle_class: str
    time_step: int


@dataclass(frozen=True, slots=True)
class Site:
    id: int
    external_id: str
    source: str
    name: str
    road: str | None
    pr: int | None
    abscissa: int | None
    insee: str | None
    commune: str | None
    lon: float | None
    lat: float | None
    channels: tuple[Channel, ...] = ()
    first_data: datetime | None = None  # start of the first stored interval
    last_data: datetime | None = None  # end of the last stored interval

    @property
    def directions(self) -> list[str]:
        return sorted({c.direction for c in self.channels if c.direction is not None})

    @property
    def direction_names(self) -> dict[str, str]:
        """Each direction the source names: code -> name (the first channel's name when channels differ)."""
        names: dict[str, str] = {}
        for c in self.channels:
            if c.direction is not None and c.direction_name:
                names.setdefault(c.direction, c.direction_name)
        return dict(sorted(names.items()))

    @property
    def vehicle_classes(self) -> list[str]:
        order = {"all": 0, "light": 1, "heavy": 2}
        return sorted({c.vehicle_class for c in self.channels}, key=lambda v: order.get(v, 3))


_SITE_COLUMNS = """s.id, s.external_id, s.source_id, s.name, s.road, s.pr, s.abscissa, s.insee,
       s.metadata->>'commune' AS commune, ST_X(s.geom) AS lon, ST_Y(s.geom) AS lat"""

# Sites (filtered: $1 after id, $2 roads (normalised), $3 commune, $4 bbox, $5
# limit, $6 one id) with their channels and each channel's first and last day of
# data: two probes of the daily rollup's primary key (rollups are kept forever,
# raw rows may not be). One statement, one round trip.
_SITES = f"""
WITH s AS (
    SELECT {_SITE_COLUMNS}
      FROM sites s
     WHERE ($1::integer IS NULL OR s.id > $1)
       AND ($2::text[] IS NULL OR upper(replace(s.road, ' ', '')) = ANY($2::text[]))
       AND ($3::text IS NULL OR s.insee = $3 OR lower(s.metadata->>'commune') = lower($3))
       AND ($4::float8[] IS NULL OR s.geom && ST_MakeEnvelope($4[1], $4[2], $4[3], $4[4], 4326))
       AND ($6::integer IS NULL OR s.id = $6)
     ORDER BY s.id
     LIMIT $5)
SELECT s.*, c.id AS channel_id, c.external_id AS channel_external_id, c.direction, c.direction_name, c.lane,
       c.vehicle_class, c.time_step, fd.day AS first_day, ld.day AS last_day
  FROM s
  LEFT JOIN channels c ON c.site_id = s.id
  LEFT JOIN LATERAL (SELECT day FROM rollup_daily WHERE channel_id = c.id ORDER BY day LIMIT 1) fd ON true
  LEFT JOIN LATERAL (SELECT day FROM rollup_daily WHERE channel_id = c.id ORDER BY day DESC LIMIT 1) ld ON true
 ORDER BY s.id, c.direction NULLS FIRST, c.vehicle_class, c.lane NULLS FIRST, c.id"""

# The first interval start and last interval end of channels $1 within some local
# days (one branch per day, each with constant bounds, so a hypertable reads only
# the chunks of those days).
_DAY_BOUNDS_BRANCH = """
SELECT channel_id, min(start) AS first, max(start + length * interval '1 second') AS last
  FROM measurements
 WHERE channel_id = ANY($1::integer[]) AND start >= ${lo} AND start < ${hi}
 GROUP BY channel_id"""
MAX_BOUND_DAYS = 8  # days looked up per statement


def normalise_road(road: str) -> str:
    """'rd 613' and 'RD613' are the same road."""
    return road.replace(" ", "").upper()


async def sites(
    conn: Conn,
    timezone: str,
    *,
    after: int | None = None,
    roads: Sequence[str] | None = None,
    commune: str | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    limit: int = 100,
) -> list[Site]:
    """Sites in id order after `after`, with their channels."""
    rows = await conn.fetch(
        _SITES,
        after,
        None if roads is None else [normalise_road(r) for r in roads],
        commune,
        None if bbox is None else list(bbox),
        limit,
        None,
    )
    return await _build_sites(conn, rows, ZoneInfo(timezone))


async def site(conn: Conn, site_id: int, timezone: str) -> Site | None:
    found = await _build_sites(conn, await conn.fetch(_SITES, None, None, None, None, 1, site_id), ZoneInfo(timezone))
    return found[0] if found else None


async def _build_sites(conn: Conn, rows: Sequence[asyncpg.Record], tz: ZoneInfo) -> list[Site]:
    chan_rows = [r for r in rows if r["channel_id"] is not None]
    first, last = await _data_bounds(conn, chan_rows, tz)
    grouped: dict[int, list[asyncpg.Record]] = {}
    for r in rows:
        grouped.setdefault(r["id"], []).append(r)
    result = []
    for chans in grouped.values():
        r = chans[0]
        ids = [c["channel_id"] for c in chans if c["channel_id"] is not None]
        firsts = [first[i] for i in ids if i in first]
        lasts = [last[i] for i in ids if i in last]
        result.append(
            Site(
                r["id"],
                r["external_id"],
                r["source_id"],
                r["name"],
                r["road"],
                r["pr"],
                r["abscissa"],
                r["insee"],
                r["commune"],
                r["lon"],
                r["lat"],
                tuple(
                    Channel(
                        c["channel_id"],
                        c["channel_external_id"],
                        c["direction"],
                        c["direction_name"],
                        c["lane"],
                        c["vehicle_class"],
                        c["time_step"],
                    )
                    for c in chans
                    if c["channel_id"] is not None
                ),
                min(firsts) if firsts else None,
                max(lasts) if lasts else None,
            )
        )
    return result


async def _data_bounds(
    conn: Conn, chan_rows: Sequence[asyncpg.Record], tz: ZoneInfo
) -> tuple[dict[int, datetime], dict[int, datetime]]:
    """Each channel's first interval start and last interval end: the raw rows of its
    first and last rollup day when retention kept them, else that day's bounds.
    Channels share their days (every live channel ends today), so the raw rows of
    a few days are read, in one statement."""
    first_day: dict[int, tuple[datetime, datetime]] = {}  # channel -> its first local day [start, end)
    last_day: dict[int, tuple[datetime, datetime]] = {}
    days: set[date] = set()
    for c in chan_rows:
        if c["first_day"] is not None:
            first_day[c["channel_id"]] = _day_span(c["first_day"], tz)
            last_day[c["channel_id"]] = _day_span(c["last_day"], tz)
            days.update((c["first_day"], c["last_day"]))
    first = {cid: span[0] for cid, span in first_day.items()}
    last = {cid: span[1] for cid, span in last_day.items()}
    refined_first: dict[int, datetime] = {}
    refined_last: dict[int, datetime] = {}
    ordered = sorted(days)
    for i in range(0, len(ordered), MAX_BOUND_DAYS):
        chunk = ordered[i : i + MAX_BOUND_DAYS]
        query = " UNION ALL ".join(
            _DAY_BOUNDS_BRANCH.replace("${lo}", f"${2 * k + 2}").replace("${hi}", f"${2 * k + 3}")
            for k in range(len(chunk))
        )
        args: list[Any] = [sorted(first)]
        for day in chunk:
            args += list(_day_span(day, tz))
        for r in await conn.fetch(query, *args):
            cid = r["channel_id"]
            lo, hi = first_day[cid]  # only a channel's own first day refines its first interval
            if lo <= r["first"] < hi and (cid not in refined_first or r["first"] < refined_first[cid]):
                refined_first[cid] = r["first"]
            lo, hi = last_day[cid]
            if lo < r["last"] <= hi and (cid not in refined_last or r["last"] > refined_last[cid]):
                refined_last[cid] = r["last"]
    return {**first, **refined_first}, {**last, **refined_last}


def _day_span(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    return local_midnight(day, tz), local_midnight(day + timedelta(days=1), tz)


def select_channels(site: Site, direction: str | None = None, vehicle_class: str | None = None) -> list[Channel]:
    """The channels summed for a direction (all when None) and a class (the site's
    total when None or 'all': its all-vehicle channels, or light + heavy)."""
    chans = [c for c in site.channels if direction is None or c.direction == direction]
    if vehicle_class in (None, "all"):
        if any(c.vehicle_class == "all" for c in site.channels):
            return [c for c in chans if c.vehicle_class == "all"]
        return [c for c in chans if c.vehicle_class in ("light", "heavy")]
    return [c for c in chans if c.vehicle_class == vehicle_class]


# --------------------------------------------------------------------------- series


@dataclass(frozen=True)
class Point:
    period: datetime | date  # hour: the hour's start (aware); other steps: the period's first day
    count: int  # 0 when nothing is present (see `present`)
    coverage: float  # share of expected intervals present, 0..1
    estimated_share: float  # share of present intervals that are estimated
    speed: float | None  # count-weighted mean, km/h
    present: int = 0
    expected: int = 0
    invalid: dict[str, int] = field(default_factory=dict)  # intervals rejected by validation, per reason


# $1 sub-hourly channels (hourly rollup), $2 hourly channels (raw rows are their
# hourly series), $3 first hour, $4 hour after the last.
_HOURLY = """
SELECT bucket, sum(count_sum)::bigint AS count, sum(present)::bigint AS present,
       sum(estimated)::bigint AS estimated, sum(sws) AS sws, sum(sc)::bigint AS sc
  FROM (SELECT bucket, count_sum, intervals_present AS present, intervals_estimated AS estimated,
               speed_weighted_sum AS sws, speed_count AS sc
          FROM rollup_hourly
         WHERE channel_id = ANY($1::integer[]) AND bucket >= $3 AND bucket < $4
        UNION ALL
        SELECT date_trunc('hour', m.start, 'UTC'), CASE WHEN q.ok THEN m.count ELSE 0 END,
               q.ok::integer, (q.ok AND m.quality = 'estimated')::integer,
               CASE WHEN q.ok AND m.speed IS NOT NULL THEN m.speed::float8 * m.count ELSE 0 END,
               CASE WHEN q.ok AND m.speed IS NOT NULL THEN m.count ELSE 0 END
          FROM measurements m
         CROSS JOIN LATERAL (SELECT m.count IS NOT NULL AND m.quality IN ('observed', 'estimated')
                                           AND m.validation IS NULL AS ok) q
         WHERE m.channel_id = ANY($2::integer[]) AND m.start >= $3 AND m.start < $4) h
 GROUP BY bucket"""

# $1 channels, $2 first day, $3 day after the last, $4 'day' | 'month' | 'year'.
_DAILY = """
SELECT date_trunc($4::text, day::timestamp)::date AS bucket, sum(count_sum)::bigint AS count,
       sum(intervals_present)::bigint AS present, sum(intervals_estimated)::bigint AS estimated,
       sum(speed_weighted_sum) AS sws, sum(speed_count)::bigint AS sc
  FROM rollup_daily
 WHERE channel_id = ANY($1::integer[]) AND day >= $2 AND day < $3
 GROUP BY 1"""


# Intervals rejected by validation (feed/store/validation.py) per bucket and reason: the
# partial index on flagged rows makes this a probe per channel. {bucket} is the
# hour (UTC) or the local day's period; $1 channels, $2 start, $3 end, $4 'day' |
# 'month' | 'year', $5 the time zone.
_INVALID = """
SELECT {bucket} AS bucket, flag, count(*)::integer AS n
  FROM measurements
 WHERE channel_id = ANY($1::integer[]) AND start >= $2 AND start < $3 AND validation IS NOT NULL
 GROUP BY 1, 2"""
_INVALID_HOURLY = _INVALID.format(bucket="date_trunc('hour', start, 'UTC')")
_INVALID_DAILY = _INVALID.format(bucket="date_trunc($4::text, start AT TIME ZONE $5::text)::date")


def periods(start: datetime, end: datetime, step: Step, tz: ZoneInfo) -> list[datetime | date]:
    """The periods from `start` (floored to the step) up to `end` (exclusive)."""
    if step == "hour":
        first = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        n = max(0, -int(-(end.astimezone(UTC) - first).total_seconds() // 3600))
        return [first + timedelta(hours=h) for h in range(n)]
    end_day = end.astimezone(tz).date()
    if local_midnight(end_day, tz) < end:
        end_day += timedelta(days=1)  # `end` inside a day: that day's period is included
    d = period_start(start.astimezone(tz).date(), step)
    if step == "day":
        return [d + timedelta(days=i) for i in range((end_day - d).days)]
    out: list[datetime | date] = []
    while d < end_day:
        out.append(d)
        d = next_period(d, step)
    return out


def expected_per_period(buckets: Sequence[date], step: Step, time_steps: Sequence[int], timezone: str) -> list[int]:
    """Intervals the channels (their time steps) owe in each period: the sum over its
    local days, 23- and 25-hour days included."""
    normal = sum(86400 // ts for ts in time_steps)
    if step == "day":
        expected = dict.fromkeys(buckets, normal)
    else:
        expected = {b: (next_period(b, step) - b).days * normal for b in buckets}
    first, after = buckets[0], next_period(buckets[-1], step)
    for year in range(first.year, after.year + 1):
        for day, seconds in odd_days(year, timezone).items():
            if first <= day < after:
                expected[period_start(day, step)] += sum(
                    expected_intervals(seconds, ts) - 86400 // ts for ts in time_steps
                )
    return [expected[b] for b in buckets]


async def channel_series(
    conn: Conn,
    channels: Sequence[Channel],
    start: datetime,
    end: datetime,
    step: Step,
    timezone: str,
    now: datetime | None = None,
) -> list[Point]:
    """The sum of `channels` from `start` (inclusive) to `end` (exclusive) at `step`. Periods
    that start after `now` are not yet lived: left out, never shown as missing data."""
    tz = ZoneInfo(timezone)
    lived_until = now if now is not None else datetime.now(UTC)
    buckets = [
        b
        for b in periods(start, end, step, tz)
        if (b if isinstance(b, datetime) else local_midnight(b, tz)) < lived_until
    ]
    if not buckets:
        return []
    if step == "hour":
        chans = [c for c in channels if c.time_step <= 3600]
        rows = (
            await conn.fetch(
                _HOURLY,
                [c.id for c in chans if c.time_step < 3600],
                [c.id for c in chans if c.time_step == 3600],
                buckets[0],
                buckets[-1] + timedelta(hours=1),
            )
            if chans
            else []
        )
        expected = [sum(3600 // c.time_step for c in chans)] * len(buckets)
    else:
        days: list[date] = buckets
        rows = (
            await conn.fetch(_DAILY, [c.id for c in channels], days[0], next_period(days[-1], step), step)
            if channels
            else []
        )
        expected = expected_per_period(days, step, [c.time_step for c in channels], timezone)
    found = {r["bucket"]: r for r in rows}
    invalid: dict[datetime | date, dict[str, int]] = {}
    judged = [c.id for c in channels if step != "hour" or c.time_step <= 3600]
    if judged:
        found_invalid = await (
            conn.fetch(_INVALID_HOURLY, judged, start, end)
            if step == "hour"
            else conn.fetch(_INVALID_DAILY, judged, start, end, step, timezone)
        )
        for r in found_invalid:
            invalid.setdefault(r["bucket"], {})[r["flag"]] = r["n"]
    points = []
    for b, exp in zip(buckets, expected, strict=True):
        r = found.get(b)
        if r is None:
            points.append(Point(b, 0, 0.0, 0.0, None, 0, exp, invalid.get(b, {})))
            continue
        present = r["present"]
        points.append(
            Point(
                b,
                r["count"],
                present / exp if exp else 0.0,
                r["estimated"] / present if present else 0.0,
                round(r["sws"] / r["sc"], 1) if r["sc"] else None,
                present,
                exp,
                invalid.get(b, {}),
            )
        )
    return points


async def site_series(
    conn: Conn,
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
    found = await site(conn, site_id, timezone)
    if found is None:
        return []
    return await channel_series(conn, select_channels(found, direction, vehicle_class), start, end, step, timezone)


# --------------------------------------------------------------------------- annual table

# Site by site (a LATERAL per site): the site's total and heavy channels' days,
# read by index-only scans of the covering index, summed per day (the threshold
# applies to a site's day), then over the year. Many small per-site aggregates
# are several times faster than one over every site-day of the year. Sums are
# float8: exact for integers below 2**53, and far cheaper than numeric.
# A day's expected intervals count every total channel the site is expected to
# have that day (from its valid_from, else its first day of data, to its
# valid_to), whether it sent anything or not: a channel dead all day weighs on
# the day's coverage.
# $1 year, $2 threshold, $3 public holidays (left out of TMJO).
_ANNUAL = """
WITH ch AS MATERIALIZED (
    SELECT id, site_id, time_step, valid_to, vehicle_class = 'heavy' AS heavy,
           -- not expected before it is declared valid, or else before its first day of data
           coalesce(valid_from, (SELECT day FROM rollup_daily r WHERE r.channel_id = channels.id
                                  ORDER BY day LIMIT 1)) AS valid_from,
           vehicle_class = 'all' OR NOT bool_or(vehicle_class = 'all') OVER (PARTITION BY site_id) AS total
      FROM channels),
per_site AS (
    SELECT site_id, array_agg(id ORDER BY id) AS ids, array_agg(total ORDER BY id) AS totals,
           array_agg(heavy ORDER BY id) AS heavies, array_agg(time_step ORDER BY id) AS steps,
           array_agg(valid_from ORDER BY id) AS froms, array_agg(valid_to ORDER BY id) AS tos
      FROM ch WHERE total OR heavy GROUP BY site_id)
SELECT s.id AS site_id, s.external_id, s.name, s.road, y.*
  FROM sites s
  LEFT JOIN per_site p ON p.site_id = s.id
  LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE j.valid) AS days_valid,
           avg(j.count) FILTER (WHERE j.valid) AS tmja,
           avg(j.count) FILTER (WHERE j.valid AND extract(isodow FROM j.day) <= 5 AND j.day <> ALL($3::date[]))
               AS tmjo,
           sum(j.heavy) FILTER (WHERE j.valid) / nullif(sum(j.count) FILTER (WHERE j.valid AND j.heavy IS NOT NULL), 0)
               AS heavy_share,
           sum(j.sws) FILTER (WHERE j.valid) / nullif(sum(j.sc) FILTER (WHERE j.valid), 0) AS mean_speed,
           avg(j.coverage) AS mean_coverage
      FROM (SELECT d.day, d.count, d.heavy, d.sws, d.sc, d.present / nullif(e.expected, 0) AS coverage,
                   coalesce(d.present / nullif(e.expected, 0) >= $2, false) AS valid
              FROM (SELECT r.day,
                           sum(r.count_sum::float8) FILTER (WHERE c.total) AS count,
                           sum(r.count_sum::float8) FILTER (WHERE c.heavy) AS heavy,
                           sum(r.intervals_present::float8) FILTER (WHERE c.total) AS present,
                           sum(r.speed_weighted_sum) FILTER (WHERE c.total) AS sws,
                           sum(r.speed_count::float8) FILTER (WHERE c.total) AS sc
                      FROM unnest(p.ids, p.totals, p.heavies) AS c(id, total, heavy)
                      JOIN rollup_daily r ON r.channel_id = c.id
                       AND r.day >= make_date($1, 1, 1) AND r.day < make_date($1 + 1, 1, 1)
                     GROUP BY r.day) d
              CROSS JOIN LATERAL (
                SELECT sum(greatest(1, {day_seconds} / x.step)::float8) AS expected
                  FROM unnest(p.totals, p.steps, p.froms, p.tos) AS x(total, step, valid_from, valid_to)
                 WHERE x.total AND (x.valid_from IS NULL OR x.valid_from <= d.day)
                   AND (x.valid_to IS NULL OR d.day <= x.valid_to)) e) j) y ON true
 ORDER BY s.id"""


@dataclass(frozen=True)
class AnnualRow:
    site_id: int
    external_id: str
    name: str
    road: str | None
    tmja: float | None  # mean daily traffic over the valid days
    tmjo: float | None  # the same over valid working days (Monday to Friday, public holidays excluded)
    heavy_share: float | None  # heavy vehicles / all vehicles on valid days where classes are known
    mean_speed: float | None
    days_valid: int  # days whose coverage reached the threshold
    days_excluded: int  # days of the year already lived below the threshold or without data
    mean_coverage: float | None  # over the days with data


def days_lived(year: int, today: date) -> int:
    """Days of `year` before `today`: days still to come are not missing."""
    first, after = date(year, 1, 1), date(year + 1, 1, 1)
    return (min(max(today, first), after) - first).days


async def annual_table(
    conn: Conn,
    year: int,
    threshold: float,
    timezone: str = "Europe/Paris",
    *,
    holidays: Calendar = "fr",
    today: date | None = None,
) -> list[AnnualRow]:
    """TMJA, TMJO, share of heavy vehicles per site; days under `threshold` coverage are left out."""
    query = _ANNUAL.replace("{day_seconds}", day_seconds_sql([year], timezone, "d.day"))
    rows = await conn.fetch(query, year, threshold, sorted(public_holidays(holidays, year)))
    lived = days_lived(year, today if today is not None else datetime.now(ZoneInfo(timezone)).date())
    return [
        AnnualRow(
            r["site_id"],
            r["external_id"],
            r["name"],
            r["road"],
            None if r["tmja"] is None else round(r["tmja"], 1),
            None if r["tmjo"] is None else round(r["tmjo"], 1),
            None if r["heavy_share"] is None else round(r["heavy_share"], 4),
            None if r["mean_speed"] is None else round(r["mean_speed"], 1),
            r["days_valid"],
            max(0, lived - r["days_valid"]),
            None if r["mean_coverage"] is None else round(r["mean_coverage"], 4),
        )
        for r in rows
    ]


# --------------------------------------------------------------------------- events

# When an event is in force: from its actual (else planned) start, or when we
# first saw it, to its actual end once ended, the planned end while planned,
# and open while active.
EVENT_SPAN_START = "coalesce(e.actual_start, e.planned_start, e.first_seen)"
EVENT_SPAN_END = """CASE e.status WHEN 'ended' THEN coalesce(e.actual_end, e.updated)
                         WHEN 'planned' THEN coalesce(e.planned_end, 'infinity')
                         ELSE 'infinity' END"""

_EVENT_COLUMNS = """e.id, e.source_id, e.external_id, e.version, e.type, e.subtype, e.status::text AS status,
       e.severity, e.planned_start, e.planned_end, e.actual_start, e.actual_end, e.road, e.direction,
       e.lanes_affected, ST_AsGeoJSON(e.geom)::json AS geometry, e.descriptions, e.detour, e.location_refs,
       e.schedule, e.source_version, e.source_updated, e.first_seen, e.last_seen, e.updated"""

# $1 after id, $2 from, $3 to, $4 bbox, $5 types, $6 roads, $7 statuses, $8 limit
_EVENTS = f"""
SELECT {_EVENT_COLUMNS}
  FROM events e
 WHERE ($1::text IS NULL OR e.id > $1)
   AND ($2::timestamptz IS NULL OR {EVENT_SPAN_END} > $2)
   AND ($3::timestamptz IS NULL OR {EVENT_SPAN_START} < $3)
   AND ($4::float8[] IS NULL OR ST_Intersects(e.geom, ST_MakeEnvelope($4[1], $4[2], $4[3], $4[4], 4326)))
   AND ($5::text[] IS NULL OR e.type = ANY($5::text[]))
   AND ($6::text[] IS NULL OR upper(replace(e.road, ' ', '')) = ANY($6::text[]))
   AND ($7::text[] IS NULL OR e.status::text = ANY($7::text[]))
 ORDER BY e.id
 LIMIT $8"""

_VERSIONS = """
SELECT event_id, version, change, recorded, state, author FROM event_versions
 WHERE event_id = ANY($1::text[]) ORDER BY event_id, version"""


@dataclass(frozen=True)
class EventHistory:
    current: dict[str, Any]  # the event's current state, as in the live feeds' model
    versions: list[dict[str, Any]] = field(default_factory=list)  # each full state + change + recorded


def _event_state(row: asyncpg.Record) -> dict[str, Any]:
    return StoredEvent.model_validate(dict(row)).model_dump(mode="json")


async def events(
    conn: Conn,
    *,
    after: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    types: Sequence[str] | None = None,
    roads: Sequence[str] | None = None,
    statuses: Sequence[str] | None = None,
    limit: int = 50,
) -> list[EventHistory]:
    """Events in force at some point in [start, end), in id order after `after`, with every version."""
    rows = await conn.fetch(
        _EVENTS,
        after,
        start,
        end,
        None if bbox is None else list(bbox),
        None if types is None else list(types),
        None if roads is None else [normalise_road(r) for r in roads],
        None if statuses is None else list(statuses),
        limit,
    )
    return await _with_versions(conn, rows)


async def event(conn: Conn, event_id: str) -> EventHistory | None:
    rows = await conn.fetch(f"SELECT {_EVENT_COLUMNS} FROM events e WHERE e.id = $1", event_id)
    found = await _with_versions(conn, rows)
    return found[0] if found else None


async def _with_versions(conn: Conn, rows: Sequence[asyncpg.Record]) -> list[EventHistory]:
    if not rows:
        return []
    versions: dict[str, list[dict[str, Any]]] = {}
    for v in await conn.fetch(_VERSIONS, [r["id"] for r in rows]):
        state = dict(v["state"])
        state["change"] = v["change"]
        state["author"] = v["author"]
        state["recorded"] = v["recorded"].astimezone(UTC).isoformat().replace("+00:00", "Z")
        versions.setdefault(v["event_id"], []).append(state)
    return [EventHistory(_event_state(r), versions.get(r["id"], [])) for r in rows]


# --------------------------------------------------------------------------- sources

_SOURCES = """
SELECT s.id, s.kind, s.last_success, s.last_error, s.last_error_at,
       r.started, r.finished, r.http_status, r.bytes, r.records_new, r.records_updated,
       r.records_unchanged, r.records_quarantined, r.complete, r.error
  FROM sources s
  LEFT JOIN LATERAL (SELECT * FROM source_runs x WHERE x.source_id = s.id AND x.finished IS NOT NULL
                      ORDER BY x.started DESC LIMIT 1) r ON true
 ORDER BY s.id"""


async def source_states(conn: Conn) -> list[asyncpg.Record]:
    """Every stored source with its last finished run (None fields when it never ran)."""
    return list(await conn.fetch(_SOURCES))


# --------------------------------------------------------------------------- years


async def data_years(conn: Conn, timezone: str) -> list[int]:
    """Years with counts or events, from the first to the last (each channel's first
    and last rollup day are two index probes)."""
    row = await conn.fetchrow(
        f"""SELECT (SELECT min(f.day) FROM channels c, LATERAL (SELECT day FROM rollup_daily
                                WHERE channel_id = c.id ORDER BY day LIMIT 1) f) AS first_day,
                   (SELECT max(l.day) FROM channels c, LATERAL (SELECT day FROM rollup_daily
                                WHERE channel_id = c.id ORDER BY day DESC LIMIT 1) l) AS last_day,
                   (SELECT min({EVENT_SPAN_START}) FROM events e) AS first_event,
                   (SELECT max(least({EVENT_SPAN_END}, e.last_seen)) FROM events e) AS last_event"""
    )
    tz = ZoneInfo(timezone)
    years: set[int] = set()
    if row["first_day"] is not None:
        years.update(range(row["first_day"].year, row["last_day"].year + 1))
    if row["first_event"] is not None:
        years.update(range(row["first_event"].astimezone(tz).year, row["last_event"].astimezone(tz).year + 1))
    return sorted(years)


async def database_created(conn: Conn) -> datetime:
    """When this service's database was set up (its first migration): the catalogue
    records of its datasets date from then."""
    created = await conn.fetchval("SELECT min(applied_at) FROM schema_migrations")
    return created if created is not None else datetime.now(UTC)
