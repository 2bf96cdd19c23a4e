"""The delta feed of road events and its live form: every stored change, in order.

`GET /feeds/events/changes?since=CURSOR&limit=N` pages through the changes of
every event (`event_versions`, ordered by `seq`):

    {"changes": [{"cursor": "42", "change": "created|updated|ended|reopened",
                  "recorded": "2025-05-01T08:00:00.123Z", "event": <events.geojson Feature>}, ...],
     "next_cursor": "42", "more": false, "publication_time": "..."}

A client keeps `next_cursor` and sends it back as `since`; while `more` is true it
asks again at once, otherwise at its polling interval. Without `since` (or with
an empty one) the feed starts at the first change ever stored. `limit` is 500 by
default, 5000 at most. Cursors are opaque strings (today the decimal `seq`); one
that is malformed or ahead of the feed (another database, a restored backup) is
a 400 in the feeds' error shape. Answers are `Cache-Control: no-cache`, CORS-open,
gzip-compressed when the client accepts it.

`GET /feeds/events/stream` pushes the same documents as server-sent events:
`id: <cursor>`, `event: <change>` (so an EventSource listens for `created`,
`updated`, `ended` and `reopened`; `onmessage` sees nothing), `data: <document>`.
An id is only ever sent with an event that has data (client libraries surface an
id-only block as an empty message): the stream starts with a `retry:` hint and a
`position` event, `data: {"cursor": "<cursor>"}`, holding the starting position, so
a client that drops before any change still resumes without a loss; it resumes
after `Last-Event-ID` (or `?since=`), sending everything missed first; without
either it starts from now. With a filter, a `position` event also follows
filtered-out changes that moved the resume point on. Heartbeats, every 15 s to
keep proxies from closing the stream, are comment lines only: a comment never
ends a block with a blank line, since some clients dispatch an empty message on
every blank line once an id was seen.

Nothing is skipped, even when writers commit out of `seq` order. Two sources
storing events at the same time can commit seq 11 before seq 10; a reader that
answered "up to 11" would never send 10. So a change is only served once every
smaller `seq` is final (committed or rolled back): when the rows after the
cursor are contiguous they are final; when there is a hole, the reader waits for
the event writers that were in flight (they hold the source's advisory lock from
`Storage.upsert_events` until they commit, visible in `pg_locks`), then reads
again. Holes left by rolled-back transactions are thus skipped, never waited on
forever. Anything that writes `event_versions` must hold that lock.

Filters (`bbox`, `type`, as in /feeds/events.geojson; not `status`) keep a change
when the event matches before *or* after it, so a client also hears that an event
left its area or its type. A filtered page may hold fewer than `limit` changes
(`next_cursor` still moves past the ones filtered out).

The stream has ONE database listener per process (`ChangeHub`), started with the
first client: it reads each new batch of changes once, encodes it once, and hands
it to every client's bounded queue. A client whose queue overflows is
disconnected with a final comment; it resumes with `Last-Event-ID`. Application
shutdown closes every stream (`on_shutdown`).

For latency measurements (a benchmark, not the tests): read the stream with
`iter_sse` and take `delivery_latency(message)` = arrival time - the change's
`recorded` time. `recorded` is the `seen_at` the writer passed to
`Storage.upsert_events`, so pass `seen_at=datetime.now(UTC)` right before the call
and the latency covers write, commit, NOTIFY, read and delivery (same host clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web
from multidict import CIMultiDict, MultiMapping

from exporters import geojson
from exporters.geojson import event_feature, intersects
from feed.store import storage as _storage
from feed.http.responses import CORS_HEADERS, PREFLIGHT_HEADERS, json_error
from feed.publish.filters import BadParameter, EventFilter, parse_event_filter
from feed.deadlines import cancel_and_wait
from feed.model import Geometry, StoredEvent
from feed.store.storage import CHANGES_CHANNEL, Storage, bounded_connection

__all__ = [
    "CHANGES_PATH",
    "CHANGE_HUB",
    "POSITION_EVENT",
    "STREAM_PATH",
    "Change",
    "ChangeHub",
    "ChangeLog",
    "SSEMessage",
    "changes_routes",
    "decode_cursor",
    "delivery_latency",
    "encode_cursor",
    "iter_sse",
    "make_changes_routes",
]

log = logging.getLogger("roadfeed.changes")

CHANGES_PATH = "/feeds/events/changes"
STREAM_PATH = "/feeds/events/stream"
DEFAULT_LIMIT = 500
MAX_LIMIT = 5000
SCAN_BUDGET = 50_000  # changes a filtered page may look at before answering with `more`
STREAM_BATCH = 500  # changes read per query by the stream (catch-up and live)
READ_TIMEOUT = 3.0  # seconds one read of the change log may take: past it the database counts as away (a 503)
LISTENER_APPLICATION_NAME = "roadfeed-change-stream"
EVENT_STREAM = "text/event-stream"
POSITION_EVENT = "position"  # carries the resume point when no change does

CURSOR_EXPECTED = "a cursor this feed returned (next_cursor, a change's cursor or an SSE id)"
LIMIT_EXPECTED = f"an integer from 1 to {MAX_LIMIT}"
_CURSOR = re.compile(r"^[0-9]{1,18}$")
_LIMIT = re.compile(r"^[0-9]{1,9}$")

# The advisory lock class every event writer holds until it commits (see module doc).
_WRITER_LOCK_CLASS = _storage._LOCK_SOURCE

_READ = """
SELECT v.seq, v.change, v.recorded, v.state,
       p.state -> 'geometry' AS previous_geometry, p.state ->> 'type' AS previous_type
  FROM event_versions v
  LEFT JOIN event_versions p ON p.event_id = v.event_id AND p.version = v.version - 1
 WHERE v.seq > $1 AND ($2::bigint IS NULL OR v.seq <= $2)
 ORDER BY v.seq
 LIMIT $3"""

_WRITERS = """
SELECT coalesce(array_agg(virtualtransaction), '{}') FROM pg_locks
 WHERE locktype = 'advisory' AND granted AND classid = $1 AND objsubid = 2
   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"""

_STILL_WRITING = """
SELECT count(*) FROM pg_locks
 WHERE locktype = 'advisory' AND granted AND classid = $1 AND objsubid = 2 AND virtualtransaction = ANY($2)"""


# --------------------------------------------------------------------------- cursors and documents


def encode_cursor(seq: int) -> str:
    return str(seq)


def decode_cursor(text: str, parameter: str = "since") -> int:
    """The position a cursor stands for; BadParameter when it is not one of ours."""
    if not _CURSOR.match(text):
        raise BadParameter(parameter, text, CURSOR_EXPECTED, f"{parameter} {text!r} is not a cursor of this feed")
    return int(text)


def _iso_ms(value: datetime) -> str:
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


@dataclass(frozen=True, slots=True)
class Change:
    """One stored change of one event, with its JSON document encoded once."""

    seq: int
    kind: str  # created, updated, ended, reopened
    recorded: datetime
    event: StoredEvent
    previous_type: str | None  # the version before, for filters (None when created)
    previous_geometry: Geometry | None
    data: bytes  # the change document, compact JSON
    sse: bytes  # the same as one server-sent event

    @property
    def cursor(self) -> str:
        return encode_cursor(self.seq)

    def matches(self, query: EventFilter) -> bool:
        """The event matches `query` before or after the change."""
        if query.types is not None and not (self.event.type in query.types or self.previous_type in query.types):
            return False
        if query.bbox is not None and not (
            intersects(self.event.geometry, query.bbox)
            or (self.previous_geometry is not None and intersects(self.previous_geometry, query.bbox))
        ):
            return False
        return True


def _change(row: Mapping[str, Any]) -> Change:
    event = StoredEvent.model_validate(row["state"])
    previous = row["previous_geometry"]
    document = {"cursor": encode_cursor(row["seq"]), "change": row["change"], "recorded": _iso_ms(row["recorded"]),
                "event": event_feature(event)}
    data = geojson.dumps(document)
    sse = f"id: {document['cursor']}\nevent: {row['change']}\ndata: ".encode() + data + b"\n\n"
    return Change(row["seq"], row["change"], row["recorded"], event, row["previous_type"],
                  Geometry.model_validate(previous) if previous else None, data, sse)


def _changes(rows: Sequence[Mapping[str, Any]]) -> list[Change]:
    return [_change(r) for r in rows]


# --------------------------------------------------------------------------- reading in seq order


class ChangeLog:
    """Reads changes after a cursor, only ever those no earlier change can still join."""

    def __init__(self, pool: asyncpg.Pool, *, writer_wait: float = 5.0, poll_interval: float = 0.01) -> None:
        self.pool = pool
        self.writer_wait = writer_wait  # longest wait for in-flight writers before answering without them
        self.poll_interval = poll_interval

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with bounded_connection(self.pool, READ_TIMEOUT) as conn:
            return await conn.fetch(query, *args)

    async def _fetchval(self, query: str, *args: Any) -> Any:
        async with bounded_connection(self.pool, READ_TIMEOUT) as conn:
            return await conn.fetchval(query, *args)

    async def read(self, since: int, limit: int) -> tuple[list[Change], bool]:
        """Up to `limit` final changes after `since`, and whether more are there already."""
        rows = await self._fetch(_READ, since, None, limit + 1)
        hole = next((i for i, r in enumerate(rows) if r["seq"] != since + 1 + i), None)
        if hole is not None:
            # Every seq up to the last one seen was handed out before this read: once
            # the writers in flight now are done, each is committed or abandoned.
            last = rows[-1]["seq"]
            if await self._writers_done():
                rows = await self._fetch(_READ, since, last, limit + 1)
            else:
                rows = rows[:hole]  # what was final anyway; the rest next time
        changes = await asyncio.to_thread(_changes, rows[:limit])
        return changes, len(rows) > limit

    async def head(self) -> int:
        """The newest position such that every change up to it is final."""
        top = await self._fetchval("SELECT coalesce(max(seq), 0) FROM event_versions")
        while not await self._writers_done():
            pass  # a writer still holds changes at or below `top`: it has to finish first
        return top

    async def latest(self) -> int:
        """The newest stored change (final or not): no valid cursor is beyond it."""
        return await self._fetchval("SELECT coalesce(max(seq), 0) FROM event_versions")

    async def _writers_done(self) -> bool:
        """Waits (up to `writer_wait`) until the event writers in flight now have finished."""
        writers = await self._fetchval(_WRITERS, _WRITER_LOCK_CLASS)
        deadline = time.monotonic() + self.writer_wait
        while writers:
            if time.monotonic() > deadline:
                log.warning("event writers %s still running after %.1f s; serving the changes before them",
                            writers, self.writer_wait)
                return False
            await asyncio.sleep(self.poll_interval)
            if not await self._fetchval(_STILL_WRITING, _WRITER_LOCK_CLASS, writers):
                break
        return True

    async def page(self, since: int, limit: int, query: EventFilter) -> tuple[list[Change], int, bool]:
        """Up to `limit` matching changes, the cursor to continue from, and whether to continue now."""
        if query.is_empty:
            changes, more = await self.read(since, limit)
            return changes, changes[-1].seq if changes else since, more
        out: list[Change] = []
        cursor, scanned = since, 0
        while True:
            chunk, more = await self.read(cursor, max(limit, STREAM_BATCH))
            for i, change in enumerate(chunk):
                cursor = change.seq
                if change.matches(query):
                    out.append(change)
                    if len(out) == limit:
                        return out, cursor, more or i + 1 < len(chunk)
            scanned += len(chunk)
            if not more or scanned >= SCAN_BUDGET:
                return out, cursor, more


# --------------------------------------------------------------------------- fan-out to stream clients


@dataclass(frozen=True, slots=True)
class _Batch:
    """Changes after `prev`, as the hub read them."""

    prev: int  # every change up to here was final when the hub read this batch
    changes: list[Change]

    @property
    def end(self) -> int:
        return self.changes[-1].seq if self.changes else self.prev


@dataclass(eq=False)
class _Subscription:
    limit: int
    transport: asyncio.BaseTransport | None = None
    queue: deque[_Batch] = field(default_factory=deque)
    queued: int = 0  # changes in the queue
    overflowed: bool = False
    closed: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, batch: _Batch) -> None:
        if self.overflowed or self.closed:
            return
        if self.queued + len(batch.changes) > self.limit:
            self.overflowed = True
            self.queue.clear()
            self.queued = 0
        else:
            self.queue.append(batch)
            self.queued += len(batch.changes)
        self.wake.set()

    def discard_through(self, seq: int) -> None:
        """Drops queued batches the client already got from the database."""
        while self.queue and self.queue[0].end <= seq:
            self.take()

    def take(self) -> _Batch | None:
        if not self.queue:
            return None
        batch = self.queue.popleft()
        self.queued -= len(batch.changes)
        return batch


class ChangeHub:
    """One LISTEN connection and one reader for every stream client of the process."""

    def __init__(
        self,
        storage: Storage,
        *,
        queue_size: int = 10_000,
        heartbeat: float = 15.0,
        retry_ms: int = 3000,
        write_timeout: float = 30.0,
        safety_interval: float = 30.0,
        retry_interval: float = 2.0,
        writer_wait: float = 5.0,
    ) -> None:
        self.storage = storage
        self.log = ChangeLog(storage.pool, writer_wait=writer_wait)
        self.queue_size = queue_size  # changes a client may lag behind before it is disconnected
        self.heartbeat = heartbeat
        self.retry_ms = retry_ms
        self.write_timeout = write_timeout
        self.safety_interval = safety_interval  # read even without NOTIFY this often
        self.retry_interval = retry_interval
        self.listening = False
        self.head: int | None = None  # last position handed to clients (None: not following)
        self._subs: set[_Subscription] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    @property
    def clients(self) -> int:
        return len(self._subs)

    def _start(self) -> None:
        if not self._tasks and not self._closing:
            self._tasks = [asyncio.create_task(self._listen_loop(), name="changes-listener"),
                           asyncio.create_task(self._read_loop(), name="changes-reader")]

    def subscribe(self, transport: asyncio.BaseTransport | None = None) -> _Subscription:
        self._start()
        sub = _Subscription(self.queue_size, transport)
        if self._closing:
            sub.closed = True
        self._subs.add(sub)
        self._wake.set()
        return sub

    def unsubscribe(self, sub: _Subscription) -> None:
        self._subs.discard(sub)

    async def close(self, grace: float = 1.0) -> None:
        """Ends every stream (each gets a final comment), then stops listening."""
        self._closing = True
        for sub in self._subs:
            sub.closed = True
            sub.wake.set()
        deadline = time.monotonic() + grace
        while self._subs and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for sub in list(self._subs):  # stuck writing to a client that does not read
            if sub.transport is not None:
                sub.transport.abort()
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(tasks, "change hub")

    # --- reading ---------------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._subs:
                self.head = None  # nobody to read for; start again from the head when someone comes
                continue
            try:
                if self.head is None:
                    # Starting to follow: clients may be behind this head (changes committed
                    # since their own catch-up); an empty batch tells them to read up to it.
                    self.head = await self.log.head()
                    for sub in list(self._subs):
                        sub.offer(_Batch(self.head, []))
                while self._subs:
                    changes, more = await self.log.read(self.head, STREAM_BATCH)
                    if changes:
                        batch = _Batch(self.head, changes)
                        self.head = changes[-1].seq
                        for sub in list(self._subs):
                            sub.offer(batch)
                    if not more:
                        break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be away: try again, clients keep their place
                log.warning("reading changes for the stream failed (%s); retrying in %.1f s", exc, self.retry_interval)
                await asyncio.sleep(self.retry_interval)
                self._wake.set()

    # --- listening -------------------------------------------------------------

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload not in ("measurements", "sites", "sources"):  # events, or unknown: look
            self._wake.set()

    async def _listen_loop(self) -> None:
        backoff = 0.2
        while True:
            lost = asyncio.Event()

            def on_lost(_conn: Any) -> None:
                lost.set()

            on_notify = self.storage.listener(self._on_notify)  # on a standby: once replayed
            try:
                async with self.storage.listen_pool.acquire(timeout=30) as conn:
                    await conn.execute(f"SET application_name = '{LISTENER_APPLICATION_NAME}'")
                    conn.add_termination_listener(on_lost)
                    await conn.add_listener(CHANGES_CHANNEL, on_notify)
                    try:
                        self.listening = True
                        on_notify(conn, 0, CHANGES_CHANNEL, "")  # whatever was committed while nobody listened
                        backoff = 0.2
                        while not lost.is_set():
                            try:
                                await asyncio.wait_for(lost.wait(), self.safety_interval)
                            except TimeoutError:
                                await asyncio.wait_for(conn.fetchval("SELECT 1"), 10)
                                self._wake.set()
                        raise ConnectionError("the listening connection was closed")
                    finally:
                        self.listening = False
                        with contextlib.suppress(asyncpg.InterfaceError):
                            conn.remove_termination_listener(on_lost)
                            if not conn.is_closed():
                                await conn.remove_listener(CHANGES_CHANNEL, on_notify)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("change stream listener lost (%s); reconnecting in %.1f s", exc, backoff)
            self._wake.set()  # poll while not listening
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)


# --------------------------------------------------------------------------- HTTP


CHANGE_HUB = web.AppKey("change_hub", ChangeHub)

_PREFLIGHT = {**PREFLIGHT_HEADERS,
              "Access-Control-Allow-Headers": PREFLIGHT_HEADERS["Access-Control-Allow-Headers"] + ", Last-Event-ID"}


def _one(query: MultiMapping[str], name: str, expected: str) -> str | None:
    values = query.getall(name, [])
    if len(values) > 1:
        raise BadParameter(name, "&".join(values), expected, f"{name} is given {len(values)} times; give it once")
    return values[0] if values else None


def _filter(query: MultiMapping[str]) -> EventFilter:
    parsed = parse_event_filter(query)
    if parsed.statuses is not None:
        raise BadParameter("status", ",".join(query.getall("status")), "bbox and type only",
                           "status cannot filter changes (an event would vanish when it ends); "
                           "read the event's status in each change")
    if parsed.geometry_types is not None:
        raise BadParameter("geometry_type", ",".join(query.getall("geometry_type")), "bbox and type only",
                           "geometry_type cannot filter changes; read the geometry of each change")
    return parsed


async def _check_not_ahead(log_: ChangeLog, since: int, parameter: str) -> None:
    """A cursor beyond every stored change is not ours (another database, a restored backup)."""
    if since and since > await log_.latest():
        text = encode_cursor(since)
        raise BadParameter(parameter, text, CURSOR_EXPECTED,
                           f"{parameter} {text!r} is ahead of this feed's latest change; start again without it")


def _unavailable(exc: BaseException) -> web.Response:
    log.warning("cannot read event changes: %s", exc)
    return json_error(503, {"error": "database_unavailable", "detail": f"{type(exc).__name__}: {exc}"},
                      **{"Retry-After": "5"})


_DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    if not _LIMIT.match(text) or not 1 <= int(text) <= MAX_LIMIT:
        raise BadParameter("limit", text, LIMIT_EXPECTED, f"limit {text!r} is not an integer from 1 to {MAX_LIMIT}")
    return int(text)


async def changes_handler(request: web.Request, log_: ChangeLog) -> web.Response:
    try:
        limit = _limit(_one(request.query, "limit", LIMIT_EXPECTED))
        query = _filter(request.query)
        text = _one(request.query, "since", CURSOR_EXPECTED)
        since = decode_cursor(text) if text else 0  # empty or absent: from the first change
        changes, next_cursor, more = await log_.page(since, limit, query)
        if next_cursor == since:  # nothing after it: is it a cursor of ours at all?
            await _check_not_ahead(log_, since, "since")
    except BadParameter as exc:
        return json_error(400, exc.as_json())
    except _DATABASE_ERRORS as exc:
        return _unavailable(exc)
    body = b"".join((
        b'{"changes":[', b",".join(c.data for c in changes), b'],"next_cursor":',
        geojson.dumps(encode_cursor(next_cursor)), b',"more":', b"true" if more else b"false",
        b',"publication_time":', geojson.dumps(_iso_ms(datetime.now(UTC))), b"}",
    ))
    headers = CIMultiDict({**CORS_HEADERS, "Cache-Control": "no-cache", "Content-Type": "application/json",
                           "Vary": "Accept-Encoding"})
    response = web.Response(body=body, headers=headers)
    if len(body) > 1024:
        response.enable_compression()  # gzip or deflate when the client accepts it
    return response


class _Gone(Exception):
    """The stream client went away or could not keep up."""


async def stream_handler(request: web.Request, hub: ChangeHub) -> web.StreamResponse:
    try:
        query = _filter(request.query)
        resume = request.headers.get("Last-Event-ID")  # a reconnecting EventSource: wins over ?since=
        source = "Last-Event-ID" if resume else "since"
        text = resume or _one(request.query, "since", CURSOR_EXPECTED)
        since = decode_cursor(text, source) if text else None  # None: from now on
        if since is not None:
            await _check_not_ahead(hub.log, since, source)
    except BadParameter as exc:
        return json_error(400, exc.as_json())
    except _DATABASE_ERRORS as exc:
        return _unavailable(exc)

    sub = hub.subscribe(request.transport)
    response = web.StreamResponse(headers={**CORS_HEADERS, "Content-Type": EVENT_STREAM,
                                           "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.force_close()

    async def send(chunk: bytes) -> None:
        try:
            await asyncio.wait_for(response.write(chunk), hub.write_timeout)
        except TimeoutError as exc:  # the client stopped reading
            if request.transport is not None:
                request.transport.abort()
            raise _Gone from exc
        except (ConnectionError, RuntimeError) as exc:
            raise _Gone from exc

    sent = 0  # every change up to here was examined (sent, or filtered out)
    said = 0  # the last id the client was given

    async def catch_up(until: int | None) -> None:
        """Changes after `sent` from the database, up to `until` at least (all of them when None)."""
        nonlocal sent, said
        while until is None or sent < until:
            changes, more = await hub.log.read(sent, STREAM_BATCH)
            await deliver(changes)
            sub.discard_through(sent)
            if not more and (until is None or not changes):
                return
            if sub.overflowed or sub.closed:
                return

    async def deliver(changes: Sequence[Change]) -> None:
        nonlocal sent, said
        out = [c for c in changes if c.seq > sent and (query.is_empty or c.matches(query))]
        if changes:
            sent = max(sent, changes[-1].seq)
        if out:
            said = out[-1].seq
            await send(b"".join(c.sse for c in out))

    try:
        await response.prepare(request)
        sent = since if since is not None else await hub.log.head()
        said = sent
        # The start position: a client that drops before any change still resumes from here.
        await send(f"retry: {hub.retry_ms}\n".encode() + position_event(sent) + b": roadfeed event changes\n")
        await catch_up(None)
        while True:
            if sub.closed:
                await send(b": the server is shutting down; reconnect with Last-Event-ID\n")
                break
            if sub.overflowed:
                await send(b": too far behind; disconnected, reconnect with Last-Event-ID\n")
                break
            batch = sub.take()
            if batch is None:
                try:
                    await asyncio.wait_for(sub.wake.wait(), hub.heartbeat)
                except TimeoutError:
                    # Filtered-out changes still move the client's resume point.
                    moved = position_event(sent) if sent != said else b""
                    said = sent
                    await send(moved + b": heartbeat\n")
                sub.wake.clear()
                continue
            if batch.prev > sent:
                await catch_up(batch.prev)  # a hole between what we sent and the hub's batch
            await deliver(batch.changes)
    except _Gone:
        pass
    except _DATABASE_ERRORS as exc:  # the client reconnects and resumes
        log.warning("change stream ended: %s", exc)
    finally:
        hub.unsubscribe(sub)
    return response


def position_event(seq: int) -> bytes:
    """The resume point as an event with data, never a bare `id:` block."""
    cursor = encode_cursor(seq)
    return f'id: {cursor}\nevent: {POSITION_EVENT}\ndata: {{"cursor":"{cursor}"}}\n\n'.encode()


def make_changes_routes(**hub_options: Any) -> Callable[[web.Application, Any], None]:
    """A `RouteSetup` for the delta feed and the stream; `hub_options` tune `ChangeHub`."""

    def setup(app: web.Application, ctx: Any) -> None:
        hub = ChangeHub(ctx.storage, **hub_options)
        app[CHANGE_HUB] = hub

        async def close_streams(_app: web.Application) -> None:
            await hub.close()

        async def preflight(_request: web.Request) -> web.Response:
            return web.Response(status=204, headers=_PREFLIGHT)

        async def changes(request: web.Request) -> web.Response:
            return await changes_handler(request, hub.log)

        async def stream(request: web.Request) -> web.StreamResponse:
            return await stream_handler(request, hub)

        app.on_shutdown.append(close_streams)
        app.router.add_get(CHANGES_PATH, changes)
        app.router.add_route("OPTIONS", CHANGES_PATH, preflight)
        app.router.add_get(STREAM_PATH, stream, allow_head=False)
        app.router.add_route("OPTIONS", STREAM_PATH, preflight)

    return setup


changes_routes = make_changes_routes()


# --------------------------------------------------------------------------- reading a stream (tests, benchmarks)


@dataclass(frozen=True, slots=True)
class SSEMessage:
    """An event or a comment as an EventSource would see it, with its arrival time."""

    event: str | None  # None for a comment
    data: str
    last_event_id: str  # the id an EventSource would send back on reconnection
    comment: str | None
    received: datetime

    def json(self) -> Any:
        return json.loads(self.data)


async def iter_sse(lines: AsyncIterable[bytes]) -> AsyncIterator[SSEMessage]:
    """Parses `text/event-stream` (e.g. an aiohttp `response.content`) as the HTML
    standard says: an id takes effect when its block ends, even a block without data."""
    last_id, id_buffer, event, data = "", "", "", []
    async for raw in lines:
        line = raw.decode().rstrip("\r\n")
        if not line:
            last_id = id_buffer
            if data:
                yield SSEMessage(event or "message", "\n".join(data), last_id, None, datetime.now(UTC))
            event, data = "", []
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if not name:
            yield SSEMessage(None, "", last_id, value, datetime.now(UTC))
        elif name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            id_buffer = value


def delivery_latency(message: SSEMessage) -> float:
    """Seconds from a change's `recorded` time to its arrival on the stream."""
    recorded = datetime.fromisoformat(message.json()["recorded"].replace("Z", "+00:00"))
    return (message.received - recorded).total_seconds()
