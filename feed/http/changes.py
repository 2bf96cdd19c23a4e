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

What the filters keep and the one listener per process: feed.publish.changes;
why nothing is skipped, even when writers commit out of order: feed.store.changes.

For latency measurements (a benchmark, not the tests): read the stream with
`iter_sse` and take `delivery_latency(message)` = arrival time - the change's
`recorded` time. `recorded` is the `seen_at` the writer passed to
`Storage.upsert_events`, so pass `seen_at=datetime.now(UTC)` right before the call
and the latency covers write, commit, NOTIFY, read and delivery (same host clock).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web
from multidict import CIMultiDict, MultiMapping

from exporters import geojson
from feed.errors import BadParameter, PublishError
from feed.http.errors import json_error
from feed.http.responses import CORS_HEADERS, PREFLIGHT_HEADERS
from feed.publish.changes import CURSOR_EXPECTED, STREAM_BATCH, ChangeHub, decode_cursor, matches, page
from feed.publish.filters import EventFilter, parse_event_filter
from feed.store.changes import Change, ChangeLog, encode_cursor, iso_ms

__all__ = [
    "CHANGES_PATH",
    "CHANGE_HUB",
    "POSITION_EVENT",
    "STREAM_PATH",
    "SSEMessage",
    "changes_routes",
    "delivery_latency",
    "iter_sse",
    "make_changes_routes",
]

log = logging.getLogger("roadfeed.changes")

CHANGES_PATH = "/feeds/events/changes"
STREAM_PATH = "/feeds/events/stream"
DEFAULT_LIMIT = 500
MAX_LIMIT = 5000
EVENT_STREAM = "text/event-stream"
POSITION_EVENT = "position"  # carries the resume point when no change does

LIMIT_EXPECTED = f"an integer from 1 to {MAX_LIMIT}"
_LIMIT = re.compile(r"^[0-9]{1,9}$")


# --------------------------------------------------------------------------- HTTP


CHANGE_HUB = web.AppKey("change_hub", ChangeHub)

_PREFLIGHT = {
    **PREFLIGHT_HEADERS,
    "Access-Control-Allow-Headers": PREFLIGHT_HEADERS["Access-Control-Allow-Headers"] + ", Last-Event-ID",
}


def _one(query: MultiMapping[str], name: str, expected: str) -> str | None:
    values = query.getall(name, [])
    if len(values) > 1:
        raise BadParameter(name, "&".join(values), expected, f"{name} is given {len(values)} times; give it once")
    return values[0] if values else None


def _filter(query: MultiMapping[str]) -> EventFilter:
    parsed = parse_event_filter(query)
    if parsed.statuses is not None:
        raise BadParameter(
            "status",
            ",".join(query.getall("status")),
            "bbox and type only",
            "status cannot filter changes (an event would vanish when it ends); read the event's status in each change",
        )
    if parsed.geometry_types is not None:
        raise BadParameter(
            "geometry_type",
            ",".join(query.getall("geometry_type")),
            "bbox and type only",
            "geometry_type cannot filter changes; read the geometry of each change",
        )
    return parsed


async def _check_not_ahead(log_: ChangeLog, since: int, parameter: str) -> None:
    """A cursor beyond every stored change is not ours (another database, a restored backup)."""
    if since and since > await log_.latest():
        text = encode_cursor(since)
        raise BadParameter(
            parameter,
            text,
            CURSOR_EXPECTED,
            f"{parameter} {text!r} is ahead of this feed's latest change; start again without it",
        )


def _unavailable(exc: BaseException) -> web.Response:
    log.warning("cannot read event changes: %s", exc)
    return json_error(
        503, {"error": "database_unavailable", "detail": f"{type(exc).__name__}: {exc}"}, {"Retry-After": "5"}
    )


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
        changes, next_cursor, more = await page(log_, since, limit, query)
        if next_cursor == since:  # nothing after it: is it a cursor of ours at all?
            await _check_not_ahead(log_, since, "since")
    except BadParameter as exc:
        return json_error(400, exc.as_json())
    except _DATABASE_ERRORS as exc:
        return _unavailable(exc)
    body = b"".join(
        (
            b'{"changes":[',
            b",".join(c.data for c in changes),
            b'],"next_cursor":',
            geojson.dumps(encode_cursor(next_cursor)),
            b',"more":',
            b"true" if more else b"false",
            b',"publication_time":',
            geojson.dumps(iso_ms(datetime.now(UTC))),
            b"}",
        )
    )
    headers = CIMultiDict(
        {**CORS_HEADERS, "Cache-Control": "no-cache", "Content-Type": "application/json", "Vary": "Accept-Encoding"}
    )
    response = web.Response(body=body, headers=headers)
    if len(body) > 1024:
        response.enable_compression()  # gzip or deflate when the client accepts it
    return response


class _Gone(PublishError):
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
    response = web.StreamResponse(
        headers={**CORS_HEADERS, "Content-Type": EVENT_STREAM, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
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
        out = [c for c in changes if c.seq > sent and (query.is_empty or matches(c, query))]
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
    last_id, id_buffer, event = "", "", ""
    data: list[str] = []
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
