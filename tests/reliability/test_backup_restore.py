"""Backup and restore: `pg_dump -Fc` of a populated database, `pg_restore` into a
fresh one on the same server, every table equal afterwards, and the restored
database goes on collecting where the original stopped. On TimescaleDB the
documented procedure: `timescaledb_pre_restore()`, pg_restore, `timescaledb_post_restore()`."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import aiohttp
import psycopg

from collectors.fetch import Fetcher, FetchPolicy
from feed.collect.poll import poll_source
from feed.config import PublicationConfig, SourceConfig
from feed.store.storage import Storage
from reliability_support import Simulator, T, assert_equals_truth, counter_source

HERAULT = PublicationConfig()


def run(server, program: str, *args: str) -> None:
    cmd = server.engine.command(program, *args)
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)}: {done.stdout}{done.stderr}"


def table_digests(url: str) -> dict[str, tuple[int, str]]:
    with psycopg.connect(url) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
        out = {}
        for t in tables:
            out[t] = conn.execute(
                f"SELECT count(*), coalesce(md5(string_agg(x::text, E'\\n' ORDER BY x::text)), '') FROM \"{t}\" x"
            ).fetchone()
        return out


async def test_dump_and_restore_into_a_fresh_database(server, db_url):
    async with Simulator(history_days=1) as sim, aiohttp.ClientSession() as session:
        fetcher = Fetcher(session, FetchPolicy(timeout=10, retries=0))
        counters = counter_source(sim.url)
        datex = SourceConfig(id="sim-datex2", kind="datex2", url=sim.url + "/datex2/v3/situations.xml")
        storage = await Storage.open(db_url)
        try:
            for source in (counters, counters, datex):
                report = await poll_source(source, storage, fetcher, HERAULT, now=T)
                assert report.stats.error is None, report.line()
            await assert_equals_truth(storage.pool, sim)
        finally:
            await storage.close()
        original = table_digests(db_url)
        assert original["measurements"][0] > 5000 and original["events"][0] > 0

        work = Path(tempfile.mkdtemp(dir=server.engine.host_path("/tmp")))
        work.chmod(0o777)
        dump = server.engine.inner_path(work) + "/roadfeed.dump"
        dbname = db_url.rsplit("/", 1)[1]
        port = str(server.cluster.port)
        conn_args = ["-h", "127.0.0.1", "-p", port, "-U", "postgres"]
        run(server, "pg_dump", *conn_args, "-Fc", "-f", dump, dbname)

        restored = dbname + "_restored"
        with psycopg.connect(server.cluster.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{restored}" TEMPLATE template0')
        restored_url = server.cluster.url_for(restored)
        if server.engine.timescaledb:
            with psycopg.connect(restored_url, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                conn.execute("SELECT timescaledb_pre_restore()")
            run(server, "pg_restore", *conn_args, "-d", restored, dump)
            with psycopg.connect(restored_url, autocommit=True) as conn:
                conn.execute("SELECT timescaledb_post_restore()")
        else:
            run(server, "pg_restore", *conn_args, "-d", restored, dump)

        assert table_digests(restored_url) == original

        # The restored database is a working one: sequences, watermark and ETag came along.
        storage = await Storage.open(restored_url)
        try:
            again = await poll_source(counters, storage, fetcher, HERAULT, now=T)
            assert again.stats.error is None and again.stats.counts.new == 0, again.line()
            last_run = await storage.pool.fetchval("SELECT max(id) FROM source_runs")
            assert last_run == await psycopg_max_run(db_url) + 1
            if server.engine.timescaledb:
                assert (
                    await storage.pool.fetchval(
                        "SELECT count(*) FROM timescaledb_information.hypertables "
                        "WHERE hypertable_name = 'measurements'"
                    )
                    == 1
                )
            await assert_equals_truth(storage.pool, sim)
        finally:
            await storage.close()


async def psycopg_max_run(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT max(id) FROM source_runs").fetchone()[0]
