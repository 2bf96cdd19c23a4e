"""Collect benchmark: the real collector path, from a source's bytes to the database.

Three measures, on every engine available here (host PostgreSQL + PostGIS; PostgreSQL 17
+ TimescaleDB when its root filesystem is built):

1. Throughput and memory of a big document. A DATEX II v3 MeasuredDataPublication in
   the shape `exporters.datex2_v3.render_measured_data` writes (a bare `d2:payload`;
   `siteMeasurements` of SITES sites x one-minute steps, flow and speed per direction as
   `physicalQuantity` indexes 1-4; no indentation, like the exporter; the sites are known
   by reference only, so the parser derives them and their channels from the data) is
   written to a temporary file at 25 MB and 100 MB, served by a local aiohttp server, and
   collected with `poll_source` (Fetcher -> parse_datex2 -> Sink -> Storage) into a fresh
   migrated database. Each collection runs in a fresh subprocess that does nothing else,
   so its peak resident memory (VmHWM, the same figure as ru_maxrss) is the collection's;
   growth = peak(100 MB) - peak(25 MB), in MiB (document sizes are in MB of 10^6 bytes).
   Throughput counts the whole poll: download, parse, plausibility, COPY and rollups.
   The same subprocess then times the download alone and the parse alone (after the
   peak was read), to show where the time goes, and (for XML) a bare
   `lxml.etree.iterparse` pass over the same file: the whole poll's throughput as a
   ratio to it is the figure that holds across machines (target >= 0.5).
2. Memory bounded by the batch, not the document: the same child collects a DATEX II
   v2.3 snapshot of SITUATIONS small situations (one record each, located by its road)
   and one Opendatasoft `records` answer of ODS_MB MB holding every record at once
   (hourly counts of SITES sites x 2 directions x 2 classes); peak RSS of each.
3. Change-to-stored latency. A local server serves a v3 SituationPublication of EVENTS
   events (`render_situations`, all inside the publication bbox). After a first poll,
   one event gets a new version and description at the source; the time from the start
   of the next poll to the commit of the new version (the `roadfeed_changes` NOTIFY,
   delivered at commit) is measured REPEATS times. The poll interval is not counted.

Prints a table, then one JSON line with the targets.

Usage: python bench/collect.py [--sizes 25 100] [--sites 500] [--events 2000] [--repeats 20]
                               [--situations 1000000] [--ods-mb 200]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psycopg
from aiohttp import web
from lxml import etree

from collectors import opendatasoft_parse
from collectors.datex2_parse import parse_datex2
from collectors.fetch import Fetcher
from exporters.datex2_v3 import render_situations
from feed.collect.poll import poll_source
from feed.config import PublicationConfig, SourceConfig
from feed.model import Geometry, StoredEvent
from feed.store.cluster import Cluster, Engine, chroot_engine, host_engine
from feed.store.migrations import migrate
from feed.store.storage import Storage
from feed.store.writes import CHANGES_CHANNEL

MB = 1_000_000
PUBLICATION = PublicationConfig()  # Hérault: bbox (2.53, 43.2, 4.2, 43.98)
ROADS = ["RD613", "RD986", "RD65", "RD5", "RN109", "A9", "A75", "RD612", "RD908", "RD4"]

# --------------------------------------------------------------------------- documents

_ROA_HEAD = (
    "<?xml version='1.0' encoding='UTF-8'?>\n"
    '<d2:payload xmlns:d2="http://datex2.eu/schema/3/d2Payload" xmlns:com="http://datex2.eu/schema/3/common"'
    ' xmlns:roa="http://datex2.eu/schema/3/roadTrafficData" xmlns:loc="http://datex2.eu/schema/3/locationReferencing"'
    ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="roa:MeasuredDataPublication" lang="fr"'
    ' modelBaseVersion="3"><com:publicationTime>{published}</com:publicationTime><com:publicationCreator>'
    "<com:country>fr</com:country><com:nationalIdentifier>FR-HERAULT</com:nationalIdentifier>"
    '</com:publicationCreator><roa:measurementSiteTableReference targetClass="roa:MeasurementSiteTable"'
    ' id="FR-HERAULT:measurement-sites" version="1"/><roa:headerInformation><com:confidentiality>'
    "noRestriction</com:confidentiality><com:informationStatus>real</com:informationStatus>"
    "</roa:headerInformation>"
)
_QUANTITY = (
    '<roa:physicalQuantity index="{index}"><roa:physicalQuantity xsi:type="roa:SinglePhysicalQuantity">'
    '<roa:basicData xsi:type="roa:{kind}"><roa:measurementOrCalculationTime><roa:timeMeaning>endTime'
    "</roa:timeMeaning><roa:timeValue>{end}</roa:timeValue><roa:period><com:startOfPeriod>{start}"
    "</com:startOfPeriod><com:endOfPeriod>{end}</com:endOfPeriod></roa:period>"
    "</roa:measurementOrCalculationTime>{value}</roa:basicData></roa:physicalQuantity></roa:physicalQuantity>"
)


def _xml_time(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def write_measured_data(path: Path, target_bytes: int, sites: int, now: datetime) -> dict[str, int]:
    """A MeasuredDataPublication of at least `target_bytes`: every site at each minute in
    turn, two directions each (flow index 2n-1 in vehicles/hour, speed index 2n), written
    one time step at a time. The last step ends at `now` (floored to the minute)."""
    block_bytes = 2650  # about one siteMeasurements
    steps = -(-target_bytes // (block_bytes * sites)) + 1
    end_of_last = now.replace(second=0, microsecond=0)
    first = end_of_last - timedelta(minutes=steps)
    blocks = 0
    with path.open("w", encoding="utf-8") as f:
        f.write(_ROA_HEAD.format(published=_xml_time(end_of_last)))
        step = 0
        while f.tell() < target_bytes or step == 0:
            start, end = _xml_time(first + timedelta(minutes=step)), _xml_time(first + timedelta(minutes=step + 1))
            parts = []
            for site in range(sites):
                parts.append(
                    '<roa:siteMeasurements><roa:measurementSiteReference targetClass="roa:MeasurementSite"'
                    f' id="cd34:S{site:04d}" version="1"/>'
                )
                for direction in (0, 1):
                    count = (site * 7 + step * 13 + direction * 5) % 45
                    parts.append(
                        _QUANTITY.format(
                            index=2 * direction + 1,
                            kind="TrafficFlow",
                            start=start,
                            end=end,
                            value=f'<roa:vehicleFlow numberOfInputValuesUsed="{count}"><com:vehicleFlowRate>'
                            f"{count * 60}</com:vehicleFlowRate></roa:vehicleFlow>",
                        )
                    )
                    parts.append(
                        _QUANTITY.format(
                            index=2 * direction + 2,
                            kind="TrafficSpeed",
                            start=start,
                            end=end,
                            value=f"<roa:averageVehicleSpeed><com:speed>{55 + (site + step + direction) % 50}.5"
                            "</com:speed></roa:averageVehicleSpeed>",
                        )
                    )
                parts.append(
                    f"<roa:measurementTimeDefault><roa:timeMeaning>endTime</roa:timeMeaning><roa:timeValue>"
                    f"{end}</roa:timeValue></roa:measurementTimeDefault></roa:siteMeasurements>"
                )
            f.write("".join(parts))
            blocks += sites
            step += 1
        f.write("</d2:payload>")
    return {
        "bytes": path.stat().st_size,
        "blocks": blocks,
        "steps": step,
        "measurements": blocks * 4,
        "events": 0,
        "sites": sites,
        "channels": sites * 4,
    }


_V2_SITUATIONS_HEAD = (
    "<?xml version='1.0' encoding='UTF-8'?>\n"
    '<d2LogicalModel xmlns="http://datex2.eu/schema/2/2_0" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
    ' modelBaseVersion="2"><exchange><supplierIdentification><country>fr</country><nationalIdentifier>FR-HERAULT'
    '</nationalIdentifier></supplierIdentification></exchange><payloadPublication xsi:type="SituationPublication"'
    ' lang="fr"><publicationTime>{published}</publicationTime><publicationCreator><country>fr</country>'
    "<nationalIdentifier>FR-HERAULT</nationalIdentifier></publicationCreator>"
)


def write_situations(path: Path, n: int, now: datetime) -> dict[str, int]:
    """A DATEX II v2.3 SituationPublication of `n` small situations: one record each,
    located by its road number only (an event with no location is quarantined)."""
    with path.open("w", encoding="utf-8") as f:
        f.write(_V2_SITUATIONS_HEAD.format(published=_xml_time(now)))
        for start in range(0, n, 10_000):
            f.write(
                "".join(
                    f'<situation id="s{i}"><situationRecord xsi:type="Accident" id="r{i}" version="1">'
                    f"<groupOfLocations><roadNumber>RD{i % 999}</roadNumber></groupOfLocations>"
                    "</situationRecord></situation>"
                    for i in range(start, min(n, start + 10_000))
                )
            )
        f.write("</payloadPublication></d2LogicalModel>")
    return {"bytes": path.stat().st_size, "events": n, "measurements": 0}


ODS_DATASET = "bench-comptages"
ODS_PATH = f"/api/explore/v2.1/catalog/datasets/{ODS_DATASET}/records"
ODS_PAGE = "ods-page.json"
ODS_MAPPING = {
    "site_id": "id_site",
    "time": "date_heure",
    "count": "debit",
    "direction": "sens",
    "vehicle_class": "categorie",
    "site_name": "nom_site",
    "interval_seconds": 3600,
    "vehicle_class_map": {"VL": "light", "PL": "heavy"},
}


def write_ods_page(path: Path, target_bytes: int, sites: int, now: datetime) -> dict[str, int]:
    """One Explore v2.1 `records` answer of at least `target_bytes`: hourly counts of
    `sites` sites x 2 directions x 2 classes, going back one hour per round from `now`
    (a portal that ignores `limit`, or a page of very large records)."""
    end = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    records = 0
    with path.open("w", encoding="utf-8") as f:
        f.write('{"total_count": 0, "results": [')
        hour = 0
        while f.tell() < target_bytes:
            t = (end - timedelta(hours=hour)).isoformat()
            parts = []
            for site in range(sites):
                for sens in ("N", "S"):
                    for cat in ("VL", "PL"):
                        parts.append(
                            json.dumps(
                                {
                                    "id_site": f"CD34-{site:04d}",
                                    "date_heure": t,
                                    "debit": (site * 7 + hour) % 900,
                                    "sens": sens,
                                    "categorie": cat,
                                    "nom_site": f"RD{site % 999} PR {site % 60}+{site % 1000}",
                                    "geo_point_2d": {"lon": 3.0 + site % 100 / 100, "lat": 43.5 + site % 40 / 100},
                                    "commentaire": "Comptage permanent, boucles électromagnétiques, données horaires",
                                }
                            )
                        )
            f.write(("," if hour else "") + ",".join(parts))
            records += len(parts)
            hour += 1
        f.write("]}")
    return {"bytes": path.stat().st_size, "events": 0, "measurements": records}


_DESCRIPTIONS = [
    (
        "Travaux de réfection de chaussée, circulation alternée par feux.",
        "Resurfacing works, alternating traffic controlled by lights.",
    ),
    (
        "Accident impliquant deux véhicules, voie de droite neutralisée.",
        "Accident involving two vehicles, right lane closed.",
    ),
    ("Route barrée, déviation mise en place par la RD986.", "Road closed, diversion via the RD986."),
    ("Chute de pierres sur la chaussée, prudence.", "Fallen rocks on the road, take care."),
    ("Ralentissements importants à l'approche de l'échangeur.", "Heavy slowdowns approaching the interchange."),
]
_KINDS = [
    ("roadworks", "MaintenanceWorks"),
    ("accident", "Accident"),
    ("closure", None),
    ("obstruction", "GeneralObstruction"),
    ("congestion", "AbnormalTraffic"),
    ("weather", "WeatherRelatedRoadConditions"),
    ("speed_management", "SpeedManagement"),
]
_SEVERITIES = ["low", "medium", "high", "highest", "unknown"]


def build_events(n: int, now: datetime) -> list[StoredEvent]:
    """`n` open events spread over the Hérault, lines and points, with French PR references
    on points; times far from `now` so that their status cannot change during the run."""
    events = []
    for i in range(n):
        kind, subtype = _KINDS[i % len(_KINDS)]
        lon = 2.6 + (i * 0.61803) % 1.5
        lat = 43.25 + (i * 0.41421) % 0.68
        road = ROADS[i % len(ROADS)]
        if i % 5 < 3:
            coords = [[round(lon + k * 0.0011, 6), round(lat + k * 0.0007, 6)] for k in range(6 + i % 10)]
            geometry = Geometry(type="LineString", coordinates=coords)
            refs: dict[str, Any] = {}
        else:
            geometry = Geometry(type="Point", coordinates=[round(lon, 6), round(lat, 6)])
            refs = {
                "pr": [
                    {"at": "point", "road": road, "departement": "34", "pr": 3 + i % 60, "abscissa": (i * 37) % 1000}
                ]
            }
        fr, en = _DESCRIPTIONS[i % len(_DESCRIPTIONS)]
        seen = now - timedelta(days=2, minutes=i)
        planned = i % 11 == 0
        events.append(
            StoredEvent(
                id=f"bench-situations:EV{i:05d}",
                source_id="bench-situations",
                external_id=f"EV{i:05d}",
                version=1,
                type=kind,
                subtype=subtype,
                status="planned" if planned else "active",
                severity=_SEVERITIES[i % len(_SEVERITIES)],
                planned_start=now + timedelta(days=10) if planned else None,
                actual_start=None if planned else now - timedelta(days=3, hours=i % 48),
                planned_end=now + timedelta(days=20 + i % 30),
                road=road,
                direction=("positive", "negative", "both")[i % 3],
                geometry=geometry,
                descriptions={"fr": f"{fr} ({road}, réf. {i})", "en": f"{en} ({road}, ref. {i})"},
                location_refs=refs,
                first_seen=seen,
                last_seen=seen,
                updated=seen,
            )
        )
    return events


# --------------------------------------------------------------------------- child: one collection


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def bare_iterparse_seconds(path: str) -> float:
    """The reference: one `lxml.etree.iterparse` pass over the same file, each element
    cleared when it ends and nothing else done; the fastest any streaming parser of
    it can be on this machine now, so the ratio to it is stable across machines."""
    t = time.perf_counter()
    for _, element in etree.iterparse(path, events=("end",)):
        element.clear()
    return time.perf_counter() - t


def _source(kind: str, url: str) -> SourceConfig:
    if kind == "opendatasoft":
        base = url.split("/api/explore/")[0]
        return SourceConfig(
            id="bench-ods",
            kind="opendatasoft",
            url=base,
            interval=3600,
            options={"dataset": ODS_DATASET, "dataset_type": "counters", "mapping": ODS_MAPPING},
        )
    return SourceConfig(id="bench-measured", kind="datex2", url=url, interval=3600)


def _parse_alone(kind: str, path: str) -> int:
    with open(path, "rb") as f:
        if kind == "opendatasoft":
            mapping = opendatasoft_parse.counter_mapping_from_options({"mapping": ODS_MAPPING})
            return sum(1 for _ in opendatasoft_parse.parse_records_stream(f, mapping, source="bench"))
        return sum(1 for _ in parse_datex2(f, source_id="bench-measured"))


async def child_measured(kind: str, url: str, db: str, path: str, expect: dict[str, int]) -> dict[str, Any]:
    """One poll of the big document; nothing else in this process before the peak is read."""
    storage = await Storage.open(db)
    try:
        async with aiohttp.ClientSession() as session:
            fetcher = Fetcher(session)
            source = _source(kind, url)
            rss_before = _status_kib("VmRSS")
            t = time.perf_counter()
            report = await poll_source(source, storage, fetcher, PUBLICATION)
            elapsed = time.perf_counter() - t
            peak_kib = _status_kib("VmHWM")
            maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            stats = report.stats
            stored = await storage.pool.fetchval("SELECT count(*) FROM measurements")
            events = await storage.pool.fetchval("SELECT count(*) FROM events")
            quarantined = await storage.pool.fetchval("SELECT count(*) FROM quarantine")
            # Where the time goes (after the peak was read): the download alone, the parse alone.
            t = time.perf_counter()
            fetched = await fetcher.get(source.id, url)
            while fetched.body.read(1 << 20):
                pass
            fetched.close()
            fetch_s = time.perf_counter() - t
        t = time.perf_counter()
        parsed = _parse_alone(kind, path)
        parse_s = time.perf_counter() - t
        iterparse_s = bare_iterparse_seconds(path) if kind == "datex2" else None
    finally:
        await storage.close()
    problems = []
    if stats.error:
        problems.append(f"poll failed: {stats.error}")
    if stored != expect["measurements"] or events != expect["events"] or quarantined or stats.quarantined:
        problems.append(
            f"stored {stored} of {expect['measurements']} measurements, {events} of {expect['events']}"
            f" events, {quarantined} quarantined"
        )
    return {
        "seconds": elapsed,
        "bytes": stats.bytes,
        "new": stats.counts.new,
        "stored": stored + events,
        "records": parsed,
        "rss_before_mib": rss_before / 1024,
        "peak_rss_mib": peak_kib / 1024,
        "ru_maxrss_mib": maxrss_kib / 1024,
        "fetch_s": fetch_s,
        "parse_s": parse_s,
        "iterparse_s": iterparse_s,
        "problems": problems,
    }


async def child_latency(db: str, n_events: int, repeats: int) -> dict[str, Any]:
    """A first poll of the snapshot, then REPEATS times: change one event at the source,
    poll, and time poll start -> commit of its new version."""
    now = datetime.now(UTC)
    events = build_events(n_events, now)
    document = {"body": b"", "etag": ""}

    def publish() -> float:
        t = time.perf_counter()
        body = render_situations(events, PUBLICATION, datetime.now(UTC))
        document["body"], document["etag"] = body, f'"{hashlib.sha256(body).hexdigest()[:16]}"'
        return time.perf_counter() - t

    async def situations(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == document["etag"]:
            return web.Response(status=304, headers={"ETag": document["etag"]})
        return web.Response(body=document["body"], content_type="application/xml", headers={"ETag": document["etag"]})

    app = web.Application()
    app.router.add_get("/situations.xml", situations)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    source = SourceConfig(id="bench-situations", kind="datex2", url=f"http://127.0.0.1:{port}/situations.xml")

    storage = await Storage.open(db)
    listener = await asyncpg.connect(db)
    committed: dict[str, float] = {}
    waiting: asyncio.Event = asyncio.Event()

    def on_change(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload == "events" and "at" not in committed:
            committed["at"] = time.perf_counter()
            waiting.set()

    await listener.add_listener(CHANGES_CHANNEL, on_change)
    problems: list[str] = []
    try:
        async with aiohttp.ClientSession() as session:
            fetcher = Fetcher(session)
            render_s = publish()
            t = time.perf_counter()
            first = await poll_source(source, storage, fetcher, PUBLICATION)
            first_s = time.perf_counter() - t
            if first.stats.error or first.stats.counts.new != n_events:
                problems.append(f"first poll: {first.line()}")
            latencies, polls, renders = [], [], []
            for r in range(repeats):
                k = (r * 97) % n_events
                old = events[k]
                changed_at = datetime.now(UTC)
                events[k] = old.model_copy(
                    update={
                        "version": old.version + 1,
                        "updated": changed_at,
                        "last_seen": changed_at,
                        "descriptions": {
                            lang: f"{text} Mise à jour {r + 1}." for lang, text in old.descriptions.items()
                        },
                    }
                )
                renders.append(publish())
                committed.clear()
                waiting.clear()
                t = time.perf_counter()
                report = await poll_source(source, storage, fetcher, PUBLICATION)
                polls.append(time.perf_counter() - t)
                try:
                    await asyncio.wait_for(waiting.wait(), 5)
                except TimeoutError:
                    problems.append(f"repeat {r}: no commit notification ({report.line()})")
                    continue
                latencies.append(committed["at"] - t)
                counts = report.stats.counts
                if report.stats.error or (counts.new, counts.updated, counts.unchanged) != (0, 1, n_events - 1):
                    problems.append(f"repeat {r}: {report.line()}")
                version = await storage.pool.fetchval(
                    "SELECT version FROM events WHERE source_id = $1 AND external_id = $2", source.id, old.id
                )
                if version != 2 + sum(1 for q in range(r) if (q * 97) % n_events == k):
                    problems.append(f"repeat {r}: event EV{k:05d} stored as version {version}")
    finally:
        await listener.close()
        await storage.close()
        await runner.cleanup()
    return {
        "events": n_events,
        "bytes": len(document["body"]),
        "first_poll_s": first_s,
        "render_s": render_s,
        "latencies": latencies,
        "polls": polls,
        "problems": problems,
    }


def child_main(args: argparse.Namespace) -> None:
    if args.child == "measured":
        result = asyncio.run(child_measured(args.kind, args.url, args.db, args.file, json.loads(args.expect)))
    else:
        result = asyncio.run(child_latency(args.db, args.events, args.repeats))
    print(json.dumps(result))


def run_child(*args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"benchmark subprocess failed:\n{done.stdout}{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- parent


class DocumentServer:
    """Serves the files of a directory on 127.0.0.1 from a thread (its own event loop)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_get(ODS_PATH, self._ods_records)
        app.router.add_static("/", self.directory)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    def __enter__(self) -> DocumentServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _ods_records(self, request: web.Request) -> web.StreamResponse:
        """The big page first; asked for what comes after it (a `where`), nothing."""
        if "where" in request.query:
            return web.json_response({"total_count": 0, "results": []})
        return web.FileResponse(self.directory / ODS_PAGE, headers={"Content-Type": "application/json"})

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def ods_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{ODS_PATH}"


