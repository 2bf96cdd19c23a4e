"""DATEX II v2.3 situations (`d2LogicalModel`), for consumers still on v2 such as
the French Tipi / Bison Futé chain.

Pure: domain objects in, UTF-8 XML bytes out. Record classes, their required
values, validity and PR handling are those of the v3 exporter, so both feeds say
the same thing. Locations follow the French style of the Tipi feeds: a TPEG point
or TPEG linear location with coordinates and the road as link name, plus a
`pointAlongLinearElement` (road, PR referent, distance in metres) when the event
has a PR + abscissa. v2.3 has no line-string geometry: a LineString is written as
a TPEG segment between its first and last positions (the full line is in v3).

The road number goes in `linearElement/roadNumber`, where v2.3 consumers read it;
v2.3 only has it inside a linear reference (a referent and a distance). The live
feeds read an event whose source gives no PR with the PR + abscissa the road
referential finds for its geometry (feed/store/storage.py); an event off the referential
carries its road as the TPEG link name only.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from lxml import etree

from exporters.datex2_v3 import (
    COMPASS_DIRECTIONS,
    LINEAR_DIRECTIONS,
    EventPlace,
    PrReference,
    clean_text,
    coord,
    event_place,
    record_class,
    record_type_values,
    texts_by_language,
    validity,
    xml_datetime,
    xml_safe,
)
from feed.config import PublicationConfig
from feed.model import StoredEvent

D2 = "http://datex2.eu/schema/2/2_0"
XSI = "http://www.w3.org/2001/XMLSchema-instance"

_NSMAP = {None: D2, "xsi": XSI}
_TYPE = "{" + XSI + "}type"
_SE = etree.SubElement

# v2.3 CountryEnum; anything else is "other".
_COUNTRIES = frozenset(
    "at be bg ch cs cy cz de dk ee es fi fo fr gb gg gi gr hr hu ie im is it je li lt lu lv "
    "ma mc mk mt nl no pl pt ro se si sk sm tr va".split()
)
# Values the v2.3 code lists spell differently from the v3 ones we share.
_V2_VALUES = {("publicEventType", "unknown"): "other"}


class _Tags:
    def __init__(self, ns: str) -> None:
        self._prefix = "{" + ns + "}"

    def __getattr__(self, name: str) -> str:
        tag = self._prefix + name
        setattr(self, name, tag)
        return tag


_d = _Tags(D2)


def render_situations(events: Sequence[StoredEvent], publication: PublicationConfig, published_at: datetime) -> bytes:
    """A v2.3 SituationPublication, one situation (and one record) per event.

    Ended events stay listed with their end time. An event that v2 cannot locate
    (no geometry and no PR reference) is left out.
    """
    country = publication.country if publication.country in _COUNTRIES else "other"
    root = etree.Element(_d.d2LogicalModel, {"modelBaseVersion": "2"}, nsmap=_NSMAP)
    _identifier(_SE(root, _d.exchange), _d.supplierIdentification, country, publication.national_identifier)
    payload = _SE(root, _d.payloadPublication, {_TYPE: "SituationPublication", "lang": publication.languages[0]})
    _SE(payload, _d.publicationTime).text = xml_datetime(published_at)
    _identifier(payload, _d.publicationCreator, country, publication.national_identifier)
    for event in events:
        _situation(payload, event, publication.languages, published_at)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _identifier(parent: Any, tag: str, country: str, national: str) -> None:
    ident = _SE(parent, tag)
    _SE(ident, _d.country).text = country
    _SE(ident, _d.nationalIdentifier).text = national


def _multilingual(parent: Any, tag: str, texts: list[tuple[str | None, str]]) -> None:
    values = _SE(_SE(parent, tag), _d.values)
    for lang, text in texts:
        value = _SE(values, _d.value) if lang is None else _SE(values, _d.value, {"lang": lang})
        value.text = text


def _situation(payload: Any, event: StoredEvent, languages: Sequence[str], published_at: datetime) -> None:
    place = event_place(event)
    if event.geometry is None and place.point is None:
        return
    version = str(event.version)
    ident = xml_safe(event.id)
    situation = _SE(payload, _d.situation, {"id": ident, "version": version})
    _SE(situation, _d.overallSeverity).text = event.severity
    updated = xml_datetime(event.updated)
    _SE(situation, _d.situationVersionTime).text = updated
    header = _SE(situation, _d.headerInformation)
    _SE(header, _d.confidentiality).text = "noRestriction"
    _SE(header, _d.informationStatus).text = "real"

    cls = record_class(event)
    record = _SE(situation, _d.situationRecord, {_TYPE: cls, "id": ident, "version": version})
    _SE(record, _d.situationRecordCreationTime).text = xml_datetime(event.first_seen)
    _SE(record, _d.situationRecordVersionTime).text = updated
    _SE(record, _d.probabilityOfOccurrence).text = "certain"
    _SE(record, _d.severity).text = event.severity
    _SE(_SE(record, _d.source), _d.sourceIdentification).text = event.source_id

    valid = validity(event, published_at, planned_status=False)  # v2.3 has no "planned"
    v = _SE(record, _d.validity)
    _SE(v, _d.validityStatus).text = valid.status
    if valid.overrunning:
        _SE(v, _d.overrunning).text = "true"
    spec = _SE(v, _d.validityTimeSpecification)
    _SE(spec, _d.overallStartTime).text = xml_datetime(valid.start)
    if valid.end is not None:
        _SE(spec, _d.overallEndTime).text = xml_datetime(valid.end)
    for slot in event.schedule:  # recurring slots: one valid period each
        period = _SE(spec, _d.validPeriod)
        times = _SE(period, _d.recurringTimePeriodOfDay, {_TYPE: "TimePeriodByHour"})
        _SE(times, _d.startTimeOfPeriod).text = f"{slot.start}:00"
        _SE(times, _d.endTimeOfPeriod).text = f"{slot.end}:00"
        days = _SE(period, _d.recurringDayWeekMonthPeriod)
        for day in slot.days:
            _SE(days, _d.applicableDay).text = day

    texts = texts_by_language(event.descriptions, languages)
    if texts:
        comment = _SE(record, _d.generalPublicComment)
        _multilingual(comment, _d.comment, texts)
        _SE(comment, _d.commentType).text = "description"
    detour = clean_text(event.detour) if event.detour else ""
    if detour and cls != "ReroutingManagement":
        comment = _SE(record, _d.generalPublicComment)
        _multilingual(comment, _d.comment, [(languages[0], detour)])
        _SE(comment, _d.commentType).text = "other"

    _location(record, event, place, languages[0])

    for name, value in record_type_values(event, cls):
        _SE(record, getattr(_d, name)).text = _V2_VALUES.get((name, value), value)
    if detour and cls == "ReroutingManagement":
        _multilingual(record, _d.reroutingItineraryDescription, [(languages[0], detour)])


def _tpeg_direction(direction: str | None) -> str:
    if direction == "both":
        return "bothWays"
    return COMPASS_DIRECTIONS.get((direction or "").upper(), "unknown")


def _coordinates(parent: Any, tag: str, lon: float, lat: float) -> None:
    pc = _SE(parent, tag)
    _SE(pc, _d.latitude).text = coord(lat)
    _SE(pc, _d.longitude).text = coord(lon)


def _tpeg_point(parent: Any, tag: str, lon: float, lat: float, road: str, lang: str) -> None:
    point = _SE(parent, tag, {_TYPE: "TpegNonJunctionPoint"})
    _coordinates(point, _d.pointCoordinates, lon, lat)
    name = _SE(point, _d.name)
    _multilingual(name, _d.descriptor, [(lang, road)])
    _SE(name, _d.tpegOtherPointDescriptorType).text = "linkName"


def _location(record: Any, event: StoredEvent, place: EventPlace, lang: str) -> None:
    geometry = event.geometry
    road = place.road
    direction = _tpeg_direction(event.direction)
    if geometry is not None and geometry.type == "LineString":
        points = geometry.points
        location = _SE(record, _d.groupOfLocations, {_TYPE: "Linear"})
        _coordinates(location, _d.locationForDisplay, *points[0])
        if road:
            linear = _SE(location, _d.tpegLinearLocation)
            _SE(linear, _d.tpegDirection).text = direction
            _SE(linear, _d.tpegLinearLocationType).text = "segment"
            _tpeg_point(linear, _d.to, *points[-1], road, lang)
            _tpeg_point(linear, getattr(_d, "from"), *points[0], road, lang)
        start, end = place.start, place.end
        if start is not None and end is not None and start.road == end.road:
            within = _SE(location, _d.linearWithinLinearElement)
            relative = LINEAR_DIRECTIONS.get(event.direction or "")
            if relative:
                _SE(within, _d.directionRelativeOnLinearSection).text = relative
            _SE(_SE(within, _d.linearElement), _d.roadNumber).text = start.road
            _distance_from_referent(within, _d.fromPoint, start)
            _distance_from_referent(within, _d.toPoint, end)
        return
    location = _SE(record, _d.groupOfLocations, {_TYPE: "Point"})
    lonlat = geometry.points[0] if geometry is not None else None
    if lonlat is not None:
        _coordinates(location, _d.locationForDisplay, *lonlat)
        if road:
            tpeg = _SE(location, _d.tpegPointLocation, {_TYPE: "TpegSimplePoint"})
            _SE(tpeg, _d.tpegDirection).text = direction
            _SE(tpeg, _d.tpegSimplePointLocationType).text = "nonLinkedPoint"
            _tpeg_point(tpeg, _d.point, *lonlat, road, lang)
    if place.point is not None:
        along = _SE(location, _d.pointAlongLinearElement)
        relative = LINEAR_DIRECTIONS.get(event.direction or "")
        if relative:
            _SE(along, _d.directionRelativeAtPoint).text = relative
        _SE(_SE(along, _d.linearElement), _d.roadNumber).text = place.point.road
        _distance_from_referent(along, _d.distanceAlongLinearElement, place.point)
    if lonlat is not None and not road:  # else the TPEG point already has the coordinates
        _coordinates(_SE(location, _d.pointByCoordinates), _d.pointCoordinates, *lonlat)


def _distance_from_referent(parent: Any, tag: str, ref: PrReference) -> None:
    distance = _SE(parent, tag, {_TYPE: "DistanceFromLinearElementReferent"})
    _SE(distance, _d.distanceAlong).text = f"{ref.distance:.1f}"
    referent = _SE(distance, _d.fromReferent)
    _SE(referent, _d.referentIdentifier).text = ref.referent
    if ref.referent_name:
        _SE(referent, _d.referentName).text = ref.referent_name
    _SE(referent, _d.referentType).text = "referenceMarker"
