"""Feeds benchmark: our live feeds against nginx serving the same bytes as static files.

EVENTS active events and SITES counting sites (two channels each, with a latest
interval) are stored through the storage API in a private cluster (host engine).
`roadfeed serve` then runs as a separate process (`python -m feed.cli serve` with
`ROADFEED_DATABASE_URL`, a generated configuration and `--port`); once /readyz
answers and every worker serves, the bodies it serves are written to the root of
an nginx started here (generated configuration, a free 127.0.0.1 port, daemon
off, a temporary prefix), so both servers send exactly the same bytes.

Measures, with wrk (same threads, connections and duration for both servers; the
rounds alternate which server goes first; the median round is reported):

- the 200 path, identity encoding, and the 304 path (If-None-Match with each
  server's own ETag), on the DATEX II v3 situations feed and the GeoJSON sites
  feed: requests per second and p99 (`wrk --latency`), and our / nginx ratios;
- feed regeneration after a change: an event (or a measurement) is stored, then a
  tight loop on 127.0.0.1 polls the feed until its ETag changes (new connection
  each time, so any worker may answer); also the publisher's own render time
  from /feeds/status.json;
- SSE delivery, when `feed/http/changes.py` exists: the time from an event's commit
  to its arrival on /feeds/events/stream, over CHANGES changes.

Prints a table, then one JSON line with the targets.

Usage: python bench/feeds.py [--events 2000] [--sites 500] [--duration 5] [--connections 64]
                             [--threads 2] [--rounds 3] [--workers N (default: one per CPU)]
                             [--regenerations 10] [--quiet 0.5] [--changes 100] [--change-interval 0.05]
Needs wrk and nginx (Debian: wrk, nginx-light) and the host's PostgreSQL with PostGIS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import grp
import http.client
import importlib.util
import json
import os
import pwd
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from feed.model import ChannelRecord, EventRecord, Geometry, SiteRecord  # noqa: E402
from feed.publish.catalogue import FEEDS  # noqa: E402
from feed.store.cluster import Cluster, free_port, host_engine  # noqa: E402
from feed.store.migrations import migrate  # noqa: E402
from feed.store.storage import Storage  # noqa: E402

SITUATIONS = "/feeds/datex2/v3/situations.xml"
SITES = "/feeds/sites.geojson"
CASES = (("situations", SITUATIONS), ("sites", SITES))
ROADS = ["RD613", "RD986", "RD65", "RD5", "RN109", "RD612", "RD908", "RD4", "RD2", "RD909"]
TYPES = [
    ("roadworks", "MaintenanceWorks"),
    ("closure", None),
    ("accident", "Accident"),
    ("obstruction", "VehicleObstruction"),
    ("weather", "WeatherRelatedRoadConditions"),
]
SOURCE_EVENTS, SOURCE_SITES = "cd34", "cnt"


# --------------------------------------------------------------------------- data


def event_record(i: int, now: datetime, revision: int = 0) -> EventRecord:
    kind, subtype = TYPES[i % len(TYPES)]
    lon, lat = 2.9 + (i * 37 % 1000) / 1000, 43.3 + (i * 53 % 600) / 1000
    geometry = Geometry(type="LineString", coordinates=[[lon + k * 0.001, lat + k * 0.0007] for k in range(6)])
    road = ROADS[i % len(ROADS)]
    text = f"{kind} sur la {road}, PR {i % 80} à {i % 80 + 2}"
    return EventRecord(
        external_id=f"E{i:05d}",
        type=kind,
        subtype=subtype,
        status="active",
        severity=("low", "medium", "high")[i % 3],
        planned_start=now - timedelta(days=1 + i % 5),
        planned_end=now + timedelta(days=2 + i % 30),
        actual_start=now - timedelta(days=1 + i % 5),
        road=road,
        direction=("both", "positive", "negative")[i % 3],
        lanes_affected="all",
        geometry=geometry,
        descriptions={"fr": f"{text} (révision {revision})", "en": f"{kind} on {road} (revision {revision})"},
        location_refs={
            "pr": [
                {"at": "from", "road": road, "pr": i % 80, "departement": "34", "abscissa": 120},
                {"at": "to", "road": road, "pr": i % 80 + 2, "departement": "34", "abscissa": 40},
            ]
        },
        source_version=str(revision + 1),
    )


async def seed(url: str, events: int, sites: int) -> None:
    storage = await Storage.open(url, max_size=2)
    try:
        now = datetime.now(UTC).replace(microsecond=0)
        await storage.ensure_source(SOURCE_EVENTS, "datex2", "http://127.0.0.1:9/cd34")
        await storage.ensure_source(SOURCE_SITES, "comptage-mobilites", "http://127.0.0.1:9/cnt")
        await storage.upsert_events(
            SOURCE_EVENTS, [event_record(i, now) for i in range(events)], seen_at=now - timedelta(minutes=10)
        )
        await storage.upsert_sites(
            SOURCE_SITES,
            [
                SiteRecord(
                    external_id=f"S{i:04d}",
                    name=f"{ROADS[i % len(ROADS)]} site {i}",
                    road=ROADS[i % len(ROADS)],
                    pr=i % 80,
                    abscissa=250,
                    insee=f"34{i % 300:03d}",
                    lon=2.9 + (i * 37 % 1000) / 1000,
                    lat=43.3 + (i * 53 % 600) / 1000,
                )
                for i in range(sites)
            ],
        )
        await storage.upsert_channels(
            SOURCE_SITES,
            [
                ChannelRecord(site_external_id=f"S{i:04d}", external_id=f"S{i:04d}-{d}", direction=d, time_step=3600)
                for i in range(sites)
                for d in ("N", "S")
            ],
        )
        ids = await storage.channel_ids(SOURCE_SITES)
        hour = now.replace(minute=0, second=0) - timedelta(hours=1)
        rows = [
            (cid, hour - timedelta(hours=h), 3600, (cid * 7 + h * 13) % 900, 60.0 + (cid + h) % 40, None, "observed")
            for cid in sorted(ids.values())
            for h in range(3)
        ]
        await storage.ingest_measurements(rows)
    finally:
        await storage.close()


# --------------------------------------------------------------------------- HTTP helpers


def request(port: int, path: str, method: str = "GET", **headers: str) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection (so any worker may answer)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, headers={"Accept-Encoding": "identity", **headers})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def wait_until(check: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- our server


class OurServer:
    """`python -m feed.cli serve` as a separate process, with a generated configuration."""

    def __init__(self, base: Path, url: str, workers: int) -> None:
        self.port = free_port()
        self.workers = workers
        self.config = base / "roadfeed.toml"
        self.config.write_text(
            "[server]\n"
            f"workers = {workers}\n"
            "feed_max_age = 30\n\n"
            "[[sources]]\n"
            f'id = "{SOURCE_EVENTS}"\nkind = "datex2"\nurl = "http://127.0.0.1:9/cd34"\n\n'
            "[[sources]]\n"
            f'id = "{SOURCE_SITES}"\nkind = "comptage-mobilites"\nurl = "http://127.0.0.1:9/cnt"\n'
        )
        self.log = base / "roadfeed-serve.log"
        env = {**os.environ, "ROADFEED_DATABASE_URL": url}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "feed.cli", "serve", "--config", str(self.config), "--port", str(self.port)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 180) -> dict[str, Any]:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise SystemExit(f"roadfeed serve exited ({self.process.returncode}):\n{self.log.read_text()}")
            return request(self.port, "/readyz")[0] == 200

        wait_until(ready, timeout, "/readyz")

        def all_serving() -> dict[str, Any] | None:  # every worker listening (status.json says so)
            status = json.loads(request(self.port, "/feeds/status.json")[2])
            processes = status.get("processes")
            return status if processes is None or processes["serving"] >= processes["configured"] else None

        return wait_until(all_serving, timeout, "every worker to serve", 0.2)

    def status(self) -> dict[str, Any]:
        return json.loads(request(self.port, "/feeds/status.json")[2])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


# --------------------------------------------------------------------------- nginx


class Nginx:
    """nginx serving files from a temporary prefix, in the foreground, on a free port."""

    def __init__(self, prefix: Path, files: dict[str, bytes]) -> None:
        self.prefix = prefix
        self.port = free_port()
        root = prefix / "root"
        for path, body in files.items():
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body)
        for d in [prefix, *(p for p in root.rglob("*") if p.is_dir()), root]:
            d.chmod(0o755)
        for f in root.rglob("*"):
            if f.is_file():
                f.chmod(0o644)
        user = ""
        if os.geteuid() == 0:  # the workers drop to the invoking user, who owns the files
            name = os.environ.get("SUDO_USER") or pwd.getpwuid(os.getuid()).pw_name
            entry = pwd.getpwnam(name)
            user = f"user {name} {grp.getgrgid(entry.pw_gid).gr_name};\n"
        temp = prefix / "temp"
        temp.mkdir()
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(
            f"{user}worker_processes auto;\ndaemon off;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log warn;\n"
            "events { worker_connections 4096; }\n"
            "http {\n"
            "  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 1000000;\n"
            "  open_file_cache max=64 inactive=600s;\n  open_file_cache_valid 600s;\n  etag on;\n"
            f"  client_body_temp_path {temp}/body;\n  proxy_temp_path {temp}/proxy;\n"
            f"  fastcgi_temp_path {temp}/fastcgi;\n  uwsgi_temp_path {temp}/uwsgi;\n  scgi_temp_path {temp}/scgi;\n"
            "  types { application/xml xml; application/geo+json geojson; }\n"
            f"  server {{ listen 127.0.0.1:{self.port}; root {root}; }}\n"
            "}\n"
        )
        args = ["nginx", "-p", str(prefix), "-c", str(self.conf), "-e", str(prefix / "error.log")]
        subprocess.run([*args, "-t", "-q"], check=True)
        self.process = subprocess.Popen(args, start_new_session=True)
        wait_until(lambda: request(self.port, next(iter(files)))[0] == 200, 30, "nginx")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: workers finish, master exits
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


# --------------------------------------------------------------------------- wrk

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _bytes(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)([KMGT]?B)", text)
    if not m:
        raise ValueError(f"cannot read wrk size {text!r}")
    return float(m.group(1)) * {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}[m.group(2)]


def wrk(url: str, args: argparse.Namespace, script: Path | None) -> dict[str, float]:
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", "--latency", "--timeout", "10s"]
    if script is not None:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    transfer = _bytes(re.search(r"Transfer/sec:\s+(\S+)", out).group(1))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "rps": rps,
        "p99_ms": p99,
        "bytes_per_request": transfer / rps if rps else 0.0,
        "errors": errors + (int(bad.group(1)) if bad else 0),
    }


def inm_script(base: Path, name: str, etag: str) -> Path:
    script = base / f"inm-{name}.lua"
    script.write_text(f'wrk.headers["If-None-Match"] = {json.dumps(etag)}\n')
    return script


def bench_serving(
    ours: OurServer, nginx: Nginx, etags: dict[str, dict[str, str]], base: Path, args: argparse.Namespace
) -> dict[str, dict[str, dict[str, float]]]:
    """{case.path: {server: median of the rounds}}, rounds alternating which server goes first."""
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, path in CASES:
        for kind in ("200", "304"):
            runs: dict[str, list[dict[str, float]]] = {"nginx": [], "ours": []}
            servers = {"nginx": nginx.port, "ours": ours.port}
            scripts = {
                who: inm_script(base, f"{name}-{who}", etags[who][path]) if kind == "304" else None for who in servers
            }
            for who, port in servers.items():  # the path really is what we say it is
                status, _, _ = request(port, path, **({"If-None-Match": etags[who][path]} if kind == "304" else {}))
                assert status == int(kind), f"{who} {path}: {status}, expected {kind}"
            for r in range(args.rounds):
                order = ["nginx", "ours"] if r % 2 == 0 else ["ours", "nginx"]
                for who in order:
                    run = wrk(f"http://127.0.0.1:{servers[who]}{path}", args, scripts[who])
                    runs[who].append(run)
                    print(
                        f"  {name:<11}{kind}  {who:<6} round {r + 1}: {run['rps']:>10,.0f} req/s  "
                        f"p99 {run['p99_ms']:7.2f} ms  {run['bytes_per_request']:>11,.0f} B/req"
                        + (f"  ERRORS {run['errors']:.0f}" if run["errors"] else ""),
                        flush=True,
                    )
            results[f"{name}.{kind}"] = {
                who: {k: statistics.median(x[k] for x in v) for k in v[0]} for who, v in runs.items()
            }
    return results


# --------------------------------------------------------------------------- regeneration


def _etag(port: int, path: str) -> str:
    return request(port, path, "HEAD")[1]["etag"]


def _renders(status: dict[str, Any], kind_paths: list[str]) -> dict[str, int]:
    return {f["path"]: f["renders"] for f in status["feeds"] if f["path"] in kind_paths}


async def bench_regeneration(ours: OurServer, url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Store a change, then poll (HEAD, fresh connection each time) until the feed's ETag changes.

    Each change comes `--quiet` seconds after the previous refresh of every feed of
    its kind finished (renders counters in status.json): an isolated change, not one
    queued behind the previous one or coalesced with it by the publisher's debounce."""
    kind_paths = {
        "events": [s.path for s in FEEDS if s.kind == "events"],
        "sites": [s.path for s in FEEDS if s.kind == "sites"],
    }
    storage = await Storage.open(url, max_size=2)
    out: dict[str, Any] = {}
    try:
        ids = await storage.channel_ids(SOURCE_SITES)
        channel = min(ids.values())
        latest = await storage.pool.fetchval("SELECT max(start) FROM measurements WHERE channel_id = $1", channel)
        for name, path, kind in (("situations", SITUATIONS, "events"), ("sites", SITES, "sites")):
            polled, published, generation, compression, reads = [], [], [], [], []
            for i in range(args.regenerations):
                before = _etag(ours.port, path)
                renders = _renders(ours.status(), kind_paths[kind])
                now = datetime.now(UTC).replace(microsecond=0)
                if kind == "events":
                    await storage.upsert_events(
                        SOURCE_EVENTS, [event_record(i % args.events, now, revision=i + 1)], seen_at=datetime.now(UTC)
                    )
                else:  # a corrected count for the latest interval of one channel
                    await storage.ingest_measurements([(channel, latest, 3600, 1000 + i, 80.0, None, "observed")])
                committed = time.perf_counter()
                while _etag(ours.port, path) == before:
                    if time.perf_counter() - committed > 60:
                        raise SystemExit(f"{path} did not change within 60 s of a stored change")
                polled.append((time.perf_counter() - committed) * 1000)

                def refreshed(
                    paths: list[str] = kind_paths[kind], before: dict[str, int] = renders
                ) -> dict[str, Any] | None:
                    status = ours.status()
                    done = _renders(status, paths)
                    return status if all(done[p] > before[p] for p in done) else None

                status = wait_until(refreshed, 120, f"the {kind} feeds to be rendered", 0.05)
                await asyncio.sleep(args.quiet)  # an isolated change: bursts are coalesced (debounce) on purpose
                feed = next(f for f in status["feeds"] if f["path"] == path)
                reads.append(status.get("data_read_ms", {}).get(kind, {}))
                generation.append(feed["generation_ms"])
                compression.append(feed["compression_ms"])
                published.append(feed["generation_ms"] + feed["compression_ms"])
            out[name] = {
                "polled_ms": polled,
                "generation_ms": generation,
                "compression_ms": compression,
                "publisher_ms": published,
                "read_ms": [r.get("read", float("nan")) for r in reads],
                "fingerprint_ms": [r.get("fingerprint", float("nan")) for r in reads],
            }
    finally:
        await storage.close()
    return out


