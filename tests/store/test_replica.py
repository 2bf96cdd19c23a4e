"""Serving from a real hot standby (pg_basebackup -R, streaming replication).

The standby applies commits late on purpose (`recovery_min_apply_delay`), so a
node that read as soon as the primary's NOTIFY came would render the old data
and miss the change until its safety refresh (minutes here): every check below
would time out. The node must hear the change on the primary, wait until the
standby has replayed it, then render.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from feed.config import Config, SourceConfig, load_config, parse_config
from feed.errors import ConfigError
from feed.http.app import build_app
from feed.http.changes import CHANGES_PATH, STREAM_PATH, iter_sse
from feed.model import ChannelRecord, EventRecord, Geometry, SiteRecord
from feed.publish.catalogue import EVENTS_GEOJSON
from feed.publish.publisher import LISTENER_APPLICATION_NAME
from feed.store.cluster import Cluster, Engine
from feed.store.migrations import migrate
from feed.store.replica import primary_of
from feed.store.storage import Storage

WAIT = 30.0  # a bound for loaded machines, not a speed check
APPLY_DELAY_MS = 400
MONTPELLIER = Geometry(type="LineString", coordinates=[[3.870, 43.610], [3.880, 43.615], [3.890, 43.620]])
CONFIG = Config(
    sources=[
        SourceConfig(id="cd34", kind="datex2", url="http://127.0.0.1:9/cd34"),
        SourceConfig(id="cnt", kind="comptage-mobilites", url="http://127.0.0.1:9/cnt"),
    ]
)


@dataclass
class Replicated:
    primary_url: str
    standby_url: str


@pytest.fixture(scope="module")
def replicated(server: Any) -> Iterator[Replicated]:
    with primary_and_standby(server.engine) as pair:
        yield pair


@contextmanager
def primary_and_standby(engine: Engine) -> Iterator[Replicated]:
    """A primary of the engine under test, migrated, and a streaming standby of it."""
    base = Path(tempfile.mkdtemp(prefix="roadfeed-replica-", dir=engine.host_path("/tmp")))
    base.chmod(0o755)
    primary = Cluster(engine, base / "primary", durable=False)
    primary.initdb()
    with (primary.datadir / "postgresql.auto.conf").open("a") as f:
        f.write("full_page_writes = on\nwal_level = replica\n")  # what a base backup needs
    primary.start()
    standby = Cluster(engine, base / "standby")
    try:
        with psycopg.connect(primary.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE roadfeed")
        migrate(primary.url_for("roadfeed"))
        ids = engine.postgres_ids()
        if ids:
            os.chown(base, *ids)
        done = subprocess.run(
            engine.command(
                "pg_basebackup",
                "-h",
                "127.0.0.1",
                "-p",
                str(primary.port),
                "-U",
                "postgres",
                "-D",
                engine.inner_path(standby.datadir),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        with (standby.datadir / "postgresql.auto.conf").open("a") as f:
            f.write(
                f"port = {standby.port}\nunix_socket_directories = '{engine.inner_path(standby.datadir)}'\n"
                f"hot_standby = on\nrecovery_min_apply_delay = '{APPLY_DELAY_MS}ms'\n"
            )
        standby.logfile.touch()
        if ids:
            os.chown(standby.logfile, *ids)
        standby.start()
        with psycopg.connect(standby.url_for("roadfeed")) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        yield Replicated(primary.url_for("roadfeed"), standby.url_for("roadfeed"))
    finally:
        standby.stop()
        primary.stop()
        shutil.rmtree(base, ignore_errors=True)


def event(ext: str, **changes: Any) -> EventRecord:
    now = datetime.now(UTC)
    fields: dict[str, Any] = dict(
        external_id=ext,
        type="roadworks",
        subtype="MaintenanceWorks",
        status="active",
        severity="medium",
        planned_start=now - timedelta(days=1),
        planned_end=now + timedelta(days=3),
        road="RD613",
        direction="both",
        geometry=MONTPELLIER,
        descriptions={"fr": "Travaux", "en": "Road works"},
    )
    return EventRecord(**{**fields, **changes})


async def eventually(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    async with asyncio.timeout(WAIT):
        while not (result := await check()):
            await asyncio.sleep(0.05)
    assert result, what
    return result


@pytest.fixture
async def nodes(replicated: Replicated) -> AsyncIterator[tuple[Storage, Storage, TestClient]]:
    """The writer on the primary, and a serving node reading the standby."""
    writer = await Storage.open(replicated.primary_url)
    await writer.pool.execute(
        "TRUNCATE event_versions, events, measurements, rollup_hourly, rollup_daily, "
        "channels, sites, source_runs, sources CASCADE"
    )
    for source in CONFIG.sources:
        await writer.ensure_source(source.id, source.kind, source.url)
    reader = await Storage.open(replicated.standby_url, primary_url=replicated.primary_url)
    client = TestClient(TestServer(build_app(CONFIG, reader), host="127.0.0.1"))
    await client.start_server()
    try:
        yield writer, reader, client
    finally:
        await client.close()
        await reader.close()
        await writer.close()


async def get_json(client: TestClient, path: str, **params: Any) -> Any:
    async with client.get(path, params=params) as resp:
        assert resp.status == 200, (path, resp.status)
        return json.loads(await resp.read())


def versions(doc: dict[str, Any]) -> dict[str, int]:
    return {f["id"]: f["properties"]["version"] for f in doc["features"]}


@pytest.mark.timeout(180)
async def test_standby_node_publishes_every_change_written_on_the_primary(nodes):
    """Random event changes and measurements written on the primary, one after the
    other: each is served by the standby node's feeds, delta feed, event stream and
    API, without the node ever writing to or reading from the primary's tables."""
    writer, reader, client = nodes
    rng = random.Random(15)
    await eventually(lambda: ready(client), "the standby node never became ready")
    assert not await reader.pool.fetchval("SELECT NOT pg_is_in_recovery()")  # reads: the standby
    resp = await client.get(STREAM_PATH)
    assert resp.status == 200
    messages = aiter(iter_sse(resp.content))
    streamed: list[dict[str, Any]] = []
    known: dict[str, dict[str, Any]] = {}
    await writer.upsert_sites("cnt", [SiteRecord(external_id="S1", name="RD613", road="RD613", lon=3.69, lat=43.51)])
    await writer.upsert_channels("cnt", [ChannelRecord(site_external_id="S1", external_id="S1-N", time_step=60)])
    channel = (await writer.channel_ids("cnt"))["S1-N"]
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=30)
    try:
        for step in range(12):
            ext = f"e{rng.randrange(5)}"
            changes = rng.choice(
                [
                    {},
                    {"severity": "high"},
                    {"severity": "low"},
                    {"status": "ended", "actual_end": datetime.now(UTC)},
                    {"road": "RD2"},
                ]
            )
            known[ext] = changes
            await writer.upsert_events("cd34", [event(ext, **changes)], seen_at=datetime.now(UTC))
            count = 100 + step
            await writer.ingest_measurements(
                [(channel, start + timedelta(minutes=step), 60, count, 80.0, None, "observed")]
            )
            want = {r["id"]: r["version"] for r in await writer.pool.fetch("SELECT id, version FROM events")}

            async def feed_caught_up(want: dict[str, int] = want) -> bool:
                got = versions(await get_json(client, EVENTS_GEOJSON))
                return got == want

            await eventually(feed_caught_up, f"step {step}: the events feed missed a change")

            async def sites_caught_up(count: int = count) -> bool:
                doc = await get_json(client, "/feeds/sites.geojson")
                latest = [c["latest"] for f in doc["features"] for c in f["properties"]["channels"]]
                return any(lat and lat["count"] == count for lat in latest)

            await eventually(sites_caught_up, f"step {step}: the sites feed missed a measurement")
            api = {e["id"]: e["version"] for e in (await get_json(client, "/api/v1/events"))["events"]}
            assert api and api.items() <= want.items()  # the history API reads the same replayed state
        # The delta feed and the stream carry every version, once, in order.
        all_versions = [
            (r["event_id"], r["version"])
            for r in await writer.pool.fetch("SELECT event_id, version FROM event_versions ORDER BY seq")
        ]
        page = await get_json(client, CHANGES_PATH, since="0", limit="1000")
        assert [(c["event"]["id"], c["event"]["properties"]["version"]) for c in page["changes"]] == all_versions
        async with asyncio.timeout(WAIT):
            while len(streamed) < len(all_versions):
                message = await anext(messages)
                if message.event not in (None, "position"):  # position: the resume point alone
                    streamed.append(json.loads(message.data))
        assert [(c["event"]["id"], c["event"]["properties"]["version"]) for c in streamed] == all_versions
    finally:
        resp.close()
    # The node listens on the primary: the standby never carries NOTIFY.
    assert (
        await writer.pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", LISTENER_APPLICATION_NAME
        )
        == 1
    )
    assert reader.replay_gate is not None and reader.replay_gate.delivered > 0


