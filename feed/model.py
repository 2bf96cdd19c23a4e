"""Domain records shared by collectors (which produce them), storage and exporters.

Parsers yield these; storage persists them; exporters render the stored forms.
Times are always timezone-aware; coordinates are WGS 84 (EPSG:4326) lon/lat.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Quality = Literal["observed", "estimated", "missing", "invalid"]
EventStatus = Literal["planned", "active", "ended"]
Severity = Literal["unknown", "low", "medium", "high", "highest"]
VehicleClass = Literal["all", "light", "heavy"]

# Our event taxonomy; the source's own type (e.g. DATEX II xsi:type) is kept in `subtype`.
EventType = Literal[
    "roadworks",
    "accident",
    "closure",
    "lane_management",
    "congestion",
    "obstruction",
    "weather",
    "environment",
    "speed_management",
    "rerouting",
    "public_event",
    "other",
]


# Bounds of every value that reaches the database and the feeds. A record outside them is
# quarantined at ingest (its reason names the field), so that no value can be refused later
# by an index (PostgreSQL's ~2.7 kB per index row), a column type (integer, timestamptz)
# or an output format (a year that ISO 8601, JavaScript or Waze cannot carry).
MAX_ID = 255  # external ids: indexed
MAX_SHORT = 100  # roads, directions, codes, subtypes, versions
MAX_NAME = 500  # names, lanes
MAX_TEXT = 10_000  # one description or detour
MAX_LANGUAGES = 20
MAX_JSON = 20_000  # metadata and location references, serialised
MAX_POSITIONS = 10_000  # points of one geometry
MAX_INT = 2**31 - 1  # PostgreSQL integer
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)

Short = Annotated[str, Field(max_length=MAX_SHORT)]
Name = Annotated[str, Field(max_length=MAX_NAME)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
Int4 = Annotated[int, Field(ge=0, le=MAX_INT)]

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # NUL and lone surrogates: no UTF-8 text can hold them


def _check_storable(value: Any, where: str) -> None:
    """Every text, however deep in a record, must be storable as UTF-8 text and jsonb."""
    kind = type(value)
    if kind is str:
        if _UNSTORABLE.search(value):
            raise ValueError(f"{where} contains a NUL character or an unpaired surrogate")
    elif kind is dict:
        for k, v in value.items():
            _check_storable(k, where)
            _check_storable(v, where)
    elif kind is list or kind is tuple:
        for v in value:
            _check_storable(v, where)
    elif kind is float and not math.isfinite(value):
        raise ValueError(f"{where} is not a finite number")


def _bounded_json(value: dict[str, Any]) -> dict[str, Any]:
    try:
        size = len(json.dumps(value, ensure_ascii=False, allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        raise ValueError("is not plain JSON (finite numbers, texts, lists, tables)") from None
    if size > MAX_JSON:
        raise ValueError(f"is {size} characters of JSON, more than {MAX_JSON}")
    return value


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="after")
    def _storable(self) -> Any:
        for name, value in self.__dict__.items():
            if value is not None:
                _check_storable(value, name)
        return self


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _printable_id(value: str) -> str:
    """Ids travel into XML and JSON feeds: control characters have no place there."""
    if _CONTROL.search(value):
        raise ValueError("ids must not contain control characters")
    return value


def _aware(value: datetime | None) -> datetime | None:
    if value is not None:
        if value.tzinfo is None:
            raise ValueError("datetime must carry a timezone")
        if not EARLIEST <= value < LATEST:
            raise ValueError(f"{value.isoformat()} is outside {EARLIEST.year}-{LATEST.year - 1}")
    return value


class Geometry(_Record):
    """A GeoJSON Point or LineString in EPSG:4326."""

    type: Literal["Point", "LineString"]
    coordinates: Any

    @model_validator(mode="after")
    def _check(self) -> Geometry:
        if not isinstance(self.coordinates, list | tuple):
            raise ValueError("coordinates must be a list")
        points = [self.coordinates] if self.type == "Point" else list(self.coordinates)
        if self.type == "LineString" and len(points) < 2:
            raise ValueError("a LineString needs at least two positions")
        if len(points) > MAX_POSITIONS:
            raise ValueError(f"{len(points)} positions, more than {MAX_POSITIONS}")
        for p in points:
            if (
                not isinstance(p, list | tuple)
                or not 2 <= len(p) <= 3
                or not all(isinstance(c, int | float) and not isinstance(c, bool) for c in p)
                or not (-180 <= p[0] <= 180 and -90 <= p[1] <= 90)
            ):
                raise ValueError(f"position {str(p)[:80]} is not a lon/lat pair")
        return self

    @property
    def points(self) -> list[tuple[float, float]]:
        pts = [self.coordinates] if self.type == "Point" else self.coordinates
        return [(float(p[0]), float(p[1])) for p in pts]


class SiteRecord(_Record):
    """A counting place (national model: `site`)."""

    external_id: str = Field(min_length=1, max_length=MAX_ID)
    name: Name = ""
    road: Short | None = None  # e.g. "RD613"
    pr: Int4 | None = None  # point de repère
    abscissa: Int4 | None = None  # metres after the PR
    insee: Short | None = None  # commune INSEE code
    lon: float | None = Field(default=None, ge=-180, le=180)
    lat: float | None = Field(default=None, ge=-90, le=90)
    metadata: dict[str, Any] = Field(default_factory=dict)

    _ids = field_validator("external_id")(_printable_id)
    _json = field_validator("metadata")(_bounded_json)


class ChannelRecord(_Record):
    """One series at a site (national model: `channel`)."""

    site_external_id: str = Field(min_length=1, max_length=MAX_ID)
    external_id: str = Field(min_length=1, max_length=MAX_ID)
    direction: Short | None = None
    direction_name: Short | None = None  # as the source names it, e.g. "vers Béziers"
    lane: Int4 | None = None
    vehicle_class: VehicleClass = "all"
    mobility_type: Short = "car"
    time_step: int = Field(gt=0, le=86400)  # seconds

    _ids = field_validator("site_external_id", "external_id")(_printable_id)

    @field_validator("time_step")
    @classmethod
    def _divides_day(cls, v: int) -> int:
        if 86400 % v:
            raise ValueError("time_step must divide a day (e.g. 300, 900, 3600, 86400)")
        return v


class MeasurementRecord(_Record):
    """One interval of one channel (national model: `measure`)."""

    channel_external_id: str = Field(min_length=1, max_length=MAX_ID)
    start: datetime
    length: int = Field(gt=0, le=366 * 86400)  # seconds
    count: Int4 | None = None
    speed: float | None = Field(default=None, ge=0, le=300)  # km/h, mean
    occupancy: float | None = Field(default=None, ge=0, le=100)  # percent
    quality: Quality = "observed"

    _start_aware = field_validator("start")(_aware)
    _ids = field_validator("channel_external_id")(_printable_id)


Day = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
DAYS: tuple[Day, ...] = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


class TimeSlot(_Record):
    """A recurring time slot in the event's local time: on `days`, from `start` to `end`
    ("21:00" to "06:00" runs past midnight into the next day)."""

    days: tuple[Day, ...] = Field(min_length=1, max_length=7)
    start: str
    end: str

    @model_validator(mode="after")
    def _check(self) -> TimeSlot:
        for value in (self.start, self.end):
            if not _HHMM.match(value):
                raise ValueError(f"time {value!r} is not HH:MM (00:00 to 23:59)")
        if self.start == self.end:
            raise ValueError("a time slot needs an end different from its start")
        if len(set(self.days)) != len(self.days):
            raise ValueError("a day is given twice")
        return self


class EventRecord(_Record):
    """One road event as a source describes it at one moment."""

    external_id: str = Field(min_length=1, max_length=MAX_ID)
    type: EventType
    subtype: Short | None = None  # source's own type, e.g. "MaintenanceWorks"
    status: EventStatus = "active"
    severity: Severity = "unknown"
    planned_start: datetime | None = None
    planned_end: datetime | None = None
    actual_start: datetime | None = None
    actual_end: datetime | None = None
    road: Short | None = None
    direction: Short | None = None  # "both", "positive", "negative", or a named direction
    lanes_affected: Name | None = None
    geometry: Geometry | None = None
    # language -> text
    descriptions: dict[Short, Text] = Field(default_factory=dict, max_length=MAX_LANGUAGES)
    detour: Text | None = None
    location_refs: dict[str, Any] = Field(default_factory=dict)  # Alert-C, PR+abscissa, ...
    schedule: list[TimeSlot] = Field(default_factory=list, max_length=14)  # recurring slots; none: all the time
    source_version: Short | None = None
    source_updated: datetime | None = None

    _times_aware = field_validator("planned_start", "planned_end", "actual_start", "actual_end", "source_updated")(
        _aware
    )
    _ids = field_validator("external_id")(_printable_id)
    _json = field_validator("location_refs")(_bounded_json)


class Quarantined(_Record):
    """A record a parser could not accept: kept with the reason, never dropped."""

    reason: str
    excerpt: str = ""
    record_ref: str | None = None  # the record's id or position in the source

    @model_validator(mode="before")
    @classmethod
    def _keepable(cls, data: Any) -> Any:
        """Whatever a hostile record holds, its quarantine row can be written: texts are
        cut to size and what UTF-8 text cannot hold is replaced."""
        if isinstance(data, dict):
            limits = {"reason": 1000, "excerpt": 2000, "record_ref": MAX_ID}
            data = {
                k: _UNSTORABLE.sub("\ufffd", v[: limits.get(k, len(v))]) if isinstance(v, str) else v
                for k, v in data.items()
            }
        return data


ParsedItem = SiteRecord | ChannelRecord | MeasurementRecord | EventRecord | Quarantined


class StoredEvent(EventRecord):
    """An event as stored: with its public id, version and bookkeeping times."""

    id: str = Field(max_length=MAX_ID + 65)  # public, stable: "<source id>:<external id>"
    source_id: str
    version: int = Field(ge=1)
    first_seen: datetime
    last_seen: datetime
    updated: datetime

    _public_id = field_validator("id")(_printable_id)


class StoredSite(SiteRecord):
    id: int
    source_id: str
    channels: list[StoredChannel] = Field(default_factory=list)


class StoredChannel(ChannelRecord):
    id: int
    latest_start: datetime | None = None
    latest_length: int | None = None
    latest_count: int | None = None
    latest_speed: float | None = None
    latest_quality: Quality | None = None


StoredSite.model_rebuild()


# DATEX II situation record classes (the `xsi:type` local name, the same in v2 and v3)
# and our event type. Parsers keep the class in `subtype`; exporters write `subtype`
# back when it is one of these classes, otherwise the default class of the type.
DATEX_RECORD_TYPES: dict[str, EventType] = {
    "MaintenanceWorks": "roadworks",
    "ConstructionWorks": "roadworks",
    "RoadworksInformation": "roadworks",
    "Accident": "accident",
    "RoadOrCarriagewayOrLaneManagement": "lane_management",
    "NetworkManagement": "lane_management",
    "GeneralNetworkManagement": "lane_management",
    "AbnormalTraffic": "congestion",
    "VehicleObstruction": "obstruction",
    "GeneralObstruction": "obstruction",
    "AnimalPresenceObstruction": "obstruction",
    "EnvironmentalObstruction": "obstruction",
    "InfrastructureDamageObstruction": "obstruction",
    "PoorEnvironmentConditions": "environment",
    "WeatherRelatedRoadConditions": "weather",
    "NonWeatherRelatedRoadConditions": "environment",
    "SpeedManagement": "speed_management",
    "ReroutingManagement": "rerouting",
    "PublicEvent": "public_event",
}

DEFAULT_DATEX_RECORD: dict[EventType, str] = {
    "roadworks": "MaintenanceWorks",
    "accident": "Accident",
    "closure": "RoadOrCarriagewayOrLaneManagement",
    "lane_management": "RoadOrCarriagewayOrLaneManagement",
    "congestion": "AbnormalTraffic",
    "obstruction": "GeneralObstruction",
    "weather": "WeatherRelatedRoadConditions",
    "environment": "PoorEnvironmentConditions",
    "speed_management": "SpeedManagement",
    "rerouting": "ReroutingManagement",
    "public_event": "PublicEvent",
    "other": "GeneralObstruction",
}


def public_event_id(source_id: str, external_id: str) -> str:
    """The stable id an event has in every feed."""
    return f"{source_id}:{external_id}"


def departement_of(insee: str | None) -> str | None:
    """Département code from a commune INSEE code ("34172" -> "34", "97411" -> "974")."""
    if not insee or len(insee) != 5:
        return None
    return insee[:3] if insee.startswith("97") else insee[:2]
