"""Agents and roles over the real app and databases: the `roadfeed users` command,
log-in with a session and its CSRF token, personal tokens, and what each role may
not do (a reader cannot write, a disabled account cannot log in, a session request
without its CSRF token is refused, passwords are stored as argon2 hashes)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from agents_support import load_simulated_roads
from feed.cli import main
from feed.config import Config, PublicationConfig, ServerConfig
from feed.http import agents
from feed.http.app import build_app
from feed.store.storage import Storage

ADMIN = "ops-admin-token"
PASSWORD = "correct horse battery"
EVENT = {
    "kind": "works",
    "road": "RD613",
    "from": {"pr": 12},
    "to": {"pr": 13, "abscissa": 200},
    "description": {"fr": "Réfection de chaussée", "en": "Resurfacing"},
}


def users(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str, stdin: str = ""
) -> tuple[int, str, str]:
    monkeypatch.setenv("ROADFEED_DATABASE_URL", db_url)
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(["users", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
async def app(
    storage: Storage, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> AsyncIterator[tuple[TestClient, dict[str, str]]]:
    await load_simulated_roads(storage)
    for name, role in (("rita", "reader"), ("eddie", "editor"), ("ada", "administrator")):
        code, _, err = users(
            db_url, monkeypatch, capsys, "add", name, "--role", role, "--password-stdin", stdin=PASSWORD + "\n"
        )
        assert code == 0, err
    tokens = {}
    for name in ("rita", "eddie"):
        code, out, _ = users(db_url, monkeypatch, capsys, "token", name, "--label", "tests")
        tokens[name] = out.strip()
    config = Config(server=ServerConfig(admin_token=ADMIN, rate_limit_per_minute=0), publication=PublicationConfig())
    client = TestClient(TestServer(build_app(config, storage), host="127.0.0.1"))
    await client.start_server()
    try:
        yield client, tokens
    finally:
        await client.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(client: TestClient, username: str, password: str = PASSWORD) -> tuple[int, dict[str, Any]]:
    async with client.post("/api/v1/session", json={"username": username, "password": password}) as resp:
        return resp.status, await resp.json()


def test_the_users_command(db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        users(
            db_url,
            monkeypatch,
            capsys,
            "add",
            "eve",
            "--role",
            "editor",
            "--display-name",
            "Ève M.",
            "--password-stdin",
            stdin=PASSWORD + "\n",
        )[0]
        == 0
    )
    code, _, err = users(
        db_url, monkeypatch, capsys, "add", "eve", "--role", "editor", "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert code == 2 and "already exists" in err
    code, _, err = users(
        db_url, monkeypatch, capsys, "add", "bob", "--role", "editor", "--password-stdin", stdin="short\n"
    )
    assert code == 2 and "at least 10 characters" in err
    code, _, err = users(
        db_url, monkeypatch, capsys, "add", "Bad Name", "--role", "editor", "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert code == 2 and "username" in err
    code, out, _ = users(db_url, monkeypatch, capsys, "list")
    assert code == 0 and "eve" in out and "editor" in out and "active" in out and "Ève M." in out
    token = users(db_url, monkeypatch, capsys, "token", "eve")[1].strip()
    assert len(token) >= 40
    assert users(db_url, monkeypatch, capsys, "disable", "eve")[0] == 0
    assert "disabled" in users(db_url, monkeypatch, capsys, "list")[1]
    code, _, err = users(db_url, monkeypatch, capsys, "token", "eve")
    assert code == 2 and "disabled" in err
    with psycopg.connect(db_url) as conn:
        (stored,) = conn.execute("SELECT password_hash FROM agents WHERE username = 'eve'").fetchone()
        tokens = conn.execute("SELECT token_hash FROM agent_tokens").fetchall()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert agents.verify_password(stored, PASSWORD) and not agents.verify_password(stored, PASSWORD + "!")
    assert tokens == [(agents.secret_hash(token),)]  # only the hash of a token is kept


async def test_a_reader_cannot_write_an_editor_can(app: tuple[TestClient, dict[str, str]]) -> None:
    client, tokens = app
    async with client.post("/api/v1/events", json=EVENT) as resp:
        assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
    async with client.post("/api/v1/events", json=EVENT, headers=bearer("not-a-token")) as resp:
        assert resp.status == 401
    async with client.post("/api/v1/events", json=EVENT, headers=bearer(tokens["rita"])) as resp:
        body = await resp.json()
        assert resp.status == 403 and body["error"] == "forbidden" and "editor" in body["detail"]
    async with client.post("/api/v1/roads", data=b"road,pr,lon,lat\n", headers=bearer(tokens["eddie"])) as resp:
        assert resp.status == 403  # an editor does not replace the referential
    async with client.post("/api/v1/events", json=EVENT, headers=bearer(tokens["eddie"])) as resp:
        created = await resp.json()
        assert resp.status == 201, created
    assert created["author"] == "eddie"
    async with client.post("/api/v1/events", json=EVENT, headers=bearer(ADMIN)) as resp:
        assert resp.status == 201 and (await resp.json())["author"] == "admin-token"


async def test_sessions_need_their_csrf_token_for_writes(app: tuple[TestClient, dict[str, str]]) -> None:
    client, _ = app
    status, body = await login(client, "eddie", "wrong password!")
    assert status == 401 and body["error"] == "login_failed"
    status, body = await login(client, "nobody")
    assert status == 401
    async with client.post("/api/v1/session", json={"username": "eddie", "password": PASSWORD}) as resp:
        session = await resp.json()
        assert resp.status == 200 and session["role"] == "editor"
        set_cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie and "Path=/" in set_cookie
    csrf = session["csrf_token"]
    async with client.get("/api/v1/session") as resp:  # reads need no CSRF token
        assert resp.status == 200 and (await resp.json())["csrf_token"] == csrf
    async with client.post("/api/v1/events", json=EVENT) as resp:
        body = await resp.json()
        assert resp.status == 403 and body["error"] == "csrf"
    async with client.post("/api/v1/events", json=EVENT, headers={"X-CSRF-Token": "forged"}) as resp:
        assert resp.status == 403
    async with client.post("/api/v1/events", json=EVENT, headers={"X-CSRF-Token": csrf}) as resp:
        assert resp.status == 201 and (await resp.json())["author"] == "eddie"
    async with client.delete("/api/v1/session", headers={"X-CSRF-Token": csrf}) as resp:
        assert resp.status == 200
    async with client.post("/api/v1/events", json=EVENT, headers={"X-CSRF-Token": csrf}) as resp:
        assert resp.status == 401  # the session is gone


async def test_a_disabled_account_cannot_log_in_and_its_session_and_tokens_stop(
    app: tuple[TestClient, dict[str, str]],
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client, tokens = app
    status, session = await login(client, "eddie")
    assert status == 200
    assert users(db_url, monkeypatch, capsys, "disable", "eddie")[0] == 0
    status, _body = await login(client, "eddie")
    assert status == 401
    async with client.post("/api/v1/events", json=EVENT, headers={"X-CSRF-Token": session["csrf_token"]}) as resp:
        assert resp.status == 401
    async with client.post("/api/v1/events", json=EVENT, headers=bearer(tokens["eddie"])) as resp:
        assert resp.status == 401


async def test_routes_that_need_the_database_answer_503_without_it(db_url: str) -> None:
    store = await Storage.open(db_url)
    await load_simulated_roads(store)
    config = Config(server=ServerConfig(admin_token=ADMIN, rate_limit_per_minute=0), publication=PublicationConfig())
    client = TestClient(TestServer(build_app(config, store), host="127.0.0.1"))
    await client.start_server()
    try:
        store.pool.terminate()  # the database is gone for this application
        for method, path, body in [
            ("GET", "/api/v1/roads", None),
            ("GET", "/api/v1/roads/RD613/pr", None),
            ("GET", "/api/v1/road-conditions", None),
            ("GET", "/api/v1/markings", None),
            ("POST", "/api/v1/events", EVENT),
            ("POST", "/api/v1/session", {"username": "a", "password": "b"}),
        ]:
            async with client.request(method, path, json=body, headers=bearer(ADMIN)) as resp:
                assert resp.status == 503, (method, path, await resp.text())
                assert resp.headers["Retry-After"] == "10"
    finally:
        await client.close()
