"""schemathesis (every check, positive data acceptance included) against the real
API on 127.0.0.1: every constraint the server enforces is in the OpenAPI document,
and every answer matches it. Bounded: few examples per operation, a fixed seed,
deterministic generation, no example database."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from feed import api
from feed.config import Config
from feed.feeds import FeedPublisher
from feed.http import build_app
from feed.model import ChannelRecord, SiteRecord
from feed.openapi import openapi_document
from feed.storage import Storage

CONFIG = Config()
SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent))


class NoFeeds(FeedPublisher):
    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


@pytest.mark.xfail(strict=True, reason=(
    "open findings: opaque cursors are schema-valid strings the server refuses (needs OpenAPI links); "
    "NUL bytes in text parameters (hardened separately); vehicle_class absent at a site is a 400; "
    "an empty threshold is accepted; cross-parameter rules (bbox min <= max, from < to, range per step) "
    "cannot be stated in OpenAPI 3.1 parameters"))
async def test_schemathesis_with_every_check_finds_nothing(storage: Storage, tmp_path: Path):
    assert SCHEMATHESIS, "schemathesis is a test dependency"
    await storage.ensure_source("cnt", "comptage-mobilites", "http://127.0.0.1:9/cnt")
    await storage.upsert_sites("cnt", [SiteRecord(external_id="S1", name="Montbazin", road="RD613", lon=3.69,
                                                   lat=43.51)])
    await storage.upsert_channels("cnt", [ChannelRecord(site_external_id="S1", external_id="C1", direction="N",
                                                        time_step=3600)])
    schema = tmp_path / "openapi.json"
    schema.write_text(json.dumps(openapi_document(CONFIG)))
    app = build_app(CONFIG, storage, publisher=NoFeeds(storage, CONFIG), routes=[api.api_routes])
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        proc = await asyncio.create_subprocess_exec(
            SCHEMATHESIS, "run", str(schema), "--url", str(client.make_url("/")).rstrip("/"),
            "--checks", "all", "--max-examples", "15", "--seed", "34", "--generation-deterministic",
            "--request-timeout", "10", "--workers", "1", "--no-color",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path)
        out, _ = await asyncio.wait_for(proc.communicate(), 240)
    report = out.decode()
    assert proc.returncode == 0, report[-6000:]
