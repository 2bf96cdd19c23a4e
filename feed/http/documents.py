"""What the history API under /api/v1 answers with: JSON documents that carry the
licence and the method (how coverage is computed, the threshold, the aggregation
version), CSV in two dialects, Parquet, and the response that sends them with a
strong ETag (If-None-Match gives 304), gzip-compressed when asked.
"""

from __future__ import annotations

import gzip
import io
import json
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, overload
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.parquet as pq
from aiohttp import web
from multidict import CIMultiDict

from feed.config import Config
from feed.http.responses import CORS_HEADERS, etag_matches, negotiate_encoding
from feed.publish.render import body_tag
from feed.store import history, validation, yearly_files
from feed.store.history import Site, Step
from feed.store.yearly_files import neutralise

API = "/api/v1"

GZIP_MIN = 1400  # bytes; smaller bodies are sent as they are

JSON_TYPE = "application/json"
HISTORY_CACHE = "public, max-age=60"
LIVE_CACHE = "no-cache"

COUNT_FIELDS = ("period", "count", "coverage", "estimated_share", "speed", "invalid", "invalid_reasons")
ANNUAL_METHOD = {
    "tmja": "TMJA (trafic moyen journalier annuel): the site's total, both directions, summed over the valid "
    "days / the number of valid days, vehicles/day",
    "tmjo": "TMJO (jours ouvrés): the same over valid days Monday to Friday, public holidays left out",
    "heavy_share": "heavy vehicles / all vehicles over the valid days where heavy vehicles are counted",
    "mean_speed": "count-weighted mean speed over the valid days, km/h",
    "days_valid": "local days whose coverage, over every channel the site is expected to have that day, reaches "
    "the threshold",
    "days_excluded": "the other days of the year already lived: below the threshold or without data",
    "mean_coverage": "mean daily coverage over the days with data",
}
# With every series and in the data dictionary: what validation does, each reason in English and French.
VALIDATION_METHOD = {
    "validation": "every observed interval is tested against its channel's own history and its neighbours; "
    "a rejected interval keeps its raw value, is not present (so it lowers coverage and is left "
    "out of every sum) and is counted per reason in `invalid`",
    "invalid_reasons": validation.REASONS,
}


@overload
def iso(value: datetime, tz: ZoneInfo) -> str: ...
@overload
def iso(value: None, tz: ZoneInfo) -> None: ...
def iso(value: datetime | None, tz: ZoneInfo) -> str | None:
    """Local time with its offset; in UTC when the offset has seconds (local mean time
    before 1911 in Paris), which RFC 3339 date-times cannot carry."""
    if value is None:
        return None
    local = value.astimezone(tz)
    offset = local.utcoffset()
    return value.astimezone(UTC).isoformat() if offset is not None and offset.seconds % 60 else local.isoformat()


def method_document(config: Config, **extra: Any) -> dict[str, Any]:
    """How every number is made; part of every JSON document."""
    p = config.publication
    return {
        "coverage_threshold": p.coverage_threshold,
        "aggregation_version": history.AGGREGATION_VERSION,
        "coverage": "intervals present / intervals expected",
        "present": "an interval with a count whose quality is observed or estimated and that validation did not reject",
        "expected": "the intervals each channel's time step implies for the period in the local calendar "
        "(a local day lasts 23 to 25 hours on DST changes)",
        "estimated_share": "estimated intervals / present intervals (null when none is present)",
        "count": "vehicles counted in the intervals present; null when no interval is present",
        "speed": "mean of the intervals' mean speeds weighted by their counts, km/h, rounded to 0.1",
        "site_total": "a site's all-vehicle channels when it has some, otherwise light + heavy; "
        "all directions unless one is asked",
        "timezone": p.timezone,
        "v85": "not computed: only each interval's mean speed is stored, and a percentile of individual "
        "vehicle speeds cannot be derived from means",
        **extra,
    }


def _licence(config: Config) -> dict[str, str]:
    return {"name": config.publication.licence, "url": config.publication.licence_url}


def api_document(config: Config, body: dict[str, Any], **method_extra: Any) -> dict[str, Any]:
    return {**body, "licence": _licence(config), "method": method_document(config, **method_extra)}


def annual_method(config: Config) -> dict[str, str]:
    return {**ANNUAL_METHOD, "tmjo": f"{ANNUAL_METHOD['tmjo']} ({config.publication.holidays!r} calendar)"}


def site_json(site: Site, tz: ZoneInfo) -> dict[str, Any]:
    return {
        "id": site.id,
        "external_id": site.external_id,
        "source": site.source,
        "name": site.name,
        "road": site.road,
        "pr": site.pr,
        "abscissa": site.abscissa,
        "insee": site.insee,
        "commune": site.commune,
        "lon": site.lon,
        "lat": site.lat,
        "directions": site.directions,
        "direction_names": site.direction_names,
        "vehicle_classes": site.vehicle_classes,
        "channels": [
            {
                "id": c.id,
                "external_id": c.external_id,
                "direction": c.direction,
                "direction_name": c.direction_name,
                "lane": c.lane,
                "vehicle_class": c.vehicle_class,
                "time_step": c.time_step,
            }
            for c in site.channels
        ],
        "first_data": iso(site.first_data, tz),
        "last_data": iso(site.last_data, tz),
    }


