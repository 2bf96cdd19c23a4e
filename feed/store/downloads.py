"""Bulk files per year (hourly, daily, events, sites; CSV and Parquet) and the data dictionary.

A file is never built whole: rows are read in batches of channels (or events)
in the file's order, each batch a `COPY (SELECT ...) TO STDOUT` of at most
about `BATCH_ROWS` rows. CSV batches go to the client as PostgreSQL wrote them;
Parquet batches are parsed by Arrow's CSV reader and written as row groups
through a `ParquetWriter` over a sink that hands its bytes to the response. So
memory stays flat (one batch) and each statement stays short, however slow the
client: `statement_timeout` bounds every batch, not the whole download.

Every batch reads the same snapshot (one REPEATABLE READ transaction), whose
ETag is computed first from cheap markers of the year's data (see `YearData`).

CSV cells of free text starting with = + - @ (or a tab or carriage return) get
a leading apostrophe, so a spreadsheet never runs them as formulas; numbers
(and text that is a plain number, like "-12") are left alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import asyncpg
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from feed.store.history import AGGREGATION_VERSION, EVENT_SPAN_END, EVENT_SPAN_START, day_seconds_sql, local_midnight

FORMAT_VERSION = "2"  # bump when a file's columns or layout change: every ETag changes with it
BATCH_ROWS = 50_000  # rows per COPY statement (and at least per Parquet row group)
PARQUET_COMPRESSION = "zstd"

Format = Literal["csv", "parquet"]
FORMATS: tuple[Format, ...] = ("csv", "parquet")
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}
DICTIONARY = "dictionary.json"

Write = Callable[[bytes], Awaitable[Any]]


# --------------------------------------------------------------------------- SQL literals


def sql_literal(value: Any) -> str:
    """A constant for COPY (which takes no parameters); only the types used here."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return f"'{value.astimezone(UTC).isoformat()}'::timestamptz"
    if isinstance(value, date):
        return f"'{value.isoformat()}'::date"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, list | tuple) and all(isinstance(v, int) for v in value):
        return "'{" + ",".join(str(v) for v in value) + "}'::integer[]"
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return "ARRAY[" + ",".join(sql_literal(v) for v in value) + "]::text[]"
    raise TypeError(f"no SQL literal for {type(value).__name__}")


# What spreadsheets read as the start of a formula: = + - @ tab CR, and their
# full-width (U+FF1D, U+FF0B, U+FF0D, U+FF20) and small (U+FE62, U+FE63, U+FE66)
# forms, which some spreadsheets fold to ASCII; also after leading spaces.
FORMULA_STARTS = "=+@\t\r\uff1d\uff0b\uff0d\uff20\ufe62\ufe63\ufe66-"  # "-" last: literal in a bracket
_LEADING_SPACES = " \u00a0\u3000"
_FORMULA = re.compile(f"^[{_LEADING_SPACES}]*[{FORMULA_STARTS}]")
_FORMULA_START = f"'^[{_LEADING_SPACES}]*[{FORMULA_STARTS}]'"  # the characters themselves, in a plain SQL literal
_PLAIN_NUMBER = r"'^[+-]?([0-9]+([.][0-9]*)?|[.][0-9]+)([eE][+-]?[0-9]+)?$'"
_PLAIN_NUMBER_RE = re.compile(_PLAIN_NUMBER[1:-1].replace("$", r"\Z"))  # the same in Python ($ would allow a final \n)


def neutralised_sql(expr: str) -> str:
    """`expr` (text) with a leading apostrophe when a spreadsheet would read it as a formula."""
    return (
        f"CASE WHEN ({expr}) ~ {_FORMULA_START} AND ({expr}) !~ {_PLAIN_NUMBER} THEN '''' || ({expr}) ELSE ({expr}) END"
    )


def neutralise(text: str) -> str:
    """The same rule in Python, for the CSV files built in memory (a site's counts, the annual table)."""
    if text and _FORMULA.match(text) and not _PLAIN_NUMBER_RE.match(text):
        return "'" + text
    return text


# --------------------------------------------------------------------------- the files


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    sql: str  # expression over the table's FROM clause
    type: str  # int32, int64, float64, string, date, timestamp (local zone), timestamp_utc, geometry
    unit: str | None
    meaning: str
    text: bool = False  # free text from sources: CSV cells are guarded against formula injection
    keyed: bool = False  # a channel's or site's attribute: computed once per channel, not per row
    parquet_sql: str | None = None  # another expression for Parquet (geometry: WKB instead of GeoJSON)
    csv_sql: str | None = None  # another expression for CSV (floats: text with a decimal point)
    geometry_types: tuple[str, ...] = ()  # of a geometry column, for the GeoParquet metadata

    def arrow_type(self, timezone: str) -> pa.DataType:
        return {
            "int32": pa.int32(),
            "int64": pa.int64(),
            "float64": pa.float64(),
            "string": pa.string(),
            "date": pa.date32(),
            "timestamp": pa.timestamp("ms", tz=timezone),
            "timestamp_utc": pa.timestamp("ms", tz="UTC"),
            "geometry": pa.binary(),
        }[self.type]


