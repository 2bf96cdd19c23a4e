"""DATEX II documents (v2.x and v3.x) turned into domain records.

Pure and streaming: bytes or a binary stream in, an iterator of records out, no network
and no database. The document is fed in chunks to an lxml pull parser and each unit (a
situation, a measurement site, a site's measurements) is turned into records at its
`end` event and then released, so memory stays flat however large the document is.
Only the root, publication and unit elements produce events: the elements inside a unit
(about fifty per site in measured data) are read from the unit's subtree, so that Python
is not called once per element.

What is read:
- SituationPublication -> one EventRecord per situation record;
- MeasurementSiteTablePublication -> SiteRecord + one ChannelRecord per traffic
  `measurementSpecificCharacteristics` index;
- MeasuredDataPublication -> MeasurementRecord per (site, index), plus the SiteRecord and
  ChannelRecord derived from the data when the document has no site table for them.
Other publications are skipped and counted in `ParseStats`.

A record that cannot become a valid domain record is yielded as `Quarantined` and the
parse goes on; a document that cannot be read (not XML, truncated, not DATEX II, carrying
a DTD) raises `ParseError` after the records read so far have been yielded.
"""

from __future__ import annotations

import io
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache, partial
from itertools import chain
from typing import IO, Any, TypedDict

from lxml import etree

from feed.errors import InputError, ParseError
from feed.model import (
    DATEX_RECORD_TYPES,
    ChannelRecord,
    EventRecord,
    EventStatus,
    EventType,
    Geometry,
    MeasurementRecord,
    ParsedItem,
    Quarantined,
    Severity,
    SiteRecord,
    VehicleClass,
)

__all__ = ["DEFAULT_PERIOD", "DOCUMENT", "ParseStats", "parse_datex2"]

# Bison Futé/Tipi publishes 1-minute data without saying so: the period we assume when
# neither the measurement nor the site table gives one.
DEFAULT_PERIOD = 60

V2_NS = "http://datex2.eu/schema/2/2_0"
V3_CONTAINER_NS = "http://datex2.eu/schema/3/messageContainer"
V3_PAYLOAD_NS = "http://datex2.eu/schema/3/d2Payload"
_SOAP_NS = {"http://schemas.xmlsoap.org/soap/envelope/", "http://www.w3.org/2003/05/soap-envelope"}
_XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"

_V2_ROOT = f"{{{V2_NS}}}d2LogicalModel"
_V3_CONTAINER = f"{{{V3_CONTAINER_NS}}}messageContainer"
_V3_PAYLOAD_ROOT = f"{{{V3_PAYLOAD_NS}}}payload"
# The publication element under each kind of root.
_PUBLICATION_UNDER = {
    _V2_ROOT: f"{{{V2_NS}}}payloadPublication",
    _V3_CONTAINER: f"{{{V3_CONTAINER_NS}}}payload",
}

_SITUATIONS = "SituationPublication"
_SITE_TABLE = "MeasurementSiteTablePublication"
_MEASURED = "MeasuredDataPublication"

_EXCERPT_CHARS = 500


DOCUMENT = "DATEX II document"  # what a ParseError of this parser says was refused


@dataclass
class ParseStats:
    """What a parse saw besides the records it yielded, for logs and metrics."""

    version: str | None = None  # "2" or "3"
    publications: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)  # e.g. "value:WindInformation"
    quarantined: int = 0


class _Reject(InputError):
    """A unit of the document that cannot become a domain record (quarantined)."""


# The errors that turn one record into a Quarantined item (pydantic's ValidationError is a
# ValueError); anything else is a bug and must surface.
_RECORD_ERRORS = (_Reject, ValueError, ArithmeticError)


def parse_datex2(
    source: bytes | IO[bytes],
    *,
    source_id: str,
    now: datetime | None = None,
    stats: ParseStats | None = None,
    default_period: int = DEFAULT_PERIOD,
) -> Iterator[ParsedItem]:
    """Yield the domain records of a DATEX II v2/v3 document, streaming.

    `now` decides whether an event is planned, active or ended (default: the current
    time); `stats`, when given, is filled as the parse goes; `default_period` is the
    measurement period (seconds) assumed when the document gives none.
    """
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        raise ValueError("now must carry a timezone")
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else source
    walk = _Walk(source_id, now, stats if stats is not None else ParseStats(), default_period)
    try:
        yield from walk.run(stream)
    except etree.XMLSyntaxError as exc:
        raise ParseError(source_id, exc.msg or "malformed XML", exc.lineno or None, document=DOCUMENT) from None
    except (etree.LxmlError, LookupError, UnicodeError) as exc:
        raise ParseError(source_id, f"unreadable XML: {exc}", document=DOCUMENT) from None


# --------------------------------------------------------------------------- document walk

# Safe parsing: no DTD loaded, no entity expanded, no network, no huge-tree mode.
_PARSER_OPTIONS: dict[str, Any] = {
    "resolve_entities": False,
    "no_network": True,
    "load_dtd": False,
    "huge_tree": False,
    "remove_comments": True,
    "remove_pis": True,
}
_CHUNK = 64 * 1024
_PEEK_CHUNK = 4096
_PEEK_LIMIT = 1024 * 1024  # bytes read before the root before the peek gives up
# The only elements the walk is told about. libxml2 builds everything else without a
# Python object or call per element: in measured data that is ~50 elements per site.
_WATCHED = [
    f"{{*}}{name}"
    for name in (
        "d2LogicalModel", "messageContainer", "payload", "payloadPublication",  # roots, publ.
        "Envelope", "Fault",  # SOAP
        "situation", "siteMeasurements", "measurementSiteRecord", "measurementSite",  # units
        "measurementSiteTable", "measurementSiteTableReference",
    )
]  # fmt: skip
_DATEX_ROOTS = (_V2_ROOT, _V3_CONTAINER, _V3_PAYLOAD_ROOT)


