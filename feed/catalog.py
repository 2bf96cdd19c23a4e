"""The DCAT-AP / mobilityDCAT-AP catalogue of our datasets and feeds, as JSON-LD.

National access points (transport.data.gouv.fr in France, under the EU RTTI and
SRTI regulations) harvest such a catalogue: what each dataset is, who publishes
it, under which licence, how often it changes, where it lies, and every
distribution with its format and the schema version it conforms to.

Pure: the configuration and the public base URL in, a JSON-LD document out. The
`@context` is inline, so a reader needs no network to expand it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from feed.config import PublicationConfig

CATALOG_PATH = "/api/v1/catalog.jsonld"
MEDIA_TYPE = "application/ld+json"

EU = "http://publications.europa.eu/resource/authority/"
CONTEXT: dict[str, Any] = {
    "dcat": "http://www.w3.org/ns/dcat#",
    "dct": "http://purl.org/dc/terms/",
    "foaf": "http://xmlns.com/foaf/0.1/",
    "locn": "http://www.w3.org/ns/locn#",
    "mobilitydcatap": "https://w3id.org/mobilitydcat-ap#",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
    "gsp": "http://www.opengis.net/ont/geosparql#",
}


@dataclass(frozen=True, slots=True)
class Distribution:
    path: str
    title: str
    media_type: str  # IANA media type
    format: str  # EU file-type authority code
    conforms_to: str  # the standard and its version
    conforms_url: str


@dataclass(frozen=True, slots=True)
class Dataset:
    key: str
    title: str
    description: str
    frequency: str  # EU frequency authority code
    category: str  # mobilityDCAT-AP mobility data category
    distributions: tuple[Distribution, ...]


DATEX_V3 = ("DATEX II 3.6", "https://docs.datex2.eu/")
DATEX_V2 = ("DATEX II 2.3", "https://docs.datex2.eu/")
GEOJSON = ("GeoJSON (RFC 7946)", "https://www.rfc-editor.org/rfc/rfc7946")
WZDX = ("WZDx 4.2", "https://github.com/usdot-jpo-ode/wzdx")
WAZE = ("Waze CIFS", "https://developers.google.com/waze/data-feed/cifs-specification")
OPENAPI = ("OpenAPI 3.1", "https://spec.openapis.org/oas/v3.1.0")

DATASETS: tuple[Dataset, ...] = (
    Dataset("events", "Road events: works, accidents, closures, conditions",
            "Current and recently ended road events on the network, with stable ids and versions.",
            "CONT", "https://w3id.org/mobilitydcat-ap/mobility-theme/road-work-information", (
                Distribution("/feeds/datex2/v3/situations.xml", "DATEX II v3 situations", "application/xml",
                             "XML", *DATEX_V3),
                Distribution("/feeds/datex2/v2/situations.xml", "DATEX II v2.3 situations", "application/xml",
                             "XML", *DATEX_V2),
                Distribution("/feeds/events.geojson", "GeoJSON events", "application/geo+json", "GEOJSON",
                             *GEOJSON),
                Distribution("/feeds/wzdx/v4.2/work-zones.geojson", "WZDx work zones", "application/geo+json",
                             "GEOJSON", *WZDX),
                Distribution("/feeds/waze/cifs.xml", "Waze CIFS (XML)", "application/xml", "XML", *WAZE),
                Distribution("/feeds/waze/cifs.json", "Waze CIFS (JSON)", "application/json", "JSON", *WAZE),
            )),
    Dataset("traffic", "Traffic counts: counting sites and latest measurements",
            "Permanent counting sites and each channel's latest flow and speed.",
            "CONT", "https://w3id.org/mobilitydcat-ap/mobility-theme/traffic-data", (
                Distribution("/feeds/datex2/v3/measured-data.xml", "DATEX II v3 measured data", "application/xml",
                             "XML", *DATEX_V3),
                Distribution("/feeds/datex2/v3/measurement-sites.xml", "DATEX II v3 measurement site table",
                             "application/xml", "XML", *DATEX_V3),
                Distribution("/feeds/sites.geojson", "GeoJSON counting sites", "application/geo+json", "GEOJSON",
                             *GEOJSON),
            )),
    Dataset("history", "Traffic count history and yearly files",
            "Hourly, daily, monthly and annual counts with coverage on every value, and yearly bulk files "
            "(CSV, Parquet/GeoParquet) with a data dictionary.",
            "DAILY", "https://w3id.org/mobilitydcat-ap/mobility-theme/traffic-data", (
                Distribution("/api/v1/openapi.json", "History API (OpenAPI)", "application/json", "JSON",
                             *OPENAPI),
                Distribution("/api/v1/downloads", "Yearly files (index)", "application/json", "JSON", *OPENAPI),
            )),
)


def _bbox_wkt(bbox: tuple[float, float, float, float]) -> str:
    x0, y0, x1, y1 = bbox
    return f"POLYGON(({x0} {y0},{x1} {y0},{x1} {y1},{x0} {y1},{x0} {y0}))"


def catalog_document(publication: PublicationConfig, base_url: str) -> dict[str, Any]:
    """The catalogue; `base_url` is the public origin (scheme and host) of this service."""
    base = base_url.rstrip("/")
    publisher = {"@id": f"{base}/#publisher", "@type": "foaf:Agent", "foaf:name": publication.publisher}
    licence = {"@id": publication.licence_url, "@type": "dct:LicenseDocument",
               "dct:title": publication.licence}
    spatial = {"@type": "dct:Location",
               "dcat:bbox": {"@value": _bbox_wkt(publication.bbox), "@type": "gsp:wktLiteral"}}
    languages = [{"@id": f"{EU}language/{_iso639_2(lang)}"} for lang in publication.languages]
    datasets = []
    for d in DATASETS:
        datasets.append({
            "@id": f"{base}{CATALOG_PATH}#{d.key}",
            "@type": "dcat:Dataset",
            "dct:title": d.title,
            "dct:description": d.description,
            "dct:publisher": publisher,
            "dct:license": licence,
            "dct:accrualPeriodicity": {"@id": f"{EU}frequency/{d.frequency}"},
            "dct:spatial": spatial,
            "dct:language": languages,
            "mobilitydcatap:mobilityTheme": {"@id": d.category},
            "dcat:distribution": [{
                "@id": f"{base}{x.path}",
                "@type": "dcat:Distribution",
                "dct:title": x.title,
                "dcat:accessURL": {"@id": f"{base}{x.path}"},
                "dcat:mediaType": {"@id": f"https://www.iana.org/assignments/media-types/{x.media_type}"},
                "dct:format": {"@id": f"{EU}file-type/{x.format}"},
                "dct:conformsTo": {"@id": x.conforms_url, "dct:title": x.conforms_to},
                "dct:license": licence,
                "mobilitydcatap:mobilityDataStandard": {"@id": x.conforms_url, "dct:title": x.conforms_to},
            } for x in d.distributions],
        })
    return {
        "@context": CONTEXT,
        "@id": f"{base}{CATALOG_PATH}",
        "@type": "dcat:Catalog",
        "dct:title": f"{publication.publisher}: road traffic and road events",
        "dct:description": "Live road-event and traffic feeds (DATEX II, GeoJSON, WZDx, Waze CIFS) and the "
                           "traffic count history of the road authority.",
        "dct:publisher": publisher,
        "dct:license": licence,
        "dct:spatial": spatial,
        "dct:language": languages,
        "dcat:dataset": datasets,
    }


_ISO639_2 = {"fr": "FRA", "en": "ENG", "de": "DEU", "es": "SPA", "it": "ITA", "nl": "NLD", "ca": "CAT",
             "oc": "OCI", "pt": "POR"}


def _iso639_2(code: str) -> str:
    """The EU language authority's code (ISO 639-2/B, upper case) of an ISO 639-1 code."""
    return _ISO639_2.get(code.lower(), code.upper())