# Floats in CSV are written with a decimal point even when whole (1.0, not 1), so
# that readers guessing column types (DuckDB, pandas) see decimals. Plain SQL, no
# function call: these run on every row of the hourly file.


def decimal_text_sql(expr: str) -> str:
    value = f"({expr})::float8"
    return f"({value}::text || CASE WHEN {value} = trunc({value}) THEN '.0' ELSE '' END)"


def _ratio(name: str, sql: str, meaning: str) -> Column:
    """A share from 0 to 1: whole only at 0 and 1 (a simple CASE computes `sql` once for those)."""
    csv_sql = f"CASE ({sql})::float8 WHEN 1 THEN '1.0' WHEN 0 THEN '0.0' ELSE (({sql})::float8)::text END"
    return Column(name, sql, "float64", "ratio 0..1", meaning, csv_sql=csv_sql)


def _ts(expr: str) -> str:
    # The transaction's TimeZone is the publication's: local time with its offset.
    return f"""to_char({expr}, 'YYYY-MM-DD"T"HH24:MI:SSTZH:TZM')"""


def _ts_utc(expr: str) -> str:
    # The same instant in UTC with a Z: one offset all year, so readers parse the column without a zone rule.
    return f"""to_char({expr} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')"""


def _times(name: str, expr: str, meaning: str, utc_name: str | None = None) -> tuple[Column, Column]:
    """A time as two columns: local with its offset, then the same instant in UTC (one offset all year)."""
    return (
        Column(name, _ts(expr), "timestamp", "ISO 8601 local time with offset", meaning),
        Column(utc_name or f"{name}_utc", _ts_utc(expr), "timestamp_utc", "ISO 8601 UTC time (Z)", f"{name} in UTC"),
    )


_SITE_KEY = tuple(
    Column(name, sql, type_, None, meaning, text, keyed=True)
    for name, sql, type_, meaning, text in (
        ("site_id", "c.site_id", "int32", "the site's id in this service (stable; /api/v1/sites/{id})", False),
        ("site_external_id", "s.external_id", "string", "the site's id at its source", True),
        ("road", "s.road", "string", "road the site is on, e.g. RD613", True),
        ("channel_id", "c.id", "int32", "the channel's id in this service (stable)", False),
        (
            "direction",
            "c.direction",
            "string",
            "direction of travel: the source's code, usually a compass point (see directions)",
            True,
        ),
        (
            "direction_name",
            "c.direction_name",
            "string",
            "the direction's name at the source (e.g. vers Béziers); empty when the source gives none",
            True,
        ),
        ("lane", "c.lane", "int32", "lane number when the channel counts one lane", False),
        ("vehicle_class", "c.vehicle_class", "string", "all, light or heavy vehicles", False),
    )
)


def _measures(expected_sql: str) -> tuple[Column, ...]:
    return (
        Column(
            "count",
            "CASE WHEN r.intervals_present > 0 THEN r.count_sum END",
            "int64",
            "vehicles",
            "vehicles counted in the intervals present; empty when no interval is present",
        ),
        Column(
            "speed",
            "CASE WHEN r.speed_count > 0 THEN round((r.speed_weighted_sum / r.speed_count)::numeric, 1) END",
            "float64",
            "km/h",
            "mean speed weighted by the counts of the intervals that have a speed; empty when none has",
        ),
        _ratio(
            "coverage",
            f"r.intervals_present::float8 / nullif({expected_sql}, 0)",
            "intervals present / intervals expected: the quality of `count` (1 = complete)",
        ),
        _ratio(
            "estimated_share",
            "CASE WHEN r.intervals_present > 0 THEN r.intervals_estimated::float8 / r.intervals_present END",
            "share of the present intervals that the source marked as estimated rather than observed",
        ),
        Column(
            "intervals_present",
            "r.intervals_present",
            "int32",
            "intervals",
            "intervals with a count whose quality is observed or estimated",
        ),
        Column(
            "intervals_estimated",
            "r.intervals_estimated",
            "int32",
            "intervals",
            "present intervals marked as estimated",
        ),
        Column(
            "intervals_expected",
            expected_sql,
            "int32",
            "intervals",
            "intervals the channel's time step implies for the period (local calendar, DST included)",
        ),
    )


# Filled per year with a CASE over the year's DST days: cheaper than zone arithmetic on every row.
_DAY_SECONDS = "{day_seconds}"

