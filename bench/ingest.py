"""Ingest benchmark: 2,000,000 measurement rows through the storage API, rollups included.

500 sites x 2 channels x 2,000 hourly intervals, on every engine available here
(host PostgreSQL + PostGIS; PostgreSQL 17 + TimescaleDB when its root
filesystem is built). Reference, in the same run and on the same server:
`psql \\copy` of the same rows into a bare table with the same primary key (a
hypertable on TimescaleDB). Prints a table, then one JSON line with the targets.

Usage: python bench/ingest.py [--sites 500] [--hours 2000] [--batch-hours 100]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from feed.model import ChannelRecord, SiteRecord
from feed.store.cluster import Cluster, Engine, chroot_engine, host_engine
from feed.store.migrations import migrate
from feed.store.storage import Storage

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def build_rows(channel_ids: list[int], hours: int) -> list[list[tuple]]:
    """Rows grouped by hour, as a collector would deliver them."""
    by_hour = []
    for h in range(hours):
        start = T0 + timedelta(hours=h)
        by_hour.append(
            [(c, start, 3600, (c * 7 + h * 13) % 900, 60.0 + (c + h) % 40, None, "observed") for c in channel_ids]
        )
    return by_hour


async def run_ours(url: str, sites: int, hours: int, batch_hours: int) -> dict[str, float]:
    storage = await Storage.open(url, max_size=2)
    try:
        await storage.ensure_source("bench", "comptage-mobilites", "http://127.0.0.1/bench")
        await storage.upsert_sites(
            "bench",
            [
                SiteRecord(external_id=f"S{i}", name=f"site {i}", road="RD613", lon=3.0 + i / 1000, lat=43.5)
                for i in range(sites)
            ],
        )
        await storage.upsert_channels(
            "bench",
            [
                ChannelRecord(site_external_id=f"S{i}", external_id=f"S{i}-{d}", direction=d, time_step=3600)
                for i in range(sites)
                for d in ("N", "S")
            ],
        )
        ids = sorted((await storage.channel_ids("bench")).values())
        by_hour = build_rows(ids, hours)
        batches = [[r for hour in by_hour[i : i + batch_hours] for r in hour] for i in range(0, hours, batch_hours)]
        total = sum(len(b) for b in batches)
        result = {"rows": total}
        for phase in ("first", "again"):
            t = time.perf_counter()
            new = unchanged = 0
            for batch in batches:
                c = await storage.ingest_measurements(batch)
                new += c.new
                unchanged += c.unchanged
            result[phase] = total / (time.perf_counter() - t)
            expected = (total, 0) if phase == "first" else (0, total)
            assert (new, unchanged) == expected, f"{phase}: new={new} unchanged={unchanged}"
        days = await storage.pool.fetchval("SELECT count(*) FROM rollup_daily")
        assert days > 0
        return result
    finally:
        await storage.close()


def write_csv(path: Path, sites: int, hours: int) -> None:
    ids = list(range(1, sites * 2 + 1))
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        for hour in build_rows(ids, hours):
            for c, start, length, count, speed, _occupancy, q in hour:
                w.writerow((c, start.isoformat(), length, count, speed, "", q))


def run_reference(url: str, csv_path: Path, timescale: bool) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS ref_measurements")
        conn.execute("""CREATE TABLE ref_measurements (
                          channel_id integer NOT NULL, start timestamptz NOT NULL, length integer NOT NULL,
                          count integer, speed real, occupancy real, quality quality NOT NULL,
                          PRIMARY KEY (channel_id, start))""")
        if timescale:
            conn.execute(
                "SELECT create_hypertable('ref_measurements', 'start', chunk_time_interval => interval '7 days')"
            )
    rows = sum(1 for _ in csv_path.open())
    t = time.perf_counter()
    subprocess.run(
        [
            "psql",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            url,
            "-c",
            f"\\copy ref_measurements FROM '{csv_path}' WITH (FORMAT csv)",
        ],
        check=True,
    )
    return rows / (time.perf_counter() - t)


def bench_engine(engine: Engine, args: argparse.Namespace, csv_path: Path) -> dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix="roadfeed-bench-", dir=engine.host_path("/tmp")))
    base.chmod(0o755)
    cluster = Cluster(engine, base / "data")
    cluster.initdb()
    cluster.start()
    try:
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        url = cluster.url_for("bench")
        migrate(url)
        print(f"[{engine.name}] reference psql \\copy ...", flush=True)
        ref = run_reference(url, csv_path, engine.timescaledb)
        print(f"[{engine.name}] storage API, first load and re-ingest ...", flush=True)
        ours = asyncio.run(run_ours(url, args.sites, args.hours, args.batch_hours))
        return {"reference": ref, **ours}
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sites", type=int, default=500)
    p.add_argument("--hours", type=int, default=2000)
    p.add_argument("--batch-hours", type=int, default=100)
    args = p.parse_args()
    engines = [e for e in (host_engine(), chroot_engine()) if e is not None]
    if not engines:
        raise SystemExit("no PostgreSQL engine found (apt-get install postgresql-15-postgis-3)")
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "rows.csv"
        Path(tmp).chmod(0o755)
        write_csv(csv_path, args.sites, args.hours)
        results = {e.name: bench_engine(e, args, csv_path) for e in engines}

    print()
    print(
        f"{'engine':<20}{'rows':>11}{'psql copy r/s':>17}{'first load r/s':>17}{'ratio':>7}"
        f"{'re-ingest r/s':>16}{'ratio':>7}"
    )
    targets = {}
    for name, r in results.items():
        first, again = r["first"] / r["reference"], r["again"] / r["reference"]
        print(
            f"{name:<20}{r['rows']:>11,}{r['reference']:>17,.0f}{r['first']:>17,.0f}{first:>7.2f}"
            f"{r['again']:>16,.0f}{again:>7.2f}"
        )
        targets[f"{name}.first_load_vs_copy"] = {"value": round(first, 3), "op": ">=", "target": 0.5}
        targets[f"{name}.reingest_vs_copy"] = {"value": round(again, 3), "op": ">=", "target": 0.5}
    print(
        json.dumps(
            {
                "bench": "ingest",
                "targets": targets,
                "rows_per_s": {n: {k: round(v) for k, v in r.items()} for n, r in results.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
