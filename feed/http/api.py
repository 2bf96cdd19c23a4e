"""The history API under /api/v1: sites, a site's counts, the annual table, events
with every version, sources' state, yearly bulk files (feed.http.downloads) and the
OpenAPI document.

Thin adapters over `feed.store.history` and `feed.store.downloads`: parse and check the
query (feed.http.params), read in one read-only transaction bounded by
`[database] statement_timeout_ms`, render JSON, CSV or Parquet (feed.http.documents).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import asyncpg
import pyarrow as pa
from aiohttp import web

from feed.errors import NotFound, RequestError, Unavailable
from feed.http import params
from feed.http.documents import (
    API,
    DIALECTS,
    LIVE_CACHE,
    VALIDATION_METHOD,
    annual_method,
    api_document,
    counts_csv,
    csv_bytes,
    dumps,
    file_stamp,
    iso,
    matches_filter,
    parquet_bytes,
    respond,
    respond_json,
    site_json,
)
from feed.http.downloads import Downloads
from feed.http.errors import refusal
from feed.http.responses import PREFLIGHT_HEADERS
from feed.publish import dcat
from feed.publish.dcat import catalog_document
from feed.publish.filters import EVENT_STATUSES, EVENT_TYPES
from feed.store import history, yearly_files
from feed.store.history import STEPS, Site, Step
from feed.store.transactions import reading
from feed.store.yearly_files import MEDIA_TYPES

if TYPE_CHECKING:
    from feed.http.context import AppContext

__all__ = ["api_routes"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _guarded(handler: Handler) -> Handler:
    """Turns refusals and timeouts into JSON errors of one shape."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except RequestError as exc:
            return refusal(exc)
        except asyncpg.QueryCanceledError:
            return refusal(
                Unavailable(
                    "query_timeout",
                    "the database did not answer within the statement timeout",
                    expected="a narrower query",
                    retry_after=10,
                )
            )

    return handle


# --------------------------------------------------------------------------- handlers


