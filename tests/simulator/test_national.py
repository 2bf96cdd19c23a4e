"""The simulator's national scenario, collected by the real DATEX II collector: every
value of every reporting lane stored once, gaps and faults stored as nothing, and
known sites and channels drawing no new ids minute after minute."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from collectors.fetch import Fetcher
from feed.collect.poll import poll_source
from feed.config import SourceConfig
from feed.simulator.clock import SimClock
from feed.simulator.national import MEASURED_PATH, PUBLICATION, NationalNetwork, add_national_routes, national_sources
from feed.simulator.server import build_simulator_app
from feed.store.storage import Storage

NETWORK = NationalNetwork(sites=400, step=60, seed=15)
START = datetime(2026, 3, 2, 7, 30, 20, tzinfo=UTC)


def expected_values(end: datetime) -> tuple[int, set[str]]:
    """(values the minute ending at `end` carries, the sites that report it)."""
    sites = NETWORK.measured(NETWORK.site_list(), end)
    values = sum(2 for s in sites for c in s.channels if c.latest_quality == "observed")
    return values, {s.external_id for s in sites}


@pytest.mark.timeout(120)
async def test_national_minutes_are_collected_whole(storage: Storage):
    clock = SimClock(START, speed=0)
    app = build_simulator_app(15, history_days=0, clock=clock)
    add_national_routes(app, NETWORK, clock)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        source = SourceConfig.model_validate(national_sources(str(server.make_url("/")), NETWORK)[0])
        stored = 0
        async with aiohttp.ClientSession() as session:
            fetcher = Fetcher(session)
            for _minute in range(4):
                end = NETWORK.interval_end(clock.now())
                report = await poll_source(source, storage, fetcher, PUBLICATION, now=clock.now())
                assert report.stats.error is None and report.stats.quarantined == 0
                values, reporting = expected_values(end)
                stored += values
                assert await storage.pool.fetchval("SELECT count(*) FROM measurements") == stored
                # The minute's rows are those of the reporting sites, and only those.
                got_sites = {
                    r[0]
                    for r in await storage.pool.fetch(
                        """SELECT DISTINCT s.external_id FROM measurements m JOIN channels c ON c.id = m.channel_id
                         JOIN sites s ON s.id = c.site_id WHERE m.start = $1""",
                        end - timedelta(seconds=60),
                    )
                }
                assert got_sites == {f"national:{s}" for s in reporting}
                now = (
                    await storage.pool.fetchval("SELECT last_value FROM sites_id_seq"),
                    await storage.pool.fetchval("SELECT last_value FROM channels_id_seq"),
                )
                # Sites first seen now (a gap last minute) take ids; known ones take none.
                assert now == (
                    await storage.pool.fetchval("SELECT count(*) FROM sites"),
                    await storage.pool.fetchval("SELECT count(*) FROM channels"),
                )
                # The same minute asked again: the same document, so 304.
                async with session.get(server.make_url(MEASURED_PATH)) as first:
                    etag = first.headers["ETag"]
                async with session.get(server.make_url(MEASURED_PATH), headers={"If-None-Match": etag}) as again:
                    assert again.status == 304
                clock.advance(timedelta(seconds=NETWORK.step))
        faults = sum(
            1
            for m in range(4)
            for s in NETWORK.measured(NETWORK.site_list(), NETWORK.interval_end(START + timedelta(minutes=m)))
            for c in s.channels
            if c.latest_quality == "invalid"
        )
        gaps = sum(
            NETWORK.sites - len(expected_values(NETWORK.interval_end(START + timedelta(minutes=m)))[1])
            for m in range(4)
        )
        assert faults and gaps  # the scenario's faults and gaps were exercised
    finally:
        await server.close()


def test_the_scenario_rejects_a_step_that_does_not_divide_a_day():
    with pytest.raises(ValueError, match="step"):
        NationalNetwork(sites=10, step=7)