# --------------------------------------------------------------------------- SSE


async def bench_sse(ours: OurServer, url: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """Time from an event's commit to its arrival on /feeds/events/stream (None: no stream here)."""
    if importlib.util.find_spec("feed.http.changes") is None:
        return None
    import aiohttp  # noqa: PLC0415 - with the stream only

    from feed.http.changes import POSITION_EVENT, STREAM_PATH, delivery_latency, iter_sse  # noqa: PLC0415

    storage = await Storage.open(url, max_size=2)
    arrivals: dict[str, Any] = {}
    arrived = asyncio.Event()
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as session,
            session.get(f"http://127.0.0.1:{ours.port}{STREAM_PATH}") as resp,
        ):
            assert resp.status == 200, resp.status

            async def read() -> None:
                async for message in iter_sse(resp.content):
                    if message.event in (None, POSITION_EVENT):
                        continue
                    doc = message.json()
                    arrivals[f"{doc['event']['id']}@{doc['event']['properties']['version']}"] = message
                    arrived.set()

            reader = asyncio.create_task(read())
            await asyncio.sleep(0.5)  # the stream's head is set
            from_commit, from_recorded, lost = [], [], 0
            base = args.events  # new events: created, version 1
            for i in range(args.changes):
                ext = f"SSE{i:05d}"
                now = datetime.now(UTC)
                await storage.upsert_events(
                    SOURCE_EVENTS, [event_record(base + i, now).model_copy(update={"external_id": ext})], seen_at=now
                )
                committed = datetime.now(UTC)
                key = f"{SOURCE_EVENTS}:{ext}@1"
                deadline = time.monotonic() + 10
                while key not in arrivals and time.monotonic() < deadline:
                    arrived.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(arrived.wait(), 0.5)
                message = arrivals.get(key)
                if message is None:
                    lost += 1
                    continue
                from_commit.append((message.received - committed).total_seconds() * 1000)
                from_recorded.append(delivery_latency(message) * 1000)
                await asyncio.sleep(args.change_interval)
            reader.cancel()
    finally:
        await storage.close()
    return {"from_commit_ms": from_commit, "from_recorded_ms": from_recorded, "lost": lost}


