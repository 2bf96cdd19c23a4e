"""The OpenAPI 3.1 document of /api/v1, built from the same constants as the handlers.

Schemas are JSON Schema 2020-12 (OpenAPI 3.1 uses it as is), so tests validate
real responses against them with `jsonschema`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from feed.config import Config
from feed.http.authoring import EventInput, authoring_paths
from feed.http.campaigns import campaign_paths
from feed.http.conditions import ConditionInput, condition_paths
from feed.http.context import AppContext
from feed.http.documents import API, respond_json
from feed.http.params import (
    DEFAULT_PERIODS,
    EVENTS_LIMIT,
    INSTANT_EXPECTED,
    MAX_PERIODS,
    MAX_RANGE_TEXT,
    SITES_LIMIT,
    YEARS,
)
from feed.http.responses import PREFLIGHT_HEADERS
from feed.publish import dcat
from feed.publish.filters import BBOX_EXPECTED, EVENT_STATUSES, EVENT_TYPES
from feed.store import yearly_files
from feed.store.history import STEPS

REF = "#/components/schemas/"

# What the server accepts, as patterns. A value is stripped of surrounding white
# space first, and an optional parameter left blank takes its default (BLANK).
_LON = r"[+-]?(180(\.0+)?|(1[0-7][0-9]|[0-9]{1,2})(\.[0-9]+)?)"
_LAT = r"[+-]?(90(\.0+)?|[0-8]?[0-9](\.[0-9]+)?)"
BBOX_PATTERN = rf"^\s*{_LON}\s*,\s*{_LAT}\s*,\s*{_LON}\s*,\s*{_LAT}\s*$"
_YEAR = "(19|20|21)[0-9]{2}"  # feed.http.params.YEARS: 1900 to 2199
_MONTH = "(0[1-9]|1[0-2])"
_MONTH_DAY = "((0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])|(0[13-9]|1[0-2])-(29|30)|(0[13578]|1[02])-31)"
_TIME = r"T([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9])?"
INSTANT_PATTERN = rf"^\s*{_YEAR}(-{_MONTH}|-{_MONTH_DAY}({_TIME})?)?\s*$"
BLANK = {"type": "string", "pattern": r"^\s*$"}
TEXT = {"type": "string", "pattern": r"^[^\u0000]*$"}  # PostgreSQL text holds no NUL
_ITEM = r"\s*[^,\s\u0000][^,\u0000]*"  # a non-blank item of a comma-separated list
TEXT_LIST_PATTERN = f"^{_ITEM}(,{_ITEM})*$"


def list_pattern(allowed: tuple[str, ...] | list[str]) -> str:
    """A comma-separated list of `allowed` values (white space around items is ignored)."""
    item = r"\s*(" + "|".join(allowed) + r")\s*"
    return f"^{item}(,{item})*$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def _nullable(type_: str, **extra: Any) -> dict[str, Any]:
    return {"type": [type_, "null"], **extra}


def _object(
    properties: dict[str, Any],
    *,
    required: list[str] | None = None,
    extra: bool = False,
    description: str | None = None,
) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": extra,
    }
    if description:
        schema["description"] = description
    return schema


TIME = {"type": "string", "format": "date-time"}
NTIME = _nullable("string", format="date-time")

SITE_PROPERTIES: dict[str, Any] = {
    "id": {"type": "integer"},
    "external_id": {"type": "string"},
    "source": {"type": "string", "description": "the source id"},
    "name": {"type": "string"},
    "road": _nullable("string"),
    "pr": _nullable("integer"),
    "abscissa": _nullable("integer"),
    "insee": _nullable("string"),
    "commune": _nullable("string"),
    "lon": _nullable("number"),
    "lat": _nullable("number"),
    "directions": {"type": "array", "items": {"type": "string"}},
    "direction_names": {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "description": 'direction code -> its name at the source (e.g. "vers Béziers"), for the '
        "directions the source names",
    },
    "vehicle_classes": {"type": "array", "items": {"enum": ["all", "light", "heavy"]}},
    "channels": {"type": "array", "items": _ref("Channel")},
    "first_data": {**NTIME, "description": "start of the first stored interval (local time)"},
    "last_data": {**NTIME, "description": "end of the last stored interval (local time)"},
}

TEXTS = {"type": "object", "additionalProperties": {"type": "string"}}  # name -> explanation

SCHEMAS: dict[str, Any] = {
    "Licence": _object({"name": {"type": "string"}, "url": {"type": "string", "format": "uri"}}),
    "Method": _object(
        {
            "coverage_threshold": {"type": "number", "minimum": 0, "maximum": 1},
            "aggregation_version": {"type": "string"},
            "coverage": {"type": "string", "const": "intervals present / intervals expected"},
            "timezone": {"type": "string"},
            "v85": {"type": "string"},
        },
        required=["coverage_threshold", "aggregation_version", "coverage", "timezone", "v85"],
        extra=True,
        description="How the numbers are made: definitions of every measure, the threshold, the aggregation version.",
    ),
    "Error": _object(
        {
            "error": {"type": "string", "description": "invalid_parameter, not_found, query_timeout or busy"},
            "parameter": _nullable("string"),
            "value": _nullable("string"),
            "expected": _nullable("string"),
            "detail": {"type": "string"},
        },
    ),
    "Channel": _object(
        {
            "id": {"type": "integer"},
            "external_id": {"type": "string"},
            "direction": _nullable("string"),
            "direction_name": _nullable("string", description="the direction's name at the source, e.g. vers Béziers"),
            "lane": _nullable("integer"),
            "vehicle_class": {"enum": ["all", "light", "heavy"]},
            "time_step": {"type": "integer", "description": "seconds"},
        }
    ),
    "Site": _object(SITE_PROPERTIES),
    "Point": _object(
        {
            "period": {
                "type": "string",
                "description": "hour: its start as a local date-time with offset; "
                "day, month, year: the first day (YYYY-MM-DD)",
            },
            "count": _nullable("integer", description="null when no interval is present"),
            "coverage": {"type": "number", "minimum": 0},
            "estimated_share": _nullable("number", minimum=0, maximum=1),
            "speed": _nullable("number", description="km/h"),
            "invalid": {
                "type": "integer",
                "minimum": 0,
                "description": "intervals rejected by validation (raw values kept, left out of count and coverage)",
            },
            "invalid_reasons": {"type": "string", "description": "their reason codes, comma-separated (see method)"},
        }
    ),
    "AnnualRow": _object(
        {
            "site_id": {"type": "integer"},
            "external_id": {"type": "string"},
            "name": {"type": "string"},
            "road": _nullable("string"),
            "tmja": _nullable("number"),
            "tmjo": _nullable("number"),
            "heavy_share": _nullable("number"),
            "mean_speed": _nullable("number"),
            "days_valid": {"type": "integer"},
            "days_excluded": {"type": "integer"},
            "mean_coverage": _nullable("number"),
        }
    ),
    "EventState": _object(
        {
            "id": {"type": "string"},
            "source_id": {"type": "string"},
            "external_id": {"type": "string"},
            "version": {"type": "integer", "minimum": 1},
            "type": {"enum": list(EVENT_TYPES)},
            "subtype": _nullable("string"),
            "status": {"enum": list(EVENT_STATUSES)},
            "severity": {"type": "string"},
            "planned_start": NTIME,
            "planned_end": NTIME,
            "actual_start": NTIME,
            "actual_end": NTIME,
            "road": _nullable("string"),
            "direction": _nullable("string"),
            "lanes_affected": _nullable("string"),
            "geometry": {"type": ["object", "null"], "description": "GeoJSON Point or LineString"},
            "descriptions": {"type": "object", "additionalProperties": {"type": "string"}},
            "detour": _nullable("string"),
            "location_refs": {"type": "object"},
            "source_version": _nullable("string"),
            "source_updated": NTIME,
            "first_seen": TIME,
            "last_seen": TIME,
            "updated": TIME,
        },
        extra=True,
    ),
    "Source": _object(
        {
            "id": {"type": "string"},
            "kind": {"type": "string"},
            "configured": {"type": "boolean"},
            "enabled": {"type": "boolean"},
            "interval": _nullable("integer", description="seconds between polls"),
            "last_success": NTIME,
            "last_error": _nullable("string"),
            "last_error_at": NTIME,
            "last_run": {
                "oneOf": [
                    {"type": "null"},
                    _object(
                        {
                            "started": TIME,
                            "finished": NTIME,
                            "http_status": _nullable("integer"),
                            "bytes": {"type": "integer"},
                            "new": {"type": "integer"},
                            "updated": {"type": "integer"},
                            "unchanged": {"type": "integer"},
                            "quarantined": {"type": "integer"},
                            "complete": {"type": "boolean"},
                            "error": _nullable("string"),
                        }
                    ),
                ]
            },
        }
    ),
}


# Agents' event entry (feed.http.authoring), with the models it refers to.
_EVENT_INPUT = EventInput.model_json_schema(by_alias=True, ref_template=REF + "{model}")
SCHEMAS.update(_EVENT_INPUT.pop("$defs", {}))
SCHEMAS["EventInput"] = _EVENT_INPUT
_CONDITION_INPUT = ConditionInput.model_json_schema(by_alias=True, ref_template=REF + "{model}")
SCHEMAS.update(_CONDITION_INPUT.pop("$defs", {}))
SCHEMAS["ConditionInput"] = _CONDITION_INPUT
AGENT_SECURITY = {
    "agentSession": {
        "type": "apiKey",
        "in": "cookie",
        "name": "roadfeed_session",
        "description": "POST /api/v1/session; unsafe requests also send X-CSRF-Token",
    },
    "agentToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "a personal token (roadfeed users token NAME) or the operators' admin token",
    },
}


def _document_schema(properties: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    return _object({**properties, "licence": _ref("Licence"), "method": _ref("Method")}, description=description)


SCHEMAS.update(
    {
        "SitesPage": _document_schema(
            {"sites": {"type": "array", "items": _ref("Site")}, "next_cursor": _nullable("string")}
        ),
        "SiteDocument": _document_schema(SITE_PROPERTIES),
        "Counts": _document_schema(
            {
                "site": _ref("Site"),
                "from": TIME,
                "to": TIME,
                "step": {"enum": list(STEPS)},
                "direction": _nullable("string"),
                "direction_name": _nullable("string", description="the asked direction's name at the source, if named"),
                "vehicle_class": {"enum": ["all", "light", "heavy"]},
                "points": {"type": "array", "items": _ref("Point")},
            }
        ),
        "Annual": _document_schema(
            {
                "year": {"type": "integer"},
                "threshold": {"type": "number"},
                "q": _nullable("string", description="the filter applied (q), null when none"),
                "rows": {"type": "array", "items": _ref("AnnualRow")},
            }
        ),
        "Event": {
            "allOf": [_ref("EventState")],
            "type": "object",
            "required": ["versions"],
            "properties": {"versions": {"type": "array", "items": _ref("EventVersion")}},
        },
        "EventVersion": {
            "allOf": [_ref("EventState")],
            "type": "object",
            "required": ["change", "recorded"],
            "properties": {
                "change": {"enum": ["created", "updated", "ended", "reopened"]},
                "recorded": TIME,
                "author": _nullable("string", description="the agent who wrote this version; null: a collector"),
            },
        },
        "EventsPage": _document_schema(
            {"events": {"type": "array", "items": _ref("Event")}, "next_cursor": _nullable("string")}
        ),
        "EventDocument": {
            "allOf": [_ref("Event")],
            "type": "object",
            "required": ["licence", "method"],
            "properties": {"licence": _ref("Licence"), "method": _ref("Method")},
        },
        "Sources": _document_schema({"sources": {"type": "array", "items": _ref("Source")}}),
        "Downloads": _document_schema(
            {
                "years": {
                    "type": "array",
                    "items": _object(
                        {
                            "year": {"type": "integer"},
                            "files": _object({name: {"type": "string"} for name in yearly_files.file_names()}),
                        }
                    ),
                },
                "dictionary": {"type": "string"},
                "publisher": {"type": "string"},
            }
        ),
        "Dictionary": _document_schema(
            {
                "title": {"type": "string"},
                "publisher": {"type": "string"},
                "licence_url": {"type": "string"},
                "timezone": {"type": "string"},
                "aggregation_version": {"type": "string"},
                "format_version": {"type": "string"},
                "formats": {"type": "object"},
                "formulas": TEXTS,
                "units": TEXTS,
                "quality": TEXTS,
                "directions": _object(
                    {
                        kind: _object(
                            {
                                "meaning": {"type": "string"},
                                "codes": {
                                    "type": "object",
                                    "additionalProperties": _object(
                                        {"en": {"type": "string"}, "fr": {"type": "string"}}
                                    ),
                                },
                            }
                        )
                        for kind in ("counts", "events")
                    }
                ),
                "files": {
                    "type": "array",
                    "items": _object(
                        {
                            "name": {"type": "string"},
                            "files": {"type": "array", "items": {"type": "string"}},
                            "row": {"type": "string"},
                            "order": {"type": "string"},
                            "notes": {"type": "string"},
                            "columns": {
                                "type": "array",
                                "items": _object(
                                    {
                                        "field": {"type": "string"},
                                        "type": {"type": "string"},
                                        "unit": _nullable("string"),
                                        "meaning": {"type": "string"},
                                    }
                                ),
                            },
                        }
                    ),
                },
            }
        ),
    }
)


def _param(
    name: str,
    where: str,
    description: str,
    schema: dict[str, Any],
    required: bool = False,
    example: Any = None,
    blank: bool = False,
) -> dict[str, Any]:
    """`blank`: the server reads a blank value as the parameter's absence."""
    if blank:
        schema = {"anyOf": [schema, BLANK]}
        description += " (blank: as if absent)"
    p: dict[str, Any] = {"name": name, "in": where, "description": description, "required": required, "schema": schema}
    if example is not None:
        p["example"] = example
    return p


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


