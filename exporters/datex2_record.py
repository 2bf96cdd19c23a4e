"""The DATEX II situation record, written once for v2.3 and v3.6.

Both versions say the same thing about an event: the same record class and
required code-list values, the same validity, comments, PR + abscissa references
and rerouting text, in the same element order. What differs is spelling, and a
`Dialect` names exactly that: the namespaces of the situation, common and
location elements, the `xsi:type` prefixes, whether the situation carries a
version, whether `validityStatus` has "planned", the type of a recurring time
period, code-list values spelt differently, and how the version locates an event
(TPEG in v2.3, GML line strings in v3), which each version module writes itself.

Pure: domain objects in, lxml elements out; no I/O and no clock (`published_at`
is passed in). The text, time and coordinate helpers here are those of every
DATEX II document we write, so both versions format values the same way.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from lxml import etree

from feed.model import DATEX_RECORD_TYPES, DEFAULT_DATEX_RECORD, StoredEvent

XSI = "http://www.w3.org/2001/XMLSchema-instance"
XSI_TYPE = "{" + XSI + "}type"
TEXT_MAX = 1024  # MultilingualStringValueType maxLength (v2.3 and v3)

_SE = etree.SubElement


class Tags:
    """`T.name` -> "{namespace}name", computed once per name."""

    def __init__(self, ns: str) -> None:
        self._prefix = "{" + ns + "}"

    def __getattr__(self, name: str) -> str:
        tag = self._prefix + name
        setattr(self, name, tag)
        return tag


# ---------------------------------------------------------------- values

_INVALID_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_LANGUAGE = re.compile(r"[a-zA-Z]{1,8}(-[a-zA-Z0-9]{1,8})*")


def xml_datetime(value: datetime) -> str:
    """xs:dateTime in UTC with a `Z`."""
    if value.utcoffset():
        value = value.astimezone(UTC)
    return value.isoformat()[:-6] + "Z"  # drop "+00:00"


def xml_safe(text: str) -> str:
    """Without the characters XML cannot carry (an id from a source may have some)."""
    return _INVALID_XML.sub("", text)


def clean_text(text: str, limit: int = TEXT_MAX) -> str:
    """Text XML can carry, within the schema's length limit (cut with an ellipsis)."""
    text = _INVALID_XML.sub("", text).strip()
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def texts_by_language(texts: dict[str, str], languages: Sequence[str]) -> list[tuple[str | None, str]]:
    """(lang, text) pairs, publication languages first; a malformed tag becomes no `lang`."""
    rank = {lang: i for i, lang in enumerate(languages)}
    out = []
    for lang, text in sorted(texts.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])):
        cleaned = clean_text(text)
        if cleaned:
            out.append((lang if _LANGUAGE.fullmatch(lang) else None, cleaned))
    return out


def coord(value: float) -> str:
    """Degrees with 6 decimals (~0.1 m), never in exponent form (gml posList forbids it)."""
    return f"{value:.6f}"


# The DATEX II classes we can write: concrete in both v2.3 and v3.6. DATEX_RECORD_TYPES
# also names "RoadworksInformation" (in neither schema) and "NetworkManagement"
# (abstract); those fall back to the default class of the event type.
WRITABLE_RECORD_CLASSES = frozenset(DATEX_RECORD_TYPES) - {"RoadworksInformation", "NetworkManagement"}


def record_class(event: StoredEvent) -> str:
    """The situation record class (`xsi:type` local name) written for an event."""
    if event.subtype in WRITABLE_RECORD_CLASSES:
        return event.subtype
    return DEFAULT_DATEX_RECORD[event.type]