class _Walk:
    """Follows the parse events: finds the root and publications, hands each unit over.

    Positions are known from the elements themselves (the units are the children of
    the publication element), not from counting events, so only the elements in
    `_WATCHED` produce events.
    """

    def __init__(self, source_id: str, now: datetime, stats: ParseStats, default_period: int):
        self.source_id = source_id
        self.now = now
        self.stats = stats
        self.default_period = default_period
        self.root_checked = False
        self.in_soap = False
        # the DATEX root (d2LogicalModel, messageContainer, payload) and the publication
        self.root: etree._Element | None = None
        self.pub: etree._Element | None = None
        self.pub_type: str | None = None
        self.lang = "und"
        self.table_id: str | None = None
        self.table_ref: str | None = None
        self.periods: dict[tuple[str, str], int | None] = {}  # channels of this document's site table
        self.table_sites: set[str] = set()
        self.derived: set[tuple[str, str | None]] = set()  # sites/channels made from measured data

    def run(self, stream: IO[bytes]) -> Iterator[ParsedItem]:
        head, root = _peek_root(stream)
        if root is not None:  # refuse a DTD or a foreign document before parsing it
            self._check_root(root)
            del root
        parser = etree.XMLPullParser(events=("start", "end"), tag=_WATCHED, **_PARSER_OPTIONS)
        for chunk in chain(head, _chunks(stream)):
            failure = None
            try:
                parser.feed(chunk)
            except etree.LxmlError as exc:  # what came before the error still counts
                failure = exc
            yield from self._events(parser.read_events())
            if failure is not None:
                raise failure
            self._trim()
        # On a cut document close() raises, and also reports the elements left open as
        # ended: the unit cut through would look complete, so its events are not read.
        # Complete units were all reported by feed() (an end tag is, once its ">" is fed).
        root = parser.close()
        yield from self._events(parser.read_events())
        if not self.root_checked:
            self._check_root(root)
        if self.root is None:
            raise ParseError(self.source_id, "no DATEX II document found inside the SOAP envelope", document=DOCUMENT)

    def _events(self, events: Iterator[tuple[str, etree._Element]]) -> Iterator[ParsedItem]:
        for event, elem in events:
            if event == "start":
                self._start(elem)
            else:
                yield from self._end(elem)

    # -- events

    def _start(self, elem: etree._Element) -> None:
        if not self.root_checked:  # the peek did not reach the root element
            self._check_root(elem.getroottree().getroot())
        if self.root is None:
            if elem.tag in _DATEX_ROOTS and (self.in_soap or elem.getparent() is None):
                self._enter_root(elem)
        elif self.pub is None:
            if elem.tag == _PUBLICATION_UNDER.get(self.root.tag) and elem.getparent() is self.root:
                self._enter_publication(elem)
        elif elem.getparent() is self.pub:
            name = _local(elem.tag)
            if name == "measurementSiteTable":
                self.table_id = elem.get("id")
            elif name == "measurementSiteTableReference":
                self.table_ref = elem.get("id") or None

    def _end(self, elem: etree._Element) -> Iterator[ParsedItem]:
        if self.in_soap and _local(elem.tag) == "Fault" and _namespace(elem.tag) in _SOAP_NS:
            reason = " ".join(str(t).strip() for t in elem.itertext() if str(t).strip())
            self._refuse(f"SOAP fault: {reason[:200]}", elem)
        pub = self.pub
        if pub is None:
            return
        parent = elem.getparent()
        if parent is pub:
            yield from self._unit(elem)
            _release(elem)
        elif elem is pub:
            self.pub = self.pub_type = None
            self.table_id = self.table_ref = None
            _release(elem)
        elif (
            self.pub_type == _SITE_TABLE
            and parent is not None
            and parent.getparent() is pub
            and _local(elem.tag) in ("measurementSiteRecord", "measurementSite")  # v2, v3
        ):
            yield from self._count(_site_items(elem, self))
            _release(elem)

    def _trim(self) -> None:
        """Drop the finished children of the publication between two chunks.

        Units are released at their end event; this also bounds what is not a unit,
        such as the content of a publication we do not read.
        """
        pub = self.pub
        if pub is not None:
            for _ in range(len(pub) - 1):  # all but the last, which may still be open
                del pub[0]

    # -- steps

    def _check_root(self, root: etree._Element) -> None:
        """Refuse any DTD (DATEX II never needs one, and entities are an attack surface),
        and any document that is neither DATEX II nor a SOAP envelope."""
        self.root_checked = True
        info = root.getroottree().docinfo
        if info.doctype or info.internalDTD is not None or info.externalDTD is not None:
            self._refuse("a document type declaration (DTD or entities) is not accepted", root)
        if root.tag in _DATEX_ROOTS:
            return
        if _namespace(root.tag) in _SOAP_NS and _local(root.tag) == "Envelope":
            self.in_soap = True
        else:
            self._refuse(f"not a DATEX II v2/v3 document (root element {root.tag})", root)

    def _enter_root(self, elem: etree._Element) -> None:
        self.root = elem
        self.stats.version = "2" if elem.tag == _V2_ROOT else "3"
        if elem.tag == _V3_PAYLOAD_ROOT:
            self._enter_publication(elem)

    def _enter_publication(self, elem: etree._Element) -> None:
        self.pub = elem
        self.pub_type = _xsi_local(elem) or "unknown"
        self.lang = (elem.get("lang") or "und").lower()
        self.stats.publications.append(self.pub_type)
        if self.pub_type not in (_SITUATIONS, _SITE_TABLE, _MEASURED):
            self.stats.skipped[f"publication:{self.pub_type}"] += 1

    def _unit(self, elem: etree._Element) -> Iterator[ParsedItem]:
        name = _local(elem.tag)
        if self.pub_type == _SITUATIONS and name == "situation":
            yield from self._count(_situation_items(elem, self))
        elif self.pub_type == _MEASURED and name == "siteMeasurements":
            yield from self._count(_measurement_items(elem, self))

    def _count(self, items: Iterator[ParsedItem]) -> Iterator[ParsedItem]:
        for item in items:
            if isinstance(item, Quarantined):
                self.stats.quarantined += 1
            yield item

    def _refuse(self, reason: str, elem: etree._Element) -> None:
        raise ParseError(self.source_id, reason, elem.sourceline, document=DOCUMENT)


def _chunks(stream: IO[bytes]) -> Iterator[bytes]:
    while True:
        data = stream.read(_CHUNK)
        if not isinstance(data, bytes):
            raise TypeError("reading the DATEX II stream must return bytes")
        if not data:
            return
        yield data


