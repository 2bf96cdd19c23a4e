"""The yearly bulk files (hourly, daily, events, sites; CSV and Parquet): their tables and
columns, each an SQL expression with its meaning, their names, and the data dictionary.

CSV cells of free text starting with = + - @ (or a tab or carriage return) get
a leading apostrophe, so a spreadsheet never runs them as formulas; numbers
(and text that is a plain number, like "-12") are left alone.

feed.store.downloads reads a year's rows into these files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

import pyarrow as pa

from feed.store.history import AGGREGATION_VERSION

PARQUET_COMPRESSION = "zstd"
FORMAT_VERSION = "2"  # bump when a file's columns or layout change: every ETag changes with it

Format = Literal["csv", "parquet"]
FORMATS: tuple[Format, ...] = ("csv", "parquet")
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}
DICTIONARY = "dictionary.json"


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
