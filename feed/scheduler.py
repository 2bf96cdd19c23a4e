"""Polls every enabled source at its interval (APScheduler, on the asyncio loop).

One job per source: runs of a source never overlap (`max_instances=1`), a slow
or failing source delays no other (each poll is its own task, bounded by the
fetch timeouts), and start times are spread with jitter.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from collectors.fetch import Fetcher
from feed.collect import RunReport, poll_source
from feed.config import Config, SourceConfig
from feed.ingest import SinkResult
from feed.storage import Storage

log = logging.getLogger("roadfeed.scheduler")


class Collector:
    """The collectors of one process."""

    def __init__(self, config: Config, storage: Storage, fetcher: Fetcher,
                 on_report: Callable[[RunReport], Awaitable[None] | None] | None = None,
                 progress: Callable[[str, SinkResult], None] | None = None,
                 clock: Callable[[], datetime] | None = None):
        self.clock = clock  # "now" for plausibility and event status; the demo's simulated time
        self.config = config
        self.storage = storage
        self.fetcher = fetcher
        self.on_report = on_report
        self.progress = progress
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        # Polls of one source never overlap, whoever starts them (scheduler or a caller).
        self._locks = {s.id: asyncio.Lock() for s in config.sources}

    def start(self, *, first_after_interval: bool = False) -> None:
        now = datetime.now(UTC)
        for source in self.config.sources:
            if not source.enabled:
                continue
            soon = source.interval if first_after_interval else random.uniform(0, min(2.0, source.interval / 10))
            first = now + timedelta(seconds=soon)
            self.scheduler.add_job(
                self.poll, "interval", args=[source], id=source.id, name=f"poll {source.id}",
                seconds=source.interval, jitter=max(0.0, min(10.0, source.interval / 10)),
                max_instances=1, coalesce=True, misfire_grace_time=source.interval,
                next_run_time=first,
            )
        days = self.config.database.retention_days
        if days:
            self.scheduler.add_job(self.apply_retention, "interval", args=[days], id="retention",
                                   hours=6, max_instances=1, coalesce=True, next_run_time=now + timedelta(minutes=1))
        self.scheduler.start()
        log.info("polling %d source(s)", len([j for j in self.scheduler.get_jobs() if j.id != "retention"]))

    async def apply_retention(self, days: int) -> int:
        """Drops raw measurements older than `days`; the rollups keep their history."""
        removed = await self.storage.drop_measurements_before(datetime.now(UTC) - timedelta(days=days))
        log.info("retention: removed %d raw measurement(s) older than %d days", removed, days)
        return removed

    async def poll(self, source: SourceConfig) -> RunReport:
        async with self._locks[source.id]:
            report = await poll_source(source, self.storage, self.fetcher, self.config.publication,
                                       now=self.clock() if self.clock else None, progress=self.progress)
        if self.on_report is not None:
            result = self.on_report(report)
            if result is not None:
                await result
        return report

    def shutdown(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
