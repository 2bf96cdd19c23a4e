"""Temporary counting campaigns uploaded by agents: a CSV checked line by line,
previewed with its errors, then imported as its own source (`campaign-<name>`)
with a quarantine report; its sites join the map, the counts API and the annual
table like any other source's.

The file, UTF-8, `,` or `;` separated, one line per site, direction, vehicle class
and hour:

    site;name;road;pr;abscissa;lon;lat;direction;vehicle_class;hour;count
    C1;RD32 Argelliers;RD32;5;300;;;N;all;2026-03-02 08:00;412

`hour` is the start of the hour in local time (or ISO 8601 with an offset);
`vehicle_class` is all, light or heavy; `name`, `road`, `pr`, `abscissa`, `lon`,
`lat` describe the site (the first line of a site wins). A site given by road + PR
+ abscissa without coordinates is placed with the road referential.

The national "Comptage des mobilités" files (schema v0.2.5: site, channel and
measure CSVs) are also taken, as the parts of one multipart/form-data upload;
each part's kind is told from its header (part names do not matter). The
measure file needs its sites and channels in the same upload, since a measure
names only its channel and a channel its site. Bad lines are reported as
`<kind> line N`; counts of a channel or site missing from the upload are
quarantined at import like any unknown reference.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, get_args
from zoneinfo import ZoneInfo

from aiohttp import BodyPartReader, web
from pydantic import ValidationError

from collectors import comptage_parse
from feed.collect.ingest import Plausibility, Sink
from feed.errors import BadParameter, ParseError
from feed.http.agents import Principal, authorised, json_response
from feed.http.documents import API
from feed.model import ChannelRecord, MeasurementRecord, ParsedItem, Quarantined, SiteRecord, VehicleClass
from feed.roads import normalise_road
from feed.store import roads
from feed.store.storage import RunStats
from feed.store.transactions import reading

if TYPE_CHECKING:
    from feed.http.context import AppContext

__all__ = ["COLUMNS", "Campaign", "campaign_paths", "campaign_routes", "file_kind", "parse_campaign", "parse_comptage"]

COLUMNS = ("site", "name", "road", "pr", "abscissa", "lon", "lat", "direction", "vehicle_class", "hour", "count")
REQUIRED = {"site", "direction", "hour", "count"}
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,40}$")
MAX_LINES = 200_000
PREVIEW_ERRORS = 200
_VEHICLE_CLASSES: dict[str, VehicleClass] = {c: c for c in get_args(VehicleClass)}


@dataclass
class Campaign:
    sites: dict[str, SiteRecord] = field(default_factory=dict)
    channels: dict[str, ChannelRecord] = field(default_factory=dict)
    measurements: list[MeasurementRecord] = field(default_factory=list)
    errors: list[Quarantined] = field(default_factory=list)

    def items(self) -> list[ParsedItem]:
        return [*self.sites.values(), *self.channels.values(), *self.measurements, *self.errors]


def _number(row: dict[str, str], name: str, cast: type) -> Any:
    raw = (row.get(name) or "").strip().replace(",", ".") if cast is float else (row.get(name) or "").strip()
    if not raw:
        return None
    try:
        return cast(raw)
    except ValueError:
        raise ValueError(f"{name} {raw!r} is not a {'number' if cast is float else 'whole number'}") from None


def _hour(raw: str, tz: ZoneInfo) -> datetime:
    try:
        value = datetime.fromisoformat(raw.strip().replace(" ", "T", 1))
    except ValueError:
        raise ValueError(f"hour {raw!r} is not a date and hour such as 2026-03-02 08:00") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    if value.minute or value.second or value.microsecond:
        raise ValueError(f"hour {raw!r} does not start an hour")
    return value


def parse_campaign(data: bytes, tz: ZoneInfo) -> Campaign:
    """Every line becomes a record or an error naming its line and the reason (pure)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"the file is not UTF-8 ({exc})") from None
    sample = text[:2000]
    reader = csv.DictReader(io.StringIO(text), delimiter=";" if sample.count(";") > sample.count(",") else ",")
    missing = REQUIRED - set(reader.fieldnames or [])
    if missing:
        raise ValueError(f"missing columns {', '.join(sorted(missing))}; expected {';'.join(COLUMNS)}")
    out = Campaign()
    seen: set[tuple[str, datetime]] = set()
    for row in reader:
        line = f"line {reader.line_num}"
        if reader.line_num > MAX_LINES:
            raise ValueError(f"more than {MAX_LINES} lines: split the campaign")
        try:
            site_id = (row.get("site") or "").strip()
            direction = (row.get("direction") or "").strip()
            named_class = (row.get("vehicle_class") or "all").strip() or "all"
            vehicle_class = _VEHICLE_CLASSES.get(named_class)
            if vehicle_class is None:
                raise ValueError(f"vehicle_class {named_class!r} is not all, light or heavy")
            if not site_id or not direction:
                raise ValueError("site and direction are required")
            count = _number(row, "count", int)
            if count is None:
                raise ValueError("count is empty")
            start = _hour(row.get("hour") or "", tz)
            channel_id = f"{site_id}:{direction}:{vehicle_class}"
            if (channel_id, start) in seen:
                raise ValueError(f"{channel_id} at {row.get('hour')} is given twice")
            if site_id not in out.sites:
                out.sites[site_id] = SiteRecord(
                    external_id=site_id,
                    name=(row.get("name") or "").strip() or site_id,
                    road=normalise_road(row["road"].strip()) if (row.get("road") or "").strip() else None,
                    pr=_number(row, "pr", int),
                    abscissa=_number(row, "abscissa", int),
                    lon=_number(row, "lon", float),
                    lat=_number(row, "lat", float),
                )
            if channel_id not in out.channels:
                out.channels[channel_id] = ChannelRecord(
                    site_external_id=site_id,
                    external_id=channel_id,
                    direction=direction,
                    vehicle_class=vehicle_class,
                    time_step=3600,
                )
            out.measurements.append(
                MeasurementRecord(channel_external_id=channel_id, start=start, length=3600, count=count)
            )
            seen.add((channel_id, start))
        except (ValueError, ValidationError) as exc:
            reason = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            out.errors.append(
                Quarantined(reason=reason, excerpt=";".join(v or "" for v in row.values())[:500], record_ref=line)
            )
    return out