HOURLY_COLUMNS = (
    *_SITE_KEY,
    *_times("period_start", "r.bucket", "start of the hour (the hour ends one hour later)", "period_utc"),
    *_measures("r.intervals_expected"),
)
DAILY_COLUMNS = (
    *_SITE_KEY,
    Column("day", "r.day", "date", "ISO 8601 date", "local day of the publication's time zone (23 to 25 hours)"),
    *_measures(f"greatest(1, {_DAY_SECONDS} / k.time_step)"),
)


def _state(key: str) -> str:
    return f"(v.state->>'{key}')"


def _state_ts(key: str) -> str:
    return f"(v.state->>'{key}')::timestamptz"


EVENT_COLUMNS = (
    Column(
        "event_id",
        "v.event_id",
        "string",
        None,
        "the event's stable id (<source id>:<external id>), the same in every live feed and in /api/v1/events/{id}",
        True,
    ),
    Column("version", "v.version", "int32", None, "version number; one row per version"),
    Column("change", "v.change", "string", None, "what this version did: created, updated, ended or reopened"),
    *_times(
        "recorded",
        "v.recorded",
        "when this service recorded the version (the quality of the row: how fresh the source was)",
    ),
    Column("source_id", _state("source_id"), "string", None, "the source that reported the event", True),
    Column("external_id", _state("external_id"), "string", None, "the event's id at its source", True),
    Column(
        "type",
        _state("type"),
        "string",
        None,
        "roadworks, accident, closure, lane_management, congestion, "
        "obstruction, weather, environment, speed_management, rerouting, public_event or other",
    ),
    Column("subtype", _state("subtype"), "string", None, "the source's own type (e.g. a DATEX II record class)", True),
    Column("status", _state("status"), "string", None, "planned, active or ended"),
    Column("severity", _state("severity"), "string", None, "unknown, low, medium, high or highest"),
    *_times("planned_start", _state_ts("planned_start"), "planned start"),
    *_times("planned_end", _state_ts("planned_end"), "planned end"),
    *_times("actual_start", _state_ts("actual_start"), "actual start, when known"),
    *_times("actual_end", _state_ts("actual_end"), "actual end, when known"),
    Column("road", _state("road"), "string", None, "road, e.g. RD613", True),
    Column("direction", _state("direction"), "string", None, "both, positive, negative or a named direction", True),
    Column("lanes_affected", _state("lanes_affected"), "string", None, "lanes affected as the source says", True),
    Column(
        "geometry",
        "(v.state->'geometry')::text",
        "geometry",
        "CSV: GeoJSON; Parquet: WKB (GeoParquet 1.1); WGS 84 lon/lat",
        "location: a Point or LineString",
        parquet_sql="ST_AsBinary(ST_GeomFromGeoJSON(nullif(v.state->'geometry', 'null'::jsonb)))",
        geometry_types=("Point", "LineString"),
    ),
    Column(
        "descriptions",
        "(v.state->'descriptions')::text",
        "string",
        "JSON object",
        'descriptions by language code, e.g. {"fr": "..."}',
        True,
    ),
    Column("detour", _state("detour"), "string", None, "detour advice", True),
    Column(
        "location_refs",
        "(v.state->'location_refs')::text",
        "string",
        "JSON object",
        "other location references (PR + abscissa, Alert-C, ...)",
        True,
    ),
    Column("source_version", _state("source_version"), "string", None, "the source's own version of the record", True),
    *_times("source_updated", _state_ts("source_updated"), "when the source says it last changed the event"),
    *_times("first_seen", _state_ts("first_seen"), "when this service first saw the event"),
)

