"""`roadfeed run` killed with SIGKILL in the middle of ingesting a long history,
then started again: it resumes after the persisted watermark (no restart from
scratch) and ends equal to the source's truth."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

import asyncpg
import pytest

from feed.simulator.sources import simulator_sources
from feed.store.cluster import free_port
from reliability_support import Simulator, assert_equals_truth

# A restarted worker resumes once the dead one's lease lapses (renewed while it
# polled); a short lease keeps the test short. The wait for the catch-up only
# bounds a hang: the test asserts that the restart catches up, not how fast
# (two polls of 100 pages take ~10 s on a quiet machine, several times that
# under heavy CPU contention).
LEASE_SECONDS = 4.0
LEASE_WAIT = LEASE_SECONDS + 120.0

HISTORY_DAYS = 3  # ~17,500 records: two polls of 100 pages


def _toml_value(value: Any) -> str:
    """A TOML value: JSON's, but a table is written inline."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def config_text(sim_url: str, port: int) -> str:
    source = simulator_sources(sim_url, interval=2)[0]
    options = "\n".join(f"{k} = {json.dumps(v)}" for k, v in source["options"].items() if k != "mapping")
    mapping = "\n".join(f"{k} = {_toml_value(v)}" for k, v in source["options"]["mapping"].items())
    return f"""
[server]
port = {port}
workers = 1

[[sources]]
id = "{source["id"]}"
kind = "opendatasoft"
url = "{source["url"]}"
interval = 2

[sources.options]
{options}

[sources.options.mapping]
{mapping}
"""


async def start_run(config, db_url: str, log) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "feed.cli",
        "run",
        "--config",
        str(config),
        env={**os.environ, "ROADFEED_DATABASE_URL": db_url, "ROADFEED_POLL_LEASE_SECONDS": str(LEASE_SECONDS)},
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.mark.timeout(360)  # the waits below add up to more than the default limit
async def test_sigkill_mid_ingest_then_resume(db_url, tmp_path):
    async with Simulator(history_days=HISTORY_DAYS) as sim:
        truth_rows = sim.truth_rows()
        config = tmp_path / "roadfeed.toml"
        config.write_text(config_text(sim.url, free_port()))
        pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
        logfile = (tmp_path / "run.log").open("wb")
        procs = []
        try:
            first = await start_run(config, db_url, logfile)
            procs.append(first)
            deadline = time.monotonic() + 60
            stored = 0
            while time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                stored = await pool.fetchval("SELECT count(*) FROM measurements")
                if stored >= 3000:
                    break
            assert 0 < stored < truth_rows, f"stored {stored} of {truth_rows} before the kill"
            os.killpg(first.pid, signal.SIGKILL)
            await first.wait()
            at_kill = await pool.fetchval("SELECT count(*) FROM measurements")
            watermark = await pool.fetchval("SELECT watermark FROM sources WHERE id = 'sim-comptages'")
            assert watermark, "no watermark persisted before the kill"
            assert at_kill < truth_rows

            killed_at = await pool.fetchval("SELECT now()")

            async def caught_up(seconds: float) -> bool:
                started = time.monotonic()
                while time.monotonic() - started < seconds:
                    await asyncio.sleep(0.2)
                    if await pool.fetchval("SELECT count(*) FROM measurements") >= truth_rows:
                        return True
                return False

            second = await start_run(config, db_url, logfile)
            procs.append(second)
            t0 = time.monotonic()
            assert await caught_up(LEASE_WAIT), (tmp_path / "run.log").read_text()[-3000:]
            resumed_after = time.monotonic() - t0
            await asyncio.sleep(0.5)
            assert await pool.fetchval("SELECT count(*) FROM measurements") == truth_rows
            # Resumed after the watermark: at most the page in flight at the kill is read again.
            again = await pool.fetchval(
                "SELECT coalesce(sum(records_unchanged), 0) FROM source_runs WHERE started > $1", killed_at
            )
            assert again <= 200, again
            assert (
                await pool.fetchval(
                    "SELECT count(*) FROM source_runs WHERE started > $1 AND error IS NOT NULL", killed_at
                )
                == 0
            )
            await assert_equals_truth(pool, sim)
            print(
                f"killed at {at_kill}/{truth_rows} rows; caught up {resumed_after:.1f} s after the restart"
                f"; {again} records read twice"
            )
        finally:
            for p in procs:
                if p.returncode is None:
                    os.killpg(p.pid, signal.SIGTERM)
                    await asyncio.wait_for(p.wait(), 30)
            logfile.close()
            await pool.close()
