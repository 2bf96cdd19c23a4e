"""One poll of one source, with its run row: what `collect --once` and the scheduler call.

Whatever goes wrong in a poll is caught here and recorded on the run and the
source; it never escapes to take the scheduler or other sources down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from collectors.fetch import Fetcher, FetchError
from feed.collect.ingest import Plausibility, Sink, SinkResult
from feed.collect.polling import POLLERS, PollOutcome
from feed.config import PublicationConfig, SourceConfig
from feed.metrics import record_poll
from feed.store.storage import RunStats, Storage

log = logging.getLogger("roadfeed.collect")


@dataclass
class RunReport:
    source_id: str
    run_id: int
    stats: RunStats
    duration: float
    watermark: str | None

    def line(self) -> str:
        s = self.stats
        status = "ok" if s.error is None else f"FAILED: {s.error}"
        unchanged = " (not modified)" if s.http_status == 304 else ""
        return (
            f"{self.source_id}: {status}{unchanged}; new {s.counts.new}, updated {s.counts.updated}, "
            f"unchanged {s.counts.unchanged}, quarantined {s.quarantined}; {s.bytes:,} bytes in "
            f"{self.duration:.2f} s" + (f"; next watermark {self.watermark}" if self.watermark else "")
        )

    @property
    def outcome(self) -> str:
        """ok, not_modified, error or interrupted (the /metrics label)."""
        s = self.stats
        if s.error is not None:
            return "interrupted" if s.error.startswith("interrupted") else "error"
        return "not_modified" if s.http_status == 304 else "ok"

    def fields(self) -> dict[str, object]:
        """The report as structured log fields (JSON logs)."""
        s = self.stats
        return {
            "event": "poll",
            "source": self.source_id,
            "run_id": self.run_id,
            "ok": s.error is None,
            "http_status": s.http_status,
            "new": s.counts.new,
            "updated": s.counts.updated,
            "unchanged": s.counts.unchanged,
            "quarantined": s.quarantined,
            "bytes": s.bytes,
            "duration_s": round(self.duration, 3),
            "error": s.error,
            "watermark": self.watermark,
        }


FINISH_ATTEMPTS = 4


async def _finish_run(storage: Storage, run_id: int, stats: RunStats, outcome: PollOutcome | None) -> None:
    """Closes the run, retrying while the database comes back; a run still open
    after that is closed as interrupted by the next poll of its source."""
    for attempt in range(FINISH_ATTEMPTS):
        try:
            await storage.finish_run(
                run_id,
                stats,
                etag=outcome.etag if outcome and stats.complete else None,
                last_modified=outcome.last_modified if outcome and stats.complete else None,
                watermark=outcome.watermark if outcome else None,
            )
            return
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as err:
            if attempt == FINISH_ATTEMPTS - 1:
                log.error("run %d: could not be closed (%s); the next poll closes it as interrupted", run_id, err)
                return
            await asyncio.sleep(2**attempt)


async def poll_source(
    source: SourceConfig,
    storage: Storage,
    fetcher: Fetcher,
    publication: PublicationConfig,
    *,
    now: datetime | None = None,
    clock: Callable[[], datetime] | None = None,
    progress: Callable[[str, SinkResult], None] | None = None,
) -> RunReport:
    """One poll within its deadline (`source.deadline`, or a first backfill's). `clock`
    gives the current time (the demo's simulated one), `now` a fixed time; by default
    the real clock."""
    started = time.monotonic()
    await storage.ensure_source(source.id, source.kind, source.url)
    state = await storage.source_state(source.id)
    run_id = await storage.start_run(source.id)
    if clock is None:
        clock = (lambda: now) if now is not None else (lambda: datetime.now(UTC))
    sink = Sink(storage, source.id, run_id, Plausibility.from_publication(publication), clock, progress)
    budget = source.deadline_for(state.watermark)
    poll_fetcher = fetcher.for_poll(budget)
    stats = RunStats()
    outcome = None
    interrupted = False
    deadline = asyncio.timeout(budget)
    try:
        async with deadline:
            outcome = await POLLERS[source.kind](source, state, poll_fetcher, sink)
            result = await sink.finish(snapshot=outcome.snapshot)
        stats.http_status = outcome.http_status
        stats.error = result.error
    except FetchError as err:
        stats.http_status, stats.error = err.status, err.reason
    except TimeoutError:
        if not deadline.expired():
            raise
        stats.error = f"timed out: the poll took more than its {budget:g} s"
    except asyncio.CancelledError:  # stopping took too long: close the run, then stop
        interrupted = True
        stats.error = "interrupted: roadfeed stopped during the poll"
    except Exception as err:  # a poll must never take the process down (logged with its traceback)
        log.exception("source %s: poll failed", source.id)
        stats.error = f"{type(err).__name__}: {err}"
    stats.bytes = poll_fetcher.bytes_read
    stats.counts = sink.result.counts
    stats.quarantined = sink.result.quarantined
    stats.complete = stats.error is None
    await _finish_run(storage, run_id, stats, outcome)
    report = RunReport(source.id, run_id, stats, time.monotonic() - started, outcome.watermark if outcome else None)
    record_poll(
        source.id,
        report.outcome,
        {
            "new": stats.counts.new,
            "updated": stats.counts.updated,
            "unchanged": stats.counts.unchanged,
            "quarantined": stats.quarantined,
        },
        stats.bytes or 0,
        report.duration,
    )
    (log.info if stats.error is None else log.warning)(report.line(), extra={"fields": report.fields()})
    if interrupted:
        raise asyncio.CancelledError
    return report
