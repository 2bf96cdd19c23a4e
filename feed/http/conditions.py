"""Road conditions from winter service, section by section, on the French scale
(C1 normal, C2 délicate, C3 difficile, C4 impraticable).

A section's state is an event of the `agents` source with a stable id per road
section: C2 and C3 are WeatherRelatedRoadConditions of the surface given (snow by
default), C4 closes the road, and C1 (back to normal) ends the event. So every state
is published in DATEX II v3 (and v2.3, GeoJSON, Waze, WZDx for C4) and every change
stays in history with its author. `GET /api/v1/road-conditions` is the coloured
network: every section's current state as GeoJSON.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from feed.errors import BadParameter
from feed.http.agents import Principal, authorised, json_response, public, read_json
from feed.http.authoring import Position
from feed.http.documents import API
from feed.model import EventRecord, Geometry, Severity
from feed.roads import ROAD_PATTERN, normalise_road
from feed.store import roads
from feed.store.conditions import condition_events
from feed.store.markings import AGENTS_SOURCE
from feed.store.transactions import reading

if TYPE_CHECKING:
    from feed.http.context import AppContext

__all__ = ["LEVELS", "ConditionInput", "condition_paths", "condition_record", "condition_routes"]

Level = Literal["C1", "C2", "C3", "C4"]
Surface = Literal["snowOnTheRoad", "ice", "blackIce", "freezingOfWetRoads", "wetAndIcyRoad"]
LEVELS: dict[str, tuple[Severity, str, str]] = {  # level -> severity, French, English
    "C1": ("low", "conditions normales", "normal conditions"),
    "C2": ("medium", "conditions délicates", "delicate conditions"),
    "C3": ("high", "conditions difficiles", "difficult conditions"),
    "C4": ("highest", "route impraticable", "road impassable"),
}
PREFIX = "conditions-"


class ConditionInput(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    road: str = Field(max_length=64)
    start_at: Position = Field(alias="from")
    end_at: Position = Field(alias="to")
    level: Level
    surface: Surface = "snowOnTheRoad"
    comment: str = Field(default="", max_length=500)

    @field_validator("road")
    @classmethod
    def _road(cls, v: str) -> str:
        if not ROAD_PATTERN.match(v):
            raise ValueError(f"road {v!r} is not a road reference such as RD613")
        return normalise_road(v)

    @field_validator("comment")
    @classmethod
    def _comment(cls, v: str) -> str:
        from feed.http.authoring import _printable  # noqa: PLC0415 - one rule for typed text

        return _printable(v)


def section_id(c: ConditionInput) -> str:
    return f"{PREFIX}{c.road}-{c.start_at.pr}+{c.start_at.abscissa:g}-{c.end_at.pr}+{c.end_at.abscissa:g}"


def condition_record(
    c: ConditionInput, line: dict[str, Any], now: datetime, previous: EventRecord | None
) -> EventRecord:
    """The event that publishes a section's state (C1 ends the previous one)."""
    severity, french, english = LEVELS[c.level]
    impassable = c.level == "C4"
    texts = {
        "fr": f"{c.road} : {c.level}, {french}" + (f". {c.comment}" if c.comment else ""),
        "en": f"{c.road}: {c.level}, {english}",
    }
    started = previous.actual_start if previous is not None and previous.status != "ended" else now
    return EventRecord(
        external_id=section_id(c),
        type="closure" if impassable else "weather",
        subtype=None if impassable else c.surface,
        status="ended" if c.level == "C1" else "active",
        severity=severity,
        planned_start=started,
        actual_start=started,
        actual_end=now if c.level == "C1" else None,
        road=c.road,
        direction="both",
        lanes_affected="all" if impassable else None,
        geometry=Geometry.model_validate(line),
        descriptions=texts,
        location_refs={
            "winter_level": c.level,
            "pr": [
                {"at": "from", "road": c.road, "pr": c.start_at.pr, "abscissa": c.start_at.abscissa},
                {"at": "to", "road": c.road, "pr": c.end_at.pr, "abscissa": c.end_at.abscissa},
            ],
        },
    )


def condition_routes(app: web.Application, ctx: AppContext) -> None:
    storage = ctx.storage
    statement_timeout_ms = ctx.config.database.statement_timeout_ms

    async def set_condition(request: web.Request, who: Principal) -> web.Response:
        body = await read_json(request, '{"road": "RD986", "from": {"pr": 20}, "to": {"pr": 30}, "level": "C3"}')
        try:
            entry = ConditionInput.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise BadParameter(
                where,
                str(first.get("input", ""))[:200],
                "see ConditionInput in the OpenAPI document",
                f"{where}: {first['msg']}",
            ) from None
        async with reading(storage.pool, statement_timeout_ms) as conn:
            try:
                line = await roads.section(
                    conn,
                    entry.road,
                    (entry.start_at.pr, entry.start_at.abscissa),
                    (entry.end_at.pr, entry.end_at.abscissa),
                )
            except roads.OffRoad as exc:
                raise BadParameter(
                    "from", f"{entry.road} PR {entry.start_at.pr}", "a section of a road of the referential", str(exc)
                ) from None
        versions = await storage.event_versions(f"{AGENTS_SOURCE}:{section_id(entry)}")
        previous = versions[-1] if versions else None
        if previous is None and entry.level == "C1":
            return json_response({"section": section_id(entry), "level": "C1", "event": None})
        now = datetime.now(UTC)
        record = condition_record(entry, line, now, previous)
        await storage.ensure_source(AGENTS_SOURCE, "agents", "")
        await storage.upsert_events(AGENTS_SOURCE, [record], seen_at=now, author=who.author)
        event = (await storage.event_versions(f"{AGENTS_SOURCE}:{record.external_id}"))[-1]
        return json_response(
            {"section": section_id(entry), "level": entry.level, "event": event.model_dump(mode="json")}
        )

    async def network(_request: web.Request) -> web.Response:
        async with reading(storage.pool, statement_timeout_ms) as conn:
            rows = await condition_events(conn, AGENTS_SOURCE, PREFIX)
        features = [
            {
                "type": "Feature",
                "id": r["id"],
                "geometry": r["geometry"],
                "properties": {
                    "road": r["road"],
                    "level": "C1" if r["status"] == "ended" else r["level"],
                    "updated": r["updated"].astimezone(UTC).isoformat(),
                },
            }
            for r in rows
        ]
        return json_response({"type": "FeatureCollection", "features": features})

    app.router.add_post(f"{API}/road-conditions", authorised(ctx, "editor", set_condition))
    app.router.add_get(f"{API}/road-conditions", public(network))


def condition_paths() -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {
        f"{API}/road-conditions": {
            "get": {
                "summary": "Every section's winter state (C1-C4) as GeoJSON: the coloured network",
                "operationId": "roadConditions",
                "responses": {"200": {"description": "FeatureCollection", "content": {"application/json": {}}}},
            },
            "post": {
                "summary": "Set a section's state (road + PR from/to, C1 normal ... C4 impassable); editor",
                "operationId": "setRoadCondition",
                "security": [{"agentSession": []}, {"agentToken": []}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ConditionInput"}}},
                },
                "responses": {
                    "200": {"description": "the section's event", "content": {"application/json": {}}},
                    "400": {"description": "a field cannot be used", **error},
                    "401": {"description": "not logged in", **error},
                    "403": {"description": "role too low or CSRF token missing", **error},
                },
            },
        }
    }
