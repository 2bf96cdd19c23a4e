"""Bytes per stored row and minute-batch ingest capacity, on every engine available here.

One-minute measurements of `--sites` sites x `--lanes` lanes are stored minute
after minute through the storage API (one batch per minute, rollups included:
what a national poll does each minute), then the tables' sizes are read. The
capacity is compared with a national network's minute: 20,000 sites x 4 lanes =
80,000 rows a minute (headroom = rows a minute we store / 80,000). Reference in
the same run: the same rows through `COPY` into a bare table with the same key.
The figures feed SCALING.md.

    .venv/bin/python bench/storage_size.py [--sites 2000 --lanes 4 --minutes 36]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from feed.model import ChannelRecord, SiteRecord
from feed.store.cluster import Cluster, Engine, chroot_engine, host_engine
from feed.store.migrations import migrate
from feed.store.storage import Storage

NATIONAL_ROWS_PER_MINUTE = 20_000 * 4
START = datetime(2026, 3, 2, tzinfo=UTC)


def minute_rows(channel_ids: list[int], minute: int) -> list[tuple]:
    start = START + timedelta(minutes=minute)
    return [
        (
            c,
            start,
            60,
            (c * 7 + minute * 13) % 40,
            60.0 + (c + minute) % 50,
            None,
            "observed" if (c + minute) % 97 else "missing",
        )
        for c in channel_ids
    ]


async def run_ours(url: str, sites: int, lanes: int, minutes: int) -> dict[str, float]:
    storage = await Storage.open(url)
    try:
        await storage.ensure_source("nat", "datex2", "http://127.0.0.1:9/")
        await storage.upsert_sites("nat", [SiteRecord(external_id=f"S{s}", lon=5.0, lat=52.0) for s in range(sites)])
        await storage.upsert_channels(
            "nat",
            [
                ChannelRecord(site_external_id=f"S{s}", external_id=f"S{s}-{lane}", lane=lane, time_step=60)
                for s in range(sites)
                for lane in range(lanes)
            ],
        )
        ids = sorted((await storage.channel_ids("nat")).values())
        batches = [minute_rows(ids, m) for m in range(minutes)]
        durations = []
        for rows in batches:
            t = time.perf_counter()
            await storage.ingest_measurements(rows)
            durations.append(time.perf_counter() - t)
        durations.sort()
        rows = len(ids) * minutes
        return {
            "rows": rows,
            "rows_per_s": rows / sum(durations),
            "batch_p50_s": durations[len(durations) // 2],
            "batch_p95_s": durations[int(len(durations) * 0.95)],
        }
    finally:
        await storage.close()


def sizes(url: str, timescale: bool) -> dict[str, float]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        size = "hypertable_size('measurements')" if timescale else "pg_total_relation_size('measurements')"
        measurements, rows = conn.execute(f"SELECT {size}, (SELECT count(*) FROM measurements)").fetchone()
        hourly, hrows = conn.execute(
            "SELECT pg_total_relation_size('rollup_hourly'), count(*) FROM rollup_hourly"
        ).fetchone()
        daily, drows = conn.execute(
            "SELECT pg_total_relation_size('rollup_daily'), count(*) FROM rollup_daily"
        ).fetchone()
    return {
        "bytes_per_row": measurements / rows,
        "hourly_bytes_per_row": hourly / max(hrows, 1),
        "daily_bytes_per_row": daily / max(drows, 1),
    }


def reference(url: str, channel_ids: list[int], minutes: int, timescale: bool) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("""CREATE TABLE ref_measurements (
                          channel_id integer NOT NULL, start timestamptz NOT NULL, length integer NOT NULL,
                          count integer, speed real, occupancy real, quality quality NOT NULL,
                          PRIMARY KEY (channel_id, start))""")
        if timescale:
            conn.execute(
                "SELECT create_hypertable('ref_measurements', 'start', chunk_time_interval => interval '7 days')"
            )
        t = time.perf_counter()
        with conn.cursor() as cur:
            for m in range(minutes):
                with cur.copy("COPY ref_measurements FROM STDIN") as copy:
                    for row in minute_rows(channel_ids, m):
                        copy.write_row(row)
        return len(channel_ids) * minutes / (time.perf_counter() - t)


def bench_engine(engine: Engine, args: argparse.Namespace) -> dict[str, float]:
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
        print(f"[{engine.name}] {args.minutes} one-minute batches of {args.sites * args.lanes:,} rows ...", flush=True)
        ours = asyncio.run(run_ours(url, args.sites, args.lanes, args.minutes))
        with psycopg.connect(url) as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM channels ORDER BY id")]
        ref = reference(url, ids, args.minutes, engine.timescaledb)
        return {**ours, **sizes(url, engine.timescaledb), "copy_rows_per_s": ref}
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sites", type=int, default=2000)
    p.add_argument("--lanes", type=int, default=4)
    p.add_argument("--minutes", type=int, default=36)
    args = p.parse_args()
    engines = [e for e in (host_engine(), chroot_engine()) if e is not None]
    if not engines:
        raise SystemExit("no PostgreSQL engine found (apt-get install postgresql-15-postgis-3)")
    results = {e.name: bench_engine(e, args) for e in engines}
    print()
    print(
        f"{'engine':<20}{'rows':>10}{'ours r/s':>11}{'COPY r/s':>11}{'ratio':>7}{'batch p95 s':>13}"
        f"{'headroom':>10}{'B/row':>8}{'B/hour row':>12}{'B/day row':>11}"
    )
    targets = {}
    for name, r in results.items():
        headroom = r["rows_per_s"] * 60 / NATIONAL_ROWS_PER_MINUTE
        ratio = r["rows_per_s"] / r["copy_rows_per_s"]
        print(
            f"{name:<20}{r['rows']:>10,}{r['rows_per_s']:>11,.0f}{r['copy_rows_per_s']:>11,.0f}{ratio:>7.2f}"
            f"{r['batch_p95_s']:>13.3f}{headroom:>10.1f}{r['bytes_per_row']:>8.0f}"
            f"{r['hourly_bytes_per_row']:>12.0f}{r['daily_bytes_per_row']:>11.0f}"
        )
        targets[f"{name}.store_headroom"] = {"value": round(headroom, 2), "op": ">=", "target": 20}
        targets[f"{name}.vs_copy"] = {"value": round(ratio, 3), "op": ">=", "target": 0.5}
    print(
        json.dumps(
            {
                "bench": "storage_size",
                "targets": targets,
                "figures": {n: {k: round(v, 3) for k, v in r.items()} for n, r in results.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
