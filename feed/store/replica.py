"""Serving from a hot standby: hearing of changes and waiting until they are replayed.

A `serve` node may read from a streaming-replication standby (`[database]
read_url`). NOTIFY is not replicated, so such a node LISTENs on the primary
(`[database] url`, one connection). A notification arrives once the change is
committed on the primary, possibly before the standby has replayed it: reading
then would render the old data and the change would wait for the next safety
refresh. `ReplayGate` holds each notification back until the standby has
replayed the primary's WAL up to its insert position when the notification came
(past the change's commit record, even an asynchronous one), then hands it on. Notifications
that arrive meanwhile share one wait.

When the primary or the standby cannot be asked, notifications are handed on
after `timeout` seconds anyway: the readers re-read then, and their periodic
safety refresh covers what was still missing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from feed.config import DatabaseConfig
from feed.deadlines import cancel_and_wait

log = logging.getLogger("roadfeed.replica")

Notify = Callable[[Any, int, str, str], None]  # asyncpg's LISTEN callback

_REPLAYED = "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, true)"


class ReplayGate:
    """Delays notifications heard on the primary until the standby has replayed them."""

    def __init__(
        self, primary: asyncpg.Pool, standby: asyncpg.Pool, *, poll: float = 0.01, timeout: float = 30.0
    ) -> None:
        self.primary = primary
        self.standby = standby
        self.poll = poll  # seconds between two looks at the standby's replay position
        self.timeout = timeout
        self.delivered = 0  # notifications handed on
        self.last_wait: float | None = None  # seconds the last batch waited for replay
        self._pending: list[tuple[Notify, Any, int, str, str]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wrap(self, callback: Notify) -> Notify:
        """The listener to register with LISTEN in place of `callback`."""

        def on_notify(conn: Any, pid: int, channel: str, payload: str) -> None:
            self._pending.append((callback, conn, pid, channel, payload))
            self._wake.set()
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._run(), name="replay-gate")

        return on_notify

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait([task], "replay gate")

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                await asyncio.wait_for(self._wait_replayed(), self.timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the readers re-read anyway; say why it was early
                log.warning(
                    "could not confirm the standby replayed a change (%s: %s); reading anyway", type(exc).__name__, exc
                )
            self.last_wait = loop.time() - started
            seen: set[tuple[Notify, str]] = set()
            for callback, conn, pid, channel, payload in batch:
                if (callback, payload) not in seen:  # the same news twice says nothing more
                    seen.add((callback, payload))
                    callback(conn, pid, channel, payload)
            self.delivered += len(batch)

    async def _wait_replayed(self) -> None:
        # The insert position: the write position may not include an asynchronous commit yet.
        lsn = await self.primary.fetchval("SELECT pg_current_wal_insert_lsn()::text")
        while not await self.standby.fetchval(_REPLAYED, lsn):
            await asyncio.sleep(self.poll)


def primary_of(database: DatabaseConfig, read_url: str) -> str | None:
    """The primary to listen on when `read_url` is the configured standby; None otherwise."""
    return database.url if database.read_url is not None and read_url == database.read_url else None
