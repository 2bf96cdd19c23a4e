"""Live feeds: rendered once per change, served from memory.

`FeedPublisher` keeps every feed ready as bytes (identity, gzip and, when the
`brotli` package is installed, Brotli) with its validators, and re-renders a feed
only when PostgreSQL says its data changed (LISTEN `roadfeed_changes`), plus a slow
safety refresh. A request then costs a lookup and a few header checks, however
many GPS apps poll.

Rendering is skipped when the data is unchanged (same fingerprint), so ETags stay
stable and clients keep getting 304s; the feed is still republished every
`republish_after` seconds so its publication time never grows very old. After a
change, the event feeds are re-rendered incrementally where that gives the very
bytes of a whole rendering (feed.publish.splice), so a change is published in
milliseconds of rendering rather than a second.

Other processes can serve the same versions (`copy_state`, feed.server.workers).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import asyncpg

from exporters import geojson
from feed.config import Config
from feed.deadlines import cancel_and_wait
from feed.model import StoredEvent
from feed.publish.catalogue import EVENTS_GEOJSON, FEEDS, GEOJSON, JSON, STATUS_PATH, DataKind, FeedSpec, Kind
from feed.publish.filters import EventFilter
from feed.publish.render import (
    BROTLI_QUALITY_FILTERED,
    MAX_LEFT_OUT_LISTED,
    LeftOut,
    Outcome,
    RenderedFeed,
    body_tag,
    compress_variants,
    keyed,
    next_last_modified,
    render_outcome,
    rendered,
)
from feed.publish.splice import SPLICE_RULES, Splicer
from feed.store.listener import ChangeListener
from feed.store.storage import Storage

__all__ = ["LISTENER_APPLICATION_NAME", "FeedPublisher", "FeedState", "FeedStateCopy"]

log = logging.getLogger("roadfeed.feeds")

LISTENER_APPLICATION_NAME = "roadfeed-feed-listener"

# What each NOTIFY payload makes stale (see writes.CHANGES_CHANNEL); unknown
# payloads refresh everything.
_PAYLOAD_KINDS: dict[str, tuple[Kind, ...]] = {
    "events": ("events",),
    "measurements": ("sites",),
    "sites": ("sites",),
    "sources": ("status",),
}


@dataclass
class FeedState:
    """A feed's current version (None until rendered) and what happened last."""

    spec: FeedSpec
    current: RenderedFeed | None = None
    empty: str | None = None  # why there is nothing to publish (the schema forbids an empty document)
    error: str | None = None  # last rendering error; `current`, if any, is the last good version
    error_at: datetime | None = None
    renders: int = 0
    left_out: list[LeftOut] = field(default_factory=list)  # records of the current version it could not write
    left_out_keys: dict[bytes, LeftOut] = field(default_factory=dict)  # the same by content: skipped next time

    @property
    def settled(self) -> bool:
        """Rendered, or known to have nothing to publish."""
        return self.current is not None or self.empty is not None

    @property
    def condition(self) -> str:
        """ok, stale (last render failed, previous version served), empty, error or pending."""
        if self.current is not None:
            return "stale" if self.error else "ok"
        if self.empty is not None:
            return "empty"
        return "error" if self.error else "pending"


@dataclass(frozen=True, slots=True)
class FeedStateCopy:
    """One feed's state as `FeedPublisher.copy_state` hands it to another process."""

    path: str
    current: RenderedFeed | None
    empty: str | None
    error: str | None
    error_at: datetime | None
    renders: int
    complete: bool  # status.json: rendered after every feed was


@dataclass(frozen=True, slots=True)
class _EventsSnapshot:
    tag: str  # the unfiltered events.geojson version these events were rendered into
    events: list[StoredEvent]
    published_at: datetime
    last_modified: datetime


def _tag(feed: RenderedFeed | None) -> str | None:
    return feed.tag if feed is not None else None


def _utc_now() -> datetime:
    return datetime.now(UTC)


