"""A simulated Hérault over the real protocols: `roadfeed simulate`.

Sixty-odd counting sites on departmental roads and a timeline of road events,
served the way the real sources serve them (an Opendatasoft Explore v2.1 portal
and DATEX II situation feeds), so the real collectors can be pointed at it.

Everything is a pure function of (seed, time): a count is a function of
(seed, site, direction, class, hour), an event's versions a function of (seed,
day it happens), so any time range is served without storing anything and two
runs with one seed agree. Only the clock (`SimClock`) moves.

The model, in short:
- counts: site volume (AADT) × heavy share × weekly factor × daily profile by
  class and day type (weekday, Saturday, Sunday/holiday) × month, with a morning
  peak towards the town and an evening one away from it, then ±10 % noise. A few
  sites lose hours (no record at all), one has a stuck direction (zeros for whole
  days) and one sends implausible spikes, as real counters do.
- events: roadworks (announced days ahead, sometimes extended), accidents (more
  at rush hours), closures (planned at night, or sudden), snow and ice (winter,
  on the northern roads), floods (mostly autumn, in the plain). Each has 2 to 4
  versions and a final "Terminé" one, and stays listed 48 h after it ends.

Times in the datasets are UTC unless the request asks for a `timezone`, as on a
real Opendatasoft portal.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import re
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from email.utils import format_datetime, parsedate_to_datetime
from functools import cached_property, lru_cache
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

from feed.config import PublicationConfig
from feed.holidays import public_holidays
from feed.model import Geometry, StoredEvent
from feed.simulator.national import MEASURED_PATH as NATIONAL_MEASURED
from feed.simulator.national import NationalNetwork, add_national_routes

__all__ = [
    "COUNTERS_DATASET",
    "EVENTS_DATASET",
    "EventPlan",
    "EventVersion",
    "Road",
    "SimClock",
    "SimEvent",
    "Simulation",
    "Site",
    "SIM_APP_KEY",
    "build_simulator_app",
    "floor_hour",
    "herault_outline",
    "inside_herault",
    "iter_all_counter_records",
    "run_simulator",
    "simulator_clock",
    "simulator_sources",
]

UTC = timezone.utc
PARIS = ZoneInfo("Europe/Paris")
DEFAULT_SEED = 34
DEFAULT_HISTORY_DAYS = 30
ENDED_RETENTION = timedelta(hours=48)  # an ended event stays listed this long
SOURCE_ID = "sim"  # public DATEX ids are "sim:<event id>"

COUNTERS_DATASET = "comptages-routiers"
EVENTS_DATASET = "inforoute-evenements"
API_PATH = "/api/explore/v2.1"
MAX_LIMIT = 100
MAX_WINDOW = 10_000
DEFAULT_LIMIT = 10
MAX_SORTED = 200_000  # records sorted in memory when order_by does not start with the time field


# ============================================================== geography


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
    for (x1, y1), (x2, y2) in zip(ring, ring[1:]):
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
        for a, b in zip(self.points, self.points[1:]):
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
        pts += [p for p, c in zip(self.points, self.cumulative) if km_a < c < km_b]
        pts.append(self.point_at(km_b))
        return pts

    def project(self, lon: float, lat: float) -> float:
        """The km along the road of the point nearest to (lon, lat)."""
        best, best_km = math.inf, 0.0
        for i, (a, b) in enumerate(zip(self.points, self.points[1:])):
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
        return self.pr0 + whole, int(round((km - whole) * 1000)) % 1000


# Roads: real departmental roads of Hérault, drawn through the towns they serve.
_ROAD_LIST = [
    Road("rd613o", "RD613", "Montpellier", "Pézenas",
         ((3.845, 43.588), (3.822, 43.572), (3.781, 43.552), (3.716, 43.505), (3.675, 43.490),
          (3.613, 43.432), (3.540, 43.455), (3.484, 43.480), (3.432, 43.466)), floods=True),
    Road("rd613e", "RD613", "Montpellier", "Lunel",
         ((3.935, 43.630), (3.965, 43.655), (4.005, 43.660), (4.092, 43.676), (4.125, 43.677)),
         pr0=70, floods=True),
    Road("rd986n", "RD986", "Montpellier", "Ganges",
         ((3.860, 43.645), (3.842, 43.668), (3.812, 43.690), (3.812, 43.728), (3.770, 43.760),
          (3.735, 43.785), (3.725, 43.850), (3.712, 43.925)), pr0=2, snow_from_km=13.0),
    Road("rd986s", "RD986", "Montpellier", "Palavas-les-Flots",
         ((3.900, 43.585), (3.915, 43.555), (3.928, 43.535)), pr0=90, floods=True),
    Road("rd612l", "RD612", "Béziers", "Sète",
         ((3.240, 43.335), (3.285, 43.318), (3.410, 43.318), (3.470, 43.318), (3.545, 43.335),
          (3.585, 43.352), (3.615, 43.372), (3.645, 43.390), (3.668, 43.398), (3.690, 43.405)),
         pr0=40, town_at_start=True, floods=True),
    Road("rd612e", "RD612", "Sète", "Montpellier",
         ((3.697, 43.420), (3.760, 43.450), (3.798, 43.493), (3.850, 43.545)),
         pr0=80, town_at_start=False, floods=True),
    Road("rd612w", "RD612", "Béziers", "Saint-Pons-de-Thomières",
         ((3.180, 43.355), (3.043, 43.370), (2.950, 43.420), (2.870, 43.470), (2.800, 43.493)),
         pr0=2),
    Road("rd908", "RD908", "Clermont-l'Hérault", "Olargues",
         ((3.415, 43.625), (3.300, 43.640), (3.170, 43.612), (3.085, 43.598), (3.000, 43.570),
          (2.920, 43.555)), pr0=10, snow_from_km=24.0),
    Road("rd909", "RD909", "Béziers", "Bédarieux",
         ((3.222, 43.370), (3.224, 43.470), (3.185, 43.565), (3.157, 43.605)), pr0=3, snow_from_km=18.0),
    Road("rd32", "RD32", "Gignac", "Saint-Martin-de-Londres",
         ((3.560, 43.660), (3.590, 43.690), (3.620, 43.718), (3.680, 43.760), (3.731, 43.785)),
         pr0=1, snow_from_km=5.0),
    Road("rd65", "RD65", "Juvignac", "Castelnau-le-Lez",
         ((3.805, 43.620), (3.805, 43.650), (3.860, 43.665), (3.890, 43.652), (3.915, 43.640)),
         pr0=1, town_at_start=False),
    Road("rd66", "RD66", "Montpellier", "Carnon",
         ((3.935, 43.605), (3.975, 43.595), (3.985, 43.560), (3.991, 43.550)), pr0=1, floods=True),
    Road("rd5", "RD5", "Montpellier", "Cournonterral",
         ((3.830, 43.600), (3.805, 43.592), (3.770, 43.585), (3.725, 43.560)), pr0=2),
    Road("rd17", "RD17", "Montpellier", "Saint-Mathieu-de-Tréviers",
         ((3.872, 43.650), (3.866, 43.700), (3.860, 43.765)), pr0=3),
    Road("rd610", "RD610", "Montpellier", "Sommières",
         ((3.945, 43.650), (3.980, 43.676), (4.015, 43.720), (4.060, 43.745)), pr0=4, floods=True),
    Road("rd609", "RD609", "Béziers", "Lodève",
         ((3.250, 43.360), (3.370, 43.398), (3.432, 43.460), (3.462, 43.545), (3.420, 43.620),
          (3.322, 43.725)), pr0=5, snow_from_km=40.0),
    Road("rd11", "RD11", "Béziers", "Olonzac",
         ((3.190, 43.335), (3.050, 43.330), (2.960, 43.345), (2.910, 43.362), (2.875, 43.395),
          (2.845, 43.372), (2.805, 43.335), (2.770, 43.300), (2.745, 43.285)), pr0=2, floods=True),
    Road("rd64", "RD64", "Béziers", "Valras-Plage",
         ((3.245, 43.320), (3.282, 43.285), (3.290, 43.255)), pr0=6, floods=True),
    Road("rd600", "RD600", "Sète", "Poussan",
         ((3.680, 43.415), (3.680, 43.445), (3.690, 43.475)), pr0=1, town_at_start=True),
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
        features.append({"type": "Feature", "geometry": {"type": "LineString", "coordinates": shape},
                         "properties": {"road": name}})
        for r in sections:
            for k in range(int(r.length) + 1):
                features.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": list(r.point_at(k))},
                                 "properties": {"road": name, "pr": r.pr0 + k}})
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
        sites.append(Site(
            id=f"34-{road.name}-{pr:03d}",
            name=f"{road.name} PR{pr}+{abscissa:03d} {place}",
            road=road, pr=pr, abscissa=abscissa, commune=commune, insee=COMMUNES[commune][0],
            lon=lon, lat=lat, aadt=aadt, heavy_share=heavy, speed_limit=limit,
            directions=(towards_end, towards_start),
            coastal="coastal" in flags, gappy="gappy" in flags,
            fault="stuck" if "stuck" in flags else "spike" if "spike" in flags else None,
        ))
    ids = [s.id for s in sites]
    if len(set(ids)) != len(ids):
        raise RuntimeError("two simulated sites share an id")
    return tuple(sites)


SITES: tuple[Site, ...] = _build_sites()
VEHICLE_CLASSES = ("VL", "PL")  # light, heavy (ODS labels)
_CLASS_ALIASES = {"VL": "VL", "PL": "PL", "light": "VL", "heavy": "PL"}


# ============================================================== hashing


def _digest(seed: int, parts: tuple[Any, ...]) -> int:
    key = "|".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=16).digest(), "big")


def _unit(seed: int, *parts: Any) -> float:
    """A uniform number in [0, 1), a pure function of its arguments."""
    return (_digest(seed, parts) >> 75) / float(1 << 53)


def _units(seed: int, *parts: Any) -> tuple[float, float, float, float, float, float]:
    """Six independent uniforms (21 bits each) from one hash."""
    d = _digest(seed, parts)
    return tuple(((d >> (21 * i)) & 0x1FFFFF) / float(1 << 21) for i in range(6))  # type: ignore[return-value]


class _Draw:
    """Successive pure random draws under one key."""

    def __init__(self, seed: int, *key: Any) -> None:
        self._seed, self._key, self._n = seed, key, 0

    def u(self) -> float:
        self._n += 1
        return _unit(self._seed, *self._key, self._n)

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.u()

    def randint(self, a: int, b: int) -> int:
        return a + min(int(self.u() * (b - a + 1)), b - a)

    def chance(self, p: float) -> bool:
        return self.u() < p

    def choice(self, items: Sequence[Any]) -> Any:
        return items[min(int(self.u() * len(items)), len(items) - 1)]

    def weighted(self, weights: Sequence[float]) -> int:
        x = self.u() * sum(weights)
        for i, w in enumerate(weights):
            x -= w
            if x < 0:
                return i
        return len(weights) - 1


def _poisson(rate: float, u: float) -> int:
    k, p = 0, math.exp(-rate)
    cdf = p
    while u > cdf and k < 60:
        k += 1
        p *= rate / k
        cdf += p
    return k


# ============================================================== counts


def _normalise(values: Sequence[float]) -> tuple[float, ...]:
    total = sum(values)
    return tuple(v / total for v in values)


# Share of a day's traffic in each local hour.
_PROFILES = {
    ("VL", "weekday"): _normalise([0.8, 0.5, 0.35, 0.3, 0.45, 1.1, 3.2, 6.8, 7.8, 5.6, 5.0, 5.3,
                                   5.6, 5.3, 5.2, 5.7, 6.7, 8.1, 7.7, 5.3, 3.5, 2.6, 1.9, 1.3]),
    ("VL", "saturday"): _normalise([1.4, 1.0, 0.7, 0.5, 0.4, 0.6, 1.2, 2.3, 3.6, 5.1, 6.4, 7.0,
                                    6.7, 5.8, 5.6, 6.0, 6.4, 6.6, 6.3, 5.4, 4.0, 3.0, 2.3, 1.8]),
    ("VL", "sunday"): _normalise([1.6, 1.2, 0.9, 0.6, 0.4, 0.5, 0.8, 1.5, 2.6, 4.2, 5.8, 6.6,
                                  6.4, 5.4, 5.6, 6.4, 7.0, 7.2, 6.8, 5.8, 4.2, 3.0, 2.1, 1.4]),
    ("PL", "weekday"): _normalise([1.2, 1.0, 1.0, 1.2, 1.8, 3.0, 5.0, 6.5, 7.2, 7.4, 7.4, 7.0,
                                   6.0, 6.3, 7.0, 6.8, 6.0, 5.0, 3.8, 2.6, 1.9, 1.5, 1.3, 1.2]),
    ("PL", "saturday"): _normalise([1.0, 0.9, 0.9, 1.0, 1.5, 2.8, 4.8, 6.8, 8.0, 8.4, 8.2, 7.6,
                                    6.2, 5.6, 5.2, 4.8, 4.2, 3.6, 3.0, 2.4, 1.8, 1.4, 1.2, 1.1]),
    ("PL", "sunday"): _normalise([1.2, 1.0, 1.0, 1.0, 1.2, 1.6, 2.6, 3.6, 4.6, 5.4, 5.8, 5.8,
                                  5.4, 5.0, 5.0, 5.2, 5.4, 5.6, 5.6, 5.4, 5.4, 5.2, 4.6, 3.0]),
}
# Day volume relative to a mid-week day (Sunday lorry ban: PL far lower).
_WEEKLY = {
    "VL": (0.97, 1.0, 1.01, 1.03, 1.12, 0.86, 0.72),
    "PL": (1.0, 1.04, 1.05, 1.04, 0.94, 0.38, 0.12),
}
_MONTHLY = (0.92, 0.94, 0.98, 1.0, 1.02, 1.06, 1.10, 1.06, 1.03, 1.0, 0.96, 0.95)
_COASTAL_SUMMER = {6: 1.12, 7: 1.35, 8: 1.4, 9: 1.08}


@dataclass(frozen=True)
class _HourContext:
    index: int  # hours since the epoch (UTC)
    start: datetime  # UTC
    local: datetime
    day: date  # local date
    day_type: str  # weekday / saturday / sunday
    weekday: int  # 0 = Monday; holidays count as 6


@lru_cache(maxsize=8192)
def _hour_context(index: int) -> _HourContext:
    start = datetime.fromtimestamp(index * 3600, UTC)
    local = start.astimezone(PARIS)
    day = local.date()
    weekday = 6 if day in public_holidays("fr", day.year) else local.weekday()  # driven like Sundays
    day_type = "weekday" if weekday < 5 else "saturday" if weekday == 5 else "sunday"
    return _HourContext(index, start, local, day, day_type, weekday)


def _hour_index(t: datetime) -> int:
    if t.tzinfo is None:
        raise ValueError("datetime must carry a timezone")
    return math.floor(t.timestamp() / 3600)


def floor_hour(t: datetime) -> datetime:
    return datetime.fromtimestamp(_hour_index(t) * 3600, UTC)


@dataclass(frozen=True)
class Channel:
    site: Site
    direction: Direction
    vehicle_class: str  # "VL" / "PL"

    @property
    def id(self) -> str:
        return f"{self.site.id}:{self.direction.code}:{self.vehicle_class}"


# ============================================================== events

EVENT_KINDS = {
    # code: (ODS label, our type, DATEX record class)
    "T": ("Travaux", "roadworks", "MaintenanceWorks"),
    "A": ("Accident", "accident", "Accident"),
    "F": ("Fermeture", "closure", "RoadOrCarriagewayOrLaneManagement"),
    "N": ("Neige/Verglas", "weather", "WeatherRelatedRoadConditions"),
    "I": ("Inondation", "obstruction", "EnvironmentalObstruction"),
}
SEVERITY_FR = {"low": "Faible", "medium": "Moyenne", "high": "Forte", "highest": "Très forte"}
STATUS_FR = {"planned": "Prévu", "active": "En cours", "ended": "Terminé"}
LOOKBACK_DAYS = 32  # the longest event (with extension and retention) fits in this
LOOKAHEAD_DAYS = 5  # the longest announcement lead


@dataclass(frozen=True)
class EventVersion:
    at: datetime  # when this version was published
    status: str  # planned / active / ended
    severity: str
    start: datetime
    end: datetime | None  # planned end; for "ended", the actual end
    fr: str
    en: str


@dataclass(frozen=True)
class EventPlan:
    """An event's whole life: where it is and every version it will have."""

    id: str
    code: str  # key of EVENT_KINDS
    road: Road
    km_from: float
    km_to: float | None  # None: a point event
    direction: str  # both / positive / negative
    lanes: str | None
    detour: str | None
    versions: tuple[EventVersion, ...]
    subtype: str | None = None  # DATEX class when more precise than the kind's

    @property
    def label(self) -> str:
        return EVENT_KINDS[self.code][0]

    @property
    def type(self) -> str:
        return EVENT_KINDS[self.code][1]

    @property
    def datex_class(self) -> str:
        return self.subtype or EVENT_KINDS[self.code][2]

    @property
    def published_at(self) -> datetime:
        return self.versions[0].at

    @property
    def ended_at(self) -> datetime:
        return self.versions[-1].at

    @property
    def expires_at(self) -> datetime:
        return self.ended_at + ENDED_RETENTION

    @cached_property
    def geometry(self) -> Geometry:
        if self.km_to is None:
            return Geometry(type="Point", coordinates=list(self.road.point_at(self.km_from)))
        return Geometry(type="LineString", coordinates=[list(p) for p in self.road.between(self.km_from, self.km_to)])

    @cached_property
    def midpoint(self) -> tuple[float, float]:
        km = self.km_from if self.km_to is None else (self.km_from + self.km_to) / 2
        return self.road.point_at(km)

    @cached_property
    def commune(self) -> str:
        return _nearest_commune(*self.midpoint)

    @property
    def sens(self) -> str:
        r = self.road
        if self.direction == "positive":
            return f"{r.start_town} vers {r.end_town}"
        if self.direction == "negative":
            return f"{r.end_town} vers {r.start_town}"
        return "Les deux sens"

    def pr_text(self, km: float | None) -> str | None:
        if km is None:
            return None
        pr, abscissa = self.road.pr_at(km)
        return f"{pr}+{abscissa:03d}"

    def state_at(self, t: datetime) -> SimEvent | None:
        """The event as published at `t`, or None before it is published or once it expired."""
        if t < self.published_at or t >= self.expires_at:
            return None
        n = sum(1 for v in self.versions if v.at <= t)
        return SimEvent(self, n)