def _peek_root(stream: IO[bytes]) -> tuple[list[bytes], etree._Element | None]:
    """The first bytes of the document and its root element, parsed apart.

    The main parse only reports the elements the walk needs, which may never include
    the root; this look at the start of the document lets a DTD or a foreign document
    be refused at once. The bytes read are parsed again by the main parse, which also
    reports any error found here, with the same message.
    """
    peek = etree.XMLPullParser(events=("start",), **_PARSER_OPTIONS)
    head: list[bytes] = []
    size = 0
    while size < _PEEK_LIMIT:
        data = stream.read(_PEEK_CHUNK)
        if not isinstance(data, bytes):
            raise TypeError("reading the DATEX II stream must return bytes")
        try:
            if data:
                head.append(data)
                size += len(data)
                peek.feed(data)
            else:  # the whole document is read: what the parser held back comes out
                peek.close()
        except etree.LxmlError:
            data = b""  # no more feeding; the events before the error still count
        for _event, root in peek.read_events():
            return head, root
        if not data:
            break
    return head, None


def _release(elem: etree._Element) -> None:
    """Free a processed element and the siblings before it (flat memory on big documents)."""
    elem.clear(keep_tail=False)
    parent = elem.getparent()
    if parent is not None:
        while elem.getprevious() is not None:
            del parent[0]


def _guarded(elem: etree._Element, ref: str | None, build: Callable[[], ParsedItem]) -> ParsedItem:
    """Build one record, or quarantine it: one bad record never stops the others."""
    try:
        return build()
    except _RECORD_ERRORS as exc:
        return _quarantine(elem, ref, exc)


def _quarantine(elem: etree._Element, ref: str | None, exc: Exception) -> Quarantined:
    """The reason, the start of the element's XML and its id (or line) for a later look."""
    excerpt = etree.tostring(elem, encoding="unicode", with_tail=False)[:_EXCERPT_CHARS]
    return Quarantined(reason=_reason(exc), excerpt=excerpt, record_ref=ref or f"line {elem.sourceline}")


def _reason(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):  # pydantic ValidationError: say which field and why, briefly
        parts = [f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in errors()]
        return f"invalid record: {'; '.join(parts)}"[:500]
    return str(exc)[:500] or type(exc).__name__


# --------------------------------------------------------------------------- situations

_CLOSURES = {
    "roadClosed",
    "carriagewayClosures",
    "closedPermanentlyForTheWinter",
    "overnightClosures",
    "intermittentShortTermClosures",
}
# Unplanned "traffic elements" (DATEX II class hierarchy, v2.3 and v3.6): their start is
# an observation, so the source says they have actually begun.
_UNPLANNED = {
    "AbnormalTraffic", "Accident", "Activity", "AnimalPresenceObstruction", "AuthorityOperation",
    "Conditions", "DisturbanceActivity", "EnvironmentalObstruction", "EquipmentOrSystemFault",
    "GeneralObstruction", "InfrastructureDamageObstruction", "NonWeatherRelatedRoadConditions",
    "Obstruction", "PoorEnvironmentConditions", "PublicEvent", "RoadConditions",
    "RoadSurfaceConditions", "VehicleObstruction", "WeatherRelatedRoadConditions",
}  # fmt: skip
# operatorActionStatus values saying an operator action is in place.
_ACTION_BEGUN = {"beingImplemented", "implemented", "terminationRequested", "beingTerminated"}
_SEVERITY: dict[str, Severity] = {
    "highest": "highest",
    "high": "high",
    "medium": "medium",
    "low": "low",
    "lowest": "low",
    "none": "low",
    "unknown": "unknown",
}


def _situation_items(situation: etree._Element, walk: _Walk) -> Iterator[ParsedItem]:
    for record in _kids(situation, "situationRecord"):
        yield _guarded(record, record.get("id"), partial(_event, record, situation, walk))


def _event(record: etree._Element, situation: etree._Element, walk: _Walk) -> EventRecord:
    record_id = (record.get("id") or "").strip()
    if not record_id:
        raise _Reject("situation record without an id")
    record_class = _xsi_local(record)
    location = _kid(record, "locationReference")  # v3
    if location is None:
        location = _kid(record, "groupOfLocations")  # v2
    validity = _kid(record, "validity")
    validity_status = _text(validity, "validityStatus")
    start = _datetime(_text(validity, "validityTimeSpecification", "overallStartTime"))
    end = _datetime(_text(validity, "validityTimeSpecification", "overallEndTime"))
    updated = _datetime(_text(record, "situationRecordVersionTime")) or _datetime(
        _text(situation, "situationVersionTime")
    )
    life = _kid(record, "management", "lifeCycleManagement")  # v2 only
    ended_by_source = _text(life, "end") == "true" or _text(life, "cancel") == "true"
    status = _status(validity_status, start, end, ended_by_source, walk.now)
    begun = (
        validity_status in ("active", "suspended")
        or _text(record, "operatorActionStatus") in _ACTION_BEGUN
        or record_class in _UNPLANNED
    )
    geometry, geometry_refs = _geometry(location)
    refs = {"alert_c": _alert_c(location), "pr": _pr_refs(location), **geometry_refs}
    return EventRecord(
        external_id=record_id,
        type=_event_type(record_class, record),
        subtype=record_class,
        status=status,
        severity=_SEVERITY.get(_text(record, "severity") or _text(situation, "overallSeverity") or "", "unknown"),
        **_times(
            start,
            end,
            begun=begun and status != "planned",
            ended=status == "ended",
            updated=updated,
        ),
        road=_road(location),
        direction=_direction(location),
        lanes_affected=_lanes(record, location),
        geometry=geometry,
        descriptions=_descriptions(record, walk.lang),
        detour=next(
            (t for _, t in _multilingual(_kid(record, "reroutingItineraryDescription"), walk.lang)),
            None,
        ),
        location_refs={k: v for k, v in refs.items() if v},
        source_version=record.get("version"),
        source_updated=updated,
    )


class _Times(TypedDict, total=False):
    """The times of an EventRecord, as keyword arguments."""

    planned_start: datetime | None
    planned_end: datetime | None
    actual_start: datetime | None
    actual_end: datetime | None


