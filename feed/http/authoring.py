"""Agents publish: event authoring, the road referential and markings under /api/v1/.

An event is entered once, located by road + PR/abscissa from/to (placed with the
referential) or by a drawn geometry, and written as the `agents` source's event:
publishing stores a new version (signed by its author) and the feed publisher,
told by PostgreSQL at commit, renders every feed anew. `POST /api/v1/events/preview`
shows what each consumer would receive and whether it accepts it, without storing.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from exporters import datex2_v2, datex2_v3, geojson, waze, wzdx
from exporters.datex2_v3 import NothingToPublish
from feed.errors import BadParameter, Conflict, NotFound
from feed.http.agents import Principal, authorised, json_response, public, read_json
from feed.http.documents import API
from feed.http.markings import marking_fields
from feed.model import EventRecord, EventType, Geometry, Severity, StoredEvent, TimeSlot, public_event_id
from feed.roads import ROAD_PATTERN, ReferentialError, normalise_road, parse_referential
from feed.store import markings, roads
from feed.store.transactions import reading, writing

if TYPE_CHECKING:
    from feed.http.context import AppContext

__all__ = ["KINDS", "EventInput", "authoring_paths", "authoring_routes", "consumers_report", "event_record"]

# Agents' event kinds -> (our type, subtype: a DATEX II class or code-list value the
# exporters write, lanes affected when the agent gives none).
KINDS: dict[str, tuple[EventType, str | None, str | None]] = {
    "works": ("roadworks", "MaintenanceWorks", None),
    "closure": ("closure", None, "all"),
    "alternating_traffic": ("lane_management", "singleAlternateLineTraffic", "1 voie sur 2"),
    "lane_closure": ("lane_management", "laneClosures", "1 voie"),
    "speed_limit": ("speed_management", "SpeedManagement", None),
    "detour": ("rerouting", "ReroutingManagement", None),
    "accident": ("accident", "Accident", None),
    "obstruction": ("obstruction", "GeneralObstruction", None),
    "winter_conditions": ("weather", "snowOnTheRoad", None),
    "ice": ("weather", "ice", None),
    "weather": ("weather", "WeatherRelatedRoadConditions", None),
}
MAX_TEXT = 2000
DIGITS = re.compile(r"^[0-9]{1,18}$")  # ASCII digits only: str.isdigit() also takes "²"


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff\ud800-\udfff]")


def _printable(text: str) -> str:
    """Texts go into XML and JSON feeds as typed: control characters are refused, not dropped."""
    found = _CONTROL.search(text)
    if found:
        raise ValueError(f"control character U+{ord(found.group()):04X} in the text")
    return text


MAX_PR = 10_000
MAX_ABSCISSA = 100_000  # metres
MAX_OFFSET = 1_000  # metres to the side of a road
# A position along a road in a query: PR, or PR+abscissa in metres ("12+250"; an unescaped
# + arrives as a space). The OpenAPI document states the same pattern.
PR_POSITION_PATTERN = r"^[0-9]{1,4}([+ ][0-9]{1,5}(\.[0-9]{1,3})?)?$"
PR_POSITION = re.compile(PR_POSITION_PATTERN)


class Position(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pr: int = Field(ge=0, le=MAX_PR)
    abscissa: float = Field(default=0, ge=-MAX_ABSCISSA, le=MAX_ABSCISSA)


class EventInput(BaseModel):
    """What an agent enters (the JSON body of POST /api/v1/events)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    kind: Literal[tuple(KINDS)]  # type: ignore[valid-type]
    road: str | None = Field(default=None, max_length=64)
    start_at: Position | None = Field(default=None, alias="from")
    end_at: Position | None = Field(default=None, alias="to")
    geometry: Geometry | None = None
    direction: Literal["both", "positive", "negative"] = "both"
    lanes: str | None = Field(default=None, max_length=200)
    severity: Severity = "medium"
    description: dict[Literal["fr", "en"], str] = Field(default_factory=dict)
    detour: str | None = Field(default=None, max_length=MAX_TEXT)
    start: datetime | None = None
    end: datetime | None = None
    schedule: list[TimeSlot] = Field(default_factory=list, max_length=14)

    @field_validator("description")
    @classmethod
    def _short(cls, v: dict[str, str]) -> dict[str, str]:
        if any(len(text) > MAX_TEXT for text in v.values()):
            raise ValueError(f"a description has at most {MAX_TEXT} characters")
        for text in v.values():
            _printable(text)
        return v

    @field_validator("road", "lanes", "detour")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        return None if v is None else _printable(v)

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("give a time with its offset, e.g. 2026-07-01T21:00:00+02:00")
        return v

    @model_validator(mode="after")
    def _place(self) -> EventInput:
        if self.road is not None and not ROAD_PATTERN.match(self.road):
            raise ValueError(f"road {self.road!r} is not a road reference such as RD613")
        if self.geometry is None and (self.road is None or self.start_at is None):
            raise ValueError("locate the event: road with from (PR, abscissa) and optionally to, or a geometry")
        if self.end_at is not None and self.start_at is None:
            raise ValueError("to needs from")
        if self.start and self.end and self.end <= self.start:
            raise ValueError("end must be after start")
        if self.kind == "detour" and not (self.detour or "").strip():
            raise ValueError("a detour needs its route (detour)")
        if self.kind == "lane_closure" and not (self.lanes or "").strip():
            raise ValueError("a lane closure needs the lanes closed (lanes)")
        return self