@dataclass(frozen=True)
class SimEvent:
    """One event at one version (1-based)."""

    plan: EventPlan
    version: int

    @property
    def current(self) -> EventVersion:
        return self.plan.versions[self.version - 1]

    @property
    def id(self) -> str:
        return self.plan.id

    def ods_record(self) -> dict[str, Any]:
        """The record of the `inforoute-evenements` dataset (datetimes not yet rendered)."""
        p, v = self.plan, self.current
        lon, lat = p.midpoint
        return {
            "id": p.id,
            "type": p.label,
            "statut": STATUS_FR[v.status],
            "gravite": SEVERITY_FR[v.severity],
            "debut": v.start,
            "fin": v.end,
            "route": p.road.name,
            "pr_debut": p.pr_text(p.km_from),
            "pr_fin": p.pr_text(p.km_to),
            "sens": p.sens,
            "voies": p.lanes,
            "commune": p.commune,
            "insee": COMMUNES[p.commune][0],
            "description": v.fr,
            "description_en": v.en,
            "deviation": p.detour,
            "version": self.version,
            "mise_a_jour": v.at,
            "geo_shape": {"type": "Feature", "geometry": p.geometry.model_dump(), "properties": {}},
            "geo_point_2d": {"lon": lon, "lat": lat},
        }

    def stored_event(self, last_seen: datetime | None = None) -> StoredEvent:
        """The event as our storage would hold it, for the DATEX exporters."""
        p, v = self.plan, self.current
        planned_end = v.end
        actual_end = None
        if v.status == "ended":
            actual_end = v.end
            planned_end = p.versions[self.version - 2].end if self.version > 1 else None
        refs: list[dict[str, Any]] = []
        points = [("point", p.km_from)] if p.km_to is None else [("from", p.km_from), ("to", p.km_to)]
        for at, km in points:
            pr, abscissa = p.road.pr_at(km)
            refs.append({"at": at, "road": p.road.name, "pr": pr, "abscissa": abscissa, "departement": "34"})
        return StoredEvent(
            external_id=p.id,
            type=p.type,  # type: ignore[arg-type]
            subtype=p.datex_class,
            status=v.status,  # type: ignore[arg-type]
            severity=v.severity,  # type: ignore[arg-type]
            planned_start=v.start,
            planned_end=planned_end,
            actual_start=v.start if v.status != "planned" else None,
            actual_end=actual_end,
            road=p.road.name,
            direction=p.direction,
            lanes_affected=p.lanes,
            geometry=p.geometry,
            descriptions={"fr": v.fr, "en": v.en},
            detour=p.detour,
            location_refs={"pr": refs, "insee": COMMUNES[p.commune][0]},
            source_version=str(self.version),
            source_updated=v.at,
            id=f"{SOURCE_ID}:{p.id}",
            source_id=SOURCE_ID,
            version=self.version,
            first_seen=p.published_at,
            last_seen=max(last_seen or v.at, v.at),
            updated=v.at,
        )