def _times(
    start: datetime | None,
    end: datetime | None,
    *,
    begun: bool,
    ended: bool,
    updated: datetime | None,
) -> _Times:
    """DATEX has one validity period: its times are actual when the source says the event
    began (or ended), planned otherwise; an ended record without an end ended when updated."""
    times: _Times = {}
    if begun:
        times["actual_start"] = start
    else:
        times["planned_start"] = start
    if ended:
        times["actual_end"] = end or updated
    else:
        times["planned_end"] = end
    return times


def _event_type(record_class: str | None, record: etree._Element) -> EventType:
    """Our taxonomy from the DATEX class; a closing lane management is a closure."""
    management = _text(record, "roadOrCarriagewayOrLaneManagementType")
    if record_class == "RoadOrCarriagewayOrLaneManagement" and management in _CLOSURES:
        return "closure"
    return DATEX_RECORD_TYPES.get(record_class or "", "other")


def _status(
    validity_status: str | None,
    start: datetime | None,
    end: datetime | None,
    ended_by_source: bool,
    now: datetime,
) -> EventStatus:
    """An explicit validity status wins; otherwise the validity period is compared with now."""
    if ended_by_source:
        return "ended"
    if validity_status in ("active", "suspended"):  # suspended: still in force, paused
        return "active"
    if validity_status == "planned":
        return "planned"
    if end is not None and end <= now:
        return "ended"
    if start is not None and start > now:
        return "planned"
    return "active"


def _descriptions(record: etree._Element, default_lang: str) -> dict[str, str]:
    """All public comments (not internal notes), joined per language in document order."""
    texts: dict[str, list[str]] = {}
    for comment in _kids(record, "generalPublicComment"):
        if _text(comment, "commentType") == "internalNote":
            continue
        for lang, text in _multilingual(_kid(comment, "comment"), default_lang):
            # producers indent multi-line texts with their XML: keep the lines, not the indent
            texts.setdefault(lang, []).append("\n".join(line.strip() for line in text.splitlines()))
    return {lang: "\n".join(parts) for lang, parts in texts.items()}


def _lanes(record: etree._Element, location: etree._Element | None) -> str | None:
    """Named lanes when the location lists them, else "N of M lanes" from the impact."""
    names: list[str] = []
    for lane in _descendants(location, "lane"):
        name = _text(lane, "laneUsage") or _lane_number_name(_text(lane, "laneNumber")) or _own_text(lane)
        if name and name not in names:
            names.append(name)
    if names:
        return ", ".join(names)
    restricted = _text(record, "impact", "numberOfLanesRestricted")
    if restricted is None or int(restricted) <= 0:
        return None
    original = _text(record, "impact", "originalNumberOfLanes") or next(
        (_own_text(e) for e in _descendants(location, "originalNumberOfLanes")), None
    )
    return f"{restricted} of {original} lanes" if original else f"{restricted} lanes"


def _lane_number_name(number: str | None) -> str | None:
    return f"lane{number}" if number else None


# --------------------------------------------------------------------------- locations

_DIRECTION_RELATIVE = {"aligned": "positive", "opposite": "negative", "both": "both"}
# DATEX bound directions as compass points (the Comptage des mobilités convention).
_BOUND = {
    "northBound": "N", "northEastBound": "NE", "eastBound": "E", "southEastBound": "SE",
    "southBound": "S", "southWestBound": "SW", "westBound": "W", "northWestBound": "NW",
    "bothWays": "both", "allDirections": "both", "aligned": "positive", "opposite": "negative",
}  # fmt: skip
_FLIP = {"positive": "negative", "negative": "positive"}
# French referent "94PR0G": département, PR number, then an optional side/carriageway letter.
_FRENCH_REFERENT = re.compile(r"^(?P<departement>\d{2,3}|2[AB])PR(?P<pr>\d+)(?P<side>[A-Z]*)$")


def _road(location: etree._Element | None) -> str | None:
    number = next((_own_text(e) for e in _descendants(location, "roadNumber")), None)
    if number:
        return number
    for name in _descendants(location, "roadName"):
        # v3: plain string; v2: a multilingual value list
        text = _own_text(name) or next((t for _, t in _multilingual(name, "und")), None)
        if text:
            return text
    for name in _descendants(location, "name"):  # TPEG point named after its road ("A4")
        if _text(name, "tpegOtherPointDescriptorType") == "linkName":
            return next((t for _, t in _multilingual(_kid(name, "descriptor"), "und")), None)
    return None


def _direction(location: etree._Element | None) -> str | None:
    """Alert-C direction first, then linear referencing, then a named bound (e.g. westBound)."""
    coded = _first_text(location, "alertCDirectionCoded")
    affected = _first_text(location, "alertCAffectedDirection")
    if coded == "both" or affected == "both":
        return "both"
    if coded in _FLIP:
        return _FLIP[coded] if affected == "opposite" else coded
    relative = _first_text(location, "directionRelativeAtPoint", "directionRelativeOnLinearSection")
    if relative in _DIRECTION_RELATIVE:
        return _DIRECTION_RELATIVE[relative]
    bound = _first_text(location, "tpegDirection", "directionBoundAtPoint", "directionBoundOnLinearSection")
    return _named_direction(bound)


def _named_direction(value: str | None) -> str | None:
    """A DATEX DirectionEnum value in our terms; "unknown" says nothing."""
    if value is None or value in ("unknown", "other"):
        return None
    return _BOUND.get(value, value)


def _alert_c(location: etree._Element | None) -> list[dict[str, Any]]:
    refs = []
    for alert in _descendants(location, "alertCPoint", "alertCLinear", "alertCArea"):
        ref: dict[str, Any] = {
            "method": _xsi_local(alert),
            "country": _text(alert, "alertCLocationCountryCode"),
            "table": _text(alert, "alertCLocationTableNumber"),
            "table_version": _text(alert, "alertCLocationTableVersion"),
            "direction": _text(alert, "alertCDirection", "alertCDirectionCoded"),
            "affected_direction": _text(alert, "alertCDirection", "alertCAffectedDirection"),
        }
        for part in alert:
            name = _local(part.tag)
            role = "primary" if "Primary" in name else "secondary" if "Secondary" in name else None
            if role:
                ref[role] = _alert_c_point(part)
        refs.append({k: v for k, v in ref.items() if v is not None})
    return refs


