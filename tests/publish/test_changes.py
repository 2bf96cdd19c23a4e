"""The delta feed and the change stream over real HTTP: every stored change once, in
`seq` order, resumable from its cursor, filtered by area, even when writers commit
out of order; the stream's resume, back-pressure and shutdown."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from httpx_sse import aconnect_sse
from sseclient import SSEClient

from exporters.geojson import event_feature
from feed.config import Config, SourceConfig
from feed.http.app import build_app, health_routes
from feed.http.changes import (
    CHANGE_HUB,
    CHANGES_PATH,
    POSITION_EVENT,
    STREAM_PATH,
    SSEMessage,
    delivery_latency,
    iter_sse,
    make_changes_routes,
)
from feed.model import EventRecord, Geometry
from feed.publish.changes import LISTENER_APPLICATION_NAME
from feed.store.storage import Storage

NOW = datetime.now(UTC).replace(microsecond=0)  # fixed: equal records must hash equal
WAIT = 30.0  # seconds a change may take to arrive; generous (loaded machines), this is no speed test

CONFIG = Config(sources=[SourceConfig(id="cd34", kind="datex2", url="http://127.0.0.1:9/cd34", interval=60)])

MONTPELLIER = Geometry(type="LineString", coordinates=[[3.870, 43.610], [3.880, 43.615], [3.890, 43.620]])
SETE = Geometry(type="Point", coordinates=[3.690, 43.400])
SETE_BBOX = "3.6,43.35,3.75,43.45"


def event(ext: str, **changes: Any) -> EventRecord:
    fields: dict[str, Any] = dict(
        external_id=ext,
        type="roadworks",
        subtype="MaintenanceWorks",
        status="active",
        severity="medium",
        planned_start=NOW - timedelta(days=1),
        planned_end=NOW + timedelta(days=3),
        road="RD613",
        direction="both",
        geometry=MONTPELLIER,
        descriptions={"fr": "Travaux", "en": "Road works"},
    )
    return EventRecord(**{**fields, **changes})


async def store(storage: Storage, *records: EventRecord, source: str = "cd34", **kwargs: Any) -> None:
    await storage.upsert_events(source, list(records), seen_at=datetime.now(UTC), **kwargs)


@asynccontextmanager
async def running(storage: Storage, **hub_options: Any) -> AsyncIterator[TestClient]:
    """The real application on 127.0.0.1; with `hub_options`, only the change routes, tuned."""
    await storage.ensure_source("cd34", "datex2", "http://127.0.0.1:9/cd34")
    routes = [health_routes, make_changes_routes(**hub_options)] if hub_options else None
    client = TestClient(TestServer(build_app(CONFIG, storage, routes=routes), host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def client(storage: Storage) -> AsyncIterator[TestClient]:
    async with running(storage) as c:
        yield c


@pytest.fixture
async def quick(storage: Storage) -> AsyncIterator[TestClient]:
    """Heartbeats every 0.2 s, so a test knows when the stream is live."""
    async with running(storage, heartbeat=0.2) as c:
        yield c


async def changes(client: TestClient, **params: Any) -> dict[str, Any]:
    async with client.get(CHANGES_PATH, params=params) as resp:
        body = await resp.read()
        assert resp.status == 200, body
        assert resp.headers["Content-Type"] == "application/json"
        assert resp.headers["Cache-Control"] == "no-cache"
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        return json.loads(body)


def summary(page: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(c["event"]["id"], c["change"], c["event"]["properties"]["version"]) for c in page["changes"]]


class Stream:
    """One open /feeds/events/stream, read the way an EventSource would."""

    def __init__(self, resp: ClientResponse) -> None:
        self.resp = resp
        self._messages = aiter(iter_sse(resp.content))
        self.comments: list[str] = []
        self.last_event_id = ""

    async def _next(self) -> SSEMessage | None:
        try:
            message = await anext(self._messages)
        except StopAsyncIteration:
            return None
        self.last_event_id = message.last_event_id
        if message.comment is not None:
            self.comments.append(message.comment)
        return message

    async def events(self, n: int) -> list[SSEMessage]:
        """The next `n` events (comments are kept aside); fails after WAIT seconds."""
        out: list[SSEMessage] = []
        async with asyncio.timeout(WAIT):
            while len(out) < n:
                message = await self._next()
                assert message is not None, f"the stream ended after {len(out)} of {n} events"
                if message.event not in (None, POSITION_EVENT):
                    out.append(message)
        return out

    async def comment(self, text: str) -> list[SSEMessage]:
        """Reads until a comment containing `text`; returns the events read on the way."""
        seen: list[SSEMessage] = []
        async with asyncio.timeout(WAIT):
            while True:
                message = await self._next()
                assert message is not None, f"the stream ended before a comment with {text!r}"
                if message.comment is not None and text in message.comment:
                    return seen
                if message.event not in (None, POSITION_EVENT):
                    seen.append(message)

    async def ended(self) -> list[SSEMessage]:
        """Reads to the end of the stream; returns the events read on the way."""
        seen: list[SSEMessage] = []
        async with asyncio.timeout(WAIT):
            while (message := await self._next()) is not None:
                if message.event not in (None, POSITION_EVENT):
                    seen.append(message)
        return seen


@asynccontextmanager
async def stream(client: TestClient, *, last_event_id: str | None = None, **params: Any) -> AsyncIterator[Stream]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    resp = await client.get(STREAM_PATH, params=params, headers=headers)
    try:
        assert resp.status == 200, await resp.read()
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["Cache-Control"] == "no-cache"
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        s = Stream(resp)
        await s.comment("")  # the opening block has been read: the stream is set up
        yield s
    finally:
        resp.close()


def ids_of(messages: Sequence[SSEMessage]) -> list[str]:
    return [m.json()["event"]["id"] for m in messages]


# ---------------------------------------------------------------- delta feed


async def test_changes_say_what_changed_and_continue_exactly(client: TestClient, storage: Storage):
    first = await changes(client)
    assert (first["changes"], first["more"]) == ([], False)
    start = first["next_cursor"]
    assert isinstance(start, str) and first["publication_time"].endswith("Z")

    await store(storage, event("works"), event("crash", type="accident", geometry=SETE), complete_snapshot=True)
    await store(
        storage, event("works", severity="high"), event("crash", type="accident", geometry=SETE, status="ended")
    )
    await store(storage, event("works", severity="high"), complete_snapshot=True)  # nothing new: no change
    page = await changes(client, since=start)
    assert summary(page) == [
        ("cd34:works", "created", 1),
        ("cd34:crash", "created", 1),
        ("cd34:works", "updated", 2),
        ("cd34:crash", "ended", 2),
    ]
    assert page["more"] is False
    cursors = [c["cursor"] for c in page["changes"]]
    assert len(set(cursors)) == 4 and page["next_cursor"] == cursors[-1]
    ended = page["changes"][-1]
    assert ended["event"]["properties"]["status"] == "ended"
    assert datetime.fromisoformat(ended["recorded"].replace("Z", "+00:00")) <= datetime.now(UTC)
    # The event as events.geojson publishes it.
    stored = {e.id: e for e in await storage.events()}
    assert ended["event"] == event_feature(stored["cd34:crash"])
    assert page["changes"][2]["event"] == event_feature(stored["cd34:works"])

    caught_up = await changes(client, since=page["next_cursor"])
    assert (caught_up["changes"], caught_up["next_cursor"], caught_up["more"]) == ([], page["next_cursor"], False)

    await store(
        storage, event("works", severity="high"), event("crash", type="accident", geometry=SETE), complete_snapshot=True
    )
    await store(storage, event("crash", type="accident", geometry=SETE), complete_snapshot=True)
    later = await changes(client, since=page["next_cursor"])
    assert summary(later) == [("cd34:crash", "reopened", 3), ("cd34:works", "ended", 3)]
    assert later["changes"][1]["event"]["properties"]["actual_end"] is not None
    # Without `since`: from the very first change.
    assert summary(await changes(client)) == summary(page) + summary(later)


async def test_paging_with_limit_walks_every_change_once(client: TestClient, storage: Storage):
    for i in range(5):
        await store(storage, *(event(f"e{j}", severity=("low", "high")[i % 2]) for j in range(5)))
    everything = await changes(client, limit=5000)
    assert len(everything["changes"]) == 25 and everything["more"] is False

    walked: list[dict[str, Any]] = []
    cursor, pages = None, 0
    while True:
        page = await changes(client, limit=7, **({"since": cursor} if cursor else {}))
        pages += 1
        assert len(page["changes"]) <= 7
        walked += page["changes"]
        if page["changes"]:
            assert page["next_cursor"] == page["changes"][-1]["cursor"]
        cursor = page["next_cursor"]
        if not page["more"]:
            break
    assert pages == 4
    assert walked == everything["changes"]
    assert {(c["event"]["id"], c["event"]["properties"]["version"]) for c in walked} == {
        (f"cd34:e{j}", v) for j in range(5) for v in range(1, 6)
    }


async def test_filters_keep_changes_in_or_leaving_the_area(client: TestClient, storage: Storage):
    await store(
        storage,
        event("town"),
        event("port", type="accident", geometry=SETE),
        event("mover", geometry=SETE),
        event("nowhere", geometry=None),
    )
    await store(storage, event("town", severity="high"), event("mover", geometry=MONTPELLIER))
    await store(storage, event("mover", geometry=MONTPELLIER, severity="low"))
    page = await changes(client, bbox=SETE_BBOX)
    # "mover" left the box in version 2: the client hears it, and nothing after.
    assert summary(page) == [("cd34:port", "created", 1), ("cd34:mover", "created", 1), ("cd34:mover", "updated", 2)]
    assert summary(await changes(client, type="accident")) == [("cd34:port", "created", 1)]
    assert summary(await changes(client, type="accident,roadworks", bbox=SETE_BBOX)) == summary(page)

    small = await changes(client, bbox=SETE_BBOX, limit=1)
    assert summary(small) == summary(page)[:1] and small["more"] is True
    rest = await changes(client, bbox=SETE_BBOX, since=small["next_cursor"])
    assert summary(rest) == summary(page)[1:] and rest["more"] is False
    # Filtered-out changes still move the cursor on.
    assert rest["next_cursor"] == (await changes(client))["next_cursor"] != rest["changes"][-1]["cursor"]


async def test_bad_parameters_get_a_400_in_the_feeds_error_shape(client: TestClient, storage: Storage):
    await store(storage, event("works"))
    latest = (await changes(client))["next_cursor"]
    ahead = str(int(latest) + 1000)
    cases = [
        (CHANGES_PATH, {"since": "abc"}, "since"),
        (CHANGES_PATH, {"since": "-1"}, "since"),
        (CHANGES_PATH, {"since": "1.5"}, "since"),
        (CHANGES_PATH, {"since": ahead}, "since"),
        (CHANGES_PATH, {"since": "9" * 40}, "since"),
        (CHANGES_PATH, [("since", "1"), ("since", "2")], "since"),
        (CHANGES_PATH, {"limit": "0"}, "limit"),
        (CHANGES_PATH, {"limit": "5001"}, "limit"),
        (CHANGES_PATH, {"limit": "ten"}, "limit"),
        (CHANGES_PATH, {"bbox": "1,2,3"}, "bbox"),
        (CHANGES_PATH, {"type": "meteor"}, "type"),
        (CHANGES_PATH, {"status": "active"}, "status"),
        (STREAM_PATH, {"since": "x"}, "since"),
        (STREAM_PATH, {"bbox": "200,0,201,1"}, "bbox"),
    ]
    for path, params, parameter in cases:
        async with client.get(path, params=params) as resp:
            body = await resp.json()
            assert resp.status == 400, (params, body)
            assert body["error"] == "invalid_parameter" and body["parameter"] == parameter, (params, body)
            assert body["detail"] and resp.headers["Access-Control-Allow-Origin"] == "*"
    async with client.get(STREAM_PATH, headers={"Last-Event-ID": ahead}) as resp:
        assert resp.status == 400 and (await resp.json())["parameter"] == "Last-Event-ID"
    assert (await changes(client, limit="5000", since="0"))["next_cursor"] == latest
    for path in (CHANGES_PATH, STREAM_PATH):
        async with client.options(
            path, headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}
        ) as resp:
            assert resp.status == 204 and "Last-Event-ID" in resp.headers["Access-Control-Allow-Headers"]


async def test_a_change_committed_after_a_later_one_is_not_skipped(client: TestClient, storage: Storage):
    """Seq 2 commits after seq 3: a reader must not answer 3 and move past 2."""
    await storage.ensure_source("other", "datex2", "http://127.0.0.1:9/other")
    await store(storage, event("slow"))
    cursor = (await changes(client))["next_cursor"]
    state = await storage.pool.fetchval("SELECT state FROM event_versions WHERE event_id = 'cd34:slow'")

    async with storage.pool.acquire() as writer:
        # A writer that has its seq and has not committed yet, as upsert_events does it.
        for outcome in ("rollback", "commit"):
            tx = writer.transaction()
            await tx.start()
            await writer.execute("SELECT pg_advisory_xact_lock(2, hashtext('cd34'))")
            await writer.execute(
                """INSERT INTO event_versions (event_id, version, change, recorded, state)
                   VALUES ('cd34:slow', 2, 'updated', now(), $1)""",
                {**state, "version": 2},
            )
            await store(storage, event(f"quick-{outcome}"), source="other")
            reader = asyncio.create_task(changes(client, since=cursor))
            await asyncio.sleep(0.3)
            assert not reader.done(), "answered while an earlier change could still commit"
            await (tx.rollback() if outcome == "rollback" else tx.commit())
            page = await asyncio.wait_for(reader, WAIT)
            if outcome == "rollback":  # the abandoned seq is a hole, skipped
                assert summary(page) == [("other:quick-rollback", "created", 1)]
            else:
                assert summary(page) == [("cd34:slow", "updated", 2), ("other:quick-commit", "created", 1)]
            assert page["more"] is False
            cursor = page["next_cursor"]


# ---------------------------------------------------------------- stream


async def test_stream_pushes_changes_in_order(quick: TestClient, storage: Storage):
    async with stream(quick) as s, stream(quick) as other:
        assert s.last_event_id == (await changes(quick))["next_cursor"]  # resumable from the very start
        await store(storage, event("a"), event("b", geometry=SETE))
        await store(storage, event("a", status="ended"))
        got = await s.events(3)
        assert [(m.event, m.json()["event"]["id"], m.json()["event"]["properties"]["version"]) for m in got] == [
            ("created", "cd34:a", 1),
            ("created", "cd34:b", 1),
            ("ended", "cd34:a", 2),
        ]
        page = await changes(quick)
        assert [m.json() for m in got] == page["changes"]  # the same documents as the delta feed
        assert [m.last_event_id for m in got] == [c["cursor"] for c in page["changes"]]
        assert all(0 <= delivery_latency(m) < WAIT for m in got)
        assert [m.json() for m in await other.events(3)] == page["changes"]
        await s.comment("heartbeat")
        # One database listener however many clients.
        assert quick.app[CHANGE_HUB].clients == 2
        async with asyncio.timeout(WAIT):
            while not quick.app[CHANGE_HUB].listening:
                await asyncio.sleep(0.05)
        assert (
            await storage.pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", LISTENER_APPLICATION_NAME
            )
            == 1
        )


async def test_reconnecting_with_last_event_id_loses_nothing(quick: TestClient, storage: Storage):
    async with stream(quick) as s:
        fresh_id = s.last_event_id  # given before any change
        await store(storage, event("a"), event("b"))
        first = await s.events(2)
        last_id = s.last_event_id
    assert last_id == first[-1].json()["cursor"]

    await store(storage, event("a", severity="high"), event("c"))  # nobody connected
    await store(storage, event("b", status="ended"))
    async with stream(quick, last_event_id=last_id) as s:
        missed = await s.events(3)
        assert [(m.event, *ids_of([m])) for m in missed] == [
            ("updated", "cd34:a"),
            ("created", "cd34:c"),
            ("ended", "cd34:b"),
        ]
        await store(storage, event("d"))
        assert [(m.event, *ids_of([m])) for m in await s.events(1)] == [("created", "cd34:d")]
        received = first + missed
    # The first connection's initial id alone resumes from before every change; `since` works too.
    async with stream(quick, last_event_id=fresh_id, since=last_id) as s:
        everything = await s.events(6)
    async with stream(quick, since=fresh_id) as s:
        assert [m.json() for m in await s.events(6)] == [m.json() for m in everything]
    page = await changes(quick)
    assert [m.json() for m in everything] == page["changes"]
    assert [m.json()["cursor"] for m in received] == [c["cursor"] for c in page["changes"][:5]]


async def test_stream_bbox_filter(quick: TestClient, storage: Storage):
    async with stream(quick, bbox=SETE_BBOX) as s:
        await store(storage, event("town"), event("port", geometry=SETE), event("mover", geometry=SETE))
        await store(storage, event("town", severity="high"), event("mover", geometry=MONTPELLIER))
        await store(
            storage, event("mover", geometry=MONTPELLIER, severity="low"), event("port", status="ended", geometry=SETE)
        )
        got = await s.events(4)
        assert [(m.event, *ids_of([m])) for m in got] == [
            ("created", "cd34:port"),
            ("created", "cd34:mover"),
            ("updated", "cd34:mover"),
            ("ended", "cd34:port"),
        ]
        await store(storage, event("town", severity="low"))  # outside: not sent, but the resume point moves
        latest = (await changes(quick))["next_cursor"]
        async with asyncio.timeout(WAIT):
            while s.last_event_id != latest:
                assert not await s.comment("heartbeat"), "an event outside the box was sent"


async def test_a_client_too_far_behind_is_dropped_and_resumes(storage: Storage):
    async with running(storage, heartbeat=0.2, queue_size=3) as client:
        async with stream(client) as s:
            await s.comment("heartbeat")  # live: changes now come through the hub's queue
            await store(storage, *(event(f"e{i}") for i in range(5)))  # one batch of 5 > 3
            assert await s.ended() == []
            assert any("too far behind" in c for c in s.comments)
            resume = s.last_event_id
        assert client.app[CHANGE_HUB].clients == 0
        async with stream(client, last_event_id=resume) as s:
            assert ids_of(await s.events(5)) == [f"cd34:e{i}" for i in range(5)]


async def test_closing_the_application_closes_open_streams(storage: Storage):
    async with running(storage) as client, stream(client) as a, stream(client, bbox=SETE_BBOX) as b:
        await store(storage, event("a", geometry=SETE))
        await a.events(1)
        await b.events(1)
        await asyncio.wait_for(client.server.close(), WAIT)  # would hang for a minute otherwise
        for s in (a, b):
            assert await s.ended() == []
            assert any("shutting down" in c for c in s.comments)


# ---------------------------------------------------------------- third-party SSE clients


def _raw_blocks(raw: bytes) -> list[list[str]]:
    """The stream's complete blocks (ended by a blank line) as their lines."""
    return [block.splitlines() for block in raw.decode().split("\n\n")[:-1]]


