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

The situation record itself is written by exporters/datex2_record.py, which v2.3
shares; this module holds what only v3 has: its publication headers, its
locations (GML line strings) and the road-traffic-data publications.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from lxml import etree

from exporters.datex2_record import (
    COMPASS_DIRECTIONS,
    LINEAR_DIRECTIONS,
    XSI,
    XSI_TYPE,
    Dialect,
    EventPlace,
    PrReference,
    Tags,
    clean_text,
    event_place,
    french_referent,
    write_situation,
    xml_datetime,
    xml_safe,
)
from feed.config import PublicationConfig
from feed.errors import PublishError
from feed.model import StoredChannel, StoredEvent, StoredSite, departement_of

MC = "http://datex2.eu/schema/3/messageContainer"
D2 = "http://datex2.eu/schema/3/d2Payload"
COM = "http://datex2.eu/schema/3/common"
SIT = "http://datex2.eu/schema/3/situation"
LOC = "http://datex2.eu/schema/3/locationReferencing"
ROA = "http://datex2.eu/schema/3/roadTrafficData"
EX = "http://datex2.eu/schema/3/exchangeInformation"

MODEL_BASE_VERSION = "3"


class NothingToPublish(PublishError, ValueError):
    """The publication would be empty, and the schema forbids an empty one."""


_mc, _d2, _c, _s, _l, _r, _x = (Tags(ns) for ns in (MC, D2, COM, SIT, LOC, ROA, EX))
_SE = etree.SubElement


# ---------------------------------------------------------------- common parts


def _payload(
    publication: PublicationConfig,
    published_at: datetime,
    xsi_type: str,
    nsmap: dict[str, str],
    container: bool,
) -> tuple[Any, Any]:
    """(root, payload) with the PayloadPublication header filled in."""
    attrs = {XSI_TYPE: xsi_type, "lang": publication.languages[0], "modelBaseVersion": MODEL_BASE_VERSION}
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


def _serialize(root: Any) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _road_information(location: Any, road: str | None) -> None:
    if road:
        spd = _SE(location, _l.supplementaryPositionalDescription)
        _SE(_SE(spd, _l.roadInformation), _l.roadNumber).text = road


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
        place = event_place(event)
        if event.geometry is not None or place.road:
            write_situation(payload, _V3, event, place, languages, published_at)
    _exchange_information(root, publication, published_at)
    return _serialize(root)


def _event_location(record: Any, event: StoredEvent, place: EventPlace, _lang: str) -> None:
    geometry = event.geometry
    if geometry is not None and geometry.type == "LineString":
        points = geometry.points
        on_one_road = place.start is not None and place.end is not None and place.start.road == place.end.road
        kind = "loc:SingleRoadLinearLocation" if on_one_road else "loc:LinearLocation"
        location = _SE(record, _s.locationReference, {XSI_TYPE: kind})
        _V3.point_coordinates(location, _l.coordinatesForDisplay, *points[0])
        _road_information(location, place.road)
        line = _SE(location, _l.gmlLineString, {"srsDimension": "2"})
        # No srsName: DATEX II then reads posList as ETRS89 latitude-longitude pairs.
        _SE(line, _l.posList).text = " ".join(f"{lat:.6f} {lon:.6f}" for lon, lat in points)
        if on_one_road:
            _V3.linear_within(location, place.start, place.end, event.direction)  # type: ignore[arg-type]
        return
    location = _SE(record, _s.locationReference, {XSI_TYPE: "loc:PointLocation"})
    _road_information(location, place.road)
    if geometry is not None:
        lon, lat = geometry.points[0]
        _V3.point_coordinates(_SE(location, _l.pointByCoordinates), _l.pointCoordinates, lon, lat)
    if place.point is not None:
        _V3.point_along(location, place.point, event.direction)


_V3 = Dialect(
    situation=_s,
    common=_c,
    location=_l,
    record_prefix="sit:",
    location_prefix="loc:",
    versioned_situation=False,
    planned_status=True,
    time_period_attrs={},
    values={},
    locate=_event_location,
)


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


def _roa_nsmap(container: bool) -> dict[str, str]:
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
    _V3.header(payload, _r.headerInformation)
    table_id, table_version = _table_reference(publication, listed)
    table = _SE(payload, _r.measurementSiteTable, {"id": table_id, "version": table_version})
    lang = publication.languages[0]
    for site, sid, version in listed:
        record = _SE(table, _r.measurementSite, {"id": sid, "version": version})
        name = clean_text(site.name)
        if name:
            _V3.multilingual(record, _r.measurementSiteName, [(lang, name)])
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
        location = _SE(record, _r.measurementSiteLocation, {XSI_TYPE: "loc:PointLocation"})
        assert site.lon is not None and site.lat is not None  # _publishable_sites lists located sites only
        _V3.point_coordinates(_SE(location, _l.pointByCoordinates), _l.pointCoordinates, site.lon, site.lat)
        road = clean_text(site.road) if site.road else ""
        if road and site.pr is not None:
            referent = french_referent(site.pr, departement_of(site.insee))
            _V3.point_along(location, PrReference(road, referent, f"PR {site.pr}", float(site.abscissa or 0)), None)
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
    _V3.header(payload, _r.headerInformation)
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
    interval = (start, length) if start is not None and length is not None and length > 0 else None
    end = interval[0] + timedelta(seconds=interval[1]) if interval is not None else None
    usable = interval is not None and quality not in ("missing", "invalid")
    if interval is not None and end is not None and usable and channel.latest_count is not None:
        basic = _quantity(block, flow_index, "roa:TrafficFlow", interval[0], end)
        count = channel.latest_count
        flow = _SE(basic, _r.vehicleFlow, {"numberOfInputValuesUsed": str(count)})
        _SE(flow, _c.vehicleFlowRate).text = str(int(count * 3600 / interval[1] + 0.5))
    else:
        _fault(block, flow_index, _FAULTS.get(quality or "", "noDataValuesAvailable"), end or published_at)
    if channel.latest_speed is not None:
        if interval is not None and end is not None and usable:
            basic = _quantity(block, speed_index, "roa:TrafficSpeed", interval[0], end)
            speed = _SE(basic, _r.averageVehicleSpeed)
            _SE(speed, _c.speed).text = f"{channel.latest_speed:.1f}"
        elif quality == "invalid":
            _fault(block, speed_index, "spuriousUnreliableDataValues", end or published_at)
    return end


def _quantity(block: Any, index: int, data_type: str, start: datetime, end: datetime) -> Any:
    wrapper = _SE(block, _r.physicalQuantity, {"index": str(index)})
    quantity = _SE(wrapper, _r.physicalQuantity, {XSI_TYPE: "roa:SinglePhysicalQuantity"})
    basic = _SE(quantity, _r.basicData, {XSI_TYPE: data_type})
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
    quantity = _SE(wrapper, _r.physicalQuantity, {XSI_TYPE: "roa:SinglePhysicalQuantity"})
    fault = _SE(quantity, _r.physicalQuantityFault)
    _SE(fault, _c.faultLastUpdateTime).text = xml_datetime(when)
    _SE(fault, _r.physicalQuantityFaultType).text = fault_type
