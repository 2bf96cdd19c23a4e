"""History benchmark: the /api/v1 history API against DuckDB over Parquet of the same data.

On every engine available here (host PostgreSQL + PostGIS; PostgreSQL 17 +
TimescaleDB when its root filesystem is built), 500 sites x 2 directions x 2
classes (light, heavy) of hourly counts are loaded through the storage API
(rollups included): a year in one database, a month in another. The API runs
in its own process (`feed.http.api` routes only) and is queried over HTTP:

1. one site's daily series for a year (`/api/v1/sites/{id}/counts?step=day`),
2. the annual table of the year (`/api/v1/annual`),
3. the month's hourly data of every site as CSV (`/api/v1/downloads/{year}/hourly.csv`,
   the month database holds only that month): rows/s and the server's peak
   memory growth (VmHWM) during the download; the Parquet file too, for information.

Reference, same run and machine: DuckDB over a Parquet file of the same hourly
rows (the columns of our hourly.parquet, sorted by site, channel and hour): the
same series, the same annual table (checked equal), the same month as CSV.
The targets compare like with like: our query time in process (the handler's
read transaction, the site lookup, the series or table) against DuckDB's query
time; the HTTP round trip (another process, JSON) is shown beside it.

4. the backfill of `--backfill-days` (default 345) of the simulator's 61 sites from
   its Opendatasoft export (`roadfeed simulate` in its own process, our real
   collector's first poll with `backfill_days` in another): wall time and the
   collector process's peak memory (its ru_maxrss), validation and rollups included.

Prints a table, then one JSON line with the targets:
series <= 0.5 x DuckDB, annual <= 0.5 x DuckDB, CSV >= 100,000 rows/s,
backfill <= 120 s and <= 300 MB.

Usage: python bench/history.py [--sites 500] [--days 365] [--month-days 31] [--repeat 30]
                               [--backfill-days 345] [--engine NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import duckdb
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq

from feed.config import Config
from feed.model import ChannelRecord, SiteRecord
from feed.store import history
from feed.store.cluster import Cluster, Engine, chroot_engine, free_port, host_engine
from feed.store.migrations import migrate
from feed.store.storage import Storage
from feed.store.transactions import reading

TZ = "Europe/Paris"
PARIS = ZoneInfo(TZ)
YEAR = 2025
MONTH = date(2025, 7, 1)
CHANNELS = [(d, c) for d in ("N", "S") for c in ("light", "heavy")]
ROW_GROUP = 122_880  # rows per Parquet row group in the reference file (DuckDB's default)

SERVER = r"""
import asyncio, sys
from aiohttp import web
from feed.http.api import api_routes
from feed.config import Config
from feed.publish.publisher import FeedPublisher
from feed.http.app import build_app
from feed.store.storage import Storage

class NoFeeds(FeedPublisher):
    async def start(self): return None
    async def stop(self): return None

async def main(url, port):
    storage = await Storage.open(url, max_size=4)
    config = Config()
    app = build_app(config, storage, publisher=NoFeeds(storage, config), routes=[api_routes])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


# One backfill poll of the simulator's counters (argv: database URL, simulator URL,
# days): prints the poll's report line, then its own peak memory (kB) on the last line.
BACKFILL = r"""
import asyncio, resource, sys
import aiohttp
from collectors.fetch import Fetcher
from feed.collect.poll import poll_source
from feed.config import Config, SourceConfig
from feed.simulator.sources import simulator_sources
from feed.store.storage import Storage

async def main(url, sim_url, days):
    entry = next(e for e in simulator_sources(sim_url) if e["options"].get("dataset_type") == "counters")
    entry["options"] = {**entry["options"], "backfill_days": days}
    config = Config(sources=[SourceConfig(**entry)])
    storage = await Storage.open(url, max_size=4)
    try:
        async with aiohttp.ClientSession() as session:
            report = await poll_source(config.sources[0], storage, Fetcher(session), config.publication)
        print(report.line(), flush=True)
    finally:
        await storage.close()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
    sys.exit(0 if report.stats.error is None else 1)

asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
"""


