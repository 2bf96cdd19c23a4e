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
from datetime import datetime
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
    "owl": "http://www.w3.org/2002/07/owl#",
}


MOBILITY = "https://w3id.org/mobilitydcat-ap/"


@dataclass(frozen=True, slots=True)
class Standard:
    name: str
    version: str
    url: str  # the standard's documentation
    mobility: str  # its code in the mobilityDCAT-AP mobility-data-standard vocabulary ("other" if none)


@dataclass(frozen=True, slots=True)
class Distribution:
    path: str
    title: str
    media_type: str  # IANA media type
    format: str  # EU file-type authority code
    standard: Standard


@dataclass(frozen=True, slots=True)
class Dataset:
    key: str
    title: str
    description: str
    frequency: str  # EU frequency authority code
    themes: tuple[str, ...]  # mobilityDCAT-AP mobility-theme codes
    distributions: tuple[Distribution, ...]


DATEX_V3 = Standard("DATEX II", "3.6", "https://docs.datex2.eu/", "datex-II")
DATEX_V2 = Standard("DATEX II", "2.3", "https://docs.datex2.eu/", "datex-II")
GEOJSON = Standard("GeoJSON (RFC 7946)", "1.0", "https://www.rfc-editor.org/rfc/rfc7946", "other")
WZDX = Standard("WZDx", "4.2", "https://github.com/usdot-jpo-ode/wzdx", "other")
WAZE = Standard("Waze CIFS", "2.0", "https://developers.google.com/waze/data-feed/cifs-specification", "other")
OPENAPI = Standard("OpenAPI", "3.1", "https://spec.openapis.org/oas/v3.1.0", "other")

DATASETS: tuple[Dataset, ...] = (
    Dataset(
        "events",
        "Road events: works, accidents, closures, conditions",
        "Current and recently ended road events on the network, with stable ids and versions.",
        "CONT",
        (
            "road-events-and-conditions",
            "road-work-information",
            "accidents-and-incidents",
            "road-closures-and-access-conditions",
        ),
        (
            Distribution(
                "/feeds/datex2/v3/situations.xml", "DATEX II v3 situations", "application/xml", "XML", DATEX_V3
            ),
            Distribution(
                "/feeds/datex2/v2/situations.xml", "DATEX II v2.3 situations", "application/xml", "XML", DATEX_V2
            ),
            Distribution("/feeds/events.geojson", "GeoJSON events", "application/geo+json", "GEOJSON", GEOJSON),
            Distribution(
                "/feeds/wzdx/v4.2/work-zones.geojson", "WZDx work zones", "application/geo+json", "GEOJSON", WZDX
            ),
            Distribution("/feeds/waze/cifs.xml", "Waze CIFS (XML)", "application/xml", "XML", WAZE),
            Distribution("/feeds/waze/cifs.json", "Waze CIFS (JSON)", "application/json", "JSON", WAZE),
        ),
    ),
    Dataset(
        "traffic",
        "Traffic counts: counting sites and latest measurements",
        "Permanent counting sites and each channel's latest flow and speed.",
        "CONT",
        ("real-time-traffic-data", "traffic-volume", "traffic-speed"),
        (
            Distribution(
                "/feeds/datex2/v3/measured-data.xml", "DATEX II v3 measured data", "application/xml", "XML", DATEX_V3
            ),
            Distribution(
                "/feeds/datex2/v3/measurement-sites.xml",
                "DATEX II v3 measurement site table",
                "application/xml",
                "XML",
                DATEX_V3,
            ),
            Distribution("/feeds/sites.geojson", "GeoJSON counting sites", "application/geo+json", "GEOJSON", GEOJSON),
        ),
    ),
    Dataset(
        "history",
        "Traffic count history and yearly files",
        "Hourly, daily, monthly and annual counts with coverage on every value, and yearly bulk files "
        "(CSV, Parquet/GeoParquet) with a data dictionary.",
        "DAILY",
        ("historic-travel-and-traffic-data-and-delays", "traffic-volume"),
        (
            Distribution("/api/v1/openapi.json", "History API (OpenAPI)", "application/json", "JSON", OPENAPI),
            Distribution("/api/v1/downloads", "Yearly files (index)", "application/json", "JSON", OPENAPI),
        ),
    ),
)


def _bbox_wkt(bbox: tuple[float, float, float, float]) -> str:
    x0, y0, x1, y1 = bbox
    return f"POLYGON(({x0} {y0},{x1} {y0},{x1} {y1},{x0} {y1},{x0} {y0}))"


def _en(text: str) -> dict[str, str]:
    return {"@value": text, "@language": "en"}