ERRORS = {
    "400": _json("Error", "a parameter cannot be used: the body names it, its value and what is expected"),
    "503": _json("Error", "the query exceeded the statement timeout (or every download slot is busy)"),
}
NOT_FOUND = {"404": _json("Error", "no such item")}
NOT_MODIFIED = {"304": {"description": "the representation matching If-None-Match has not changed"}}
FORMAT = _param(
    "format",
    "query",
    "json (default), csv or parquet: the same values in each",
    {"enum": ["json", "csv", "parquet"], "default": "json"},
    blank=True,
)
DIALECT = _param(
    "dialect",
    "query",
    "with format=csv: standard (comma, decimal point) or fr (French spreadsheets: "
    "semicolon, decimal comma, French headers, UTF-8 byte order mark)",
    {"enum": ["standard", "fr"], "default": "standard"},
    blank=True,
)
INSTANT = {"type": "string", "pattern": INSTANT_PATTERN}
CURSOR = _param(
    "cursor",
    "query",
    "next_cursor of the previous page (opaque: only a cursor this API issued for this list is accepted)",
    TEXT,
    blank=True,
)
BBOX = _param(
    "bbox",
    "query",
    BBOX_EXPECTED + "; lon_min <= lon_max and lat_min <= lat_max",
    {"type": "string", "pattern": BBOX_PATTERN},
    example="3.2,43.3,4.1,43.8",
    blank=True,
)
ROAD = _param(
    "road",
    "query",
    "road(s), comma-separated; spaces and case are ignored (RD613 = rd 613)",
    {"type": "string", "pattern": TEXT_LIST_PATTERN},
    example="RD613",
)