SITE_COLUMNS = (
    Column("site_id", "c.site_id", "int32", None, "the site's id in this service (stable)"),
    Column("site_external_id", "s.external_id", "string", None, "the site's id at its source", True),
    Column("source_id", "s.source_id", "string", None, "the source of the site's data", True),
    Column("name", "s.name", "string", None, "the site's name", True),
    Column("road", "s.road", "string", None, "road, e.g. RD613", True),
    Column("pr", "s.pr", "int32", None, "point de repère (road reference point)"),
    Column("abscissa", "s.abscissa", "int32", "m", "distance after the PR"),
    Column("insee", "s.insee", "string", None, "INSEE code of the commune", True),
    Column("commune", "s.metadata->>'commune'", "string", None, "commune name, when the source gives it", True),
    Column("lon", "ST_X(s.geom)", "float64", "degrees (WGS 84)", "longitude", csv_sql=decimal_text_sql("ST_X(s.geom)")),
    Column("lat", "ST_Y(s.geom)", "float64", "degrees (WGS 84)", "latitude", csv_sql=decimal_text_sql("ST_Y(s.geom)")),
    Column(
        "geometry",
        "ST_AsGeoJSON(s.geom)",
        "geometry",
        "CSV: GeoJSON; Parquet: WKB (GeoParquet 1.1); WGS 84 lon/lat",
        "the site's location as a Point",
        parquet_sql="ST_AsBinary(s.geom)",
        geometry_types=("Point",),
    ),
    Column("channel_id", "c.id", "int32", None, "the channel's id (the key of hourly and daily rows)"),
    Column("channel_external_id", "c.external_id", "string", None, "the channel's id at its source", True),
    Column(
        "direction",
        "c.direction",
        "string",
        None,
        "direction of travel: the source's code, usually a compass point (see directions)",
        True,
    ),
    Column(
        "direction_name",
        "c.direction_name",
        "string",
        None,
        "the direction's name at the source (e.g. vers Béziers); empty when the source gives none",
        True,
    ),
    Column("lane", "c.lane", "int32", None, "lane number when the channel counts one lane"),
    Column("vehicle_class", "c.vehicle_class", "string", None, "all, light or heavy vehicles"),
    Column("mobility_type", "c.mobility_type", "string", None, "what is counted (car, bike, ...)", True),
    Column("time_step", "c.time_step", "int32", "s", "length of the channel's intervals"),
    Column(
        "days_with_data",
        "d.days",
        "int32",
        "days",
        "number of local days of the year with at least one stored interval, however few: a count of days, "
        "not a coverage (a day with one interval of 96 counts as one; the daily file's coverage says how "
        "complete each day is)",
    ),
)


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    row: str  # what one row is
    order: str
    columns: tuple[Column, ...]
    extra: str = ""  # how to read it

    def file_names(self) -> list[str]:
        return [f"{self.name}.{fmt}" for fmt in FORMATS]


TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "hourly",
            "one channel during one hour with at least one stored interval",
            "site_id, channel_id, period_start",
            HOURLY_COLUMNS,
            "Hours without any stored interval have no row. Channels with intervals longer than an hour "
            "have no hourly rows. Hourly channels' hours come from the raw intervals, so they are missing "
            "for periods older than the raw data retention.",
        ),
        Table(
            "daily",
            "one channel during one local day with at least one stored interval",
            "site_id, channel_id, day",
            DAILY_COLUMNS,
            "Days without any stored interval have no row: their coverage is 0.",
        ),
        Table(
            "events",
            "one version of a road event in force at some point of the year "
            "(every version of such an event, even those recorded in other years)",
            "event_id, version",
            EVENT_COLUMNS,
            "An event is in force from its actual (else planned) start, or when first seen, to its actual "
            "end (its planned end while planned; open while active).",
        ),
        Table("sites", "one channel with data in the year, with its site", "site_id, channel_id", SITE_COLUMNS),
    )
}


def file_names() -> list[str]:
    return [name for t in TABLES.values() for name in t.file_names()] + [DICTIONARY]


def parse_file_name(name: str) -> tuple[Table, Format] | None:
    stem, _, fmt = name.rpartition(".")
    table = TABLES.get(stem)
    if table is None or fmt not in FORMATS:
        return None
    return table, fmt


# Every unit the columns use, with how to read it.
UNITS = {
    "vehicles": "number of vehicles that passed the counter",
    "km/h": "kilometres per hour",
    "ratio 0..1": "a share: 0 = none, 1 = all (multiply by 100 for a percentage)",
    "intervals": "number of the channel's measurement intervals (of time_step seconds each)",
    "days": "number of local days",
    "s": "seconds",
    "m": "metres",
    "degrees (WGS 84)": "decimal degrees, WGS 84 (EPSG:4326)",
    "ISO 8601 local time with offset": "e.g. 2025-07-01T08:00:00+02:00: local time of the publication's zone",
    "ISO 8601 UTC time (Z)": "e.g. 2025-07-01T06:00:00Z: the same instant in UTC",
    "ISO 8601 date": "e.g. 2025-07-01",
    "JSON object": "a JSON object in the cell",
    "CSV: GeoJSON; Parquet: WKB (GeoParquet 1.1); WGS 84 lon/lat": "a location",
}

# The quality a source gives each interval, and what the files make of it.
QUALITY = {
    "observed": "counted by the sensor: present",
    "estimated": "filled in by the source (marked estimated): present, and counted in estimated_share",
    "missing": "the source sent the interval without a count: not present (it lowers coverage)",
    "invalid": "the source marked the count invalid: not present (it lowers coverage)",
    "rejected": "an observed or estimated interval this service's validation rejected (see method.validation): "
    "kept raw, not present, counted per reason in the counts API's `invalid`",
}

