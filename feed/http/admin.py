"""The admin API under /api/v1/admin/: sources' configuration and state, a poll
now, the quarantine, and operators' manual markings (a road closed, a counter
faulty, over a period).

Every route needs `Authorization: Bearer <[server] admin_token>` (compared in
constant time). Without a configured token the admin API is off (403); a missing
or wrong token gets 401 with `WWW-Authenticate: Bearer`. Refusals use the history
API's error shape. Admin responses are never cached and carry no CORS header:
they are for operators' tools, not for other sites' pages.

Writes (markings) go through the storage pool, the connection the collectors
write with (the writer role in production), never through the API's read-only
transactions (feed.store.transactions.reading), which run as `roadfeed_reader`.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import asyncpg
from aiohttp import web

from feed.errors import Conflict, Forbidden, NotFound, RequestError, Unauthorized, Unavailable
from feed.http.documents import API
from feed.http.errors import refusal
from feed.http.markings import MARKING_KINDS, MAX_COMMENT, bad_parameter, marking_fields
from feed.publish.filters import check_storable
from feed.store import markings
from feed.store.sources import last_runs, quarantined, source_states
from feed.store.transactions import reading

if TYPE_CHECKING:
    from feed.collect.scheduler import Collector
    from feed.http.context import AppContext

__all__ = ["ADMIN", "COLLECTOR_SLOT", "CollectorSlot", "admin_routes", "attach_collector"]

ADMIN = f"{API}/admin"
QUARANTINE_LIMIT = (50, 500)  # default, maximum
MARKINGS_LIMIT = 1000
SECRET_OPTION = re.compile(r"key|token|secret|password|credential", re.IGNORECASE)
JSON_TYPE = "application/json"


@dataclass
class CollectorSlot:
    """The process's collectors, when it runs some (`roadfeed run`); set after the app is built."""

    collector: Collector | None = None


COLLECTOR_SLOT = web.AppKey("collector_slot", CollectorSlot)


def attach_collector(app: web.Application, collector: Collector | None) -> None:
    """Lets `POST /api/v1/admin/sources/{id}/run` poll through `collector` (None: detach)."""
    app[COLLECTOR_SLOT].collector = collector


# --------------------------------------------------------------------------- responses


