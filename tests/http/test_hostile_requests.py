"""Hostile requests against the real application and database, by class:

- text PostgreSQL cannot hold (NUL; lone surrogates, which only JSON bodies can
  carry since URLs decode to UTF-8) in any documented parameter, path segment,
  parameter name or admin body field: a 400 naming it, never a 500;
- admin JSON bodies nested deeper than allowed: a 400, whatever the depth;
- requests aiohttp refuses as malformed or oversized: one log line, not a
  traceback each;
- the rate limit: an admin 429 without CORS, operators' probes on a budget of their own;
- CSV cells a spreadsheet would read as formulas, full-width forms included.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feed.config import Config, ServerConfig, SourceConfig
from feed.http.admin import MAX_DEPTH, openapi_paths
from feed.http.app import build_app
from feed.http.context import CONTEXT
from feed.http.openapi import openapi_document
from feed.model import ChannelRecord, SiteRecord
from feed.store import yearly_files
from feed.store.storage import Storage

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SOURCES = [SourceConfig(id="cnt", kind="comptage-mobilites", url="http://127.0.0.1:9/cnt", interval=300)]


def config(**server: Any) -> Config:
    return Config(sources=SOURCES, server=ServerConfig(admin_token=TOKEN, **{"rate_limit_per_minute": 0, **server}))


async def _seed(storage: Storage) -> None:
    await storage.ensure_source("cnt", "comptage-mobilites", "http://127.0.0.1:9/cnt")
    await storage.upsert_sites(
        "cnt", [SiteRecord(external_id="S1", name="Montbazin", road="RD613", lon=3.69, lat=43.51)]
    )
    await storage.upsert_channels(
        "cnt", [ChannelRecord(site_external_id="S1", external_id="C1", direction="N", time_step=3600)]
    )


async def _started(storage: Storage, cfg: Config) -> TestClient:
    client = TestClient(TestServer(build_app(cfg, storage), host="127.0.0.1"))
    await client.start_server()
    assert await client.app[CONTEXT].publisher.wait_ready(15)
    return client


@pytest.fixture(scope="module")
async def shared(server: Any) -> AsyncIterator[TestClient]:
    storage = await Storage.open(server.new_database())
    try:
        await _seed(storage)
        client = await _started(storage, config())
        try:
            yield client
        finally:
            await client.close()
    finally:
        await storage.close()


def _parameters() -> list[tuple[str, str, str, str]]:
    """(method, path template, parameter, "query" or "path") for every documented parameter
    of the public and admin APIs, and of the feeds that take some."""
    doc = openapi_document(Config())
    found = []
    for paths in (doc["paths"], openapi_paths()):
        for path, item in paths.items():
            for operation in ("get", "post", "delete"):
                if operation not in item:
                    continue
                for p in item[operation].get("parameters", []) + item.get("parameters", []):
                    if "$ref" in p:
                        node: Any = doc
                        for part in p["$ref"].removeprefix("#/").split("/"):
                            node = node[part]
                        p = node
                    found.append((operation.upper(), path, p["name"], p["in"]))
    found += [("GET", "/feeds/events.geojson", name, "query") for name in ("bbox", "type", "status")]
    found += [("GET", "/feeds/events/changes", name, "query") for name in ("since", "limit", "bbox", "type")]
    return sorted(set(found))


PARAMETERS = _parameters()
_SAFE = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
WITH_NUL = st.tuples(_SAFE, _SAFE).map(lambda parts: parts[0] + "\x00" + parts[1])


def _url(path: str, name: str, where: str, value: str) -> str:
    filled = path
    for segment in ("{id}", "{year}", "{name}", "{road}"):
        filled = filled.replace(segment, quote(value, safe="") if segment == "{" + name + "}" else "1")
    return filled if where == "path" else f"{filled}?{quote(name)}={quote(value, safe='')}"


def test_every_parameter_is_covered():
    names = {(path, name) for _, path, name, _ in PARAMETERS}
    for expected in [
        ("/api/v1/sites", "road"),
        ("/api/v1/sites", "commune"),
        ("/api/v1/events", "road"),
        ("/api/v1/events/{id}", "id"),
        ("/api/v1/admin/quarantine", "source"),
    ]:
        assert expected in names, sorted(names)


@pytest.mark.parametrize(
    ("method", "path", "name", "where"), PARAMETERS, ids=[f"{m} {p}:{n}" for m, p, n, _ in PARAMETERS]
)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=WITH_NUL)
async def test_text_the_database_cannot_hold_is_a_400_naming_the_parameter(shared, method, path, name, where, value):
    if where == "path":  # with braces, slashes or line ends a segment matches no route at all (aiohttp's 404)
        value = value.translate({ord(c): None for c in "{}/\n"})
    headers = AUTH if "/admin/" in path else {}
    async with shared.request(method, _url(path, name, where, value), headers=headers) as resp:
        body = await resp.read()
        assert resp.status == 400, (path, name, value, resp.status, body[:300])
        error = json.loads(body)
        assert error["error"] == "invalid_parameter" and error["parameter"] == name, error
        assert "NUL" in error["detail"], error


@pytest.mark.parametrize(
    "path", ["/api/v1/sites", "/api/v1/events", "/feeds/events.geojson", "/api/v1/admin/quarantine"]
)
async def test_a_parameter_name_with_nul_is_refused_too(shared, path):
    async with shared.get(f"{path}?ro%00ad=x", headers=AUTH) as resp:
        error = await resp.json()
        assert resp.status == 400 and error["parameter"] == "ro\\u0000ad", error


MARKING = {"kind": "road_closed", "road": "RD613", "from": "2025-07-01", "to": "2025-07-02", "comment": "ok"}
UNSTORABLE = st.one_of(
    WITH_NUL, st.tuples(_SAFE, st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), _SAFE).map("".join)
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from([*MARKING, "new key"]), value=UNSTORABLE)
async def test_admin_body_text_the_database_cannot_hold_is_a_400_naming_the_field(shared, field, value):
    body = dict(MARKING)
    if field == "new key":
        body[value] = "x"  # the key itself
        expected = "body"
    else:
        body[field] = value
        expected = field
    raw = json.dumps(body)  # ensure_ascii: lone surrogates travel as \\udXXX escapes, as a client sends them
    async with shared.post(
        "/api/v1/admin/markings", data=raw, headers={**AUTH, "Content-Type": "application/json"}
    ) as resp:
        answer = await resp.read()
        assert resp.status == 400, (field, value, resp.status, answer[:300])
        error = json.loads(answer)
        assert error["error"] == "invalid_parameter" and error["parameter"] == expected, error
        answer.decode("utf-8")  # the echo of the refused value is valid UTF-8


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(depth=st.integers(MAX_DEPTH + 1, 200_000), opener=st.sampled_from(["[", '{"a":']))
async def test_admin_bodies_nested_too_deep_are_a_400(shared, depth, opener):
    closer = "]" if opener == "[" else "}"
    nested = opener * depth + "1" + closer * depth
    raw = '{"kind": "road_closed", "road": "RD613", "from": "2025-07-01", "x": ' + nested + "}"
    async with shared.post(
        "/api/v1/admin/markings", data=raw.encode(), headers={**AUTH, "Content-Type": "application/json"}
    ) as resp:
        body = await resp.read()
        if len(raw) > config().server.max_request_bytes:
            assert resp.status == 413, (depth, resp.status, body[:200])
        else:
            assert resp.status == 400, (depth, resp.status, body[:200])
            assert json.loads(body)["parameter"] == "body"


async def test_brackets_inside_strings_do_not_count_as_nesting(shared):
    async with shared.get("/api/v1/sites") as resp:
        site_id = (await resp.json())["sites"][0]["id"]
    # a marking that needs no road referential: the seeded counter, faulty for a day
    body = {
        "kind": "counter_faulty",
        "site_id": site_id,
        "from": "2025-07-01",
        "to": "2025-07-02",
        "comment": "[" * 500 + "{" * 500,
    }
    async with shared.post("/api/v1/admin/markings", json=body, headers=AUTH) as resp:
        assert resp.status == 201, await resp.text()
        marking = await resp.json()
    async with shared.delete(f"/api/v1/admin/markings/{marking['id']}", headers=AUTH) as resp:
        assert resp.status == 200


# --------------------------------------------------------------------------- refusals in the logs


async def test_refused_requests_log_one_line_not_a_traceback_each(storage: Storage, caplog):
    await _seed(storage)
    client = await _started(storage, config(max_request_bytes=1024))
    try:
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            for n in range(30):
                kind = n % 3
                if kind == 0:
                    request = client.get("/api/v1/sites", headers={"X-Padding": "x" * 9000})
                elif kind == 1:
                    request = client.get("/feeds/events.geojson?" + "a" * 9000)
                else:
                    request = client.post("/api/v1/admin/markings", data=b"[" * 4096, headers=AUTH)
                async with request as resp:
                    assert resp.status in (400, 413, 431), resp.status
            await asyncio.sleep(0.1)
        records = [r for r in caplog.records if r.name in ("aiohttp.server", "roadfeed.http")]
        assert not [r for r in records if r.exc_info], [r.getMessage() for r in records if r.exc_info]
        assert len(records) <= 2, [r.getMessage() for r in records]
        assert all("\n" not in r.getMessage() for r in records)
    finally:
        await client.close()


# --------------------------------------------------------------------------- rate limit


async def test_rate_limit_refusals_keep_each_routes_cors_and_probes_have_their_own_budget(storage: Storage):
    await _seed(storage)
    client = await _started(storage, config(rate_limit_per_minute=1, rate_limit_burst=3, rate_limit_exempt=[]))
    try:
        statuses = []
        for _ in range(5):
            async with client.get("/api/v1/admin/sources", headers=AUTH) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    assert "Access-Control-Allow-Origin" not in resp.headers
                    assert int(resp.headers["Retry-After"]) > 0
        assert statuses[:3] == [200, 200, 200] and statuses[-1] == 429, statuses
        async with client.get("/api/v1/sites") as resp:  # the public budget is the same one: spent
            assert resp.status == 429 and resp.headers["Access-Control-Allow-Origin"] == "*"
        for path in ("/healthz", "/metrics", "/readyz"):  # operators' probes: a budget of their own
            async with client.get(path) as resp:
                assert resp.status == 200, path
        for _ in range(5):
            async with client.get("/healthz") as resp:
                last = resp.status
        assert last == 429  # which is limited too
    finally:
        await client.close()


# --------------------------------------------------------------------------- CSV formulas


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.one_of(
        st.tuples(
            st.sampled_from(["", " ", "  ", "\u00a0", "\u3000"]),
            st.sampled_from(list(yearly_files.FORMULA_STARTS)),
            _SAFE,
        ).map("".join),
        _SAFE,
        st.from_regex(r"\A[+-]?[0-9]{1,6}(\.[0-9]{0,3})?([eE][+-]?[0-9]{1,2})?\Z"),
        st.from_regex(r"\A[+-]?[0-9]{1,6}(\.[0-9]{0,3})?\Z").map(lambda number: number + "\n"),
    )
)
async def test_csv_cells_are_neutralised_alike_in_python_and_sql(storage: Storage, text):
    neutral = yearly_files.neutralise(text)
    in_sql = await storage.pool.fetchval(f"SELECT {yearly_files.neutralised_sql('$1::text')}", text)
    assert neutral == in_sql, (text, neutral, in_sql)
    stripped = text.lstrip(" \u00a0\u3000")
    formula = bool(stripped) and stripped[0] in yearly_files.FORMULA_STARTS
    number = yearly_files.neutralise(text) == text and formula
    assert neutral.startswith("'") or not formula or number, text
    if formula and not neutral.startswith("'"):
        float(text)  # only plain numbers keep a leading sign


def test_full_width_formulas_are_neutralised():
    assert yearly_files.neutralise("＝1+1") == "'＝1+1"  # noqa: RUF001 - full-width signs on purpose
    assert yearly_files.neutralise("＋cmd") == "'＋cmd" and yearly_files.neutralise(" =1") == "' =1"  # noqa: RUF001
    assert yearly_files.neutralise("-3.5e2") == "-3.5e2" and yearly_files.neutralise("Montbazin") == "Montbazin"


# --------------------------------------------------------------------------- cursors


def _cursor(document: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip("=")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(["sites", "events"]),
    after=st.one_of(st.integers(-(2**80), 2**80), st.text(max_size=30), UNSTORABLE),
)
async def test_forged_cursors_are_a_400_or_a_page_never_a_server_error(shared, kind, after):
    """A cursor is ours to decode: whatever a client forges inside (huge numbers, text
    the database cannot hold), the answer is a page or a 400 naming the cursor."""
    async with shared.get(f"/api/v1/{kind}", params={"cursor": _cursor([kind, after])}) as resp:
        body = await resp.read()
        assert resp.status in (200, 400), (kind, after, resp.status, body[:300])
        if resp.status == 400:
            assert json.loads(body)["parameter"] == "cursor"