def _local(day: date, minutes: float) -> datetime:
    """UTC instant of a local wall-clock time on `day` (minutes after local midnight)."""
    wall = datetime(day.year, day.month, day.day, tzinfo=PARIS) + timedelta(minutes=minutes)
    return wall.astimezone(UTC)


def _when_fr(t: datetime) -> str:
    local = t.astimezone(PARIS)
    return f"{local:%d/%m} à {local:%H}h{local:%M}"


def _when_en(t: datetime) -> str:
    local = t.astimezone(PARIS)
    return f"{local:%d/%m} at {local:%H:%M}"


_WORKS = [
    ("Réfection de chaussée", "Road resurfacing", None),
    ("Renouvellement de la couche de roulement", "Renewal of the road surface", None),
    ("Travaux sur le réseau d'eau potable", "Water main works", None),
    ("Reprise des glissières de sécurité", "Crash barrier repairs", None),
    ("Aménagement d'un giratoire", "Roundabout construction", "ConstructionWorks"),
    ("Fauchage des accotements", "Verge mowing", None),
    ("Travaux d'élagage", "Tree pruning", None),
    ("Réparation d'un ouvrage d'art", "Bridge repairs", None),
    ("Marquage au sol", "Road marking", None),
]
# (French, English, lanes, severity)
_WORK_MEASURES = [
    ("circulation alternée par feux", "traffic controlled by temporary lights", "1 voie sur 2", "medium"),
    ("chaussée rétrécie", "narrowed carriageway", "Voie rétrécie", "low"),
    ("basculement de circulation", "traffic switched to the other carriageway", "Basculement", "medium"),
    ("vitesse limitée à 50 km/h", "speed limited to 50 km/h", None, "low"),
    ("route barrée, déviation mise en place", "road closed, diversion in place", "Toutes voies", "high"),
]
_ACCIDENTS = [
    ("Accident impliquant deux véhicules légers", "Collision between two cars"),
    ("Accident impliquant un véhicule léger et un poids lourd", "Collision between a car and a lorry"),
    ("Sortie de route d'un véhicule", "A vehicle has left the road"),
    ("Accident impliquant un deux-roues", "Accident involving a motorcycle"),
    ("Carambolage impliquant plusieurs véhicules", "Pile-up involving several vehicles"),
]
_ACCIDENT_MEASURES = [
    ("voie de droite neutralisée", "right lane blocked", "Voie de droite neutralisée"),
    ("circulation alternée", "alternating one-way traffic", "1 voie sur 2"),
    ("ralentissements", "slow traffic", None),
    ("route coupée", "road closed", "Toutes voies"),
]
_SUDDEN_CLOSURES = [
    ("Chute de pierres", "Rockfall"),
    ("Effondrement de chaussée", "Road surface collapse"),
    ("Arbre tombé sur la chaussée", "Fallen tree on the road"),
    ("Incendie de végétation à proximité", "Wildfire nearby"),
    ("Déversement de produits sur la chaussée", "Spillage on the road"),
]
_PLANNED_CLOSURES = [
    ("Fermeture de nuit pour travaux", "Night closure for roadworks", "night"),
    ("Course cycliste", "Cycle race", "day"),
    ("Fête locale", "Local festival", "day"),
    ("Pose d'une passerelle", "Footbridge installation", "night"),
]


