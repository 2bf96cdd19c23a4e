"""`/metrics` (Prometheus text 0.0.4) over the real server, and JSON logs of a real poll."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from collectors.fetch import Fetcher
from exporters.datex2_v3 import render_situations
from feed.collect.scheduler import Collector
from feed.config import Config, PublicationConfig, ServerConfig, SourceConfig
from feed.http.context import CONTEXT
from feed.logs import JsonFormatter
from feed.metrics import CONTENT_TYPE, Counter, Histogram, expose
from feed.model import Geometry, StoredEvent
from feed.server.service import http_server
from feed.store.cluster import free_port

WAIT = 20.0
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def situations() -> bytes:
    now = datetime.now(UTC)
    event = StoredEvent(
        id="cd34:RD986-1",
        source_id="cd34",
        external_id="RD986-1",
        version=1,
        type="roadworks",
        status="active",
        severity="medium",
        actual_start=now - timedelta(hours=2),
        road="RD986",
        geometry=Geometry(type="LineString", coordinates=[[3.8, 43.7], [3.81, 43.71]]),
        descriptions={"fr": "Travaux"},
        first_seen=now,
        last_seen=now,
        updated=now,
    )
    return render_situations([event], PublicationConfig(), now)


def parse(text: str) -> tuple[dict[tuple[str, frozenset[tuple[str, str]]], float], dict[str, str]]:
    """Samples by (name, labels) and each family's TYPE; fails on any line that is not 0.0.4."""
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    types: dict[str, str] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in {"counter", "gauge", "histogram"}
            types[name] = kind
            continue
        if line.startswith("# HELP "):
            continue
        match = SAMPLE.match(line)
        assert match, line
        labels = frozenset(LABEL.findall(match.group(2) or ""))
        key = (match.group(1), labels)
        assert key not in samples, f"duplicate series {line}"
        samples[key] = float(match.group(3))
    return samples, types


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum of the series of `name` having these labels (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def test_exposition_format_of_counters_and_histograms():
    counter = Counter("x_total", "help", ("source",))
    counter.inc('a"b\\c\nd', amount=2)
    assert counter.lines() == ['x_total{source="a\\"b\\\\c\\nd"} 2']
    histogram = Histogram("d_seconds", "help", ("route",), buckets=(0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        histogram.observe("/r", value=v)
    assert histogram.lines() == [
        'd_seconds_bucket{route="/r",le="0.1"} 2',
        'd_seconds_bucket{route="/r",le="1"} 3',
        'd_seconds_bucket{route="/r",le="+Inf"} 4',
        'd_seconds_sum{route="/r"} 3.65',
        'd_seconds_count{route="/r"} 4',
    ]


class _NoFeeds:
    """A publisher with no feed (what `expose` reads of one)."""

    paths: ClassVar[list[str]] = []
    processes = None


class _Pool:
    def get_size(self) -> int:
        return 3

    def get_idle_size(self) -> int:
        return 2

    def get_max_size(self) -> int:
        return 10


def test_exposition_shows_what_the_scrape_read_and_says_when_it_could_not():
    """`expose` is pure: the caller reads the sources (None when the database was away)."""
    read, _ = parse(expose(_NoFeeds(), _Pool(), [{"id": "cd34", "ok": 1700000000.5, "err": None}]))
    assert value(read, "roadfeed_database_up") == 1
    assert value(read, "roadfeed_source_last_success_timestamp_seconds", source="cd34") == 1700000000.5
    assert value(read, "roadfeed_db_pool_idle_connections") == 2
    away, _ = parse(expose(_NoFeeds(), _Pool(), None))
    assert value(away, "roadfeed_database_up") == 0
    assert not any(name.startswith("roadfeed_source_") for name, _ in away)


async def test_metrics_count_polls_requests_feeds_and_the_pool(storage):
    body = situations()

    async def feed(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/xml")

    origin_app = web.Application()
    origin_app.router.add_get("/situations.xml", feed)
    origin = TestServer(origin_app, host="127.0.0.1")
    await origin.start_server()
    source = SourceConfig(id=f"src-{uuid.uuid4().hex[:8]}", kind="datex2", url=str(origin.make_url("/situations.xml")))
    config = Config(server=ServerConfig(workers=1), sources=[source])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session, http_server(config, storage, "127.0.0.1", port) as runner:
            publisher = runner.app[CONTEXT].publisher
            assert await publisher.wait_ready(WAIT)
            async with session.get(f"{base}/metrics") as r:
                before, _ = parse(await r.text())

            report = await Collector(config, storage, Fetcher(session)).poll(source)
            assert report is not None and report.stats.error is None
            await asyncio.wait_for(_until_published(publisher), WAIT)

            async with aiohttp.ClientSession() as feeds:  # own connections: the others went to aiohttp
                async with feeds.get(f"{base}/feeds/events.geojson") as r:  # the fast path
                    assert r.status == 200
                    etag = r.headers["ETag"]
                async with feeds.get(f"{base}/feeds/events.geojson", headers={"If-None-Match": etag}) as r:
                    assert r.status == 304
            async with session.get(f"{base}/api/v1/sites/nope") as r:  # aiohttp, a route template
                assert r.status == 404
            async with session.get(f"{base}/no/such/{uuid.uuid4().hex}") as r:
                assert r.status == 404
            async with session.get(f"{base}/metrics") as r:
                assert r.status == 200
                assert r.headers["Content-Type"] == CONTENT_TYPE
                after, types = parse(await r.text())
    finally:
        await origin.close()

    def grew(name: str, by: float = 1, **labels: str) -> bool:
        return value(after, name, **labels) - value(before, name, **labels) >= by

    sid = source.id
    assert value(after, "roadfeed_polls_total", source=sid, outcome="ok") == 1
    assert value(after, "roadfeed_poll_records_total", source=sid, result="new") == 1
    assert value(after, "roadfeed_poll_records_total", source=sid, result="quarantined") == 0
    assert value(after, "roadfeed_poll_bytes_total", source=sid) == len(body)
    assert value(after, "roadfeed_poll_duration_seconds_count", source=sid) == 1
    assert value(after, "roadfeed_poll_duration_seconds_bucket", source=sid, le="+Inf") == 1
    assert value(after, "roadfeed_source_last_success_timestamp_seconds", source=sid) > 1.7e9
    assert types["roadfeed_polls_total"] == "counter" and types["roadfeed_poll_duration_seconds"] == "histogram"

    http = "roadfeed_http_request_duration_seconds_count"
    assert grew(http, route="/feeds/events.geojson", status="2xx", via="fast")
    assert grew(http, route="/feeds/events.geojson", status="3xx", via="fast")
    assert grew(http, route="/api/v1/sites/{id}", status="4xx", via="app")
    assert grew(http, route="unmatched", status="4xx", via="app")
    assert grew(http, route="/metrics", status="2xx", via="app")
    assert types["roadfeed_http_request_duration_seconds"] == "histogram"

    feed_path = "/feeds/events.geojson"
    assert value(after, "roadfeed_feed_size_bytes", feed=feed_path, encoding="identity") > 0
    assert value(after, "roadfeed_feed_generation_seconds", feed=feed_path) > 0
    assert value(after, "roadfeed_feed_renders_total", feed=feed_path) >= 1
    assert value(after, "roadfeed_feed_state", feed=feed_path, state="ok") == 1
    assert value(after, "roadfeed_db_pool_connections") >= 1
    assert 0 <= value(after, "roadfeed_db_pool_idle_connections") <= value(after, "roadfeed_db_pool_connections")
    assert value(after, "roadfeed_database_up") == 1
    assert value(after, "roadfeed_process_info", role="leader", process=str(os.getpid())) == 1
    assert value(after, "roadfeed_process_start_time_seconds") > 1.7e9
    assert value(after, "roadfeed_workers", state="serving") == 1
    # every sample says which process answered
    assert all(any(k == "process" for k, _ in labels) for (_, labels) in after)


async def _until_published(publisher) -> None:
    while True:
        current = publisher.state("/feeds/events.geojson").current
        if current is not None and b"RD986-1" in current.body:
            return
        await asyncio.sleep(0.05)


def test_json_formatter_writes_fields_and_exceptions():
    record = logging.LogRecord("roadfeed.collect", logging.WARNING, __file__, 1, "poll of %s", ("a",), None)
    record.fields = {"source": "a", "new": 3, "message": "not overriding"}
    document = json.loads(JsonFormatter().format(record))
    assert document["level"] == "WARNING" and document["logger"] == "roadfeed.collect"
    assert document["message"] == "poll of a" and document["source"] == "a" and document["new"] == 3
    assert document["time"].endswith("Z")


async def test_collect_logs_its_poll_report_as_json(db_url, tmp_path):
    body = situations()

    async def feed(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/xml")

    app = web.Application()
    app.router.add_get("/situations.xml", feed)
    origin = TestServer(app, host="127.0.0.1")
    await origin.start_server()
    try:
        config = tmp_path / "roadfeed.toml"
        config.write_text(
            f'[[sources]]\nid = "inforoute"\nkind = "datex2"\nurl = "{origin.make_url("/situations.xml")}"\n'
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "feed.cli",
            "collect",
            "--config",
            str(config),
            "--source",
            "inforoute",
            "--once",
            "--log-format",
            "json",
            env={**os.environ, "ROADFEED_DATABASE_URL": db_url},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await origin.close()
    assert proc.returncode == 0, err.decode()
    assert "inforoute: ok; new 1" in out.decode()  # the printed report stays
    lines = [json.loads(line) for line in err.decode().splitlines() if line.strip()]  # every line is JSON
    polls = [d for d in lines if d.get("event") == "poll"]
    assert len(polls) == 1
    poll = polls[0]
    assert poll["source"] == "inforoute" and poll["ok"] is True and poll["error"] is None
    assert poll["new"] == 1 and poll["bytes"] == len(body) and poll["duration_s"] >= 0
    assert poll["level"] == "INFO" and poll["logger"] == "roadfeed.collect"
    assert {"time", "message", "run_id", "updated", "unchanged", "quarantined", "http_status"} <= poll.keys()