class _Api:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.tz = ZoneInfo(ctx.config.publication.timezone)
        self.pool = ctx.storage.pool
        self.statement_timeout_ms = ctx.config.database.statement_timeout_ms

    def document(self, body: dict[str, Any], **method_extra: Any) -> dict[str, Any]:
        return api_document(self.config, body, **method_extra)

    # sites ------------------------------------------------------------------

    async def sites(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        after = params.decode_cursor(q, "sites")
        if after is not None and not isinstance(after, int):
            raise params.bad(
                "cursor", params.one(q, "cursor") or "", "the next_cursor of a previous page", "not a sites cursor"
            )
        roads = params.comma_list(q, "road")
        commune = params.one(q, "commune")
        bbox = params.bbox(q)
        limit = params.limit(q, params.SITES_LIMIT)
        async with reading(self.pool, self.statement_timeout_ms) as conn:
            found = await history.sites(
                conn,
                self.config.publication.timezone,
                after=after,
                roads=roads,
                commune=commune,
                bbox=bbox,
                limit=limit + 1,
            )
        page = found[:limit]
        next_cursor = params.encode_cursor("sites", page[-1].id) if len(found) > limit else None
        return respond_json(
            request, self.document({"sites": [site_json(s, self.tz) for s in page], "next_cursor": next_cursor})
        )

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
        step: Step = params.choice(q, "step", STEPS, "day")  # type: ignore[assignment]
        fmt = params.choice(q, "format", ("json", "csv", "parquet"), "json")
        dialect = params.choice(q, "dialect", DIALECTS, "standard")
        now = datetime.now(UTC)
        start, end = params.counts_range(q, step, self.tz, now)
        direction = params.one(q, "direction")
        vehicle_class = params.one(q, "vehicle_class") or "all"
        async with reading(self.pool, self.statement_timeout_ms) as conn:
            site = await self._site(conn, request.match_info["id"])
            # A direction or class the site does not count is a series that does not exist.
            if direction is not None and direction != "all" and direction not in site.directions:
                raise NotFound(
                    "direction",
                    direction,
                    f"one of this site's directions: {', '.join(site.directions)}"
                    if site.directions
                    else "no direction: this site's channels have none",
                    f"site {site.id} has no direction {direction!r}",
                )
            classes = ["all", *(c for c in site.vehicle_classes if c != "all")]
            if vehicle_class not in classes:
                raise NotFound(
                    "vehicle_class",
                    vehicle_class,
                    f"one of this site's classes: {', '.join(classes)}",
                    f"site {site.id} has no {vehicle_class!r} vehicle class",
                )
            chosen = history.select_channels(site, None if direction in (None, "all") else direction, vehicle_class)
            points = await history.channel_series(conn, chosen, start, end, step, self.config.publication.timezone, now)
        rows = [self._point(p) for p in points]
        # What the file holds, in its name: site, class, direction and the inclusive period.
        last = params.shift(end, step, -1, self.tz)
        name = (
            f"site-{site.id}_{vehicle_class}_{'all-directions' if direction in (None, 'all') else direction}"
            f"_{file_stamp(start, self.tz)}_{file_stamp(last, self.tz)}_{step}"
        )
        if fmt == "csv":
            return respond(
                request,
                counts_csv(points, rows, step, dialect),
                MEDIA_TYPES["csv"],
                filename=f"{name}{'_fr' if dialect == 'fr' else ''}.csv",
            )
        if fmt == "parquet":
            return respond(
                request,
                parquet_bytes(self._points_table(points, rows, step)),
                MEDIA_TYPES["parquet"],
                filename=f"{name}.parquet",
                compressible=False,
            )
        return respond_json(
            request,
            self.document(
                {
                    "site": site_json(site, self.tz),
                    "from": iso(start, self.tz),
                    "to": iso(end, self.tz),
                    "step": step,
                    "direction": None if direction in (None, "all") else direction,
                    "direction_name": None if direction in (None, "all") else site.direction_names.get(direction),
                    "vehicle_class": vehicle_class,
                    "points": rows,
                },
                **VALIDATION_METHOD,
            ),
        )

    def _point(self, p: history.Point) -> dict[str, Any]:
        period = iso(p.period, self.tz) if isinstance(p.period, datetime) else p.period.isoformat()
        present = p.present > 0
        return {
            "period": period,
            "count": p.count if present else None,
            "coverage": p.coverage,
            "estimated_share": p.estimated_share if present else None,
            "speed": p.speed,
            "invalid": sum(p.invalid.values()),
            "invalid_reasons": ",".join(sorted(p.invalid)),
        }

    def _points_table(self, points: Sequence[history.Point], rows: Sequence[dict[str, Any]], step: Step) -> pa.Table:
        period_type = pa.timestamp("ms", tz=self.config.publication.timezone) if step == "hour" else pa.date32()
        return pa.table(
            {
                "period": pa.array([p.period for p in points], period_type),
                "count": pa.array([r["count"] for r in rows], pa.int64()),
                "coverage": pa.array([r["coverage"] for r in rows], pa.float64()),
                "estimated_share": pa.array([r["estimated_share"] for r in rows], pa.float64()),
                "speed": pa.array([r["speed"] for r in rows], pa.float64()),
                "invalid": pa.array([r["invalid"] for r in rows], pa.int32()),
                "invalid_reasons": pa.array([r["invalid_reasons"] for r in rows], pa.string()),
            }
        )

    # annual -----------------------------------------------------------------

    async def annual(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        year = params.integer(q, "year", None, *params.YEARS)
        if year is None:
            raise params.bad(
                "year", "", f"a year from {params.YEARS[0]} to {params.YEARS[1]}, e.g. 2025", "year is required"
            )
        fmt = params.choice(q, "format", ("json", "csv", "parquet"), "json")
        dialect = params.choice(q, "dialect", DIALECTS, "standard")
        raw_threshold = params.one(q, "threshold")
        threshold = self.config.publication.coverage_threshold
        if raw_threshold is not None:
            try:
                threshold = float(raw_threshold)
            except ValueError:
                threshold = float("nan")
            if not 0 <= threshold <= 1:
                raise params.bad(
                    "threshold",
                    raw_threshold,
                    "a number from 0 to 1, e.g. 0.95",
                    f"threshold {raw_threshold!r} is not a share from 0 to 1",
                )
        text = params.one(q, "q")
        async with reading(self.pool, self.statement_timeout_ms) as conn:
            table = await history.annual_table(
                conn, year, threshold, self.config.publication.timezone, holidays=self.config.publication.holidays
            )
        rows = [
            {
                "site_id": r.site_id,
                "external_id": r.external_id,
                "name": r.name,
                "road": r.road,
                "tmja": r.tmja,
                "tmjo": r.tmjo,
                "heavy_share": r.heavy_share,
                "mean_speed": r.mean_speed,
                "days_valid": r.days_valid,
                "days_excluded": r.days_excluded,
                "mean_coverage": r.mean_coverage,
            }
            for r in table
            if text is None or matches_filter(text, r.name, r.road, r.external_id)
        ]
        if fmt == "csv":
            return respond(
                request,
                csv_bytes(ANNUAL_FIELDS, [[r[k] for k in ANNUAL_FIELDS] for r in rows], dialect),
                MEDIA_TYPES["csv"],
                filename=f"annual_{year}{'_fr' if dialect == 'fr' else ''}.csv",
            )
        if fmt == "parquet":
            columns = {k: pa.array([r[k] for r in rows], ANNUAL_TYPES[k]) for k in ANNUAL_FIELDS}
            return respond(
                request,
                parquet_bytes(pa.table(columns)),
                MEDIA_TYPES["parquet"],
                filename=f"annual_{year}.parquet",
                compressible=False,
            )
        return respond_json(
            request,
            self.document(
                {"year": year, "threshold": threshold, "q": text, "rows": rows},
                **annual_method(self.config),
                coverage_threshold=threshold,
            ),
        )

    # events -----------------------------------------------------------------

    async def events(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        after = params.decode_cursor(q, "events")
        if after is not None and not isinstance(after, str):
            raise params.bad(
                "cursor", params.one(q, "cursor") or "", "the next_cursor of a previous page", "not an events cursor"
            )
        start, end = params.instant(q, "from", self.tz), params.instant(q, "to", self.tz)
        if start is not None and end is not None and end <= start:
            raise params.bad(
                "to", params.one(q, "to") or "", "a time after from", "to must be after from; to is exclusive"
            )
        bbox = params.bbox(q)
        types = params.comma_list(q, "type", EVENT_TYPES)
        roads = params.comma_list(q, "road")
        statuses = params.comma_list(q, "status", EVENT_STATUSES)
        limit = params.limit(q, params.EVENTS_LIMIT)
        async with reading(self.pool, self.statement_timeout_ms) as conn:
            found = await history.events(
                conn,
                after=after,
                start=start,
                end=end,
                bbox=bbox,
                types=types,
                roads=roads,
                statuses=statuses,
                limit=limit + 1,
            )
        page = found[:limit]
        next_cursor = params.encode_cursor("events", page[-1].current["id"]) if len(found) > limit else None
        return respond_json(
            request,
            self.document(
                {"events": [_event_json(e) for e in page], "next_cursor": next_cursor},
                events="events in force at some point in [from, to): " + EVENT_SPAN_TEXT,
            ),
            cache_control=LIVE_CACHE,
        )

    async def event(self, request: web.Request) -> web.StreamResponse:
        event_id = request.match_info["id"]
        async with reading(self.pool, self.statement_timeout_ms) as conn:
            found = await history.event(conn, event_id)
        if found is None:
            raise NotFound(
                "id",
                event_id,
                "the id of an event (<source id>:<external id>, see /api/v1/events)",
                f"no event {event_id!r}",
            )
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
                    "started": iso(row["started"], self.tz),
                    "finished": iso(row["finished"], self.tz),
                    "http_status": row["http_status"],
                    "bytes": row["bytes"],
                    "new": row["records_new"],
                    "updated": row["records_updated"],
                    "unchanged": row["records_unchanged"],
                    "quarantined": row["records_quarantined"],
                    "complete": row["complete"],
                    "error": row["error"],
                }
            out.append(
                {
                    "id": source_id,
                    "kind": conf.kind if conf else row["kind"],  # type: ignore[index]
                    "configured": conf is not None,
                    "enabled": conf.enabled if conf else False,
                    "interval": conf.interval if conf else None,
                    "last_success": iso(row["last_success"], self.tz) if row else None,
                    "last_error": row["last_error"] if row else None,
                    "last_error_at": iso(row["last_error_at"], self.tz) if row else None,
                    "last_run": last_run,
                }
            )
        return respond_json(request, self.document({"sources": out}), cache_control=LIVE_CACHE)

    # catalogue --------------------------------------------------------------

    async def catalog(self, request: web.Request) -> web.StreamResponse:
        base = self.config.publication.public_url or f"{request.scheme}://{request.host}"
        async with reading(self.pool, self.statement_timeout_ms) as conn:
            created = await history.database_created(conn)
        return respond(
            request,
            dumps(catalog_document(self.config.publication, base, created)),
            dcat.MEDIA_TYPE,
            cache_control="public, max-age=300",
        )


ANNUAL_FIELDS = (
    "site_id",
    "external_id",
    "name",
    "road",
    "tmja",
    "tmjo",
    "heavy_share",
    "mean_speed",
    "days_valid",
    "days_excluded",
    "mean_coverage",
)
ANNUAL_TYPES = {
    "site_id": pa.int32(),
    "external_id": pa.string(),
    "name": pa.string(),
    "road": pa.string(),
    "tmja": pa.float64(),
    "tmjo": pa.float64(),
    "heavy_share": pa.float64(),
    "mean_speed": pa.float64(),
    "days_valid": pa.int32(),
    "days_excluded": pa.int32(),
    "mean_coverage": pa.float64(),
}
EVENT_SPAN_TEXT = (
    "an event is in force from its actual (else planned) start, or when first seen, to its actual "
    "end once ended (its planned end while planned; open while active)"
)


def _event_json(found: history.EventHistory) -> dict[str, Any]:
    return {**found.current, "versions": found.versions}


# --------------------------------------------------------------------------- routes


def api_routes(app: web.Application, ctx: AppContext) -> None:
    """Every /api/v1 route (GET, HEAD and CORS preflight)."""
    api = _Api(ctx)
    files = Downloads(ctx)

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
        (f"{API}/downloads", files.index),
        (f"{API}/downloads/{yearly_files.DICTIONARY}", files.dictionary),
        (f"{API}/downloads/{{year}}/{{name}}", files.download),
        (dcat.CATALOG_PATH, api.catalog),
    ]
    for path, handler in routes:
        app.router.add_get(path, _guarded(handler))
        app.router.add_route("OPTIONS", path, preflight)
