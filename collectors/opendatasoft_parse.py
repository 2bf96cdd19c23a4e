"""Parse Opendatasoft Explore API v2.1 responses into domain records, and build its URLs.

A dataset's fields are named by its publisher, so a *mapping* (from the source's
`options.mapping` table) says which field holds what: `CounterMapping` for counting
datasets (→ sites, channels, measurements), `EventMapping` for road-event datasets
(→ events). Pure: bytes or byte chunks in, records out.

A source's configuration names the dataset's fields (`mapping_from_options`):

    [[sources]]
    id = "paris-comptages"
    kind = "opendatasoft"
    url = "https://opendata.paris.fr"
    [sources.options]
    dataset = "comptages-routiers-permanents"
    dataset_type = "counters"            # or "events" (EventMapping)
    [sources.options.mapping]
    site_id = "iu_ac"
    time = "t_1h"
    count = "q"
    occupancy = "k"
    site_name = "libelle"
    quality = "etat_barre"
    quality_map = { Invalide = "invalid" }

Paging: the API refuses `offset + limit > 10000` and `limit > 100`, so a collector
pages by watermark on the time field, not by offset. Records sharing the watermark
timestamp can outnumber a page (Paris publishes ~3 000 arcs per hour, all with the
same `t_1h`), and ODSQL has no `>` on text to break ties on an id. So the cursor is
(watermark, how many records at the watermark were already read): the next query
is `time >= watermark`, ordered by time then id, with `offset` = that number.
`RecordsPage.cursor_after()` computes it; `records_url()` turns it into a URL.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import math
import re
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import IO, Any, get_args
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from collectors.comptage_parse import byte_chunks, classify_vehicles
from feed.errors import ConfigError, InputError, ParseError
from feed.model import (
    DATEX_RECORD_TYPES,
    ChannelRecord,
    EventRecord,
    EventStatus,
    EventType,
    Geometry,
    MeasurementRecord,
    ParsedItem,
    Quality,
    Quarantined,
    Severity,
    SiteRecord,
    VehicleClass,
    departement_of,
)

__all__ = [
    "CounterMapping",
    "EventMapping",
    "ExportItems",
    "MappingError",
    "RecordsPage",
    "RecordsStream",
    "counter_mapping_from_options",
    "event_mapping_from_options",
    "exports_url",
    "mapping_from_options",
    "parse_export_json",
    "parse_ods_error",
    "parse_records_page",
    "parse_records_stream",
    "records_url",
]

API_PATH = "/api/explore/v2.1"
MAX_LIMIT = 100
MAX_WINDOW = 10_000  # offset + limit
MAX_COUNT = 2**31 - 1
MAX_EXCERPT = 500
CHUNK_SIZE = 1 << 16
MAX_ITEM = 16 << 20  # one exported record larger than this is refused

_EVENT_TYPES: dict[str, EventType] = {t: t for t in get_args(EventType)}
_SEVERITIES: dict[str, Severity] = {s: s for s in get_args(Severity)}
_STATUSES: dict[str, EventStatus] = {s: s for s in get_args(EventStatus)}


# --------------------------------------------------------------------------- mappings


class MappingError(ConfigError, ValueError):
    """A source's options do not describe a usable mapping; the message names the key."""


