"""The event timeline: roadworks (announced days ahead, sometimes extended), accidents
(more at rush hours), closures (planned at night, or sudden), snow and ice (winter,
on the northern roads), floods (mostly autumn, in the plain). Each has 2 to 4
versions and a final "Terminé" one, and stays listed 48 h after it ends.

An event's versions are a function of (seed, day it happens): `_EventFactory` plans
them, `EventPlan.state_at` tells what is published at a given time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from typing import Any

from feed.model import Geometry, StoredEvent
from feed.simulator.draws import _Draw, _poisson
from feed.simulator.geography import _ROAD_LIST, COMMUNES, PARIS, Road, _nearest_commune
from feed.simulator.traffic import _PROFILES

__all__ = [
    "ENDED_RETENTION",
    "EVENT_KINDS",
    "LOOKAHEAD_DAYS",
    "LOOKBACK_DAYS",
    "SEVERITY_FR",
    "SOURCE_ID",
    "STATUS_FR",
    "EventPlan",
    "EventVersion",
    "SimEvent",
]


ENDED_RETENTION = timedelta(hours=48)  # an ended event stays listed this long
SOURCE_ID = "sim"  # public DATEX ids are "sim:<event id>"


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
    def _place(
        d: _Draw,
        roads: Sequence[Road],
        length: tuple[float, float],
        point_share: float = 0.0,
        from_km: Callable[[Road], float] = lambda r: 0.0,
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
        versions = [
            EventVersion(
                announced,
                "planned",
                severity,
                start,
                end,
                f"{work_fr} {where_fr} : {measure_fr}. Du {_when_fr(start)} au {_when_fr(end)}.",
                f"{work_en} {where_en}: {measure_en}. From {_when_en(start)} to {_when_en(end)}.",
            )
        ]
        began = start + timedelta(minutes=d.randint(0, 20))
        versions.append(
            EventVersion(
                began,
                "active",
                severity,
                start,
                end,
                f"Chantier en cours : {work_fr.lower()} {where_fr}, {measure_fr}. Fin prévue le {_when_fr(end)}.",
                f"Works in progress: {work_en.lower()} {where_en}, {measure_en}. Expected end {_when_en(end)}.",
            )
        )
        if not single_day and d.chance(0.35):
            at = start + (end - start) * d.uniform(0.4, 0.8)
            end = end + timedelta(days=d.randint(1, 5))
            severity = "high" if severity == "medium" and d.chance(0.3) else severity
            versions.append(
                EventVersion(
                    at,
                    "active",
                    severity,
                    start,
                    end,
                    f"Prolongation du chantier : {work_fr.lower()} {where_fr}, {measure_fr}. "
                    f"Fin prévue le {_when_fr(end)}.",
                    f"Works extended: {work_en.lower()} {where_en}, {measure_en}. Expected end {_when_en(end)}.",
                )
            )
        finished = max(end + timedelta(minutes=d.randint(-30, 45)), versions[-1].at + timedelta(minutes=10))
        versions.append(
            EventVersion(
                finished,
                "ended",
                severity,
                start,
                finished,
                f"Travaux terminés ({work_fr.lower()}), circulation rétablie.",
                f"Works finished ({work_en.lower()}), traffic back to normal.",
            )
        )
        return EventPlan(
            ident,
            "T",
            road,
            km_a,
            km_b,
            "both",
            lanes,
            self._detour(d, road) if lanes == "Toutes voies" else None,
            tuple(versions),
            subtype,
        )

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
        versions = [
            EventVersion(
                published,
                "active",
                sev1,
                t0,
                est1,
                f"{what_fr} sur la {road.name} : {measure_fr}.",
                f"{what_en} on the {road.name}: {measure_en}.",
            )
        ]
        at2 = published + timedelta(minutes=d.randint(20, 45))
        sev2 = "medium" if sev1 == "high" and d.chance(0.5) else sev1
        est2 = max(est1, at2 + timedelta(minutes=d.randint(30, 90)))
        step_fr, step_en = d.choice(
            (
                ("Intervention des secours en cours", "Emergency services on site"),
                ("Dépannage en cours", "Vehicle recovery in progress"),
            )
        )
        versions.append(
            EventVersion(
                at2,
                "active",
                sev2,
                t0,
                est2,
                f"{what_fr} sur la {road.name} : {measure_fr}. {step_fr}.",
                f"{what_en} on the {road.name}: {measure_en}. {step_en}.",
            )
        )
        cleared = max(t0 + timedelta(minutes=d.randint(45, 240)), at2 + timedelta(minutes=10))
        versions.append(
            EventVersion(
                cleared,
                "ended",
                sev2,
                t0,
                cleared,
                f"Accident dégagé sur la {road.name}, circulation rétablie.",
                f"Accident cleared on the {road.name}, traffic back to normal.",
            )
        )
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
                EventVersion(
                    announced,
                    "planned",
                    "high",
                    start,
                    end,
                    f"{what_fr} : route fermée du {_when_fr(start)} au {_when_fr(end)}.",
                    f"{what_en}: road closed from {_when_en(start)} to {_when_en(end)}.",
                ),
                EventVersion(
                    start,
                    "active",
                    "high",
                    start,
                    end,
                    f"{what_fr} : route fermée jusqu'au {_when_fr(end)}.",
                    f"{what_en}: road closed until {_when_en(end)}.",
                ),
            ]
            reopened = end + timedelta(minutes=d.randint(-20, 30))
        else:
            what_fr, what_en = d.choice(_SUDDEN_CLOSURES)
            start = _local(day, d.randint(0, 24 * 60 - 1))
            published = start + timedelta(minutes=d.randint(10, 30))
            end = start + timedelta(hours=d.randint(2, 8))
            severity = d.choice(("high", "highest"))
            versions = [
                EventVersion(
                    published,
                    "active",
                    severity,
                    start,
                    end,
                    f"{what_fr} : route fermée à la circulation.",
                    f"{what_en}: road closed to traffic.",
                )
            ]
            if d.chance(0.4):
                at = published + (end - published) * d.uniform(0.3, 0.8)
                end = end + timedelta(hours=d.randint(2, 24))
                versions.append(
                    EventVersion(
                        at,
                        "active",
                        severity,
                        start,
                        end,
                        f"{what_fr} : fermeture prolongée jusqu'au {_when_fr(end)}.",
                        f"{what_en}: closure extended until {_when_en(end)}.",
                    )
                )
            reopened = end + timedelta(minutes=d.randint(-60, 30))
        reopened = max(reopened, versions[-1].at + timedelta(minutes=10))
        versions.append(
            EventVersion(
                reopened,
                "ended",
                versions[-1].severity,
                start,
                reopened,
                "Route rouverte à la circulation.",
                "Road reopened to traffic.",
            )
        )
        return EventPlan(ident, "F", road, km_a, km_b, "both", "Toutes voies", detour, tuple(versions))

    def _make_N(self, d: _Draw, ident: str, day: date) -> EventPlan | None:
        hills = [r for r in _ROAD_LIST if r.snow_from_km is not None]
        road, km_a, km_b = self._place(d, hills, (3.0, 12.0), from_km=lambda r: r.snow_from_km or 0.0)
        start = _local(day, d.randint(0, 7 * 60))
        published = start + timedelta(minutes=d.randint(0, 30))
        end = start + timedelta(hours=d.randint(4, 36))
        versions = [
            EventVersion(
                published,
                "active",
                d.choice(("low", "medium")),
                start,
                end,
                "Risque de verglas, prudence.",
                "Risk of black ice, drive carefully.",
            )
        ]
        if d.chance(0.5):
            at = published + (end - published) * d.uniform(0.1, 0.4)
            versions.append(
                EventVersion(
                    at,
                    "active",
                    "high",
                    start,
                    end,
                    "Chaussée enneigée, équipements spéciaux obligatoires.",
                    "Snow on the road, winter equipment required.",
                )
            )
            at = at + (end - at) * d.uniform(0.3, 0.7)
            versions.append(
                EventVersion(
                    at,
                    "active",
                    "medium",
                    start,
                    end,
                    "Salage en cours, chaussée humide.",
                    "Gritting in progress, wet road surface.",
                )
            )
        finished = max(end, versions[-1].at + timedelta(minutes=10))
        versions.append(
            EventVersion(
                finished,
                "ended",
                versions[-1].severity,
                start,
                finished,
                "Fin de l'épisode, conditions normales.",
                "Conditions back to normal.",
            )
        )
        return EventPlan(ident, "N", road, km_a, km_b, "both", None, None, tuple(versions))

    def _make_I(self, d: _Draw, ident: str, day: date) -> EventPlan | None:
        plain = [r for r in _ROAD_LIST if r.floods]
        road, km_a, km_b = self._place(d, plain, (0.3, 2.0), point_share=0.25)
        start = _local(day, d.randint(0, 24 * 60 - 1))
        published = start + timedelta(minutes=d.randint(5, 40))
        end = start + timedelta(hours=d.randint(6, 72))
        closed = d.chance(0.5)
        texts = {
            False: (
                "Chaussée submergée par endroits, prudence.",
                "Road partly flooded, drive carefully.",
                "medium",
                "Voie de droite inondée",
            ),
            True: (
                "Route coupée en raison de la montée des eaux.",
                "Road closed due to rising water.",
                "highest",
                "Toutes voies",
            ),
        }
        fr, en, severity, lanes = texts[closed]
        versions = [EventVersion(published, "active", severity, start, end, fr, en)]
        at = published + (end - published) * d.uniform(0.2, 0.5)
        if d.chance(0.5):
            end = end + timedelta(hours=d.randint(6, 24))
        fr2, en2, severity2, _ = texts[not closed]
        versions.append(EventVersion(at, "active", severity2, start, end, fr2, en2))
        finished = max(end + timedelta(minutes=d.randint(-60, 60)), at + timedelta(minutes=10))
        versions.append(
            EventVersion(
                finished,
                "ended",
                severity2,
                start,
                finished,
                "Décrue : route rouverte à la circulation.",
                "Water receded: road reopened.",
            )
        )
        return EventPlan(
            ident, "I", road, km_a, km_b, "both", lanes, self._detour(d, road) if closed else None, tuple(versions)
        )
