"""Every close ends within its deadline, even when something holds on."""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
import pytest

from feed.deadlines import cancel_and_wait
from feed.store.storage import Storage


async def test_storage_close_terminates_a_connection_never_given_back(db_url: str, caplog: pytest.LogCaptureFixture):
    store = await Storage.open(db_url)
    held = asyncio.Event()

    async def hold_forever() -> None:
        async with store.pool.acquire() as conn:
            await conn.execute("SET application_name = 'held-forever'")
            held.set()
            await asyncio.Event().wait()

    holder = asyncio.create_task(hold_forever())
    await held.wait()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="feed.deadlines"):
        await store.close(timeout=0.5)
    assert time.monotonic() - started < 30  # bounded (the limit itself is 0.5 s)
    assert "terminating it" in caplog.text
    # the server no longer has the held connection
    admin = await asyncpg.connect(db_url)
    try:
        for _ in range(200):
            if not await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'held-forever'"
            ):
                break
            await asyncio.sleep(0.05)
        assert (
            await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'held-forever'") == 0
        )
    finally:
        await admin.close()
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)


async def test_cancel_and_wait_gives_up_on_a_task_that_swallows_its_cancellation(caplog: pytest.LogCaptureFixture):
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # refuses to stop

    async def polite() -> None:
        await asyncio.Event().wait()

    tasks = [asyncio.create_task(stubborn(), name="stubborn"), asyncio.create_task(polite(), name="polite")]
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="feed.deadlines"):
        await cancel_and_wait(tasks, "test tasks", timeout=0.2)
    assert tasks[1].cancelled()
    assert not tasks[0].done()
    assert "test tasks: 1 task(s) still running" in caplog.text and "stubborn" in caplog.text
    release.set()
    await asyncio.wait_for(tasks[0], 5)