class FeedPublisher:
    """Renders the live feeds when their data changes and keeps them in memory.

    One task per data kind (events, sites, status) waits for a change, reads the
    data, and renders every feed of that kind in worker threads, publishing each
    feed as soon as it is ready (first in `feeds` order, first out). A change after
    a quiet spell is read at once; changes arriving while a refresh runs are
    coalesced into one more refresh, started `debounce` seconds after the previous
    one ended. A dedicated connection LISTENs for changes and reconnects when lost;
    each (re)connection triggers a full refresh, so nothing committed while it was
    away is missed.

    Observers (`add_observer`) hear the path of every feed whose state changed;
    `copy_state` / `apply_state` carry that state to another process's publisher
    (see feed.server.workers), so several processes serve the very same versions.
    """

    def __init__(
        self,
        storage: Storage,
        config: Config,
        *,
        feeds: Sequence[FeedSpec] = FEEDS,
        debounce: float = 0.1,
        refresh_interval: float = 60.0,
        status_interval: float = 10.0,
        republish_after: float = 600.0,
        retry_interval: float = 5.0,
        filter_cache_size: int = 128,
        render_concurrency: int = 1,
    ) -> None:
        self.storage = storage
        self.config = config
        self.publication = config.publication
        self.debounce = debounce
        self.refresh_interval = refresh_interval
        self.status_interval = status_interval
        self.republish_after = republish_after
        self.retry_interval = retry_interval
        self.filter_cache_size = filter_cache_size
        self.render_concurrency = render_concurrency  # renders hold the GIL: more at once only delays the first
        self._states: dict[str, FeedState] = {spec.path: FeedState(spec) for spec in feeds}
        self._status = FeedState(FeedSpec(STATUS_PATH, "status", JSON, None))
        self._fingerprints: dict[DataKind, tuple[bytes, float]] = {}
        self._splicers = {
            spec.path: Splicer(spec.path, spec.render, SPLICE_RULES[spec.render].time_key)
            for spec in feeds
            if spec.render in SPLICE_RULES
        }
        self._checks: dict[Kind, list[Callable[[], None]]] = {}
        self._reads: dict[DataKind, int] = {"events": 0, "sites": 0}  # data reads, rendered or not
        self._read_ms: dict[DataKind, dict[str, float]] = {}  # the last read's and fingerprint's durations
        self._fetch_errors: dict[Kind, tuple[str, datetime] | None] = {}
        self._sources: list[dict[str, Any]] = []
        self._events: _EventsSnapshot | None = None
        self._filtered: OrderedDict[tuple[str, EventFilter], asyncio.Future[RenderedFeed | None]] = OrderedDict()
        self._wake: dict[Kind, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = asyncio.Event()
        self._status_complete = False  # status.json rendered after every feed was
        self._observers: list[Callable[[str], None]] = []
        # Each (re)connection catches up with whatever was committed before it (a no-op
        # render-wise when nothing changed: the fingerprint is the same).
        self.listener = ChangeListener(
            storage,
            self._on_change,
            application_name=LISTENER_APPLICATION_NAME,
            interval=refresh_interval,
            name="feed change",
            log=log,
        )
        self.processes: Callable[[], dict[str, Any]] | None = None  # shown in status.json when set

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Starts rendering and listening in the background; returns at once."""
        if self._tasks:
            return
        self._wake = {kind: asyncio.Event() for kind in ("events", "sites", "status")}
        for wake in self._wake.values():
            wake.set()  # first render straight away
        self._tasks = [
            asyncio.create_task(self._kind_loop("events", self.refresh_interval), name="feeds-events"),
            asyncio.create_task(self._kind_loop("sites", self.refresh_interval), name="feeds-sites"),
            asyncio.create_task(self._kind_loop("status", self.status_interval), name="feeds-status"),
            asyncio.create_task(self.listener.run(), name="feeds-listener"),
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(tasks, "feed publisher")
        self._filtered.clear()

    def request(self, *kinds: Kind) -> None:
        """Marks data as changed: the feeds of these kinds re-render (at once, unless a refresh just ran)."""
        for kind in kinds or ("events", "sites", "status"):
            if kind not in ("events", "sites", "status"):
                raise ValueError(f"unknown feed kind {kind!r}; expected events, sites or status")
            if kind in self._wake:
                self._wake[kind].set()

    @property
    def ready(self) -> bool:
        """Every feed rendered (or known to be empty) at least once, and status.json says so."""
        return self._status_complete

    def pending_paths(self) -> list[str]:
        """The feeds not rendered yet (status.json counts until it has seen all others)."""
        pending = [path for path, state in self._states.items() if not state.settled]
        if pending or not self._status_complete:
            pending.append(STATUS_PATH)
        return pending

    async def wait_ready(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # --- reading ---------------------------------------------------------------

    @property
    def paths(self) -> list[str]:
        return [*self._states, STATUS_PATH]

    def state(self, path: str) -> FeedState:
        return self._status if path == STATUS_PATH else self._states[path]

    # --- other processes serving the same feeds ---------------------------------

    def add_observer(self, observer: Callable[[str], None]) -> None:
        """`observer(path)` is called (in the event loop) whenever that feed's state changed."""
        self._observers.append(observer)

    def _notify(self, path: str) -> None:
        for observer in self._observers:
            try:
                observer(path)
            except Exception:  # an observer must not break publishing
                log.exception("feed observer failed for %s", path)

    def copy_state(self, path: str) -> FeedStateCopy:
        """What another process needs to serve `path` exactly as this one does (picklable)."""
        state = self.state(path)
        complete = self._status_complete if path == STATUS_PATH else state.settled
        return FeedStateCopy(path, state.current, state.empty, state.error, state.error_at, state.renders, complete)

    def apply_state(self, copy: FeedStateCopy) -> None:
        """Takes over a state made by another process's publisher (`copy_state`)."""
        state = self.state(copy.path)
        if copy.path == EVENTS_GEOJSON and _tag(state.current) != _tag(copy.current):
            self._filtered.clear()  # renderings of the previous version
        state.current, state.empty, state.error, state.error_at = copy.current, copy.empty, copy.error, copy.error_at
        state.renders = copy.renders
        if copy.path == STATUS_PATH:
            self._status_complete = copy.complete
        self._notify(copy.path)
        self._check_ready()

    async def filtered_events(self, query: EventFilter) -> RenderedFeed | None:
        """events.geojson restricted to `query`, rendered once per query and feed version."""
        snapshot = self._events
        if snapshot is None:
            return None
        return await self._cached_filtered(
            snapshot.tag, query, lambda: asyncio.to_thread(self._render_filtered, snapshot, query)
        )

    async def _cached_filtered(
        self, tag: str, query: EventFilter, make: Callable[[], Awaitable[RenderedFeed | None]]
    ) -> RenderedFeed | None:
        """`make()`'s rendering of `query` for the events version `tag`, shared by concurrent requests."""
        key = (tag, query)
        task = self._filtered.get(key)
        if task is None:
            task = asyncio.ensure_future(make())
            task.add_done_callback(_consume_exception)
            self._filtered[key] = task
            while len(self._filtered) > self.filter_cache_size:
                self._filtered.popitem(last=False)
        else:
            self._filtered.move_to_end(key)
        try:
            # shield: a client that disconnects must not cancel the rendering others wait for
            return await asyncio.shield(task)
        except Exception:
            if self._filtered.get(key) is task:
                del self._filtered[key]
            raise

    def _render_filtered(self, snapshot: _EventsSnapshot, query: EventFilter) -> RenderedFeed:
        t0 = time.perf_counter()
        events = geojson.filter_events(snapshot.events, query.bbox, query.types, query.statuses, query.geometry_types)
        body = geojson.render_events(events, self.publication, snapshot.published_at)
        generation_ms = (time.perf_counter() - t0) * 1000
        t1 = time.perf_counter()
        encoded = compress_variants(body, BROTLI_QUALITY_FILTERED)
        return RenderedFeed(
            GEOJSON,
            body,
            encoded,
            body_tag(body),
            snapshot.published_at,
            snapshot.last_modified,
            generation_ms,
            (time.perf_counter() - t1) * 1000,
        )

    # --- rendering -------------------------------------------------------------

    async def _kind_loop(self, kind: Kind, interval: float) -> None:
        loop = asyncio.get_running_loop()
        wake = self._wake[kind]
        delay = 0.0 if wake.is_set() else interval
        finished = -math.inf
        while True:
            try:
                await asyncio.wait_for(wake.wait(), delay)
                # A change after a quiet spell is read at once (no fixed debounce on the
                # path of every change); during a burst, the refreshes are `debounce`
                # seconds apart and each takes whatever arrived meanwhile.
                pause = finished + self.debounce - loop.time()
                if pause > 0:
                    await asyncio.sleep(pause)
            except TimeoutError:
                pass  # periodic safety refresh
            wake.clear()
            try:
                ok = await (self._refresh_status() if kind == "status" else self._refresh(kind))
            except Exception:  # keep the loop alive whatever happens
                log.exception("refreshing %s feeds failed", kind)
                ok = False
            finished = loop.time()
            if kind != "status":
                self._wake["status"].set()
            delay = interval if ok else min(interval, self.retry_interval)
            self._check_ready()
            checks, self._checks[kind] = self._checks.get(kind, []), []
            for check in checks:  # after publishing and readiness: nobody waits for these
                try:
                    await asyncio.to_thread(check)
                except Exception:
                    log.exception("checking the incremental rendering of %s feeds failed", kind)

    def _check_ready(self) -> None:
        if self.ready:
            self._ready.set()

    async def _refresh(self, kind: DataKind) -> bool:
        """Reads `kind`'s data and re-renders its feeds if it changed; False if the read failed."""
        now = _utc_now()
        t0 = time.perf_counter()
        try:
            if kind == "events":
                cutoff = now - timedelta(hours=self.publication.ended_events_hours)
                data: list[Any] = await self.storage.events(ended_since=cutoff)
            else:
                data = await self.storage.sites()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            self._fetch_errors[kind] = (f"{type(exc).__name__}: {exc}", now)
            log.warning("cannot read %s for the feeds: %s", kind, exc)
            return False
        self._fetch_errors[kind] = None
        self._reads[kind] += 1
        loop = asyncio.get_running_loop()
        t1 = time.perf_counter()
        digest, keys, steady_keys = await asyncio.to_thread(keyed, data)
        self._read_ms[kind] = {
            "read": round((t1 - t0) * 1000, 2),
            "fingerprint": round((time.perf_counter() - t1) * 1000, 2),
        }
        states = [s for s in self._states.values() if s.spec.kind == kind]
        previous = self._fingerprints.get(kind)
        if previous and previous[0] == digest and loop.time() - previous[1] < self.republish_after:
            return True
        gate = asyncio.Semaphore(self.render_concurrency)  # FIFO: feeds start in `feeds` order

        async def render(state: FeedState) -> Outcome:
            splicer = self._splicers.get(state.spec.path)
            render = state.spec.render  # a splicer is kept only for feeds rendered by a splice rule
            spliced = splicer is not None and render is not None and not SPLICE_RULES[render].shows_poll_fields
            item_keys = steady_keys if spliced else keys
            async with gate:
                outcome = await asyncio.to_thread(
                    render_outcome, state.spec, data, self.publication, now, splicer, item_keys, state.left_out_keys
                )
            if splicer is not None and outcome.body is not None and not outcome.spliced:
                self._checks.setdefault(kind, []).append(
                    partial(splicer.check, outcome.items, outcome.keys, self.publication, now, outcome.body)
                )
            return outcome

        outcomes = await asyncio.gather(*(render(s) for s in states))
        # One change, one new version of every feed it touches, switched together: no
        # await from here to the last notification, so no request (fast path included)
        # and no other process (observers send the states of one batch together)
        # sees a new version of one feed beside the previous version of another.
        for state, outcome in zip(states, outcomes, strict=True):
            self._set(state, outcome, now)
        for state in states:
            self._notify(state.spec.path)
        self._fingerprints[kind] = (digest, loop.time())
        if kind == "events":
            current = self._states[EVENTS_GEOJSON].current if EVENTS_GEOJSON in self._states else None
            if current is not None and (self._events is None or self._events.tag != current.tag):
                rendered = next(o.items for s, o in zip(states, outcomes, strict=True) if s.spec.path == EVENTS_GEOJSON)
                self._events = _EventsSnapshot(current.tag, list(rendered), current.published_at, current.last_modified)
                self._filtered.clear()  # renderings still running finish for the requests awaiting them
        log.debug("rendered %s feeds in %.1f ms", kind, sum(o.generation_ms for o in outcomes))
        return True

    def _set(self, state: FeedState, outcome: Outcome, now: datetime) -> None:
        state.renders += 1
        state.left_out_keys = dict(outcome.left_out)
        if outcome.error is not None:
            state.error, state.error_at = outcome.error, now
            return
        state.error = state.error_at = None
        state.left_out = sorted(outcome.left_out.values())
        if outcome.empty is not None:
            state.current, state.empty = None, outcome.empty
            return
        assert outcome.body is not None
        state.empty = None
        state.current = RenderedFeed(
            content_type=state.spec.content_type,
            body=outcome.body,
            encoded=outcome.encoded,
            tag=body_tag(outcome.body),
            published_at=now,
            last_modified=next_last_modified(now, state.current),
            generation_ms=outcome.generation_ms,
            compression_ms=outcome.compression_ms,
        )

    async def _refresh_status(self) -> bool:
        now = _utc_now()
        ok = True
        try:
            self._sources = await self.storage.source_statuses()
            self._fetch_errors["status"] = None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            self._fetch_errors["status"] = (f"{type(exc).__name__}: {exc}", now)
            ok = False
        settled = all(state.settled for state in self._states.values())
        t0 = time.perf_counter()
        body = geojson.dumps(self.status_document(now))
        self._status.renders += 1
        self._status.current = rendered(
            JSON, body, now, self._status.current, (time.perf_counter() - t0) * 1000, BROTLI_QUALITY_FILTERED
        )
        self._status_complete = self._status_complete or settled
        self._notify(STATUS_PATH)
        return ok

    def status_document(self, now: datetime) -> dict[str, Any]:
        """Freshness of every source and every feed, as /feeds/status.json shows it."""
        iso = geojson.utc_iso
        configured = {s.id: s for s in self.config.sources}
        stored = {s["id"]: s for s in self._sources}
        sources = []
        for source_id in sorted(configured.keys() | stored.keys()):
            row = stored.get(source_id, {})
            conf = configured.get(source_id)
            last_success, last_error_at = row.get("last_success"), row.get("last_error_at")
            sources.append(
                {
                    "id": source_id,
                    "kind": conf.kind if conf else row.get("kind"),
                    "configured": conf is not None,
                    "enabled": conf.enabled if conf else None,
                    "interval_seconds": conf.interval if conf else None,
                    "last_success": iso(last_success),
                    "lag_seconds": round((now - last_success).total_seconds()) if last_success else None,
                    "last_error": row.get("last_error"),
                    "last_error_at": iso(last_error_at),
                    "failing": last_error_at is not None and (last_success is None or last_error_at > last_success),
                }
            )
        feeds = []
        for path, state in self._states.items():
            cur = state.current
            feeds.append(
                {
                    "path": path,
                    "state": state.condition,
                    "content_type": state.spec.content_type,
                    "published_at": iso(cur.published_at) if cur else None,
                    "age_seconds": round((now - cur.published_at).total_seconds()) if cur else None,
                    "etag": cur.etag if cur else None,
                    "generation_ms": round(cur.generation_ms, 2) if cur else None,
                    "compression_ms": round(cur.compression_ms, 2) if cur else None,
                    "size": cur.size if cur else None,
                    "gzip_size": len(cur.encoded["gzip"]) if cur and "gzip" in cur.encoded else None,
                    "br_size": len(cur.encoded["br"]) if cur and "br" in cur.encoded else None,
                    "renders": state.renders,
                    "left_out": len(state.left_out),
                    "left_out_records": [
                        {"id": left.record, "reason": left.reason} for left in state.left_out[:MAX_LEFT_OUT_LISTED]
                    ],
                    "empty": state.empty,
                    "error": state.error,
                    "error_at": iso(state.error_at),
                }
            )
        database_errors = {
            kind: {"error": err[0], "at": iso(err[1])} for kind, err in self._fetch_errors.items() if err is not None
        }
        return {
            "generated_at": iso(now),
            "publisher": self.publication.publisher,
            "listener": {
                "connected": self.listener.connected,
                "connected_since": iso(self.listener.connected_since),
                "connections": self.listener.connections,
                "last_error": self.listener.last_error,
                "last_error_at": iso(self.listener.last_error_at),
            },
            "database_errors": database_errors,
            "data_reads": dict(self._reads),
            "data_read_ms": dict(self._read_ms),
            **({"processes": self.processes()} if self.processes is not None else {}),
            "sources": sources,
            "feeds": feeds,
        }

    # --- listening -------------------------------------------------------------

    def _on_change(self, payload: str) -> None:
        self.request(*_PAYLOAD_KINDS.get(payload, ("events", "sites", "status")))


def _consume_exception(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
