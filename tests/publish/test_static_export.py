"""Feeds written as static files: the very bytes `serve` publishes, gzip beside
them, an index, written by rename and only when changed."""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import UTC, datetime, timedelta

from feed.config import Config
from feed.model import EventRecord, Geometry
from feed.publish.catalogue import FEEDS, STATUS_PATH
from feed.publish.publisher import FeedPublisher
from feed.publish.render import RenderedFeed
from feed.publish.static_export import INDEX, export_feeds, write_feeds


def event(ext: str, hours_ago: float = 2) -> EventRecord:
    now = datetime.now(UTC)
    return EventRecord(
        external_id=ext,
        type="roadworks",
        status="active",
        severity="medium",
        actual_start=now - timedelta(hours=hours_ago),
        road="RD986",
        geometry=Geometry(type="LineString", coordinates=[[3.8, 43.7], [3.81, 43.71]]),
        descriptions={"fr": "Travaux"},
    )


async def test_export_writes_every_feed_its_gzip_and_an_index(storage, tmp_path):
    await storage.ensure_source("cd34", "datex2", "http://127.0.0.1/unused")
    await storage.upsert_events("cd34", [event("RD986-1"), event("RD613-2", 5)], seen_at=datetime.now(UTC))
    config = Config()
    index = await export_feeds(storage, config, tmp_path)

    listed = {e["path"]: e for e in index["feeds"]}
    assert "/feeds/events.geojson" in listed and "/feeds/datex2/v3/situations.xml" in listed
    assert STATUS_PATH in listed
    assert set(listed) <= {spec.path for spec in FEEDS} | {STATUS_PATH}
    for entry in index["feeds"]:
        body = (tmp_path / entry["file"]).read_bytes()
        assert len(body) == entry["bytes"] and hashlib.sha256(body).hexdigest() == entry["sha256"]
        assert gzip.decompress((tmp_path / (entry["file"] + ".gz")).read_bytes()) == body
    assert json.loads((tmp_path / INDEX).read_text()) == index
    features = json.loads((tmp_path / "feeds/events.geojson").read_bytes())["features"]
    assert sorted(f["id"] for f in features) == ["cd34:RD613-2", "cd34:RD986-1"]
    assert not list(tmp_path.rglob("*.tmp"))

    # What the live server renders (publication times apart: each rendering has its own).
    publisher = FeedPublisher(storage, config)
    await publisher.start()
    try:
        assert await publisher.wait_ready(30)
        live = publisher.state("/feeds/events.geojson").current
    finally:
        await publisher.stop()
    assert live is not None and json.loads(live.body)["features"] == features


def test_unchanged_files_are_not_rewritten(tmp_path):
    now = datetime(2026, 6, 22, tzinfo=UTC)

    def rendered(body: bytes) -> RenderedFeed:
        return RenderedFeed("application/json", body, {}, hashlib.sha256(body).hexdigest()[:16], now, now, 1.0, 0.1)

    first = write_feeds({"/feeds/a.json": rendered(b'{"a": 1}'), "/feeds/b.json": rendered(b"[]")}, tmp_path)
    a = tmp_path / "feeds/a.json"
    stamp = a.stat().st_mtime_ns
    again = write_feeds({"/feeds/a.json": rendered(b'{"a": 1}'), "/feeds/b.json": rendered(b"[]")}, tmp_path)
    assert again == first and a.stat().st_mtime_ns == stamp
    changed = write_feeds({"/feeds/a.json": rendered(b'{"a": 2}'), "/feeds/b.json": rendered(b"[]")}, tmp_path)
    assert a.read_bytes() == b'{"a": 2}' and changed["feeds"][0]["bytes"] == 8
    assert json.loads((tmp_path / INDEX).read_text()) == changed
