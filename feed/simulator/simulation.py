"""The simulated département for one seed: counts and events together.

Everything is a pure function of (seed, time): a count is a function of
(seed, site, direction, class, hour), an event's versions a function of (seed,
day it happens), so any time range is served without storing anything and two
runs with one seed agree. Only the clock (`SimClock`) moves.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any

from feed.simulator.draws import _Draw, _unit, _units
from feed.simulator.events import EVENT_KINDS, LOOKAHEAD_DAYS, LOOKBACK_DAYS, EventPlan, SimEvent, _EventFactory
from feed.simulator.geography import PARIS, SITES, Direction, Site
from feed.simulator.traffic import (
    _CLASS_ALIASES,
    VEHICLE_CLASSES,
    Channel,
    _hour_context,
    _hour_index,
    _HourContext,
    _mean,
)

__all__ = [
    "DEFAULT_SEED",
    "Simulation",
    "iter_all_counter_records",
]


DEFAULT_SEED = 34


class Simulation:
    """The simulated département for one seed. Pure: nothing depends on the wall clock."""

    def __init__(self, seed: int = DEFAULT_SEED) -> None:
        self.seed = int(seed)
        self.sites = SITES
        self.sites_by_id = {s.id: s for s in SITES}
        self.channels: tuple[Channel, ...] = tuple(
            sorted(
                (Channel(s, d, c) for s in SITES for d in s.directions for c in VEHICLE_CLASSES),
                key=lambda ch: ch.id,
            )
        )
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

    def _count(self, site: Site, d: Direction, vclass: str, ctx: _HourContext) -> tuple[int | None, float | None]:
        if site.gappy and ctx.local.hour in self._gap_hours(site.id, ctx.day):
            return None, None
        u = _units(self.seed, "count", site.id, d.code, vclass, ctx.index)
        z = (u[0] + u[1] + u[2] - 1.5) * 2.0  # about N(0, 1)
        x = _mean(site, d, vclass, ctx) * math.exp(0.1 * z - 0.005)
        n = int(x) + (1 if x - int(x) > u[3] else 0)
        if site.fault == "stuck" and d is site.directions[1] and self._stuck(site.id, ctx.day):
            return 0, None
        if site.fault == "spike" and u[4] < 0.004:
            n = max(n * 9 + 700, 2400 + int(u[5] * 1600))  # beyond what one lane can carry
        if n == 0:
            return 0, None
        limit = site.speed_limit if vclass == "VL" else min(site.speed_limit, 80)
        capacity = 1700.0
        load = _mean(site, d, "VL", ctx) / capacity
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
            out.append(
                {
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
                }
            )
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


def iter_all_counter_records(sim: Simulation, start: datetime, end: datetime) -> Iterable[dict[str, Any]]:
    """Every counter record of the hours in [start, end): the model's truth, for checks."""
    for idx in range(_hour_index(start), math.ceil(end.timestamp() / 3600)):
        yield from sim.counter_records(idx)