def parse_input(body: dict[str, Any]) -> EventInput:
    try:
        return EventInput.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadParameter(
            where,
            str(first.get("input", ""))[:200],
            "see EventInput in /api/v1/openapi.json",
            f"{where}: {first['msg']}",
        ) from None


async def event_record(conn: Any, entry: EventInput, external_id: str, now: datetime) -> EventRecord:
    """The stored form of what the agent entered: placed with the referential."""
    type_, subtype, default_lanes = KINDS[entry.kind]
    road = normalise_road(entry.road) if entry.road else None
    geometry = entry.geometry
    refs: dict[str, Any] = {}
    if entry.start_at is not None and road is not None:
        start = (entry.start_at.pr, entry.start_at.abscissa)
        try:
            if entry.end_at is None:
                lon, lat = await roads.point(conn, road, *start)
                placed = Geometry(type="Point", coordinates=[lon, lat])
                refs = {"road": road, "pr": start[0], "distance": start[1]}
            else:
                end = (entry.end_at.pr, entry.end_at.abscissa)
                placed = Geometry.model_validate(await roads.section(conn, road, start, end))
                refs = {
                    "pr": [
                        {"at": "from", "road": road, "pr": start[0], "abscissa": start[1]},
                        {"at": "to", "road": road, "pr": end[0], "abscissa": end[1]},
                    ]
                }
        except roads.OffRoad as exc:
            raise BadParameter(
                "from",
                f"{road} PR {entry.start_at.pr}",
                "a PR + abscissa of the referential (see /api/v1/roads/{road}/pr)",
                str(exc),
            ) from None
        geometry = geometry or placed
    begins = entry.start or now
    planned = begins > now
    return EventRecord(
        external_id=external_id,
        type=type_,
        subtype=subtype,
        status="planned" if planned else "active",
        severity=entry.severity,
        planned_start=begins,
        planned_end=entry.end,
        actual_start=None if planned else begins,
        road=road,
        direction=entry.direction,
        lanes_affected=(entry.lanes or "").strip() or default_lanes,
        geometry=geometry,
        descriptions={k: v.strip() for k, v in entry.description.items() if v.strip()},
        detour=(entry.detour or "").strip() or None,
        location_refs=refs,
        schedule=entry.schedule,
    )