def _alert_c_point(part: etree._Element) -> dict[str, Any]:
    point: dict[str, Any] = {"location": _number(_first_text(part, "specificLocation"))}
    offset = _text(part, "offsetDistance", "offsetDistance")
    if offset is not None:
        point["offset"] = _number(offset)
    names = list(_multilingual(_first(part, "alertCLocationName"), "und"))
    if names:
        point["name"] = names[0][1]
    return point


def _pr_refs(location: etree._Element | None) -> list[dict[str, Any]]:
    """Road + referent + distance (French PR + abscisse) from linear referencing."""
    refs = []
    for referent in _descendants(location, "fromReferent"):
        distance = referent.getparent()
        holder = distance.getparent() if distance is not None else None
        if distance is None or holder is None:
            continue
        # holder: pointAlongLinearElement, or linearWithinLinearElement (fromPoint / toPoint)
        at = {"fromPoint": "from", "toPoint": "to"}.get(_local(distance.tag), "point")
        along = _text(distance, "distanceAlong")
        ref: dict[str, Any] = {
            "at": at,
            "road": _text(holder, "linearElement", "roadNumber"),
            "referent": _text(referent, "referentIdentifier"),
            "abscissa": round(float(along)) if along is not None else None,
            "direction": _first_text(holder, "directionRelativeAtPoint", "directionRelativeOnLinearSection"),
        }
        match = _FRENCH_REFERENT.match(ref["referent"] or "")
        if match:
            ref |= {
                "departement": match["departement"],
                "pr": int(match["pr"]),
                "side": match["side"] or None,
            }
        refs.append({k: v for k, v in ref.items() if v is not None})
    return refs


def _geometry(location: etree._Element | None) -> tuple[Geometry | None, dict[str, Any]]:
    """A LineString from GML or coordinate lists, else a Point; GML we cannot convert is kept."""
    if location is None:
        return None, {}
    native = []
    for line in _descendants(location, "gmlLineString"):
        coordinates, unconverted = _gml_line(line)
        if coordinates:
            return Geometry(type="LineString", coordinates=coordinates), {}
        if unconverted:
            native.append(unconverted)
    refs = {"gml": native} if native else {}
    points = _line_points(location)
    if len(points) >= 2:
        return Geometry(type="LineString", coordinates=points), refs
    point = _point(location)
    return (Geometry(type="Point", coordinates=point) if point else None), refs


def _line_points(location: etree._Element) -> list[list[float]]:
    """v2 lines: coordinates under `linearExtension`, or a TPEG linear location's from/to."""
    for extension in _descendants(location, "linearExtension"):
        points = [_coordinates(c) for c in _descendants(extension, "pointCoordinates")]
        if len(points) >= 2:
            return points
    for tpeg in _descendants(location, "tpegLinearLocation"):
        start, end = _kid(tpeg, "from", "pointCoordinates"), _kid(tpeg, "to", "pointCoordinates")
        if start is not None and end is not None:
            return [_coordinates(start), _coordinates(end)]
    return []


def _point(location: etree._Element) -> list[float] | None:
    by_coordinates = _first(location, "pointByCoordinates")
    for candidate in (
        _kid(by_coordinates, "pointCoordinates"),
        _first(location, "pointCoordinates"),
        _first(location, "coordinatesForDisplay"),  # v3
        _first(location, "locationForDisplay"),  # v2
    ):
        if candidate is not None:
            return _coordinates(candidate)
    return None


def _coordinates(elem: etree._Element) -> list[float]:
    lat, lon = _text(elem, "latitude"), _text(elem, "longitude")
    if lat is None or lon is None:
        raise _Reject("coordinates without latitude or longitude")
    return [float(lon), float(lat)]


def _gml_line(line: etree._Element) -> tuple[list[list[float]] | None, dict[str, Any] | None]:
    """GML posList -> lon/lat positions, or (None, the native coordinates) if the CRS is unknown."""
    pos_list = _kid(line, "posList")
    text = _own_text(pos_list)
    if pos_list is None or text is None:
        return None, None
    dimension = int(pos_list.get("srsDimension") or line.get("srsDimension") or 2)
    numbers = [float(n) for n in text.split()]
    if dimension < 2 or len(numbers) % dimension:
        raise _Reject(f"posList of {len(numbers)} numbers does not fit dimension {dimension}")
    pairs = [(numbers[i], numbers[i + 1]) for i in range(0, len(numbers), dimension)]
    srs = line.get("srsName")
    to_lonlat = _lonlat_converter(srs)
    if to_lonlat is None:
        return None, {"srs": srs, "coordinates": [list(p) for p in pairs]}
    return [list(to_lonlat(a, b)) for a, b in pairs], None


# --------------------------------------------------------------------------- coordinate systems


def _lonlat_converter(srs: str | None) -> Callable[[float, float], tuple[float, float]] | None:
    """Position order and projection from srsName; None when we do not convert that CRS.

    DATEX II's own convention (and EPSG:4326) is latitude then longitude. Converted:
    UTM (EPSG:326zz/327zz WGS 84, 258zz ETRS89) and Lambert-93 (EPSG:2154); ETRS89 and
    WGS 84 agree within a metre, well under what road-event geometry needs.
    """
    name = (srs or "").strip()
    if "CRS84" in name.upper():
        return lambda lon, lat: (lon, lat)
    if not name or name.replace(" ", "").upper() in ("WGS84", "ETRS89"):
        return lambda lat, lon: (lon, lat)
    match = re.search(r"(\d+)$", name)
    code = int(match.group(1)) if match else None
    if code in (4326, 4258, 4171):
        return lambda lat, lon: (lon, lat)
    if code is not None and (32601 <= code <= 32660 or 25828 <= code <= 25838):
        zone = code % 100
        return lambda e, n: _utm_to_lonlat(e, n, zone, north=True)
    if code is not None and 32701 <= code <= 32760:
        zone = code % 100
        return lambda e, n: _utm_to_lonlat(e, n, zone, north=False)
    if code == 2154:
        return _lambert93_to_lonlat
    return None


_A = 6378137.0  # GRS80 / WGS 84 semi-major axis
_F = 1 / 298.257222101  # GRS80 flattening (WGS 84 differs by 1e-11)
_E = math.sqrt(_F * (2 - _F))