def bench_backfill(url: str, days: float) -> dict[str, Any]:
    """Backfills `days` from the simulator's export; wall time, rows stored, collector peak memory."""
    port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "feed.cli", "simulate", "--port", str(port), "--history-days", str(days + 1)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sim.stdout is not None
        for line in sim.stdout:  # ready once it says where it serves
            if "simulated now" in line:
                break
        t = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", BACKFILL, url, f"http://127.0.0.1:{port}", str(days)], capture_output=True, text=True
        )
        seconds = time.perf_counter() - t
    finally:
        sim.terminate()
        sim.wait()
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT count(*) FROM measurements").fetchone()[0]
    lines = done.stdout.strip().splitlines()
    peak_mb = int(lines[-1]) / 1024 if lines and lines[-1].isdigit() else float("nan")
    print(f"    backfill: {lines[0] if lines else done.stderr.strip()[-2000:]}", flush=True)
    return {
        "backfill_s": seconds,
        "backfill_rows": rows,
        "backfill_peak_mb": peak_mb,
        "backfill_ok": done.returncode == 0,
    }


def count(channel: int, hour: int, vehicle_class: str) -> int:
    base = 300 if vehicle_class == "light" else 30
    return base + (channel * 7 + hour * 13) % 200


def hour_rows(ids: list[tuple[int, str]], first: datetime, hours: range) -> list[tuple]:
    """Measurement rows for the given hours (about one in a thousand missing, as sensors do)."""
    rows = []
    for h in hours:
        start = first + timedelta(hours=h)
        for cid, vehicle_class in ids:
            if (cid * 31 + h) % 997 == 0:
                continue
            rows.append((cid, start, 3600, count(cid, h, vehicle_class), 60.0 + (cid + h) % 40, None, "observed"))
    return rows