def _distribution(base: str, x: Distribution, licence: dict[str, Any]) -> dict[str, Any]:
    return {
        "@id": f"{base}{x.path}",
        "@type": "dcat:Distribution",
        "dct:title": _en(x.title),
        "dcat:accessURL": {"@id": f"{base}{x.path}"},
        "dcat:mediaType": {
            "@id": f"https://www.iana.org/assignments/media-types/{x.media_type}",
            "@type": "dct:MediaType",
        },
        "dct:format": {"@id": f"{EU}file-type/{x.format}", "@type": "dct:MediaTypeOrExtent"},
        "dct:license": licence,
        # Under the licence, free of charge (mobilityDCAT-AP conditions for access and usage).
        "dct:rights": {
            "@type": "dct:RightsStatement",
            "dct:type": {"@id": f"{MOBILITY}conditions-for-access-and-usage/licence-provided-free-of-charge"},
        },
        "mobilitydcatap:mobilityDataStandard": {"@id": f"{MOBILITY}mobility-data-standard/{x.standard.mobility}"},
        # The standard and its version: one node per distribution, so versions never mix.
        "dct:conformsTo": {
            "@type": "dct:Standard",
            "dct:title": _en(f"{x.standard.name} {x.standard.version}"),
            "owl:versionInfo": x.standard.version,
            "foaf:page": {"@id": x.standard.url},
        },
        "mobilitydcatap:applicationLayerProtocol": {"@id": f"{MOBILITY}application-layer-protocol/http-https"},
    }


def catalog_document(publication: PublicationConfig, base_url: str, created: datetime) -> dict[str, Any]:
    """The catalogue; `base_url` is the public origin (scheme and host) of this service,
    `created` when its datasets were first described (the database's creation)."""
    base = base_url.rstrip("/")
    publisher = {"@id": f"{base}/#publisher", "@type": "foaf:Agent", "foaf:name": publication.publisher}
    licence = {"@id": publication.licence_url, "@type": "dct:LicenseDocument", "dct:title": publication.licence}
    spatial = {"@type": "dct:Location", "dcat:bbox": {"@value": _bbox_wkt(publication.bbox), "@type": "gsp:wktLiteral"}}
    languages = [
        {"@id": f"{EU}language/{_iso639_2(lang)}", "@type": "dct:LinguisticSystem"} for lang in publication.languages
    ]
    datasets = [
        {
            "@id": f"{base}{CATALOG_PATH}#{d.key}",
            "@type": "dcat:Dataset",
            "dct:title": _en(d.title),
            "dct:description": _en(d.description),
            "dct:publisher": publisher,
            "dct:license": licence,
            "dct:accrualPeriodicity": {"@id": f"{EU}frequency/{d.frequency}", "@type": "dct:Frequency"},
            "dct:spatial": spatial,
            "dct:language": languages,
            "dct:conformsTo": {
                "@id": "http://www.opengis.net/def/crs/EPSG/0/4326",  # WGS 84 coordinates
                "@type": "dct:Standard",
            },
            "mobilitydcatap:mobilityTheme": [{"@id": f"{MOBILITY}mobility-theme/{t}"} for t in d.themes],
            "dcat:distribution": [_distribution(base, x, licence) for x in d.distributions],
        }
        for d in DATASETS
    ]
    records = [
        {
            "@id": f"{base}{CATALOG_PATH}#record-{d.key}",
            "@type": "dcat:CatalogRecord",
            "foaf:primaryTopic": {"@id": f"{base}{CATALOG_PATH}#{d.key}"},
            "dct:created": {"@value": created.isoformat(), "@type": "xsd:dateTime"},
            "dct:language": languages,
            "dct:publisher": publisher,
        }
        for d in DATASETS
    ]
    return {
        "@context": CONTEXT,
        "@id": f"{base}{CATALOG_PATH}",
        "@type": "dcat:Catalog",
        "dct:title": _en(f"{publication.publisher}: road traffic and road events"),
        "dct:description": _en(
            "Live road-event and traffic feeds (DATEX II, GeoJSON, WZDx, Waze CIFS) and the "
            "traffic count history of the road authority."
        ),
        "dct:publisher": publisher,
        "foaf:homepage": {"@id": f"{base}/"},
        "dct:license": licence,
        "dct:spatial": spatial,
        "dct:language": languages,
        "dcat:dataset": datasets,
        "dcat:record": records,
    }


_ISO639_2 = {
    "fr": "FRA",
    "en": "ENG",
    "de": "DEU",
    "es": "SPA",
    "it": "ITA",
    "nl": "NLD",
    "ca": "CAT",
    "oc": "OCI",
    "pt": "POR",
}


def _iso639_2(code: str) -> str:
    """The EU language authority's code (ISO 639-2/B, upper case) of an ISO 639-1 code."""
    return _ISO639_2.get(code.lower(), code.upper())