def _utm_to_lonlat(easting: float, northing: float, zone: int, *, north: bool) -> tuple[float, float]:
    """Inverse transverse Mercator (Krüger series, millimetre accuracy within a zone)."""
    n = _F / (2 - _F)
    big_a = _A / (1 + n) * (1 + n**2 / 4 + n**4 / 64)
    beta = (n / 2 - 2 * n**2 / 3 + 37 * n**3 / 96, n**2 / 48 + n**3 / 15, 17 * n**3 / 480)
    delta = (2 * n - 2 * n**2 / 3 - 2 * n**3, 7 * n**2 / 3 - 8 * n**3 / 5, 56 * n**3 / 15)
    xi = (northing - (0 if north else 10_000_000)) / (0.9996 * big_a)
    eta = (easting - 500_000) / (0.9996 * big_a)
    xi_p = xi - sum(b * math.sin(2 * j * xi) * math.cosh(2 * j * eta) for j, b in enumerate(beta, 1))
    eta_p = eta - sum(b * math.cos(2 * j * xi) * math.sinh(2 * j * eta) for j, b in enumerate(beta, 1))
    chi = math.asin(math.sin(xi_p) / math.cosh(eta_p))
    lat = chi + sum(d * math.sin(2 * j * chi) for j, d in enumerate(delta, 1))
    lon = math.radians(zone * 6 - 183) + math.atan2(math.sinh(eta_p), math.cos(xi_p))
    return round(math.degrees(lon), 7), round(math.degrees(lat), 7)


def _lambert93_to_lonlat(x: float, y: float) -> tuple[float, float]:
    """Inverse Lambert-93 (IGN ALG0004 with the published Lambert-93 constants)."""
    n, c, xs, ys = 0.7256077650, 11754255.426, 700000.0, 12655612.050
    dx, dy = x - xs, y - ys
    radius = math.hypot(dx, dy)
    lon = math.radians(3) + math.atan(-dx / dy) / n
    iso = -math.log(radius / c) / n  # isometric latitude
    lat = 2 * math.atan(math.exp(iso)) - math.pi / 2
    for _ in range(20):
        s = _E * math.sin(lat)
        lat_next = 2 * math.atan(((1 + s) / (1 - s)) ** (_E / 2) * math.exp(iso)) - math.pi / 2
        if abs(lat_next - lat) < 1e-12:
            break
        lat = lat_next
    return round(math.degrees(lon), 7), round(math.degrees(lat_next), 7)


# --------------------------------------------------------------------------- site tables

# specificMeasurementValueType values we keep as counting channels; weather etc. are counted.
_TRAFFIC_VALUE_TYPES = {"trafficFlow", "trafficSpeed", "trafficConcentration"}
_HEAVY = {
    "lorry", "heavyLorry", "heavyGoodsVehicle", "bus", "articulatedVehicle", "lorryWithTrailer",
    "tanker", "twoAxleLorry", "threeAxleLorry", "fourOrMoreAxleLorry", "heavyVehicle",
}  # fmt: skip
_LIGHT = {"car", "van", "carOrLightVehicle", "lightVehicle", "passengerCar", "carWithTrailer"}


def _site_items(site: etree._Element, walk: _Walk) -> Iterator[ParsedItem]:
    site_id = (site.get("id") or "").strip()
    yield _guarded(site, site_id, partial(_site, site, site_id, walk))
    if not site_id:
        return
    walk.table_sites.add(site_id)
    side = _text(site, "measurementSide")  # v2: per site; v3: per characteristics
    for holder in _kids(site, "measurementSpecificCharacteristics"):
        characteristics = _kid(holder, "measurementSpecificCharacteristics")
        value_type = _text(characteristics, "specificMeasurementValueType")
        if characteristics is None or value_type not in _TRAFFIC_VALUE_TYPES:
            walk.stats.skipped[f"channel:{value_type}"] += 1
            continue
        index = holder.get("index") or "0"
        ref = _channel_id(site_id, index)
        yield _guarded(holder, ref, partial(_channel, characteristics, site_id, index, side, walk))


def _site(site: etree._Element, site_id: str, walk: _Walk) -> SiteRecord:
    if not site_id:
        raise _Reject("measurement site without an id")
    location = _kid(site, "measurementSiteLocation")
    point = _point(location) if location is not None else None
    pr = next(iter(_pr_refs(location)), {})
    metadata = {
        "datex_version": site.get("version"),
        "site_table": walk.table_id,
        "number_of_lanes": _number(_text(site, "measurementSiteNumberOfLanes")),
        "alert_c": _alert_c(location),
        "referent": pr.get("referent"),
    }
    return SiteRecord(
        external_id=site_id,
        name=next((t for _, t in _multilingual(_kid(site, "measurementSiteName"), walk.lang)), None)
        or _text(site, "measurementSiteIdentification")
        or "",
        road=_road(location),
        pr=pr.get("pr"),
        abscissa=pr.get("abscissa"),
        lon=point[0] if point else None,
        lat=point[1] if point else None,
        metadata={k: v for k, v in metadata.items() if v},
    )


def _channel(characteristics: etree._Element, site_id: str, index: str, side: str | None, walk: _Walk) -> ChannelRecord:
    period = _seconds(_text(characteristics, "period"))
    walk.periods[(site_id, index)] = period
    direction = _text(characteristics, "measurementSide") or side
    return ChannelRecord(
        site_external_id=site_id,
        external_id=_channel_id(site_id, index),
        direction=_named_direction(direction),
        lane=_lane_index(characteristics),
        vehicle_class=_vehicle_class(_kid(characteristics, "specificVehicleCharacteristics")),
        time_step=period or walk.default_period,
    )


def _channel_id(site_id: str, index: str) -> str:
    return f"{site_id}:{index}"


def _lane_index(characteristics: etree._Element) -> int | None:
    lane = _kid(characteristics, "specificLane")
    if lane is None:
        return None
    text = _text(lane, "laneNumber") or _own_text(lane) or ""  # v3: Lane/laneNumber; v2: "lane2"
    match = re.fullmatch(r"(?:lane)?(\d+)", text)
    return int(match.group(1)) if match else None


