"""The history API under /api/v1: sites, a site's counts, the annual table, events
with every version, sources' state, yearly bulk files and the OpenAPI document.

Thin adapters over `feed.store.history` and `feed.store.downloads`: parse and check the
query (every refusal is a 400 in the live feeds' shape, naming the parameter,
the value and what was expected), read in one read-only transaction bounded by
`[database] statement_timeout_ms`, render JSON, CSV or Parquet. Every JSON
document carries the licence and the method (how coverage is computed, the
threshold, the aggregation version). Lists are paged with opaque cursors
(keyset on the id, so a walk sees every item exactly once). Responses carry a
strong ETag (If-None-Match gives 304) and are gzip-compressed when asked.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gzip
import io
import json
import logging
import re
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, overload
from zoneinfo import ZoneInfo

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq
from aiohttp import web
from multidict import CIMultiDict, MultiMapping

from exporters import geojson
from feed.publish import dcat
from feed.store import downloads, history, validation
from feed.publish.dcat import catalog_document
from feed.config import Config
from feed.errors import BadParameter, NotFound, PublishError, RequestError, Unavailable
from feed.http.errors import refusal
from feed.store.downloads import MEDIA_TYPES, neutralise
from feed.http.responses import CORS_HEADERS, PREFLIGHT_HEADERS, etag_matches, negotiate_encoding
from feed.publish.filters import BBOX_EXPECTED, EVENT_STATUSES, EVENT_TYPES, unstorable
from feed.publish.render import body_tag
from feed.store.history import STEPS, Site, Step
from feed.store.transactions import reading

if TYPE_CHECKING:  # feed.http.app imports this module to register its routes
    from feed.http.context import AppContext

__all__ = ["API", "MAX_PERIODS", "api_routes", "method_document"]

log = logging.getLogger("roadfeed.api")

API = "/api/v1"

# A site's counts: at most this many periods per request (one row per period).
MAX_PERIODS: dict[Step, int] = {"hour": 93 * 24, "day": 3 * 365 + 1, "month": 30 * 12, "year": 30}
MAX_RANGE_TEXT: dict[Step, str] = {"hour": "93 days", "day": "3 years", "month": "30 years", "year": "30 years"}
DEFAULT_PERIODS: dict[Step, int] = {"hour": 48, "day": 31, "month": 12, "year": 10}
SITES_LIMIT = (100, 1000)  # default, maximum
EVENTS_LIMIT = (50, 500)
YEARS = (1900, 2199)  # accepted years in dates and /annual
DOWNLOAD_SLOTS_SHARE = 4  # at most pool size / this many downloads at once (each holds a connection)
DOWNLOAD_WAIT = 30.0  # seconds a download waits for a slot before a 503
GZIP_MIN = 1400  # bytes; smaller bodies are sent as they are

JSON_TYPE = "application/json"
HISTORY_CACHE = "public, max-age=60"
LIVE_CACHE = "no-cache"


# --------------------------------------------------------------------------- errors


class _StreamBroken(PublishError):
    """A download failed after its headers were sent."""


def _bad(parameter: str, value: str, expected: str, detail: str) -> BadParameter:
    return BadParameter(parameter, value, expected, detail)


# --------------------------------------------------------------------------- query parameters


def _one(query: MultiMapping[str], name: str) -> str | None:
    values = query.getall(name, [])
    if len(values) > 1:
        raise _bad(name, "&".join(values), "the parameter once", f"{name} is given {len(values)} times; give it once")
    if not values:
        return None
    value = values[0].strip()
    _no_nul(name, value)
    return value or None


def _no_nul(name: str, raw: str) -> None:
    """PostgreSQL text cannot hold NUL: refuse it here rather than fail in the query."""
    if "\0" in raw:
        raise _bad(name, raw.replace("\0", "\\0"), "text without NUL characters", f"{name} contains a NUL character")


def _choice(query: MultiMapping[str], name: str, allowed: Sequence[str], default: str) -> str:
    raw = _one(query, name)
    if raw is None:
        return default
    if raw not in allowed:
        raise _bad(name, raw, f"one of: {', '.join(allowed)}", f"unknown {name} {raw!r}")
    return raw


def _list(query: MultiMapping[str], name: str, allowed: Sequence[str] | None = None) -> list[str] | None:
    raws = query.getall(name, [])
    if not raws:
        return None
    expected = f"a comma-separated list of: {', '.join(allowed)}" if allowed else "a comma-separated list"
    chosen: list[str] = []
    for raw in raws:
        _no_nul(name, raw)
        for item in (part.strip() for part in raw.split(",")):
            if not item:
                raise _bad(name, raw, expected, f"{name} has an empty value in {raw!r}")
            if allowed is not None and item not in allowed:
                raise _bad(name, raw, expected, f"unknown {name} {item!r}")
            if item not in chosen:
                chosen.append(item)
    return chosen


def _int(query: MultiMapping[str], name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = _one(query, name)
    if raw is None:
        return default
    expected = f"an integer from {lo} to {hi}"
    try:
        value = int(raw)
    except ValueError:
        raise _bad(name, raw, expected, f"{name} {raw!r} is not an integer") from None
    if not lo <= value <= hi:
        raise _bad(name, raw, expected, f"{name} {value} is outside [{lo}, {hi}]")
    return value


def _limit(query: MultiMapping[str], bounds: tuple[int, int]) -> int:
    value = _int(query, "limit", bounds[0], 1, bounds[1])
    assert value is not None
    return value


def _bbox(query: MultiMapping[str]) -> tuple[float, float, float, float] | None:
    raw = _one(query, "bbox")
    if raw is None:
        return None
    try:
        return geojson.parse_bbox(raw)
    except ValueError as exc:
        raise _bad("bbox", raw, BBOX_EXPECTED, str(exc)) from None


def encode_cursor(kind: str, after: int | str) -> str:
    raw = json.dumps([kind, after], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(query: MultiMapping[str], kind: str) -> Any:
    raw = _one(query, "cursor")
    if raw is None:
        return None
    expected = "the next_cursor of a previous page of this list"
    try:
        decoded = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        found, after = decoded
    except (binascii.Error, ValueError, TypeError):
        raise _bad("cursor", raw, expected, "cursor is not one this API issued") from None
    if found != kind or not isinstance(after, int | str) or isinstance(after, bool):
        raise _bad("cursor", raw, expected, f"cursor belongs to another list than {kind}")
    # Forged cursors: what is inside goes to the database, so it must be something it can hold.
    if isinstance(after, int) and not -(2**31) <= after < 2**31:
        raise _bad("cursor", raw, expected, "cursor is not one this API issued (its position is out of range)")
    if isinstance(after, str) and unstorable(after):
        raise _bad("cursor", raw, expected, f"cursor is not one this API issued (it {unstorable(after)})")
    return after


_MONTH = re.compile(r"^\d{4}-\d{2}$")
_YEAR = re.compile(r"^\d{4}$")
INSTANT_EXPECTED = ("a date (2025-07-01), a month (2025-07), a year (2025) or an ISO 8601 date-time "
                    "(2025-07-01T08:00, local time when it has no offset)")


def parse_instant(name: str, raw: str, tz: ZoneInfo) -> datetime:
    """A date, month, year or date-time; naive ones are local time of `tz`."""
    try:
        if _YEAR.match(raw):
            value = datetime(int(raw), 1, 1, tzinfo=tz)
        elif _MONTH.match(raw):
            value = datetime(int(raw[:4]), int(raw[5:]), 1, tzinfo=tz)
        elif len(raw) == 10:
            d = date.fromisoformat(raw)
            value = datetime(d.year, d.month, d.day, tzinfo=tz)
        else:
            value = datetime.fromisoformat(raw)
            if value.tzinfo is None:
                value = value.replace(tzinfo=tz)
    except ValueError as exc:
        raise _bad(name, raw, INSTANT_EXPECTED, f"{name} {raw!r} is not a date or date-time: {exc}") from None
    if not YEARS[0] <= value.astimezone(tz).year <= YEARS[1]:
        raise _bad(name, raw, INSTANT_EXPECTED, f"{name} {raw!r} is outside the years {YEARS[0]}..{YEARS[1]}")
    return value


def _instant(query: MultiMapping[str], name: str, tz: ZoneInfo) -> datetime | None:
    raw = _one(query, name)
    return None if raw is None else parse_instant(name, raw, tz)


def floor_to(value: datetime, step: Step, tz: ZoneInfo) -> datetime:
    """The start of the period (hour, local day, month or year) holding `value`."""
    if step == "hour":
        return value.astimezone(UTC).replace(minute=0, second=0, microsecond=0).astimezone(tz)
    day = history.period_start(value.astimezone(tz).date(), step)
    return history.local_midnight(day, tz)


def ceil_to(value: datetime, step: Step, tz: ZoneInfo) -> datetime:
    start = floor_to(value, step, tz)
    return start if start == value else shift(start, step, 1, tz)


def shift(value: datetime, step: Step, n: int, tz: ZoneInfo) -> datetime:
    """`value` (a period start) moved by `n` periods."""
    if step == "hour":
        return (value.astimezone(UTC) + timedelta(hours=n)).astimezone(tz)
    d = value.astimezone(tz).date()
    if step == "day":
        d += timedelta(days=n)
    elif step == "month":
        months = d.year * 12 + d.month - 1 + n
        d = date(months // 12, months % 12 + 1, 1)
    else:
        d = date(d.year + n, 1, 1)
    return history.local_midnight(d, tz)


def count_periods(start: datetime, end: datetime, step: Step, tz: ZoneInfo) -> int:
    if step == "hour":
        return int((end.astimezone(UTC) - start.astimezone(UTC)).total_seconds() // 3600)  # real hours
    a, b = start.astimezone(tz).date(), end.astimezone(tz).date()
    if step == "day":
        return (b - a).days
    if step == "month":
        return (b.year - a.year) * 12 + b.month - a.month
    return b.year - a.year


def counts_range(query: MultiMapping[str], step: Step, tz: ZoneInfo, now: datetime) -> tuple[datetime, datetime]:
    """`from` floored and `to` ceiled to the step; defaults: the last periods up to now."""
    raw_from, raw_to = _instant(query, "from", tz), _instant(query, "to", tz)
    start = None if raw_from is None else floor_to(raw_from, step, tz)
    end = None if raw_to is None else ceil_to(raw_to, step, tz)
    if start is None and end is None:
        end = ceil_to(now, step, tz)
    if start is None:
        assert end is not None
        start = shift(end, step, -DEFAULT_PERIODS[step], tz)
    if end is None:
        end = shift(start, step, DEFAULT_PERIODS[step], tz)
    if end <= start:
        raise _bad("to", _one(query, "to") or "", f"a time after from ({iso(start, tz)})",
                   f"to ({iso(end, tz)}) must be after from ({iso(start, tz)}); to is exclusive")
    n = count_periods(start, end, step, tz)
    if n > MAX_PERIODS[step]:
        raise _bad(
            "to", _one(query, "to") or iso(end, tz),
            f"at most {MAX_RANGE_TEXT[step]} after from with step={step} ({MAX_PERIODS[step]} {step}s)",
            f"from {iso(start, tz)} to {iso(end, tz)} is {n} {step}s (one row each); step={step} allows at most "
            f"{MAX_PERIODS[step]} rows ({MAX_RANGE_TEXT[step]}): narrow the range or use a longer step",
        )
    return start, end


# --------------------------------------------------------------------------- rendering


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
        "present": "an interval with a count whose quality is observed or estimated and that validation "
                   "did not reject",

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


def _document(config: Config, body: dict[str, Any], **method_extra: Any) -> dict[str, Any]:
    return {**body, "licence": _licence(config), "method": method_document(config, **method_extra)}


def site_json(site: Site, tz: ZoneInfo) -> dict[str, Any]:
    return {
        "id": site.id, "external_id": site.external_id, "source": site.source, "name": site.name,
        "road": site.road, "pr": site.pr, "abscissa": site.abscissa, "insee": site.insee, "commune": site.commune,
        "lon": site.lon, "lat": site.lat, "directions": site.directions, "direction_names": site.direction_names,
        "vehicle_classes": site.vehicle_classes,
        "channels": [{"id": c.id, "external_id": c.external_id, "direction": c.direction,
                      "direction_name": c.direction_name, "lane": c.lane,
                      "vehicle_class": c.vehicle_class, "time_step": c.time_step} for c in site.channels],
        "first_data": iso(site.first_data, tz), "last_data": iso(site.last_data, tz),
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
    "period": "période", "period_utc": "période_utc", "count": "comptage", "coverage": "couverture",
    "estimated_share": "part_estimée",
    "speed": "vitesse_moyenne_kmh", "invalid": "intervalles_rejetés", "invalid_reasons": "motifs_de_rejet",
    "site_id": "id_site", "external_id": "id_externe", "name": "nom", "road": "route", "tmja": "TMJA",
    "tmjo": "TMJO", "heavy_share": "part_poids_lourds", "mean_speed": "vitesse_moyenne_kmh",
    "days_valid": "jours_valides", "days_excluded": "jours_exclus", "mean_coverage": "couverture_moyenne",
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
    lines = [[r["period"], utc_text(p.period), *(r[k] for k in COUNT_FIELDS[1:])]  # type: ignore[arg-type]
             for p, r in zip(points, rows, strict=True)]
    return csv_bytes(header, lines, dialect)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression=downloads.PARQUET_COMPRESSION)
    return sink.getvalue()


def _stamp(value: datetime, tz: ZoneInfo) -> str:
    local = value.astimezone(tz)
    if local.time() == datetime.min.time():
        return local.date().isoformat()
    return local.strftime("%Y-%m-%dT%H%M")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _guarded(handler: Handler) -> Handler:
    """Turns refusals and timeouts into JSON errors of one shape."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except RequestError as exc:
            return refusal(exc)
        except asyncpg.QueryCanceledError:
            return refusal(Unavailable("query_timeout", "the database did not answer within the statement timeout",
                                       expected="a narrower query", retry_after=10))

    return handle