async def ready(client: TestClient) -> bool:
    async with client.get("/readyz") as resp:
        return resp.status == 200


def test_read_url_names_a_standby_of_the_configured_primary():
    config = parse_config({"database": {"url": "postgresql://p/roadfeed", "read_url": "postgresql://s/roadfeed"}})
    assert primary_of(config.database, "postgresql://s/roadfeed") == "postgresql://p/roadfeed"
    assert primary_of(config.database, "postgresql://p/roadfeed") is None  # `run` reads the primary itself
    assert primary_of(parse_config({}).database, "postgresql://p/roadfeed") is None
    with pytest.raises(ConfigError, match=r"read_url .* needs url"):
        parse_config({"database": {"read_url": "postgresql://s/roadfeed"}})


def test_the_environment_can_name_the_primary_of_a_configured_standby(tmp_path, monkeypatch):
    config = tmp_path / "roadfeed.toml"
    config.write_text('[database]\nread_url = "postgresql://s/roadfeed"\n')
    monkeypatch.setenv("ROADFEED_DATABASE_URL", "postgresql://p/roadfeed")
    loaded = load_config(config)
    assert (loaded.database.url, loaded.database.read_url) == ("postgresql://p/roadfeed", "postgresql://s/roadfeed")
    monkeypatch.delenv("ROADFEED_DATABASE_URL")
    with pytest.raises(ConfigError, match=r"read_url .* needs url"):
        load_config(config)
