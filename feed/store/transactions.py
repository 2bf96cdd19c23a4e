"""The transactions the HTTP routes read and write in: read-only REPEATABLE READ for the
history API and every public read, a writing transaction for agents' and operators'
writes, each bounded by `[database] statement_timeout_ms` on the server and on the client.

Each runs under the least privileged role the pool's login may switch to
(`roadfeed_reader`, `roadfeed_writer`, see sql/003_roles.sql); a login that may not
keeps its own role, and the reads stay READ ONLY.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from feed.store.storage import ACQUIRE_TIMEOUT, DATABASE_UNAVAILABLE, ROUND_TRIP_TIMEOUT
from feed.store.yearly_files import sql_literal

__all__ = ["QUERY_MARGIN", "READER_ROLE", "WRITER_ROLE", "can_switch_role", "reading", "writing"]

log = logging.getLogger("roadfeed.api")  # the API's transactions: their warnings keep the API's logger

READER_ROLE = "roadfeed_reader"
WRITER_ROLE = "roadfeed_writer"
QUERY_MARGIN = 2.0  # seconds past the statement timeout before the client gives up on a silent server
DOWNLOAD_WORK_MEM = "64MB"  # per download: a batch is sorted in memory, not on disk

_ROLE_SWITCH: dict[int, tuple[asyncpg.Pool, dict[str, bool]]] = {}  # id(pool) -> (pool, role -> may switch)
_CAN_SWITCH = (
    "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1) THEN pg_has_role($1, 'MEMBER') ELSE false END"
)


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


@asynccontextmanager
async def reading(
    pool: asyncpg.Pool, statement_timeout_ms: int, *, bulk_timezone: str | None = None
) -> AsyncIterator[asyncpg.Connection]:
    """A read-only REPEATABLE READ transaction bounded by the configured statement timeout
    (JIT off: these queries are short, and compiling them would cost more than running them).
    `bulk_timezone` (downloads): the publication's time zone for formatting times, and room
    to sort a batch in memory.

    Bounded on the client side too, for a server that does not answer at all
    (frozen, or a network that drops packets): a connection within ACQUIRE_TIMEOUT,
    BEGIN within ROUND_TRIP_TIMEOUT, and, except for downloads (each batch bounded
    by the pool's command timeout), the whole transaction within the statement
    timeout plus QUERY_MARGIN. A connection that failed that way is closed, never
    given back. The errors raised are those of `DATABASE_UNAVAILABLE` (a 503)."""
    statement_timeout = int(statement_timeout_ms)
    settings = f"SET LOCAL statement_timeout = {statement_timeout}; SET LOCAL jit = off"
    if bulk_timezone is not None:
        settings += f"; SET LOCAL TimeZone = {sql_literal(bulk_timezone)}; SET LOCAL work_mem = '{DOWNLOAD_WORK_MEM}'"
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
        try:
            # The read-only role on top of READ ONLY: even a statement that escaped both
            # could not write, it would lack the privilege (see sql/003_roles.sql).
            if await can_switch_role(pool, conn, READER_ROLE):
                settings += f"; SET LOCAL ROLE {READER_ROLE}"
            # BEGIN and the settings in one round trip (asyncpg's Transaction would take two).
            await conn.execute(
                f"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {settings}", timeout=ROUND_TRIP_TIMEOUT
            )
        except BaseException:
            conn.terminate()
            raise
        deadline = (
            contextlib.nullcontext()
            if bulk_timezone is not None
            else asyncio.timeout(statement_timeout / 1000 + QUERY_MARGIN)
        )
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


@asynccontextmanager
async def writing(pool: asyncpg.Pool, statement_timeout_ms: int) -> AsyncIterator[asyncpg.Connection]:
    """A transaction on the storage pool, as `roadfeed_writer` when the pool's role may be it;
    bounded like `reading`, so a silent server gives a 503, not a hung request."""
    statement_timeout = int(statement_timeout_ms)
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
        try:
            async with asyncio.timeout(statement_timeout / 1000 + QUERY_MARGIN), conn.transaction():
                settings = f"SET LOCAL statement_timeout = {statement_timeout}"
                if await can_switch_role(pool, conn, WRITER_ROLE):
                    settings += f"; SET LOCAL ROLE {WRITER_ROLE}"
                await conn.execute(settings)
                yield conn
        except DATABASE_UNAVAILABLE:
            conn.terminate()  # giving it back would wait for the silent server
            raise
