"""The simulator's HTTP server (`roadfeed simulate`): the simulated Hérault served the
way the real sources serve it, an Opendatasoft Explore v2.1 portal and DATEX II
situation feeds, with an index at `/`, so the real collectors can be pointed at it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timezone
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

from feed.config import PublicationConfig
from feed.simulator.clock import SimClock, _iso
from feed.simulator.datasets import (
    COUNTERS_DATASET,
    EVENTS_DATASET,
    _CountersDataset,
    _EventsDataset,
    _render,
)
from feed.simulator.geography import referential_geojson
from feed.simulator.national import MEASURED_PATH as NATIONAL_MEASURED
from feed.simulator.national import NationalNetwork, add_national_routes
from feed.simulator.odsql import OdsError, _Condition, _odsql_error, parse_order_by, parse_select, parse_where
from feed.simulator.simulation import DEFAULT_SEED, Simulation
from feed.simulator.sources import simulator_sources

__all__ = [
    "DEFAULT_HISTORY_DAYS",
    "SIM_APP_KEY",
    "build_simulator_app",
    "run_simulator",
    "simulator_clock",
]


DEFAULT_HISTORY_DAYS = 30

API_PATH = "/api/explore/v2.1"
MAX_LIMIT = 100
MAX_WINDOW = 10_000
DEFAULT_LIMIT = 10


@dataclass
class _SimState:
    sim: Simulation
    clock: SimClock
    datasets: dict[str, Any]
    api_key: str | None
    publication: PublicationConfig
    history_days: float
    datex_cache: dict[str, tuple[Any, bytes, str]] = field(default_factory=dict)


SIM_APP_KEY = web.AppKey("roadfeed_simulator", _SimState)


def _json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return web.Response(text=text, status=status, content_type="application/json", charset="utf-8", headers=headers)


def _state(request: web.Request) -> _SimState:
    return request.app[SIM_APP_KEY]


def _check_key(request: web.Request, state: _SimState) -> None:
    if state.api_key is None:
        return
    header = request.headers.get("Authorization", "")
    given = header[7:].strip() if header[:7].lower() == "apikey " else request.query.get("apikey", "")
    if not (given and hmac.compare_digest(given.encode(), state.api_key.encode())):
        raise OdsError(
            401,
            "InvalidAPIKeyError" if given else "AuthenticationRequired",
            "A valid API key is required (Authorization: Apikey <key>, or apikey=<key>).",
        )


def _int_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise OdsError(
            400, "InvalidRESTParameterError", f"Invalid value for {name} API parameter: {raw!r} is not an integer."
        ) from None


def _timezone(request: web.Request) -> ZoneInfo | timezone:
    name = request.query.get("timezone")
    if not name or name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise OdsError(400, "InvalidRESTParameterError", f"Unknown timezone: {name!r}") from None


def _dataset(request: web.Request, state: _SimState) -> Any:
    name = request.match_info["dataset"]
    dataset = state.datasets.get(name)
    if dataset is None:
        raise OdsError(404, "UnknownDatasetError", f"Unknown dataset: {name}")
    return dataset


@dataclass(frozen=True)
class _Query:
    conditions: list[_Condition]
    order: list[tuple[str, bool]]
    select: list[str] | None  # None: every field
    tz: ZoneInfo | timezone

    def render(self, record: dict[str, Any]) -> dict[str, Any]:
        if self.select is not None:
            record = {k: record.get(k) for k in self.select}
        return _render(record, self.tz)


def _query(request: web.Request, dataset: Any) -> _Query:
    if request.query.get("group_by", "").strip():
        raise _odsql_error("group_by is not supported by the simulator")
    where = request.query.get("where", "")
    conditions = parse_where(where, dataset.fields) if where.strip() else []
    order_text = request.query.get("order_by", "")
    order = parse_order_by(order_text, dataset.fields) if order_text.strip() else []
    return _Query(conditions, order, parse_select(request.query.get("select", ""), dataset.fields), _timezone(request))


def _ods_errors(handler: Callable[[web.Request], Any]) -> Callable[[web.Request], Any]:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except OdsError as err:
            return _json_response({"error_code": err.code, "message": err.message}, status=err.status)

    return wrapped


@_ods_errors
async def _records(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    _check_key(request, state)
    dataset = _dataset(request, state)
    limit = _int_param(request, "limit", DEFAULT_LIMIT)
    offset = _int_param(request, "offset", 0)
    if not -1 <= limit <= MAX_LIMIT:
        raise OdsError(
            400,
            "InvalidRESTParameterError",
            f"Invalid value for limit API parameter: {limit} was found but -1 <= limit <= {MAX_LIMIT} is expected.",
        )
    if limit == -1:
        limit = MAX_LIMIT
    if offset < 0:
        raise OdsError(
            400,
            "InvalidRESTParameterError",
            f"Invalid value for offset API parameter: {offset} was found but offset >= 0 is expected.",
        )
    if offset + limit > MAX_WINDOW:
        raise OdsError(
            400,
            "InvalidRESTParameterError",
            f"Invalid value for sum of offset + limit API parameter: {offset + limit} was found but "
            f"<= {MAX_WINDOW} is expected.",
        )
    query = _query(request, dataset)
    selection = dataset.select(state.clock.now(), query.conditions, query.order, offset, limit)
    results = [query.render(r) for r in selection.records]
    return _json_response({"total_count": selection.total, "results": results})


@_ods_errors
async def _exports_json(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    _check_key(request, state)
    dataset = _dataset(request, state)
    limit = _int_param(request, "limit", -1)
    offset = _int_param(request, "offset", 0)
    if limit < -1 or offset < 0:
        raise OdsError(400, "InvalidRESTParameterError", "limit must be >= -1 and offset >= 0.")
    query = _query(request, dataset)
    selection = dataset.select(state.clock.now(), query.conditions, query.order, offset, None if limit == -1 else limit)
    if offset:
        size = limit if limit >= 0 else max(selection.total - offset, 0)
        if offset + size > MAX_WINDOW:
            raise OdsError(
                400,
                "InvalidRESTParameterError",
                f"Invalid value for sum of offset + limit API parameter: {offset + size} was found "
                f"but <= {MAX_WINDOW} is expected.",
            )
    response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
    response.enable_chunked_encoding()
    response.enable_compression()  # gzip or deflate when the client accepts it
    await response.prepare(request)
    await response.write(b"[")
    separator = ""
    batch: list[str] = []
    for record in selection.records:
        batch.append(json.dumps(query.render(record), ensure_ascii=False, separators=(",", ":")))
        if len(batch) >= 500:
            await response.write((separator + ",".join(batch)).encode())
            separator, batch = ",", []
            await asyncio.sleep(0)  # let other requests in between chunks
    if batch:
        await response.write((separator + ",".join(batch)).encode())
    await response.write(b"]")
    await response.write_eof()
    return response


@_ods_errors
async def _dataset_info(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    _check_key(request, state)
    dataset = _dataset(request, state)
    return _json_response(_describe_dataset(dataset, str(request.url.origin())))


def _describe_dataset(dataset: Any, base: str) -> dict[str, Any]:
    url = f"{base}{API_PATH}/catalog/datasets/{dataset.id}"
    return {
        "dataset_id": dataset.id,
        "title": dataset.title,
        "time_field": dataset.time_field,
        "fields": [{"name": n, "type": t} for n, t in dataset.fields.items()],
        "records_url": f"{url}/records",
        "exports_url": f"{url}/exports/json",
    }


@_ods_errors
async def _catalog(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    _check_key(request, state)
    base = str(request.url.origin())
    results = [_describe_dataset(d, base) for d in state.datasets.values()]
    return _json_response({"total_count": len(results), "results": results})


def _renderers() -> dict[str, Callable[..., bytes]]:
    # Imported when first needed: the ODS side works even if an exporter is broken.
    from exporters import datex2_v2, datex2_v3  # noqa: PLC0415 - see above

    return {"v2": datex2_v2.render_situations, "v3": datex2_v3.render_situations}


def _http_date(value: datetime) -> str:
    return format_datetime(value.astimezone(UTC).replace(microsecond=0), usegmt=True)


def _datex_handler(version: str) -> Callable[[web.Request], Any]:
    @_ods_errors
    async def handler(request: web.Request) -> web.StreamResponse:
        state = _state(request)  # public feeds: no API key, like ours
        events, changed = state.sim.snapshot(state.clock.now())
        changed = changed.replace(microsecond=0)
        key = (changed, tuple((e.id, e.version) for e in events))
        cached = state.datex_cache.get(version)
        if cached is None or cached[0] != key:
            stored = [e.stored_event(last_seen=changed) for e in events]
            body = _renderers()[version](stored, state.publication, changed)
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            cached = state.datex_cache[version] = (key, body, etag)
        _, body, etag = cached
        headers = {
            "ETag": etag,
            "Last-Modified": _http_date(changed),
            "Cache-Control": "no-cache",
            "X-Simulated-Time": _iso(state.clock.now(), UTC),
        }
        if _not_modified(request, etag, changed):
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, headers=headers, content_type="application/xml", charset="utf-8")

    return handler


def _not_modified(request: web.Request, etag: str, changed: datetime) -> bool:
    inm = request.headers.get("If-None-Match")
    if inm is not None:
        tags = [t.strip() for t in inm.split(",")]
        return "*" in tags or etag in tags or f"W/{etag}" in tags
    ims = request.headers.get("If-Modified-Since")
    if ims:
        try:
            since = parsedate_to_datetime(ims)
        except (TypeError, ValueError):
            return False
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        return changed <= since
    return False


async def _index(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    base = str(request.url.origin())
    return _json_response(
        {
            "name": "roadfeed simulator: a simulated Hérault (invented data, real protocols)",
            "seed": state.sim.seed,
            "clock": state.clock.describe(),
            "history_days": state.history_days,
            "api_key_required": state.api_key is not None,
            "sites": len(state.sim.sites),
            "channels": len(state.sim.channels),
            "datasets": [_describe_dataset(d, base) for d in state.datasets.values()],
            "feeds": {
                "datex2_v3_situations": f"{base}/datex2/v3/situations.xml",
                "datex2_v2_situations": f"{base}/datex2/v2/situations.xml",
            },
            "sources": simulator_sources(base, datex2=True),
        }
    )


def build_simulator_app(
    seed: int = DEFAULT_SEED,
    speed: float = 1.0,
    history_days: float = DEFAULT_HISTORY_DAYS,
    *,
    start: datetime | None = None,
    clock: SimClock | None = None,
    api_key: str | None = None,
    publication: PublicationConfig | None = None,
) -> web.Application:
    """The simulator's web application (Opendatasoft v2.1 + DATEX II + an index at `/`).

    Pass `clock` to drive time yourself (tests); otherwise a `SimClock(start, speed)`.
    The clock is `app[SIM_APP_KEY].clock`.
    """
    if history_days < 0:
        raise ValueError("history_days must be >= 0")
    clock = clock or SimClock(start, speed)
    sim = Simulation(seed)
    datasets = {
        COUNTERS_DATASET: _CountersDataset(sim, clock, history_days),
        EVENTS_DATASET: _EventsDataset(sim, clock),
    }
    app = web.Application()
    app[SIM_APP_KEY] = _SimState(sim, clock, datasets, api_key, publication or PublicationConfig(), history_days)
    ds = API_PATH + "/catalog/datasets"
    app.router.add_get("/", _index)
    app.router.add_get(ds, _catalog)
    app.router.add_get(ds + "/{dataset}", _dataset_info)
    app.router.add_get(ds + "/{dataset}/records", _records)
    app.router.add_get(ds + "/{dataset}/exports/json", _exports_json)
    app.router.add_get("/datex2/v3/situations.xml", _datex_handler("v3"))
    app.router.add_get("/datex2/v2/situations.xml", _datex_handler("v2"))
    app.router.add_get("/referential/roads.geojson", _referential)
    return app


async def _referential(_request: web.Request) -> web.Response:
    return web.Response(body=referential_geojson(), content_type="application/geo+json")


def simulator_clock(app: web.Application) -> SimClock:
    return app[SIM_APP_KEY].clock


async def run_simulator(
    host: str = "127.0.0.1",
    port: int = 8081,
    seed: int = DEFAULT_SEED,
    speed: float = 1.0,
    history_days: float = DEFAULT_HISTORY_DAYS,
    *,
    api_key: str | None = None,
    start: datetime | None = None,
    announce: Callable[[str], None] = print,
    national: NationalNetwork | None = None,
) -> None:
    """Serve the simulator until cancelled (with `national`, its national scenario too)."""
    app = build_simulator_app(seed, speed, history_days, start=start, api_key=api_key)
    if national is not None:
        add_national_routes(app, national, simulator_clock(app))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = port
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            bound = sockets[0].getsockname()[1]
        clock = simulator_clock(app)
        shown = f"[{host}]" if ":" in host else host
        announce(
            f"roadfeed simulator on http://{shown}:{bound}/ (seed {seed}, speed x{speed:g}, "
            f"simulated now {_iso(clock.now(), UTC)}, {history_days:g} days of history)"
            + (
                f"; national scenario: {national.sites} sites every {national.step} s at {NATIONAL_MEASURED}"
                if national is not None
                else ""
            )
        )
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
