"""Every stop and close of the service ends within a bounded time.

A task that swallows its cancellation, or a pooled connection held by a task stuck on
a server that no longer answers, would otherwise make a shutdown (or a test's
teardown) wait forever. Each close here waits `timeout` seconds at most, then gives
up on what is left, says so in the log, and lets the caller go on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import asyncpg

CLOSE_TIMEOUT = 10.0

log = logging.getLogger(__name__)


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], what: str, timeout: float = CLOSE_TIMEOUT) -> None:
    """Cancels the tasks and waits at most `timeout` s for them to end."""
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    if not pending:
        return
    _done, late = await asyncio.wait(pending, timeout=timeout)
    if late:
        names = ", ".join(sorted(t.get_name() for t in late))
        log.warning(
            "%s: %d task(s) still running %.0f s after being cancelled, left behind: %s",
            what,
            len(late),
            timeout,
            names,
        )


async def close_pool(pool: asyncpg.Pool, timeout: float = CLOSE_TIMEOUT) -> None:
    """Closes the pool gracefully, or terminates its connections after `timeout` s
    (a connection still held by a task that does not give it back)."""
    try:
        await asyncio.wait_for(pool.close(), timeout)
    except TimeoutError:
        log.warning(
            "the database pool did not close within %.0f s (a connection still in use): terminating it", timeout
        )
        pool.terminate()
