"""The counts model: site volume (AADT) × heavy share × weekly factor × daily profile
by class and day type (weekday, Saturday, Sunday/holiday) × month, with a morning
peak towards the town and an evening one away from it, then ±10 % noise. A few
sites lose hours (no record at all), one has a stuck direction (zeros for whole
days) and one sends implausible spikes, as real counters do.

This module holds the tables, the hours and the count expected in an hour; `Simulation`
draws the counts around it, with the gaps and faults.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import lru_cache

from feed.holidays import public_holidays
from feed.simulator.geography import PARIS, Direction, Site

__all__ = [
    "VEHICLE_CLASSES",
    "Channel",
    "floor_hour",
]


VEHICLE_CLASSES = ("VL", "PL")  # light, heavy (ODS labels)
_CLASS_ALIASES = {"VL": "VL", "PL": "PL", "light": "VL", "heavy": "PL"}


def _normalise(values: Sequence[float]) -> tuple[float, ...]:
    total = sum(values)
    return tuple(v / total for v in values)


# Share of a day's traffic in each local hour.
_PROFILES = {
    ("VL", "weekday"): _normalise(
        [
            0.8,
            0.5,
            0.35,
            0.3,
            0.45,
            1.1,
            3.2,
            6.8,
            7.8,
            5.6,
            5.0,
            5.3,
            5.6,
            5.3,
            5.2,
            5.7,
            6.7,
            8.1,
            7.7,
            5.3,
            3.5,
            2.6,
            1.9,
            1.3,
        ]
    ),
    ("VL", "saturday"): _normalise(
        [
            1.4,
            1.0,
            0.7,
            0.5,
            0.4,
            0.6,
            1.2,
            2.3,
            3.6,
            5.1,
            6.4,
            7.0,
            6.7,
            5.8,
            5.6,
            6.0,
            6.4,
            6.6,
            6.3,
            5.4,
            4.0,
            3.0,
            2.3,
            1.8,
        ]
    ),
    ("VL", "sunday"): _normalise(
        [
            1.6,
            1.2,
            0.9,
            0.6,
            0.4,
            0.5,
            0.8,
            1.5,
            2.6,
            4.2,
            5.8,
            6.6,
            6.4,
            5.4,
            5.6,
            6.4,
            7.0,
            7.2,
            6.8,
            5.8,
            4.2,
            3.0,
            2.1,
            1.4,
        ]
    ),
    ("PL", "weekday"): _normalise(
        [
            1.2,
            1.0,
            1.0,
            1.2,
            1.8,
            3.0,
            5.0,
            6.5,
            7.2,
            7.4,
            7.4,
            7.0,
            6.0,
            6.3,
            7.0,
            6.8,
            6.0,
            5.0,
            3.8,
            2.6,
            1.9,
            1.5,
            1.3,
            1.2,
        ]
    ),
    ("PL", "saturday"): _normalise(
        [
            1.0,
            0.9,
            0.9,
            1.0,
            1.5,
            2.8,
            4.8,
            6.8,
            8.0,
            8.4,
            8.2,
            7.6,
            6.2,
            5.6,
            5.2,
            4.8,
            4.2,
            3.6,
            3.0,
            2.4,
            1.8,
            1.4,
            1.2,
            1.1,
        ]
    ),
    ("PL", "sunday"): _normalise(
        [
            1.2,
            1.0,
            1.0,
            1.0,
            1.2,
            1.6,
            2.6,
            3.6,
            4.6,
            5.4,
            5.8,
            5.8,
            5.4,
            5.0,
            5.0,
            5.2,
            5.4,
            5.6,
            5.6,
            5.4,
            5.4,
            5.2,
            4.6,
            3.0,
        ]
    ),
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


def _mean(site: Site, d: Direction, vclass: str, ctx: _HourContext) -> float:
    """Vehicles expected in the hour, one direction and class (before noise and faults)."""
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


@dataclass(frozen=True)
class Channel:
    site: Site
    direction: Direction
    vehicle_class: str  # "VL" / "PL"

    @property
    def id(self) -> str:
        return f"{self.site.id}:{self.direction.code}:{self.vehicle_class}"
