"""Waze CIFS (Closure and Incident Feed Specification) v2, as XML and JSON.

Waze refuses incidents that break its rules, and one bad incident can get a feed
flagged, so every event goes through `check_waze_rules` first; what is left out is
listed with its reason by `render_report`.

Rules applied (Waze CIFS documentation and cifsv2.xsd):
- only planned and active events; ended ones leave the feed;
- a type Waze knows: ACCIDENT, CONSTRUCTION, HAZARD, ROAD_CLOSED (subtypes from the
  XSD); congestion, speed management, rerouting, public events that close nothing
  and "other" have no honest CIFS type and are left out;
- a polyline of at least two distinct positions: a Point is refused, we do not
  invent a line around it;
- road closures (ROAD_CLOSED) between 35 m and 10 km long (haversine along the line);
- a start time (`starttime`, written `YYYY-MM-DDTHH:MM:SS+hh:mm` in the publication's
  time zone) and a street name (`street`, at least 2 characters).

JSON form: the one in Waze's documentation, `{"incidents":[{"incident":{"id":…,
"type":…,"polyline":…}}]}`, with the XML element names as keys.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo
from itertools import pairwise
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from lxml import etree

from exporters.geojson import dumps, utc_iso
from exporters.wzdx import lane_closure
from feed.config import PublicationConfig
from feed.model import DATEX_RECORD_TYPES, DAYS, StoredEvent, TimeSlot

__all__ = [
    "MAX_CLOSURE_M",
    "MIN_CLOSURE_M",
    "WazeDecision",
    "check_waze_rules",
    "decide",
    "polyline_length_m",
    "render_cifs_json",
    "render_cifs_xml",
    "render_report",
    "waze_type",
]

MIN_CLOSURE_M = 35.0
MAX_CLOSURE_M = 10_000.0
EARTH_RADIUS_M = 6_371_008.8  # mean radius (IUGG)
SCHEMA_LOCATION = "http://www.gstatic.com/road-incidents/cifsv2.xsd"
XSI = "http://www.w3.org/2001/XMLSchema-instance"


class WazeDecision(NamedTuple):
    """`code` is stable (for counting and tests); `reason` is for people."""

    code: str | None
    reason: str | None


# --- type mapping -----------------------------------------------------------

_CLOSED_SUBTYPE_BY_CAUSE = {
    "roadworks": "ROAD_CLOSED_CONSTRUCTION",
    "public_event": "ROAD_CLOSED_EVENT",
    "accident": "ROAD_CLOSED_HAZARD",
    "obstruction": "ROAD_CLOSED_HAZARD",
    "weather": "ROAD_CLOSED_HAZARD",
    "environment": "ROAD_CLOSED_HAZARD",
}

# Words in the source subtype → HAZARD subtype (checked in order, first match wins).
_HAZARD_WORDS = (
    ("flood", "HAZARD_WEATHER_FLOOD"),
    ("inond", "HAZARD_WEATHER_FLOOD"),
    ("fog", "HAZARD_WEATHER_FOG"),
    ("brouillard", "HAZARD_WEATHER_FOG"),
    ("hail", "HAZARD_WEATHER_HAIL"),
    ("grêle", "HAZARD_WEATHER_HAIL"),
    ("freezingrain", "HAZARD_WEATHER_FREEZING_RAIN"),
    ("ice", "HAZARD_ON_ROAD_ICE"),
    ("verglas", "HAZARD_ON_ROAD_ICE"),
    ("snow", "HAZARD_WEATHER_HEAVY_SNOW"),
    ("neige", "HAZARD_WEATHER_HEAVY_SNOW"),
    ("rain", "HAZARD_WEATHER_HEAVY_RAIN"),
    ("pluie", "HAZARD_WEATHER_HEAVY_RAIN"),
    ("heat", "HAZARD_WEATHER_HEAT_WAVE"),
    ("canicule", "HAZARD_WEATHER_HEAT_WAVE"),
    ("oil", "HAZARD_ON_ROAD_OIL"),
    ("huile", "HAZARD_ON_ROAD_OIL"),
    ("pothole", "HAZARD_ON_ROAD_POT_HOLE"),
    ("nid", "HAZARD_ON_ROAD_POT_HOLE"),
    ("vehicleobstruction", "HAZARD_ON_ROAD_CAR_STOPPED"),
    ("brokendown", "HAZARD_ON_ROAD_CAR_STOPPED"),
    ("trafficlight", "HAZARD_ON_ROAD_TRAFFIC_LIGHT_FAULT"),
    ("feu", "HAZARD_ON_ROAD_TRAFFIC_LIGHT_FAULT"),
)


def _cause(event: StoredEvent) -> str:
    """The event's cause as one of our types: the DATEX class in `subtype` wins when known."""
    return DATEX_RECORD_TYPES.get(event.subtype or "", event.type)


