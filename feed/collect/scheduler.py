"""Polls every enabled source at its interval (APScheduler, on the asyncio loop).

Several processes may run collectors against one database: each ticks often and
polls a source only after claiming it in PostgreSQL (`Storage.claim_poll`), which
succeeds once per interval and never while another worker holds the source's
lease. So every source is polled once per interval, by one worker at a time; a
slow or failing source delays no other (each poll is its own task, bounded by
the fetch timeouts).

Stopping (`stop`) lets running polls finish, within a bound: APScheduler's own
shutdown cancels asyncio jobs, so the Collector keeps its running polls itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from collectors.fetch import Fetcher
from feed.collect.ingest import SinkResult
from feed.collect.poll import RunReport, poll_source
from feed.config import Config, SourceConfig
from feed.metrics import REGISTRY as METRICS
from feed.store.storage import Storage

log = logging.getLogger("roadfeed.scheduler")

# A worker that dies mid-poll frees its sources after this many seconds.
LEASE_SECONDS = float(os.environ.get("ROADFEED_POLL_LEASE_SECONDS", "30"))
LEASE_RENEW_SECONDS = LEASE_SECONDS / 3  # while a poll runs, its worker renews the lease this often
MAX_TICK_SECONDS = 5.0
STOP_TIMEOUT = 30.0  # seconds running polls have to finish when the collectors stop; then they are interrupted


class Collector:
    """The collectors of one process."""

    def __init__(
        self,
        config: Config,
        storage: Storage,
        fetcher: Fetcher,
        on_report: Callable[[RunReport], Awaitable[None] | None] | None = None,
        progress: Callable[[str, SinkResult], None] | None = None,
        clock: Callable[[], datetime] | None = None,
    ):
        self.clock = clock  # "now" for plausibility and event status; the demo's simulated time
        self.config = config
        self.storage = storage
        self.fetcher = fetcher
        self.on_report = on_report
        self.progress = progress
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self._known: set[str] = set()
        self._running: set[asyncio.Task[object]] = set()  # tasks inside a poll, awaited by `stop`

    def start(self) -> None:
        now = datetime.now(UTC)
        for source in self.config.sources:
            if not source.enabled:
                continue
            tick = min(MAX_TICK_SECONDS, source.interval / 2)
            self.scheduler.add_job(
                self._tick,
                "interval",
                args=[source],
                id=source.id,
                name=f"poll {source.id}",
                seconds=tick,
                jitter=tick / 10,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=source.interval,
                next_run_time=now + timedelta(seconds=random.uniform(0, tick)),
            )
        self.scheduler.add_job(
            self.apply_retention,
            "interval",
            id="retention",
            hours=6,
            max_instances=1,
            coalesce=True,
            next_run_time=now + timedelta(minutes=1),
        )
        self.scheduler.start()
        log.info(
            "worker %s polling %d source(s)",
            self.owner,
            len([j for j in self.scheduler.get_jobs() if j.id != "retention"]),
        )

    async def _tick(self, source: SourceConfig) -> None:
        await self._poll(source, due_only=True)

    async def poll(self, source: SourceConfig) -> RunReport | None:
        """Polls now, due or not; None when another worker is polling this source."""
        return await self._poll(source, due_only=False)

    async def _poll(self, source: SourceConfig, *, due_only: bool) -> RunReport | None:
        if source.id not in self._known:
            await self.storage.ensure_source(source.id, source.kind, source.url)
            self._known.add(source.id)
        if not await self.storage.claim_poll(source.id, self.owner, source.interval, LEASE_SECONDS, due_only=due_only):
            return None
        await self.storage.close_interrupted_runs(source.id)
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        METRICS.polls_in_flight.inc()
        heartbeat = asyncio.create_task(self._renew(source.id))
        try:
            report = await poll_source(
                source, self.storage, self.fetcher, self.config.publication, clock=self.clock, progress=self.progress
            )
        finally:
            heartbeat.cancel()
            METRICS.polls_in_flight.inc(amount=-1)
            try:
                await self.storage.release_poll(source.id, self.owner)
            finally:
                if task is not None:
                    self._running.discard(task)
        if self.on_report is not None:
            result = self.on_report(report)
            if result is not None:
                await result
        return report

    async def _renew(self, source_id: str) -> None:
        """Keeps the lease of a long poll alive; a dead worker's lease lapses in LEASE_SECONDS."""
        while True:
            await asyncio.sleep(LEASE_RENEW_SECONDS)
            try:
                await self.storage.renew_poll(source_id, self.owner, LEASE_SECONDS)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                log.warning("source %s: could not renew the poll lease: %s", source_id, err)

    async def apply_retention(self) -> None:
        """Drops raw measurements older than `retention_days` (the rollups keep their
        history) and quarantined records not seen for `quarantine_retention_days`."""
        db = self.config.database
        now = datetime.now(UTC)
        if db.retention_days:
            removed = await self.storage.drop_measurements_before(now - timedelta(days=db.retention_days))
            log.info("retention: removed %d raw measurement(s) older than %d days", removed, db.retention_days)
        removed = await self.storage.drop_quarantine_before(now - timedelta(days=db.quarantine_retention_days))
        log.info(
            "retention: removed %d quarantined record(s) not seen for %d days", removed, db.quarantine_retention_days
        )

    @property
    def polls_running(self) -> int:
        return len(self._running)

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Starts no more polls, waits up to `timeout` s for the running ones, then interrupts
        what is left (each closes its run as interrupted) and stops the scheduler."""
        if self.scheduler.running:
            self.scheduler.pause()
        running = set(self._running)
        if running:
            log.info("waiting for %d running poll(s) to finish (at most %.0f s)", len(running), timeout)
            _done, late = await asyncio.wait(running, timeout=timeout)
            if late:
                log.warning("interrupting %d poll(s) still running after %.0f s", len(late), timeout)
                for task in late:
                    task.cancel()
                await asyncio.wait(late, timeout=10.0)
        self.shutdown()

    def shutdown(self) -> None:
        """Stops the scheduler at once; running polls are cancelled (see `stop` to let them finish)."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
