"""Database sessions shared by the readers: the read-only transaction policy and the one LISTEN loop.

`reading` is how the HTTP API reads: a read-only transaction under the
read-only role, bounded on the server and on the client side. `ChangeListener`
is how the publisher and the change stream hear of changes: one reconnecting
LISTEN on `roadfeed_changes` (storage.CHANGES_CHANNEL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg

from feed.config import Config
from feed.store import downloads
from feed.store.storage import (
    ACQUIRE_TIMEOUT,
    CHANGES_CHANNEL,
    DATABASE_UNAVAILABLE,
    ROUND_TRIP_TIMEOUT,
    Storage,
)

__all__ = ["QUERY_MARGIN", "READER_ROLE", "ChangeListener", "ReadContext", "can_switch_role", "reading"]

log = logging.getLogger("roadfeed.api")  # the API's sessions: their lines keep its logger

DOWNLOAD_WORK_MEM = "64MB"  # per download: a batch is sorted in memory, not on disk


class ReadContext(Protocol):
    """What `reading` needs: the configuration (timeouts, time zone) and the storage (its pool)."""

    @property
    def config(self) -> Config: ...

    @property
    def storage(self) -> Storage: ...


READER_ROLE = "roadfeed_reader"
_ROLE_SWITCH: dict[int, tuple[asyncpg.Pool, dict[str, bool]]] = {}  # id(pool) -> (pool, role -> may switch)
_CAN_SWITCH = ("SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1) "
               "THEN pg_has_role($1, 'MEMBER') ELSE false END")


async def can_switch_role(pool: asyncpg.Pool, conn: asyncpg.Connection, role: str) -> bool:
    """Whether the pool's login may SET ROLE `role` (asked once per pool and role).

    A superuser or a member may; a login that is neither (say the writer serving
    the API) keeps its own role, and the API's transactions stay READ ONLY."""
    entry = _ROLE_SWITCH.get(id(pool))
    if entry is None or entry[0] is not pool:
        if len(_ROLE_SWITCH) > 64:  # pools are few; tests open many
            _ROLE_SWITCH.clear()
        entry = _ROLE_SWITCH[id(pool)] = (pool, {})
    known = entry[1]
    if role not in known:
        known[role] = bool(await conn.fetchval(_CAN_SWITCH, role, timeout=ROUND_TRIP_TIMEOUT))
        if not known[role]:
            log.warning("the database login cannot SET ROLE %s; transactions keep the login's role", role)
    return known[role]


QUERY_MARGIN = 2.0  # seconds past the statement timeout before the client gives up on a silent server


@asynccontextmanager
async def reading(ctx: ReadContext, *, bulk: bool = False) -> AsyncIterator[asyncpg.Connection]:
    """A read-only REPEATABLE READ transaction bounded by the configured statement timeout
    (JIT off: these queries are short, and compiling them would cost more than running them).
    `bulk` (downloads): the publication's time zone for formatting times, and room to sort a batch in memory.

    Bounded on the client side too, for a server that does not answer at all
    (frozen, or a network that drops packets): a connection within ACQUIRE_TIMEOUT,
    BEGIN within ROUND_TRIP_TIMEOUT, and, except for downloads (each batch bounded
    by the pool's command timeout), the whole transaction within the statement
    timeout plus QUERY_MARGIN. A connection that failed that way is closed, never
    given back. The errors raised are those of `DATABASE_UNAVAILABLE` (a 503)."""
    statement_timeout = int(ctx.config.database.statement_timeout_ms)
    settings = f"SET LOCAL statement_timeout = {statement_timeout}; SET LOCAL jit = off"
    if bulk:
        settings += (f"; SET LOCAL TimeZone = {downloads.sql_literal(ctx.config.publication.timezone)}"
                     f"; SET LOCAL work_mem = '{DOWNLOAD_WORK_MEM}'")
    pool = ctx.storage.pool
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
        try:
            # The read-only role on top of READ ONLY: even a statement that escaped both
            # could not write, it would lack the privilege (see sql/003_roles.sql).
            if await can_switch_role(pool, conn, READER_ROLE):
                settings += f"; SET LOCAL ROLE {READER_ROLE}"
            # BEGIN and the settings in one round trip (asyncpg's Transaction would take two).
            await conn.execute(f"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {settings}",
                               timeout=ROUND_TRIP_TIMEOUT)
        except BaseException:
            conn.terminate()
            raise
        deadline = contextlib.nullcontext() if bulk else asyncio.timeout(statement_timeout / 1000 + QUERY_MARGIN)
        try:
            async with deadline:
                yield conn
        except DATABASE_UNAVAILABLE:
            conn.terminate()
            raise
        except BaseException:
            if not conn.is_closed():
                with contextlib.suppress(Exception):  # the pool's reset rolls back whatever is left
                    await conn.execute("ROLLBACK", timeout=ROUND_TRIP_TIMEOUT)
            raise
        await conn.execute("COMMIT", timeout=ROUND_TRIP_TIMEOUT)


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

            def on_lost(_conn: Any) -> None:
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
            except Exception as exc:  # the listener must outlive any connection problem
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.last_error_at = datetime.now(UTC)
                self.log.warning("%s listener lost (%s); reconnecting in %.1f s", self.name, exc, backoff)
            if self.on_quiet is not None:
                self.on_quiet()  # look while not listening
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