def _table_content(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {"schema": _ref(schema)},
            "text/csv": {"schema": {"type": "string"}},
            "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
        },
        "headers": {
            "Content-Disposition": {
                "schema": {"type": "string"},
                "description": "attachment; filename=... (CSV and Parquet)",
            }
        },
    }


def _limits_text() -> str:
    return "; ".join(f"step={s}: at most {MAX_PERIODS[s]} periods ({MAX_RANGE_TEXT[s]})" for s in STEPS)


def paths() -> dict[str, Any]:
    site_id = _param("id", "path", "the site's id", {"type": "integer"}, required=True)
    return {
        f"{API}/sites": {
            "get": {
                "summary": "Counting sites with their channels",
                "operationId": "listSites",
                "parameters": [
                    ROAD,
                    _param(
                        "commune",
                        "query",
                        "INSEE code, or commune name (case-insensitive)",
                        TEXT,
                        example="34172",
                        blank=True,
                    ),
                    BBOX,
                    _param(
                        "limit",
                        "query",
                        f"sites per page (default {SITES_LIMIT[0]})",
                        {"type": "integer", "minimum": 1, "maximum": SITES_LIMIT[1], "default": SITES_LIMIT[0]},
                        blank=True,
                    ),
                    CURSOR,
                ],
                "responses": {"200": _json("SitesPage", "a page of sites in id order"), **NOT_MODIFIED, **ERRORS},
            }
        },
        f"{API}/sites/{{id}}": {
            "get": {
                "summary": "One site",
                "operationId": "getSite",
                "parameters": [site_id],
                "responses": {"200": _json("SiteDocument", "the site"), **NOT_MODIFIED, **NOT_FOUND, **ERRORS},
            }
        },
        f"{API}/sites/{{id}}/counts": {
            "get": {
                "summary": "A site's counts per hour, day, month or year, with coverage",
                "description": "Periods without data are listed with coverage 0. `from` is floored and `to` ceiled "
                f"to the step; `to` is exclusive. Limits: {_limits_text()}. Defaults: the last "
                + ", ".join(f"{n} {s}s" for s, n in DEFAULT_PERIODS.items())
                + " up to now.",
                "operationId": "getSiteCounts",
                "parameters": [
                    site_id,
                    _param("from", "query", INSTANT_EXPECTED, INSTANT, example="2025-07-01", blank=True),
                    _param(
                        "to",
                        "query",
                        "exclusive end, after from; " + INSTANT_EXPECTED,
                        INSTANT,
                        example="2025-08-01",
                        blank=True,
                    ),
                    _param("step", "query", "period length", {"enum": list(STEPS), "default": "day"}, blank=True),
                    _param(
                        "direction",
                        "query",
                        "one of the site's directions (all by default; another one: 404)",
                        TEXT,
                        blank=True,
                    ),
                    _param(
                        "vehicle_class",
                        "query",
                        "all (the site's total, default), light or heavy (one the site does not count: 404)",
                        {"enum": ["all", "light", "heavy"], "default": "all"},
                        blank=True,
                    ),
                    FORMAT,
                    DIALECT,
                ],
                "responses": {
                    "200": _table_content(
                        "Counts",
                        "the series; CSV header: period,count,coverage,"
                        "estimated_share,speed,invalid,invalid_reasons; at "
                        "step=hour period_utc (the start in UTC, with a Z) "
                        "follows period",
                    ),
                    **NOT_MODIFIED,
                    **NOT_FOUND,
                    **ERRORS,
                },
            }
        },
        f"{API}/annual": {
            "get": {
                "summary": "Annual table per site: TMJA, TMJO, heavy share, mean speed, valid days",
                "operationId": "getAnnual",
                "parameters": [
                    _param(
                        "year",
                        "query",
                        "the year",
                        {"type": "integer", "minimum": YEARS[0], "maximum": YEARS[1]},
                        required=True,
                        example=2025,
                    ),
                    _param(
                        "threshold",
                        "query",
                        "coverage a day needs to count (default [publication] coverage_threshold)",
                        {"type": "number", "minimum": 0, "maximum": 1},
                        blank=True,
                    ),
                    _param(
                        "q",
                        "query",
                        "only the sites whose `name road external_id` (a missing one is empty) "
                        "contains this text, both compared decomposed (NFD) without the combining accents U+0300 "
                        "to U+036F and lower-cased, after surrounding white space is removed; the table filter of "
                        "the web page. Every format holds the same rows. Text without NUL",
                        TEXT,
                        blank=True,
                        example="rd613",
                    ),
                    FORMAT,
                    DIALECT,
                ],
                "responses": {"200": _table_content("Annual", "one row per site"), **NOT_MODIFIED, **ERRORS},
            }
        },
        f"{API}/events": {
            "get": {
                "summary": "Road events in force during a period, each with every version",
                "operationId": "listEvents",
                "parameters": [
                    _param("from", "query", INSTANT_EXPECTED, INSTANT, blank=True),
                    _param("to", "query", "exclusive end, after from; " + INSTANT_EXPECTED, INSTANT, blank=True),
                    BBOX,
                    _param(
                        "type",
                        "query",
                        "comma-separated: " + ", ".join(EVENT_TYPES),
                        {"type": "string", "pattern": list_pattern(EVENT_TYPES)},
                    ),
                    ROAD,
                    _param(
                        "status",
                        "query",
                        "current status, comma-separated: " + ", ".join(EVENT_STATUSES),
                        {"type": "string", "pattern": list_pattern(EVENT_STATUSES)},
                    ),
                    _param(
                        "limit",
                        "query",
                        f"events per page (default {EVENTS_LIMIT[0]})",
                        {"type": "integer", "minimum": 1, "maximum": EVENTS_LIMIT[1], "default": EVENTS_LIMIT[0]},
                        blank=True,
                    ),
                    CURSOR,
                ],
                "responses": {"200": _json("EventsPage", "a page of events in id order"), **NOT_MODIFIED, **ERRORS},
            }
        },
        f"{API}/events/{{id}}": {
            "get": {
                "summary": "One event with every version",
                "operationId": "getEvent",
                "parameters": [
                    _param(
                        "id",
                        "path",
                        "<source id>:<external id> (may contain ':' and '/')",
                        {"type": "string"},
                        required=True,
                        example="cd34:works-12",
                    )
                ],
                "responses": {"200": _json("EventDocument", "the event"), **NOT_MODIFIED, **NOT_FOUND, **ERRORS},
            }
        },
        f"{API}/sources": {
            "get": {
                "summary": "Each source's state: last success, last error, last run",
                "operationId": "listSources",
                "responses": {"200": _json("Sources", "configured and stored sources"), **NOT_MODIFIED, **ERRORS},
            }
        },
        f"{API}/downloads": {
            "get": {
                "summary": "Years with bulk files, and their URLs",
                "operationId": "listDownloads",
                "responses": {"200": _json("Downloads", "years and files"), **NOT_MODIFIED, **ERRORS},
            }
        },
        f"{API}/downloads/{yearly_files.DICTIONARY}": {
            "get": {
                "summary": "Data dictionary: field, type, unit and meaning of every column of every file",
                "operationId": "getDictionary",
                "responses": {"200": _json("Dictionary", "the dictionary"), **NOT_MODIFIED},
            }
        },
        f"{API}/downloads/{{year}}/{{name}}": {
            "get": {
                "summary": "A bulk file of one year (streamed)",
                "description": "Stable URLs. The strong ETag changes when the year's data change; If-None-Match "
                "gives 304 (also to HEAD). CSV is gzip-compressed when asked for.",
                "operationId": "getDownload",
                "parameters": [
                    _param("year", "path", "a year listed by /api/v1/downloads", {"type": "integer"}, required=True),
                    _param("name", "path", "the file", {"enum": yearly_files.file_names()}, required=True),
                ],
                "responses": {
                    "200": {
                        "description": "the file",
                        "content": {
                            "text/csv": {"schema": {"type": "string"}},
                            "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
                            "application/json": {"schema": _ref("Dictionary")},
                        },
                        "headers": {"ETag": {"schema": {"type": "string"}}},
                    },
                    **NOT_MODIFIED,
                    **NOT_FOUND,
                    **ERRORS,
                },
            }
        },
        dcat.CATALOG_PATH: {
            "get": {
                "summary": "The DCAT-AP / mobilityDCAT-AP catalogue of the datasets and feeds (JSON-LD)",
                "description": "For national access points (transport.data.gouv.fr): licence, publisher, update "
                "frequency, spatial coverage, and every distribution with its format and the schema "
                "version it conforms to. The @context is inline.",
                "operationId": "getCatalog",
                "responses": {
                    "200": {
                        "description": "a dcat:Catalog",
                        "content": {
                            dcat.MEDIA_TYPE: {
                                "schema": {"type": "object", "required": ["@context", "@type", "dcat:dataset"]}
                            },
                        },
                    },
                    **NOT_MODIFIED,
                    **ERRORS,
                },
            }
        },
        f"{API}/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "getOpenApi",
                "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
            }
        },
    }