# Counters' `direction`: the compass direction of travel (the national counting model's convention).
COMPASS_DIRECTIONS = {
    "N": {"en": "northbound", "fr": "vers le nord"},
    "NE": {"en": "north-eastbound", "fr": "vers le nord-est"},
    "E": {"en": "eastbound", "fr": "vers l'est"},
    "SE": {"en": "south-eastbound", "fr": "vers le sud-est"},
    "S": {"en": "southbound", "fr": "vers le sud"},
    "SW": {"en": "south-westbound", "fr": "vers le sud-ouest"},
    "W": {"en": "westbound", "fr": "vers l'ouest"},
    "NW": {"en": "north-westbound", "fr": "vers le nord-ouest"},
}
# Events' `direction`.
EVENT_DIRECTIONS = {
    "both": {"en": "both directions", "fr": "les deux sens"},
    "positive": {"en": "direction of increasing PR", "fr": "sens des PR croissants"},
    "negative": {"en": "direction of decreasing PR", "fr": "sens des PR décroissants"},
}

FORMULAS = {
    "coverage": "intervals_present / intervals_expected",
    "estimated_share": "intervals_estimated / intervals_present (empty when intervals_present = 0)",
    "speed": "sum(speed_i * count_i) / sum(count_i) over the intervals i with a speed, rounded to 0.1 km/h",
    "site_total(d)": "sum of count over the site's all-vehicle channels on day d (both directions), or over its "
    "light + heavy channels when it has no all-vehicle channel",
    "valid day": "a local day whose coverage, over every channel the site is expected to have that day, "
    ">= the coverage threshold",
    "TMJA": "sum of site_total(d) over the valid days d of the year / number of valid days (vehicles/day)",
    "TMJO": "sum of site_total(d) over the valid days d Monday to Friday that are not public holidays / number "
    "of those days (vehicles/day)",
    "heavy_share": "sum of heavy counts / sum of all-vehicle counts, over the valid days where heavy vehicles "
    "are counted (ratio 0..1; x 100 for % PL)",
}


def dictionary(publication: Any, method: dict[str, Any]) -> dict[str, Any]:
    """Field, type, unit and meaning of every column of every file."""
    return {
        "title": f"{publication.publisher}: traffic counts and road events, yearly files",
        "publisher": publication.publisher,
        "licence": publication.licence,
        "licence_url": publication.licence_url,
        "timezone": publication.timezone,
        "aggregation_version": AGGREGATION_VERSION,
        "format_version": FORMAT_VERSION,
        "method": method,
        "formats": {
            "csv": "UTF-8, comma-separated, one header line, RFC 4180 quoting, LF line ends; an empty field is "
            "a missing value; decimal point '.'; times ISO 8601 in local time with their UTC offset, "
            "each followed by the same instant in UTC with a Z (period_utc, <name>_utc) for readers "
            "that want one offset all year. "
            "Text cells that a spreadsheet would run as a formula (starting with = + - @, tab or carriage "
            "return, and not a number) start with an apostrophe.",
            "parquet": f"Apache Parquet, {PARQUET_COMPRESSION} compression, typed columns (times as UTC instants "
            f"with the zone {publication.timezone!r}); same rows and values as the CSV, without "
            "apostrophes.",
        },
        "formulas": FORMULAS,
        "units": UNITS,
        "quality": QUALITY,
        "directions": {
            "counts": {
                "meaning": "hourly, daily and sites files: the channel's compass direction of travel; a "
                "source that names its directions otherwise gives its own code",
                "codes": COMPASS_DIRECTIONS,
            },
            "events": {
                "meaning": "events file: the direction the event affects, or a name the source gives",
                "codes": EVENT_DIRECTIONS,
            },
        },
        "files": [
            {
                "name": t.name,
                "files": t.file_names(),
                "row": t.row,
                "order": t.order,
                "notes": t.extra,
                "columns": [{"field": c.name, "type": c.type, "unit": c.unit, "meaning": c.meaning} for c in t.columns],
            }
            for t in TABLES.values()
        ],
    }


# --------------------------------------------------------------------------- what a year holds


@dataclass
class YearData:
    """A year's bounds and the cheap markers its ETags derive from.

    Counts: per channel, the number of rollup days, their total and the newest
    row version (`xmin`) of the year's daily rollup. Every ingest that changes a
    measurement rewrites the daily rollup rows of the days it touched (in the
    same transaction as the hourly rollup), so any change to the year's hourly
    or daily values changes this marker. Sites and channels: their count, last
    update and a digest. Events: the number and the last `seq` of the versions
    of the year's events. Raw-data retention removes hourly channels' hours
    without touching rollups, so the hourly file's ETag also carries the
    retention horizon while it lies in the year.
    """

    year: int
    timezone: str
    channels: list[asyncpg.Record] = field(default_factory=list)  # id, site_id, time_step, days
    counts_marker: str = ""
    sites_marker: str = ""
    events_marker: str = ""
    event_ids: list[tuple[str, int]] = field(default_factory=list)  # (id, versions)

    @property
    def first_day(self) -> date:
        return date(self.year, 1, 1)

    @property
    def end_day(self) -> date:
        return date(self.year + 1, 1, 1)

    @property
    def start(self) -> datetime:
        return local_midnight(self.first_day, ZoneInfo(self.timezone))

    @property
    def end(self) -> datetime:
        return local_midnight(self.end_day, ZoneInfo(self.timezone))


