"""The simulator's two Opendatasoft datasets, hourly counts and road events, selected
the way a portal selects them (conditions, order, offset and limit).

Times in the datasets are UTC unless the request asks for a `timezone`, as on a
real Opendatasoft portal.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from feed.simulator.clock import SimClock, _iso
from feed.simulator.odsql import OdsError, _Condition, _matches, _parse_date, _sort
from feed.simulator.simulation import Simulation
from feed.simulator.traffic import _hour_index

__all__ = [
    "COUNTERS_DATASET",
    "EVENTS_DATASET",
]


COUNTERS_DATASET = "comptages-routiers"
EVENTS_DATASET = "inforoute-evenements"
MAX_SORTED = 200_000  # records sorted in memory when order_by does not start with the time field


def _render(record: dict[str, Any], tz: ZoneInfo | timezone) -> dict[str, Any]:
    return {k: _iso(v, tz) if isinstance(v, datetime) else v for k, v in record.items()}


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

    def select(
        self, now: datetime, conditions: list[_Condition], order: list[tuple[str, bool]], offset: int, limit: int | None
    ) -> _Selection:
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
                raise OdsError(
                    400,
                    "InvalidRESTParameterError",
                    f"order_by must start with {self.time_field} on more than {MAX_SORTED} records "
                    "(a limit of the simulator); narrow the query with where",
                )
            _sort(records, order)
            total = len(records)
            end = None if limit is None else offset + limit
            return _Selection(total, iter(records[offset:end]))
        hours = range(lo, hi + 1) if order[0][1] else range(hi, lo - 1, -1)
        rest = order[1:]

        def size(idx: int) -> int:
            return self.sim.present_count(idx) if not generic else len(self._hour(idx, generic, []))

        total = sum(size(idx) for idx in hours) if hi >= lo else 0

        def page() -> Iterator[dict[str, Any]]:
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

        return _Selection(total, page())

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

    def select(
        self, now: datetime, conditions: list[_Condition], order: list[tuple[str, bool]], offset: int, limit: int | None
    ) -> _Selection:
        records = [e.ods_record() for e in self.sim.events_at(now)]
        records = [r for r in records if _matches(r, conditions)]
        _sort(records, order or [("id", True)])
        end = None if limit is None else offset + limit
        return _Selection(len(records), iter(records[offset:end]))