def file_kind(data: bytes) -> str:
    """ "campaign" (the simple CSV), or the Comptage des mobilités kind ("site",
    "channel", "measure"), told from the header's column names (pure)."""
    header = data.split(b"\n", 1)[0].decode("utf-8-sig", "replace")
    separator = max((";", ",", "\t"), key=header.count)
    names = {n.strip().strip('"').strip().lower() for n in header.split(separator)}
    if names >= REQUIRED:
        return "campaign"
    for kind in ("measure", "channel", "site"):
        if set(comptage_parse.REQUIRED_COLUMNS[kind]) <= names:
            return kind
    raise ValueError(
        f"header {header[:200]!r} is neither a campaign CSV ({';'.join(COLUMNS)}) nor a "
        "Comptage des mobilités site, channel or measure file"
    )


def parse_comptage(files: dict[str, bytes], tz: ZoneInfo) -> Campaign:
    """A campaign from the Comptage des mobilités files keyed by kind (site, channel,
    measure); every bad line becomes an error naming its file kind, line and reason (pure)."""
    missing = {"site", "channel", "measure"} - set(files)
    if missing:
        raise ValueError(
            f"a Comptage des mobilités campaign needs its site, channel and measure files in one "
            f"upload; missing: {', '.join(sorted(missing))}"
        )
    out = Campaign()
    zone = str(tz)

    def add(kind: str, items: comptage_parse.CsvItems[Any]) -> list[Any]:
        good = []
        for item in items:
            if isinstance(item, Quarantined):
                out.errors.append(item.model_copy(update={"record_ref": f"{kind} {item.record_ref}"}))
            else:
                good.append(item)
        return good

    try:
        for site in add("site", comptage_parse.parse_sites(files["site"], source="site")):
            if site.external_id in out.sites:
                out.errors.append(
                    Quarantined(reason=f"site {site.external_id} is given twice", record_ref=f"site {site.external_id}")
                )
            else:
                out.sites[site.external_id] = site
        for channel in add(
            "channel", comptage_parse.parse_channels(files["channel"], source="channel", local_timezone=zone)
        ):
            if channel.external_id in out.channels:
                out.errors.append(
                    Quarantined(
                        reason=f"channel {channel.external_id} is given twice",
                        record_ref=f"channel {channel.external_id}",
                    )
                )
            else:
                out.channels[channel.external_id] = channel
        steps = {c.external_id: c.time_step for c in out.channels.values()}
        seen: set[tuple[str, datetime]] = set()
        measures = comptage_parse.parse_measures(
            files["measure"], source="measure", time_steps=steps, local_timezone=zone
        )
        for m in add("measure", measures):
            if (m.channel_external_id, m.start) in seen:
                out.errors.append(
                    Quarantined(
                        reason=f"{m.channel_external_id} at {m.start.isoformat()} is given twice",
                        record_ref=f"measure {m.channel_external_id}",
                    )
                )
            else:
                seen.add((m.channel_external_id, m.start))
                out.measurements.append(m)
    except ParseError as exc:
        raise ValueError(str(exc)) from None
    if len(out.measurements) + len(out.errors) > MAX_LINES:
        raise ValueError(f"more than {MAX_LINES} lines: split the campaign")
    return out