def _vehicle_class(characteristics: etree._Element | None) -> VehicleClass:
    """Heavy or light from vehicle types, or from a length threshold; otherwise all vehicles."""
    types = {_own_text(e) for e in _kids(characteristics, "vehicleType")} if characteristics is not None else set()
    if types and types <= _HEAVY:
        return "heavy"
    if types and types <= _LIGHT:
        return "light"
    comparison = _text(characteristics, "lengthCharacteristic", "comparisonOperator") or ""
    if comparison.startswith("greater"):
        return "heavy"
    if comparison.startswith("less"):
        return "light"
    return "all"


# --------------------------------------------------------------------------- measured data


@dataclass(slots=True)
class _Values:
    """What one (site, index) measured in one siteMeasurements."""

    element: etree._Element  # for the excerpt if it is quarantined
    flow: float | None = None  # vehicles per hour
    speed: float | None = None  # km/h
    occupancy: float | None = None  # percent
    period: int | None = None
    time: datetime | None = None
    invalid: bool = False
    problem: Exception | None = None


def _measurement_items(block: etree._Element, walk: _Walk) -> Iterator[ParsedItem]:
    reference = time_default = None
    v2_holders: list[etree._Element] = []
    v3_holders: list[etree._Element] = []
    for child in block:  # one pass: this runs once per site and time step
        name = _local(child.tag)
        if name == "physicalQuantity":
            v3_holders.append(child)
        elif name == "measuredValue":
            v2_holders.append(child)
        elif name == "measurementSiteReference":
            if reference is None:
                reference = child
        elif name == "measurementTimeDefault" and time_default is None:
            time_default = child
    site_id = ((reference.get("id") if reference is not None else None) or "").strip()
    try:
        if not site_id:
            raise _Reject("site measurements without a measurement site reference")
        default_time, default_period, meaning = _measurement_time(time_default)
    except _RECORD_ERRORS as exc:
        yield _quarantine(block, site_id or None, exc)
        return
    holders = v2_holders + v3_holders
    derive = site_id not in walk.table_sites
    for index, value in _values_by_index(holders, walk).items():
        ref = _channel_id(site_id, index)
        if value.problem is not None:
            yield _quarantine(value.element, ref, value.problem)
            continue
        period = value.period or default_period or walk.periods.get((site_id, index)) or walk.default_period
        if derive and (site_id, index) not in walk.derived:
            yield from _derived_site_and_channel(block, site_id, index, period, walk)
        try:
            record: ParsedItem = _measurement(ref, value, value.time or default_time, period, meaning)
        except _RECORD_ERRORS as exc:
            record = _quarantine(value.element, ref, exc)
        yield record


def _values_by_index(holders: list[etree._Element], walk: _Walk) -> dict[str, _Values]:
    """Flow, speed and occupancy per index (v2 measuredValue, v3 physicalQuantity)."""
    values: dict[str, _Values] = {}
    for holder in holders:
        data = _basic_data(holder)
        kind = _xsi_local(data) if data is not None else None
        if data is None or kind not in ("TrafficFlow", "TrafficSpeed", "TrafficConcentration"):
            walk.stats.skipped[f"value:{kind}"] += 1
            continue
        index = holder.get("index") or "0"
        value = values.get(index)
        if value is None:
            value = values[index] = _Values(element=holder)
        try:
            _read_traffic_data(kind, data, value)
        except _RECORD_ERRORS as exc:
            value.problem, value.element = exc, holder
    return values


def _basic_data(holder: etree._Element) -> etree._Element | None:
    """`_kid(holder, <holder's own name>, "basicData")` (measuredValue/measuredValue/basicData
    in v2, physicalQuantity/physicalQuantity/basicData in v3), by plain child loops:
    faster than a tag-filtered search on elements this small."""
    name = _local(holder.tag)
    for inner in holder:
        if _local(inner.tag) == name:
            for data in inner:
                if _local(data.tag) == "basicData":
                    return data
    return None


# basicData type -> the element holding its value, the value's element, whether a
# dataError is read beside it.
_TRAFFIC_DATA = {
    "TrafficFlow": ("vehicleFlow", "vehicleFlowRate", True),
    "TrafficSpeed": ("averageVehicleSpeed", "speed", True),
    "TrafficConcentration": ("occupancy", "percentage", False),
}


def _read_traffic_data(kind: str, data: etree._Element, value: _Values) -> None:
    """One pass over the children of basicData (and theirs) finds what the path
    lookups would (`_kid(data, "vehicleFlow", "vehicleFlowRate")`, ...): this runs
    once per measured value, so it is the hot loop of a measured-data document."""
    holder_name, number_name, with_error = _TRAFFIC_DATA[kind]
    number = error = time = time_value = time_period = own_period = None
    for child in data:
        name = _local(child.tag)
        if name == holder_name:
            for part in child:
                part_name = _local(part.tag)
                if part_name == number_name:
                    if number is None:
                        number = part
                elif part_name == "dataError" and with_error and error is None:
                    error = part
        elif name == "measurementOrCalculationTime":  # v2: a dateTime; v3: timeValue inside
            first = time is None
            if first:
                time = child
            if first or time_period is None:
                for part in child:
                    part_name = _local(part.tag)
                    if part_name == "period":
                        if time_period is None:
                            time_period = part
                    elif part_name == "timeValue" and first and time_value is None:
                        time_value = part
        elif name == "measurementOrCalculationPeriod" and own_period is None:  # v2
            own_period = child
    if kind == "TrafficFlow":
        value.flow = _float(_own_text(number))
        value.invalid |= _own_text(error) == "true"
    elif kind == "TrafficSpeed":
        value.speed = _float(_own_text(number))
        value.invalid |= _own_text(error) == "true"
    else:
        value.occupancy = _float(_own_text(number))
    value.period = value.period or (
        _seconds(_own_text(own_period)) if own_period is not None else _period_seconds(time_period)
    )
    if time is not None:
        value.time = _datetime(_own_text(time_value) if len(time) else _own_text(time))


