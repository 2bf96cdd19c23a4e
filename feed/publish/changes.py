"""The change hub: one reader of the change log per process, fanned out to every stream client.

The stream has ONE database listener per process (`ChangeHub`), started with the
first client: it reads each new batch of changes once, encodes it once, and hands
it to every client's bounded queue. A client whose queue overflows is
disconnected with a final comment; it resumes with `Last-Event-ID`. Application
shutdown closes every stream (`on_shutdown`).

Filters (`bbox`, `type`, as in /feeds/events.geojson; not `status`) keep a change
when the event matches before *or* after it, so a client also hears that an event
left its area or its type. A filtered page may hold fewer than `limit` changes
(`next_cursor` still moves past the ones filtered out).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from dataclasses import dataclass, field

from exporters.geojson import intersects
from feed.deadlines import cancel_and_wait
from feed.errors import BadParameter
from feed.publish.filters import EventFilter
from feed.store.changes import Change, ChangeLog
from feed.store.listener import ChangeListener
from feed.store.storage import Storage

__all__ = [
    "CURSOR_EXPECTED",
    "LISTENER_APPLICATION_NAME",
    "SCAN_BUDGET",
    "STREAM_BATCH",
    "ChangeHub",
    "decode_cursor",
    "matches",
    "page",
]

log = logging.getLogger("roadfeed.changes")

SCAN_BUDGET = 50_000  # changes a filtered page may look at before answering with `more`
STREAM_BATCH = 500  # changes read per query by the stream (catch-up and live)
LISTENER_APPLICATION_NAME = "roadfeed-change-stream"

CURSOR_EXPECTED = "a cursor this feed returned (next_cursor, a change's cursor or an SSE id)"
_CURSOR = re.compile(r"^[0-9]{1,18}$")


def decode_cursor(text: str, parameter: str = "since") -> int:
    """The position a cursor stands for; BadParameter when it is not one of ours."""
    if not _CURSOR.match(text):
        raise BadParameter(parameter, text, CURSOR_EXPECTED, f"{parameter} {text!r} is not a cursor of this feed")
    return int(text)


def matches(change: Change, query: EventFilter) -> bool:
    """The event matches `query` before or after the change."""
    if query.types is not None and not (change.event.type in query.types or change.previous_type in query.types):
        return False
    return (
        query.bbox is None
        or intersects(change.event.geometry, query.bbox)
        or (change.previous_geometry is not None and intersects(change.previous_geometry, query.bbox))
    )


async def page(change_log: ChangeLog, since: int, limit: int, query: EventFilter) -> tuple[list[Change], int, bool]:
    """Up to `limit` matching changes, the cursor to continue from, and whether to continue now."""
    if query.is_empty:
        changes, more = await change_log.read(since, limit)
        return changes, changes[-1].seq if changes else since, more
    out: list[Change] = []
    cursor, scanned = since, 0
    while True:
        chunk, more = await change_log.read(cursor, max(limit, STREAM_BATCH))
        for i, change in enumerate(chunk):
            cursor = change.seq
            if matches(change, query):
                out.append(change)
                if len(out) == limit:
                    return out, cursor, more or i + 1 < len(chunk)
        scanned += len(chunk)
        if not more or scanned >= SCAN_BUDGET:
            return out, cursor, more


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
    transport: asyncio.Transport | None = None
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
        self.retry_interval = retry_interval
        self.head: int | None = None  # last position handed to clients (None: not following)
        self._subs: set[_Subscription] = set()
        self._wake = asyncio.Event()
        # Reads even without NOTIFY every `safety_interval` seconds, and while not listening.
        self._listener = ChangeListener(
            storage,
            self._on_change,
            application_name=LISTENER_APPLICATION_NAME,
            interval=safety_interval,
            name="change stream",
            log=log,
            on_quiet=self._wake.set,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    @property
    def listening(self) -> bool:
        return self._listener.connected

    @property
    def clients(self) -> int:
        return len(self._subs)

    def _start(self) -> None:
        if not self._tasks and not self._closing:
            self._tasks = [
                asyncio.create_task(self._listener.run(), name="changes-listener"),
                asyncio.create_task(self._read_loop(), name="changes-reader"),
            ]

    def subscribe(self, transport: asyncio.Transport | None = None) -> _Subscription:
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
            except Exception as exc:  # noqa: BLE001 - the database may be away: try again, clients keep their place
                log.warning("reading changes for the stream failed (%s); retrying in %.1f s", exc, self.retry_interval)
                await asyncio.sleep(self.retry_interval)
                self._wake.set()

    # --- listening -------------------------------------------------------------

    def _on_change(self, payload: str) -> None:
        if payload not in ("measurements", "sites", "sources"):  # events, or unknown: look
            self._wake.set()