async def _stored_in_and_out_of_the_box(storage: Storage) -> None:
    await store(storage, event("port", geometry=SETE))
    await store(storage, event("town"))  # outside the box: moves the resume point only
    await store(storage, event("port", status="ended", geometry=SETE))
    await store(storage, event("town", severity="high"))


async def test_every_block_with_an_id_has_data_and_heartbeats_are_comment_lines(quick: TestClient, storage: Storage):
    async with quick.get(STREAM_PATH, params={"bbox": SETE_BBOX}) as resp:
        raw = await resp.content.readuntil(b"\n\n")  # the opening position event
        await _stored_in_and_out_of_the_box(storage)
        latest = (await changes(quick))["next_cursor"]
        async with asyncio.timeout(WAIT):
            while f'"cursor":"{latest}"}}\n\n'.encode() not in raw:  # the position after the last filtered change
                raw += await resp.content.readany()
    heartbeats = raw.count(b": heartbeat\n")
    assert heartbeats >= 1
    blocks = _raw_blocks(raw)
    for block in blocks:
        fields = [line.partition(":")[0] for line in block if not line.startswith(":")]
        assert fields, f"a block of comments alone ends with a blank line: {block}"
        if "id" in fields:
            assert "data" in fields and "event" in fields, block
        json.loads("\n".join(line[len("data: ") :] for line in block if line.startswith("data: ")))
    assert b": heartbeat\n\n" not in raw


