"""WZDx 4.2 Work Zone Feed (a GeoJSON FeatureCollection of RoadEventFeatures).

What is published: roadworks, closures and lane management that closes lanes or
the road, when they have a geometry and a road name and have not ended. WZDx has
no "ended" state, so an ended event simply leaves the feed.

Choices the schema forces, and how we stay honest about them:
- `license` may only be CC0 in WZDx 4.2; our data is under another licence, so the
  (optional) field is left out rather than stating a false licence.
- `direction` must be a US-style signed direction. French roads are not signed
  north/south; only an explicit cardinal direction from the source is mapped, every
  other value (both, positive, negative, a town name) becomes `unknown`. We do not
  use `undefined`: it would assert that the geometry is drawn in the direction of
  travel, which the sources do not promise.
- A Point event becomes a MultiPoint of that one position (WZDx allows LineString or
  MultiPoint only); we do not invent a second point or a length.
- `end_date` is required. When the source gives no end, the end is estimated as
  `published_at + OPEN_END_HORIZON` with `is_end_date_verified: false`, so an open
  closure stays visible; each publication moves that estimate forward.
- Positions and the location method come from the source unchecked:
  `is_*_position_verified: false`, `location_method: unknown`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from exporters.geojson import dumps, utc_iso
from feed.config import PublicationConfig
from feed.model import StoredEvent

__all__ = [
    "OPEN_END_HORIZON",
    "WZDX_VERSION",
    "check_wzdx_rules",
    "lane_closure",
    "render_work_zones",
    "wzdx_direction",
]

WZDX_VERSION = "4.2"
OPEN_END_HORIZON = timedelta(hours=24)

LaneClosure = Literal["road", "lanes"]

_NO_LANES = {"", "none", "no", "0", "aucune", "aucun", "non"}
_ALL_LANES = re.compile(
    r"^(all|all lanes|all-lanes|both lanes|every lane|toutes|toutes les voies|toutes voies|les deux voies"
    r"|carriageway|chaussée|chaussee|road|route|roadclosed|carriagewayclosures)$"
)


def lane_closure(event: StoredEvent) -> LaneClosure | None:
    """What the event closes: the whole road, some lanes, or nothing we know of.

    `closure` closes the road. For other types, `lanes_affected` decides: a word for
    "all lanes" closes the road, any other non-empty value closes some lanes.
    """
    if event.type == "closure":
        return "road"
    lanes = (event.lanes_affected or "").strip().lower()
    if lanes in _NO_LANES:
        return None
    if _ALL_LANES.match(lanes):
        return "road"
    return "lanes"


_CARDINAL = {
    "northbound": "northbound",
    "north": "northbound",
    "nord": "northbound",
    "n": "northbound",
    "southbound": "southbound",
    "south": "southbound",
    "sud": "southbound",
    "s": "southbound",
    "eastbound": "eastbound",
    "east": "eastbound",
    "est": "eastbound",
    "e": "eastbound",
    "westbound": "westbound",
    "west": "westbound",
    "ouest": "westbound",
    "o": "westbound",
    "w": "westbound",
    "inner-loop": "inner-loop",
    "outer-loop": "outer-loop",
}


def wzdx_direction(direction: str | None) -> str:
    """Our direction → WZDx Direction: cardinal names map, anything else is `unknown`."""
    if not direction:
        return "unknown"
    return _CARDINAL.get(direction.strip().lower(), "unknown")


def vehicle_impact(event: StoredEvent) -> str:
    closure = lane_closure(event)
    if event.subtype == "singleAlternateLineTraffic" and closure != "road":
        return "alternating-one-way"
    if closure == "road":
        return "all-lanes-closed"
    if closure == "lanes":
        return "some-lanes-closed"
    return "unknown"


def check_wzdx_rules(event: StoredEvent) -> str | None:
    """Why the event is not in the WZDx feed, or None when it is."""
    if event.status == "ended":
        return "ended (WZDx has no ended state: the event leaves the feed)"
    if not (
        event.type in ("roadworks", "closure") or (event.type == "lane_management" and lane_closure(event) is not None)
    ):
        return f"type {event.type} is not a work zone"
    if event.geometry is None:
        return "no geometry"
    if not event.road:
        return "no road name (core_details.road_names is required)"
    if event.status == "planned" and event.planned_start is None and event.actual_start is None:
        return "planned event without a start date"
    return None


def _description(event: StoredEvent, languages: Sequence[str]) -> str | None:
    for lang in languages:
        if event.descriptions.get(lang):
            return event.descriptions[lang]
    return next((t for t in event.descriptions.values() if t), None)


def _geometry(event: StoredEvent) -> dict[str, Any]:
    assert event.geometry is not None
    coords = [[round(x, 6), round(y, 6)] for x, y in event.geometry.points]
    if event.geometry.type == "Point":
        return {"type": "MultiPoint", "coordinates": coords}
    return {"type": "LineString", "coordinates": coords}


def _feature(event: StoredEvent, publication: PublicationConfig, published_at: datetime) -> dict[str, Any]:
    start = event.actual_start or event.planned_start or event.first_seen
    end = event.actual_end or event.planned_end
    if end is None:
        end = max(published_at, start) + OPEN_END_HORIZON
    core: dict[str, Any] = {
        "event_type": "work-zone",
        "data_source_id": event.source_id,
        "road_names": [event.road],
        "direction": wzdx_direction(event.direction),
    }
    description = _description(event, publication.languages)
    if description:
        core["description"] = description
    core["creation_date"] = utc_iso(event.first_seen)
    core["update_date"] = utc_iso(event.updated)
    return {
        "id": event.id,
        "type": "Feature",
        "properties": {
            "core_details": core,
            "start_date": utc_iso(start),
            "end_date": utc_iso(end),
            "is_start_date_verified": event.actual_start is not None and event.status == "active",
            "is_end_date_verified": event.actual_end is not None,
            "is_start_position_verified": False,
            "is_end_position_verified": False,
            "location_method": "unknown",
            "vehicle_impact": vehicle_impact(event),
        },
        "geometry": _geometry(event),
    }


def render_work_zones(events: Sequence[StoredEvent], publication: PublicationConfig, published_at: datetime) -> bytes:
    """A WZDx 4.2 WorkZoneFeed of the events that pass `check_wzdx_rules`."""
    published = [e for e in events if check_wzdx_rules(e) is None]
    latest: dict[str, datetime] = {}
    for e in published:
        if e.source_id not in latest or e.updated > latest[e.source_id]:
            latest[e.source_id] = e.updated
    data_sources = [
        {"data_source_id": source_id, "organization_name": publication.publisher, "update_date": utc_iso(updated)}
        for source_id, updated in sorted(latest.items())
    ]
    if not data_sources:
        # WZDx needs at least one data source, even in an empty feed: the publisher itself.
        data_sources = [{"data_source_id": publication.national_identifier, "organization_name": publication.publisher}]
    return dumps(
        {
            "feed_info": {
                "publisher": publication.publisher,
                "version": WZDX_VERSION,
                "update_date": utc_iso(published_at),
                "data_sources": data_sources,
            },
            "type": "FeatureCollection",
            "features": [_feature(e, publication, published_at) for e in published],
        }
    )