# The elements each writable class requires, in schema order, with the generic member
# of each code list (our taxonomy does not say more). Same names in v2.3 and v3.6.
_REQUIRED_VALUES: dict[str, tuple[tuple[str, str], ...]] = {
    "MaintenanceWorks": (("roadMaintenanceType", "roadworks"),),
    "ConstructionWorks": (("constructionWorkType", "constructionWork"),),
    "Accident": (("accidentType", "accident"),),
    "RoadOrCarriagewayOrLaneManagement": (
        ("complianceOption", "mandatory"),
        ("roadOrCarriagewayOrLaneManagementType", "other"),
    ),
    "GeneralNetworkManagement": (("complianceOption", "mandatory"), ("generalNetworkManagementType", "other")),
    "AbnormalTraffic": (),
    "VehicleObstruction": (("vehicleObstructionType", "other"),),
    "GeneralObstruction": (("obstructionType", "other"),),
    "AnimalPresenceObstruction": (("animalPresenceType", "animalsOnTheRoad"),),
    "EnvironmentalObstruction": (("environmentalObstructionType", "other"),),
    "InfrastructureDamageObstruction": (("infrastructureDamageType", "other"),),
    "PoorEnvironmentConditions": (("poorEnvironmentType", "badWeather"),),  # the list has no "other"
    "WeatherRelatedRoadConditions": (("weatherRelatedRoadConditionType", "other"),),
    "NonWeatherRelatedRoadConditions": (("nonWeatherRelatedRoadConditionType", "other"),),
    "SpeedManagement": (("complianceOption", "mandatory"),),
    "ReroutingManagement": (("complianceOption", "mandatory"), ("reroutingManagementType", "followDiversionSigns")),
    "PublicEvent": (("publicEventType", "unknown"),),
}
# Where our event type says more than the generic value.
_TYPED_VALUES = {
    ("closure", "roadOrCarriagewayOrLaneManagementType"): "roadClosed",
    ("obstruction", "obstructionType"): "obstructionOnTheRoad",
}


# Code-list values an event's `subtype` may name (agents' event kinds: alternating
# one-way traffic, lane closures, ice...): written instead of the generic value.
# Members of the same list in v2.3 and v3.6.
SUBTYPE_VALUES: dict[str, frozenset[str]] = {
    "roadOrCarriagewayOrLaneManagementType": frozenset(
        {"roadClosed", "singleAlternateLineTraffic", "laneClosures", "narrowLanes", "carriagewayClosures", "contraflow"}
    ),
    "weatherRelatedRoadConditionType": frozenset(
        {"ice", "blackIce", "snowOnTheRoad", "freezingOfWetRoads", "wetAndIcyRoad", "surfaceWater"}
    ),
}


def record_type_values(event: StoredEvent, cls: str) -> list[tuple[str, str]]:
    """(element, value) pairs the record class requires after the common elements."""
    out: list[tuple[str, str]] = []
    subtype = event.subtype
    for name, value in _REQUIRED_VALUES[cls]:
        if subtype is not None and subtype in SUBTYPE_VALUES.get(name, ()):
            out.append((name, subtype))
        else:
            out.append((name, _TYPED_VALUES.get((event.type, name), value)))
    return out


class Validity(NamedTuple):
    status: str  # DATEX validityStatus
    start: datetime
    end: datetime | None
    overrunning: bool


def validity(event: StoredEvent, published_at: datetime, *, planned_status: bool = True) -> Validity:
    """The validity a consumer should apply, consistent with the event's status.

    `definedByValidityTimeSpec` whenever the times alone tell the truth at
    `published_at`; otherwise the status says it (`active`, or `planned` where the
    version has it), and an active event past its planned end is `overrunning` (its
    planned end is still given).
    An ended event always gets an end: its actual end, else its planned end if that
    had passed when we saw it end, else the time we saw it end (`updated`).
    """
    start = event.actual_start or event.planned_start or event.first_seen
    if event.status == "ended":
        end = event.actual_end
        if end is None:
            planned = event.planned_end
            end = planned if planned is not None and planned <= event.updated else event.updated
        return Validity("definedByValidityTimeSpec", min(start, end), end, False)
    end = event.actual_end or event.planned_end
    if end is not None and end <= start:
        end = None
    if event.status == "active":
        if start <= published_at and (end is None or end > published_at):
            return Validity("definedByValidityTimeSpec", start, end, False)
        if end is not None and end <= published_at:
            # Still running past its planned end: say so, and keep the end it had.
            return Validity("active", start, end, True)
        return Validity("active", start, end, False)
    if start > published_at or not planned_status:
        return Validity("definedByValidityTimeSpec", start, end, False)
    return Validity("planned", start, end, False)


class PrReference(NamedTuple):
    road: str
    referent: str  # referentIdentifier
    referent_name: str | None
    distance: float  # metres after the referent