def _measurement_time(
    elem: etree._Element | None,
) -> tuple[datetime | None, int | None, str | None]:
    """measurementTimeDefault: a dateTime in v2; time, period and meaning in v3."""
    if elem is None:
        return None, None, None
    if len(elem) == 0:
        return _datetime(_own_text(elem)), None, None
    time = period = meaning = None
    for child in elem:
        name = _local(child.tag)
        if name == "timeValue":
            if time is None:
                time = child
        elif name == "period":
            if period is None:
                period = child
        elif name == "timeMeaning" and meaning is None:
            meaning = child
    return _datetime(_own_text(time)), _period_seconds(period), _own_text(meaning)


_OFFSETS = {"endTime": 1.0, "middleTime": 0.5}  # interval start = time - offset x period


def _measurement(
    channel_id: str,
    value: _Values,
    time: datetime | None,
    period: int,
    meaning: str | None,
) -> MeasurementRecord:
    """vehicles/hour -> vehicles in the interval: round(flow * period / 3600), half up."""
    if time is None:
        raise _Reject("measurement without a time")
    offset = _OFFSETS.get(meaning or "", 0) * period
    count = None
    if value.flow is not None:
        count = math.floor(value.flow * period / 3600 + 0.5)
    return MeasurementRecord(
        channel_external_id=channel_id,
        start=time - timedelta(seconds=offset) if offset else time,
        length=period,
        count=count,
        speed=value.speed,
        occupancy=value.occupancy,
        quality="invalid" if value.invalid else "observed",
    )


def _derived_site_and_channel(
    block: etree._Element, site_id: str, index: str, period: int, walk: _Walk
) -> Iterator[ParsedItem]:
    """Measurements always get a channel: make site and channel from the data if needed."""
    if site_id in walk.table_sites:
        return
    if (site_id, None) not in walk.derived:
        walk.derived.add((site_id, None))
        metadata = {"derived_from": _MEASURED, "site_table": walk.table_ref}
        yield _guarded(
            block, site_id, lambda: SiteRecord(external_id=site_id, metadata={k: v for k, v in metadata.items() if v})
        )
    if (site_id, index) not in walk.derived:
        walk.derived.add((site_id, index))
        ref = _channel_id(site_id, index)
        yield _guarded(
            block,
            ref,
            lambda: ChannelRecord(site_external_id=site_id, external_id=ref, time_step=period),
        )


# --------------------------------------------------------------------------- XML helpers
# DATEX II v2 puts everything in one namespace and v3 spreads it over many, with prefixes
# chosen by each producer: below the root, elements are found by local name.


@lru_cache(maxsize=1024)
def _local(tag: Any) -> str:
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


def _namespace(tag: Any) -> str:
    return tag[1:].partition("}")[0] if isinstance(tag, str) and tag.startswith("{") else ""


def _xsi_local(elem: etree._Element) -> str | None:
    """xsi:type without its prefix ("sit:Accident" -> "Accident")."""
    value = elem.get(_XSI_TYPE)
    return value.strip().rpartition(":")[2] if value else None


def _kids(elem: etree._Element | None, name: str) -> list[etree._Element]:
    return [] if elem is None else list(elem.iterchildren(_any_namespace(name)))


def _kid(elem: etree._Element | None, *path: str) -> etree._Element | None:
    """The first element at `path` below `elem`: what `elem.find("{*}a/{*}b")` returns,
    with lxml's tag matching in C instead of ElementPath's Python generators."""
    if elem is None:
        return None
    if len(path) == 1:
        return next(elem.iterchildren(_any_namespace(path[0])), None)
    if len(path) == 2:
        second = _any_namespace(path[1])
        for child in elem.iterchildren(_any_namespace(path[0])):
            for found in child.iterchildren(second):
                return found
        return None
    rest = path[1:]
    for child in elem.iterchildren(_any_namespace(path[0])):
        found = _kid(child, *rest)
        if found is not None:
            return found
    return None


@lru_cache(maxsize=1024)
def _any_namespace(name: str) -> str:
    return f"{{*}}{name}"


def _text(elem: etree._Element | None, *path: str) -> str | None:
    return _own_text(_kid(elem, *path))


def _own_text(elem: etree._Element | None) -> str | None:
    text = (elem.text or "").strip() if elem is not None else ""
    return text or None


def _descendants(elem: etree._Element | None, *names: str) -> Iterator[etree._Element]:
    if elem is None:
        return iter(())
    return elem.iterdescendants(*(f"{{*}}{name}" for name in names))


def _first(elem: etree._Element | None, name: str) -> etree._Element | None:
    return next(_descendants(elem, name), None)


def _first_text(elem: etree._Element | None, *names: str) -> str | None:
    return next((t for e in _descendants(elem, *names) if (t := _own_text(e))), None)


def _multilingual(elem: etree._Element | None, default_lang: str) -> Iterator[tuple[str, str]]:
    """(language, text) pairs of a v2/v3 MultilingualString (values/value[@lang])."""
    for value in _kids(_kid(elem, "values"), "value"):
        text = _own_text(value)
        if text:
            yield (value.get("lang") or default_lang).lower(), text


def _datetime(text: str | None) -> datetime | None:
    if text is None:
        return None
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        raise _Reject(f"time without a timezone: {text.strip()!r}")
    return value


def _float(text: str | None) -> float | None:
    if text is None:
        return None
    value = float(text)
    if not math.isfinite(value):
        raise _Reject(f"not a finite number: {text!r}")
    return value


def _seconds(text: str | None) -> int | None:
    """A DATEX `Seconds` (float) as a whole, positive number of seconds, or None."""
    value = _float(text)
    if value is None:
        return None
    if value <= 0 or value != round(value):
        raise _Reject(f"period of {text} s is not a positive whole number of seconds")
    return int(value)


def _period_seconds(elem: etree._Element | None) -> int | None:
    """v3 `period` is a Period (startOfPeriod, endOfPeriod); older writers put seconds."""
    if elem is None:
        return None
    if len(elem) == 0:
        return _seconds(_own_text(elem))
    bounds = {_local(part.tag): _datetime(_own_text(part)) for part in elem}
    start, end = bounds.get("startOfPeriod"), bounds.get("endOfPeriod")
    if start is None or end is None:
        return None
    return _seconds(str((end - start).total_seconds()))


def _number(text: str | None) -> int | str | None:
    """Codes such as Alert-C locations: an int when they are one, else the text."""
    if text is None:
        return None
    return int(text) if re.fullmatch(r"-?\d+", text) else text
