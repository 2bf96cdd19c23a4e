"""The simulated Hérault's ground: the département's outline, real departmental roads
drawn through the towns they serve, its communes, and the counting sites on those
roads (sixty-odd, with the counters' faults: gaps, a stuck direction, spikes).
"""

from __future__ import annotations

import json
import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from importlib import resources
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

__all__ = [
    "COMMUNES",
    "PARIS",
    "ROADS",
    "SITES",
    "Direction",
    "Road",
    "Site",
    "herault_outline",
    "inside_herault",
    "referential_geojson",
]


PARIS = ZoneInfo("Europe/Paris")  # the département's local time


@lru_cache(maxsize=1)
def herault_outline() -> dict[str, Any]:
    """The département's outline (a GeoJSON Feature), shipped as package data."""
    text = resources.files("feed").joinpath("data/herault.geojson").read_text(encoding="utf-8")
    return json.loads(text)


@lru_cache(maxsize=1)
def _polygons() -> list[list[list[tuple[float, float]]]]:
    geometry = herault_outline()
    geometry = geometry.get("geometry", geometry)
    coords = geometry["coordinates"]
    polygons = coords if geometry["type"] == "MultiPolygon" else [coords]
    return [[[(float(x), float(y)) for x, y, *_ in ring] for ring in polygon] for polygon in polygons]