_CHANNEL_DAYS = """
SELECT c.id, c.site_id, c.time_step, d.days, d.newest, d.total
  FROM (SELECT channel_id, count(*)::integer AS days, max(xmin::text::bigint) AS newest,
               sum(count_sum)::bigint AS total
          FROM rollup_daily WHERE day >= $1 AND day < $2 GROUP BY channel_id) d
  JOIN channels c ON c.id = d.channel_id
 ORDER BY c.site_id, c.id"""

_SITES_MARKER = """
SELECT (SELECT count(*) || ':' || coalesce(max(updated)::text, '') FROM sites) || '/'
       || (SELECT md5(coalesce(string_agg(c::text, ';' ORDER BY c.id), '')) FROM channels c)"""

_YEAR_EVENTS = f"""
SELECT e.id, count(v.version)::integer AS versions, max(v.seq) AS seq
  FROM events e JOIN event_versions v ON v.event_id = e.id
 WHERE {EVENT_SPAN_END} > $1 AND {EVENT_SPAN_START} < $2
 GROUP BY e.id ORDER BY e.id"""


async def year_data(conn: asyncpg.Connection, year: int, timezone: str, table: Table | None) -> YearData:
    """What the ETag of `table` (all tables when None) needs, read in the caller's snapshot."""
    data = YearData(year, timezone)
    if table is None or table.name != "events":
        data.channels = list(await conn.fetch(_CHANNEL_DAYS, data.first_day, data.end_day))
        digest = hashlib.blake2b(digest_size=16)
        for r in data.channels:
            digest.update(f"{r['id']}:{r['days']}:{r['newest']}:{r['total']};".encode())
        data.counts_marker = digest.hexdigest()
        data.sites_marker = await conn.fetchval(_SITES_MARKER)
    if table is None or table.name == "events":
        rows = await conn.fetch(_YEAR_EVENTS, data.start, data.end)
        data.event_ids = [(r["id"], r["versions"]) for r in rows]
        versions = sum(r["versions"] for r in rows)
        data.events_marker = f"{len(rows)}:{versions}:{max((r['seq'] for r in rows), default=0)}"
    return data


def etag_tag(data: YearData, table: Table, fmt: Format, retention_days: int | None, today: date) -> str:
    """The opaque part of the file's strong ETag."""
    parts = [FORMAT_VERSION, AGGREGATION_VERSION, data.timezone, str(data.year), table.name, fmt]
    if table.name == "events":
        parts.append(data.events_marker)
    else:
        parts += [data.counts_marker, data.sites_marker]
    if table.name == "hourly" and retention_days is not None:
        horizon = today - timedelta(days=retention_days)
        if data.first_day <= horizon <= data.end_day + timedelta(days=7):
            parts.append(f"retention:{horizon.isoformat()}")
    return hashlib.blake2b("|".join(parts).encode(), digest_size=16).hexdigest()


# --------------------------------------------------------------------------- batches


def _select(columns: Sequence[Column], csv: bool) -> str:
    def expr(c: Column) -> str:
        sql = f"k.{c.name}" if c.keyed else (c.csv_sql if csv else c.parquet_sql) or c.sql
        return neutralised_sql(sql) if csv and c.text and not c.keyed else sql

    return ", ".join(f"{expr(c)} AS {c.name}" for c in columns)


def _keys(columns: Sequence[Column], channel_ids: Sequence[int], csv: bool) -> str:
    """The per-channel columns of a batch, computed once per channel (MATERIALIZED keeps
    the planner from re-evaluating them, formula guard included, on every row)."""
    keyed = ", ".join(
        (neutralised_sql(c.sql) if csv and c.text else c.sql) + f" AS {c.name}" for c in columns if c.keyed
    )
    return f"""WITH k AS MATERIALIZED (
    SELECT c.time_step, {keyed}
      FROM channels c JOIN sites s ON s.id = c.site_id
     WHERE c.id = ANY({sql_literal(list(channel_ids))}))"""


