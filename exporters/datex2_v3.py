"""DATEX II v3 feeds (model 3.6): situations, measurement site table, measured data.

Pure functions: domain objects in, UTF-8 XML bytes out; no I/O and no clock
(`published_at` is passed in), so the same input always gives the same bytes.

Situations are an Exchange 2020 `messageContainer` (what snapshot-pull clients
such as NDW's expect). The road-traffic-data publications are a bare `d2:payload`
by default, because that one document is valid against both the full 3.6 schema
and the EU RTTI traffic-data profile (3.5), which has no message container; both
fix `modelBaseVersion` to "3", so no per-version variant is needed. Pass
`container=True` to get them inside a `messageContainer` (valid 3.6 only).

Ids: a situation and its single record both take the event's public id
(`<source>:<external id>`), the record version is `event.version`. A measurement
site is `<source>:<site external id>` (stable across database rebuilds, like
event ids); its version is a short hash of its static description, so it changes
exactly when the site or its channels change. A site's channels, ordered by
their id, are numbered n = 1, 2, ...; channel n is measurement index 2n-1 (flow)
and 2n (speed), in both the site table and the measured data.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

from lxml import etree

from feed.config import PublicationConfig
from feed.errors import PublishError
from feed.model import (
    DATEX_RECORD_TYPES,
    DEFAULT_DATEX_RECORD,
    StoredChannel,
    StoredEvent,
    StoredSite,
    departement_of,
)

MC = "http://datex2.eu/schema/3/messageContainer"
D2 = "http://datex2.eu/schema/3/d2Payload"
COM = "http://datex2.eu/schema/3/common"
SIT = "http://datex2.eu/schema/3/situation"
LOC = "http://datex2.eu/schema/3/locationReferencing"
ROA = "http://datex2.eu/schema/3/roadTrafficData"
EX = "http://datex2.eu/schema/3/exchangeInformation"
XSI = "http://www.w3.org/2001/XMLSchema-instance"

MODEL_BASE_VERSION = "3"
TEXT_MAX = 1024  # MultilingualStringValueType maxLength (v2.3 and v3)


class NothingToPublish(PublishError, ValueError):
    """The publication would be empty, and the schema forbids an empty one."""


class _Tags:
    """`T.name` -> "{namespace}name", computed once per name."""

    def __init__(self, ns: str) -> None:
        self._prefix = "{" + ns + "}"

    def __getattr__(self, name: str) -> str:
        tag = self._prefix + name
        setattr(self, name, tag)
        return tag


_mc, _d2, _c, _s, _l, _r, _x = (_Tags(ns) for ns in (MC, D2, COM, SIT, LOC, ROA, EX))
_TYPE = "{" + XSI + "}type"
_SE = etree.SubElement


# ---------------------------------------------------------------- shared with datex2_v2

_INVALID_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_LANGUAGE = re.compile(r"[a-zA-Z]{1,8}(-[a-zA-Z0-9]{1,8})*")


def xml_datetime(value: datetime) -> str:
    """xs:dateTime in UTC with a `Z`."""
    if value.utcoffset():
        value = value.astimezone(timezone.utc)
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
    "roadOrCarriagewayOrLaneManagementType": frozenset({
        "roadClosed", "singleAlternateLineTraffic", "laneClosures", "narrowLanes", "carriagewayClosures",
        "contraflow"}),
    "weatherRelatedRoadConditionType": frozenset({"ice", "blackIce", "snowOnTheRoad", "freezingOfWetRoads",
                                                  "wetAndIcyRoad", "surfaceWater"}),
}


def record_type_values(event: StoredEvent, cls: str) -> list[tuple[str, str]]:
    """(element, value) pairs the record class requires after the common elements."""
    out = []
    for name, value in _REQUIRED_VALUES[cls]:
        if event.subtype in SUBTYPE_VALUES.get(name, ()):
            out.append((name, event.subtype))
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


# ---------------------------------------------------------------- common parts


def _payload(
    publication: PublicationConfig,
    published_at: datetime,
    xsi_type: str,
    nsmap: dict[str | None, str],
    container: bool,
) -> tuple[Any, Any]:
    """(root, payload) with the PayloadPublication header filled in."""
    attrs = {_TYPE: xsi_type, "lang": publication.languages[0], "modelBaseVersion": MODEL_BASE_VERSION}
    if container:
        root = etree.Element(_mc.messageContainer, {"modelBaseVersion": MODEL_BASE_VERSION}, nsmap=nsmap)
        payload = _SE(root, _mc.payload, attrs)
    else:
        root = payload = etree.Element(_d2.payload, attrs, nsmap=nsmap)
    _SE(payload, _c.publicationTime).text = xml_datetime(published_at)
    _international_identifier(payload, _c.publicationCreator, publication)
    return root, payload


def _international_identifier(parent: Any, tag: str, publication: PublicationConfig) -> None:
    ident = _SE(parent, tag)
    _SE(ident, _c.country).text = publication.country
    _SE(ident, _c.nationalIdentifier).text = publication.national_identifier


def _exchange_information(root: Any, publication: PublicationConfig, published_at: datetime) -> None:
    info = _SE(root, _mc.exchangeInformation, {"modelBaseVersion": MODEL_BASE_VERSION})
    context = _SE(info, _x.exchangeContext)
    _SE(context, _x.codedExchangeProtocol).text = "snapshotPull"
    _SE(context, _x.exchangeSpecificationVersion).text = "3"
    supplier = _SE(context, _x.supplierOrCisRequester)
    _SE(supplier, _x.name).text = publication.publisher
    _international_identifier(supplier, _x.internationalIdentifier, publication)
    dynamic = _SE(info, _x.dynamicInformation)
    _SE(dynamic, _x.exchangeStatus).text = "online"
    _SE(dynamic, _x.messageGenerationTimestamp).text = xml_datetime(published_at)


def _header(parent: Any, tag: str) -> None:
    header = _SE(parent, tag)
    _SE(header, _c.confidentiality).text = "noRestriction"
    _SE(header, _c.informationStatus).text = "real"


def _multilingual(parent: Any, tag: str, texts: list[tuple[str | None, str]]) -> None:
    values = _SE(_SE(parent, tag), _c.values)
    for lang, text in texts:
        value = _SE(values, _c.value) if lang is None else _SE(values, _c.value, {"lang": lang})
        value.text = text


def _serialize(root: Any) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _point_coordinates(parent: Any, tag: str, lon: float, lat: float) -> None:
    pc = _SE(parent, tag)
    _SE(pc, _l.latitude).text = coord(lat)
    _SE(pc, _l.longitude).text = coord(lon)


def _road_information(location: Any, road: str | None) -> None:
    if road:
        spd = _SE(location, _l.supplementaryPositionalDescription)
        _SE(_SE(spd, _l.roadInformation), _l.roadNumber).text = road


def _point_along(location: Any, ref: PrReference, direction: str | None) -> None:
    along = _SE(location, _l.pointAlongLinearElement)
    relative = LINEAR_DIRECTIONS.get(direction or "")
    if relative:
        _SE(along, _l.directionRelativeAtPoint).text = relative
    _SE(_SE(along, _l.linearElement), _l.roadNumber).text = ref.road
    _distance_from_referent(along, _l.distanceAlongLinearElement, ref)


def _linear_within(location: Any, start: PrReference, end: PrReference, direction: str | None) -> None:
    within = _SE(location, _l.linearWithinLinearElement)
    relative = LINEAR_DIRECTIONS.get(direction or "")
    if relative:
        _SE(within, _l.directionRelativeOnLinearSection).text = relative
    _SE(_SE(within, _l.linearElement), _l.roadNumber).text = start.road
    _distance_from_referent(within, _l.fromPoint, start)
    _distance_from_referent(within, _l.toPoint, end)


def _distance_from_referent(parent: Any, tag: str, ref: PrReference) -> None:
    distance = _SE(parent, tag, {_TYPE: "loc:DistanceFromLinearElementReferent"})
    _SE(distance, _l.distanceAlong).text = f"{ref.distance:.1f}"
    referent = _SE(distance, _l.fromReferent)
    _SE(referent, _l.referentIdentifier).text = ref.referent
    if ref.referent_name:
        _SE(referent, _l.referentName).text = ref.referent_name
    _SE(referent, _l.referentType).text = "referenceMarker"


# ---------------------------------------------------------------- situations

_SITUATION_NSMAP = {"mc": MC, "com": COM, "sit": SIT, "loc": LOC, "ex": EX, "xsi": XSI}


def render_situations(events: Sequence[StoredEvent], publication: PublicationConfig, published_at: datetime) -> bytes:
    """A SituationPublication in an Exchange 2020 message container.

    Ended events stay listed (with their end time) so consumers see them end.
    An event with neither geometry nor road cannot be located and is left out.
    """
    root, payload = _payload(publication, published_at, "sit:SituationPublication", _SITUATION_NSMAP, True)
    languages = publication.languages
    for event in events:
        _situation(payload, event, languages, published_at)
    _exchange_information(root, publication, published_at)
    return _serialize(root)


def _situation(payload: Any, event: StoredEvent, languages: Sequence[str], published_at: datetime) -> None:
    place = event_place(event)
    if event.geometry is None and not place.road:
        return
    ident = xml_safe(event.id)
    situation = _SE(payload, _s.situation, {"id": ident})
    _SE(situation, _s.overallSeverity).text = event.severity
    updated = xml_datetime(event.updated)
    _SE(situation, _s.situationVersionTime).text = updated
    _header(situation, _s.headerInformation)
    cls = record_class(event)
    record = _SE(situation, _s.situationRecord, {_TYPE: "sit:" + cls, "id": ident, "version": str(event.version)})
    _SE(record, _s.situationRecordCreationTime).text = xml_datetime(event.first_seen)
    _SE(record, _s.situationRecordVersionTime).text = updated
    _SE(record, _s.probabilityOfOccurrence).text = "certain"
    _SE(record, _s.severity).text = event.severity
    _SE(_SE(record, _s.source), _c.sourceIdentification).text = event.source_id

    valid = validity(event, published_at)
    v = _SE(record, _s.validity)
    _SE(v, _c.validityStatus).text = valid.status
    if valid.overrunning:
        _SE(v, _c.overrunning).text = "true"
    spec = _SE(v, _c.validityTimeSpecification)
    _SE(spec, _c.overallStartTime).text = xml_datetime(valid.start)
    if valid.end is not None:
        _SE(spec, _c.overallEndTime).text = xml_datetime(valid.end)
    for slot in event.schedule:  # recurring slots: one valid period each
        period = _SE(spec, _c.validPeriod)
        times = _SE(period, _c.recurringTimePeriodOfDay)
        _SE(times, _c.startTimeOfPeriod).text = f"{slot.start}:00"
        _SE(times, _c.endTimeOfPeriod).text = f"{slot.end}:00"
        days = _SE(period, _c.recurringDayWeekMonthPeriod)
        for day in slot.days:
            _SE(days, _c.applicableDay).text = day

    texts = texts_by_language(event.descriptions, languages)
    if texts:
        comment = _SE(record, _s.generalPublicComment)
        _multilingual(comment, _s.comment, texts)
        _SE(comment, _s.commentType).text = "description"
    detour = clean_text(event.detour) if event.detour else ""
    if detour and cls != "ReroutingManagement":
        comment = _SE(record, _s.generalPublicComment)
        _multilingual(comment, _s.comment, [(languages[0], detour)])
        _SE(comment, _s.commentType).text = "other"

    _event_location(record, event, place)

    for name, value in record_type_values(event, cls):
        _SE(record, getattr(_s, name)).text = value
    if detour and cls == "ReroutingManagement":
        _multilingual(record, _s.reroutingItineraryDescription, [(languages[0], detour)])


def _event_location(record: Any, event: StoredEvent, place: EventPlace) -> None:
    geometry = event.geometry
    if geometry is not None and geometry.type == "LineString":
        points = geometry.points
        on_one_road = place.start is not None and place.end is not None and place.start.road == place.end.road
        kind = "loc:SingleRoadLinearLocation" if on_one_road else "loc:LinearLocation"
        location = _SE(record, _s.locationReference, {_TYPE: kind})
        _point_coordinates(location, _l.coordinatesForDisplay, *points[0])
        _road_information(location, place.road)
        line = _SE(location, _l.gmlLineString, {"srsDimension": "2"})
        # No srsName: DATEX II then reads posList as ETRS89 latitude-longitude pairs.
        _SE(line, _l.posList).text = " ".join(f"{lat:.6f} {lon:.6f}" for lon, lat in points)
        if on_one_road:
            _linear_within(location, place.start, place.end, event.direction)  # type: ignore[arg-type]
        return
    location = _SE(record, _s.locationReference, {_TYPE: "loc:PointLocation"})
    _road_information(location, place.road)
    if geometry is not None:
        lon, lat = geometry.points[0]
        _point_coordinates(_SE(location, _l.pointByCoordinates), _l.pointCoordinates, lon, lat)
    if place.point is not None:
        _point_along(location, place.point, event.direction)


# ---------------------------------------------------------------- measurement sites

_ROA_NSMAP = {"d2": D2, "com": COM, "roa": ROA, "loc": LOC, "xsi": XSI}
_ROA_CONTAINER_NSMAP = {"mc": MC, "com": COM, "roa": ROA, "loc": LOC, "ex": EX, "xsi": XSI}

# Comptage des mobilités `mobility_type` -> DATEX vehicleType; None: by vehicle class.
_MOBILITY_VEHICLES: dict[str, str | None] = {
    "car": None,
    "undefined": None,
    "bike": "bicycle",
    "bicycle": "bicycle",
    "two wheels motorized": "twoWheeledVehicle",
    "motorcycle": "motorcycle",
    "bus": "bus",
    "minibus": "minibus",
    "truck": "lorry",
    "van": "van",
    "tramway": "tram",
    "e-scooter": "other",
}
_NOT_VEHICLES = frozenset({"pedestrian", "horse-rider", "canoe"})
_CLASS_VEHICLES = {"all": "anyVehicle", "light": "carOrLightVehicle", "heavy": "heavyVehicle"}


def _roa_nsmap(container: bool) -> dict[str | None, str]:
    return _ROA_CONTAINER_NSMAP if container else _ROA_NSMAP


def vehicle_types(channel: StoredChannel) -> list[str]:
    """DATEX vehicle types a channel counts; empty for non-vehicle channels (pedestrians...)."""
    out: list[str] = []
    for part in channel.mobility_type.split(","):
        name = part.strip().lower()
        if not name or name in _NOT_VEHICLES:
            continue
        vehicle = _MOBILITY_VEHICLES.get(name, "other")
        if vehicle is None:
            vehicle = _CLASS_VEHICLES[channel.vehicle_class]
        if vehicle not in out:
            out.append(vehicle)
    return out


def site_public_id(site: StoredSite) -> str:
    """The id a measurement site has in every feed: `<source id>:<external id>`."""
    return xml_safe(f"{site.source_id}:{site.external_id}")


def channel_indexes(site: StoredSite) -> list[tuple[StoredChannel, int, int, list[str]]]:
    """(channel, flow index, speed index, vehicle types) for the channels DATEX can carry."""
    out = []
    for n, channel in enumerate(sorted(site.channels, key=lambda c: c.id), start=1):
        vehicles = vehicle_types(channel)
        if vehicles:
            out.append((channel, 2 * n - 1, 2 * n, vehicles))
    return out


def site_version(site: StoredSite) -> str:
    """Changes exactly when what the site table says about the site changes."""
    static = (
        site.external_id, site.name, site.road, site.pr, site.abscissa, site.lon, site.lat,
        tuple(
            (c.id, c.external_id, c.direction, c.lane, c.vehicle_class, c.mobility_type, c.time_step)
            for c in sorted(site.channels, key=lambda c: c.id)
        ),
    )  # fmt: skip
    return hashlib.blake2b(repr(static).encode(), digest_size=6).hexdigest()


def _publishable_sites(sites: Sequence[StoredSite]) -> list[tuple[StoredSite, str, str]]:
    # The RTTI profile locates a site by coordinates only: a site without them is left out.
    return [(s, site_public_id(s), site_version(s)) for s in sites if s.lat is not None and s.lon is not None]


def _table_reference(publication: PublicationConfig, listed: list[tuple[StoredSite, str, str]]) -> tuple[str, str]:
    ident = f"{publication.national_identifier}:measurement-sites"
    digest = hashlib.blake2b(digest_size=6)
    for _site, sid, version in sorted(listed, key=lambda item: item[1]):
        digest.update(f"{sid}\x00{version}\x00".encode())
    return ident, digest.hexdigest()


def _measurement_side(direction: str | None) -> str | None:
    if not direction:
        return None
    if direction in LINEAR_DIRECTIONS:
        return "bothWays" if direction == "both" else LINEAR_DIRECTIONS[direction]
    return COMPASS_DIRECTIONS.get(direction.upper())


def render_measurement_sites(
    sites: Sequence[StoredSite],
    publication: PublicationConfig,
    published_at: datetime,
    *,
    container: bool = False,
) -> bytes:
    """A MeasurementSiteTablePublication: one measurementSite per site with coordinates.

    Every channel DATEX can carry is declared twice (trafficFlow, then trafficSpeed:
    whether a counter measures speed is not known here, so the measured data simply
    omits speeds it does not have). Raises NothingToPublish without any site.
    """
    listed = _publishable_sites(sites)
    if not listed:
        raise NothingToPublish("a measurement site table needs at least one site with coordinates")
    root, payload = _payload(
        publication, published_at, "roa:MeasurementSiteTablePublication", _roa_nsmap(container), container
    )
    _header(payload, _r.headerInformation)
    table_id, table_version = _table_reference(publication, listed)
    table = _SE(payload, _r.measurementSiteTable, {"id": table_id, "version": table_version})
    lang = publication.languages[0]
    for site, sid, version in listed:
        record = _SE(table, _r.measurementSite, {"id": sid, "version": version})
        name = clean_text(site.name)
        if name:
            _multilingual(record, _r.measurementSiteName, [(lang, name)])
        _SE(record, _r.measurementSiteIdentification).text = clean_text(site.external_id)
        for channel, flow_index, speed_index, vehicles in channel_indexes(site):
            side = _measurement_side(channel.direction)
            for index, value_type in ((flow_index, "trafficFlow"), (speed_index, "trafficSpeed")):
                wrapper = _SE(record, _r.measurementSpecificCharacteristics, {"index": str(index)})
                msc = _SE(wrapper, _r.measurementSpecificCharacteristics)
                if side:
                    _SE(msc, _r.measurementSide).text = side
                _SE(msc, _r.period).text = str(channel.time_step)
                _SE(msc, _r.specificMeasurementValueType).text = value_type
                characteristics = _SE(msc, _r.specificVehicleCharacteristics)
                for vehicle in vehicles:
                    _SE(characteristics, _c.vehicleType).text = vehicle
                if channel.lane is not None:
                    _SE(_SE(msc, _r.specificLane), _l.laneNumber).text = str(channel.lane)
        # No roadInformation here: the RTTI profile removed it. The road is in the
        # linear element of the PR reference when the site has one.
        location = _SE(record, _r.measurementSiteLocation, {_TYPE: "loc:PointLocation"})
        _point_coordinates(_SE(location, _l.pointByCoordinates), _l.pointCoordinates, site.lon, site.lat)
        road = clean_text(site.road) if site.road else ""
        if road and site.pr is not None:
            referent = french_referent(site.pr, departement_of(site.insee))
            _point_along(location, PrReference(road, referent, f"PR {site.pr}", float(site.abscissa or 0)), None)
    if container:
        _exchange_information(root, publication, published_at)
    return _serialize(root)


# ---------------------------------------------------------------- measured data

_FAULTS = {"invalid": "spuriousUnreliableDataValues"}


def render_measured_data(
    sites: Sequence[StoredSite],
    publication: PublicationConfig,
    published_at: datetime,
    *,
    container: bool = False,
) -> bytes:
    """A MeasuredDataPublication with the latest interval of every channel.

    Flow is latest_count x 3600 / latest_length vehicles per hour (the raw count is
    kept in `numberOfInputValuesUsed`); mean speed in km/h when the source gives it.
    A channel without a usable latest interval (none yet, or quality missing or
    invalid) gets a `physicalQuantityFault` instead of a made-up value. Sites are
    those of the site table (with coordinates) that have channels DATEX can carry.
    """
    listed = _publishable_sites(sites)
    table_id, table_version = _table_reference(publication, listed) if listed else ("", "")
    measured = [(site, sid, version, channel_indexes(site)) for site, sid, version in listed]
    measured = [item for item in measured if item[3]]
    if not measured:
        raise NothingToPublish("measured data needs at least one site with coordinates and a vehicle channel")
    root, payload = _payload(publication, published_at, "roa:MeasuredDataPublication", _roa_nsmap(container), container)
    _SE(
        payload,
        _r.measurementSiteTableReference,
        {"targetClass": "roa:MeasurementSiteTable", "id": table_id, "version": table_version},
    )
    _header(payload, _r.headerInformation)
    for _site, sid, version, channels in measured:
        block = _SE(payload, _r.siteMeasurements)
        _SE(block, _r.measurementSiteReference, {"targetClass": "roa:MeasurementSite", "id": sid, "version": version})
        latest_end: datetime | None = None
        for channel, flow_index, speed_index, _vehicles in channels:
            end = _channel_quantities(block, channel, flow_index, speed_index, published_at)
            if end is not None and (latest_end is None or end > latest_end):
                latest_end = end
        default = _SE(block, _r.measurementTimeDefault)
        if latest_end is not None:
            _SE(default, _r.timeMeaning).text = "endTime"
        _SE(default, _r.timeValue).text = xml_datetime(latest_end or published_at)
    if container:
        _exchange_information(root, publication, published_at)
    return _serialize(root)


def _channel_quantities(
    block: Any, channel: StoredChannel, flow_index: int, speed_index: int, published_at: datetime
) -> datetime | None:
    """Write the channel's flow (and speed); return the end of its interval if it has one."""
    start, length = channel.latest_start, channel.latest_length
    quality = channel.latest_quality
    has_interval = start is not None and length is not None and length > 0
    usable = has_interval and quality not in ("missing", "invalid")
    end = start + timedelta(seconds=length) if has_interval else None  # type: ignore[operator]
    if usable and channel.latest_count is not None:
        basic = _quantity(block, flow_index, "roa:TrafficFlow", start, end)  # type: ignore[arg-type]
        count = channel.latest_count
        flow = _SE(basic, _r.vehicleFlow, {"numberOfInputValuesUsed": str(count)})
        _SE(flow, _c.vehicleFlowRate).text = str(int(count * 3600 / length + 0.5))  # type: ignore[operator]
    else:
        _fault(block, flow_index, _FAULTS.get(quality or "", "noDataValuesAvailable"), end or published_at)
    if channel.latest_speed is not None:
        if usable:
            basic = _quantity(block, speed_index, "roa:TrafficSpeed", start, end)  # type: ignore[arg-type]
            speed = _SE(basic, _r.averageVehicleSpeed)
            _SE(speed, _c.speed).text = f"{channel.latest_speed:.1f}"
        elif quality == "invalid":
            _fault(block, speed_index, "spuriousUnreliableDataValues", end or published_at)
    return end


