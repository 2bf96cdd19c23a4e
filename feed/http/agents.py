"""Road agents: accounts with a role, web sessions with CSRF protection, personal
API tokens, and who may write what.

Roles, each including the one before: `reader` (reads what agents see),
`editor` (authors events, road conditions, markings, campaigns), `administrator`
(also imports the road referential and manages markings of every kind). The
`[server] admin_token` bearer stays for operations and counts as an administrator
whose writes are signed "admin-token".

Passwords are hashed with argon2id (argon2-cffi); session ids and API tokens are
random and only their SHA-256 is stored. A session lives in an HttpOnly,
SameSite=Strict cookie; every unsafe request made with it must also carry its
CSRF token in `X-CSRF-Token` (the page reads it from `GET /api/v1/session`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
import psycopg
from aiohttp import web
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from feed.errors import BadParameter, BadRequest, Forbidden, InputError, RequestError, Unauthorized, Unavailable
from feed.http.documents import API
from feed.http.errors import refusal
from feed.store import agents as accounts
from feed.store.transactions import writing

if TYPE_CHECKING:
    from feed.http.context import AppContext

__all__ = [
    "ROLES",
    "AgentError",
    "Principal",
    "agent_routes",
    "answering",
    "authorised",
    "hash_password",
    "new_secret",
    "public",
    "secret_hash",
    "verify_password",
]

ROLES = ("reader", "editor", "administrator")
USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
SESSION_COOKIE = "roadfeed_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_LIFETIME = timedelta(hours=12)
MIN_PASSWORD = 10
ADMIN_AUTHOR = "admin-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_HASHER = PasswordHasher()  # argon2id with the library's vetted defaults
# Verified when the username is unknown, so that answering takes as long either way.
_DUMMY_HASH = _HASHER.hash("not a password of anyone")


class AgentError(InputError, ValueError):
    """A refused account operation, with the reason."""


@dataclass(frozen=True)
class Principal:
    """Who makes a request: an agent, or the operators' admin token."""

    author: str  # recorded with every write
    role: str
    agent_id: int | None = None
    csrf: str | None = None  # set when authenticated by a session cookie

    def may(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AgentError(f"a password needs at least {MIN_PASSWORD} characters")
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def secret_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def check_username(username: str) -> str:
    if not USERNAME.match(username):
        raise AgentError(f"username {username!r}: 2 to 64 of a-z 0-9 . _ - starting with a letter or digit")
    return username


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AgentError(f"role {role!r}: one of {', '.join(ROLES)}")
    return role


# --------------------------------------------------------------------------- database


async def _login(conn: asyncpg.Connection, username: str, password: str) -> tuple[accounts.Agent, str, str] | None:
    found = await accounts.login_account(conn, username)
    if found is None:
        verify_password(_DUMMY_HASH, password)
        return None
    agent, password_hash = found
    if not verify_password(password_hash, password) or agent.disabled:
        return None
    session, csrf = new_secret(), new_secret()
    await accounts.open_session(conn, secret_hash(session), agent.id, csrf, SESSION_LIFETIME)
    return agent, session, csrf


async def _principal(conn: asyncpg.Connection, request: web.Request, admin_token: str | None) -> Principal | None:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and given.strip():
        token = given.strip()
        if admin_token and hmac.compare_digest(token.encode(), admin_token.encode()):
            return Principal(ADMIN_AUTHOR, "administrator")
        row = await accounts.token_holder(conn, secret_hash(token))
        return None if row is None else Principal(row["username"], row["role"], row["id"])
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        row = await accounts.session_holder(conn, secret_hash(cookie))
        return None if row is None else Principal(row["username"], row["role"], row["id"], row["csrf"])
    return None


# --------------------------------------------------------------------------- HTTP


def json_response(document: Any, status: int = 200, **headers: str) -> web.Response:
    body = json.dumps(document, ensure_ascii=False, default=str).encode()
    return web.Response(
        status=status, body=body, headers={"Content-Type": "application/json", "Cache-Control": "no-store", **headers}
    )


AgentHandler = Callable[[web.Request, Principal], Awaitable[web.StreamResponse]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _authenticate(ctx: AppContext, request: web.Request, role: str) -> Principal:
    """The principal making `request`, if it may act as `role`; otherwise the refusal."""
    try:
        async with ctx.storage.pool.acquire() as conn:
            principal = await _principal(conn, request, ctx.config.server.admin_token)
    except (*DATABASE_DOWN, asyncpg.PostgresError):
        raise Unavailable(
            "database_unavailable", "the database cannot be reached; retry shortly", retry_after=10
        ) from None
    if principal is None:
        raise Unauthorized(
            "unauthorized", "log in (POST /api/v1/session) or send Authorization: Bearer <token>", realm="roadfeed"
        )
    if principal.csrf is not None and request.method not in SAFE_METHODS:
        given = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(given.encode(), principal.csrf.encode()):
            raise Forbidden(
                "csrf", f"a request made with a session needs its {CSRF_HEADER} header (see GET /api/v1/session)"
            )
    if not principal.may(role):
        raise Forbidden("forbidden", f"this needs the role {role} or above; {principal.author} is {principal.role}")
    return principal


def authorised(ctx: AppContext, role: str, handler: AgentHandler) -> Handler:
    """`handler` for a principal of at least `role`; refusals as JSON errors.

    401 without valid credentials, 403 when the role is too low or a session's
    unsafe request lacks its CSRF token; 503 when the database cannot answer."""

    async def handle(request: web.Request) -> web.StreamResponse:
        async def call() -> web.StreamResponse:
            return await handler(request, await _authenticate(ctx, request, role))

        return await answering(call)

    return handle


DATABASE_DOWN = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.QueryCanceledError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
)


async def answering(call: Callable[[], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """A handler's answer, its refusals as JSON errors without CORS (same origin only):
    400, 401, 403, 404, 409, and 503 (never 500) when the database cannot answer."""
    try:
        return await call()
    except RequestError as exc:
        return refusal(exc, cors=False, compact=False)
    except DATABASE_DOWN:
        return refusal(
            Unavailable("database_unavailable", "the database did not answer; retry shortly", retry_after=10),
            cors=False,
            compact=False,
        )


def public(handler: Handler) -> Handler:
    """A route open to everyone, with the same refusals as the agents' routes."""

    async def handle(request: web.Request) -> web.StreamResponse:
        return await answering(lambda: handler(request))

    return handle


async def read_json(request: web.Request, example: str) -> dict[str, Any]:
    expected = f"a JSON object, e.g. {example}"
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadParameter("body", raw[:200].decode("utf-8", "replace"), expected, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise BadParameter("body", json.dumps(body)[:200], expected, "the body is not a JSON object")
    return body


def agent_routes(app: web.Application, ctx: AppContext) -> None:
    """`/api/v1/session`: log in (POST), who am I and the CSRF token (GET), log out (DELETE)."""

    async def login(request: web.Request) -> web.Response:
        body = await read_json(request, '{"username": "alice", "password": "..."}')
        username, password = body.get("username"), body.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            raise BadRequest("bad_request", "give username and password as strings")
        try:
            async with writing(ctx.storage.pool, ctx.config.database.statement_timeout_ms) as conn:
                found = await _login(conn, username, password)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            raise Unavailable(
                "database_unavailable", "the database cannot be reached; retry shortly", retry_after=10
            ) from None
        if found is None:
            raise Unauthorized("login_failed", "unknown username, wrong password or disabled account")
        agent, session, csrf = found
        response = json_response(
            {"username": agent.username, "display_name": agent.display_name, "role": agent.role, "csrf_token": csrf}
        )
        response.set_cookie(
            SESSION_COOKIE,
            session,
            httponly=True,
            samesite="Strict",
            path="/",
            max_age=int(SESSION_LIFETIME.total_seconds()),
            secure=request.secure,
        )
        return response

    async def whoami(_request: web.Request, who: Principal) -> web.Response:
        return json_response({"username": who.author, "role": who.role, "csrf_token": who.csrf})

    async def logout(request: web.Request, _who: Principal) -> web.Response:
        async with writing(ctx.storage.pool, ctx.config.database.statement_timeout_ms) as conn:
            await accounts.end_session(conn, secret_hash(request.cookies.get(SESSION_COOKIE, "")))
        response = json_response({"logged_out": True})
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    app.router.add_post(f"{API}/session", public(login))
    app.router.add_get(f"{API}/session", authorised(ctx, "reader", whoami))
    app.router.add_delete(f"{API}/session", authorised(ctx, "reader", logout))


# --------------------------------------------------------------------------- the CLI's operations


def add_agent(conn: psycopg.Connection, username: str, role: str, password: str, display_name: str = "") -> int:
    """Creates an account (psycopg connection, as the CLI's administrative commands use)."""
    check_username(username)
    check_role(role)
    if accounts.agent_exists(conn, username):
        raise AgentError(f"username {username!r} already exists")
    return accounts.insert_agent(conn, username, display_name, role, hash_password(password))


def disable_agent(conn: psycopg.Connection, username: str) -> None:
    """Disables the account: its sessions end and its tokens stop working."""
    if not accounts.disable_agent(conn, username):
        raise AgentError(f"no account {username!r}")


def create_token(conn: psycopg.Connection, username: str, label: str = "") -> str:
    """A new personal API token, returned once (only its hash is kept)."""
    owner = accounts.token_owner(conn, username)
    if owner is None:
        raise AgentError(f"no account {username!r}")
    agent_id, disabled = owner
    if disabled:
        raise AgentError(f"account {username!r} is disabled")
    token = new_secret()
    accounts.insert_token(conn, agent_id, secret_hash(token), label)
    return token