def _ring_contains(ring: Sequence[tuple[float, float]], lon: float, lat: float) -> bool:
    inside = False
    for (x1, y1), (x2, y2) in pairwise(ring):
        if (y1 > lat) != (y2 > lat) and lon < x1 + (lat - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def inside_herault(lon: float, lat: float) -> bool:
    """Whether a WGS 84 point lies inside the outline (ray casting; holes respected)."""
    for outer, *holes in _polygons():
        if _ring_contains(outer, lon, lat) and not any(_ring_contains(h, lon, lat) for h in holes):
            return True
    return False


def _km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Distance in km (equirectangular: good to a few metres at this scale)."""
    dx = (b[0] - a[0]) * 111.32 * math.cos(math.radians((a[1] + b[1]) / 2))
    dy = (b[1] - a[1]) * 110.57
    return math.hypot(dx, dy)


_COMPASS = ("N", "NE", "E", "SE", "S", "SW", "W", "NW")
_OPPOSITE = {c: _COMPASS[(i + 4) % 8] for i, c in enumerate(_COMPASS)}


@dataclass(frozen=True)
class Road:
    """A departmental road section as a polyline, from `start_town` to `end_town`.

    PR (points de repère) count kilometres from the start, plus `pr0`.
    """

    key: str
    name: str
    start_town: str
    end_town: str
    points: tuple[tuple[float, float], ...]
    pr0: int = 0
    town_at_start: bool = True  # the morning peak runs towards the start
    snow_from_km: float | None = None  # snow and ice beyond this km (the hills)
    floods: bool = False

    @cached_property
    def cumulative(self) -> tuple[float, ...]:
        acc = [0.0]
        for a, b in pairwise(self.points):
            acc.append(acc[-1] + _km(a, b))
        return tuple(acc)

    @property
    def length(self) -> float:
        return self.cumulative[-1]

    def point_at(self, km: float) -> tuple[float, float]:
        km = min(max(km, 0.0), self.length)
        i = min(bisect_right(self.cumulative, km) - 1, len(self.points) - 2)
        seg = self.cumulative[i + 1] - self.cumulative[i]
        f = 0.0 if seg == 0 else (km - self.cumulative[i]) / seg
        (x1, y1), (x2, y2) = self.points[i], self.points[i + 1]
        return (round(x1 + f * (x2 - x1), 6), round(y1 + f * (y2 - y1), 6))

    def between(self, km_a: float, km_b: float) -> list[tuple[float, float]]:
        """The polyline from km_a to km_b (km_a < km_b), with the vertices in between."""
        pts = [self.point_at(km_a)]
        pts += [p for p, c in zip(self.points, self.cumulative, strict=True) if km_a < c < km_b]
        pts.append(self.point_at(km_b))
        return pts

    def project(self, lon: float, lat: float) -> float:
        """The km along the road of the point nearest to (lon, lat)."""
        best, best_km = math.inf, 0.0
        for i in range(len(self.points) - 1):
            seg = self.cumulative[i + 1] - self.cumulative[i]
            steps = max(1, int(seg * 20))
            for s in range(steps + 1):
                km = self.cumulative[i] + seg * s / steps
                d = _km(self.point_at(km), (lon, lat))
                if d < best:
                    best, best_km = d, km
        return best_km

    def compass_at(self, km: float) -> str:
        """8-point compass direction of travel from start to end, at km."""
        a, b = self.point_at(max(km - 0.5, 0)), self.point_at(min(km + 0.5, self.length))
        dx = (b[0] - a[0]) * math.cos(math.radians(a[1]))
        dy = b[1] - a[1]
        bearing = math.degrees(math.atan2(dx, dy)) % 360
        return _COMPASS[int((bearing + 22.5) // 45) % 8]

    def pr_at(self, km: float) -> tuple[int, int]:
        """(PR, abscissa in metres) at km."""
        whole = math.floor(km)
        return self.pr0 + whole, round((km - whole) * 1000) % 1000


# Roads: real departmental roads of Hérault, drawn through the towns they serve.
_ROAD_LIST = [
    Road(
        "rd613o",
        "RD613",
        "Montpellier",
        "Pézenas",
        (
            (3.845, 43.588),
            (3.822, 43.572),
            (3.781, 43.552),
            (3.716, 43.505),
            (3.675, 43.490),
            (3.613, 43.432),
            (3.540, 43.455),
            (3.484, 43.480),
            (3.432, 43.466),
        ),
        floods=True,
    ),
    Road(
        "rd613e",
        "RD613",
        "Montpellier",
        "Lunel",
        ((3.935, 43.630), (3.965, 43.655), (4.005, 43.660), (4.092, 43.676), (4.125, 43.677)),
        pr0=70,
        floods=True,
    ),
    Road(
        "rd986n",
        "RD986",
        "Montpellier",
        "Ganges",
        (
            (3.860, 43.645),
            (3.842, 43.668),
            (3.812, 43.690),
            (3.812, 43.728),
            (3.770, 43.760),
            (3.735, 43.785),
            (3.725, 43.850),
            (3.712, 43.925),
        ),
        pr0=2,
        snow_from_km=13.0,
    ),
    Road(
        "rd986s",
        "RD986",
        "Montpellier",
        "Palavas-les-Flots",
        ((3.900, 43.585), (3.915, 43.555), (3.928, 43.535)),
        pr0=90,
        floods=True,
    ),
    Road(
        "rd612l",
        "RD612",
        "Béziers",
        "Sète",
        (
            (3.240, 43.335),
            (3.285, 43.318),
            (3.410, 43.318),
            (3.470, 43.318),
            (3.545, 43.335),
            (3.585, 43.352),
            (3.615, 43.372),
            (3.645, 43.390),
            (3.668, 43.398),
            (3.690, 43.405),
        ),
        pr0=40,
        town_at_start=True,
        floods=True,
    ),
    Road(
        "rd612e",
        "RD612",
        "Sète",
        "Montpellier",
        ((3.697, 43.420), (3.760, 43.450), (3.798, 43.493), (3.850, 43.545)),
        pr0=80,
        town_at_start=False,
        floods=True,
    ),
    Road(
        "rd612w",
        "RD612",
        "Béziers",
        "Saint-Pons-de-Thomières",
        ((3.180, 43.355), (3.043, 43.370), (2.950, 43.420), (2.870, 43.470), (2.800, 43.493)),
        pr0=2,
    ),
    Road(
        "rd908",
        "RD908",
        "Clermont-l'Hérault",
        "Olargues",
        ((3.415, 43.625), (3.300, 43.640), (3.170, 43.612), (3.085, 43.598), (3.000, 43.570), (2.920, 43.555)),
        pr0=10,
        snow_from_km=24.0,
    ),
    Road(
        "rd909",
        "RD909",
        "Béziers",
        "Bédarieux",
        ((3.222, 43.370), (3.224, 43.470), (3.185, 43.565), (3.157, 43.605)),
        pr0=3,
        snow_from_km=18.0,
    ),
    Road(
        "rd32",
        "RD32",
        "Gignac",
        "Saint-Martin-de-Londres",
        ((3.560, 43.660), (3.590, 43.690), (3.620, 43.718), (3.680, 43.760), (3.731, 43.785)),
        pr0=1,
        snow_from_km=5.0,
    ),
    Road(
        "rd65",
        "RD65",
        "Juvignac",
        "Castelnau-le-Lez",
        ((3.805, 43.620), (3.805, 43.650), (3.860, 43.665), (3.890, 43.652), (3.915, 43.640)),
        pr0=1,
        town_at_start=False,
    ),
    Road(
        "rd66",
        "RD66",
        "Montpellier",
        "Carnon",
        ((3.935, 43.605), (3.975, 43.595), (3.985, 43.560), (3.991, 43.550)),
        pr0=1,
        floods=True,
    ),
    Road(
        "rd5",
        "RD5",
        "Montpellier",
        "Cournonterral",
        ((3.830, 43.600), (3.805, 43.592), (3.770, 43.585), (3.725, 43.560)),
        pr0=2,
    ),
    Road(
        "rd17",
        "RD17",
        "Montpellier",
        "Saint-Mathieu-de-Tréviers",
        ((3.872, 43.650), (3.866, 43.700), (3.860, 43.765)),
        pr0=3,
    ),
    Road(
        "rd610",
        "RD610",
        "Montpellier",
        "Sommières",
        ((3.945, 43.650), (3.980, 43.676), (4.015, 43.720), (4.060, 43.745)),
        pr0=4,
        floods=True,
    ),
    Road(
        "rd609",
        "RD609",
        "Béziers",
        "Lodève",
        ((3.250, 43.360), (3.370, 43.398), (3.432, 43.460), (3.462, 43.545), (3.420, 43.620), (3.322, 43.725)),
        pr0=5,
        snow_from_km=40.0,
    ),
    Road(
        "rd11",
        "RD11",
        "Béziers",
        "Olonzac",
        (
            (3.190, 43.335),
            (3.050, 43.330),
            (2.960, 43.345),
            (2.910, 43.362),
            (2.875, 43.395),
            (2.845, 43.372),
            (2.805, 43.335),
            (2.770, 43.300),
            (2.745, 43.285),
        ),
        pr0=2,
        floods=True,
    ),
    Road(
        "rd64",
        "RD64",
        "Béziers",
        "Valras-Plage",
        ((3.245, 43.320), (3.282, 43.285), (3.290, 43.255)),
        pr0=6,
        floods=True,
    ),
    Road(
        "rd600",
        "RD600",
        "Sète",
        "Poussan",
        ((3.680, 43.415), (3.680, 43.445), (3.690, 43.475)),
        pr0=1,
        town_at_start=True,
    ),
]
ROADS: dict[str, Road] = {r.key: r for r in _ROAD_LIST}


def referential_geojson() -> bytes:
    """The referential of the simulated roads, as `roadfeed roads import` reads it: a
    PR every kilometre of each section, and each road's shape (its sections in PR order)."""
    by_name: dict[str, list[Road]] = {}
    for r in _ROAD_LIST:
        by_name.setdefault(r.name, []).append(r)
    features: list[dict[str, Any]] = []
    for name, sections in by_name.items():
        sections.sort(key=lambda r: r.pr0)
        shape = [list(p) for r in sections for p in r.points]
        features.append(
            {"type": "Feature", "geometry": {"type": "LineString", "coordinates": shape}, "properties": {"road": name}}
        )
        for r in sections:
            for k in range(int(r.length) + 1):
                features.append(
                    {
                        "type": "Feature",
                        "geometry": {"type": "Point", "coordinates": list(r.point_at(k))},
                        "properties": {"road": name, "pr": r.pr0 + k},
                    }
                )
    return json.dumps({"type": "FeatureCollection", "features": features}).encode()


# Communes of Hérault: name -> (INSEE code, lon, lat of the town centre).
COMMUNES: dict[str, tuple[str, float, float]] = {
    "Agde": ("34003", 3.475, 43.311),
    "Aniane": ("34010", 3.587, 43.685),
    "Baillargues": ("34022", 4.012, 43.662),
    "Balaruc-les-Bains": ("34023", 3.678, 43.441),
    "Bédarieux": ("34028", 3.157, 43.615),
    "Béziers": ("34032", 3.215, 43.344),
    "Capestang": ("34052", 3.046, 43.328),
    "Castelnau-le-Lez": ("34057", 3.901, 43.633),
    "Castries": ("34058", 3.986, 43.679),
    "Clapiers": ("34077", 3.888, 43.658),
    "Clermont-l'Hérault": ("34079", 3.432, 43.627),
    "Cournonterral": ("34088", 3.720, 43.559),
    "Fabrègues": ("34095", 3.776, 43.551),
    "Faugères": ("34096", 3.180, 43.566),
    "Frontignan": ("34108", 3.756, 43.448),
    "Ganges": ("34111", 3.708, 43.934),
    "Gigean": ("34113", 3.711, 43.500),
    "Gignac": ("34114", 3.551, 43.652),
    "Grabels": ("34116", 3.799, 43.648),
    "Hérépian": ("34119", 3.117, 43.593),
    "Juvignac": ("34123", 3.810, 43.614),
    "Lamalou-les-Bains": ("34126", 3.080, 43.598),
    "Lattes": ("34129", 3.904, 43.567),
    "Lavérune": ("34134", 3.806, 43.590),
    "Lodève": ("34142", 3.319, 43.731),
    "Lunel": ("34145", 4.136, 43.675),
    "Lunel-Viel": ("34146", 4.092, 43.679),
    "Magalas": ("34147", 3.222, 43.471),
    "Marseillan": ("34150", 3.528, 43.355),
    "Les Matelles": ("34153", 3.812, 43.730),
    "Mauguio": ("34154", 4.008, 43.616),
    "Mèze": ("34157", 3.606, 43.426),
    "Montagnac": ("34162", 3.484, 43.480),
    "Montblanc": ("34166", 3.370, 43.397),
    "Montferrier-sur-Lez": ("34169", 3.858, 43.667),
    "Montpellier": ("34172", 3.877, 43.611),
    "Olargues": ("34187", 2.915, 43.556),
    "Olonzac": ("34189", 2.733, 43.282),
    "Palavas-les-Flots": ("34192", 3.931, 43.529),
    "Paulhan": ("34194", 3.459, 43.540),
    "Pérols": ("34198", 3.955, 43.565),
    "Pézenas": ("34199", 3.423, 43.459),
    "Pignan": ("34202", 3.764, 43.584),
    "Poussan": ("34213", 3.670, 43.489),
    "Prades-le-Lez": ("34217", 3.865, 43.698),
    "Puéchabon": ("34221", 3.617, 43.718),
    "Puisserguier": ("34225", 3.043, 43.368),
    "Riols": ("34229", 2.800, 43.493),
    "Saint-Aunès": ("34240", 3.963, 43.640),
    "Saint-Chinian": ("34245", 2.946, 43.422),
    "Saint-Clément-de-Rivière": ("34247", 3.834, 43.684),
    "Saint-Drézéry": ("34249", 4.013, 43.730),
    "Saint-Gély-du-Fesc": ("34255", 3.806, 43.693),
    "Saint-Jean-de-Védas": ("34270", 3.830, 43.577),
    "Saint-Martin-de-Londres": ("34274", 3.731, 43.790),
    "Saint-Mathieu-de-Tréviers": ("34276", 3.858, 43.768),
    "Sérignan": ("34299", 3.278, 43.281),
    "Sète": ("34301", 3.697, 43.403),
    "Valras-Plage": ("34324", 3.292, 43.248),
    "Vendargues": ("34327", 3.970, 43.657),
    "Vias": ("34332", 3.417, 43.312),
    "Vic-la-Gardiole": ("34333", 3.797, 43.491),
    "Villeneuve-lès-Béziers": ("34336", 3.284, 43.316),
}


def _nearest_commune(lon: float, lat: float) -> str:
    return min(COMMUNES, key=lambda n: _km((lon, lat), COMMUNES[n][1:]))


# ============================================================== sites


@dataclass(frozen=True)
class Direction:
    code: str  # compass, as the national counting model's `direction`
    label: str  # "vers Sète"
    inbound: bool  # towards the town: the morning peak


@dataclass(frozen=True)
class Site:
    id: str
    name: str
    road: Road
    pr: int
    abscissa: int
    commune: str
    insee: str
    lon: float
    lat: float
    aadt: int  # vehicles per weekday, both directions, all classes
    heavy_share: float  # of weekday traffic
    speed_limit: int
    directions: tuple[Direction, Direction]
    coastal: bool = False  # busier in summer
    gappy: bool = False  # loses hours now and then
    fault: str | None = None  # "stuck" (a direction reads 0 for whole days) or "spike"


# (road key, commune, lon, lat, AADT, weekday heavy share, speed limit, flags)
_SITE_TABLE: list[tuple[str, str, float, float, int, float, int, str]] = [
    ("rd613o", "Saint-Jean-de-Védas", 3.822, 43.572, 24000, 0.08, 70, ""),
    ("rd613o", "Fabrègues", 3.781, 43.552, 18500, 0.09, 90, ""),
    ("rd613o", "Gigean", 3.716, 43.505, 14000, 0.10, 90, ""),
    ("rd613o", "Poussan", 3.675, 43.490, 12500, 0.10, 90, ""),
    ("rd613o", "Mèze", 3.613, 43.432, 11000, 0.09, 80, "spike"),
    ("rd613o", "Montagnac", 3.484, 43.480, 8500, 0.11, 90, ""),
    ("rd613o", "Pézenas", 3.434, 43.466, 9000, 0.10, 70, ""),
    ("rd613e", "Vendargues", 3.965, 43.655, 21000, 0.08, 70, ""),
    ("rd613e", "Baillargues", 4.005, 43.660, 16000, 0.09, 90, ""),
    ("rd613e", "Lunel-Viel", 4.092, 43.676, 13000, 0.08, 90, ""),
    ("rd613e", "Lunel", 4.122, 43.677, 11500, 0.07, 50, ""),
    ("rd986n", "Saint-Clément-de-Rivière", 3.842, 43.668, 25000, 0.06, 70, ""),
    ("rd986n", "Saint-Gély-du-Fesc", 3.812, 43.692, 20000, 0.06, 90, ""),
    ("rd986n", "Les Matelles", 3.812, 43.726, 11000, 0.07, 90, ""),
    ("rd986n", "Saint-Martin-de-Londres", 3.737, 43.784, 6500, 0.08, 90, ""),
    ("rd986n", "Ganges", 3.713, 43.918, 4500, 0.07, 50, ""),
    ("rd986s", "Lattes", 3.913, 43.558, 19000, 0.06, 70, "coastal"),
    ("rd986s", "Palavas-les-Flots", 3.926, 43.538, 12000, 0.05, 50, "coastal"),
    ("rd612l", "Sète", 3.645, 43.390, 15000, 0.06, 70, "coastal"),
    ("rd612l", "Marseillan", 3.545, 43.335, 9500, 0.06, 80, "coastal"),
    ("rd612l", "Agde", 3.470, 43.318, 17000, 0.07, 70, "coastal"),
    ("rd612l", "Vias", 3.410, 43.318, 15000, 0.07, 90, "coastal"),
    ("rd612l", "Villeneuve-lès-Béziers", 3.285, 43.318, 16000, 0.08, 90, ""),
    ("rd612e", "Frontignan", 3.760, 43.450, 15500, 0.07, 70, "coastal"),
    ("rd612e", "Vic-la-Gardiole", 3.798, 43.493, 13500, 0.06, 90, ""),
    ("rd612w", "Puisserguier", 3.043, 43.370, 7000, 0.09, 90, ""),
    ("rd612w", "Saint-Chinian", 2.950, 43.420, 5000, 0.08, 70, ""),
    ("rd612w", "Riols", 2.800, 43.493, 3500, 0.09, 80, "gappy"),
    ("rd908", "Clermont-l'Hérault", 3.405, 43.627, 9000, 0.08, 70, ""),
    ("rd908", "Bédarieux", 3.170, 43.612, 7500, 0.07, 70, ""),
    ("rd908", "Lamalou-les-Bains", 3.085, 43.598, 5500, 0.06, 70, ""),
    ("rd908", "Olargues", 2.920, 43.555, 2200, 0.07, 80, "gappy"),
    ("rd909", "Béziers", 3.222, 43.372, 16000, 0.08, 70, ""),
    ("rd909", "Magalas", 3.224, 43.468, 8000, 0.09, 90, ""),
    ("rd909", "Faugères", 3.187, 43.562, 5000, 0.09, 90, "stuck"),
    ("rd909", "Hérépian", 3.160, 43.600, 4500, 0.08, 70, ""),
    ("rd32", "Gignac", 3.562, 43.662, 6000, 0.08, 70, ""),
    ("rd32", "Aniane", 3.590, 43.690, 4500, 0.07, 70, ""),
    ("rd32", "Puéchabon", 3.622, 43.720, 2500, 0.09, 80, "gappy"),
    ("rd65", "Juvignac", 3.805, 43.625, 22000, 0.07, 70, ""),
    ("rd65", "Grabels", 3.812, 43.652, 19000, 0.06, 70, ""),
    ("rd65", "Montferrier-sur-Lez", 3.860, 43.665, 17500, 0.06, 70, ""),
    ("rd65", "Clapiers", 3.890, 43.652, 16000, 0.06, 70, ""),
    ("rd65", "Castelnau-le-Lez", 3.912, 43.642, 24500, 0.07, 50, ""),
    ("rd66", "Mauguio", 3.975, 43.595, 23000, 0.06, 90, "coastal"),
    ("rd66", "Mauguio", 3.986, 43.556, 15000, 0.05, 70, "coastal"),
    ("rd5", "Lavérune", 3.805, 43.592, 12000, 0.06, 70, ""),
    ("rd5", "Pignan", 3.770, 43.585, 9500, 0.06, 70, ""),
    ("rd5", "Cournonterral", 3.727, 43.561, 6000, 0.07, 70, ""),
    ("rd17", "Prades-le-Lez", 3.866, 43.700, 14000, 0.06, 70, ""),
    ("rd17", "Saint-Mathieu-de-Tréviers", 3.860, 43.762, 8500, 0.07, 90, ""),
    ("rd610", "Castries", 3.980, 43.676, 12000, 0.08, 90, ""),
    ("rd610", "Saint-Drézéry", 4.015, 43.720, 7000, 0.08, 90, ""),
    ("rd609", "Montblanc", 3.370, 43.398, 11000, 0.12, 90, ""),
    ("rd609", "Paulhan", 3.462, 43.545, 7000, 0.11, 90, ""),
    ("rd609", "Lodève", 3.325, 43.720, 6500, 0.10, 70, "gappy"),
    ("rd11", "Capestang", 3.050, 43.330, 7500, 0.08, 90, "gappy"),
    ("rd11", "Olonzac", 2.745, 43.285, 3500, 0.07, 80, ""),
    ("rd64", "Sérignan", 3.282, 43.287, 14000, 0.06, 70, "coastal"),
    ("rd64", "Valras-Plage", 3.289, 43.257, 9000, 0.05, 50, "coastal"),
    ("rd600", "Balaruc-les-Bains", 3.680, 43.445, 20000, 0.09, 90, ""),
]


def _build_sites() -> tuple[Site, ...]:
    sites = []
    for road_key, commune, lon, lat, aadt, heavy, limit, flags in _SITE_TABLE:
        road = ROADS[road_key]
        km = road.project(lon, lat)
        pr, abscissa = road.pr_at(km)
        code = road.compass_at(km)
        towards_end = Direction(code, f"vers {road.end_town}", inbound=not road.town_at_start)
        towards_start = Direction(_OPPOSITE[code], f"vers {road.start_town}", inbound=road.town_at_start)
        place = commune if commune != "Mauguio" or lat > 43.58 else "Carnon (Mauguio)"
        sites.append(
            Site(
                id=f"34-{road.name}-{pr:03d}",
                name=f"{road.name} PR{pr}+{abscissa:03d} {place}",
                road=road,
                pr=pr,
                abscissa=abscissa,
                commune=commune,
                insee=COMMUNES[commune][0],
                lon=lon,
                lat=lat,
                aadt=aadt,
                heavy_share=heavy,
                speed_limit=limit,
                directions=(towards_end, towards_start),
                coastal="coastal" in flags,
                gappy="gappy" in flags,
                fault="stuck" if "stuck" in flags else "spike" if "spike" in flags else None,
            )
        )
    ids = [s.id for s in sites]
    if len(set(ids)) != len(ids):
        raise RuntimeError("two simulated sites share an id")
    return tuple(sites)


SITES: tuple[Site, ...] = _build_sites()