async def test_httpx_sse_sees_only_events_with_json_data(quick: TestClient, storage: Storage):
    url = f"http://127.0.0.1:{quick.port}{STREAM_PATH}"
    seen = []
    async with (
        httpx.AsyncClient(timeout=WAIT) as http,
        aconnect_sse(http, "GET", url, params={"bbox": SETE_BBOX}) as source,
    ):
        messages = source.aiter_sse()
        seen.append(await anext(messages))  # the opening position
        await _stored_in_and_out_of_the_box(storage)
        latest = (await changes(quick))["next_cursor"]
        async with asyncio.timeout(WAIT):
            while seen[-1].id != latest:  # heartbeats pass meanwhile: none may surface
                seen.append(await anext(messages))
    documents = [json.loads(m.data) for m in seen]  # what a navigation app does with every event
    assert [m.event for m in seen] == ["position", "created", "ended", "position"], [m.event for m in seen]
    assert [d["cursor"] for d in documents] == [m.id for m in seen]
    assert [d["event"]["id"] for d in documents[1:3]] == ["cd34:port", "cd34:port"]


async def test_sseclient_py_sees_only_events_with_json_data(quick: TestClient, storage: Storage):
    url = f"http://127.0.0.1:{quick.port}{STREAM_PATH}?bbox={SETE_BBOX}"
    await _stored_in_and_out_of_the_box(storage)
    latest = (await changes(quick))["next_cursor"]

    def read() -> list[Any]:
        """From the start (since=0), in a thread, as a synchronous client would."""
        with urllib.request.urlopen(url + "&since=0", timeout=WAIT) as response:
            out = []
            for message in SSEClient(response).events():
                out.append(message)
                if message.id == latest:
                    return out
        return out

    seen = await asyncio.to_thread(read)
    documents = [json.loads(m.data) for m in seen]
    assert [m.event for m in seen] == ["position", "created", "ended", "position"], [m.event for m in seen]
    assert [d["cursor"] for d in documents] == [m.id for m in seen]
