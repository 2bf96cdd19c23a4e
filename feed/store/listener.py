"""The one LISTEN loop: how the publisher, the change stream and the MQTT pusher hear of changes.

`ChangeListener` is one reconnecting LISTEN on `roadfeed_changes`
(writes.CHANGES_CHANNEL), shared by feed.publish.publisher, feed.publish.changes and
feed.publish.mqtt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from feed.store.storage import Storage
from feed.store.writes import CHANGES_CHANNEL

__all__ = ["ChangeListener"]


class ChangeListener:
    """One LISTEN connection on CHANGES_CHANNEL, reconnecting whenever it is lost.

    `on_change(payload)` hears every notification (on a hot standby once the
    change is replayed: `Storage.listener`), and an empty payload at each
    (re)connection, for whatever was committed while nobody listened. After
    `interval` seconds without a notification the connection is pinged: one
    that died silently raises there instead of staying mute. `on_quiet`, when
    given, is called after each such ping and whenever the connection is lost,
    for a reader that must look even when it heard nothing.
    """

    def __init__(
        self,
        storage: Storage,
        on_change: Callable[[str], None],
        *,
        application_name: str,
        interval: float,
        name: str,
        log: logging.Logger,
        on_quiet: Callable[[], None] | None = None,
    ) -> None:
        self.storage = storage
        self.on_change = on_change
        self.application_name = application_name
        self.interval = interval
        self.name = name  # says whose listener it is in the log
        self.log = log
        self.on_quiet = on_quiet
        self.connected = False
        self.connected_since: datetime | None = None
        self.connections = 0
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None

    def _notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.on_change(payload)

    async def run(self) -> None:
        """Listens until cancelled; a lost connection is reopened after a growing pause (0.2 s to 30 s)."""
        backoff = 0.2
        while True:
            lost = asyncio.Event()

            def on_lost(_conn: Any, lost: asyncio.Event = lost) -> None:
                lost.set()

            on_notify = self.storage.listener(self._notify)  # on a standby: once replayed
            try:
                async with self.storage.listen_pool.acquire(timeout=30) as conn:
                    await conn.execute(f"SET application_name = '{self.application_name}'")
                    conn.add_termination_listener(on_lost)
                    await conn.add_listener(CHANGES_CHANNEL, on_notify)
                    try:
                        self.connected = True
                        self.connected_since = datetime.now(UTC)
                        self.connections += 1
                        on_notify(conn, 0, CHANGES_CHANNEL, "")  # whatever was committed while nobody listened
                        backoff = 0.2
                        while not lost.is_set():
                            try:
                                await asyncio.wait_for(lost.wait(), self.interval)
                            except TimeoutError:
                                # a connection that died silently raises here instead of staying mute
                                await asyncio.wait_for(conn.fetchval("SELECT 1"), 10)
                                if self.on_quiet is not None:
                                    self.on_quiet()
                        raise ConnectionError("the listening connection was closed")
                    finally:
                        self.connected = False
                        # A terminated connection is already detached from its proxy: nothing to undo.
                        with contextlib.suppress(asyncpg.InterfaceError):
                            conn.remove_termination_listener(on_lost)
                            if not conn.is_closed():
                                await conn.remove_listener(CHANGES_CHANNEL, on_notify)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the listener must outlive any connection problem
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.last_error_at = datetime.now(UTC)
                self.log.warning("%s listener lost (%s); reconnecting in %.1f s", self.name, exc, backoff)
            if self.on_quiet is not None:
                self.on_quiet()  # look while not listening
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