# --------------------------------------------------------------------------- handlers


class _Api:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.tz = ZoneInfo(ctx.config.publication.timezone)
        self.pool = ctx.storage.pool
        self.statement_timeout_ms = ctx.config.database.statement_timeout_ms
        slots = max(1, ctx.storage.pool.get_max_size() // DOWNLOAD_SLOTS_SHARE)
        self.download_slots = asyncio.Semaphore(slots)

    def document(self, body: dict[str, Any], **method_extra: Any) -> dict[str, Any]:
        return _document(self.config, body, **method_extra)

    def annual_method(self) -> dict[str, str]:
        return {**ANNUAL_METHOD, "tmjo": f"{ANNUAL_METHOD['tmjo']} ({self.config.publication.holidays!r} calendar)"}

    # sites ------------------------------------------------------------------

    async def sites(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        after = decode_cursor(q, "sites")
        if after is not None and not isinstance(after, int):
            raise _bad("cursor", _one(q, "cursor") or "", "the next_cursor of a previous page", "not a sites cursor")
        roads = _list(q, "road")
        commune = _one(q, "commune")
        bbox = _bbox(q)
        limit = _limit(q, SITES_LIMIT)
        async with reading(self.pool, self.statement_timeout_ms) as conn:
            found = await history.sites(conn, self.config.publication.timezone, after=after, roads=roads,
                                        commune=commune, bbox=bbox, limit=limit + 1)
        page = found[:limit]
        next_cursor = encode_cursor("sites", page[-1].id) if len(found) > limit else None
        return respond_json(request, self.document(
            {"sites": [site_json(s, self.tz) for s in page], "next_cursor": next_cursor}))

    async def _site(self, conn: asyncpg.Connection, raw: str) -> Site:
        expected = "the id of a site (an integer, see /api/v1/sites)"
        try:
            site_id = int(raw)
        except ValueError:
            raise NotFound("id", raw, expected, f"no site {raw!r}") from None
        if not -(2**31) <= site_id < 2**31:
            raise NotFound("id", raw, expected, f"no site {raw!r}")
        site = await history.site(conn, site_id, self.config.publication.timezone)
        if site is None:
            raise NotFound("id", raw, expected, f"no site {site_id}")
        return site

    async def site(self, request: web.Request) -> web.StreamResponse:
        async with reading(self.pool, self.statement_timeout_ms) as conn:
            site = await self._site(conn, request.match_info["id"])
        return respond_json(request, self.document(site_json(site, self.tz)))

    async def counts(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        step: Step = _choice(q, "step", STEPS, "day")  # type: ignore[assignment]
        fmt = _choice(q, "format", ("json", "csv", "parquet"), "json")
        dialect = _choice(q, "dialect", DIALECTS, "standard")
        now = datetime.now(UTC)
        start, end = counts_range(q, step, self.tz, now)
        direction = _one(q, "direction")
        vehicle_class = _one(q, "vehicle_class") or "all"
        async with reading(self.pool, self.statement_timeout_ms) as conn:
            site = await self._site(conn, request.match_info["id"])
            # A direction or class the site does not count is a series that does not exist.
            if direction is not None and direction != "all" and direction not in site.directions:
                raise NotFound("direction", direction, f"one of this site's directions: {', '.join(site.directions)}"
                           if site.directions else "no direction: this site's channels have none",
                           f"site {site.id} has no direction {direction!r}")
            classes = ["all", *(c for c in site.vehicle_classes if c != "all")]
            if vehicle_class not in classes:
                raise NotFound("vehicle_class", vehicle_class, f"one of this site's classes: {', '.join(classes)}",
                           f"site {site.id} has no {vehicle_class!r} vehicle class")
            chosen = history.select_channels(site, None if direction in (None, "all") else direction, vehicle_class)
            points = await history.channel_series(conn, chosen, start, end, step,
                                                  self.config.publication.timezone, now)
        rows = [self._point(p) for p in points]
        # What the file holds, in its name: site, class, direction and the inclusive period.
        last = shift(end, step, -1, self.tz)
        name = (f"site-{site.id}_{vehicle_class}_{'all-directions' if direction in (None, 'all') else direction}"
                f"_{_stamp(start, self.tz)}_{_stamp(last, self.tz)}_{step}")
        if fmt == "csv":
            return respond(request, counts_csv(points, rows, step, dialect),
                           MEDIA_TYPES["csv"], filename=f"{name}{'_fr' if dialect == 'fr' else ''}.csv")
        if fmt == "parquet":
            return respond(request, parquet_bytes(self._points_table(points, rows, step)), MEDIA_TYPES["parquet"],
                           filename=f"{name}.parquet", compressible=False)
        return respond_json(request, self.document({
            "site": site_json(site, self.tz), "from": iso(start, self.tz), "to": iso(end, self.tz), "step": step,
            "direction": None if direction in (None, "all") else direction,
            "direction_name": None if direction in (None, "all") else site.direction_names.get(direction),
            "vehicle_class": vehicle_class, "points": rows,
        }, **VALIDATION_METHOD))

    def _point(self, p: history.Point) -> dict[str, Any]:
        period = iso(p.period, self.tz) if isinstance(p.period, datetime) else p.period.isoformat()
        present = p.present > 0
        return {"period": period, "count": p.count if present else None, "coverage": p.coverage,
                "estimated_share": p.estimated_share if present else None, "speed": p.speed,
                "invalid": sum(p.invalid.values()), "invalid_reasons": ",".join(sorted(p.invalid))}

    def _points_table(self, points: Sequence[history.Point], rows: Sequence[dict[str, Any]], step: Step) -> pa.Table:
        period_type = pa.timestamp("ms", tz=self.config.publication.timezone) if step == "hour" else pa.date32()
        return pa.table({
            "period": pa.array([p.period for p in points], period_type),
            "count": pa.array([r["count"] for r in rows], pa.int64()),
            "coverage": pa.array([r["coverage"] for r in rows], pa.float64()),
            "estimated_share": pa.array([r["estimated_share"] for r in rows], pa.float64()),
            "speed": pa.array([r["speed"] for r in rows], pa.float64()),
            "invalid": pa.array([r["invalid"] for r in rows], pa.int32()),
            "invalid_reasons": pa.array([r["invalid_reasons"] for r in rows], pa.string()),
        })

    # annual -----------------------------------------------------------------

    async def annual(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        year = _int(q, "year", None, *YEARS)
        if year is None:
            raise _bad("year", "", f"a year from {YEARS[0]} to {YEARS[1]}, e.g. 2025", "year is required")
        fmt = _choice(q, "format", ("json", "csv", "parquet"), "json")
        dialect = _choice(q, "dialect", DIALECTS, "standard")
        raw_threshold = _one(q, "threshold")
        threshold = self.config.publication.coverage_threshold
        if raw_threshold is not None:
            try:
                threshold = float(raw_threshold)
            except ValueError:
                threshold = float("nan")
            if not 0 <= threshold <= 1:
                raise _bad("threshold", raw_threshold, "a number from 0 to 1, e.g. 0.95",
                           f"threshold {raw_threshold!r} is not a share from 0 to 1")
        text = _one(q, "q")
        async with reading(self.pool, self.statement_timeout_ms) as conn:
            table = await history.annual_table(conn, year, threshold, self.config.publication.timezone,
                                                 holidays=self.config.publication.holidays)
        rows = [{"site_id": r.site_id, "external_id": r.external_id, "name": r.name, "road": r.road,
                 "tmja": r.tmja, "tmjo": r.tmjo, "heavy_share": r.heavy_share, "mean_speed": r.mean_speed,
                 "days_valid": r.days_valid, "days_excluded": r.days_excluded, "mean_coverage": r.mean_coverage}
                for r in table if text is None or matches_filter(text, r.name, r.road, r.external_id)]
        if fmt == "csv":
            return respond(request, csv_bytes(ANNUAL_FIELDS, [[r[k] for k in ANNUAL_FIELDS] for r in rows], dialect),
                           MEDIA_TYPES["csv"], filename=f"annual_{year}{'_fr' if dialect == 'fr' else ''}.csv")
        if fmt == "parquet":
            columns = {k: pa.array([r[k] for r in rows], ANNUAL_TYPES[k]) for k in ANNUAL_FIELDS}
            return respond(request, parquet_bytes(pa.table(columns)), MEDIA_TYPES["parquet"],
                           filename=f"annual_{year}.parquet", compressible=False)
        return respond_json(request, self.document(
            {"year": year, "threshold": threshold, "q": text, "rows": rows}, **self.annual_method(),
            coverage_threshold=threshold))

    # events -----------------------------------------------------------------

    async def events(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        after = decode_cursor(q, "events")
        if after is not None and not isinstance(after, str):
            raise _bad("cursor", _one(q, "cursor") or "", "the next_cursor of a previous page", "not an events cursor")
        start, end = _instant(q, "from", self.tz), _instant(q, "to", self.tz)
        if start is not None and end is not None and end <= start:
            raise _bad("to", _one(q, "to") or "", "a time after from", "to must be after from; to is exclusive")
        bbox = _bbox(q)
        types = _list(q, "type", EVENT_TYPES)
        roads = _list(q, "road")
        statuses = _list(q, "status", EVENT_STATUSES)
        limit = _limit(q, EVENTS_LIMIT)
        async with reading(self.pool, self.statement_timeout_ms) as conn:
            found = await history.events(conn, after=after, start=start, end=end, bbox=bbox, types=types,
                                         roads=roads, statuses=statuses, limit=limit + 1)
        page = found[:limit]
        next_cursor = encode_cursor("events", page[-1].current["id"]) if len(found) > limit else None
        return respond_json(request, self.document(
            {"events": [_event_json(e) for e in page], "next_cursor": next_cursor},
            events="events in force at some point in [from, to): " + EVENT_SPAN_TEXT,
        ), cache_control=LIVE_CACHE)

    async def event(self, request: web.Request) -> web.StreamResponse:
        event_id = request.match_info["id"]
        async with reading(self.pool, self.statement_timeout_ms) as conn:
            found = await history.event(conn, event_id)
        if found is None:
            raise NotFound("id", event_id, "the id of an event (<source id>:<external id>, see /api/v1/events)",
                           f"no event {event_id!r}")
        return respond_json(request, self.document(_event_json(found)), cache_control=LIVE_CACHE)

    # sources ----------------------------------------------------------------

    async def sources(self, request: web.Request) -> web.StreamResponse:
        async with reading(self.pool, self.statement_timeout_ms) as conn:
            stored = {r["id"]: r for r in await history.source_states(conn)}
        configured = {s.id: s for s in self.config.sources}
        out = []
        for source_id in sorted(configured.keys() | stored.keys()):
            conf, row = configured.get(source_id), stored.get(source_id)
            last_run = None
            if row is not None and row["started"] is not None:
                last_run = {
                    "started": iso(row["started"], self.tz), "finished": iso(row["finished"], self.tz),
                    "http_status": row["http_status"], "bytes": row["bytes"], "new": row["records_new"],
                    "updated": row["records_updated"], "unchanged": row["records_unchanged"],
                    "quarantined": row["records_quarantined"], "complete": row["complete"], "error": row["error"],
                }
            out.append({
                "id": source_id,
                "kind": conf.kind if conf else row["kind"],  # type: ignore[index]
                "configured": conf is not None,
                "enabled": conf.enabled if conf else False,
                "interval": conf.interval if conf else None,
                "last_success": iso(row["last_success"], self.tz) if row else None,
                "last_error": row["last_error"] if row else None,
                "last_error_at": iso(row["last_error_at"], self.tz) if row else None,
                "last_run": last_run,
            })
        return respond_json(request, self.document({"sources": out}), cache_control=LIVE_CACHE)

    # downloads --------------------------------------------------------------

    async def download_index(self, request: web.Request) -> web.StreamResponse:
        async with reading(self.pool, self.statement_timeout_ms) as conn:
            years = await history.data_years(conn, self.config.publication.timezone)
        return respond_json(request, self.document({
            "years": [{"year": y, "files": {name: f"{API}/downloads/{y}/{name}" for name in downloads.file_names()}}
                      for y in years],
            "dictionary": f"{API}/downloads/{downloads.DICTIONARY}",
            "publisher": self.config.publication.publisher,
        }), cache_control=LIVE_CACHE)

    def _dictionary(self) -> dict[str, Any]:
        extra = {**VALIDATION_METHOD, **self.annual_method()}
        return self.document(downloads.dictionary(self.config.publication, method_document(self.config, **extra)),
                             **extra)

    async def dictionary(self, request: web.Request) -> web.StreamResponse:
        return respond_json(request, self._dictionary())

    async def download(self, request: web.Request) -> web.StreamResponse:
        raw_year, name = request.match_info["year"], request.match_info["name"]
        expected_year = "a year listed by /api/v1/downloads"
        if not _YEAR.match(raw_year):
            raise NotFound("year", raw_year, expected_year, f"no year {raw_year!r}")
        year = int(raw_year)
        if name == downloads.DICTIONARY:
            return await self.dictionary(request)
        parsed = downloads.parse_file_name(name)
        if parsed is None:
            raise NotFound("name", name, f"one of: {', '.join(downloads.file_names())}", f"no file {name!r}")
        table, fmt = parsed
        try:
            await asyncio.wait_for(self.download_slots.acquire(), DOWNLOAD_WAIT)
        except TimeoutError:
            raise Unavailable("busy", "every download slot is in use; retry shortly", retry_after=30) from None
        try:
            return await self._download(request, year, table, fmt)
        finally:
            self.download_slots.release()

    async def _download(self, request: web.Request, year: int, table: downloads.Table,
                        fmt: downloads.Format) -> web.StreamResponse:
        timezone = self.config.publication.timezone
        async with reading(self.pool, self.statement_timeout_ms, bulk_timezone=timezone) as conn:
            if year not in await history.data_years(conn, timezone):
                raise NotFound("year", str(year), "a year listed by /api/v1/downloads", f"no data for {year}")
            data = await downloads.year_data(conn, year, timezone, table)
            tag = downloads.etag_tag(data, table, fmt, self.config.database.retention_days,
                                     datetime.now(self.tz).date())
            coding = "identity"
            if fmt == "csv":
                coding = negotiate_encoding(request.headers.get("Accept-Encoding"), ("gzip",))
            headers = CIMultiDict(CORS_HEADERS)
            headers["ETag"] = f'"{tag}"' if coding == "identity" else f'"{tag}-{coding}"'
            headers["Cache-Control"] = "public, max-age=300"
            headers["Vary"] = "Accept-Encoding"
            if_none_match = request.headers.get("If-None-Match")
            if if_none_match is not None and etag_matches(if_none_match, tag):
                return web.Response(status=304, headers=headers)
            headers["Content-Type"] = MEDIA_TYPES[fmt]
            headers["Content-Disposition"] = f'attachment; filename="roadfeed_{year}_{table.name}.{fmt}"'
            if request.method == "HEAD":
                return web.Response(headers=headers)
            response = web.StreamResponse(headers=headers)
            if coding == "gzip":
                response.enable_compression(web.ContentCoding.gzip)
            await response.prepare(request)
            try:
                await self._stream(conn, data, table, fmt, response)
            except Exception as exc:
                # Too late for an error document: cut the connection so the client
                # sees a truncated body (chunked transfer without its last chunk).
                log.warning("download %s/%s.%s failed: %s: %s", year, table.name, fmt, type(exc).__name__, exc)
                raise _StreamBroken from exc
        await response.write_eof()
        return response

    async def _stream(self, conn: asyncpg.Connection, data: downloads.YearData, table: downloads.Table,
                      fmt: downloads.Format, response: web.StreamResponse) -> None:
        year = data.year
        if fmt == "csv":
            await downloads.stream_csv(conn, data, table, response.write)
        else:
            metadata = {
                "licence": self.config.publication.licence,
                "licence_url": self.config.publication.licence_url,
                "publisher": self.config.publication.publisher, "year": str(year),
                "aggregation_version": history.AGGREGATION_VERSION,
                "format_version": downloads.FORMAT_VERSION,
                "dictionary": f"{API}/downloads/{downloads.DICTIONARY}",
            }
            await downloads.stream_parquet(conn, data, table, response.write, metadata)

    # catalogue --------------------------------------------------------------

    async def catalog(self, request: web.Request) -> web.StreamResponse:
        base = self.config.publication.public_url or f"{request.scheme}://{request.host}"
        async with reading(self.pool, self.statement_timeout_ms) as conn:
            created = await history.database_created(conn)
        return respond(request, dumps(catalog_document(self.config.publication, base, created)),
                       dcat.MEDIA_TYPE, cache_control="public, max-age=300")


COUNT_FIELDS = ("period", "count", "coverage", "estimated_share", "speed", "invalid", "invalid_reasons")
ANNUAL_FIELDS = ("site_id", "external_id", "name", "road", "tmja", "tmjo", "heavy_share", "mean_speed",
                 "days_valid", "days_excluded", "mean_coverage")
ANNUAL_TYPES = {"site_id": pa.int32(), "external_id": pa.string(), "name": pa.string(), "road": pa.string(),
                "tmja": pa.float64(), "tmjo": pa.float64(), "heavy_share": pa.float64(),
                "mean_speed": pa.float64(), "days_valid": pa.int32(), "days_excluded": pa.int32(),
                "mean_coverage": pa.float64()}
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
EVENT_SPAN_TEXT = ("an event is in force from its actual (else planned) start, or when first seen, to its actual "
                   "end once ended (its planned end while planned; open while active)")


def _event_json(found: history.EventHistory) -> dict[str, Any]:
    return {**found.current, "versions": found.versions}


# --------------------------------------------------------------------------- routes


def api_routes(app: web.Application, ctx: AppContext) -> None:
    """Every /api/v1 route (GET, HEAD and CORS preflight)."""
    api = _Api(ctx)

    async def preflight(_request: web.Request) -> web.Response:
        return web.Response(status=204, headers=PREFLIGHT_HEADERS)

    routes: list[tuple[str, Handler]] = [
        (f"{API}/sites", api.sites),
        (f"{API}/sites/{{id}}", api.site),
        (f"{API}/sites/{{id}}/counts", api.counts),
        (f"{API}/annual", api.annual),
        (f"{API}/events", api.events),
        (f"{API}/events/{{id:[\\s\\S]+}}", api.event),  # any character: a bad id is a 400 or 404, never a 405
        (f"{API}/sources", api.sources),
        (f"{API}/downloads", api.download_index),
        (f"{API}/downloads/{downloads.DICTIONARY}", api.dictionary),
        (f"{API}/downloads/{{year}}/{{name}}", api.download),
        (dcat.CATALOG_PATH, api.catalog),
    ]
    for path, handler in routes:
        app.router.add_get(path, _guarded(handler))
        app.router.add_route("OPTIONS", path, preflight)
