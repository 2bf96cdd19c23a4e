"""Ids: polling known sites and channels draws nothing from their sequences, and
every id that grows with time (one per run, per event version, per quarantined
record, per marking) is 64-bit.

The class of defect: an `INSERT ... ON CONFLICT DO UPDATE` on a table whose key
comes from a sequence draws one value per row offered, inserted or not. Its
members are every upsert of a sequence-keyed table; the tests below find the
sequence-keyed tables from the catalogue, so a new one is covered too.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp
import psycopg
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collectors.fetch import Fetcher
from feed.collect.poll import poll_source
from feed.config import PublicationConfig, SourceConfig
from feed.model import ChannelRecord, SiteRecord
from feed.simulator.clock import SimClock
from feed.simulator.server import build_simulator_app
from feed.simulator.sources import simulator_sources
from feed.store.storage import Storage

SEQUENCES = """
SELECT c.relname AS tbl, a.attname AS col, format_type(a.atttypid, a.atttypmod) AS col_type,
       s.seqtypid::regtype::text AS seq_type, pg_get_serial_sequence(c.relname, a.attname) AS seq
  FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
  JOIN pg_depend d ON d.refobjid = c.oid AND d.refobjsubid = a.attnum AND d.deptype IN ('a', 'i')
  JOIN pg_sequence s ON s.seqrelid = d.objid
 WHERE c.relnamespace = 'public'::regnamespace
 ORDER BY 1"""

# Tables that gain rows as time passes, whatever the network's size.
GROWS_WITH_TIME = {"source_runs", "event_versions", "quarantine", "markings"}


async def sequence_positions(storage: Storage) -> dict[str, int]:
    rows = await storage.pool.fetch(SEQUENCES)
    out = {}
    for r in rows:
        out[r["tbl"]] = await storage.pool.fetchval(
            f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {r['seq']}"
        )
    return out


def test_ids_that_grow_with_time_are_64_bit(db_url):
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(SEQUENCES).fetchall()
    tables = {r[0]: r for r in rows}
    assert tables.keys() >= GROWS_WITH_TIME
    for name in GROWS_WITH_TIME:
        assert tables[name][2] == "bigint" and tables[name][3] == "bigint", tables[name]


def _site(ext: str, name: str, lon: float) -> SiteRecord:
    return SiteRecord(external_id=ext, name=name, road="RD613", lon=lon, lat=43.5)


site_keys = st.sampled_from([f"s{i}" for i in range(12)])
rounds = st.lists(  # each round: the sites (and their channels) offered by one poll
    st.lists(
        st.tuples(
            site_keys,
            st.sampled_from(["a", "b"]),
            st.sampled_from([3.1, 3.2]),
            st.sampled_from([360, 3600]),
            st.booleans(),
        ),
        min_size=1,
        max_size=12,
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(polls=rounds)
async def test_known_sites_and_channels_draw_no_ids(server, polls):
    """Sites and channels offered many times, some changed: each sequence advances
    exactly by the number of rows inserted, ids stay dense, and the counts say what changed."""
    storage = await Storage.open(server.new_database())
    try:
        await storage.ensure_source("src", "datex2", "http://127.0.0.1/")
        stored_sites: dict[str, tuple[str, float]] = {}
        stored_channels: dict[str, int] = {}
        for poll in polls:
            offered = {key: (name, lon) for key, name, lon, _, _ in poll}  # the last one wins
            counts = await storage.upsert_sites("src", [_site(k, n, lon) for k, n, lon, _, _ in poll])
            assert counts.new == len(offered.keys() - stored_sites.keys())
            assert counts.updated == sum(1 for k, v in offered.items() if k in stored_sites and stored_sites[k] != v)
            stored_sites.update(offered)
            chans = {f"{k}-{'n' if both else 'x'}": step for k, _, _, step, both in poll}
            ccounts = await storage.upsert_channels(
                "src",
                [
                    ChannelRecord(
                        site_external_id=ext.split("-")[0], external_id=ext, direction="north", time_step=step
                    )
                    for ext, step in chans.items()
                ],
            )
            assert ccounts.new == len(chans.keys() - stored_channels.keys())
            assert ccounts.updated == sum(
                1 for k, v in chans.items() if k in stored_channels and stored_channels[k] != v
            )
            stored_channels.update(chans)
            positions = await sequence_positions(storage)
            assert positions["sites"] == len(stored_sites)
            assert positions["channels"] == len(stored_channels)
        assert await storage.pool.fetchval("SELECT max(id) = count(*) FROM sites")
        assert await storage.pool.fetchval("SELECT max(id) = count(*) FROM channels")
    finally:
        await storage.close()


async def test_polling_a_source_again_and_again_draws_no_ids(storage):
    """Whole polls (fetch, parse, store) of the simulator's counting sites, hour after
    simulated hour: the first one creates the sites and channels; the next ones bring
    new measurements of the same sites and draw no value from their sequences."""
    clock = SimClock(datetime(2026, 3, 2, 8, 0, tzinfo=UTC), speed=0)
    app = build_simulator_app(15, history_days=0.25, clock=clock)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        source = SourceConfig.model_validate(simulator_sources(str(server.make_url("/")), interval=60)[0])
        async with aiohttp.ClientSession() as session:
            fetcher = Fetcher(session)
            first = await poll_source(source, storage, fetcher, PublicationConfig())
            assert first.stats.error is None and first.stats.counts.new > 0
            after_first = await sequence_positions(storage)
            assert after_first["sites"] == await storage.pool.fetchval("SELECT count(*) FROM sites") > 0
            assert after_first["channels"] == await storage.pool.fetchval("SELECT count(*) FROM channels") > 0
            measurements = await storage.pool.fetchval("SELECT count(*) FROM measurements")
            for hour in range(1, 6):
                clock.advance(timedelta(hours=1))
                report = await poll_source(source, storage, fetcher, PublicationConfig())
                assert report.stats.error is None
                now = await sequence_positions(storage)
                assert now["sites"] == after_first["sites"] and now["channels"] == after_first["channels"]
                assert now["source_runs"] == after_first["source_runs"] + hour
            assert await storage.pool.fetchval("SELECT count(*) FROM measurements") > measurements
    finally:
        await server.close()