def fresh_database(cluster: Cluster, name: str) -> str:
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = cluster.url_for(name)
    migrate(url)
    return url


Docs = dict[str, tuple[str, Path, dict[str, int]]]  # label -> (source kind, file, what it holds)


def bench_engine(engine: Engine, args: argparse.Namespace, docs: Docs, server: DocumentServer) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="roadfeed-bench-", dir=engine.host_path("/tmp")))
    base.chmod(0o755)
    cluster = Cluster(engine, base / "data")
    cluster.initdb()
    cluster.start()
    try:
        result: dict[str, Any] = {"measured": {}}
        for label, (kind, path, info) in docs.items():
            print(f"[{engine.name}] {label}: {info['bytes'] / MB:.1f} MB ...", flush=True)
            db = fresh_database(cluster, label.replace("-", "_"))
            url = server.ods_url() if kind == "opendatasoft" else server.url(path.name)
            result["measured"][label] = run_child(
                "--child",
                "measured",
                "--kind",
                kind,
                "--url",
                url,
                "--db",
                db,
                "--file",
                str(path),
                "--expect",
                json.dumps(info),
            )
        print(f"[{engine.name}] change-to-stored latency, {args.events} events x {args.repeats} ...", flush=True)
        db = fresh_database(cluster, "latency")
        result["latency"] = run_child(
            "--child", "latency", "--db", db, "--events", str(args.events), "--repeats", str(args.repeats)
        )
        return result
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def p99(values: list[float]) -> float:
    """99th percentile, linear interpolation between order statistics (about the maximum of 20)."""
    return statistics.quantiles(values, n=100, method="inclusive")[98] if len(values) > 1 else values[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[25, 100], help="document sizes in MB (10^6 bytes)")
    p.add_argument("--sites", type=int, default=500)
    p.add_argument("--events", type=int, default=2000)
    p.add_argument("--situations", type=int, default=1_000_000, help="situations in the big snapshot document")
    p.add_argument("--ods-mb", type=int, default=200, help="size of the big Opendatasoft page, MB")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--child", choices=["measured", "latency"], help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--db", help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    p.add_argument("--expect", help=argparse.SUPPRESS)
    p.add_argument("--kind", default="datex2", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child_main(args)
        return
    engines = [e for e in (host_engine(), chroot_engine()) if e is not None]
    if not engines:
        raise SystemExit("no PostgreSQL engine found (apt-get install postgresql-15-postgis-3)")
    sizes = sorted(set(args.sizes))
    with tempfile.TemporaryDirectory(prefix="roadfeed-bench-docs-") as tmp:
        docs: Docs = {}
        now = datetime.now(UTC)
        for size in sizes:
            path = Path(tmp) / f"measured-{size}mb.xml"
            t = time.perf_counter()
            info = write_measured_data(path, size * MB, args.sites, now)
            docs[f"measured-{size}mb"] = ("datex2", path, info)
            print(
                f"wrote {path.name}: {info['bytes']:,} bytes, {info['sites']} sites x {info['steps']} minutes, "
                f"{info['measurements']:,} measurements ({time.perf_counter() - t:.1f} s)",
                flush=True,
            )
        path = Path(tmp) / "situations.xml"
        info = write_situations(path, args.situations, now)
        docs["situations"] = ("datex2", path, info)
        print(f"wrote {path.name}: {info['bytes']:,} bytes, {info['events']:,} situations", flush=True)
        path = Path(tmp) / ODS_PAGE
        info = write_ods_page(path, args.ods_mb * MB, args.sites, now)
        docs["ods-page"] = ("opendatasoft", path, info)
        print(f"wrote {path.name}: {info['bytes']:,} bytes, {info['measurements']:,} records", flush=True)
        with DocumentServer(Path(tmp)) as server:
            results = {e.name: bench_engine(e, args, docs, server) for e in engines}
    report(results, sizes, list(docs), args)


def report(results: dict[str, Any], sizes: list[int], labels: list[str], args: argparse.Namespace) -> None:
    big, small = f"measured-{max(sizes)}mb", f"measured-{min(sizes)}mb"
    print()
    print(
        f"{'engine':<18}{'document':<18}{'doc MB':>7}{'records':>10}{'poll s':>8}{'MB/s':>7}{'records/s':>11}"
        f"{'fetch s':>9}{'parse s':>9}{'parse MB/s':>11}{'iterparse MB/s':>15}{'ratio':>6}{'rest s':>8}"
        f"{'RSS before':>11}{'peak RSS':>10}"
    )
    for name, r in results.items():
        for label in labels:
            m = r["measured"][label]
            rest = m["seconds"] - m["fetch_s"] - m["parse_s"]
            bare = (
                f"{m['bytes'] / MB / m['iterparse_s']:>15.1f}{m['iterparse_s'] / m['seconds']:>6.2f}"
                if m["iterparse_s"]
                else f"{'-':>15}{'-':>6}"
            )  # no XML reference for JSON
            print(
                f"{name:<18}{label:<18}{m['bytes'] / MB:>7.1f}{m['records']:>10,}{m['seconds']:>8.2f}"
                f"{m['bytes'] / MB / m['seconds']:>7.1f}{m['records'] / m['seconds']:>11,.0f}"
                f"{m['fetch_s']:>9.2f}{m['parse_s']:>9.2f}{m['bytes'] / MB / m['parse_s']:>11.1f}"
                f"{bare}{rest:>8.2f}{m['rss_before_mib']:>8.0f}MiB{m['peak_rss_mib']:>7.0f}MiB"
            )
    print()
    print(
        f"{'engine':<18}{'events':>7}{'doc MB':>8}{'first poll s':>13}{'render s':>9}{'n':>4}"
        f"{'median s':>10}{'p99 s':>8}{'max s':>8}"
    )
    for name, r in results.items():
        lat = r["latency"]
        values = lat["latencies"] or [float("nan")]
        print(
            f"{name:<18}{lat['events']:>7,}{lat['bytes'] / MB:>8.2f}{lat['first_poll_s']:>13.2f}"
            f"{lat['render_s']:>9.2f}{len(lat['latencies']):>4}{statistics.median(values):>10.3f}"
            f"{p99(values):>8.3f}{max(values):>8.3f}"
        )
    problems = [
        f"{name} {label}: {p}"
        for name, r in results.items()
        for label in labels
        for p in r["measured"][label]["problems"]
    ]
    problems += [f"{name} latency: {p}" for name, r in results.items() for p in r["latency"]["problems"]]
    for p in problems:
        print(f"PROBLEM {p}")
    print(
        "measured-N = DATEX II measured data; situations = a v2.3 snapshot of small situations; ods-page = one\n"
        "Opendatasoft records answer holding every record at once\n"
        "records = items the parser yields (measurements + derived sites and channels); poll s = the whole\n"
        "poll_source (download + parse + store, one after the other); fetch s and parse s = each alone;\n"
        "rest s = poll - fetch - parse, i.e. Sink + storage; peak RSS = VmHWM of a subprocess doing only the poll;\n"
        "iterparse MB/s = a bare lxml iterparse pass over the same file in the same run; ratio = poll MB/s / it"
    )

    targets = {}
    for name, r in results.items():
        m_big, m_small = r["measured"][big], r["measured"][small]
        targets[f"{name}.peak_rss_{big}_doc_mb"] = {"value": round(m_big["peak_rss_mib"], 1), "op": "<=", "target": 150}
        for label in ("situations", "ods-page"):
            m = r["measured"][label]
            targets[f"{name}.peak_rss_{label}_{m['bytes'] / MB:.0f}mb_mb"] = {
                "value": round(m["peak_rss_mib"], 1),
                "op": "<=",
                "target": 250,
            }
        targets[f"{name}.rss_growth_{small}_to_{big}_doc_mb"] = {
            "value": round(m_big["peak_rss_mib"] - m_small["peak_rss_mib"], 1),
            "op": "<=",
            "target": 20,
        }
        targets[f"{name}.parse_ingest_mb_s"] = {
            "value": round(m_big["bytes"] / MB / m_big["seconds"], 1),
            "op": ">=",
            "target": 30,
        }
        targets[f"{name}.parse_ingest_vs_bare_iterparse"] = {
            "value": round(m_big["iterparse_s"] / m_big["seconds"], 3),
            "op": ">=",
            "target": 0.5,
        }
        targets[f"{name}.change_to_stored_p99_s"] = {
            "value": round(p99(r["latency"]["latencies"] or [float("inf")]), 3),
            "op": "<=",
            "target": 1.0,
        }
    print(
        json.dumps(
            {
                "bench": "collect",
                "targets": targets,
                "measured": {
                    n: {
                        label: {
                            k: (round(v, 3) if isinstance(v, float) else v)
                            for k, v in r["measured"][label].items()
                            if k != "problems"
                        }
                        for label in labels
                    }
                    for n, r in results.items()
                },
                "latency_s": {
                    n: {
                        "median": round(statistics.median(r["latency"]["latencies"]), 3),
                        "p99": round(p99(r["latency"]["latencies"]), 3),
                    }
                    for n, r in results.items()
                    if r["latency"]["latencies"]
                },
                "problems": problems,
            }
        )
    )


if __name__ == "__main__":
    main()