def _stored(record: EventRecord, version: int, now: datetime, first_seen: datetime | None = None) -> StoredEvent:
    return StoredEvent(
        **record.model_dump(),
        id=public_event_id(markings.AGENTS_SOURCE, record.external_id),
        source_id=markings.AGENTS_SOURCE,
        version=version,
        first_seen=first_seen or now,
        last_seen=now,
        updated=now,
    )


def consumers_report(event: StoredEvent, ctx: AppContext, now: datetime) -> dict[str, Any]:
    """What each consumer receives for this event, and whether it accepts it (with the reason)."""
    publication = ctx.config.publication
    out: dict[str, Any] = {}
    for name, render in (("datex2_v3", datex2_v3.render_situations), ("datex2_v2", datex2_v2.render_situations)):
        try:
            document = render([event], publication, now).decode()
            accepted = event.geometry is not None
            out[name] = {
                "accepted": accepted,
                "reason": None if accepted else "DATEX II needs a place",
                "document": document,
            }
        except NothingToPublish as exc:
            out[name] = {"accepted": False, "reason": str(exc), "document": None}
    wzdx_reason = wzdx.check_wzdx_rules(event)
    out["wzdx"] = {
        "accepted": wzdx_reason is None,
        "reason": wzdx_reason,
        "document": wzdx.render_work_zones([event], publication, now).decode() if wzdx_reason is None else None,
    }
    waze_reason = waze.check_waze_rules(event)
    out["waze"] = {
        "accepted": waze_reason is None,
        "reason": waze_reason,
        "document": waze.render_cifs_json([event], publication, now).decode() if waze_reason is None else None,
    }
    out["geojson"] = {
        "accepted": True,
        "reason": None,
        "document": geojson.render_events([event], publication, now).decode(),
    }
    return out


def _now() -> datetime:
    return datetime.now(UTC)


def _event_id(request: web.Request) -> str:
    event_id = request.match_info["id"]
    if not event_id.startswith(f"{markings.AGENTS_SOURCE}:") or _CONTROL.search(event_id) or len(event_id) > 300:
        raise NotFound(
            "id",
            event_id,
            "the id of an event agents published (agents:...)",
            f"{event_id} is not an agents' event: events of other sources are not edited here",
        )
    return event_id