async def _read_upload(request: web.Request, tz: ZoneInfo, limit: int) -> tuple[Campaign, int]:
    """The campaign of a text/csv body or of a multipart upload of Comptage des
    mobilités files, and the bytes read; a multipart upload is held to `limit`
    bytes in all, as a plain body is by the server."""
    if not request.content_type.startswith("multipart/"):
        data = await request.read()
        kind = file_kind(data) if data.strip() else "campaign"
        if kind != "campaign":
            raise ValueError(
                f"a Comptage des mobilités {kind} file alone: send the site, channel and measure "
                "files together as the parts of one multipart/form-data upload"
            )
        return parse_campaign(data, tz), len(data)
    files: dict[str, bytes] = {}
    size = 0
    # aiohttp raises ValueError for a malformed multipart body: a 400 like any unreadable file
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, BodyPartReader):
            raise ValueError("nested multipart parts are not taken")
        chunks = []
        while chunk := await part.read_chunk():
            size += len(chunk)
            if size > limit:
                raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
            chunks.append(chunk)
        data = b"".join(chunks)  # as sent: a part's Content-Encoding is not undone (no inflating past `limit`)
        kind = file_kind(data)
        if kind == "campaign" or kind in files:
            raise ValueError(
                f"part {part.name!r}: a multipart upload takes one site, one channel and one "
                f"measure file of the Comptage des mobilités schema (this one is a {kind} file)"
            )
        files[kind] = data
    return parse_comptage(files, tz), size


async def _place(conn: Any, campaign: Campaign) -> None:
    """Sites with road + PR + abscissa and no coordinates: placed with the referential.
    A site the referential cannot place is left out: the import then quarantines its
    channels and counts (unknown site), so each of its lines is reported."""
    for site_id, site in list(campaign.sites.items()):
        if site.lon is not None or site.road is None or site.pr is None:
            continue
        try:
            lon, lat = await roads.point(conn, site.road, site.pr, site.abscissa or 0)
        except roads.OffRoad as exc:
            campaign.errors.append(Quarantined(reason=f"site {site_id}: {exc}", record_ref=f"site {site_id}"))
            del campaign.sites[site_id]
            continue
        campaign.sites[site_id] = site.model_copy(update={"lon": lon, "lat": lat})


