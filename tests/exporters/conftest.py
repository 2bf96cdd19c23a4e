"""The official schemas the exporter tests validate against, each loaded once per
session and offline (the paths are in exporters_support.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from exporters_support import CIFS_XSD, DATEX2_V2_XSD, DATEX2_V36_PAYLOAD_XSD, DATEX2_V36_XSD, RTTI_XSD, WZDX
from jsonschema import Draft7Validator
from lxml import etree
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource


def _xsd(path: Path) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(path)))


@pytest.fixture(scope="session")
def datex2_v2_xsd() -> etree.XMLSchema:
    return _xsd(DATEX2_V2_XSD)


@pytest.fixture(scope="session")
def datex2_v36_xsd() -> etree.XMLSchema:
    return _xsd(DATEX2_V36_XSD)


@pytest.fixture(scope="session")
def datex2_v36_payload_xsd() -> etree.XMLSchema:
    return _xsd(DATEX2_V36_PAYLOAD_XSD)


@pytest.fixture(scope="session")
def rtti_xsd() -> etree.XMLSchema:
    return _xsd(RTTI_XSD)


@pytest.fixture(scope="session")
def cifs_xsd() -> etree.XMLSchema:
    return _xsd(CIFS_XSD)


def _offline(uri: str) -> Resource:
    raise NoSuchResource(ref=uri)  # never the network


@pytest.fixture(scope="session")
def wzdx_validator() -> Draft7Validator:
    """The WZDx 4.2 WorkZoneFeed schema, its references resolved from the local copies, formats checked."""
    resources = []
    for path in sorted((WZDX / "4.2").glob("*.json")) + sorted((WZDX / "geojson").glob("*.json")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        resources.append((schema["$id"], Resource.from_contents(schema)))
    registry = Registry(retrieve=_offline).with_resources(resources)
    root = json.loads((WZDX / "4.2" / "WorkZoneFeed.json").read_text(encoding="utf-8"))
    return Draft7Validator(root, registry=registry, format_checker=Draft7Validator.FORMAT_CHECKER)