def authoring_routes(app: web.Application, ctx: AppContext) -> None:
    """Event authoring (editor), the road referential (public reads; import by an
    administrator) and markings with effect (editor)."""
    storage = ctx.storage
    statement_timeout_ms = ctx.config.database.statement_timeout_ms

    async def current(event_id: str) -> StoredEvent:
        versions = await storage.event_versions(event_id)
        if not versions:
            raise NotFound("id", event_id, "the id of an agents' event", f"no event {event_id}")
        return versions[-1]

    async def publish(record: EventRecord, who: Principal, now: datetime) -> web.Response:
        await storage.ensure_source(markings.AGENTS_SOURCE, "agents", "")
        await storage.upsert_events(markings.AGENTS_SOURCE, [record], seen_at=now, author=who.author)
        event = await current(public_event_id(markings.AGENTS_SOURCE, record.external_id))
        return json_response(
            {"event": event.model_dump(mode="json"), "author": who.author}, 200, Location=f"{API}/events/{event.id}"
        )

    async def preview(request: web.Request, _who: Principal) -> web.Response:
        entry = parse_input(await read_json(request, '{"kind": "works", "road": "RD613", "from": {"pr": 12}}'))
        now = _now()
        async with reading(storage.pool, statement_timeout_ms) as conn:
            record = await event_record(conn, entry, "preview", now)
        event = _stored(record, 1, now)
        return json_response({"event": event.model_dump(mode="json"), "consumers": consumers_report(event, ctx, now)})

    async def create(request: web.Request, who: Principal) -> web.Response:
        entry = parse_input(await read_json(request, '{"kind": "works", "road": "RD613", "from": {"pr": 12}}'))
        now = _now()
        external_id = f"{now:%Y%m%d}-{secrets.token_hex(4)}"
        async with reading(storage.pool, statement_timeout_ms) as conn:
            record = await event_record(conn, entry, external_id, now)
        response = await publish(record, who, now)
        response.set_status(201)
        return response

    async def update(request: web.Request, who: Principal) -> web.Response:
        event_id = _event_id(request)
        old = await current(event_id)
        entry = parse_input(await read_json(request, '{"kind": "works", "road": "RD613", "from": {"pr": 12}}'))
        now = _now()
        async with reading(storage.pool, statement_timeout_ms) as conn:
            record = await event_record(conn, entry, old.external_id, now)
        if old.status != "planned" and record.status == "active" and old.actual_start:
            record = record.model_copy(update={"actual_start": old.actual_start})
        return await publish(record, who, now)

    async def end(request: web.Request, who: Principal) -> web.Response:
        event_id = _event_id(request)
        old = await current(event_id)
        if old.status == "ended":
            raise Conflict("already_ended", f"{event_id} ended at {old.actual_end}")
        now = _now()
        record = EventRecord.model_validate(
            {**old.model_dump(include=set(EventRecord.model_fields)), "status": "ended", "actual_end": now}
        )
        return await publish(record, who, now)

    # road referential ------------------------------------------------------

    def road_of(request: web.Request) -> str:
        raw = request.match_info["road"]
        if not ROAD_PATTERN.match(raw):
            raise NotFound("road", raw, "a road of the referential (see /api/v1/roads)", f"no road {raw!r}")
        return normalise_road(raw)

    async def road_network(_request: web.Request) -> web.Response:
        async with reading(storage.pool, statement_timeout_ms) as conn:
            features = await roads.network(conn)
        return json_response({"type": "FeatureCollection", "features": features})

    async def road_list(_request: web.Request) -> web.Response:
        async with reading(storage.pool, statement_timeout_ms) as conn:
            rows = await roads.road_list(conn)
        return json_response(
            {
                "roads": [
                    {
                        "road": r["road"],
                        "name": r["name"],
                        "length_m": round(r["length"], 1),
                        "pr_min": r["pr_min"],
                        "pr_max": r["pr_max"],
                    }
                    for r in rows
                ]
            }
        )

    async def road_prs(request: web.Request) -> web.Response:
        road = road_of(request)
        async with reading(storage.pool, statement_timeout_ms) as conn:
            found = await roads.prs(conn, road)
        if not found:
            raise NotFound("road", road, "a road of the referential (see /api/v1/roads)", f"no road {road}")
        return json_response({"road": road, "prs": found})

    def number(request: web.Request, name: str, cast: type, lo: float, hi: float) -> Any:
        raw = request.query.get(name)
        expected = f"a number from {lo:g} to {hi:g}" if cast is float else f"an integer from {lo:g} to {hi:g}"
        try:
            value = cast(raw)
        except (TypeError, ValueError):
            raise BadParameter(name, raw or "", expected, f"{name} is missing or not a number") from None
        if not lo <= value <= hi:  # NaN fails too
            raise BadParameter(name, raw or "", expected, f"{name} {raw} is out of range")
        return value

    async def road_locate(request: web.Request) -> web.Response:
        road = road_of(request)
        async with reading(storage.pool, statement_timeout_ms) as conn:
            try:
                if "lon" in request.query or "lat" in request.query:
                    lon, lat = number(request, "lon", float, -180, 180), number(request, "lat", float, -90, 90)
                    pr, abscissa, offset, side = await roads.locate(conn, road, lon, lat)
                    return json_response(
                        {
                            "road": road,
                            "pr": pr,
                            "abscissa": round(abscissa, 1),
                            "offset_m": round(offset, 1),
                            "side": side,
                            "lon": lon,
                            "lat": lat,
                        }
                    )
                pr = number(request, "pr", int, 0, MAX_PR)
                abscissa = (
                    number(request, "abscissa", float, -MAX_ABSCISSA, MAX_ABSCISSA)
                    if "abscissa" in request.query
                    else 0.0
                )
                side = side_of(request)
                offset = number(request, "offset", float, 0, MAX_OFFSET) if "offset" in request.query else 0.0
                if offset and side is None:
                    raise BadParameter("side", "", "left or right", "an offset needs a side (left or right)")
                lon, lat = await roads.point(conn, road, pr, abscissa, side, offset)
            except roads.OffRoad as exc:
                raise NotFound("road", road, "a position on a road of the referential", str(exc)) from None
        return json_response(
            {
                "road": road,
                "pr": pr,
                "abscissa": abscissa,
                "side": side,
                "offset_m": offset if side else 0.0,
                "lon": lon,
                "lat": lat,
            }
        )

    def side_of(request: web.Request) -> roads.Side | None:
        raw = request.query.get("side")
        if raw is None:
            return None
        for side in roads.SIDES:
            if raw == side:
                return side
        raise BadParameter("side", raw, "left or right", f"side {raw!r} is neither left nor right")

    async def site_check(_request: web.Request) -> web.Response:
        async with reading(storage.pool, statement_timeout_ms) as conn:
            found = await roads.check_sites(conn)
        return json_response({"tolerance_m": roads.SITE_TOLERANCE_M, "sites": found})

    async def road_section(request: web.Request) -> web.Response:
        road = road_of(request)
        ends = []
        for name in ("from", "to"):
            raw = request.query.get(name, "")
            if not PR_POSITION.match(raw):
                raise BadParameter(name, raw, "PR+abscissa, e.g. 12+250", f"{name} is not PR+abscissa")
            pr, _, abscissa = raw.replace(" ", "+").partition("+")
            ends.append((int(pr), float(abscissa or 0)))
        async with reading(storage.pool, statement_timeout_ms) as conn:
            try:
                line = await roads.section(conn, road, ends[0], ends[1])
            except roads.OffRoad as exc:
                raise NotFound("road", road, "a section on a road of the referential", str(exc)) from None
        return json_response(
            {
                "type": "Feature",
                "geometry": line,
                "properties": {"road": road, "from": request.query["from"], "to": request.query["to"]},
            }
        )

    async def road_import(request: web.Request, _who: Principal) -> web.Response:
        data = await request.read()
        try:
            referential = parse_referential(data, "the uploaded referential")
        except ReferentialError as exc:
            raise BadParameter(
                "body",
                data[:200].decode("utf-8", "replace"),
                "a CSV (road, pr, lon, lat) or GeoJSON of PR points",
                str(exc),
            ) from None
        async with writing(storage.pool, statement_timeout_ms) as conn:
            count = await roads.store_referential(conn, referential)
        return json_response({"roads": count, "prs": sum(len(r.prs) for r in referential)}, 201)

    # markings -------------------------------------------------------------

    async def add_marking(request: web.Request, who: Principal) -> web.Response:
        body = await read_json(request, '{"kind": "counter_faulty", "site_id": 12, "from": "2026-07-01"}')
        fields = marking_fields(body, ZoneInfo(ctx.config.publication.timezone))
        row = await markings.add_marking(storage, statement_timeout_ms, fields, who.author)
        return json_response(markings.marking_json(row), 201, Location=f"{API}/markings/{row['id']}")

    async def delete_marking(request: web.Request, who: Principal) -> web.Response:
        raw = request.match_info["id"]
        row = (
            await markings.delete_marking(storage, statement_timeout_ms, int(raw), who.author)
            if DIGITS.match(raw)
            else None
        )
        if row is None:
            raise NotFound("id", raw, "the id of a marking (see /api/v1/markings)", f"no marking {raw}")
        return json_response({"deleted": markings.marking_json(row)})

    async def list_markings(request: web.Request) -> web.Response:
        site = request.query.get("site_id")
        if site is not None and not (DIGITS.match(site) and int(site) < 2**31):
            raise BadParameter("site_id", site, "a site id", "site_id is not a site id")
        async with reading(storage.pool, statement_timeout_ms) as conn:
            rows = await markings.list_markings(conn, 1000, None if site is None else int(site))
        return json_response({"markings": [markings.marking_json(m) for m in rows]})

    r = app.router
    r.add_get(f"{API}/markings", public(list_markings))
    r.add_post(f"{API}/markings", authorised(ctx, "editor", add_marking))
    r.add_delete(f"{API}/markings/{{id}}", authorised(ctx, "editor", delete_marking))
    r.add_post(f"{API}/events", authorised(ctx, "editor", create))
    r.add_post(f"{API}/events/preview", authorised(ctx, "editor", preview))
    r.add_put(f"{API}/events/{{id}}", authorised(ctx, "editor", update))
    r.add_post(f"{API}/events/{{id}}/end", authorised(ctx, "editor", end))
    r.add_get(f"{API}/roads", public(road_list))
    r.add_get(f"{API}/roads/site-check", public(site_check))
    r.add_get(f"{API}/roads/network", public(road_network))
    r.add_post(f"{API}/roads", authorised(ctx, "administrator", road_import))
    r.add_get(f"{API}/roads/{{road}}/pr", public(road_prs))
    r.add_get(f"{API}/roads/{{road}}/locate", public(road_locate))
    r.add_get(f"{API}/roads/{{road}}/section", public(road_section))