class _EventFactory:
    """The plans of one kind of event for one day: a pure function of (seed, kind, day)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def plans(self, code: str, day: date) -> list[EventPlan]:
        draw = _Draw(self.seed, "events", code, day.isoformat())
        rate = self._rate(code, day)
        count = _poisson(rate, draw.u()) if rate > 0 else 0
        make = getattr(self, f"_make_{code}")
        out = []
        for i in range(count):
            d = _Draw(self.seed, "event", code, day.isoformat(), i)
            plan = make(d, f"EV34-{day:%Y%m%d}-{code}{i + 1:02d}", day)
            if plan is not None:
                out.append(plan)
        return out

    @staticmethod
    def _rate(code: str, day: date) -> float:
        weekend = day.weekday() >= 5
        month = day.month
        if code == "T":
            return 0.15 if weekend else 1.4
        if code == "A":
            return 2.2 if weekend else 2.8
        if code == "F":
            return 0.35
        if code == "N":
            return {12: 0.5, 1: 0.6, 2: 0.5, 11: 0.12, 3: 0.15}.get(month, 0.0)
        if code == "I":
            return {9: 0.3, 10: 0.45, 11: 0.35}.get(month, 0.04)
        raise ValueError(code)

    # -- places

    @staticmethod
    def _place(d: _Draw, roads: Sequence[Road], length: tuple[float, float],
               point_share: float = 0.0, from_km: Callable[[Road], float] = lambda r: 0.0,
               ) -> tuple[Road, float, float | None]:
        road = d.choice(roads)
        lo = from_km(road)
        span = d.uniform(*length)
        if d.chance(point_share):
            return road, round(d.uniform(lo, road.length), 3), None
        start = d.uniform(lo, max(lo, road.length - span))
        end = min(road.length, start + span)
        if end - start < 0.05:
            start = max(0.0, end - 0.2)
        return road, round(start, 3), round(end, 3)

    @staticmethod
    def _detour(d: _Draw, road: Road) -> str:
        others = sorted({r.name for r in _ROAD_LIST if r.name != road.name})
        return f"Déviation par la {d.choice(others)}, suivre les panneaux."

    # -- kinds

    def _make_T(self, d: _Draw, ident: str, day: date) -> EventPlan | None:
        work_fr, work_en, subtype = d.choice(_WORKS)
        measure_fr, measure_en, lanes, severity = d.choice(_WORK_MEASURES)
        road, km_a, km_b = self._place(d, _ROAD_LIST, (0.3, 4.0))
        start = _local(day, 450 + 30 * d.randint(0, 3))
        single_day = d.chance(0.4)
        if single_day:
            end = _local(day, 16 * 60 + 30 * d.randint(0, 2))
        else:
            end = _local(day + timedelta(days=d.randint(2, 21)), 17 * 60)
        announced = _local(day - timedelta(days=d.randint(1, 4)), 9 * 60 + d.randint(0, 420))
        where_fr = f"sur la {road.name} à {_nearest_commune(*road.point_at(km_a))}"
        where_en = f"on the {road.name} near {_nearest_commune(*road.point_at(km_a))}"
        versions = [EventVersion(
            announced, "planned", severity, start, end,
            f"{work_fr} {where_fr} : {measure_fr}. Du {_when_fr(start)} au {_when_fr(end)}.",
            f"{work_en} {where_en}: {measure_en}. From {_when_en(start)} to {_when_en(end)}.",
        )]
        began = start + timedelta(minutes=d.randint(0, 20))
        versions.append(EventVersion(
            began, "active", severity, start, end,
            f"Chantier en cours : {work_fr.lower()} {where_fr}, {measure_fr}. Fin prévue le {_when_fr(end)}.",
            f"Works in progress: {work_en.lower()} {where_en}, {measure_en}. Expected end {_when_en(end)}.",
        ))
        if not single_day and d.chance(0.35):
            at = start + (end - start) * d.uniform(0.4, 0.8)
            end = end + timedelta(days=d.randint(1, 5))
            severity = "high" if severity == "medium" and d.chance(0.3) else severity
            versions.append(EventVersion(
                at, "active", severity, start, end,
                f"Prolongation du chantier : {work_fr.lower()} {where_fr}, {measure_fr}. "
                f"Fin prévue le {_when_fr(end)}.",
                f"Works extended: {work_en.lower()} {where_en}, {measure_en}. Expected end {_when_en(end)}.",
            ))
        finished = max(end + timedelta(minutes=d.randint(-30, 45)), versions[-1].at + timedelta(minutes=10))
        versions.append(EventVersion(
            finished, "ended", severity, start, finished,
            f"Travaux terminés ({work_fr.lower()}), circulation rétablie.",
            f"Works finished ({work_en.lower()}), traffic back to normal.",
        ))
        return EventPlan(ident, "T", road, km_a, km_b, "both", lanes,
                         self._detour(d, road) if lanes == "Toutes voies" else None,
                         tuple(versions), subtype)

    def _make_A(self, d: _Draw, ident: str, day: date) -> EventPlan | None:
        what_fr, what_en = d.choice(_ACCIDENTS)
        measure_fr, measure_en, lanes = d.choice(_ACCIDENT_MEASURES)
        road, km_a, km_b = self._place(d, _ROAD_LIST, (0.2, 0.8), point_share=0.65)
        profile = _PROFILES[("VL", "weekday" if day.weekday() < 5 else "sunday")]
        t0 = _local(day, 60 * d.weighted(profile) + d.randint(0, 59))
        published = t0 + timedelta(minutes=d.randint(5, 20))
        sev1 = ("medium", "high", "highest")[d.weighted((0.55, 0.35, 0.10))]
        if measure_fr == "route coupée" and sev1 == "medium":
            sev1 = "high"
        est1 = t0 + timedelta(minutes=d.choice((60, 90, 120)))
        versions = [EventVersion(
            published, "active", sev1, t0, est1,
            f"{what_fr} sur la {road.name} : {measure_fr}.",
            f"{what_en} on the {road.name}: {measure_en}.",
        )]
        at2 = published + timedelta(minutes=d.randint(20, 45))
        sev2 = "medium" if sev1 == "high" and d.chance(0.5) else sev1
        est2 = max(est1, at2 + timedelta(minutes=d.randint(30, 90)))
        step_fr, step_en = d.choice((("Intervention des secours en cours", "Emergency services on site"),
                                     ("Dépannage en cours", "Vehicle recovery in progress")))
        versions.append(EventVersion(
            at2, "active", sev2, t0, est2,
            f"{what_fr} sur la {road.name} : {measure_fr}. {step_fr}.",
            f"{what_en} on the {road.name}: {measure_en}. {step_en}.",
        ))
        cleared = max(t0 + timedelta(minutes=d.randint(45, 240)), at2 + timedelta(minutes=10))
        versions.append(EventVersion(
            cleared, "ended", sev2, t0, cleared,
            f"Accident dégagé sur la {road.name}, circulation rétablie.",
            f"Accident cleared on the {road.name}, traffic back to normal.",
        ))
        direction = d.choice(("positive", "negative", "positive", "negative", "both"))
        return EventPlan(ident, "A", road, km_a, km_b, direction, lanes, None, tuple(versions))

    def _make_F(self, d: _Draw, ident: str, day: date) -> EventPlan | None:
        road, km_a, km_b = self._place(d, _ROAD_LIST, (1.0, 6.0))
        detour = self._detour(d, road)
        if d.chance(0.6):
            what_fr, what_en, when = d.choice(_PLANNED_CLOSURES)
            if when == "night":
                start, end = _local(day, 21 * 60), _local(day + timedelta(days=1), 6 * 60)
            else:
                start, end = _local(day, 13 * 60), _local(day, 13 * 60 + 60 * d.randint(3, 5))
            announced = _local(day - timedelta(days=d.randint(2, 3)), 10 * 60 + d.randint(0, 360))
            versions = [
                EventVersion(announced, "planned", "high", start, end,
                             f"{what_fr} : route fermée du {_when_fr(start)} au {_when_fr(end)}.",
                             f"{what_en}: road closed from {_when_en(start)} to {_when_en(end)}."),
                EventVersion(start, "active", "high", start, end,
                             f"{what_fr} : route fermée jusqu'au {_when_fr(end)}.",
                             f"{what_en}: road closed until {_when_en(end)}."),
            ]
            reopened = end + timedelta(minutes=d.randint(-20, 30))
        else:
            what_fr, what_en = d.choice(_SUDDEN_CLOSURES)
            start = _local(day, d.randint(0, 24 * 60 - 1))
            published = start + timedelta(minutes=d.randint(10, 30))
            end = start + timedelta(hours=d.randint(2, 8))
            severity = d.choice(("high", "highest"))
            versions = [EventVersion(published, "active", severity, start, end,
                                     f"{what_fr} : route fermée à la circulation.",
                                     f"{what_en}: road closed to traffic.")]
            if d.chance(0.4):
                at = published + (end - published) * d.uniform(0.3, 0.8)
                end = end + timedelta(hours=d.randint(2, 24))
                versions.append(EventVersion(at, "active", severity, start, end,
                                             f"{what_fr} : fermeture prolongée jusqu'au {_when_fr(end)}.",
                                             f"{what_en}: closure extended until {_when_en(end)}."))
            reopened = end + timedelta(minutes=d.randint(-60, 30))
        reopened = max(reopened, versions[-1].at + timedelta(minutes=10))
        versions.append(EventVersion(reopened, "ended", versions[-1].severity, start, reopened,
                                     "Route rouverte à la circulation.", "Road reopened to traffic."))
        return EventPlan(ident, "F", road, km_a, km_b, "both", "Toutes voies", detour, tuple(versions))

    def _make_N(self, d: _Draw, ident: str, day: date) -> EventPlan | None:
        hills = [r for r in _ROAD_LIST if r.snow_from_km is not None]
        road, km_a, km_b = self._place(d, hills, (3.0, 12.0), from_km=lambda r: r.snow_from_km or 0.0)
        start = _local(day, d.randint(0, 7 * 60))
        published = start + timedelta(minutes=d.randint(0, 30))
        end = start + timedelta(hours=d.randint(4, 36))
        versions = [EventVersion(published, "active", d.choice(("low", "medium")), start, end,
                                 "Risque de verglas, prudence.", "Risk of black ice, drive carefully.")]
        if d.chance(0.5):
            at = published + (end - published) * d.uniform(0.1, 0.4)
            versions.append(EventVersion(at, "active", "high", start, end,
                                         "Chaussée enneigée, équipements spéciaux obligatoires.",
                                         "Snow on the road, winter equipment required."))
            at = at + (end - at) * d.uniform(0.3, 0.7)
            versions.append(EventVersion(at, "active", "medium", start, end,
                                         "Salage en cours, chaussée humide.",
                                         "Gritting in progress, wet road surface."))
        finished = max(end, versions[-1].at + timedelta(minutes=10))
        versions.append(EventVersion(finished, "ended", versions[-1].severity, start, finished,
                                     "Fin de l'épisode, conditions normales.", "Conditions back to normal."))
        return EventPlan(ident, "N", road, km_a, km_b, "both", None, None, tuple(versions))

    def _make_I(self, d: _Draw, ident: str, day: date) -> EventPlan | None:
        plain = [r for r in _ROAD_LIST if r.floods]
        road, km_a, km_b = self._place(d, plain, (0.3, 2.0), point_share=0.25)
        start = _local(day, d.randint(0, 24 * 60 - 1))
        published = start + timedelta(minutes=d.randint(5, 40))
        end = start + timedelta(hours=d.randint(6, 72))
        closed = d.chance(0.5)
        texts = {
            False: ("Chaussée submergée par endroits, prudence.", "Road partly flooded, drive carefully.",
                    "medium", "Voie de droite inondée"),
            True: ("Route coupée en raison de la montée des eaux.", "Road closed due to rising water.",
                   "highest", "Toutes voies"),
        }
        fr, en, severity, lanes = texts[closed]
        versions = [EventVersion(published, "active", severity, start, end, fr, en)]
        at = published + (end - published) * d.uniform(0.2, 0.5)
        if d.chance(0.5):
            end = end + timedelta(hours=d.randint(6, 24))
        fr2, en2, severity2, _ = texts[not closed]
        versions.append(EventVersion(at, "active", severity2, start, end, fr2, en2))
        finished = max(end + timedelta(minutes=d.randint(-60, 60)), at + timedelta(minutes=10))
        versions.append(EventVersion(finished, "ended", severity2, start, finished,
                                     "Décrue : route rouverte à la circulation.", "Water receded: road reopened."))
        return EventPlan(ident, "I", road, km_a, km_b, "both", lanes,
                         self._detour(d, road) if closed else None, tuple(versions))


# ============================================================== the model


class Simulation:
    """The simulated département for one seed. Pure: nothing depends on the wall clock."""

    def __init__(self, seed: int = DEFAULT_SEED) -> None:
        self.seed = int(seed)
        self.sites = SITES
        self.sites_by_id = {s.id: s for s in SITES}
        self.channels: tuple[Channel, ...] = tuple(sorted(
            (Channel(s, d, c) for s in SITES for d in s.directions for c in VEHICLE_CLASSES),
            key=lambda ch: ch.id,
        ))
        self._factory = _EventFactory(self.seed)
        self._plans_cache: dict[tuple[str, date], list[EventPlan]] = {}
        self._gappy = [s for s in SITES if s.gappy]

    # -- counts

    def count(self, site_id: str, direction: str, vehicle_class: str, hour: datetime) -> int | None:
        """Vehicles in the hour starting at `hour` (None: the counter sent nothing).

        `direction` is the compass code (`sens`), `vehicle_class` "VL"/"PL" or
        "light"/"heavy". `hour` is truncated to the hour.
        """
        site = self.sites_by_id[site_id]
        d = next((x for x in site.directions if x.code == direction), None)
        if d is None:
            raise KeyError(f"site {site_id} has no direction {direction!r}")
        return self._count(site, d, _CLASS_ALIASES[vehicle_class], _hour_context(_hour_index(hour)))[0]

    def mean_speed(self, site_id: str, direction: str, vehicle_class: str, hour: datetime) -> float | None:
        site = self.sites_by_id[site_id]
        d = next(x for x in site.directions if x.code == direction)
        return self._count(site, d, _CLASS_ALIASES[vehicle_class], _hour_context(_hour_index(hour)))[1]

    def _mean(self, site: Site, d: Direction, vclass: str, ctx: _HourContext) -> float:
        heavy = site.heavy_share
        share = heavy if vclass == "PL" else 1 - heavy
        daily = site.aadt * share * _WEEKLY[vclass][ctx.weekday] * _MONTHLY[ctx.day.month - 1]
        if site.coastal:
            daily *= _COASTAL_SUMMER.get(ctx.day.month, 1.0)
        h = ctx.local.hour
        tilt = 1.0
        if ctx.day_type == "weekday" and vclass == "VL":
            if 6 <= h <= 9:
                tilt = 1.3 if d.inbound else 0.7
            elif 16 <= h <= 19:
                tilt = 0.75 if d.inbound else 1.25
        return daily * _PROFILES[(vclass, ctx.day_type)][h] * 0.5 * tilt

    def _count(self, site: Site, d: Direction, vclass: str, ctx: _HourContext) -> tuple[int | None, float | None]:
        if site.gappy and ctx.local.hour in self._gap_hours(site.id, ctx.day):
            return None, None
        u = _units(self.seed, "count", site.id, d.code, vclass, ctx.index)
        z = (u[0] + u[1] + u[2] - 1.5) * 2.0  # about N(0, 1)
        x = self._mean(site, d, vclass, ctx) * math.exp(0.1 * z - 0.005)
        n = int(x) + (1 if x - int(x) > u[3] else 0)
        if site.fault == "stuck" and d is site.directions[1] and self._stuck(site.id, ctx.day):
            return 0, None
        if site.fault == "spike" and u[4] < 0.004:
            n = max(n * 9 + 700, 2400 + int(u[5] * 1600))  # beyond what one lane can carry
        if n == 0:
            return 0, None
        limit = site.speed_limit if vclass == "VL" else min(site.speed_limit, 80)
        capacity = 1700.0
        load = self._mean(site, d, "VL", ctx) / capacity
        speed = limit * (0.93 if vclass == "VL" else 0.88) * (1 - 0.35 * min(load, 1.2) ** 3)
        speed += (u[5] - 0.5) * 6
        return n, round(max(speed, 5.0), 1)

    @lru_cache(maxsize=4096)  # noqa: B019 (one Simulation per app; the cache is bounded)
    def _gap_hours(self, site_id: str, day: date) -> frozenset[int]:
        d = _Draw(self.seed, "gap", site_id, day.isoformat())
        if not d.chance(0.3):
            return frozenset()
        first = d.randint(0, 23)
        return frozenset(range(first, min(24, first + d.randint(1, 8))))

    @lru_cache(maxsize=4096)  # noqa: B019
    def _stuck(self, site_id: str, day: date) -> bool:
        return _unit(self.seed, "stuck", site_id, day.isoformat()) < 0.2

    def present_count(self, hour_index: int) -> int:
        """How many counter records the hour has (channels minus missing sites)."""
        ctx = _hour_context(hour_index)
        missing = sum(1 for s in self._gappy if ctx.local.hour in self._gap_hours(s.id, ctx.day))
        return len(self.channels) - missing * 2 * len(VEHICLE_CLASSES)

    def counter_records(self, hour_index: int) -> list[dict[str, Any]]:
        """The counter records of one hour, ordered by `id_canal` (datetimes not rendered)."""
        ctx = _hour_context(hour_index)
        out = []
        for ch in self.channels:
            n, speed = self._count(ch.site, ch.direction, ch.vehicle_class, ctx)
            if n is None:
                continue
            s = ch.site
            out.append({
                "id_canal": ch.id,
                "id_site": s.id,
                "nom_site": s.name,
                "route": s.road.name,
                "pr": s.pr,
                "abscisse": s.abscissa,
                "commune": s.commune,
                "insee": s.insee,
                "sens": ch.direction.code,
                "libelle_sens": ch.direction.label,
                "categorie": ch.vehicle_class,
                "date_heure": ctx.start,
                "debit": n,
                "vitesse_moyenne": speed,
                "geo_point_2d": {"lon": s.lon, "lat": s.lat},
            })
        return out

    # -- events

    def _plans(self, code: str, day: date) -> list[EventPlan]:
        key = (code, day)
        plans = self._plans_cache.get(key)
        if plans is None:
            if len(self._plans_cache) > 20_000:
                self._plans_cache.clear()
            plans = self._plans_cache[key] = self._factory.plans(code, day)
        return plans

    def event_plans(self, around: datetime) -> list[EventPlan]:
        """Every plan that can be listed at `around` (and some that cannot)."""
        day = around.astimezone(PARIS).date()
        out = []
        for offset in range(-LOOKBACK_DAYS, LOOKAHEAD_DAYS + 1):
            for code in EVENT_KINDS:
                out.extend(self._plans(code, day + timedelta(days=offset)))
        return out

    def events_at(self, t: datetime) -> list[SimEvent]:
        """The events listed at `t`: published, and not ended more than 48 h ago; by id."""
        states = (p.state_at(t) for p in self.event_plans(t))
        return sorted((s for s in states if s is not None), key=lambda e: e.id)

    def snapshot(self, t: datetime) -> tuple[list[SimEvent], datetime]:
        """(events listed at t, when that list last changed)."""
        changed = datetime(2000, 1, 1, tzinfo=UTC)
        events = []
        for plan in self.event_plans(t):
            if plan.published_at > t:
                continue
            if plan.expires_at <= t:
                changed = max(changed, plan.expires_at)
                continue
            state = plan.state_at(t)
            if state is not None:
                events.append(state)
                changed = max(changed, state.current.at)
        events.sort(key=lambda e: e.id)
        return events, changed


# ============================================================== the clock


class SimClock:
    """Simulated time: `speed` simulated seconds per real second, from `start`.

    `start` defaults to now, truncated to the hour. `speed` 0 freezes the clock
    (then only `advance` moves it: handy in tests). `monotonic` is the real clock.
    """

    def __init__(self, start: datetime | None = None, speed: float = 1.0, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if start is None:
            start = floor_hour(datetime.now(UTC))
        if start.tzinfo is None:
            raise ValueError("start must carry a timezone")
        if not (speed >= 0 and math.isfinite(speed)):
            raise ValueError(f"speed must be a finite number >= 0, not {speed!r}")
        self.start = start.astimezone(UTC)
        self.speed = float(speed)
        self._monotonic = monotonic
        self._t0 = monotonic()
        self._offset = timedelta(0)

    def now(self) -> datetime:
        elapsed = (self._monotonic() - self._t0) * self.speed
        return self.start + self._offset + timedelta(seconds=elapsed)

    def advance(self, delta: timedelta) -> None:
        """Jump simulated time forward (or back, with a negative delta)."""
        self._offset += delta

    def describe(self) -> dict[str, Any]:
        return {"start": _iso(self.start, UTC), "now": _iso(self.now(), UTC), "speed": self.speed}


# ============================================================== ODSQL subset


class OdsError(Exception):
    """An error answered the way an Opendatasoft portal answers it."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def response(self) -> web.Response:
        return _json_response({"error_code": self.code, "message": self.message}, status=self.status)


