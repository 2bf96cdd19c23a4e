"""Shared by the agents' tests (tests/feed and tests/web): the official schemas, the
simulated roads' referential, and waiting for a live feed to list something."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft7Validator
from lxml import etree
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource

from feed.config import Config, PublicationConfig, ServerConfig
from feed.http.app import build_app
from feed.http.context import CONTEXT
from feed.roads import Road, parse_referential
from feed.simulator.geography import referential_geojson
from feed.store import roads
from feed.store.storage import Storage

SCHEMAS = Path(__file__).resolve().parent / "data" / "schemas"
DATEX_V3 = etree.XMLSchema(etree.parse(str(SCHEMAS / "datex2" / "v3.6" / "DATEXII_3_MessageContainer.xsd")))
DATEX_V2 = etree.XMLSchema(etree.parse(str(SCHEMAS / "datex2" / "v2.3" / "DATEXIISchema_2_2_3.xsd")))
CIFS = etree.XMLSchema(etree.parse(str(SCHEMAS / "waze" / "cifsv2.xsd")))
FEED_WAIT = 10.0  # seconds: a bound for a loaded machine, not a speed check


def _offline(uri: str) -> Resource:
    raise NoSuchResource(ref=uri)


def _wzdx_validator() -> Draft7Validator:
    resources = []
    for path in sorted((SCHEMAS / "wzdx" / "4.2").glob("*.json")) + sorted(
        (SCHEMAS / "wzdx" / "geojson").glob("*.json")
    ):
        schema = json.loads(path.read_text(encoding="utf-8"))
        resources.append((schema["$id"], Resource.from_contents(schema)))
    root = json.loads((SCHEMAS / "wzdx" / "4.2" / "WorkZoneFeed.json").read_text(encoding="utf-8"))
    return Draft7Validator(
        root,
        registry=Registry(retrieve=_offline).with_resources(resources),
        format_checker=Draft7Validator.FORMAT_CHECKER,
    )


WZDX = _wzdx_validator()


def xml_valid(schema: etree.XMLSchema, data: bytes) -> etree._Element:
    doc = etree.fromstring(data)
    assert schema.validate(doc), "\n".join(f"line {e.line}: {e.message}" for e in schema.error_log)
    return doc


async def load_simulated_roads(storage: Storage) -> list[Road]:
    referential = parse_referential(referential_geojson(), "simulator")
    async with storage.pool.acquire() as conn:
        await roads.store_referential(conn, referential)
    return referential


async def until_in_feed(client: TestClient, path: str, needle: str) -> bytes:
    deadline = time.monotonic() + FEED_WAIT
    while True:
        async with client.get(path) as resp:
            body = await resp.read()
        if needle.encode() in body:
            return body
        assert time.monotonic() < deadline, f"{needle} not in {path} after {FEED_WAIT} s"
        await asyncio.sleep(0.05)


ADMIN = "ops-token"


@asynccontextmanager
async def agents_app(storage: Storage) -> AsyncIterator[TestClient]:
    """The whole application over the simulated roads' referential, with an admin token,
    no rate limit and an area wide enough for any generated place; ready to serve."""
    await load_simulated_roads(storage)
    config = Config(
        server=ServerConfig(admin_token=ADMIN, rate_limit_per_minute=0),
        publication=PublicationConfig(bbox=(-5.0, 41.0, 10.0, 51.5)),
    )
    app = build_app(config, storage)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        assert await app[CONTEXT].publisher.wait_ready(30)
        yield client
    finally:
        await client.close()