def pr_reference(refs: dict[str, Any], road: str | None, at: str = "point") -> PrReference | None:
    """French PR + abscissa from an event's `location_refs`, if it has one for `at`.

    Two shapes are read: flat keys `road`, `referent` or `pr`, `distance` (a point),
    and the DATEX parser's list `pr: [{"at": "point"|"from"|"to", "road", "referent",
    "pr", "departement", "side", "abscissa"}, ...]`.
    """
    entry: dict[str, Any] | None
    if isinstance(refs.get("pr"), list):
        entry = next((e for e in refs["pr"] if isinstance(e, dict) and e.get("at", "point") == at), None)
    else:
        entry = refs if at == "point" else None
    if not entry:
        return None
    road = entry.get("road") or road
    referent, pr = entry.get("referent"), entry.get("pr")
    if not road or (referent in (None, "") and pr in (None, "")):
        return None
    distance = entry.get("distance", entry.get("abscissa"))
    try:
        metres = float(distance) if distance not in (None, "") else 0.0
    except (TypeError, ValueError):
        return None
    if not math.isfinite(metres):
        return None
    if referent in (None, ""):
        referent = french_referent(pr, entry.get("departement"), entry.get("side"))
    road, referent = clean_text(str(road)), clean_text(str(referent))
    if not road or not referent:
        return None
    return PrReference(road, referent, f"PR {pr}" if pr not in (None, "") else None, metres)


def french_referent(pr: Any, departement: str | None = None, side: str | None = None) -> str:
    """The PR identifier of the French feeds: "34PR12D" (département, PR, side), or "PR12"."""
    return f"{departement or ''}PR{pr}{(side or '') if departement else ''}"


class EventPlace(NamedTuple):
    road: str | None
    point: PrReference | None  # PR + abscissa of a point event
    start: PrReference | None  # of a linear event: from ...
    end: PrReference | None  # ... to


def event_place(event: StoredEvent) -> EventPlace:
    """The road and PR references of an event (from its fields and `location_refs`)."""
    refs = event.location_refs
    if not refs:
        return EventPlace(clean_text(event.road) if event.road else None, None, None, None)
    point, start, end = (pr_reference(refs, event.road, at) for at in ("point", "from", "to"))
    road = event.road or next((r.road for r in (point, start, end) if r is not None), None)
    if not road and isinstance(refs.get("road"), str):
        road = refs["road"]
    return EventPlace(clean_text(road) if road else None, point, start, end)


LINEAR_DIRECTIONS = {"positive": "aligned", "negative": "opposite", "both": "both"}
COMPASS_DIRECTIONS = {
    "N": "northBound", "NE": "northEastBound", "E": "eastBound", "SE": "southEastBound",
    "S": "southBound", "SW": "southWestBound", "W": "westBound", "NW": "northWestBound",
}  # fmt: skip


# ---------------------------------------------------------------- the record body

# Writes an event's location into its record: (record, event, place, first language).
Locate = Callable[[Any, StoredEvent, EventPlace, str], None]


@dataclass(frozen=True)
class Dialect:
    """What one DATEX II version changes in a situation record."""

    situation: Tags  # situation, record and comment elements (v3: `sit`)
    common: Tags  # header, source, validity and multilingual values (v3: `com`)
    location: Tags  # location references (v3: `loc`)
    record_prefix: str  # of a record's `xsi:type` (v3: "sit:")
    location_prefix: str  # of a location class's `xsi:type` (v3: "loc:")
    versioned_situation: bool  # the situation element carries the event version (v2.3)
    planned_status: bool  # `validityStatus` has "planned" (v3)
    time_period_attrs: dict[str, str]  # of `recurringTimePeriodOfDay` (v2.3: its xsi:type)
    values: Mapping[tuple[str, str], str]  # (element, value) spelt otherwise in this version
    locate: Locate

    def header(self, parent: Any, tag: str) -> None:
        header = _SE(parent, tag)
        _SE(header, self.common.confidentiality).text = "noRestriction"
        _SE(header, self.common.informationStatus).text = "real"

    def multilingual(self, parent: Any, tag: str, texts: list[tuple[str | None, str]]) -> None:
        c = self.common
        values = _SE(_SE(parent, tag), c.values)
        for lang, text in texts:
            value = _SE(values, c.value) if lang is None else _SE(values, c.value, {"lang": lang})
            value.text = text

    def point_coordinates(self, parent: Any, tag: str, lon: float, lat: float) -> None:
        pc = _SE(parent, tag)
        _SE(pc, self.location.latitude).text = coord(lat)
        _SE(pc, self.location.longitude).text = coord(lon)

    def point_along(self, location: Any, ref: PrReference, direction: str | None) -> None:
        """`pointAlongLinearElement`: the road, a PR referent and the distance after it."""
        loc = self.location
        along = _SE(location, loc.pointAlongLinearElement)
        relative = LINEAR_DIRECTIONS.get(direction or "")
        if relative:
            _SE(along, loc.directionRelativeAtPoint).text = relative
        _SE(_SE(along, loc.linearElement), loc.roadNumber).text = ref.road
        self._distance_from_referent(along, loc.distanceAlongLinearElement, ref)

    def linear_within(self, location: Any, start: PrReference, end: PrReference, direction: str | None) -> None:
        """`linearWithinLinearElement`: from one PR + abscissa to another on the same road."""
        loc = self.location
        within = _SE(location, loc.linearWithinLinearElement)
        relative = LINEAR_DIRECTIONS.get(direction or "")
        if relative:
            _SE(within, loc.directionRelativeOnLinearSection).text = relative
        _SE(_SE(within, loc.linearElement), loc.roadNumber).text = start.road
        self._distance_from_referent(within, loc.fromPoint, start)
        self._distance_from_referent(within, loc.toPoint, end)

    def _distance_from_referent(self, parent: Any, tag: str, ref: PrReference) -> None:
        loc = self.location
        distance = _SE(parent, tag, {XSI_TYPE: self.location_prefix + "DistanceFromLinearElementReferent"})
        _SE(distance, loc.distanceAlong).text = f"{ref.distance:.1f}"
        referent = _SE(distance, loc.fromReferent)
        _SE(referent, loc.referentIdentifier).text = ref.referent
        if ref.referent_name:
            _SE(referent, loc.referentName).text = ref.referent_name
        _SE(referent, loc.referentType).text = "referenceMarker"