def campaign_routes(app: web.Application, ctx: AppContext) -> None:
    tz = ZoneInfo(ctx.config.publication.timezone)

    async def upload(request: web.Request, who: Principal) -> web.Response:
        name = request.query.get("name", "")
        if not NAME.match(name):
            raise BadParameter("name", name, "2 to 41 of a-z 0-9 -, e.g. rd32-mars-2026", "name the campaign")
        dry_run = request.query.get("dry_run", "false") == "true"
        try:
            campaign, size = await _read_upload(request, tz, ctx.config.server.max_request_bytes)
        except ValueError as exc:
            raise BadParameter(
                "body",
                request.content_type,
                f"a campaign CSV ({';'.join(COLUMNS)}) or the "
                "site, channel and measure files of the Comptage des mobilités schema as "
                "multipart/form-data",
                str(exc),
            ) from None
        async with reading(ctx.storage.pool, ctx.config.database.statement_timeout_ms) as conn:
            await _place(conn, campaign)
        errors = [{"line": q.record_ref, "reason": q.reason, "excerpt": q.excerpt} for q in campaign.errors]
        summary = {
            "campaign": name,
            "source": f"campaign-{name}",
            "sites": len(campaign.sites),
            "channels": len(campaign.channels),
            "counts": len(campaign.measurements),
            "errors": errors[:PREVIEW_ERRORS],
            "error_count": len(errors),
            "imported": False,
        }
        if dry_run:
            return json_response(summary)
        source = f"campaign-{name}"
        storage = ctx.storage
        await storage.ensure_source(source, "campaign", f"uploaded by {who.author}")
        run_id = await storage.start_run(source)
        sink = Sink(
            storage, source, run_id, Plausibility.from_publication(ctx.config.publication), lambda: datetime.now(UTC)
        )
        await sink.store(campaign.items())
        result = await sink.finish(snapshot=False)
        await storage.finish_run(
            run_id, RunStats(bytes=size, counts=result.counts, quarantined=result.quarantined, complete=True)
        )
        return json_response(
            {
                **summary,
                "imported": True,
                "run_id": run_id,
                "new": result.counts.new,
                "updated": result.counts.updated,
                "quarantined": result.quarantined,
                "uploaded_by": who.author,
            },
            201,
        )

    app.router.add_post(f"{API}/campaigns", authorised(ctx, "editor", upload))


def campaign_paths() -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {
        f"{API}/campaigns": {
            "post": {
                "summary": "Upload a counting campaign: a CSV "
                "(site;name;road;pr;abscissa;lon;lat;direction;vehicle_class;hour;count), "
                "or the site, channel and measure CSVs of the national Comptage des mobilités "
                "schema as the parts of one multipart/form-data upload (each part's kind told from its "
                "header). dry_run=true previews the errors per line; otherwise imports it as the source "
                "campaign-<name>, bad lines quarantined (editor)",
                "operationId": "uploadCampaign",
                "security": [{"agentSession": []}, {"agentToken": []}],
                "parameters": [
                    {
                        "name": "name",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "pattern": NAME.pattern},
                    },
                    {"name": "dry_run", "in": "query", "required": False, "schema": {"type": "boolean"}},
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "text/csv": {"schema": {"type": "string"}},
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "description": "one part per file: the site, channel and measure files, any part names",
                                "additionalProperties": {"type": "string", "format": "binary"},
                            }
                        },
                    },
                },
                "responses": {
                    "200": {"description": "the preview", "content": {"application/json": {}}},
                    "201": {"description": "imported, with the quarantine report", "content": {"application/json": {}}},
                    "400": {"description": "the file cannot be read", **error},
                    "401": {"description": "not logged in", **error},
                    "403": {"description": "role too low or CSRF token missing", **error},
                },
            }
        }
    }