def _channel_batches(
    channels: Sequence[asyncpg.Record], rows_per_day: Callable[[asyncpg.Record], int]
) -> list[list[asyncpg.Record]]:
    """Consecutive channels (file order) grouped into batches of about BATCH_ROWS rows."""
    batches: list[list[asyncpg.Record]] = []
    current: list[asyncpg.Record] = []
    rows = 0
    for c in channels:
        n = c["days"] * rows_per_day(c)
        if n == 0:
            continue
        if current and rows + n > BATCH_ROWS:
            batches.append(current)
            current, rows = [], 0
        current.append(c)
        rows += n
    if current:
        batches.append(current)
    return batches


def _hourly_batches(data: YearData, csv: bool) -> list[str]:
    select = _select(HOURLY_COLUMNS, csv)
    lo, hi = sql_literal(data.start), sql_literal(data.end)
    out = []

    def hours(c: asyncpg.Record) -> int:  # rows per day; channels coarser than an hour have none
        return 24 if c["time_step"] <= 3600 else 0

    for batch in _channel_batches(data.channels, hours):
        sub = [c["id"] for c in batch if c["time_step"] < 3600]
        hourly = [c["id"] for c in batch if c["time_step"] == 3600]
        out.append(f"""{_keys(HOURLY_COLUMNS, sub + hourly, csv)}
SELECT {select}
  FROM (SELECT channel_id, bucket, count_sum, speed_weighted_sum, speed_count, intervals_present,
               intervals_estimated, intervals_expected
          FROM rollup_hourly
         WHERE channel_id = ANY({sql_literal(sub)}) AND bucket >= {lo} AND bucket < {hi}
        UNION ALL
        SELECT m.channel_id, date_trunc('hour', m.start, 'UTC'),
               CASE WHEN q.ok THEN m.count ELSE 0 END,
               CASE WHEN q.ok AND m.speed IS NOT NULL THEN m.speed::float8 * m.count ELSE 0 END,
               CASE WHEN q.ok AND m.speed IS NOT NULL THEN m.count ELSE 0 END,
               q.ok::integer, (q.ok AND m.quality = 'estimated')::integer, 1
          FROM measurements m
         CROSS JOIN LATERAL (SELECT m.count IS NOT NULL AND m.quality IN ('observed', 'estimated')
                                           AND m.validation IS NULL AS ok) q
         WHERE m.channel_id = ANY({sql_literal(hourly)}) AND m.start >= {lo} AND m.start < {hi}) r
  JOIN k ON k.channel_id = r.channel_id
 ORDER BY k.site_id, k.channel_id, r.bucket""")
    return out


def _daily_batches(data: YearData, csv: bool) -> list[str]:
    select = _select(DAILY_COLUMNS, csv).replace("{day_seconds}", day_seconds_sql([data.year], data.timezone, "r.day"))
    out = []
    for batch in _channel_batches(data.channels, lambda c: 1):
        ids = [c["id"] for c in batch]
        out.append(f"""{_keys(DAILY_COLUMNS, ids, csv)}
SELECT {select}
  FROM rollup_daily r
  JOIN k ON k.channel_id = r.channel_id
 WHERE r.channel_id = ANY({sql_literal(ids)})
   AND r.day >= {sql_literal(data.first_day)} AND r.day < {sql_literal(data.end_day)}
 ORDER BY k.site_id, k.channel_id, r.day""")
    return out


def _event_batches(data: YearData, csv: bool) -> list[str]:
    select = _select(EVENT_COLUMNS, csv)
    batches: list[list[str]] = []
    current: list[str] = []
    rows = 0
    for event_id, versions in data.event_ids:
        if current and rows + versions > BATCH_ROWS:
            batches.append(current)
            current, rows = [], 0
        current.append(event_id)
        rows += versions
    if current:
        batches.append(current)
    return [
        f"""
SELECT {select}
  FROM event_versions v
 WHERE v.event_id = ANY({sql_literal(batch)})
 ORDER BY v.event_id, v.version"""
        for batch in batches
    ]


def _site_batches(data: YearData, csv: bool) -> list[str]:
    if not data.channels:
        return []
    ids = [c["id"] for c in data.channels]
    days = [c["days"] for c in data.channels]
    return [
        f"""
SELECT {_select(SITE_COLUMNS, csv)}
  FROM unnest({sql_literal(ids)}, {sql_literal(days)}) AS d(channel_id, days)
  JOIN channels c ON c.id = d.channel_id
  JOIN sites s ON s.id = c.site_id
 ORDER BY c.site_id, c.id"""
    ]


_BATCHES = {"hourly": _hourly_batches, "daily": _daily_batches, "events": _event_batches, "sites": _site_batches}


def batch_queries(data: YearData, table: Table, fmt: Format) -> list[str]:
    return _BATCHES[table.name](data, fmt == "csv")


# --------------------------------------------------------------------------- streaming