def write_situation(
    payload: Any,
    dialect: Dialect,
    event: StoredEvent,
    place: EventPlace,
    languages: Sequence[str],
    published_at: datetime,
) -> None:
    """One situation with its single record for `event`, appended to `payload`."""
    s, c = dialect.situation, dialect.common
    version = str(event.version)
    ident = xml_safe(event.id)
    attrs = {"id": ident, "version": version} if dialect.versioned_situation else {"id": ident}
    situation = _SE(payload, s.situation, attrs)
    _SE(situation, s.overallSeverity).text = event.severity
    updated = xml_datetime(event.updated)
    _SE(situation, s.situationVersionTime).text = updated
    dialect.header(situation, s.headerInformation)

    cls = record_class(event)
    record_attrs = {XSI_TYPE: dialect.record_prefix + cls, "id": ident, "version": version}
    record = _SE(situation, s.situationRecord, record_attrs)
    _SE(record, s.situationRecordCreationTime).text = xml_datetime(event.first_seen)
    _SE(record, s.situationRecordVersionTime).text = updated
    _SE(record, s.probabilityOfOccurrence).text = "certain"
    _SE(record, s.severity).text = event.severity
    _SE(_SE(record, s.source), c.sourceIdentification).text = event.source_id

    valid = validity(event, published_at, planned_status=dialect.planned_status)
    v = _SE(record, s.validity)
    _SE(v, c.validityStatus).text = valid.status
    if valid.overrunning:
        _SE(v, c.overrunning).text = "true"
    spec = _SE(v, c.validityTimeSpecification)
    _SE(spec, c.overallStartTime).text = xml_datetime(valid.start)
    if valid.end is not None:
        _SE(spec, c.overallEndTime).text = xml_datetime(valid.end)
    for slot in event.schedule:  # recurring slots: one valid period each
        period = _SE(spec, c.validPeriod)
        times = _SE(period, c.recurringTimePeriodOfDay, dialect.time_period_attrs)
        _SE(times, c.startTimeOfPeriod).text = f"{slot.start}:00"
        _SE(times, c.endTimeOfPeriod).text = f"{slot.end}:00"
        days = _SE(period, c.recurringDayWeekMonthPeriod)
        for day in slot.days:
            _SE(days, c.applicableDay).text = day

    texts = texts_by_language(event.descriptions, languages)
    if texts:
        comment = _SE(record, s.generalPublicComment)
        dialect.multilingual(comment, s.comment, texts)
        _SE(comment, s.commentType).text = "description"
    detour = clean_text(event.detour) if event.detour else ""
    if detour and cls != "ReroutingManagement":
        comment = _SE(record, s.generalPublicComment)
        dialect.multilingual(comment, s.comment, [(languages[0], detour)])
        _SE(comment, s.commentType).text = "other"

    dialect.locate(record, event, place, languages[0])

    for name, value in record_type_values(event, cls):
        _SE(record, getattr(s, name)).text = dialect.values.get((name, value), value)
    if detour and cls == "ReroutingManagement":
        dialect.multilingual(record, s.reroutingItineraryDescription, [(languages[0], detour)])