async def load(url: str, sites: int, first: datetime, days: int) -> list[tuple[int, str]]:
    storage = await Storage.open(url, max_size=2)
    try:
        await storage.ensure_source("bench", "comptage-mobilites", "http://127.0.0.1/bench")
        await storage.upsert_sites(
            "bench",
            [
                SiteRecord(
                    external_id=f"S{i:03d}",
                    name=f"site {i}",
                    road=f"RD{600 + i % 20}",
                    insee=f"34{i % 300:03d}",
                    lon=3.0 + i / 1000,
                    lat=43.5,
                )
                for i in range(sites)
            ],
        )
        await storage.upsert_channels(
            "bench",
            [
                ChannelRecord(
                    site_external_id=f"S{i:03d}",
                    external_id=f"S{i:03d}-{d}-{c}",
                    direction=d,
                    vehicle_class=c,
                    time_step=3600,
                )
                for i in range(sites)
                for d, c in CHANNELS
            ],
        )
        by_ext = await storage.channel_ids("bench")
        ids = sorted((cid, ext.rsplit("-", 1)[1]) for ext, cid in by_ext.items())
        first_utc = first.astimezone(UTC)
        end = (first + timedelta(days=days)).astimezone(UTC)
        hours = int((end - first_utc).total_seconds() // 3600)
        t = time.perf_counter()
        for h in range(0, hours, 24):
            await storage.ingest_measurements(hour_rows(ids, first_utc, range(h, min(h + 24, hours))))
        print(f"    loaded {len(ids)} channels x {hours} hours in {time.perf_counter() - t:.0f} s", flush=True)
        return ids
    finally:
        await storage.close()


def write_parquet(path: Path, ids: list[tuple[int, str]], first: datetime, days: int) -> int:
    """The same hourly rows as our hourly.parquet (its columns), sorted by site, channel and hour."""
    end = (first + timedelta(days=days)).astimezone(UTC)
    hours = int((end - first.astimezone(UTC)).total_seconds() // 3600)
    schema = pa.schema(
        [
            ("site_id", pa.int32()),
            ("channel_id", pa.int32()),
            ("direction", pa.string()),
            ("vehicle_class", pa.string()),
            ("period_start", pa.timestamp("ms", tz=TZ)),
            ("count", pa.int64()),
            ("speed", pa.float64()),
            ("coverage", pa.float64()),
            ("intervals_present", pa.int32()),
            ("intervals_expected", pa.int32()),
        ]
    )
    start_ms = int(first.astimezone(UTC).timestamp() * 1000)
    rows = 0
    pending: list[pa.Table] = []
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for i, (cid, vehicle_class) in enumerate(ids):
            hs = [h for h in range(hours) if (cid * 31 + h) % 997]
            n = len(hs)
            pending.append(
                pa.table(
                    {
                        "site_id": pa.array([i // 4 + 1] * n, pa.int32()),
                        "channel_id": pa.array([cid] * n, pa.int32()),
                        "direction": pa.array([CHANNELS[i % 4][0]] * n),
                        "vehicle_class": pa.array([vehicle_class] * n),
                        "period_start": pa.array([start_ms + h * 3_600_000 for h in hs], pa.timestamp("ms", tz=TZ)),
                        "count": pa.array([count(cid, h, vehicle_class) for h in hs], pa.int64()),
                        "speed": pa.array([60.0 + (cid + h) % 40 for h in hs], pa.float64()),
                        "coverage": pa.array([1.0] * n),
                        "intervals_present": pa.array([1] * n, pa.int32()),
                        "intervals_expected": pa.array([1] * n, pa.int32()),
                    },
                    schema=schema,
                )
            )
            rows += n
            if sum(t.num_rows for t in pending) >= ROW_GROUP or i == len(ids) - 1:
                table = pa.concat_tables(pending)
                full = table.num_rows if i == len(ids) - 1 else table.num_rows // ROW_GROUP * ROW_GROUP
                writer.write_table(table.slice(0, full), row_group_size=ROW_GROUP)
                pending = [table.slice(full)]
    return rows


DUCK_SERIES = f"""
SELECT CAST(timezone('{TZ}', period_start) AS DATE) AS day, sum(count) AS count,
       sum(intervals_present) / (count(*) + 0.0) AS coverage, sum(speed * count) / sum(count) AS speed
  FROM read_parquet($file) WHERE site_id = $site GROUP BY 1 ORDER BY 1"""

DUCK_ANNUAL = f"""
WITH d AS (
    SELECT site_id, CAST(timezone('{TZ}', period_start) AS DATE) AS day, sum(count) AS count,
           sum(count) FILTER (WHERE vehicle_class = 'heavy') AS heavy,
           sum(intervals_present) / (4.0 * (epoch(timezone('{TZ}', CAST(day AS TIMESTAMP) + INTERVAL 1 DAY))
                                           - epoch(timezone('{TZ}', CAST(day AS TIMESTAMP)))) / 3600) AS coverage,
           sum(speed * count) AS sws, sum(count) AS sc
      FROM read_parquet($file) GROUP BY 1, 2)
SELECT site_id, count(*) FILTER (WHERE coverage >= 0.95) AS days_valid,
       avg(count) FILTER (WHERE coverage >= 0.95) AS tmja,
       avg(count) FILTER (WHERE coverage >= 0.95 AND isodow(day) <= 5) AS tmjo,
       sum(heavy) FILTER (WHERE coverage >= 0.95) / sum(count) FILTER (WHERE coverage >= 0.95) AS heavy_share,
       sum(sws) FILTER (WHERE coverage >= 0.95) / sum(sc) FILTER (WHERE coverage >= 0.95) AS mean_speed
  FROM d GROUP BY site_id ORDER BY site_id"""


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def bench_duckdb(path: Path, month_path: Path, site: int, repeat: int, tmp: Path) -> dict[str, Any]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    series = []
    for _ in range(repeat):
        t = time.perf_counter()
        con.execute(DUCK_SERIES, {"file": str(path), "site": site}).fetchall()
        series.append(time.perf_counter() - t)
    annual = []
    rows: list[Any] = []
    for _ in range(max(3, repeat // 6)):
        t = time.perf_counter()
        rows = con.execute(DUCK_ANNUAL, {"file": str(path)}).fetchall()
        annual.append(time.perf_counter() - t)
    month_rows = con.execute("SELECT count(*) FROM read_parquet($file)", {"file": str(month_path)}).fetchone()[0]
    t = time.perf_counter()
    con.execute(f"COPY (SELECT * FROM read_parquet('{month_path}')) TO '{tmp / 'month.csv'}' (HEADER)")
    csv_rate = month_rows / (time.perf_counter() - t)
    return {
        "series_ms": median_ms(series),
        "annual_ms": median_ms(annual),
        "csv_rows_per_s": csv_rate,
        "annual": {r[0]: r for r in rows},
    }


class Server:
    """The API in its own process, so its memory is its own."""

    def __init__(self, url: str):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, url, str(self.port)],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"ready":
            raise SystemExit("the API server did not start")
        self.base = f"http://127.0.0.1:{self.port}"

    def peak_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    def reset_peak(self) -> bool:
        try:
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def timed(call: Callable[[], Awaitable[Any]], repeat: int) -> tuple[float, Any]:
    samples, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = await call()
        samples.append(time.perf_counter() - t)
    return median_ms(samples), result


async def bench_api(year_url: str, month_url: str, site: int, repeat: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    server = Server(year_url)
    try:
        async with aiohttp.ClientSession(server.base, auto_decompress=False) as http:

            async def get(path: str) -> Any:
                async with http.get(path, headers={"Accept-Encoding": "identity"}) as r:
                    assert r.status == 200, await r.text()
                    return json.loads(await r.read())

            series_path = f"/api/v1/sites/{site}/counts?from={YEAR}-01-01&to={YEAR + 1}-01-01&step=day"
            await get(series_path)
            out["series_ms"], doc = await timed(lambda: get(series_path), repeat)
            assert len(doc["points"]) == 365
            await get(f"/api/v1/annual?year={YEAR}")
            out["annual_ms"], doc = await timed(lambda: get(f"/api/v1/annual?year={YEAR}"), max(3, repeat // 6))
            out["annual"] = {r["site_id"]: r for r in doc["rows"]}
    finally:
        server.stop()

    # The same work in process, as DuckDB's figures are: the handler's read transaction
    # (statement timeout), the site with its channels, the series or the table.
    storage = await Storage.open(year_url, max_size=2)
    try:
        config = Config()
        start, end = datetime(YEAR, 1, 1, tzinfo=PARIS), datetime(YEAR + 1, 1, 1, tzinfo=PARIS)

        async def series() -> list[history.Point]:
            async with reading(storage.pool, config.database.statement_timeout_ms) as conn:
                found = await history.site(conn, site, TZ)
                assert found is not None
                return await history.channel_series(conn, history.select_channels(found), start, end, "day", TZ)

        async def annual() -> list[history.AnnualRow]:
            async with reading(storage.pool, config.database.statement_timeout_ms) as conn:
                return await history.annual_table(conn, YEAR, 0.95)

        await series()
        out["series_query_ms"], _ = await timed(series, repeat)
        out["annual_query_ms"], _ = await timed(annual, max(3, repeat // 6))
    finally:
        await storage.close()

    server = Server(month_url)
    try:
        async with aiohttp.ClientSession(server.base) as http:
            for name in ("hourly.csv", "hourly.parquet"):
                measured = server.reset_peak()
                before = server.peak_kib()
                t = time.perf_counter()
                size = lines = 0
                async with http.get(
                    f"/api/v1/downloads/{MONTH.year}/{name}", headers={"Accept-Encoding": "identity"}
                ) as r:
                    assert r.status == 200
                    async for chunk in r.content.iter_chunked(1 << 20):
                        size += len(chunk)
                        lines += chunk.count(b"\n")
                elapsed = time.perf_counter() - t
                if name == "hourly.csv":
                    out["csv_rows"] = lines - 1
                    out["csv_rows_per_s"] = (lines - 1) / elapsed
                    out["csv_mb"] = size / 1e6
                    out["csv_peak_growth_mb"] = (server.peak_kib() - before) / 1024 if measured else None
                else:
                    out["parquet_s"] = elapsed
                    out["parquet_mb"] = size / 1e6
                    out["parquet_peak_growth_mb"] = (server.peak_kib() - before) / 1024 if measured else None
    finally:
        server.stop()
    out["parquet_rows_per_s"] = out["csv_rows"] / out["parquet_s"]
    return out


def bench_engine(engine: Engine, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="roadfeed-bench-", dir=engine.host_path("/tmp")))
    base.chmod(0o755)
    cluster = Cluster(engine, base / "data", durable=False)
    cluster.initdb()
    cluster.start()
    try:
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE year")
            conn.execute("CREATE DATABASE month")
            conn.execute("CREATE DATABASE backfill")
        urls = {name: cluster.url_for(name) for name in ("year", "month", "backfill")}
        for url in urls.values():
            migrate(url)
        if args.backfill_only:
            print(
                f"[{engine.name}] backfilling {args.backfill_days:g} days from the simulator's export ...", flush=True
            )
            return {"ours": bench_backfill(urls["backfill"], args.backfill_days), "duckdb": {}}
        first = datetime(YEAR, 1, 1, tzinfo=PARIS)
        month_first = datetime(MONTH.year, MONTH.month, 1, tzinfo=PARIS)
        print(f"[{engine.name}] loading a year ...", flush=True)
        ids = asyncio.run(load(urls["year"], args.sites, first, args.days))
        print(f"[{engine.name}] loading a month ...", flush=True)
        asyncio.run(load(urls["month"], args.sites, month_first, args.month_days))
        for url in urls.values():
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE")
        year_parquet, month_parquet = tmp / "year.parquet", tmp / "month.parquet"
        if not year_parquet.exists():
            write_parquet(year_parquet, ids, first, args.days)
            write_parquet(month_parquet, ids, month_first, args.month_days)
        site = args.sites // 2
        print(f"[{engine.name}] measuring ...", flush=True)
        ours = asyncio.run(bench_api(urls["year"], urls["month"], site, args.repeat))
        ref = bench_duckdb(year_parquet, month_parquet, site, args.repeat, tmp)
        for site_id, row in ours.pop("annual").items():  # the same table, or the comparison means nothing
            duck = ref["annual"][site_id]
            assert row["days_valid"] == duck[1] and abs(row["tmja"] - duck[2]) < 0.06, (row, duck)
            assert abs(row["heavy_share"] - duck[4]) < 6e-5, (row, duck)
        ref.pop("annual")
        print(f"[{engine.name}] backfilling {args.backfill_days:g} days from the simulator's export ...", flush=True)
        ours.update(bench_backfill(urls["backfill"], args.backfill_days))
        return {"ours": ours, "duckdb": ref}
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sites", type=int, default=500)
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--month-days", type=int, default=31)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--backfill-days", type=float, default=345)
    p.add_argument("--backfill-only", action="store_true", help="only the backfill (4.), not the 17.5 M rows")
    p.add_argument("--engine", action="append", help="pg15-postgis or pg17-timescaledb (default: every one found)")
    args = p.parse_args()
    engines = [e for e in (host_engine(), chroot_engine()) if e is not None and e.name in (args.engine or [e.name])]
    if not engines:
        raise SystemExit("no PostgreSQL engine found (apt-get install postgresql-15-postgis-3)")
    with tempfile.TemporaryDirectory() as tmp:
        results = {e.name: bench_engine(e, args, Path(tmp)) for e in engines}

    print()
    if not args.backfill_only:
        print(f"{'':<18}{'site daily series, ms':^32}{'annual table, ms':^32}{'month hourly CSV':^28}")
        print(
            f"{'engine':<18}{'query':>8}{'http':>8}{'duckdb':>8}{'ratio':>8}{'query':>8}{'http':>8}{'duckdb':>8}"
            f"{'ratio':>8}{'rows/s':>10}{'peak MB':>9}{'duckdb':>11}{'parquet r/s':>13}"
        )
    targets = {}
    for name, r in results.items():
        o, d = r["ours"], r["duckdb"]
        if not args.backfill_only:
            targets.update(api_targets(name, o, d))
        print(
            f"{name:<18}backfill of {args.backfill_days:g} days: {o['backfill_rows']:,} rows in "
            f"{o['backfill_s']:.1f} s ({o['backfill_rows'] / o['backfill_s']:,.0f} rows/s), collector peak "
            f"{o['backfill_peak_mb']:.0f} MB{'' if o['backfill_ok'] else ', FAILED'}"
        )
        targets[f"{name}.backfill_s"] = {
            "value": round(o["backfill_s"], 1) if o["backfill_ok"] else None,
            "op": "<=",
            "target": 120,
        }
        targets[f"{name}.backfill_peak_mb"] = {"value": round(o["backfill_peak_mb"]), "op": "<=", "target": 300}
    print(
        json.dumps(
            {
                "bench": "history",
                "targets": targets,
                "results": {
                    n: {
                        k: {m: (round(v, 3) if isinstance(v, float) else v) for m, v in part.items()}
                        for k, part in r.items()
                    }
                    for n, r in results.items()
                },
            }
        )
    )


def api_targets(name: str, o: dict[str, Any], d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Prints one engine's row of the API table; returns its targets."""
    series, annual = o["series_query_ms"] / d["series_ms"], o["annual_query_ms"] / d["annual_ms"]
    peak = "n/a" if o["csv_peak_growth_mb"] is None else f"{o['csv_peak_growth_mb']:.1f}"
    print(
        f"{name:<18}{o['series_query_ms']:>8.2f}{o['series_ms']:>8.2f}{d['series_ms']:>8.2f}{series:>8.2f}"
        f"{o['annual_query_ms']:>8.0f}{o['annual_ms']:>8.0f}{d['annual_ms']:>8.0f}{annual:>8.2f}"
        f"{o['csv_rows_per_s']:>10,.0f}{peak:>9}{d['csv_rows_per_s']:>11,.0f}{o['parquet_rows_per_s']:>13,.0f}"
    )
    return {
        f"{name}.site_daily_series_vs_duckdb": {"value": round(series, 3), "op": "<=", "target": 0.5},
        f"{name}.annual_table_vs_duckdb": {"value": round(annual, 3), "op": "<=", "target": 0.5},
        f"{name}.month_hourly_csv_rows_per_s": {"value": round(o["csv_rows_per_s"]), "op": ">=", "target": 100_000},
    }


if __name__ == "__main__":
    main()