# --------------------------------------------------------------------------- report


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=2000)
    p.add_argument("--sites", type=int, default=500)
    p.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="wrk runs per server and case (median reported)")
    p.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="roadfeed HTTP processes (default: one per CPU)",
    )
    p.add_argument("--regenerations", type=int, default=10, help="changes timed per feed")
    p.add_argument("--quiet", type=float, default=0.5, help="seconds between a refresh and the next timed change")
    p.add_argument("--changes", type=int, default=100, help="changes timed on the SSE stream")
    p.add_argument("--change-interval", type=float, default=0.05, help="seconds between SSE changes")
    args = p.parse_args()
    if shutil.which("wrk") is None or shutil.which("nginx") is None:
        raise SystemExit("this benchmark needs wrk and nginx (apt-get install wrk nginx-light)")
    engine = host_engine()
    if engine is None:
        raise SystemExit("no PostgreSQL engine found (apt-get install postgresql-15-postgis-3)")

    load_before = os.getloadavg()[0]
    base = Path(tempfile.mkdtemp(prefix="roadfeed-bench-feeds-"))
    base.chmod(0o755)
    cluster = Cluster(engine, base / "data")
    ours = nginx = None
    try:
        cluster.initdb()
        cluster.start()
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        url = cluster.url_for("bench")
        migrate(url)
        print(f"[{engine.name}] storing {args.events:,} events and {args.sites:,} sites ...", flush=True)
        asyncio.run(seed(url, args.events, args.sites))

        print(f"starting roadfeed serve ({args.workers} workers) ...", flush=True)
        ours = OurServer(base, url, args.workers)
        ours.wait_ready()
        bodies, etags = {}, {"ours": {}, "nginx": {}}
        for _, path in CASES:
            status, headers, body = request(ours.port, path)
            assert status == 200, (path, status)
            bodies[path], etags["ours"][path] = body, headers["etag"]
            seen = {request(ours.port, path, "HEAD")[1]["etag"] for _ in range(20)}
            assert seen == {headers["etag"]}, f"{path}: workers disagree on the ETag: {seen}"
        nginx = Nginx(base / "nginx", bodies)
        for _, path in CASES:
            status, headers, body = request(nginx.port, path)
            assert status == 200 and body == bodies[path], path
            etags["nginx"][path] = headers["etag"]
        sizes = {path: len(b) for path, b in bodies.items()}

        print(
            f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency, {args.rounds} rounds "
            "per server and case (alternating order)",
            flush=True,
        )
        serving = bench_serving(ours, nginx, etags, base, args)
        nginx.stop()
        nginx = None

        print("feed regeneration after a change ...", flush=True)
        regen = asyncio.run(bench_regeneration(ours, url, args))
        print("SSE delivery ...", flush=True)
        sse = asyncio.run(bench_sse(ours, url, args))
    finally:
        if nginx is not None:
            nginx.stop()
        if ours is not None:
            ours.stop()
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)

    load = (round(load_before, 2), round(os.getloadavg()[0], 2))
    print()
    print(
        f"{os.cpu_count()} CPUs; 1-minute load average {load[0]} before, {load[1]} after (this bench's "
        "server, nginx and wrk share the CPUs with whatever else runs)"
    )
    print(
        f"{'feed':<12}{'path':<6}{'bytes':>11}{'nginx req/s':>14}{'p99 ms':>9}{'ours req/s':>14}{'p99 ms':>9}"
        f"{'ratio':>8}{'target':>9}"
    )
    targets: dict[str, dict[str, Any]] = {}
    goal = {"200": 0.5, "304": 0.35}
    for name, path in CASES:
        for kind in ("200", "304"):
            r = serving[f"{name}.{kind}"]
            ratio = r["ours"]["rps"] / r["nginx"]["rps"]
            size = sizes[path] if kind == "200" else 0
            print(
                f"{name:<12}{kind:<6}{size:>11,}{r['nginx']['rps']:>14,.0f}{r['nginx']['p99_ms']:>9.2f}"
                f"{r['ours']['rps']:>14,.0f}{r['ours']['p99_ms']:>9.2f}{ratio:>8.2f}{'>= ' + str(goal[kind]):>9}"
            )
            targets[f"{name}.{kind}_vs_nginx"] = {"value": round(ratio, 3), "op": ">=", "target": goal[kind]}
    print()
    print("regeneration: stored change -> new ETag seen by polling (p50, max); the publisher's own times (p50):")
    print(
        f"{'feed':<12}{'changes':>8}{'poll p50':>10}{'poll max':>10}{'db read':>9}{'fingerpr.':>10}"
        f"{'render':>8}{'compress':>10}{'target':>9}   (ms)"
    )
    for name, r in regen.items():
        med = {k: statistics.median(v) for k, v in r.items()}
        print(
            f"{name:<12}{len(r['polled_ms']):>8}{med['polled_ms']:>10.1f}{max(r['polled_ms']):>10.1f}"
            f"{med['read_ms']:>9.1f}{med['fingerprint_ms']:>10.1f}{med['generation_ms']:>8.1f}"
            f"{med['compression_ms']:>10.1f}{'< 200':>9}"
        )
        targets[f"{name}.regeneration_ms"] = {"value": round(med["polled_ms"], 1), "op": "<", "target": 200}
    extra: dict[str, Any] = {}
    print()
    if sse is None:
        print("SSE delivery: not measured (feed/http/changes.py is not there)")
        extra["sse"] = "not measured: feed/http/changes.py (/feeds/events/stream) does not exist yet"
    else:
        c, rec = sse["from_commit_ms"], sse["from_recorded_ms"]
        print(
            f"SSE delivery over {len(c)} changes ({sse['lost']} lost): from commit p50 {pct(c, 50):.1f} ms, "
            f"p99 {pct(c, 99):.1f} ms; from recorded (before the write) p50 {pct(rec, 50):.1f} ms, "
            f"p99 {pct(rec, 99):.1f} ms (target p99 < 1000 ms)"
        )
        targets["sse.delivery_p99_ms"] = {"value": round(pct(c, 99), 1), "op": "<", "target": 1000}
        extra["sse"] = {
            "changes": len(c),
            "lost": sse["lost"],
            "from_commit_p50_ms": round(pct(c, 50), 1),
            "from_commit_p99_ms": round(pct(c, 99), 1),
            "from_recorded_p99_ms": round(pct(rec, 99), 1),
        }
    print(
        json.dumps(
            {
                "bench": "feeds",
                "targets": targets,
                "setup": {
                    "events": args.events,
                    "sites": args.sites,
                    "workers": args.workers,
                    "engine": engine.name,
                    "wrk": f"-t{args.threads} -c{args.connections} -d{args.duration}s",
                    "rounds": args.rounds,
                    "bytes": sizes,
                    "cpus": os.cpu_count(),
                    "load_average_before_after": load,
                },
                "req_per_s": {k: {who: round(v["rps"]) for who, v in r.items()} for k, r in serving.items()},
                "p99_ms": {k: {who: round(v["p99_ms"], 2) for who, v in r.items()} for k, r in serving.items()},
                "regeneration_ms": {
                    name: {
                        "polled_p50": round(statistics.median(r["polled_ms"]), 1),
                        "polled_max": round(max(r["polled_ms"]), 1),
                        "publisher_read_p50": round(statistics.median(r["read_ms"]), 1),
                        "publisher_fingerprint_p50": round(statistics.median(r["fingerprint_ms"]), 1),
                        "publisher_render_p50": round(statistics.median(r["generation_ms"]), 1),
                        "publisher_compress_p50": round(statistics.median(r["compression_ms"]), 1),
                    }
                    for name, r in regen.items()
                },
                **extra,
            }
        )
    )


if __name__ == "__main__":
    main()