def _json(document: Any, status: int = 200, **extra: str) -> web.Response:
    body = json.dumps(document, ensure_ascii=False, default=str).encode()
    return web.Response(
        status=status, body=body, headers={"Content-Type": JSON_TYPE, "Cache-Control": "no-store", **extra}
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _check_token(expected: bytes | None, request: web.Request) -> None:
    if expected is None:
        raise Forbidden("admin_disabled", "admin API disabled: set [server] admin_token")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise Unauthorized(
            "unauthorized", "this route needs Authorization: Bearer <[server] admin_token>", realm="roadfeed admin"
        )


def _authorised(token: str | None, handler: Handler) -> Handler:
    """The token check, then refusals as JSON errors (without CORS: same origin only)."""
    expected = token.encode() if token else None

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            _check_token(expected, request)
            return await handler(request)
        except RequestError as exc:
            return refusal(exc, cors=False, compact=False)
        except asyncpg.QueryCanceledError:
            return refusal(
                Unavailable(
                    "query_timeout", "the database did not answer within the statement timeout", retry_after=10
                ),
                cors=False,
                compact=False,
            )

    return handle


# --------------------------------------------------------------------------- request bodies

# Bodies beyond [server] max_request_bytes are refused (413) before they are read whole.
MAX_DEPTH = 8  # nesting of arrays and objects in an admin JSON body
BODY_EXPECTED = 'a JSON object, e.g. {"kind": "road_closed", "road": "RD613", "from": "2025-07-01"}'


def _depth_exceeded(raw: bytes, limit: int) -> bool:
    """Whether arrays and objects nest deeper than `limit` (brackets inside strings do not count).

    Checked before parsing: the parser recurses once per level, so a deep enough
    body would exhaust the stack before any check on the result could run."""
    depth = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


def _check_strings(value: Any, path: str) -> None:
    """Every key and string in a parsed body: text PostgreSQL can hold (a 400 naming the field)."""
    if isinstance(value, str):
        check_storable(path, value)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_storable(path, key)
            _check_strings(item, key if path == "body" else f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_strings(item, f"{path}[{index}]")


def parse_body(raw: bytes) -> dict[str, Any]:
    """A JSON object of at most MAX_DEPTH levels whose texts PostgreSQL can hold, or BadParameter."""
    if _depth_exceeded(raw, MAX_DEPTH):
        raise bad_parameter(
            "body",
            raw[:200].decode("utf-8", "replace"),
            f"{BODY_EXPECTED}, nested at most {MAX_DEPTH} deep",
            f"the body nests arrays or objects more than {MAX_DEPTH} deep",
        )
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad_parameter(
            "body", raw[:200].decode("utf-8", "replace"), BODY_EXPECTED, "the body is not JSON"
        ) from None
    if not isinstance(body, dict):
        raise bad_parameter("body", body, BODY_EXPECTED, "the body is not a JSON object")
    _check_strings(body, "body")
    return body


# --------------------------------------------------------------------------- handlers


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _options(options: dict[str, Any]) -> dict[str, Any]:
    """A source's options without secrets (API keys and the like)."""
    out: dict[str, Any] = {}
    for k, v in options.items():
        if isinstance(v, dict):
            out[k] = _options(v)
        else:
            out[k] = "(set)" if SECRET_OPTION.search(k) and v else v
    return out


def _run_json(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": r["id"],
        "started": _iso(r["started"]),
        "finished": _iso(r["finished"]),
        "http_status": r["http_status"],
        "bytes": r["bytes"],
        "new": r["records_new"],
        "updated": r["records_updated"],
        "unchanged": r["records_unchanged"],
        "quarantined": r["records_quarantined"],
        "complete": r["complete"],
        "error": r["error"],
    }


def _marking_json(r: asyncpg.Record) -> dict[str, Any]:
    return markings.marking_json(r)


class _Admin:
    def __init__(self, app: web.Application, ctx: AppContext) -> None:
        self.app = app
        self.ctx = ctx
        self.tz = ZoneInfo(ctx.config.publication.timezone)
        self.pool = ctx.storage.pool
        self.statement_timeout_ms = ctx.config.database.statement_timeout_ms

    async def sources(self, _request: web.Request) -> web.Response:
        async with reading(self.pool, self.statement_timeout_ms) as conn:
            states = {r["id"]: r for r in await source_states(conn)}
            runs: dict[str, list[dict[str, Any]]] = {}
            for r in await last_runs(conn, 5):
                runs.setdefault(r["source_id"], []).append(_run_json(r))
        configured = {s.id: s for s in self.ctx.config.sources}
        out = []
        for source_id in sorted(configured.keys() | states.keys()):
            conf, row = configured.get(source_id), states.get(source_id)
            out.append(
                {
                    "id": source_id,
                    "config": None
                    if conf is None
                    else {
                        "kind": conf.kind,
                        "url": conf.url,
                        "interval": conf.interval,
                        "enabled": conf.enabled,
                        "options": _options(conf.options),
                    },
                    "state": None
                    if row is None
                    else {
                        "kind": row["kind"],
                        "url": row["url"],
                        "etag": row["etag"],
                        "last_modified": row["last_modified"],
                        "watermark": row["watermark"],
                        "last_success": _iso(row["last_success"]),
                        "last_error": row["last_error"],
                        "last_error_at": _iso(row["last_error_at"]),
                        "lease_owner": row["lease_owner"],
                        "lease_until": _iso(row["lease_until"]),
                        "next_poll_at": _iso(row["next_poll_at"]),
                    },
                    "last_runs": runs.get(source_id, []),
                    "quarantine": {
                        "total": row["quarantined_total"] if row else 0,
                        "last_24h": row["quarantined_day"] if row else 0,
                    },
                }
            )
        return _json({"sources": out, "collectors_running": self.app[COLLECTOR_SLOT].collector is not None})

    async def run(self, request: web.Request) -> web.Response:
        source_id = request.match_info["id"]
        source = next((s for s in self.ctx.config.sources if s.id == source_id), None)
        if source is None:
            raise NotFound(
                "id",
                source_id,
                "the id of a configured source (see /api/v1/admin/sources)",
                f"no configured source {source_id!r}",
            )
        collector = self.app[COLLECTOR_SLOT].collector
        if collector is None:
            raise Conflict(
                "no_collectors",
                "collectors are not running in this process (`roadfeed serve` serves only; use `roadfeed run`)",
            )
        report = await collector.poll(source)
        if report is None:
            raise Conflict("busy", f"another worker is polling {source_id} now; retry shortly", retry_after=10)
        s = report.stats
        return _json(
            {
                "source": report.source_id,
                "run_id": report.run_id,
                "duration": round(report.duration, 3),
                "http_status": s.http_status,
                "bytes": s.bytes,
                "new": s.counts.new,
                "updated": s.counts.updated,
                "unchanged": s.counts.unchanged,
                "quarantined": s.quarantined,
                "complete": s.complete,
                "error": s.error,
                "watermark": report.watermark,
                "summary": report.line(),
            }
        )

    async def quarantine(self, request: web.Request) -> web.Response:
        q = request.query
        source = q.get("source") or None
        raw_limit = q.get("limit")
        limit = QUARANTINE_LIMIT[0]
        if raw_limit is not None:
            expected = f"an integer from 1 to {QUARANTINE_LIMIT[1]}"
            try:
                limit = int(raw_limit)
            except ValueError:
                raise bad_parameter("limit", raw_limit, expected, f"limit {raw_limit!r} is not an integer") from None
            if not 1 <= limit <= QUARANTINE_LIMIT[1]:
                raise bad_parameter("limit", raw_limit, expected, f"limit {limit} is out of range")
        async with reading(self.pool, self.statement_timeout_ms) as conn:
            rows = await quarantined(conn, source, limit)
        return _json(
            {
                "source": source,
                "limit": limit,
                "records": [
                    {
                        "id": r["id"],
                        "source": r["source_id"],
                        "run_id": r["run_id"],
                        "record_ref": r["record_ref"],
                        "reason": r["reason"],
                        "excerpt": r["excerpt"],
                        "recorded": _iso(r["recorded"]),
                        "last_seen": _iso(r["last_seen"]),
                        "times_seen": r["times_seen"],
                    }
                    for r in rows
                ],
            }
        )

    # markings ---------------------------------------------------------------

    async def markings(self, request: web.Request) -> web.Response:
        async with reading(self.pool, self.statement_timeout_ms) as conn:
            rows = await markings.list_markings(conn, MARKINGS_LIMIT)
        return _json({"markings": [_marking_json(r) for r in rows]})

    async def _body(self, request: web.Request) -> dict[str, Any]:
        return parse_body(await request.read())

    async def add_marking(self, request: web.Request) -> web.Response:
        fields = marking_fields(await self._body(request), self.tz)
        row = await markings.add_marking(self.ctx.storage, self.statement_timeout_ms, fields, "admin-token")
        return _json(_marking_json(row), 201, Location=f"{ADMIN}/markings/{row['id']}")

    async def openapi(self, _request: web.Request) -> web.Response:
        from feed.http.openapi import SCHEMAS  # noqa: PLC0415 - feed.http.openapi imports feed.http.api, as this module does

        return _json(
            {
                "openapi": "3.1.0",
                "info": {
                    "title": "roadfeed admin API",
                    "version": "1",
                    "description": "Operators' routes; every one needs Authorization: Bearer <[server] admin_token>.",
                },
                "paths": openapi_paths(),
                "components": {"schemas": {"Error": SCHEMAS["Error"]}, "securitySchemes": SECURITY_SCHEMES},
            }
        )

    async def delete_marking(self, request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        expected = "the id of a marking (see /api/v1/admin/markings)"
        try:
            marking_id = int(raw)
        except ValueError:
            raise NotFound("id", raw, expected, f"no marking {raw!r}") from None
        if not 0 < marking_id < 2**63:
            raise NotFound("id", raw, expected, f"no marking {raw!r}")
        row = await markings.delete_marking(self.ctx.storage, self.statement_timeout_ms, marking_id, "admin-token")
        if row is None:
            raise NotFound("id", raw, expected, f"no marking {marking_id}")
        return _json({"deleted": _marking_json(row)})


def admin_routes(app: web.Application, ctx: AppContext) -> None:
    """Every /api/v1/admin route, each behind the admin token.

    A sub-application: the public API's OpenAPI document (and its tests) cover the
    routes of the main router; the admin API has its own document, behind the token."""
    app[COLLECTOR_SLOT] = CollectorSlot()
    admin = _Admin(app, ctx)
    token = ctx.config.server.admin_token

    def guard(handler: Handler) -> Handler:
        return _authorised(token, handler)

    sub = web.Application()
    sub.router.add_get("/sources", guard(admin.sources))
    sub.router.add_post("/sources/{id}/run", guard(admin.run))
    sub.router.add_get("/quarantine", guard(admin.quarantine))
    sub.router.add_get("/markings", guard(admin.markings))
    sub.router.add_post("/markings", guard(admin.add_marking))
    sub.router.add_delete("/markings/{id}", guard(admin.delete_marking))
    sub.router.add_get("/openapi.json", guard(admin.openapi))
    app.add_subapp(ADMIN, sub)


# --------------------------------------------------------------------------- OpenAPI


def openapi_paths() -> dict[str, Any]:
    """The admin routes for feed.http.openapi (every one needs the bearer token).

    Served at /api/v1/admin/openapi.json, apart from the public API's document."""
    error = {"content": {JSON_TYPE: {"schema": {"$ref": "#/components/schemas/Error"}}}}
    guarded = {
        "401": {"description": "missing or wrong token", **error},
        "403": {"description": "admin API disabled: no [server] admin_token", **error},
    }
    security: list[dict[str, list[str]]] = [{"adminToken": []}]

    def op(
        summary: str,
        operation_id: str,
        ok: str,
        *,
        parameters: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
        body: bool = False,
        status: str = "200",
    ) -> dict[str, Any]:
        operation: dict[str, Any] = {
            "summary": summary,
            "operationId": operation_id,
            "security": security,
            "tags": ["admin"],
            "parameters": parameters or [],
            "responses": {
                status: {"description": ok, "content": {JSON_TYPE: {"schema": {"type": "object"}}}},
                **guarded,
                **(extra or {}),
            },
        }
        if body:
            operation["requestBody"] = {"required": True, "content": {JSON_TYPE: {"schema": MARKING_SCHEMA}}}
        return operation

    def path_id(description: str) -> dict[str, Any]:
        return {"name": "id", "in": "path", "required": True, "description": description, "schema": {"type": "string"}}

    bad = {"400": {"description": "a parameter or field cannot be used", **error}}
    missing = {"404": {"description": "no such item", **error}}
    return {
        f"{ADMIN}/sources": {
            "get": op(
                "Sources: configuration (secrets hidden), stored state, last runs, quarantine counts",
                "adminListSources",
                "the sources",
            )
        },
        f"{ADMIN}/sources/{{id}}/run": {
            "post": op(
                "Poll a source now through this process's collectors",
                "adminRunSource",
                "the run's report",
                parameters=[path_id("a configured source id")],
                extra={
                    **missing,
                    "409": {
                        "description": "collectors are not running in this process, or another "
                        "worker is polling the source",
                        **error,
                    },
                },
            )
        },
        f"{ADMIN}/quarantine": {
            "get": op(
                "Quarantined records, newest first",
                "adminListQuarantine",
                "the records",
                parameters=[
                    {"name": "source", "in": "query", "required": False, "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": QUARANTINE_LIMIT[1],
                            "default": QUARANTINE_LIMIT[0],
                        },
                    },
                ],
                extra=bad,
            )
        },
        f"{ADMIN}/markings": {
            "get": op("Manual markings, newest first", "adminListMarkings", "the markings"),
            "post": op(
                "Record a marking: a road closed or a counter faulty over a period",
                "adminAddMarking",
                "the marking",
                body=True,
                status="201",
                extra=bad,
            ),
        },
        f"{ADMIN}/markings/{{id}}": {
            "delete": op(
                "Delete a marking",
                "adminDeleteMarking",
                "the deleted marking",
                parameters=[path_id("a marking id")],
                extra=missing,
            )
        },
    }


MARKING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "kind": {"enum": list(MARKING_KINDS)},
        "road": {"type": "string", "description": "road_closed: the road, e.g. RD613"},
        "site_id": {"type": "integer", "description": "counter_faulty: the site"},
        "pr_from": {"type": "integer", "description": "road_closed: first PR closed (with pr_to; else the whole road)"},
        "pr_to": {"type": "integer", "description": "road_closed: last PR closed"},
        "from": {"type": "string", "description": "a date or ISO 8601 date-time (local time without offset)"},
        "to": {"type": ["string", "null"], "description": "exclusive; open when absent"},
        "comment": {"type": "string", "maxLength": MAX_COMMENT},
    },
    "required": ["kind", "from"],
    "additionalProperties": False,
}
SECURITY_SCHEMES = {
    "adminToken": {"type": "http", "scheme": "bearer", "description": "[server] admin_token of the configuration"}
}