def _merged(*documents: dict[str, Any]) -> dict[str, Any]:
    """Paths of several route groups, the operations of one path together."""
    out: dict[str, Any] = {}
    for document in documents:
        for path, operations in document.items():
            out.setdefault(path, {}).update(operations)
    return out


def openapi_document(config: Config) -> dict[str, Any]:
    p = config.publication
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"roadfeed history API ({p.publisher})",
            "version": "1",
            "description": "Traffic counts with coverage on every value, road events with every version, bulk "
            "yearly files. Every JSON document carries `licence` and `method`; errors have one "
            "shape (Error). Lists are paged with opaque cursors.",
            "license": {"name": p.licence, "url": p.licence_url},
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": _merged(paths(), authoring_paths(), condition_paths(), campaign_paths()),
        "components": {"schemas": SCHEMAS, "securitySchemes": AGENT_SECURITY},
    }


OPENAPI_PATH = f"{API}/openapi.json"


def openapi_routes(app: web.Application, ctx: AppContext) -> None:
    """`/api/v1/openapi.json`: this document (GET, HEAD and CORS preflight)."""
    document = openapi_document(ctx.config)

    async def openapi(request: web.Request) -> web.StreamResponse:
        return respond_json(request, document, cache_control="public, max-age=300")

    async def preflight(_request: web.Request) -> web.Response:
        return web.Response(status=204, headers=PREFLIGHT_HEADERS)

    app.router.add_get(OPENAPI_PATH, openapi)
    app.router.add_route("OPTIONS", OPENAPI_PATH, preflight)