def _hazard_subtype(event: StoredEvent, default: str) -> str:
    text = (event.subtype or "").lower().replace(" ", "").replace("_", "")
    for word, subtype in _HAZARD_WORDS:
        if word in text:
            return subtype
    return default


def waze_type(event: StoredEvent) -> tuple[str, str | None] | None:
    """(type, subtype or None) in CIFS terms, or None when there is no honest mapping."""
    closure = lane_closure(event)
    if closure == "road" and event.type in (
        "closure",
        "lane_management",
        "roadworks",
        "accident",
        "obstruction",
        "weather",
        "environment",
        "public_event",
    ):
        cause = event.type if event.type not in ("closure", "lane_management") else _cause(event)
        return "ROAD_CLOSED", _CLOSED_SUBTYPE_BY_CAUSE.get(cause)
    match event.type:
        case "roadworks":
            return "CONSTRUCTION", None
        case "accident":
            if event.severity in ("high", "highest"):
                return "ACCIDENT", "ACCIDENT_MAJOR"
            if event.severity in ("low", "medium"):
                return "ACCIDENT", "ACCIDENT_MINOR"
            return "ACCIDENT", None
        case "lane_management":
            return "HAZARD", "HAZARD_ON_ROAD_LANE_CLOSED" if closure == "lanes" else "HAZARD_ON_ROAD"
        case "obstruction":
            return "HAZARD", _hazard_subtype(event, "HAZARD_ON_ROAD")
        case "weather":
            return "HAZARD", _hazard_subtype(event, "HAZARD_WEATHER")
        case "environment":
            default = "HAZARD_WEATHER" if event.subtype == "PoorEnvironmentConditions" else "HAZARD_ON_ROAD"
            return "HAZARD", _hazard_subtype(event, default)
    return None


# --- geometry ---------------------------------------------------------------


