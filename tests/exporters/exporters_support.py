"""Shared by the exporter tests: where the official schemas are, checking a document
against one, XPath look-ups, the stored events the GeoJSON, WZDx and Waze tests
start from, and the hypothesis strategies of any stored event's values.

The schemas themselves are loaded once per session by tests/exporters/conftest.py.
"""

from __future__ import annotations

import typing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import strategies as st
from jsonschema import Draft7Validator
from lxml import etree

from feed.model import EventType, Geometry, StoredEvent

SCHEMAS = Path(__file__).resolve().parent.parent / "data" / "schemas"
DATEX2_V2_XSD = SCHEMAS / "datex2" / "v2.3" / "DATEXIISchema_2_2_3.xsd"
DATEX2_V36_XSD = SCHEMAS / "datex2" / "v3.6" / "DATEXII_3_MessageContainer.xsd"  # a message container
DATEX2_V36_PAYLOAD_XSD = SCHEMAS / "datex2" / "v3.6" / "DATEXII_3_D2Payload.xsd"  # a bare d2:payload
RTTI_XSD = SCHEMAS / "datex2" / "v3.5-rtti-trafficdata-profile" / "xml" / "DATEXII_3_D2Payload.xsd"
CIFS_XSD = SCHEMAS / "waze" / "cifsv2.xsd"
WZDX = SCHEMAS / "wzdx"

# ---------------------------------------------------------------- documents

DATEX_DECLARATION = b"<?xml version='1.0' encoding='UTF-8'?>"  # what both DATEX II exporters write


def valid_xml(schema: etree.XMLSchema, data: bytes) -> etree._Element:
    """The parsed document; the test fails with the schema's errors if it is not valid."""
    doc = etree.fromstring(data)
    if not schema.validate(doc):
        pytest.fail("\n".join(f"line {e.line}: {e.message}" for e in list(schema.error_log)[:10]))
    return doc


def valid_datex(schema: etree.XMLSchema, data: bytes) -> etree._Element:
    """`valid_xml`, for a DATEX II document, which also starts with its XML declaration."""
    assert data.startswith(DATEX_DECLARATION)
    return valid_xml(schema, data)


def one(doc: etree._Element, path: str, namespaces: dict[str, str]) -> etree._Element:
    """The single element at `path`; the test fails if there are none or several."""
    found = doc.xpath(path, namespaces=namespaces)
    assert len(found) == 1, f"{path}: {len(found)} matches"
    return found[0]


def text(doc: etree._Element, path: str, namespaces: dict[str, str]) -> str:
    """The text of the single element at `path`."""
    return one(doc, path, namespaces).text


def schema_errors(validator: Draft7Validator, document: dict[str, typing.Any]) -> list[str]:
    """Every error of a JSON document, as "path: message"."""
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


# ---------------------------------------------------------------- the Hérault events of the non-DATEX formats

CEST = timezone(timedelta(hours=2))
T0 = datetime(2026, 7, 14, 10, 0, tzinfo=CEST)  # publication time, 08:00Z
LINE = Geometry(type="LineString", coordinates=[[3.8765432198, 43.6111111149], [3.8801, 43.6123], [3.8850, 43.6140]])
POINT = Geometry(type="Point", coordinates=[3.4401234567, 43.4567890123])


def cd34_event(ext: str, type_: EventType = "roadworks", **kw: typing.Any) -> StoredEvent:
    """Works on the RD613, seen three hours before T0, running for two days; keyword arguments override."""
    fields: dict[str, typing.Any] = {
        "id": f"cd34:{ext}",
        "source_id": "cd34",
        "external_id": ext,
        "type": type_,
        "version": 1,
        "first_seen": T0 - timedelta(hours=3),
        "last_seen": T0 - timedelta(minutes=1),
        "updated": T0 - timedelta(hours=1),
        "road": "RD613",
        "planned_start": T0 - timedelta(hours=2),
        "planned_end": T0 + timedelta(days=2),
        "geometry": LINE,
        "descriptions": {"fr": "Travaux", "en": "Roadworks"},
    }
    fields.update(kw)
    return StoredEvent(**fields)


# ---------------------------------------------------------------- any stored values (hypothesis)

id_chars = st.characters(blacklist_categories=("Cc", "Cs"))  # ids carry no control characters
# What a stored record can hold: anything but NUL and lone surrogates (feed/model.py refuses them).
storable_chars = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
times = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC))
positions = st.tuples(st.floats(-180, 180), st.floats(-90, 90)).map(list)
