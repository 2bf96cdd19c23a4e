"""Query parameters of the feeds: the events filter and the checks every parameter passes.

`parse_event_filter` reads `?bbox=&type=&status=&geometry_type=` into a
normalized `EventFilter` (equal queries share one cached rendering);
`check_request_text` refuses text PostgreSQL cannot hold before any handler
reads it. A parameter that cannot be used raises `BadParameter`, whose
`as_json` is the 400 body. Plain Python over a (multi-)mapping of strings: the
HTTP adapter hands the query in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple, get_args

from multidict import MultiMapping

from exporters import geojson
from feed.errors import BadParameter, printable
from feed.model import EventStatus, EventType

__all__ = [
    "BBOX_EXPECTED",
    "EVENT_STATUSES",
    "EVENT_TYPES",
    "GEOMETRY_TYPES",
    "EventFilter",
    "check_request_text",
    "check_storable",
    "parse_event_filter",
    "unstorable",
]


class EventFilter(NamedTuple):
    """A normalized `?bbox=&type=&status=&geometry_type=` query (None: no criterion)."""

    bbox: tuple[float, float, float, float] | None = None
    types: tuple[str, ...] | None = None
    statuses: tuple[str, ...] | None = None
    geometry_types: tuple[str, ...] | None = None

    @property
    def is_empty(self) -> bool:
        return self.bbox is None and self.types is None and self.statuses is None and self.geometry_types is None


EVENT_TYPES: tuple[str, ...] = get_args(EventType)
EVENT_STATUSES: tuple[str, ...] = get_args(EventStatus)
# Single-type layers for tools that refuse mixed geometries (a Shapefile holds one type).
GEOMETRY_TYPES: tuple[str, ...] = ("Point", "LineString")
BBOX_EXPECTED = "lon_min,lat_min,lon_max,lat_max in WGS 84 degrees, e.g. 3.2,43.3,4.1,43.8"


# What PostgreSQL text cannot hold (NUL) or UTF-8 cannot encode (lone surrogates).
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
UNSTORABLE_EXPECTED = "text without NUL (U+0000) or lone surrogates (U+D800 to U+DFFF)"


def unstorable(text: str) -> str | None:
    """Why `text` cannot be stored or compared in PostgreSQL, or None when it can."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    char = found.group()
    what = "a NUL character (U+0000)" if char == "\x00" else f"a lone surrogate (U+{ord(char):04X})"
    return f"contains {what}, which the database cannot hold"


def check_storable(parameter: str, value: str) -> None:
    """Raises BadParameter naming `parameter` when `value` is text PostgreSQL cannot hold."""
    reason = unstorable(value)
    if reason is not None:
        raise BadParameter(parameter, value, UNSTORABLE_EXPECTED, f"{parameter} {reason}")


def check_request_text(query: MultiMapping[str], path_parameters: Mapping[str, str]) -> None:
    """Every query parameter (name and value) and path parameter: text PostgreSQL can hold.

    Checked once for every route, before any handler reads a parameter: no route
    can hand a database driver text it would refuse with a server error."""
    for name, value in path_parameters.items():
        check_storable(name, value)
    for name, value in query.items():
        check_storable(printable(name), name)
        check_storable(name, value)


def _parse_list(query: MultiMapping[str], name: str, allowed: Sequence[str]) -> tuple[str, ...] | None:
    raws = query.getall(name, [])
    if not raws:
        return None
    expected = f"a comma-separated list of: {', '.join(allowed)}"
    chosen: set[str] = set()
    for raw in raws:
        for item in (part.strip() for part in raw.split(",")):
            if not item:
                raise BadParameter(name, raw, expected, f"{name} has an empty value in {raw!r}")
            if item not in allowed:
                raise BadParameter(name, raw, expected, f"unknown {name} {item!r}")
            chosen.add(item)
    return tuple(sorted(chosen))


def parse_event_filter(query: MultiMapping[str]) -> EventFilter:
    """`bbox`, `type`, `status` and `geometry_type` of /feeds/events.geojson, normalized (so equal
    queries share one cached rendering). Other parameters are ignored (cache busters)."""
    bbox = None
    raws = query.getall("bbox", [])
    if len(raws) > 1:
        raise BadParameter("bbox", "&".join(raws), BBOX_EXPECTED, f"bbox is given {len(raws)} times; give it once")
    if raws:
        try:
            bbox = geojson.parse_bbox(raws[0])
        except ValueError as exc:
            raise BadParameter("bbox", raws[0], BBOX_EXPECTED, str(exc)) from None
    return EventFilter(
        bbox,
        _parse_list(query, "type", EVENT_TYPES),
        _parse_list(query, "status", EVENT_STATUSES),
        _parse_list(query, "geometry_type", GEOMETRY_TYPES),
    )