class _Mapping(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: str = "Europe/Paris"  # for date values without an offset (ODS `date` fields)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v


class CounterMapping(_Mapping):
    """Which fields of a counting dataset hold what. Values are field names."""

    site_id: str
    time: str  # start of the interval
    count: str
    direction: str | None = None
    direction_name: str | None = None  # the direction's name, e.g. "vers Béziers"
    vehicle_class: str | None = None
    vehicle_class_map: dict[str, VehicleClass] = Field(default_factory=dict)  # source label → class
    speed: str | None = None  # km/h
    occupancy: str | None = None  # percent
    geo_point: str | None = "geo_point_2d"
    site_name: str | None = None
    road: str | None = None
    channel_id: str | None = None  # None: "<site>[:<direction>][:<vehicle class>]"
    interval_seconds: int = Field(default=3600, gt=0, le=86400)
    length_field: str | None = None  # a field giving each interval's length in seconds
    quality: str | None = None
    quality_map: dict[str, Quality] = Field(default_factory=dict)  # e.g. {"Invalide": "invalid"}
    mobility_type: str = "car"
    site_metadata: list[str] = Field(default_factory=list)  # fields copied into SiteRecord.metadata

    @field_validator("interval_seconds")
    @classmethod
    def _divides_day(cls, v: int) -> int:
        if 86400 % v:
            raise ValueError("must divide a day (e.g. 300, 900, 3600, 86400)")
        return v

    @property
    def time_field(self) -> str:
        return self.time


class EventMapping(_Mapping):
    """Which fields of a road-event dataset hold what. Values are field names."""

    id: str
    type: str | None = None
    type_map: dict[str, EventType] = Field(default_factory=dict)  # source label → our type
    default_type: EventType = "other"
    start: str | None = None  # planned start
    end: str | None = None  # planned end
    actual_start: str | None = None
    actual_end: str | None = None
    road: str | None = None
    direction: str | None = None
    geometry: str | None = "geo_shape"
    geo_point: str | None = "geo_point_2d"  # used when `geometry` is empty or unusable
    description: str | None = None
    description_language: str = "fr"
    severity: str | None = None
    severity_map: dict[str, Severity] = Field(default_factory=dict)
    status: str | None = None
    status_map: dict[str, EventStatus] = Field(default_factory=dict)
    updated: str | None = None
    detour: str | None = None
    lanes: str | None = None
    # French PR + abscissa ("12+345", or a PR number) of a point event or of a
    # section's start, and of its end; with the commune's INSEE code for the
    # département. They are what DATEX II v2.3 consumers locate a road number by.
    pr_from: str | None = None
    pr_to: str | None = None
    insee: str | None = None

    @property
    def time_field(self) -> str | None:
        return self.updated


def _mapping_error(err: ValidationError, prefix: str) -> MappingError:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        key = f"{prefix}.{loc}" if loc else prefix
        if e["type"] == "missing":
            lines.append(f"{key}: missing (the name of the dataset field)")
        elif e["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key")
        else:
            lines.append(f"{key} = {e.get('input')!r}: {e['msg']}")
    return MappingError("; ".join(lines))


def _mapping_table(options: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    table = options.get(key)
    if table is None:
        raise MappingError(f"options.{key}: missing (a table naming the dataset's fields)")
    if not isinstance(table, Mapping):
        raise MappingError(f"options.{key} = {table!r}: expected a table")
    return table


def counter_mapping_from_options(options: Mapping[str, Any], key: str = "mapping") -> CounterMapping:
    """`[sources.options.mapping]` of a counting source, e.g. site_id = "iu_ac"."""
    try:
        return CounterMapping.model_validate(dict(_mapping_table(options, key)))
    except ValidationError as err:
        raise _mapping_error(err, f"options.{key}") from None


def event_mapping_from_options(options: Mapping[str, Any], key: str = "mapping") -> EventMapping:
    """`[sources.options.mapping]` of an event source, e.g. id = "identifiant"."""
    try:
        return EventMapping.model_validate(dict(_mapping_table(options, key)))
    except ValidationError as err:
        raise _mapping_error(err, f"options.{key}") from None


def mapping_from_options(options: Mapping[str, Any]) -> CounterMapping | EventMapping:
    """The mapping chosen by `options.dataset_type` ("counters" or "events")."""
    kind = options.get("dataset_type")
    if kind == "counters":
        return counter_mapping_from_options(options)
    if kind == "events":
        return event_mapping_from_options(options)
    raise MappingError(f'options.dataset_type = {kind!r}: expected "counters" or "events"')


# --------------------------------------------------------------------------- values


class _Bad(InputError, ValueError):
    """One record is refused; the message becomes the Quarantined reason."""


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list, bool)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def _field_text(rec: Mapping[str, Any], name: str | None) -> str | None:
    """The text of an optional field: absent or empty is None; a list, a table or a
    boolean where a text is expected refuses the record (it is not coerced into data)."""
    if name is None:
        return None
    value = rec.get(name)
    if isinstance(value, (dict, list, bool)):
        raise _Bad(f"{name} {_short(value)} is not a text")
    return _text(value)


def _number(value: Any, name: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise _Bad(f"{name} {value!r} is not a number")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip().replace(",", "."))
        except ValueError:
            raise _Bad(f"{name} {value!r} is not a number") from None
    else:
        raise _Bad(f"{name} {_short(value)} is not a number")
    if not math.isfinite(number):
        raise _Bad(f"{name} {value!r} is not a finite number")
    return number


def _datetime(value: Any, name: str, zone: ZoneInfo) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _Bad(f"{name} {_short(value)} is not a date")
    text = value.strip()
    if re.fullmatch(r"\d{4}/\d{2}/\d{2}", text):
        text = text.replace("/", "-")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise _Bad(f"{name} {value!r} is not an ISO 8601 date") from None
    if parsed.tzinfo is not None:
        return parsed
    aware = parsed.replace(tzinfo=zone)
    if aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != parsed:
        raise _Bad(f"{name} {value!r} does not exist in {zone.key}")
    if aware.replace(fold=1).utcoffset() != aware.utcoffset():
        raise _Bad(f"{name} {value!r} is ambiguous in {zone.key}")
    return aware


def _point(value: Any) -> tuple[float, float] | None:
    """(lon, lat) of an ODS geo_point_2d: {"lon", "lat"} (v2.1), or [lat, lon] / "lat,lon" (older)."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, Mapping):
            lon, lat = float(value["lon"]), float(value["lat"])
        elif isinstance(value, (list, tuple)) and len(value) == 2:
            lat, lon = float(value[0]), float(value[1])
        elif isinstance(value, str) and value.count(",") == 1:
            lat, lon = (float(p) for p in value.split(","))
        else:
            raise _Bad(f"geo point {_short(value)} is not a lon/lat pair")
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, _Bad):
            raise
        raise _Bad(f"geo point {_short(value)} is not a lon/lat pair") from None
    if not (-180 <= lon <= 180 and -90 <= lat <= 90) or not (math.isfinite(lon) and math.isfinite(lat)):
        raise _Bad(f"geo point lon={lon}, lat={lat} is outside WGS 84 ranges")
    return lon, lat


def _geometry(value: Any) -> Geometry | None:
    """A Point or LineString from an ODS geo_shape (a GeoJSON Feature or geometry).

    A MultiLineString whose parts join end to start is merged into one LineString;
    other shapes give None (the caller then falls back to the geo point).
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise _Bad(f"geometry {_short(value)} is not GeoJSON") from None
    if not isinstance(value, Mapping):
        raise _Bad(f"geometry {_short(value)} is not a GeoJSON object")
    if value.get("type") == "Feature":
        value = value.get("geometry")
        if not isinstance(value, Mapping):
            return None
    kind, coords = value.get("type"), value.get("coordinates")
    if kind == "MultiLineString" and isinstance(coords, list) and coords:
        parts = [p for p in coords if isinstance(p, list) and p]
        if not parts:
            return None
        merged = list(parts[0])
        for part in parts[1:]:
            if part[0] != merged[-1]:
                return None
            merged.extend(part[1:])
        kind, coords = "LineString", merged
    if kind not in ("Point", "LineString"):
        return None
    try:
        return Geometry(type=kind, coordinates=coords)
    except (ValidationError, TypeError, ValueError) as err:
        raise _Bad(f"geometry: {_first_error(err)}") from None


def _short(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= 80 else text[:80] + "…"


def _excerpt(record: Any) -> str:
    try:
        text = json.dumps(record, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):
        text = repr(record)
    return text if len(text) <= MAX_EXCERPT else text[:MAX_EXCERPT] + "…"


def _first_error(err: Exception) -> str:
    if isinstance(err, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}" for e in err.errors())
    return str(err)


def _lookup(table: Mapping[str, Any], label: str) -> Any:
    if label in table:
        return table[label]
    folded = label.casefold()
    for key, value in table.items():
        if key.casefold() == folded:
            return value
    return None


# --------------------------------------------------------------------------- conversion


@dataclass
class _State:
    """What one parse has already yielded (sites and channels are yielded once)."""

    sites: set[str] = field(default_factory=set)
    channels: set[str] = field(default_factory=set)
    watermark: datetime | None = None
    at_watermark: int = 0
    held: bool = False  # a record after `not_after` was read: the cursor stops before it

    def saw_time(self, t: datetime | None, not_after: datetime | None) -> None:
        if t is None:
            return
        if not_after is not None and t > not_after:
            self.held = True  # may become true later: the next poll must read it again
            return
        if self.watermark is None or t > self.watermark:
            self.watermark, self.at_watermark = t, 1
        elif t == self.watermark:
            self.at_watermark += 1


_SEEN_LIMIT = 50_000  # sites and channels remembered as yielded; past it, they are yielded again


class _Converter:
    def __init__(
        self, mapping: CounterMapping | EventMapping, now: datetime | None, not_after: datetime | None = None
    ) -> None:
        if now is not None and now.tzinfo is None:
            raise ValueError("now must carry a timezone")
        self.mapping = mapping
        self.zone = ZoneInfo(mapping.timezone)
        self.now = now
        self.not_after = not_after
        self.state = _State()

    def convert(self, record: Any) -> list[ParsedItem]:
        """The items of one ODS record; any refusal quarantines the whole record.

        A quarantined record is referred to by its id (and time) when it has them, not
        by its position, so that the same record seen again is recognised.
        """
        if not isinstance(record, dict):
            return [Quarantined(reason="record is not a JSON object", excerpt=_excerpt(record))]
        key = self.mapping.site_id if isinstance(self.mapping, CounterMapping) else self.mapping.id
        time_field = self.mapping.time_field
        ref = None
        if isinstance(record.get(key), str | int) and _text(record.get(key)) is not None:
            ref = f"{key}={_text(record.get(key))}"
            if isinstance(self.mapping, CounterMapping) and isinstance(record.get(time_field), str):
                ref += f" {time_field}={record[time_field]}"
        if time_field is not None:
            with contextlib.suppress(_Bad):  # reported below, with the record
                self.state.saw_time(_datetime(record.get(time_field), time_field, self.zone), self.not_after)
        if len(self.state.sites) > _SEEN_LIMIT or len(self.state.channels) > _SEEN_LIMIT:
            self.state.sites.clear()
            self.state.channels.clear()
        try:
            if isinstance(self.mapping, CounterMapping):
                return self._counter(record, self.mapping)
            return [self._event(record, self.mapping)]
        except (_Bad, ValidationError, ValueError, OverflowError) as err:
            return [Quarantined(reason=_first_error(err), excerpt=_excerpt(record), record_ref=ref)]

    # -- counters

    def _counter(self, rec: dict[str, Any], m: CounterMapping) -> list[ParsedItem]:
        site_id = _field_text(rec, m.site_id)
        if site_id is None:
            raise _Bad(f"no site id in field {m.site_id!r}")
        start = _datetime(rec.get(m.time), m.time, self.zone)
        if start is None:
            raise _Bad(f"no time in field {m.time!r}")
        direction = _field_text(rec, m.direction)
        vclass: VehicleClass = "all"
        vlabel = None
        if m.vehicle_class:
            vlabel = _field_text(rec, m.vehicle_class)
            if vlabel is not None:
                vclass = _lookup(m.vehicle_class_map, vlabel) or classify_vehicles([vlabel])
        if m.channel_id:
            channel_id = _field_text(rec, m.channel_id)
            if channel_id is None:
                raise _Bad(f"no channel id in field {m.channel_id!r}")
        else:
            parts = [site_id]
            if m.direction:
                parts.append(direction or "-")
            if m.vehicle_class:
                parts.append(vlabel or "-")
            channel_id = ":".join(parts)

        length = m.interval_seconds
        if m.length_field:
            raw_length = _number(rec.get(m.length_field), m.length_field)
            if raw_length is not None:
                if raw_length <= 0 or raw_length != int(raw_length):
                    raise _Bad(f"{m.length_field} {raw_length} is not a positive whole number of seconds")
                length = int(raw_length)

        count_value = _number(rec.get(m.count), m.count)
        count, estimated = None, False
        if count_value is not None:
            if count_value < 0:
                raise _Bad(f"negative count {count_value:g} in field {m.count!r}")
            if count_value > MAX_COUNT:
                raise _Bad(f"count {count_value:g} in field {m.count!r} is out of range")
            count = round(count_value)
            estimated = count != count_value
        speed = _number(rec.get(m.speed), m.speed) if m.speed else None
        occupancy = _number(rec.get(m.occupancy), m.occupancy) if m.occupancy else None

        quality: Quality | None = None
        if m.quality:
            label = _field_text(rec, m.quality)
            if label is not None:
                quality = _lookup(m.quality_map, label)
        if quality is None:
            quality = "missing" if count is None else "estimated" if estimated else "observed"

        items: list[ParsedItem] = []
        if site_id not in self.state.sites:
            point = _point(rec.get(m.geo_point)) if m.geo_point else None
            metadata = {k: rec[k] for k in m.site_metadata if rec.get(k) not in (None, "")}
            items.append(
                SiteRecord(
                    external_id=site_id,
                    name=_field_text(rec, m.site_name) or "",
                    road=_field_text(rec, m.road),
                    lon=point[0] if point else None,
                    lat=point[1] if point else None,
                    metadata=metadata,
                )
            )
        if channel_id not in self.state.channels:
            items.append(
                ChannelRecord(
                    site_external_id=site_id,
                    external_id=channel_id,
                    direction=direction,
                    direction_name=_field_text(rec, m.direction_name),
                    vehicle_class=vclass,
                    mobility_type=m.mobility_type,
                    time_step=length if 86400 % length == 0 else m.interval_seconds,
                )
            )
        items.append(
            MeasurementRecord(
                channel_external_id=channel_id,
                start=start,
                length=length,
                count=count,
                speed=speed,
                occupancy=occupancy,
                quality=quality,
            )
        )
        # only now: a refused record must not hide the site/channel from a later one
        self.state.sites.add(site_id)
        self.state.channels.add(channel_id)
        return items

    # -- events

    def _event(self, rec: dict[str, Any], m: EventMapping) -> EventRecord:
        event_id = _field_text(rec, m.id)
        if event_id is None:
            raise _Bad(f"no event id in field {m.id!r}")
        label = _field_text(rec, m.type)
        event_type: EventType = m.default_type
        if label is not None:
            event_type = (
                _lookup(m.type_map, label)
                or DATEX_RECORD_TYPES.get(label)
                or _EVENT_TYPES.get(label.lower())
                or m.default_type
            )

        def when(name: str | None) -> datetime | None:
            return _datetime(rec.get(name), name, self.zone) if name else None

        planned_start, planned_end = when(m.start), when(m.end)
        actual_start, actual_end = when(m.actual_start), when(m.actual_end)
        if planned_start and planned_end and planned_end < planned_start:
            raise _Bad(f"{m.end} is before {m.start}")

        severity: Severity = "unknown"
        if m.severity:
            raw = _field_text(rec, m.severity)
            if raw is not None:
                severity = _lookup(m.severity_map, raw) or _SEVERITIES.get(raw.lower(), "unknown")

        status: EventStatus | None = None
        if m.status:
            raw = _field_text(rec, m.status)
            if raw is not None:
                status = _lookup(m.status_map, raw) or _STATUSES.get(raw.lower())
        if status is None:
            status = self._status_from_times(planned_start or actual_start, actual_end or planned_end)

        geometry = None
        if m.geometry and rec.get(m.geometry) not in (None, ""):
            geometry = _geometry(rec.get(m.geometry))
        if geometry is None and m.geo_point:
            point = _point(rec.get(m.geo_point))
            if point is not None:
                geometry = Geometry(type="Point", coordinates=list(point))

        descriptions = {}
        text = _field_text(rec, m.description)
        if text:
            descriptions[m.description_language] = text

        road = _field_text(rec, m.road)
        return EventRecord(
            external_id=event_id,
            type=event_type,
            subtype=label,
            status=status,
            severity=severity,
            planned_start=planned_start,
            planned_end=planned_end,
            actual_start=actual_start,
            actual_end=actual_end,
            road=road,
            direction=_field_text(rec, m.direction),
            lanes_affected=_field_text(rec, m.lanes),
            geometry=geometry,
            descriptions=descriptions,
            detour=_field_text(rec, m.detour),
            location_refs=_pr_refs(rec, m, road),
            source_updated=when(m.updated),
        )

    def _status_from_times(self, start: datetime | None, end: datetime | None) -> EventStatus:
        """Without a status field: planned/active/ended against `now`; active if no `now`."""
        if self.now is None:
            return "active"
        if end is not None and end <= self.now:
            return "ended"
        if start is not None and start > self.now:
            return "planned"
        return "active"


_PR = re.compile(r"^\s*(?P<pr>\d{1,4})\s*(?:\+\s*(?P<abscissa>\d{1,5})\s*)?$")


def _pr(value: Any, name: str) -> tuple[int, int] | None:
    """PR and abscissa in metres from "12+345", "12" or 12."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value, 0
    match = _PR.match(value) if isinstance(value, str) else None
    if match is None:
        raise _Bad(f"{name} = {_short(value)}: expected a PR and abscissa such as 12+345")
    return int(match["pr"]), int(match["abscissa"] or 0)


def _pr_refs(rec: dict[str, Any], m: EventMapping, road: str | None) -> dict[str, Any]:
    """`location_refs` in the shape the DATEX II parser gives (see exporters.datex2_record.pr_reference)."""
    insee = _field_text(rec, m.insee)
    start = _pr(rec.get(m.pr_from), m.pr_from) if m.pr_from else None
    end = _pr(rec.get(m.pr_to), m.pr_to) if m.pr_to else None
    places = [("point", start)] if end is None else [("from", start), ("to", end)]
    departement = departement_of(insee)
    prs = [
        {"at": at, "road": road, "pr": pr[0], "abscissa": pr[1], "departement": departement}
        for at, pr in places
        if pr is not None and road
    ]
    refs: dict[str, Any] = {}
    if prs:
        refs["pr"] = prs
    if insee:
        refs["insee"] = insee
    return refs


# --------------------------------------------------------------------------- records pages


@dataclass(frozen=True)
class RecordsPage:
    """One `/catalog/datasets/{id}/records` response, converted."""

    total_count: int | None
    result_count: int  # records in this page, accepted or not
    sites: list[SiteRecord]
    channels: list[ChannelRecord]
    measurements: list[MeasurementRecord]
    events: list[EventRecord]
    quarantined: list[Quarantined]
    watermark: datetime | None  # greatest time-field value in the page (up to `not_after`)
    at_watermark: int  # records of the page whose time equals `watermark`
    held: bool = False  # the page has a record after `not_after`: read no further pages

    def cursor_after(self, watermark: datetime | None, seen_at_watermark: int = 0) -> tuple[datetime | None, int]:
        """The (watermark, seen_at_watermark) to query next, given those this page was queried with."""
        return _cursor_after(self.watermark, self.at_watermark, watermark, seen_at_watermark)


def _cursor_after(
    page_watermark: datetime | None, page_at: int, watermark: datetime | None, seen_at_watermark: int
) -> tuple[datetime | None, int]:
    if page_watermark is None:
        return watermark, seen_at_watermark
    if watermark is not None and page_watermark == watermark:
        return watermark, seen_at_watermark + page_at
    if watermark is not None and page_watermark < watermark:
        return watermark, seen_at_watermark  # a page behind the cursor moves nothing
    return page_watermark, page_at


def parse_records_page(
    data: bytes,
    mapping: CounterMapping | EventMapping,
    *,
    source: str = "opendatasoft",
    now: datetime | None = None,
    not_after: datetime | None = None,
) -> RecordsPage:
    """Convert a whole records response at once (see `parse_records_stream`)."""
    stream = parse_records_stream(data, mapping, source=source, now=now, not_after=not_after)
    sites, channels, measurements, events, quarantined = [], [], [], [], []
    for item in stream:
        if isinstance(item, MeasurementRecord):
            measurements.append(item)
        elif isinstance(item, EventRecord):
            events.append(item)
        elif isinstance(item, SiteRecord):
            sites.append(item)
        elif isinstance(item, ChannelRecord):
            channels.append(item)
        else:
            quarantined.append(item)
    return RecordsPage(
        total_count=stream.total_count,
        result_count=stream.result_count,
        sites=sites,
        channels=channels,
        measurements=measurements,
        events=events,
        quarantined=quarantined,
        watermark=stream.watermark,
        at_watermark=stream.at_watermark,
        held=stream.held,
    )


# --------------------------------------------------------------------------- streaming JSON


class _JsonReader:
    """A records response (an object with a `results` array) or an export (an array),
    decoded a chunk at a time: memory holds one record, not the body.

    `json.JSONDecoder.raw_decode` is tried on the buffered text; when it fails at the
    end of the buffer (a value cut by the chunk boundary) more text is read.
    """

    def __init__(self, chunks: Iterator[bytes], source: str) -> None:
        self._chunks = chunks
        self._source = source
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._json = json.JSONDecoder()
        self._buf = ""
        self._pos = 0
        self._eof = False
        self.consumed = 0  # elements read

    def _error(self, reason: str) -> ParseError:
        return ParseError(self._source, reason)

    def _fill(self) -> bool:
        if self._eof:
            return False
        try:
            chunk = next(self._chunks)
            text = self._utf8.decode(chunk)
        except StopIteration:
            self._eof = True
            try:
                text = self._utf8.decode(b"", final=True)
            except UnicodeDecodeError:
                raise self._error("not valid JSON: not valid UTF-8 (truncated character)") from None
        except UnicodeDecodeError as err:
            raise self._error(f"not valid JSON: not valid UTF-8 ({err.reason})") from None
        self._buf = self._buf[self._pos :] + text
        self._pos = 0
        return True

    def _peek(self) -> str | None:
        """The next non-space character (not consumed), or None at the end of input."""
        while True:
            buf, pos = self._buf, self._pos
            while pos < len(buf) and buf[pos] in " \t\r\n\ufeff":
                pos += 1
            self._pos = pos
            if pos < len(buf):
                return buf[pos]
            if not self._fill():
                return None

    def _value(self, what: str) -> Any:
        while True:
            try:
                value, end = self._json.raw_decode(self._buf, self._pos)
            except RecursionError:
                raise self._error(f"{what}: JSON nested too deeply") from None
            except json.JSONDecodeError as err:
                truncated = err.pos + 16 >= len(self._buf) or err.msg.startswith("Unterminated string")
                if not truncated or self._eof:
                    raise self._error(f"not valid JSON: {what}: invalid JSON: {err.msg}") from None
                if len(self._buf) - self._pos > MAX_ITEM:
                    raise self._error(f"{what} is larger than {MAX_ITEM} bytes") from None
                self._fill()
                continue
            if end == len(self._buf) and not self._eof and self._fill():
                continue  # a number or literal may go on in the next chunk
            self._pos = end
            return value

    def _array(self) -> Iterator[Any]:
        """The elements of the array whose "[" was just consumed."""
        expect_value = None  # None: right after "[" (value or "]" allowed)
        while True:
            c = self._peek()
            if c is None:
                raise self._error(f"not valid JSON: truncated after {self.consumed} records")
            if expect_value is False:  # after a value
                if c == ",":
                    self._pos += 1
                    expect_value = True
                    continue
                if c != "]":
                    raise self._error(
                        f"not valid JSON: after record {self.consumed - 1}: expected ',' or ']', found {c!r}"
                    )
            if c == "]" and expect_value is not True:
                self._pos += 1
                return
            value = self._value(f"record {self.consumed}")
            self.consumed += 1
            expect_value = False
            yield value

    def _end(self) -> None:
        if self._peek() is not None:
            raise self._error("not valid JSON: data after the end of the document")

    def elements(self) -> Iterator[Any]:
        """An export: the elements of one top-level array."""
        first = self._peek()
        if first is None:
            raise self._error("empty export (expected a JSON array)")
        if first != "[":
            if first == "{":
                try:
                    detail = _error_detail(0, json.loads(self._rest()))
                except (ValueError, RecursionError):
                    detail = None
                if detail is not None:
                    raise self._error(f"the response is an error: {detail}")
            raise self._error(f"expected a JSON array of records, found {first!r}")
        self._pos += 1
        yield from self._array()
        self._end()

    def results(self, members: dict[str, Any]) -> Iterator[Any]:
        """A records response: the elements of its `results` array; the object's other
        members (total_count, or an error's message) are put in `members`."""
        first = self._peek()
        if first != "{":
            found = "nothing" if first is None else "a JSON array" if first == "[" else repr(first)
            raise self._error(f'not a records response (no "results" list): found {found}')
        self._pos += 1
        seen_results = False
        while True:
            c = self._peek()
            if c == "}":
                self._pos += 1
                break
            if c != '"':
                raise self._error(f"not valid JSON: expected a member name, found {c!r}")
            key = self._value("member name")
            if self._peek() != ":":
                raise self._error(f"not valid JSON: expected ':' after {_short(key)}")
            self._pos += 1
            if key == "results" and self._peek() == "[":
                self._pos += 1
                seen_results = True
                yield from self._array()
            else:
                if self._peek() is None:
                    raise self._error(f"not valid JSON: truncated at member {_short(key)}")
                value = self._value(f"member {_short(key)}")
                if key in (
                    "total_count",
                    "error_code",
                    "errorcode",
                    "message",
                    "error",
                    "call_limit",
                    "limit_time_unit",
                    "reset_time",
                ):
                    members[key] = value
            c = self._peek()
            if c == ",":
                self._pos += 1
            elif c != "}":
                raise self._error("not valid JSON: the response object is not closed")
        self._end()
        if not seen_results:
            detail = _error_detail(0, members)
            if detail is not None:
                raise self._error(f"the response is an error: {detail}")
            raise self._error(f'not a records response (no "results" list): {_short(members)}')

    def _rest(self, limit: int = 1 << 16) -> str:
        while len(self._buf) - self._pos < limit and self._fill():
            pass
        return self._buf[self._pos : self._pos + limit]


class _Items:
    """Items of a body, converted one record at a time as the body is read.

    `watermark` / `at_watermark` follow the time field over the records read so far
    that are not after `not_after`; `held` says one was.
    """

    def __init__(
        self,
        mapping: CounterMapping | EventMapping,
        now: datetime | None,
        not_after: datetime | None,
        records: Iterator[Any],
    ) -> None:
        self._conv = _Converter(mapping, now, not_after)
        self._records = records
        self._gen = self._items()

    @property
    def watermark(self) -> datetime | None:
        return self._conv.state.watermark

    @property
    def at_watermark(self) -> int:
        return self._conv.state.at_watermark

    @property
    def held(self) -> bool:
        return self._conv.state.held

    def __iter__(self) -> _Items:
        return self

    def __next__(self) -> ParsedItem:
        return next(self._gen)

    def close(self) -> None:
        self._gen.close()

    def _items(self) -> Generator[ParsedItem, None, None]:
        for record in self._records:
            yield from self._conv.convert(record)


class RecordsStream(_Items):
    """Items of one records response; `total_count` once read, `result_count` so far."""

    def __init__(
        self,
        stream: bytes | Iterable[bytes] | IO[bytes],
        mapping: CounterMapping | EventMapping,
        *,
        source: str,
        now: datetime | None,
        not_after: datetime | None,
        chunk_size: int,
    ) -> None:
        self._reader = _JsonReader(byte_chunks(stream, chunk_size), source)
        self._members: dict[str, Any] = {}
        super().__init__(mapping, now, not_after, self._reader.results(self._members))

    @property
    def total_count(self) -> int | None:
        total = self._members.get("total_count")
        return total if isinstance(total, int) and not isinstance(total, bool) else None

    @property
    def result_count(self) -> int:
        return self._reader.consumed

    def cursor_after(self, watermark: datetime | None, seen_at_watermark: int = 0) -> tuple[datetime | None, int]:
        """The (watermark, seen_at_watermark) to query next, given those this page was queried with."""
        return _cursor_after(self.watermark, self.at_watermark, watermark, seen_at_watermark)


def parse_records_stream(
    stream: bytes | Iterable[bytes] | IO[bytes],
    mapping: CounterMapping | EventMapping,
    *,
    source: str = "opendatasoft",
    now: datetime | None = None,
    not_after: datetime | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> RecordsStream:
    """Stream a records response without loading it whole; a record that cannot be
    converted is quarantined, referred to by its id (and time).

    `now` lets an event dataset without a status field get planned/active/ended from
    its times. Records whose time is after `not_after` do not move the cursor (they may
    be refused now and true later). Raises ParseError, when reached, if the body is not
    a records response (bad JSON, an error object, no `results` list).
    """
    return RecordsStream(stream, mapping, source=source, now=now, not_after=not_after, chunk_size=chunk_size)


class ExportItems(_Items):
    """Items of an `/exports/json` body; `record_count` is the number of records read."""

    def __init__(
        self,
        stream: bytes | Iterable[bytes] | IO[bytes],
        mapping: CounterMapping | EventMapping,
        *,
        source: str,
        now: datetime | None,
        not_after: datetime | None,
        chunk_size: int,
    ) -> None:
        self._reader = _JsonReader(byte_chunks(stream, chunk_size), source)
        super().__init__(mapping, now, not_after, self._reader.elements())

    @property
    def record_count(self) -> int:
        return self._reader.consumed


def parse_export_json(
    stream: bytes | Iterable[bytes] | IO[bytes],
    mapping: CounterMapping | EventMapping,
    *,
    source: str = "opendatasoft",
    now: datetime | None = None,
    not_after: datetime | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> ExportItems:
    """Stream an `/exports/json` body (a JSON array of records) without loading it whole.

    Items come in record order: a site and a channel the first time they are seen,
    then the measurement; or the event; or a Quarantined. Broken JSON raises
    ParseError when reached (the records before it have been yielded).
    """
    return ExportItems(stream, mapping, source=source, now=now, not_after=not_after, chunk_size=chunk_size)


# --------------------------------------------------------------------------- errors


def _error_detail(status: int, body: Any) -> str | None:
    """What an ODS error object says, or None if `body` is not one."""
    if not isinstance(body, dict):
        return None
    message = _text(body.get("message")) or _text(body.get("error"))
    code = _text(body.get("error_code")) or _text(body.get("errorcode"))
    if status == 429 or "reset_time" in body or "call_limit" in body:
        text = "API quota exhausted"
        limit, unit = _text(body.get("call_limit")), _text(body.get("limit_time_unit"))
        if limit:
            text += f" ({limit} calls per {unit})" if unit else f" ({limit} calls)"
        reset = _text(body.get("reset_time"))
        if reset:
            text += f"; resets at {reset}"
        return text + (f": {message}" if message else "")
    if not (message or code):
        return None
    label = f"[{code}] " if code else ""
    message = message or "no message"
    if status == 404:
        return f"dataset or resource not found: {label}{message}"
    if code == "ODSQLError":
        return f"the ODSQL query was refused: {label}{message}"
    if status in (401, 403):
        return f"access refused (check the API key): {label}{message}"
    return f"{label}{message}"


def parse_ods_error(status: int, data: bytes) -> str:
    """A one-line message for an ODS error response, for logs and the sources API."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "error"
    head = f"HTTP {status} {phrase}"
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        body = None
    detail = _error_detail(status, body)
    if detail is not None:
        return f"{head}: {detail}"
    text = bytes(data).decode("utf-8", errors="replace")
    text = " ".join(text.split())
    if not text:
        return f"{head} (empty body)"
    if len(text) > 200:
        text = text[:200] + "…"
    return f"{head}: {text!r}"


# --------------------------------------------------------------------------- URLs

_KEYWORDS = frozenset(
    [
        "and",
        "as",
        "asc",
        "avg",
        "by",
        "count",
        "date_format",
        "day",
        "dayofweek",
        "desc",
        "equi",
        "false",
        "group",
        "hour",
        "or",
        "limit",
        "lower",
        "max",
        "millisecond",
        "min",
        "minute",
        "month",
        "not",
        "null",
        "quarter",
        "range",
        "second",
        "select",
        "sum",
        "top",
        "true",
        "upper",
        "where",
        "year",
    ]
)


def _field(name: str) -> str:
    """A field literal, back-quoted when ODSQL requires it (digits only, or a keyword)."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise ValueError(f"{name!r} is not an Opendatasoft field name")
    if name.isdigit() or name.lower() in _KEYWORDS:
        return f"`{name}`"
    return name


def _date_literal(value: datetime) -> str:
    """ODSQL date literal: ISO 8601, here in UTC (`date'2026-06-20T22:00:00Z'`)."""
    if value.tzinfo is None:
        raise ValueError("watermark must carry a timezone")
    utc = value.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += f".{utc.microsecond:06d}"
    return f"date'{text}Z'"


def _dataset_url(base_url: str, dataset_id: str, tail: str) -> str:
    if not dataset_id or "/" in dataset_id:
        raise ValueError(f"{dataset_id!r} is not a dataset id")
    base = base_url.rstrip("/")
    if not base.endswith(API_PATH):
        base += API_PATH
    return f"{base}/catalog/datasets/{quote(dataset_id, safe='')}/{tail}"


def _query(
    *,
    time_field: str | None,
    watermark: datetime | None,
    inclusive: bool,
    order_by_id: str | None,
    extra_where: str | None,
) -> dict[str, str]:
    where = []
    if extra_where:
        where.append(f"({extra_where})")
    if watermark is not None:
        if time_field is None:
            raise ValueError("a watermark needs a time_field")
        where.append(f"{_field(time_field)} {'>=' if inclusive else '>'} {_date_literal(watermark)}")
    params: dict[str, str] = {}
    if where:
        params["where"] = " AND ".join(where)
    order = [f"{_field(time_field)} asc"] if time_field else []
    if order_by_id:
        order.append(f"{_field(order_by_id)} asc")
    if order:
        params["order_by"] = ", ".join(order)
    return params


def records_url(
    base_url: str,
    dataset_id: str,
    *,
    time_field: str,
    watermark: datetime | None,
    seen_at_watermark: int = 0,
    order_by_id: str | None = None,
    limit: int = MAX_LIMIT,
    api_key: str | None = None,
    extra_where: str | None = None,
) -> str:
    """The records query for the page after the cursor (watermark, seen_at_watermark).

    With nothing seen at the watermark: `time > watermark`; otherwise
    `time >= watermark` and `offset=seen_at_watermark`. Ordered by time, then by
    `order_by_id` (give the record's id field so ties come in a stable order).
    `base_url` is the portal (https://data.example.fr) or its /api/explore/v2.1.
    `api_key` goes in the query (`apikey=`); a fetcher that logs URLs should rather
    send the header `Authorization: Apikey <key>` and leave this None.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
    if seen_at_watermark < 0 or (seen_at_watermark and watermark is None):
        raise ValueError("seen_at_watermark needs a watermark and must not be negative")
    if seen_at_watermark + limit > MAX_WINDOW:
        raise ValueError(
            f"{seen_at_watermark} records share the watermark: the API refuses offset + limit > {MAX_WINDOW}"
        )
    params = _query(
        time_field=time_field,
        watermark=watermark,
        inclusive=seen_at_watermark > 0,
        order_by_id=order_by_id,
        extra_where=extra_where,
    )
    params["limit"] = str(limit)
    if seen_at_watermark:
        params["offset"] = str(seen_at_watermark)
    if api_key:
        params["apikey"] = api_key
    return _dataset_url(base_url, dataset_id, "records") + "?" + urlencode(params, quote_via=quote)


def exports_url(
    base_url: str,
    dataset_id: str,
    *,
    time_field: str | None = None,
    watermark: datetime | None = None,
    order_by_id: str | None = None,
    api_key: str | None = None,
    extra_where: str | None = None,
) -> str:
    """The `/exports/json` URL for every record after `watermark` (no paging limit)."""
    params = _query(
        time_field=time_field,
        watermark=watermark,
        inclusive=False,
        order_by_id=order_by_id,
        extra_where=extra_where,
    )
    if api_key:
        params["apikey"] = api_key
    url = _dataset_url(base_url, dataset_id, "exports/json")
    return url + ("?" + urlencode(params, quote_via=quote) if params else "")