def authoring_paths() -> dict[str, Any]:
    """The routes above for the OpenAPI document."""
    error_ = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    guarded = {
        "400": {"description": "a field cannot be used", **error_},
        "401": {"description": "not logged in, or an unknown token", **error_},
        "403": {"description": "role too low, or a session request without its X-CSRF-Token", **error_},
    }
    body = {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EventInput"}}}}
    ok = {"200": {"description": "the event as stored, with its new version", "content": {"application/json": {}}}}
    security: list[dict[str, list[str]]] = [{"agentSession": []}, {"agentToken": []}]
    pid = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    road = {"name": "road", "in": "path", "required": True, "schema": {"type": "string"}}

    def q(name: str, type_: str, required: bool = False, **rules: Any) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": required, "schema": {"type": type_, **rules}}

    json_ok = {
        "200": {"description": "ok", "content": {"application/json": {}}},
        "400": {"description": "bad parameter", **error_},
        "404": {"description": "unknown", **error_},
    }
    return {
        f"{API}/session": {
            "post": {
                "summary": "Log in: sets the session cookie, returns the CSRF token",
                "operationId": "login",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["username", "password"],
                                "properties": {"username": {"type": "string"}, "password": {"type": "string"}},
                            }
                        }
                    },
                },
                "responses": {
                    "200": {"description": "logged in", "content": {"application/json": {}}},
                    "400": {"description": "the body is not a JSON object with both fields", **error_},
                    "401": {"description": "refused", **error_},
                },
            },
            "get": {
                "summary": "Who is logged in, and the session's CSRF token",
                "operationId": "whoami",
                "security": security,
                "responses": {**ok, **guarded},
            },
            "delete": {
                "summary": "Log out",
                "operationId": "logout",
                "security": security,
                "responses": {**ok, **guarded},
            },
        },
        f"{API}/events": {
            "post": {
                "summary": "Publish a new event (editor)",
                "operationId": "createEvent",
                "security": security,
                "requestBody": body,
                "responses": {"201": ok["200"], **guarded},
            }
        },
        f"{API}/events/preview": {
            "post": {
                "summary": "What each consumer (DATEX II v3, v2.3, WZDx, Waze, GeoJSON) would receive, and whether it "
                "accepts it; nothing is stored",
                "operationId": "previewEvent",
                "security": security,
                "requestBody": body,
                "responses": {**ok, **guarded},
            }
        },
        f"{API}/events/{{id}}": {
            "put": {
                "summary": "Publish a new version of an agents' event",
                "operationId": "updateEvent",
                "security": security,
                "parameters": [pid],
                "requestBody": body,
                "responses": {**ok, **guarded},
            }
        },
        f"{API}/events/{{id}}/end": {
            "post": {
                "summary": "End an agents' event (stays listed as ended)",
                "operationId": "endEvent",
                "security": security,
                "parameters": [pid],
                "responses": {**ok, **guarded},
            }
        },
        f"{API}/markings": {
            "get": {
                "summary": "Markings (a counter faulty, a road closed) with their reason; ?site_id= for one site",
                "operationId": "listMarkings",
                "parameters": [q("site_id", "integer", minimum=0, maximum=2**31 - 1)],
                "responses": json_ok,
            },
            "post": {
                "summary": "Mark a counter faulty (its intervals leave the aggregates) or a road closed "
                "(an event in every feed); editor",
                "operationId": "addMarking",
                "security": security,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {"201": {"description": "the marking, applied"}, **guarded},
            },
        },
        f"{API}/markings/{{id}}": {
            "delete": {
                "summary": "Remove a marking and undo its effect (intervals restored, closure ended)",
                "operationId": "deleteMarking",
                "security": security,
                "parameters": [pid],
                "responses": {**ok, **guarded},
            }
        },
        f"{API}/roads": {
            "get": {"summary": "Roads of the referential", "operationId": "listRoads", "responses": json_ok},
            "post": {
                "summary": "Import a referential (CSV road,pr,lon,lat[,name] or GeoJSON points; administrator)",
                "operationId": "importRoads",
                "security": security,
                "requestBody": {"required": True, "content": {"text/csv": {}, "application/geo+json": {}}},
                "responses": {"201": {"description": "imported"}, **guarded},
            },
        },
        f"{API}/roads/network": {
            "get": {
                "summary": "Every road of the referential with its line, as a GeoJSON FeatureCollection (WGS 84): "
                "what a map of the network draws in one request",
                "operationId": "roadNetwork",
                "responses": json_ok,
            }
        },
        f"{API}/roads/site-check": {
            "get": {
                "summary": "Counting sites whose PR + abscissa the referential cannot place, or places more than 100 m "
                "from their coordinates, with the reason",
                "operationId": "roadSiteCheck",
                "responses": json_ok,
            }
        },
        f"{API}/roads/{{road}}/pr": {
            "get": {
                "summary": "A road's PR with their position along the road",
                "operationId": "roadPrs",
                "parameters": [road],
                "responses": json_ok,
            }
        },
        f"{API}/roads/{{road}}/locate": {
            "get": {
                "summary": "PR + abscissa (+ side and offset) -> point (pr, abscissa, side, offset), or point -> "
                "PR + abscissa, distance from the road (offset_m) and side (lon, lat). The side is left or "
                "right of the road's direction of increasing PR (null within 1 cm of the road); offset is "
                "metres from the road's line, and an offset above 0 needs a side. With lon or lat, both are "
                "needed and pr, side and offset are not read; otherwise pr is needed",
                "operationId": "roadLocate",
                "parameters": [
                    road,
                    q("pr", "integer", minimum=0, maximum=MAX_PR),
                    q("abscissa", "number", minimum=-MAX_ABSCISSA, maximum=MAX_ABSCISSA),
                    q("side", "string", enum=list(roads.SIDES)),
                    q("offset", "number", minimum=0, maximum=MAX_OFFSET),
                    q("lon", "number", minimum=-180, maximum=180),
                    q("lat", "number", minimum=-90, maximum=90),
                ],
                "responses": json_ok,
            }
        },
        f"{API}/roads/{{road}}/section": {
            "get": {
                "summary": "The line along the road from PR+abscissa to PR+abscissa",
                "operationId": "roadSection",
                "parameters": [
                    road,
                    q("from", "string", True, pattern=PR_POSITION_PATTERN),
                    q("to", "string", True, pattern=PR_POSITION_PATTERN),
                ],
                "responses": json_ok,
            }
        },
    }
