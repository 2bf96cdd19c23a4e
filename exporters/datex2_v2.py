"""DATEX II v2.3 situations (`d2LogicalModel`), for consumers still on v2 such as
the French Tipi / Bison Futé chain.

Pure: domain objects in, UTF-8 XML bytes out. The situation record is written by
exporters/datex2_record.py for both versions (record classes, their required
values, validity, comments and PR handling), so both feeds say the same thing;
this module holds what only v2.3 has: its header and its locations.

Locations follow the French style of the Tipi feeds: a TPEG point or TPEG linear
location with coordinates and the road as link name, plus a
`pointAlongLinearElement` (road, PR referent, distance in metres) when the event
has a PR + abscissa. v2.3 has no line-string geometry: a LineString is written as
a TPEG segment between its first and last positions (the full line is in v3).

The road number goes in `linearElement/roadNumber`, where v2.3 consumers read it;
v2.3 only has it inside a linear reference (a referent and a distance). The live
feeds read an event whose source gives no PR with the PR + abscissa the road
referential finds for its geometry (feed/store/storage.py); an event off the
referential carries its road as the TPEG link name only.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from lxml import etree

from exporters.datex2_record import (
    COMPASS_DIRECTIONS,
    XSI,
    XSI_TYPE,
    Dialect,
    EventPlace,
    Tags,
    event_place,
    write_situation,
    xml_datetime,
)
from feed.config import PublicationConfig
from feed.model import StoredEvent

D2 = "http://datex2.eu/schema/2/2_0"

_NSMAP = {None: D2, "xsi": XSI}
_SE = etree.SubElement

# v2.3 CountryEnum; anything else is "other".
_COUNTRIES = frozenset(
    [
        "at",
        "be",
        "bg",
        "ch",
        "cs",
        "cy",
        "cz",
        "de",
        "dk",
        "ee",
        "es",
        "fi",
        "fo",
        "fr",
        "gb",
        "gg",
        "gi",
        "gr",
        "hr",
        "hu",
        "ie",
        "im",
        "is",
        "it",
        "je",
        "li",
        "lt",
        "lu",
        "lv",
        "ma",
        "mc",
        "mk",
        "mt",
        "nl",
        "no",
        "pl",
        "pt",
        "ro",
        "se",
        "si",
        "sk",
        "sm",
        "tr",
        "va",
    ]
)
# Values the v2.3 code lists spell differently from the v3 ones we share.
_V2_VALUES = {("publicEventType", "unknown"): "other"}

_d = Tags(D2)


def render_situations(events: Sequence[StoredEvent], publication: PublicationConfig, published_at: datetime) -> bytes:
    """A v2.3 SituationPublication, one situation (and one record) per event.

    Ended events stay listed with their end time. An event that v2 cannot locate
    (no geometry and no PR reference) is left out.
    """
    country = publication.country if publication.country in _COUNTRIES else "other"
    root = etree.Element(_d.d2LogicalModel, {"modelBaseVersion": "2"}, nsmap=_NSMAP)
    _identifier(_SE(root, _d.exchange), _d.supplierIdentification, country, publication.national_identifier)
    payload = _SE(root, _d.payloadPublication, {XSI_TYPE: "SituationPublication", "lang": publication.languages[0]})
    _SE(payload, _d.publicationTime).text = xml_datetime(published_at)
    _identifier(payload, _d.publicationCreator, country, publication.national_identifier)
    for event in events:
        place = event_place(event)
        if event.geometry is not None or place.point is not None:
            write_situation(payload, _V2, event, place, publication.languages, published_at)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _identifier(parent: Any, tag: str, country: str, national: str) -> None:
    ident = _SE(parent, tag)
    _SE(ident, _d.country).text = country
    _SE(ident, _d.nationalIdentifier).text = national


def _tpeg_direction(direction: str | None) -> str:
    if direction == "both":
        return "bothWays"
    return COMPASS_DIRECTIONS.get((direction or "").upper(), "unknown")


def _tpeg_point(parent: Any, tag: str, lon: float, lat: float, road: str, lang: str) -> None:
    point = _SE(parent, tag, {XSI_TYPE: "TpegNonJunctionPoint"})
    _V2.point_coordinates(point, _d.pointCoordinates, lon, lat)
    name = _SE(point, _d.name)
    _V2.multilingual(name, _d.descriptor, [(lang, road)])
    _SE(name, _d.tpegOtherPointDescriptorType).text = "linkName"


def _location(record: Any, event: StoredEvent, place: EventPlace, lang: str) -> None:
    geometry = event.geometry
    road = place.road
    direction = _tpeg_direction(event.direction)
    if geometry is not None and geometry.type == "LineString":
        points = geometry.points
        location = _SE(record, _d.groupOfLocations, {XSI_TYPE: "Linear"})
        _V2.point_coordinates(location, _d.locationForDisplay, *points[0])
        if road:
            linear = _SE(location, _d.tpegLinearLocation)
            _SE(linear, _d.tpegDirection).text = direction
            _SE(linear, _d.tpegLinearLocationType).text = "segment"
            _tpeg_point(linear, _d.to, *points[-1], road, lang)
            _tpeg_point(linear, getattr(_d, "from"), *points[0], road, lang)
        start, end = place.start, place.end
        if start is not None and end is not None and start.road == end.road:
            _V2.linear_within(location, start, end, event.direction)
        return
    location = _SE(record, _d.groupOfLocations, {XSI_TYPE: "Point"})
    lonlat = geometry.points[0] if geometry is not None else None
    if lonlat is not None:
        _V2.point_coordinates(location, _d.locationForDisplay, *lonlat)
        if road:
            tpeg = _SE(location, _d.tpegPointLocation, {XSI_TYPE: "TpegSimplePoint"})
            _SE(tpeg, _d.tpegDirection).text = direction
            _SE(tpeg, _d.tpegSimplePointLocationType).text = "nonLinkedPoint"
            _tpeg_point(tpeg, _d.point, *lonlat, road, lang)
    if place.point is not None:
        _V2.point_along(location, place.point, event.direction)
    if lonlat is not None and not road:  # else the TPEG point already has the coordinates
        _V2.point_coordinates(_SE(location, _d.pointByCoordinates), _d.pointCoordinates, *lonlat)


_V2 = Dialect(
    situation=_d,
    common=_d,
    location=_d,
    record_prefix="",
    location_prefix="",
    versioned_situation=True,
    planned_status=False,  # v2.3 has no "planned"
    time_period_attrs={XSI_TYPE: "TimePeriodByHour"},
    values=_V2_VALUES,
    locate=_location,
)
