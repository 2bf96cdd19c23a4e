"""GeoJSON (RFC 7946) live feeds of road events and counting sites.

Plain FeatureCollections that any map library reads, with the publication time,
publisher and licence as top-level foreign members (RFC 7946 §6.1). Times are
ISO 8601 in UTC (`...Z`), coordinates WGS 84 lon/lat rounded to 6 decimals
(about 0.1 m), JSON compact and UTF-8.

The filter helpers (`parse_bbox`, `filter_events`) are pure so the HTTP layer
can answer `?bbox=&type=&status=` without SQL and tests can pin the rules.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from feed.config import PublicationConfig
from feed.model import Geometry, StoredChannel, StoredEvent, StoredSite

__all__ = [
    "dumps",
    "filter_events",
    "geometry_json",
    "intersects",
    "parse_bbox",
    "render_events",
    "render_sites",
    "site_freshness",
    "site_quality",
    "utc_iso",
]

BBox = tuple[float, float, float, float]

COORDINATE_DECIMALS = 6


def utc_iso(value: datetime | None) -> str | None:
    """ISO 8601 / RFC 3339 in UTC with a `Z`, to the second (None stays None)."""
    if value is None:
        return None
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def dumps(document: Any) -> bytes:
    """Compact UTF-8 JSON, the one encoding every JSON feed of this package uses."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _position(p: Sequence[float]) -> list[float]:
    return [round(float(p[0]), COORDINATE_DECIMALS), round(float(p[1]), COORDINATE_DECIMALS)]


def geometry_json(geometry: Geometry | None) -> dict[str, Any] | None:
    """The RFC 7946 geometry object (2D positions, rounded), or None."""
    if geometry is None:
        return None
    if geometry.type == "Point":
        return {"type": "Point", "coordinates": _position(geometry.coordinates)}
    return {"type": "LineString", "coordinates": [_position(p) for p in geometry.coordinates]}


def _collection(features: list[dict[str, Any]], publication: PublicationConfig, published_at: datetime) -> bytes:
    return dumps(
        {
            "type": "FeatureCollection",
            "publication_time": utc_iso(published_at),
            "publisher": publication.publisher,
            "licence": publication.licence,
            "licence_url": publication.licence_url,
            "features": features,
        }
    )


# --- events -----------------------------------------------------------------


def event_feature(event: StoredEvent) -> dict[str, Any]:
    return {
        "type": "Feature",
        "id": event.id,
        "geometry": geometry_json(event.geometry),
        "properties": {
            "id": event.id,
            "version": event.version,
            "source": event.source_id,
            "type": event.type,
            "subtype": event.subtype,
            "status": event.status,
            "severity": event.severity,
            "planned_start": utc_iso(event.planned_start),
            "planned_end": utc_iso(event.planned_end),
            "actual_start": utc_iso(event.actual_start),
            "actual_end": utc_iso(event.actual_end),
            "road": event.road,
            "direction": event.direction,
            "lanes_affected": event.lanes_affected,
            "descriptions": dict(event.descriptions),
            "detour": event.detour,
            "schedule": [slot.model_dump(mode="json") for slot in event.schedule],
            "updated": utc_iso(event.updated),
            "first_seen": utc_iso(event.first_seen),
        },
    }


def render_events(events: Sequence[StoredEvent], publication: PublicationConfig, published_at: datetime) -> bytes:
    """Every given event as a Feature (geometry null when the event has none)."""
    return _collection([event_feature(e) for e in events], publication, published_at)


# --- sites ------------------------------------------------------------------


def _has_value(channel: StoredChannel) -> bool:
    return (
        channel.latest_start is not None
        and channel.latest_quality in ("observed", "estimated")
        and (channel.latest_count is not None or channel.latest_speed is not None)
    )


def _latest(channel: StoredChannel) -> dict[str, Any] | None:
    if channel.latest_start is None:
        return None
    length = channel.latest_length
    flow = None
    if channel.latest_count is not None and length:
        flow = round(channel.latest_count * 3600 / length, 1)
    end = utc_iso(channel.latest_start + timedelta(seconds=length)) if length else None
    return {
        "start": utc_iso(channel.latest_start),
        "end": end,
        "length": length,
        "count": channel.latest_count,
        "flow_per_hour": flow,
        "speed": channel.latest_speed,
        "quality": channel.latest_quality,
    }


def site_quality(site: StoredSite) -> str:
    """observed: every channel's latest value is observed; missing: no channel has a
    value; estimated: anything between (some values estimated or some channels silent)."""
    with_value = [c for c in site.channels if _has_value(c)]
    if not with_value:
        return "missing"
    if len(with_value) == len(site.channels) and all(c.latest_quality == "observed" for c in with_value):
        return "observed"
    return "estimated"


def site_freshness(site: StoredSite, published_at: datetime) -> int | None:
    """Seconds between the end of the newest interval that carries a value and publication."""
    ends = [
        c.latest_start.timestamp() + (c.latest_length or 0)
        for c in site.channels
        if _has_value(c) and c.latest_start is not None
    ]
    if not ends:
        return None
    return round(published_at.timestamp() - max(ends))