def _quantity(block: Any, index: int, data_type: str, start: datetime, end: datetime) -> Any:
    wrapper = _SE(block, _r.physicalQuantity, {"index": str(index)})
    quantity = _SE(wrapper, _r.physicalQuantity, {_TYPE: "roa:SinglePhysicalQuantity"})
    basic = _SE(quantity, _r.basicData, {_TYPE: data_type})
    time = _SE(basic, _r.measurementOrCalculationTime)
    _SE(time, _r.timeMeaning).text = "endTime"
    end_text = xml_datetime(end)
    _SE(time, _r.timeValue).text = end_text
    period = _SE(time, _r.period)
    _SE(period, _c.startOfPeriod).text = xml_datetime(start)
    _SE(period, _c.endOfPeriod).text = end_text
    return basic


def _fault(block: Any, index: int, fault_type: str, when: datetime) -> None:
    wrapper = _SE(block, _r.physicalQuantity, {"index": str(index)})
    quantity = _SE(wrapper, _r.physicalQuantity, {_TYPE: "roa:SinglePhysicalQuantity"})
    fault = _SE(quantity, _r.physicalQuantityFault)
    _SE(fault, _c.faultLastUpdateTime).text = xml_datetime(when)
    _SE(fault, _r.physicalQuantityFaultType).text = fault_type
