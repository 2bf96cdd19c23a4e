"""Road agents' accounts, web sessions and personal API tokens as stored
(sql/014_agents.sql): only hashes of session ids and tokens are kept.

The HTTP routes read and write them with asyncpg, inside a transaction of
`feed.store.transactions`; the CLI's administrative commands (`roadfeed users`)
with a psycopg connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import psycopg

__all__ = [
    "Agent",
    "agent_exists",
    "disable_agent",
    "end_session",
    "insert_agent",
    "insert_token",
    "list_agents",
    "login_account",
    "open_session",
    "session_holder",
    "token_holder",
    "token_owner",
]


@dataclass(frozen=True)
class Agent:
    id: int
    username: str
    display_name: str
    role: str
    disabled: bool


# --------------------------------------------------------------------------- the HTTP routes (asyncpg)


async def login_account(conn: asyncpg.Connection, username: str) -> tuple[Agent, str] | None:
    """The account and its password hash, for a login."""
    row = await conn.fetchrow("SELECT * FROM agents WHERE username = $1", username)
    if row is None:
        return None
    return Agent(row["id"], row["username"], row["display_name"], row["role"], row["disabled"]), row["password_hash"]


async def open_session(conn: asyncpg.Connection, id_hash: bytes, agent_id: int, csrf: str, lifetime: timedelta) -> None:
    """Stores a new session (and drops the expired ones)."""
    await conn.execute("DELETE FROM agent_sessions WHERE expires < now()")
    await conn.execute(
        "INSERT INTO agent_sessions (id_hash, agent_id, csrf, expires) VALUES ($1, $2, $3, now() + $4)",
        id_hash,
        agent_id,
        csrf,
        lifetime,
    )


async def end_session(conn: asyncpg.Connection, id_hash: bytes) -> None:
    await conn.execute("DELETE FROM agent_sessions WHERE id_hash = $1", id_hash)


async def token_holder(conn: asyncpg.Connection, token_hash: bytes) -> asyncpg.Record | None:
    """(id, username, role) of the enabled account holding this unrevoked token."""
    return await conn.fetchrow(
        """SELECT a.id, a.username, a.role FROM agent_tokens t JOIN agents a ON a.id = t.agent_id
            WHERE t.token_hash = $1 AND t.revoked IS NULL AND NOT a.disabled""",
        token_hash,
    )


async def session_holder(conn: asyncpg.Connection, id_hash: bytes) -> asyncpg.Record | None:
    """(id, username, role, csrf) of the enabled account of this unexpired session."""
    return await conn.fetchrow(
        """SELECT a.id, a.username, a.role, s.csrf FROM agent_sessions s JOIN agents a ON a.id = s.agent_id
            WHERE s.id_hash = $1 AND s.expires > now() AND NOT a.disabled""",
        id_hash,
    )


# --------------------------------------------------------------------------- the CLI's operations (psycopg)


def agent_exists(conn: psycopg.Connection, username: str) -> bool:
    return conn.execute("SELECT 1 FROM agents WHERE username = %s", (username,)).fetchone() is not None


def insert_agent(conn: psycopg.Connection, username: str, display_name: str, role: str, password_hash: str) -> int:
    row = conn.execute(
        "INSERT INTO agents (username, display_name, role, password_hash) VALUES (%s, %s, %s, %s) RETURNING id",
        (username, display_name, role, password_hash),
    ).fetchone()
    assert row is not None  # INSERT ... RETURNING gives the row
    return int(row[0])


def list_agents(conn: psycopg.Connection) -> list[Agent]:
    rows = conn.execute("SELECT id, username, display_name, role, disabled FROM agents ORDER BY username").fetchall()
    return [Agent(*r) for r in rows]


def disable_agent(conn: psycopg.Connection, username: str) -> bool:
    """Disables the account and ends its sessions; False when there is no such account."""
    row = conn.execute("UPDATE agents SET disabled = true WHERE username = %s RETURNING id", (username,)).fetchone()
    if row is None:
        return False
    conn.execute("DELETE FROM agent_sessions WHERE agent_id = %s", (row[0],))
    return True


def token_owner(conn: psycopg.Connection, username: str) -> tuple[int, bool] | None:
    """(id, disabled) of the account a token is made for."""
    row = conn.execute("SELECT id, disabled FROM agents WHERE username = %s", (username,)).fetchone()
    return None if row is None else (row[0], row[1])


def insert_token(conn: psycopg.Connection, agent_id: int, token_hash: bytes, label: str) -> None:
    conn.execute(
        "INSERT INTO agent_tokens (agent_id, token_hash, label) VALUES (%s, %s, %s)", (agent_id, token_hash, label)
    )