def site_feature(site: StoredSite, published_at: datetime) -> dict[str, Any]:
    geometry = None
    if site.lon is not None and site.lat is not None:
        geometry = {"type": "Point", "coordinates": _position((site.lon, site.lat))}
    return {
        "type": "Feature",
        "id": site.id,
        "geometry": geometry,
        "properties": {
            "id": site.id,
            "external_id": site.external_id,
            "source": site.source_id,
            "name": site.name,
            "road": site.road,
            "pr": site.pr,
            "abscissa": site.abscissa,
            "insee": site.insee,
            "channels": [
                {
                    "id": c.id,
                    "external_id": c.external_id,
                    "direction": c.direction,
                    "lane": c.lane,
                    "vehicle_class": c.vehicle_class,
                    "mobility_type": c.mobility_type,
                    "time_step": c.time_step,
                    "latest": _latest(c),
                }
                for c in site.channels
            ],
            "freshness_seconds": site_freshness(site, published_at),
            "quality": site_quality(site),
        },
    }


def render_sites(sites: Sequence[StoredSite], publication: PublicationConfig, published_at: datetime) -> bytes:
    """Every site as a Point Feature (geometry null without coordinates) with its
    channels' latest values, freshness and a site-level quality."""
    return _collection([site_feature(s, published_at) for s in sites], publication, published_at)


# --- filters ----------------------------------------------------------------


def parse_bbox(text: str) -> BBox:
    """`lon_min,lat_min,lon_max,lat_max` (WGS 84) → a tuple; ValueError says what is wrong."""
    if not (text or "").strip():
        raise ValueError("bbox is empty; expected lon_min,lat_min,lon_max,lat_max")
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        raise ValueError(
            f"bbox must be 4 comma-separated numbers lon_min,lat_min,lon_max,lat_max; got {len(parts)} in {text!r}"
        )
    values: list[float] = []
    for name, part in zip(("lon_min", "lat_min", "lon_max", "lat_max"), parts, strict=True):
        if not part:
            raise ValueError(f"bbox {name} is empty in {text!r}")
        try:
            v = float(part)
        except ValueError:
            raise ValueError(f"bbox {name} {part!r} is not a number") from None
        if not math.isfinite(v):
            raise ValueError(f"bbox {name} {part!r} is not a finite number")
        values.append(v)
    lon_min, lat_min, lon_max, lat_max = values
    for name, v in (("lon_min", lon_min), ("lon_max", lon_max)):
        if not -180 <= v <= 180:
            raise ValueError(f"bbox {name} {v:g} is outside the longitude range [-180, 180]")
    for name, v in (("lat_min", lat_min), ("lat_max", lat_max)):
        if not -90 <= v <= 90:
            raise ValueError(f"bbox {name} {v:g} is outside the latitude range [-90, 90]")
    if lon_min > lon_max:
        raise ValueError(f"bbox lon_min {lon_min:g} is greater than lon_max {lon_max:g}")
    if lat_min > lat_max:
        raise ValueError(f"bbox lat_min {lat_min:g} is greater than lat_max {lat_max:g}")
    return lon_min, lat_min, lon_max, lat_max


def _inside(p: tuple[float, float], bbox: BBox) -> bool:
    return bbox[0] <= p[0] <= bbox[2] and bbox[1] <= p[1] <= bbox[3]


def _segment_crosses(a: tuple[float, float], b: tuple[float, float], bbox: BBox) -> bool:
    """Liang-Barsky: does the segment a→b meet the rectangle?"""
    t0, t1 = 0.0, 1.0
    dx, dy = b[0] - a[0], b[1] - a[1]
    for p, q in ((-dx, a[0] - bbox[0]), (dx, bbox[2] - a[0]), (-dy, a[1] - bbox[1]), (dy, bbox[3] - a[1])):
        if p == 0:
            if q < 0:
                return False
            continue
        t = q / p
        if p < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
        if t0 > t1:
            return False
    return True


def intersects(geometry: Geometry | None, bbox: BBox) -> bool:
    """A position inside the box, or (LineString) a segment crossing it."""
    if geometry is None:
        return False
    points = geometry.points
    if any(_inside(p, bbox) for p in points):
        return True
    return any(_segment_crosses(a, b, bbox) for a, b in pairwise(points))


def filter_events(
    events: Iterable[StoredEvent],
    bbox: BBox | None = None,
    types: Collection[str] | None = None,
    statuses: Collection[str] | None = None,
    geometry_types: Collection[str] | None = None,
) -> list[StoredEvent]:
    """The events matching every given criterion (None = no criterion). With a bbox
    or geometry types, events without geometry are left out."""
    out = []
    for e in events:
        if types is not None and e.type not in types:
            continue
        if statuses is not None and e.status not in statuses:
            continue
        if geometry_types is not None and (e.geometry is None or e.geometry.type not in geometry_types):
            continue
        if bbox is not None and not intersects(e.geometry, bbox):
            continue
        out.append(e)
    return out