async def _copy(conn: asyncpg.Connection, query: str) -> bytes:
    """One batch as CSV (no header), read whole so the statement ends before the client is served."""
    chunks: list[bytes] = []

    async def collect(chunk: bytes) -> None:
        chunks.append(chunk)

    await conn.copy_from_query(query, output=collect, format="csv")
    return b"".join(chunks)


def csv_header(table: Table) -> bytes:
    return (",".join(c.name for c in table.columns) + "\n").encode()


async def stream_csv(conn: asyncpg.Connection, data: YearData, table: Table, write: Write) -> int:
    """Writes the header and every batch; returns the number of bytes."""
    header = csv_header(table)
    await write(header)
    size = len(header)
    for query in batch_queries(data, table, "csv"):
        chunk = await _copy(conn, query)
        if chunk:
            await write(chunk)
            size += len(chunk)
    return size


class _Sink(io.RawIOBase):
    """A write-only file for ParquetWriter that keeps bytes until `take()`."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._buffer += b
        self._position += len(b)
        return len(b)

    def tell(self) -> int:
        return self._position

    def take(self) -> bytes:
        out = bytes(self._buffer)
        self._buffer.clear()
        return out


def geo_metadata(table: Table) -> dict[str, str]:
    """GeoParquet 1.1 file metadata for the table's geometry columns (none: empty)."""
    columns = {
        c.name: {"encoding": "WKB", "geometry_types": list(c.geometry_types)}
        for c in table.columns
        if c.type == "geometry"
    }
    if not columns:
        return {}
    # No "crs": GeoParquet's default, OGC:CRS84, is WGS 84 in lon/lat order.
    return {"geo": json.dumps({"version": "1.1.0", "primary_column": next(iter(columns)), "columns": columns})}


def arrow_schema(table: Table, timezone: str, metadata: dict[str, str] | None = None) -> pa.Schema:
    return pa.schema(
        [pa.field(c.name, c.arrow_type(timezone)) for c in table.columns],
        metadata={**(metadata or {}), **geo_metadata(table)},
    )


def _csv_type(field: pa.Field) -> pa.DataType:
    if pa.types.is_timestamp(field.type):
        return pa.timestamp("s", tz="UTC")
    return pa.string() if pa.types.is_binary(field.type) else field.type  # bytea comes as \x<hex>


def _parse_batch(chunk: bytes, schema: pa.Schema) -> pa.Table:
    parsed = pa_csv.read_csv(
        io.BytesIO(chunk),
        read_options=pa_csv.ReadOptions(column_names=schema.names, block_size=1 << 22),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(
            column_types={f.name: _csv_type(f) for f in schema},
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )
    for i, column in enumerate(schema):
        if pa.types.is_binary(column.type):
            hex_cells = parsed.column(i).to_pylist()
            parsed = parsed.set_column(
                i,
                column.name,
                pa.array([None if h is None else bytes.fromhex(h.removeprefix("\\x")) for h in hex_cells], pa.binary()),
            )
    return parsed.cast(schema)


async def stream_parquet(
    conn: asyncpg.Connection, data: YearData, table: Table, write: Write, metadata: dict[str, str]
) -> int:
    """Row groups of at least BATCH_ROWS rows (except the last), each sent once written.

    Parsing and writing run in one worker thread of this download, in order, so a
    cancelled request (client gone) never closes the writer under a running write.
    """
    schema = arrow_schema(table, data.timezone, metadata)
    sink = _Sink()
    writer = pq.ParquetWriter(sink, schema, compression=PARQUET_COMPRESSION)
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet")
    loop = asyncio.get_running_loop()
    size = 0
    pending: list[pa.Table] = []
    pending_rows = 0

    def flush(tables: list[pa.Table]) -> bytes:
        writer.write_table(pa.concat_tables(tables), row_group_size=max(BATCH_ROWS * 2, 1))
        return sink.take()

    def finish() -> bytes:
        writer.close()
        return sink.take()

    try:
        for query in batch_queries(data, table, "parquet"):
            chunk = await _copy(conn, query)
            if not chunk:
                continue
            batch = await loop.run_in_executor(worker, _parse_batch, chunk, schema)
            pending.append(batch)
            pending_rows += batch.num_rows
            if pending_rows >= BATCH_ROWS:
                out = await loop.run_in_executor(worker, flush, pending)
                pending, pending_rows = [], 0
                await write(out)
                size += len(out)
        if pending:
            out = await loop.run_in_executor(worker, flush, pending)
            await write(out)
            size += len(out)
        tail = await loop.run_in_executor(worker, finish)
    finally:
        worker.submit(writer.close)  # after any write still running; closing twice is harmless
        worker.shutdown(wait=False)
    await write(tail)
    return size + len(tail)