@dataclass(frozen=True)
class _Condition:
    field: str
    op: str
    value: Any  # datetime, str, float, bool


_TOKEN = re.compile(r"""\s*(?:
    (?P<date>date'(?P<dateval>[^']*)')
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<num>-?\d+(?:\.\d+)?)
  | (?P<op>>=|<=|!=|=|>|<)
  | (?P<lp>\()
  | (?P<rp>\))
  | (?P<word>`[^`]+`|[A-Za-z_][A-Za-z0-9_]*)
)""", re.X)


_GEO_TYPES = ("geo_point_2d", "geo_shape")


def _odsql_error(message: str) -> OdsError:
    return OdsError(400, "ODSQLError", message)


def _parse_date(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise _odsql_error(f"Invalid date literal: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_where(text: str, fields: dict[str, str]) -> list[_Condition]:
    """The conditions of a `where` made of comparisons joined by AND (parentheses allowed).

    The subset our collectors send; anything else is refused with an ODSQLError.
    """
    tokens: list[tuple[str, Any]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise _odsql_error(f"Syntax error at position {pos} in where clause: {text[pos:pos + 20]!r}")
        pos = m.end()
        if m.group("date") is not None:
            tokens.append(("value", _parse_date(m.group("dateval"))))
        elif m.group("str") is not None:
            raw = m.group("str")[1:-1]
            tokens.append(("value", re.sub(r"\\(.)", r"\1", raw)))
        elif m.group("num") is not None:
            tokens.append(("value", float(m.group("num"))))
        elif m.group("op") is not None:
            tokens.append(("op", m.group("op")))
        elif m.group("lp") is not None:
            tokens.append(("(", None))
        elif m.group("rp") is not None:
            tokens.append((")", None))
        else:
            word = m.group("word")
            lower = word.lower()
            if lower == "and":
                tokens.append(("and", None))
            elif lower in ("or", "not", "in", "like", "search", "within_distance", "in_bbox"):
                raise _odsql_error(f"{word!r} is not supported by the simulator (only comparisons joined by AND)")
            elif lower in ("true", "false"):
                tokens.append(("value", lower == "true"))
            else:
                tokens.append(("field", word.strip("`")))
    conditions: list[_Condition] = []
    i = 0
    depth = 0
    expect_term = True
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "(" and expect_term:
            depth += 1
            i += 1
            continue
        if kind == ")" and not expect_term:
            depth -= 1
            if depth < 0:
                raise _odsql_error("Unbalanced parenthesis in where clause")
            i += 1
            continue
        if kind == "and" and not expect_term:
            expect_term = True
            i += 1
            continue
        if (expect_term and kind == "field" and i + 2 < len(tokens)
                and tokens[i + 1][0] == "op" and tokens[i + 2][0] == "value"):
            name = value
            if name not in fields:
                raise _odsql_error(f"Unknown field: {name}")
            if fields[name] in _GEO_TYPES:
                raise _odsql_error(f"Comparisons on the geographic field {name} are not supported")
            conditions.append(_Condition(name, tokens[i + 1][1], tokens[i + 2][1]))
            expect_term = False
            i += 3
            continue
        raise _odsql_error(f"Syntax error in where clause near token {i + 1} ({kind})")
    if depth != 0 or (expect_term and tokens):
        raise _odsql_error("Incomplete where clause")
    return conditions


def parse_select(text: str, fields: dict[str, str]) -> list[str] | None:
    """The fields of a `select` made of plain field names (None: all of them)."""
    names = [n.strip().strip("`") for n in text.split(",") if n.strip()]
    if not names or names == ["*"]:
        return None
    for name in names:
        if name not in fields:
            raise _odsql_error(f"Unknown field in select (only plain field names are supported): {name}")
    return names


def parse_order_by(text: str, fields: dict[str, str]) -> list[tuple[str, bool]]:
    """[(field, ascending)] from `field asc, other desc`."""
    keys = []
    for part in text.split(","):
        words = part.split()
        if not words:
            continue
        if len(words) > 2 or (len(words) == 2 and words[1].lower() not in ("asc", "desc")):
            raise _odsql_error(f"Invalid order_by expression: {part.strip()!r}")
        name = words[0].strip("`")
        if name not in fields:
            raise _odsql_error(f"Unknown field in order_by: {name}")
        if fields[name] in _GEO_TYPES:
            raise _odsql_error(f"Cannot order by the geographic field {name}")
        keys.append((name, len(words) == 1 or words[1].lower() == "asc"))
    return keys


def _compare(left: Any, op: str, right: Any) -> bool:
    if left is None:
        return False
    if isinstance(left, datetime) and isinstance(right, str):
        right = _parse_date(right)
    if isinstance(left, (int, float)) and not isinstance(left, bool) and isinstance(right, str):
        try:
            right = float(right)
        except ValueError:
            return False
    if isinstance(left, str) and isinstance(right, float):
        right = f"{right:g}"
    try:
        if op == "=":
            return left == right
        if op == "!=":
            return left != right
        if op == ">":
            return left > right
        if op == ">=":
            return left >= right
        if op == "<":
            return left < right
        if op == "<=":
            return left <= right
    except TypeError:
        return False
    raise _odsql_error(f"Unknown operator {op}")


def _matches(record: dict[str, Any], conditions: Sequence[_Condition]) -> bool:
    return all(_compare(record.get(c.field), c.op, c.value) for c in conditions)


def _sort(records: list[dict[str, Any]], keys: Sequence[tuple[str, bool]]) -> list[dict[str, Any]]:
    for name, ascending in reversed(keys):
        records.sort(key=lambda r: (r.get(name) is None, r.get(name)), reverse=not ascending)
    return records


def _iso(value: datetime, tz: ZoneInfo | timezone) -> str:
    return value.astimezone(tz).isoformat(timespec="seconds")


def _render(record: dict[str, Any], tz: ZoneInfo | timezone) -> dict[str, Any]:
    return {k: _iso(v, tz) if isinstance(v, datetime) else v for k, v in record.items()}


# ============================================================== datasets


@dataclass
class _Selection:
    total: int
    records: Iterator[dict[str, Any]]


COUNTER_FIELDS: dict[str, str] = {
    "id_canal": "text",
    "id_site": "text",
    "nom_site": "text",
    "route": "text",
    "pr": "int",
    "abscisse": "int",
    "commune": "text",
    "insee": "text",
    "sens": "text",
    "libelle_sens": "text",
    "categorie": "text",
    "date_heure": "datetime",
    "debit": "int",
    "vitesse_moyenne": "double",
    "geo_point_2d": "geo_point_2d",
}
EVENT_FIELDS: dict[str, str] = {
    "id": "text",
    "type": "text",
    "statut": "text",
    "gravite": "text",
    "debut": "datetime",
    "fin": "datetime",
    "route": "text",
    "pr_debut": "text",
    "pr_fin": "text",
    "sens": "text",
    "voies": "text",
    "commune": "text",
    "insee": "text",
    "description": "text",
    "description_en": "text",
    "deviation": "text",
    "version": "int",
    "mise_a_jour": "datetime",
    "geo_shape": "geo_shape",
    "geo_point_2d": "geo_point_2d",
}


class _CountersDataset:
    id = COUNTERS_DATASET
    title = "Comptages routiers horaires (simulés) du réseau départemental de l'Hérault"
    fields = COUNTER_FIELDS
    time_field = "date_heure"

    def __init__(self, sim: Simulation, clock: SimClock, history_days: float) -> None:
        self.sim, self.clock, self.history = sim, clock, timedelta(days=history_days)

    def hour_range(self, now: datetime) -> tuple[int, int]:
        """First and last hour index published at `now` (complete hours only)."""
        first = _hour_index(self.clock.start - self.history)
        last = _hour_index(now) - 1
        return first, last

    def select(self, now: datetime, conditions: list[_Condition], order: list[tuple[str, bool]],
               offset: int, limit: int | None) -> _Selection:
        lo, hi = self.hour_range(now)
        generic = []
        for c in conditions:
            if c.field == self.time_field and c.op != "!=" and isinstance(c.value, (datetime, str)):
                ts = (c.value if isinstance(c.value, datetime) else _parse_date(c.value)).timestamp()
                if c.op == ">":
                    lo = max(lo, math.floor(ts / 3600) + 1)
                elif c.op == ">=":
                    lo = max(lo, math.ceil(ts / 3600))
                elif c.op == "<":
                    hi = min(hi, math.ceil(ts / 3600) - 1)
                elif c.op == "<=":
                    hi = min(hi, math.floor(ts / 3600))
                elif ts % 3600 == 0:
                    lo, hi = max(lo, int(ts // 3600)), min(hi, int(ts // 3600))
                else:
                    lo, hi = 1, 0
            else:
                generic.append(c)
        order = order or [(self.time_field, True), ("id_canal", True)]
        if order[0][0] != self.time_field:
            records = [r for idx in range(lo, hi + 1) for r in self._hour(idx, generic, [])]
            if len(records) > MAX_SORTED:
                raise OdsError(400, "InvalidRESTParameterError",
                               f"order_by must start with {self.time_field} on more than {MAX_SORTED} records "
                               "(a limit of the simulator); narrow the query with where")
            _sort(records, order)
            total = len(records)
            end = None if limit is None else offset + limit
            return _Selection(total, iter(records[offset:end]))
        hours = range(lo, hi + 1) if order[0][1] else range(hi, lo - 1, -1)
        rest = order[1:]

        def size(idx: int) -> int:
            return self.sim.present_count(idx) if not generic else len(self._hour(idx, generic, []))

        total = sum(size(idx) for idx in hours) if hi >= lo else 0

        def records() -> Iterator[dict[str, Any]]:
            skip, left = offset, limit
            for idx in hours:
                if left is not None and left <= 0:
                    return
                if skip and not generic:
                    n = self.sim.present_count(idx)
                    if skip >= n:
                        skip -= n
                        continue
                rows = self._hour(idx, generic, rest)
                if skip:
                    if skip >= len(rows):
                        skip -= len(rows)
                        continue
                    rows, skip = rows[skip:], 0
                if left is not None:
                    rows = rows[:left]
                    left -= len(rows)
                yield from rows

        return _Selection(total, records())

    def _hour(self, idx: int, generic: list[_Condition], rest: list[tuple[str, bool]]) -> list[dict[str, Any]]:
        rows = self.sim.counter_records(idx)
        if generic:
            rows = [r for r in rows if _matches(r, generic)]
        if rest:
            _sort(rows, rest)
        return rows


class _EventsDataset:
    id = EVENTS_DATASET
    title = "Événements routiers (simulés) sur les routes départementales de l'Hérault"
    fields = EVENT_FIELDS
    time_field = "mise_a_jour"

    def __init__(self, sim: Simulation, clock: SimClock) -> None:
        self.sim, self.clock = sim, clock

    def select(self, now: datetime, conditions: list[_Condition], order: list[tuple[str, bool]],
               offset: int, limit: int | None) -> _Selection:
        records = [e.ods_record() for e in self.sim.events_at(now)]
        records = [r for r in records if _matches(r, conditions)]
        _sort(records, order or [("id", True)])
        end = None if limit is None else offset + limit
        return _Selection(len(records), iter(records[offset:end]))


# ============================================================== HTTP

@dataclass
class _SimState:
    sim: Simulation
    clock: SimClock
    datasets: dict[str, Any]
    api_key: str | None
    publication: PublicationConfig
    history_days: float
    datex_cache: dict[str, tuple[Any, bytes, str]] = field(default_factory=dict)


SIM_APP_KEY = web.AppKey("roadfeed_simulator", _SimState)


def _json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return web.Response(text=text, status=status, content_type="application/json", charset="utf-8",
                        headers=headers)


def _state(request: web.Request) -> _SimState:
    return request.app[SIM_APP_KEY]


def _check_key(request: web.Request, state: _SimState) -> None:
    if state.api_key is None:
        return
    header = request.headers.get("Authorization", "")
    given = header[7:].strip() if header[:7].lower() == "apikey " else request.query.get("apikey", "")
    if not (given and hmac.compare_digest(given.encode(), state.api_key.encode())):
        raise OdsError(401, "InvalidAPIKeyError" if given else "AuthenticationRequired",
                       "A valid API key is required (Authorization: Apikey <key>, or apikey=<key>).")


def _int_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise OdsError(400, "InvalidRESTParameterError",
                       f"Invalid value for {name} API parameter: {raw!r} is not an integer.") from None


def _timezone(request: web.Request) -> ZoneInfo | timezone:
    name = request.query.get("timezone")
    if not name or name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise OdsError(400, "InvalidRESTParameterError", f"Unknown timezone: {name!r}") from None


def _dataset(request: web.Request, state: _SimState) -> Any:
    name = request.match_info["dataset"]
    dataset = state.datasets.get(name)
    if dataset is None:
        raise OdsError(404, "UnknownDatasetError", f"Unknown dataset: {name}")
    return dataset


@dataclass(frozen=True)
class _Query:
    conditions: list[_Condition]
    order: list[tuple[str, bool]]
    select: list[str] | None  # None: every field
    tz: ZoneInfo | timezone

    def render(self, record: dict[str, Any]) -> dict[str, Any]:
        if self.select is not None:
            record = {k: record.get(k) for k in self.select}
        return _render(record, self.tz)


def _query(request: web.Request, dataset: Any) -> _Query:
    if request.query.get("group_by", "").strip():
        raise _odsql_error("group_by is not supported by the simulator")
    where = request.query.get("where", "")
    conditions = parse_where(where, dataset.fields) if where.strip() else []
    order_text = request.query.get("order_by", "")
    order = parse_order_by(order_text, dataset.fields) if order_text.strip() else []
    return _Query(conditions, order, parse_select(request.query.get("select", ""), dataset.fields),
                  _timezone(request))


def _ods_errors(handler: Callable[[web.Request], Any]) -> Callable[[web.Request], Any]:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except OdsError as err:
            return err.response()

    return wrapped


@_ods_errors
async def _records(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    _check_key(request, state)
    dataset = _dataset(request, state)
    limit = _int_param(request, "limit", DEFAULT_LIMIT)
    offset = _int_param(request, "offset", 0)
    if not -1 <= limit <= MAX_LIMIT:
        raise OdsError(400, "InvalidRESTParameterError",
                       f"Invalid value for limit API parameter: {limit} was found but -1 <= limit <= {MAX_LIMIT} "
                       "is expected.")
    if limit == -1:
        limit = MAX_LIMIT
    if offset < 0:
        raise OdsError(400, "InvalidRESTParameterError",
                       f"Invalid value for offset API parameter: {offset} was found but offset >= 0 is expected.")
    if offset + limit > MAX_WINDOW:
        raise OdsError(400, "InvalidRESTParameterError",
                       f"Invalid value for sum of offset + limit API parameter: {offset + limit} was found but "
                       f"<= {MAX_WINDOW} is expected.")
    query = _query(request, dataset)
    selection = dataset.select(state.clock.now(), query.conditions, query.order, offset, limit)
    results = [query.render(r) for r in selection.records]
    return _json_response({"total_count": selection.total, "results": results})


@_ods_errors
async def _exports_json(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    _check_key(request, state)
    dataset = _dataset(request, state)
    limit = _int_param(request, "limit", -1)
    offset = _int_param(request, "offset", 0)
    if limit < -1 or offset < 0:
        raise OdsError(400, "InvalidRESTParameterError", "limit must be >= -1 and offset >= 0.")
    query = _query(request, dataset)
    selection = dataset.select(state.clock.now(), query.conditions, query.order, offset,
                               None if limit == -1 else limit)
    if offset:
        size = limit if limit >= 0 else max(selection.total - offset, 0)
        if offset + size > MAX_WINDOW:
            raise OdsError(400, "InvalidRESTParameterError",
                           f"Invalid value for sum of offset + limit API parameter: {offset + size} was found "
                           f"but <= {MAX_WINDOW} is expected.")
    response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
    response.enable_chunked_encoding()
    response.enable_compression()  # gzip or deflate when the client accepts it
    await response.prepare(request)
    await response.write(b"[")
    separator = ""
    batch: list[str] = []
    for record in selection.records:
        batch.append(json.dumps(query.render(record), ensure_ascii=False, separators=(",", ":")))
        if len(batch) >= 500:
            await response.write((separator + ",".join(batch)).encode())
            separator, batch = ",", []
            await asyncio.sleep(0)  # let other requests in between chunks
    if batch:
        await response.write((separator + ",".join(batch)).encode())
    await response.write(b"]")
    await response.write_eof()
    return response


@_ods_errors
async def _dataset_info(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    _check_key(request, state)
    dataset = _dataset(request, state)
    return _json_response(_describe_dataset(dataset, str(request.url.origin())))


def _describe_dataset(dataset: Any, base: str) -> dict[str, Any]:
    url = f"{base}{API_PATH}/catalog/datasets/{dataset.id}"
    return {
        "dataset_id": dataset.id,
        "title": dataset.title,
        "time_field": dataset.time_field,
        "fields": [{"name": n, "type": t} for n, t in dataset.fields.items()],
        "records_url": f"{url}/records",
        "exports_url": f"{url}/exports/json",
    }


@_ods_errors
async def _catalog(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    _check_key(request, state)
    base = str(request.url.origin())
    results = [_describe_dataset(d, base) for d in state.datasets.values()]
    return _json_response({"total_count": len(results), "results": results})


def _renderers() -> dict[str, Callable[..., bytes]]:
    # Imported when first needed: the ODS side works even if an exporter is broken.
    from exporters import datex2_v2, datex2_v3

    return {"v2": datex2_v2.render_situations, "v3": datex2_v3.render_situations}


def _http_date(value: datetime) -> str:
    return format_datetime(value.astimezone(UTC).replace(microsecond=0), usegmt=True)


def _datex_handler(version: str) -> Callable[[web.Request], Any]:
    @_ods_errors
    async def handler(request: web.Request) -> web.StreamResponse:
        state = _state(request)  # public feeds: no API key, like ours
        events, changed = state.sim.snapshot(state.clock.now())
        changed = changed.replace(microsecond=0)
        key = (changed, tuple((e.id, e.version) for e in events))
        cached = state.datex_cache.get(version)
        if cached is None or cached[0] != key:
            stored = [e.stored_event(last_seen=changed) for e in events]
            body = _renderers()[version](stored, state.publication, changed)
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            cached = state.datex_cache[version] = (key, body, etag)
        _, body, etag = cached
        headers = {
            "ETag": etag,
            "Last-Modified": _http_date(changed),
            "Cache-Control": "no-cache",
            "X-Simulated-Time": _iso(state.clock.now(), UTC),
        }
        if _not_modified(request, etag, changed):
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, headers=headers, content_type="application/xml", charset="utf-8")

    return handler


def _not_modified(request: web.Request, etag: str, changed: datetime) -> bool:
    inm = request.headers.get("If-None-Match")
    if inm is not None:
        tags = [t.strip() for t in inm.split(",")]
        return "*" in tags or etag in tags or f"W/{etag}" in tags
    ims = request.headers.get("If-Modified-Since")
    if ims:
        try:
            since = parsedate_to_datetime(ims)
        except (TypeError, ValueError):
            return False
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        return changed <= since
    return False


async def _index(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    base = str(request.url.origin())
    return _json_response({
        "name": "roadfeed simulator: a simulated Hérault (invented data, real protocols)",
        "seed": state.sim.seed,
        "clock": state.clock.describe(),
        "history_days": state.history_days,
        "api_key_required": state.api_key is not None,
        "sites": len(state.sim.sites),
        "channels": len(state.sim.channels),
        "datasets": [_describe_dataset(d, base) for d in state.datasets.values()],
        "feeds": {
            "datex2_v3_situations": f"{base}/datex2/v3/situations.xml",
            "datex2_v2_situations": f"{base}/datex2/v2/situations.xml",
        },
        "sources": simulator_sources(base, datex2=True),
    })


def build_simulator_app(
    seed: int = DEFAULT_SEED,
    speed: float = 1.0,
    history_days: float = DEFAULT_HISTORY_DAYS,
    *,
    start: datetime | None = None,
    clock: SimClock | None = None,
    api_key: str | None = None,
    publication: PublicationConfig | None = None,
) -> web.Application:
    """The simulator's web application (Opendatasoft v2.1 + DATEX II + an index at `/`).

    Pass `clock` to drive time yourself (tests); otherwise a `SimClock(start, speed)`.
    The clock is `app[SIM_APP_KEY].clock`.
    """
    if history_days < 0:
        raise ValueError("history_days must be >= 0")
    clock = clock or SimClock(start, speed)
    sim = Simulation(seed)
    datasets = {
        COUNTERS_DATASET: _CountersDataset(sim, clock, history_days),
        EVENTS_DATASET: _EventsDataset(sim, clock),
    }
    app = web.Application()
    app[SIM_APP_KEY] = _SimState(sim, clock, datasets, api_key, publication or PublicationConfig(), history_days)
    ds = API_PATH + "/catalog/datasets"
    app.router.add_get("/", _index)
    app.router.add_get(ds, _catalog)
    app.router.add_get(ds + "/{dataset}", _dataset_info)
    app.router.add_get(ds + "/{dataset}/records", _records)
    app.router.add_get(ds + "/{dataset}/exports/json", _exports_json)
    app.router.add_get("/datex2/v3/situations.xml", _datex_handler("v3"))
    app.router.add_get("/datex2/v2/situations.xml", _datex_handler("v2"))
    app.router.add_get("/referential/roads.geojson", _referential)
    return app


async def _referential(_request: web.Request) -> web.Response:
    return web.Response(body=referential_geojson(), content_type="application/geo+json")


def simulator_clock(app: web.Application) -> SimClock:
    return app[SIM_APP_KEY].clock


def simulator_sources(base_url: str, *, interval: int = 60, datex2: bool = False,
                      api_key: str | None = None) -> list[dict[str, Any]]:
    """`[[sources]]` entries that poll this simulator with our real collectors.

    Counters and events come through the Opendatasoft collector. With `datex2`, a
    DATEX II v3 source is added, disabled: it carries the same events as the
    Opendatasoft event source, so enable one or the other.
    """
    base = base_url.rstrip("/")
    extra = {"api_key": api_key} if api_key else {}
    sources: list[dict[str, Any]] = [
        {
            "id": "sim-comptages",
            "kind": "opendatasoft",
            "url": base,
            "interval": interval,
            "options": {
                "dataset": COUNTERS_DATASET,
                "dataset_type": "counters",
                "order_by_id": "id_canal",
                **extra,
                "mapping": {
                    "site_id": "id_site",
                    "time": "date_heure",
                    "count": "debit",
                    "direction": "sens",
                    "direction_name": "libelle_sens",
                    "vehicle_class": "categorie",
                    "vehicle_class_map": {"VL": "light", "PL": "heavy"},
                    "speed": "vitesse_moyenne",
                    "geo_point": "geo_point_2d",
                    "site_name": "nom_site",
                    "road": "route",
                    "interval_seconds": 3600,
                    "timezone": "Europe/Paris",
                    "site_metadata": ["commune", "insee", "pr", "abscisse"],
                },
            },
        },
        {
            "id": "sim-evenements",
            "kind": "opendatasoft",
            "url": base,
            "interval": interval,
            "options": {
                "dataset": EVENTS_DATASET,
                "dataset_type": "events",
                "order_by_id": "id",
                **extra,
                "mapping": {
                    "id": "id",
                    "type": "type",
                    "type_map": {label: kind for label, kind, _ in EVENT_KINDS.values()},
                    "start": "debut",
                    "end": "fin",
                    "road": "route",
                    "direction": "sens",
                    "geometry": "geo_shape",
                    "geo_point": "geo_point_2d",
                    "description": "description",
                    "description_language": "fr",
                    "severity": "gravite",
                    "severity_map": {fr: sev for sev, fr in SEVERITY_FR.items()},
                    "status": "statut",
                    "status_map": {fr: st for st, fr in STATUS_FR.items()},
                    "updated": "mise_a_jour",
                    "detour": "deviation",
                    "lanes": "voies",
                    "pr_from": "pr_debut",
                    "pr_to": "pr_fin",
                    "insee": "insee",
                    "timezone": "Europe/Paris",
                },
            },
        },
    ]
    if datex2:
        sources.append({
            "id": "sim-datex2",
            "kind": "datex2",
            "url": f"{base}/datex2/v3/situations.xml",
            "interval": interval,
            "enabled": False,
            "options": {"snapshot": True},
        })
    return sources


async def run_simulator(
    host: str = "127.0.0.1",
    port: int = 8081,
    seed: int = DEFAULT_SEED,
    speed: float = 1.0,
    history_days: float = DEFAULT_HISTORY_DAYS,
    *,
    api_key: str | None = None,
    start: datetime | None = None,
    announce: Callable[[str], None] = print,
    national: NationalNetwork | None = None,
) -> None:
    """Serve the simulator until cancelled (with `national`, its national scenario too)."""
    app = build_simulator_app(seed, speed, history_days, start=start, api_key=api_key)
    if national is not None:
        add_national_routes(app, national, simulator_clock(app))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = port
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            bound = sockets[0].getsockname()[1]
        clock = simulator_clock(app)
        shown = f"[{host}]" if ":" in host else host
        announce(f"roadfeed simulator on http://{shown}:{bound}/ (seed {seed}, speed x{speed:g}, "
                 f"simulated now {_iso(clock.now(), UTC)}, {history_days:g} days of history)"
                 + (f"; national scenario: {national.sites} sites every {national.step} s at {NATIONAL_MEASURED}"
                    if national is not None else ""))
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def iter_all_counter_records(sim: Simulation, start: datetime, end: datetime) -> Iterable[dict[str, Any]]:
    """Every counter record of the hours in [start, end): the model's truth, for checks."""
    for idx in range(_hour_index(start), math.ceil(end.timestamp() / 3600)):
        yield from sim.counter_records(idx)