def haversine_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance in metres between two lon/lat positions."""
    lon1, lat1, lon2, lat2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def polyline_length_m(points: Sequence[tuple[float, float]]) -> float:
    return sum(haversine_m(a, b) for a, b in pairwise(points))


def _polyline(points: Sequence[tuple[float, float]]) -> str:
    """CIFS order: "lat lon lat lon …", 6 decimals."""
    return " ".join(f"{lat:.6f} {lon:.6f}" for lon, lat in points)


# --- rules ------------------------------------------------------------------


def decide(event: StoredEvent) -> WazeDecision:
    """The first Waze rule the event breaks, as (code, reason); (None, None) when it may go."""
    if event.status == "ended":
        return WazeDecision("ended", "ended events are not published to Waze")
    mapped = waze_type(event)
    if mapped is None:
        return WazeDecision(
            "type_not_mappable",
            f"type {event.type!r} has no CIFS type (ACCIDENT, CONSTRUCTION, HAZARD, ROAD_CLOSED)",
        )
    if event.geometry is None:
        return WazeDecision("no_geometry", "no geometry: CIFS needs a polyline")
    if event.geometry.type == "Point":
        return WazeDecision(
            "point_geometry", "Point geometry: CIFS needs a polyline of at least 2 points and none is derived"
        )
    points = event.geometry.points
    if len(set(points)) < 2:
        return WazeDecision("degenerate_polyline", "polyline has fewer than 2 distinct points")
    if mapped[0] == "ROAD_CLOSED":
        length = polyline_length_m(points)
        if length < MIN_CLOSURE_M:
            return WazeDecision(
                "closure_too_short", f"road closure is {length:.0f} m long; Waze needs at least {MIN_CLOSURE_M:.0f} m"
            )
        if length > MAX_CLOSURE_M:
            return WazeDecision(
                "closure_too_long",
                f"road closure is {length / 1000:.1f} km long; Waze accepts at most {MAX_CLOSURE_M / 1000:.0f} km",
            )
    if event.actual_start is None and event.planned_start is None:
        return WazeDecision("no_start_time", "no start time (starttime is required by Waze)")
    if not event.road or len(event.road.strip()) < 2:
        return WazeDecision("no_street", "no road name (street is required, at least 2 characters)")
    return WazeDecision(None, None)


def check_waze_rules(event: StoredEvent) -> str | None:
    """The reason the event cannot be published to Waze, or None."""
    return decide(event).reason


# --- rendering --------------------------------------------------------------

_FALLBACK_DESCRIPTION = {
    "fr": {
        "ROAD_CLOSED": "Route fermée",
        "CONSTRUCTION": "Travaux",
        "ACCIDENT": "Accident",
        "HAZARD": "Danger",
    },
    "en": {
        "ROAD_CLOSED": "Road closed",
        "CONSTRUCTION": "Roadworks",
        "ACCIDENT": "Accident",
        "HAZARD": "Hazard",
    },
}


def _zone(publication: PublicationConfig) -> tzinfo:
    try:
        return ZoneInfo(publication.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def _local(value: datetime | None, zone: tzinfo) -> str | None:
    """`YYYY-MM-DDTHH:MM:SS+hh:mm`, the form Waze documents."""
    if value is None:
        return None
    return value.astimezone(zone).replace(microsecond=0).isoformat()


def _description(event: StoredEvent, cifs_type: str, languages: Sequence[str]) -> str:
    for lang in languages:
        text = (event.descriptions.get(lang) or "").strip()
        if text:
            return text
    for text in event.descriptions.values():
        if text and text.strip():
            return text.strip()
    labels = next((_FALLBACK_DESCRIPTION[lang] for lang in languages if lang in _FALLBACK_DESCRIPTION), None)
    return (labels or _FALLBACK_DESCRIPTION["en"])[cifs_type]


def cifs_schedule(slots: Sequence[TimeSlot]) -> dict[str, str]:
    """CIFS `schedule`: per day, "HH:MM-HH:MM" ranges; a slot past midnight is split at
    23:59 and continues on the next day from 00:00."""
    ranges: dict[str, list[str]] = {day: [] for day in DAYS}
    for slot in slots:
        for day in slot.days:
            if slot.end > slot.start:
                ranges[day].append(f"{slot.start}-{slot.end}")
            else:
                ranges[day].append(f"{slot.start}-23:59")
                if slot.end != "00:00":
                    ranges[DAYS[(DAYS.index(day) + 1) % 7]].append(f"00:00-{slot.end}")
    return {day: ",".join(sorted(r)) for day, r in ranges.items() if r}


def _incident(event: StoredEvent, publication: PublicationConfig, zone: tzinfo) -> dict[str, Any]:
    """One incident as ordered (element, value) pairs; values are str or a nested dict."""
    mapped = waze_type(event)
    assert mapped is not None and event.geometry is not None and event.road
    cifs_type, subtype = mapped
    incident: dict[str, Any] = {"id": event.id, "type": cifs_type}
    if subtype:
        incident["subtype"] = subtype
    incident["polyline"] = _polyline(event.geometry.points)
    incident["street"] = event.road.strip()
    if event.direction:
        incident["direction"] = "BOTH_DIRECTIONS" if event.direction == "both" else "ONE_DIRECTION"
    incident["starttime"] = _local(event.actual_start or event.planned_start, zone)
    end = event.actual_end or event.planned_end
    if end is not None:
        incident["endtime"] = _local(end, zone)
    if event.schedule:
        incident["schedule"] = cifs_schedule(event.schedule)
    incident["description"] = _description(event, cifs_type, publication.languages)
    incident["creationtime"] = _local(event.first_seen, zone)
    incident["updatetime"] = _local(event.updated, zone)
    incident["source"] = {"reference": publication.national_identifier, "name": publication.publisher}
    return incident


def _published(events: Sequence[StoredEvent], publication: PublicationConfig) -> list[dict[str, Any]]:
    zone = _zone(publication)
    return [_incident(e, publication, zone) for e in events if decide(e).code is None]


def render_cifs_xml(events: Sequence[StoredEvent], publication: PublicationConfig, published_at: datetime) -> bytes:
    """`<incidents>` valid against cifsv2.xsd, with the events that pass the rules."""
    root = etree.Element("incidents", nsmap={"xsi": XSI})
    root.set(f"{{{XSI}}}noNamespaceSchemaLocation", SCHEMA_LOCATION)
    root.set("timestamp", _local(published_at, _zone(publication)) or "")
    for incident in _published(events, publication):
        el = etree.SubElement(root, "incident", id=incident.pop("id"))
        for name, value in incident.items():
            child = etree.SubElement(el, name)
            if isinstance(value, dict):
                for sub_name, sub_value in value.items():
                    etree.SubElement(child, sub_name).text = sub_value
            else:
                child.text = value
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + etree.tostring(root, encoding="UTF-8", xml_declaration=False)


def render_cifs_json(events: Sequence[StoredEvent], publication: PublicationConfig, published_at: datetime) -> bytes:
    """The documented JSON form `{"incidents":[{"incident":{...}}]}` (same names as the XML)."""
    return dumps({"incidents": [{"incident": i} for i in _published(events, publication)]})


def render_report(events: Sequence[StoredEvent], published_at: datetime) -> bytes:
    """Every event left out of CIFS with id, version and reason, plus counts."""
    left_out = []
    by_code: Counter[str] = Counter()
    for e in events:
        code, reason = decide(e)
        if code is None:
            continue
        by_code[code] += 1
        left_out.append({"id": e.id, "version": e.version, "code": code, "reason": reason})
    return dumps(
        {
            "generated_at": utc_iso(published_at),
            "counts": {
                "events": len(events),
                "published": len(events) - len(left_out),
                "left_out": len(left_out),
                "by_reason": dict(sorted(by_code.items())),
            },
            "left_out": left_out,
        }
    )
