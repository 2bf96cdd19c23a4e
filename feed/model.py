"""Domain records shared by collectors (which produce them), storage and exporters.

Parsers yield these; storage persists them; exporters render the stored forms.
Times are always timezone-aware; coordinates are WGS 84 (EPSG:4326) lon/lat.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

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


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _printable_id(value: str) -> str:
    """Ids travel into XML and JSON feeds: control characters have no place there."""
    if _CONTROL.search(value):
        raise ValueError("ids must not contain control characters")
    return value


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("datetime must carry a timezone")
    return value


class Geometry(_Record):
    """A GeoJSON Point or LineString in EPSG:4326."""

    type: Literal["Point", "LineString"]
    coordinates: Any

    @model_validator(mode="after")
    def _check(self) -> Geometry:
        points = [self.coordinates] if self.type == "Point" else list(self.coordinates)
        if self.type == "LineString" and len(points) < 2:
            raise ValueError("a LineString needs at least two positions")
        for p in points:
            if len(p) < 2 or not (-180 <= p[0] <= 180 and -90 <= p[1] <= 90):
                raise ValueError(f"position {p!r} is not a lon/lat pair")
        return self

    @property
    def points(self) -> list[tuple[float, float]]:
        pts = [self.coordinates] if self.type == "Point" else self.coordinates
        return [(float(p[0]), float(p[1])) for p in pts]


class SiteRecord(_Record):
    """A counting place (national model: `site`)."""

    external_id: str = Field(min_length=1)
    name: str = ""
    road: str | None = None  # e.g. "RD613"
    pr: int | None = None  # point de repère
    abscissa: int | None = None  # metres after the PR
    insee: str | None = None  # commune INSEE code
    lon: float | None = Field(default=None, ge=-180, le=180)
    lat: float | None = Field(default=None, ge=-90, le=90)
    metadata: dict[str, Any] = Field(default_factory=dict)

    _ids = field_validator("external_id")(_printable_id)


class ChannelRecord(_Record):
    """One series at a site (national model: `channel`)."""

    site_external_id: str = Field(min_length=1)
    external_id: str = Field(min_length=1)
    direction: str | None = None
    lane: int | None = None
    vehicle_class: VehicleClass = "all"
    mobility_type: str = "car"
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

    channel_external_id: str = Field(min_length=1)
    start: datetime
    length: int = Field(gt=0)  # seconds
    count: int | None = Field(default=None, ge=0)
    speed: float | None = Field(default=None, ge=0, le=300)  # km/h, mean
    occupancy: float | None = Field(default=None, ge=0, le=100)  # percent
    quality: Quality = "observed"

    _start_aware = field_validator("start")(_aware)
    _ids = field_validator("channel_external_id")(_printable_id)


class EventRecord(_Record):
    """One road event as a source describes it at one moment."""

    external_id: str = Field(min_length=1)
    type: EventType
    subtype: str | None = None  # source's own type, e.g. "MaintenanceWorks"
    status: EventStatus = "active"
    severity: Severity = "unknown"
    planned_start: datetime | None = None
    planned_end: datetime | None = None
    actual_start: datetime | None = None
    actual_end: datetime | None = None
    road: str | None = None
    direction: str | None = None  # "both", "positive", "negative", or a named direction
    lanes_affected: str | None = None
    geometry: Geometry | None = None
    descriptions: dict[str, str] = Field(default_factory=dict)  # language -> text
    detour: str | None = None
    location_refs: dict[str, Any] = Field(default_factory=dict)  # Alert-C, PR+abscissa, ...
    source_version: str | None = None
    source_updated: datetime | None = None

    _times_aware = field_validator(
        "planned_start", "planned_end", "actual_start", "actual_end", "source_updated"
    )(_aware)
    _ids = field_validator("external_id")(_printable_id)


class Quarantined(_Record):
    """A record a parser could not accept: kept with the reason, never dropped."""

    reason: str
    excerpt: str = ""
    record_ref: str | None = None  # the record's id or position in the source


ParsedItem = SiteRecord | ChannelRecord | MeasurementRecord | EventRecord | Quarantined


class StoredEvent(EventRecord):
    """An event as stored: with its public id, version and bookkeeping times."""

    id: str  # public, stable: "<source id>:<external id>"
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
