"""The road referential file road authorities keep, parsed: roads and their PR
(points de repère). Pure: the file's bytes in, roads out; storing them and the
linear referencing along them are feed.store.roads.

The file: PR points per road, as CSV (columns `road`, `pr`, `lon`, `lat`, optional
`name`; `,` or `;` separated, UTF-8) or as a GeoJSON FeatureCollection of Point
features with properties `road`, `pr` (and `name`). A GeoJSON file may also give a
road's shape: a LineString feature with property `road`, drawn from the lowest PR to
the highest. Without a shape, a road's line is its PR points joined in PR order.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from feed.errors import InputError

__all__ = ["ROAD_PATTERN", "ReferentialError", "Road", "normalise_road", "parse_referential"]

ROAD_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._/-]{0,63}$")
MAX_ROADS = 5000
MAX_PRS = 200_000


class ReferentialError(InputError, ValueError):
    """A referential file that cannot be imported: the file, the record and the reason."""


@dataclass
class Road:
    road: str
    name: str = ""
    prs: dict[int, tuple[float, float]] = field(default_factory=dict)  # PR -> (lon, lat)
    shape: list[tuple[float, float]] | None = None  # the road's line, lowest PR first


def normalise_road(road: str) -> str:
    """RD 613, rd613 -> RD613: how agents type a road and how it is stored."""
    return road.replace(" ", "").upper()


def _record(
    roads: dict[str, Road], where: str, raw_road: Any, raw_pr: Any, raw_lon: Any, raw_lat: Any, name: Any
) -> None:
    if not isinstance(raw_road, str) or not ROAD_PATTERN.match(raw_road.strip()):
        raise ReferentialError(f"{where}: road {raw_road!r} is not a road reference such as RD613")
    road = normalise_road(raw_road.strip())
    try:
        pr = int(str(raw_pr).strip())
        lon, lat = float(str(raw_lon).replace(",", ".")), float(str(raw_lat).replace(",", "."))
    except ValueError:
        raise ReferentialError(
            f"{where}: pr must be an integer and lon, lat numbers (got {raw_pr!r}, {raw_lon!r}, {raw_lat!r})"
        ) from None
    if pr < 0 or not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise ReferentialError(f"{where}: PR {pr} at ({lon}, {lat}) is out of range")
    entry = roads.setdefault(road, Road(road))
    if pr in entry.prs:
        raise ReferentialError(f"{where}: {road} PR {pr} is given twice")
    entry.prs[pr] = (lon, lat)
    if isinstance(name, str) and name.strip():
        entry.name = name.strip()


def _shape(roads: dict[str, Road], where: str, raw_road: Any, coords: Any) -> None:
    if not isinstance(raw_road, str) or not ROAD_PATTERN.match(raw_road.strip()):
        raise ReferentialError(f"{where}: road {raw_road!r} is not a road reference such as RD613")
    road = normalise_road(raw_road.strip())
    try:
        points = [(float(c[0]), float(c[1])) for c in coords]
    except (TypeError, ValueError, IndexError):
        raise ReferentialError(f"{where}: a LineString of lon, lat positions is expected") from None
    if len(points) < 2 or not all(-180 <= x <= 180 and -90 <= y <= 90 for x, y in points):
        raise ReferentialError(f"{where}: a road's shape needs at least two lon, lat positions")
    entry = roads.setdefault(road, Road(road))
    if entry.shape is not None:
        raise ReferentialError(f"{where}: {road} has two shapes")
    entry.shape = points


def parse_referential(data: bytes, origin: str) -> list[Road]:
    """Roads with their PR from a CSV or GeoJSON file; the first bad record stops the
    import (a referential is all or nothing), named with its line or feature."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ReferentialError(f"{origin}: not UTF-8 ({exc})") from None
    roads: dict[str, Road] = {}
    if text.lstrip().startswith("{"):
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise ReferentialError(f"{origin}: not JSON ({exc})") from None
        features = document.get("features") if isinstance(document, dict) else None
        if not isinstance(features, list):
            raise ReferentialError(f"{origin}: a GeoJSON FeatureCollection is expected")
        for n, feature in enumerate(features):
            where = f"{origin}: feature {n}"
            geometry = (feature or {}).get("geometry") or {}
            props = (feature or {}).get("properties") or {}
            coords = geometry.get("coordinates")
            if geometry.get("type") == "LineString":
                _shape(roads, where, props.get("road"), coords)
                continue
            if geometry.get("type") != "Point" or not isinstance(coords, list) or len(coords) < 2:
                raise ReferentialError(f"{where}: a Point geometry is expected")
            _record(roads, where, props.get("road"), props.get("pr"), coords[0], coords[1], props.get("name"))
    else:
        sample = text[:2000]
        delimiter = ";" if sample.count(";") > sample.count(",") else ","
        reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
        missing = {"road", "pr", "lon", "lat"} - set(reader.fieldnames or [])
        if missing:
            raise ReferentialError(
                f"{origin}: missing columns {', '.join(sorted(missing))} "
                "(expected road, pr, lon, lat and optionally name)"
            )
        for row in reader:
            _record(
                roads,
                f"{origin}: line {reader.line_num}",
                row.get("road"),
                row.get("pr"),
                row.get("lon"),
                row.get("lat"),
                row.get("name"),
            )
    if not roads:
        raise ReferentialError(f"{origin}: no PR in the file")
    if len(roads) > MAX_ROADS or sum(len(r.prs) for r in roads.values()) > MAX_PRS:
        raise ReferentialError(f"{origin}: more than {MAX_ROADS} roads or {MAX_PRS} PR")
    for r in roads.values():
        if r.shape is not None and not r.prs:
            raise ReferentialError(f"{origin}: road {r.road} has a shape but no PR")
        if len(r.prs) < 2:
            raise ReferentialError(f"{origin}: road {r.road} has a single PR; a road needs at least two")
        ordered = sorted(r.prs.items())
        for (a, pa), (b, pb) in pairwise(ordered):
            if pa == pb:
                raise ReferentialError(f"{origin}: road {r.road} PR {a} and PR {b} are at the same place")
    return list(roads.values())
