"""Faults at the edges: a source that hangs, fails, lies or hangs up; the database
restarted mid-ingest. Each time the run is recorded as failed, nothing stored is
wrong, and the next healthy poll catches up with the source's truth."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from collectors.fetch import Fetcher, FetchPolicy
from feed.collect.poll import poll_source
from feed.collect.scheduler import Collector
from feed.config import Config, PublicationConfig, SourceConfig
from feed.simulator.simulation import Simulation
from feed.store.storage import Storage
from reliability_support import (
    FaultyProxy,
    Simulator,
    T,
    assert_equals_truth,
    assert_subset_of_truth,
    counter_source,
)

FAST = FetchPolicy(timeout=1.0, retries=1, backoff_base=0.01, backoff_max=0.05)
HERAULT = PublicationConfig()


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(history_days=1) as s:
        yield s


@pytest.fixture
async def proxy(sim: Simulator) -> AsyncIterator[FaultyProxy]:
    async with FaultyProxy(sim.url) as p:
        yield p


@pytest.fixture
async def fetcher() -> AsyncIterator[Fetcher]:
    async with aiohttp.ClientSession() as session:
        yield Fetcher(session, FAST)


async def last_run(storage: Storage, source_id: str) -> dict:
    return dict(
        await storage.pool.fetchrow(
            "SELECT * FROM source_runs WHERE source_id = $1 ORDER BY id DESC LIMIT 1", source_id
        )
    )


async def catch_up(source: SourceConfig, storage: Storage, fetcher: Fetcher, polls: int = 5) -> None:
    for _ in range(polls):
        report = await poll_source(source, storage, fetcher, HERAULT, now=T)
        assert report.stats.error is None, report.line()
        if report.stats.counts.new == 0:
            return
    raise AssertionError(f"not caught up after {polls} polls")


@pytest.mark.parametrize("fault", FaultyProxy.FAULTS)
async def test_counters_source_fault_between_pages_then_catch_up(storage, sim, proxy, fetcher, fault):
    source = counter_source(proxy.url)
    proxy.set(fault, healthy_first=5)  # five good pages (500 records), then the fault
    report = await asyncio.wait_for(poll_source(source, storage, fetcher, HERAULT, now=T), 30)
    assert report.stats.error is not None, report.line()
    run = await last_run(storage, source.id)
    assert run["error"] and run["finished"] is not None
    stored = await assert_subset_of_truth(storage.pool, sim.truth())
    assert 0 < sum(1 for _ in stored) <= 500
    # Progress up to the last good page is kept; the next healthy polls catch up.
    assert (await storage.source_state(source.id)).watermark
    proxy.set(None)
    await catch_up(source, storage, fetcher)
    await assert_equals_truth(storage.pool, sim)


@pytest.mark.parametrize("fault", FaultyProxy.FAULTS)
async def test_datex2_snapshot_fault_ends_nothing(storage, sim, proxy, fetcher, fault):
    source = SourceConfig(
        id="sim-datex2", kind="datex2", url=proxy.url + "/datex2/v3/situations.xml", options={"snapshot": True}
    )
    expected = {f"{source.id}:sim:{e.id}" for e in Simulation(34).events_at(T)}
    assert len(expected) >= 3
    first = await poll_source(source, storage, fetcher, HERAULT, now=T)
    assert first.stats.error is None, first.line()

    def state(events):
        return {(e.id, e.version, e.status) for e in events}

    before = state(await storage.events())
    assert {e[0] for e in before} == expected, (sorted(before)[:3], sorted(expected)[:3])
    # A fresh body (no 304) that fails must neither end nor change any event.
    await storage.pool.execute("UPDATE sources SET etag = NULL, last_modified = NULL WHERE id = $1", source.id)
    proxy.set(fault)
    report = await asyncio.wait_for(poll_source(source, storage, fetcher, HERAULT, now=T), 30)
    assert report.stats.error is not None, report.line()
    assert state(await storage.events()) == before
    proxy.set(None)
    again = await poll_source(source, storage, fetcher, HERAULT, now=T)
    assert again.stats.error is None and state(await storage.events()) == before


@pytest.mark.parametrize("when", ["between-pages", "during-store"])
async def test_database_restarted_mid_poll(server, db_url, sim, proxy, fetcher, when):
    """The server stops and starts while a poll runs: between two pages (idle pooled
    connections) or while a page is being stored. The poll that was cut fails (its
    run says so, or it raised); the same collector's next polls reconnect (asyncpg
    pool) and catch up: nothing lost, nothing duplicated, rollups exact."""
    storage = await Storage.open(db_url)
    restarts: list[asyncio.Task] = []
    try:
        source = counter_source(proxy.url)
        collector = Collector(Config(sources=[source], publication=HERAULT), storage, fetcher, clock=lambda: T)

        async def restart_now() -> None:
            await asyncio.to_thread(server.cluster.stop)
            await asyncio.to_thread(server.cluster.start)

        async def restart(n: int) -> None:
            if n != 8:  # seven pages stored, the eighth on its way
                return
            # A task of its own: on a loaded machine the client may give up on this page
            # (its fetch timeout) and cancel the proxy's handler, never the restart.
            restarts.append(asyncio.create_task(restart_now()))
            if when == "between-pages":
                await asyncio.shield(restarts[-1])
            # during-store: the page is answered at once; the server goes down while it is stored

        proxy.before_forward = restart
        failures = 0
        # Polls until one finds nothing new; bounded by a deadline (not a number of tries,
        # which a slow restart on a loaded machine would use up).
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("never caught up within 60 s of the restart")
            try:
                report = await collector.poll(source)
            except Exception:  # noqa: BLE001 - a cut connection may surface once per pooled connection
                failures += 1
                await asyncio.sleep(0.2)
                continue
            if report is not None and report.stats.error is None and report.stats.counts.new == 0:
                break
            if report is None or report.stats.error is not None:
                failures += 1
                await asyncio.sleep(0.2)
        for task in restarts:
            await task
        assert proxy.requests >= 8
        await assert_equals_truth(storage.pool, sim)
        runs = await storage.pool.fetch("SELECT error, finished FROM source_runs ORDER BY id")
        assert runs[-1]["error"] is None
        print(f"{when}: {failures} failed poll(s); runs {[(r['error'], r['finished'] is not None) for r in runs]}")
    finally:
        await asyncio.gather(*restarts, return_exceptions=True)
        await storage.close()