def dumps(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def respond(
    request: web.Request,
    body: bytes,
    content_type: str,
    *,
    cache_control: str = HISTORY_CACHE,
    filename: str | None = None,
    compressible: bool = True,
) -> web.Response:
    """`body` with a strong ETag, a 304 when it matches, gzip when asked for."""
    tag = body_tag(body)
    headers = CIMultiDict(CORS_HEADERS)
    headers["Cache-Control"] = cache_control
    headers["Vary"] = "Accept-Encoding"
    coding = "identity"
    if compressible and len(body) >= GZIP_MIN:
        coding = negotiate_encoding(request.headers.get("Accept-Encoding"), ("gzip",))
    headers["ETag"] = f'"{tag}"' if coding == "identity" else f'"{tag}-{coding}"'
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None and etag_matches(if_none_match, tag):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = content_type
    if filename:
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    if coding == "gzip":
        body = gzip.compress(body, compresslevel=5, mtime=0)
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, headers=headers)


def respond_json(request: web.Request, document: Any, *, cache_control: str = HISTORY_CACHE) -> web.Response:
    return respond(request, dumps(document), JSON_TYPE, cache_control=cache_control)


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        value = neutralise(value)
        if any(ch in value for ch in ',"\n\r'):
            return '"' + value.replace('"', '""') + '"'
        return value
    return str(value)


# French spreadsheets (dialect=fr): `;` between cells, a decimal comma, French
# headers and a UTF-8 byte order mark, so that a double click opens the file in
# columns with numbers as numbers.
DIALECTS = ("standard", "fr")
FR_HEADERS = {
    "period": "période",
    "period_utc": "période_utc",
    "count": "comptage",
    "coverage": "couverture",
    "estimated_share": "part_estimée",
    "speed": "vitesse_moyenne_kmh",
    "invalid": "intervalles_rejetés",
    "invalid_reasons": "motifs_de_rejet",
    "site_id": "id_site",
    "external_id": "id_externe",
    "name": "nom",
    "road": "route",
    "tmja": "TMJA",
    "tmjo": "TMJO",
    "heavy_share": "part_poids_lourds",
    "mean_speed": "vitesse_moyenne_kmh",
    "days_valid": "jours_valides",
    "days_excluded": "jours_exclus",
    "mean_coverage": "couverture_moyenne",
}


def _csv_cell_fr(value: Any) -> str:
    if isinstance(value, float):
        return repr(value).replace(".", ",")
    if isinstance(value, str):
        value = neutralise(value)
        if any(ch in value for ch in ';"\n\r'):
            return '"' + value.replace('"', '""') + '"'
        return value
    return _csv_cell(value)


def csv_bytes(header: Sequence[str], rows: Sequence[Sequence[Any]], dialect: str = "standard") -> bytes:
    if dialect == "fr":
        lines = [";".join(FR_HEADERS.get(h, h) for h in header)]
        lines += [";".join(_csv_cell_fr(v) for v in row) for row in rows]
        return "\ufeff".encode() + ("\r\n".join(lines) + "\r\n").encode()
    lines = [",".join(header)]
    lines += [",".join(_csv_cell(v) for v in row) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def fold(text: str) -> str:
    """The annual table's filter rule, the page's too: decomposed (NFD), combining accents
    U+0300 to U+036F removed, lower-cased."""
    return "".join(ch for ch in unicodedata.normalize("NFD", text) if not "\u0300" <= ch <= "\u036f").lower()


def matches_filter(text: str, name: str | None, road: str | None, external_id: str) -> bool:
    """A row matches when the folded text is in the folded `name road external_id` (a missing one is empty)."""
    return fold(text) in fold(f"{name or ''} {road or ''} {external_id}")


def utc_text(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def counts_csv(points: Sequence[history.Point], rows: Sequence[dict[str, Any]], step: Step, dialect: str) -> bytes:
    """A series as CSV; at hour step each period also in UTC (`period_utc`), whose offset never changes."""
    if step != "hour":
        return csv_bytes(COUNT_FIELDS, [[r[k] for k in COUNT_FIELDS] for r in rows], dialect)
    header = ("period", "period_utc", *COUNT_FIELDS[1:])
    lines = [
        [r["period"], utc_text(p.period), *(r[k] for k in COUNT_FIELDS[1:])]  # type: ignore[arg-type]
        for p, r in zip(points, rows, strict=True)
    ]
    return csv_bytes(header, lines, dialect)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression=yearly_files.PARQUET_COMPRESSION)
    return sink.getvalue()


def file_stamp(value: datetime, tz: ZoneInfo) -> str:
    local = value.astimezone(tz)
    if local.time() == datetime.min.time():
        return local.date().isoformat()
    return local.strftime("%Y-%m-%dT%H%M")
