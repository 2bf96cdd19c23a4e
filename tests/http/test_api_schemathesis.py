"""schemathesis (every check, positive data acceptance included) against the real
API on 127.0.0.1: every constraint the server enforces on a parameter is in the
OpenAPI document, and every answer matches it. Bounded: few examples per
operation, a fixed seed, deterministic generation (no example database).

OpenAPI cannot state a rule between parameters (from before to, at most so many
periods per step, lon_min <= lon_max), nor which cursors this API issued: the
configuration gives those parameters values that satisfy them, as schemathesis
asks for such dependencies; the descriptions state the rules for people."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from feed.config import Config
from feed.http import api, params
from feed.http.agents import agent_routes
from feed.http.app import build_app
from feed.http.authoring import authoring_routes
from feed.http.campaigns import campaign_routes
from feed.http.conditions import condition_routes
from feed.http.openapi import openapi_document, openapi_routes
from feed.model import ChannelRecord, SiteRecord
from feed.publish.publisher import FeedPublisher
from feed.store.storage import Storage

CONFIG = Config()
SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent))


CROSS_PARAMETER_VALUES = """
[[operations]]
include-operation-id = "listSites"
[operations.parameters]
"query.bbox" = "3,43,4,44"
"query.cursor" = "{sites_cursor}"

[[operations]]
include-operation-id = "listEvents"
[operations.parameters]
"query.bbox" = "3,43,4,44"
"query.from" = "2025-07-01"
"query.to" = "2025-08-01"
"query.cursor" = "{events_cursor}"

[[operations]]
include-operation-id = "getSiteCounts"
[operations.parameters]
"path.id" = {site_id}
"query.from" = "2025-07-01"
"query.to" = "2025-08-01"

[[operations]]
include-operation-id = "roadLocate"
[operations.parameters]
"query.lon" = 3.69
"query.lat" = 43.51
"""


class NoFeeds(FeedPublisher):
    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


async def test_schemathesis_with_every_check_finds_nothing(storage: Storage, tmp_path: Path):
    assert SCHEMATHESIS, "schemathesis is a test dependency"
    await storage.ensure_source("cnt", "comptage-mobilites", "http://127.0.0.1:9/cnt")
    await storage.upsert_sites(
        "cnt", [SiteRecord(external_id="S1", name="Montbazin", road="RD613", lon=3.69, lat=43.51)]
    )
    await storage.upsert_channels(
        "cnt", [ChannelRecord(site_external_id="S1", external_id="C1", direction="N", time_step=3600)]
    )
    [site_id] = (await storage.site_ids("cnt", ["S1"])).values()
    schema = tmp_path / "openapi.json"
    schema.write_text(json.dumps(openapi_document(CONFIG)))
    (tmp_path / "schemathesis.toml").write_text(
        CROSS_PARAMETER_VALUES.format(
            site_id=site_id,
            sites_cursor=params.encode_cursor("sites", 0),
            events_cursor=params.encode_cursor("events", ""),
        )
    )
    # every route the document describes (the history API, agents, authoring, road conditions, campaigns)
    app = build_app(
        CONFIG,
        storage,
        publisher=NoFeeds(storage, CONFIG),
        routes=[api.api_routes, openapi_routes, agent_routes, authoring_routes, condition_routes, campaign_routes],
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        proc = await asyncio.create_subprocess_exec(
            SCHEMATHESIS,
            "run",
            str(schema),
            "--url",
            str(client.make_url("/")).rstrip("/"),
            "--checks",
            "all",
            "--max-examples",
            "15",
            "--seed",
            "34",
            "--generation-deterministic",
            "--request-timeout",
            "10",
            "--workers",
            "1",
            "--no-color",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 240)
    report = out.decode()
    assert proc.returncode == 0, report[-6000:]
