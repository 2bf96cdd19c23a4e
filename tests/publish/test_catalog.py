"""The DCAT-AP / mobilityDCAT-AP catalogue for national access points: served as
JSON-LD by the real application, parsed by rdflib (no network: the context is
inline), valid against the official mobilityDCAT-AP SHACL shapes (pyshacl,
offline), every vocabulary term one of the official controlled vocabularies, the
properties an access point requires on every dataset and distribution, and every
distribution a route this service really answers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import rdflib
from aiohttp.test_utils import TestClient, TestServer
from pyshacl import validate
from rdflib.namespace import DCAT, DCTERMS, FOAF, RDF, SKOS

from feed.config import Config, PublicationConfig
from feed.http.app import build_app
from feed.publish.dcat import CATALOG_PATH, DATASETS, MEDIA_TYPE
from feed.publish.publisher import FeedPublisher
from feed.store.storage import Storage

CONFIG = Config(publication=PublicationConfig(publisher="Département de test", languages=["fr", "en"]))
MOBILITY = rdflib.Namespace("https://w3id.org/mobilitydcat-ap#")
EU = "http://publications.europa.eu/resource/authority/"
DCAT_DATA = Path(__file__).resolve().parents[1] / "data" / "dcat"
SHAPES = rdflib.Graph()
for name in ("mobilitydcat-ap-shacl.ttl", "mobilitydcat-ap-shacl-ranges.ttl"):
    SHAPES.parse(DCAT_DATA / name)
VOCABULARY_FILES = {
    MOBILITY.mobilityTheme: "mobility-theme",
    MOBILITY.mobilityDataStandard: "mobility-data-standard",
    MOBILITY.applicationLayerProtocol: "application-layer-protocol",
    DCTERMS.type: "conditions-for-access-and-usage",
}
VOCABULARY = rdflib.Graph()
for name in VOCABULARY_FILES.values():
    VOCABULARY.parse(DCAT_DATA / f"{name}.ttl")


class NoFeeds(FeedPublisher):
    """Every route registered, no feed rendering: the catalogue needs none."""

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


@pytest.fixture
async def client(storage: Storage) -> AsyncIterator[TestClient]:
    async with TestClient(
        TestServer(build_app(CONFIG, storage, publisher=NoFeeds(storage, CONFIG)), host="127.0.0.1")
    ) as c:
        yield c


def served_paths(app) -> set[str]:
    return {r.get_info().get("path") for r in app.router.resources()} - {None}


async def test_the_catalogue_is_dcat_json_ld_with_every_required_property(client: TestClient):
    response = await client.get(CATALOG_PATH)
    assert response.status == 200 and response.content_type == MEDIA_TYPE
    body = await response.read()
    graph = rdflib.Graph().parse(data=body, format="json-ld", base=str(client.make_url("/")))
    catalogs = list(graph.subjects(RDF.type, DCAT.Catalog))
    assert len(catalogs) == 1
    catalog = catalogs[0]
    assert str(catalog) == str(client.make_url(CATALOG_PATH))
    datasets = list(graph.objects(catalog, DCAT.dataset))
    assert len(datasets) == len(DATASETS)
    for prop in (DCTERMS.title, DCTERMS.description, DCTERMS.publisher, DCTERMS.license):
        assert graph.value(catalog, prop) is not None, prop
    paths = served_paths(client.app)
    for dataset in datasets:
        assert (dataset, RDF.type, DCAT.Dataset) in graph
        for prop in (
            DCTERMS.title,
            DCTERMS.description,
            DCTERMS.publisher,
            DCTERMS.license,
            DCTERMS.accrualPeriodicity,
            DCTERMS.spatial,
            MOBILITY.mobilityTheme,
        ):
            assert graph.value(dataset, prop) is not None, (dataset, prop)
        publisher = graph.value(dataset, DCTERMS.publisher)
        assert str(graph.value(publisher, FOAF.name)) == "Département de test"
        assert str(graph.value(dataset, DCTERMS.license)) == CONFIG.publication.licence_url
        assert str(graph.value(dataset, DCTERMS.accrualPeriodicity)).startswith(f"{EU}frequency/")
        bbox = graph.value(graph.value(dataset, DCTERMS.spatial), DCAT.bbox)
        assert str(bbox).startswith("POLYGON((2.53 43.2,")
        assert {str(x) for x in graph.objects(dataset, DCTERMS.language)} == {f"{EU}language/FRA", f"{EU}language/ENG"}
        distributions = list(graph.objects(dataset, DCAT.distribution))
        assert distributions
        for d in distributions:
            for prop in (
                DCAT.accessURL,
                DCAT.mediaType,
                DCTERMS.format,
                DCTERMS.conformsTo,
                MOBILITY.mobilityDataStandard,
            ):
                assert graph.value(d, prop) is not None, (d, prop)
            assert graph.value(graph.value(d, DCTERMS.conformsTo), DCTERMS.title) is not None
            url = str(graph.value(d, DCAT.accessURL))
            assert url.startswith(str(client.make_url("/")).rstrip("/"))
            assert client.make_url("/").path + url.split("/", 3)[3] in paths, url
    # Every DATEX II feed is listed, with its version.
    standards = {str(o) for o in graph.objects(None, DCTERMS.title)}
    assert {"DATEX II 3.6", "DATEX II 2.3", "WZDx 4.2"} <= standards


async def catalog_graph(client: TestClient) -> rdflib.Graph:
    body = await (await client.get(CATALOG_PATH)).read()
    return rdflib.Graph().parse(data=body, format="json-ld")


async def test_the_catalogue_conforms_to_the_mobilitydcat_ap_shapes_and_vocabularies(client: TestClient):
    """The official shapes, with the official vocabularies the terms come from (so that
    their concepts are known as such): no violation; and every term is one of theirs."""
    graph = await catalog_graph(client)
    conforms, _, report = validate(graph + VOCABULARY, shacl_graph=SHAPES, inference="none")
    assert conforms, report
    concepts = set(VOCABULARY.subjects(RDF.type, SKOS.Concept))
    for prop in VOCABULARY_FILES:
        used = set(graph.objects(None, prop))
        assert used and used <= concepts, (prop, used - concepts)
    for record in graph.subjects(RDF.type, DCAT.CatalogRecord):
        assert graph.value(record, FOAF.primaryTopic) in set(graph.subjects(RDF.type, DCAT.Dataset))
        assert graph.value(record, DCTERMS.created).toPython().year >= 2024  # the test database's creation
    # The check can fail: a distribution without its mobility data standard does not conform.
    first = next(graph.subjects(RDF.type, DCAT.Distribution))
    graph.remove((first, MOBILITY.mobilityDataStandard, None))
    assert not validate(graph + VOCABULARY, shacl_graph=SHAPES, inference="none")[0]


async def test_the_catalogue_is_documented_in_the_openapi_document(client: TestClient):
    document = json.loads(await (await client.get("/api/v1/openapi.json")).read())
    assert MEDIA_TYPE in document["paths"][CATALOG_PATH]["get"]["responses"]["200"]["content"]


async def test_the_catalogue_urls_start_with_the_configured_public_url(storage: Storage):
    config = Config(publication=PublicationConfig(public_url="https://trafic.example.fr/"))
    async with TestClient(
        TestServer(build_app(config, storage, publisher=NoFeeds(storage, config)), host="127.0.0.1")
    ) as c:
        graph = rdflib.Graph().parse(data=await (await c.get(CATALOG_PATH)).read(), format="json-ld")
    urls = {str(o) for o in graph.objects(None, DCAT.accessURL)}
    assert urls and all(
        u.startswith("https://trafic.example.fr/feeds/") or u.startswith("https://trafic.example.fr/api/v1/")
        for u in urls
    ), urls
    assert str(next(graph.subjects(RDF.type, DCAT.Catalog))) == "https://trafic.example.fr" + CATALOG_PATH
