"""Live feeds: rendered once per change, served from memory.

`FeedPublisher` keeps every feed ready as bytes (identity, gzip and, when the
`brotli` package is installed, Brotli) with its validators, and re-renders a feed
only when PostgreSQL says its data changed (LISTEN `roadfeed_changes`), plus a slow
safety refresh. A request then costs a lookup and a few header checks, however
many GPS apps poll.

Rendering is skipped when the data is unchanged (same fingerprint), so ETags stay
stable and clients keep getting 304s; the feed is still republished every
`republish_after` seconds so its publication time never grows very old.

The HTTP side (`add_feed_routes`) is a thin adapter: conditional GET (ETag and
Last-Modified), content-coding negotiation over the precomputed variants, CORS,
and the `?bbox=&type=&status=` filters of `/feeds/events.geojson`, whose results
are rendered once per distinct query and feed version.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any, Literal, NamedTuple, get_args

import asyncpg
from aiohttp import web
from multidict import CIMultiDict, MultiMapping

from exporters import datex2_v2, datex2_v3, geojson, waze, wzdx
from feed.config import Config, PublicationConfig
from feed.model import EventStatus, EventType, StoredEvent
from feed.storage import CHANGES_CHANNEL, Storage

try:  # optional: without it feeds are offered as gzip and identity only
    import brotli
except ImportError:  # pragma: no cover - the project's environment has it
    brotli = None

__all__ = [
    "EVENTS_GEOJSON",
    "FEEDS",
    "STATUS_PATH",
    "BadParameter",
    "EventFilter",
    "FeedPublisher",
    "FeedSpec",
    "FeedState",
    "RenderedFeed",
    "add_feed_routes",
    "etag_matches",
    "negotiate_encoding",
    "parse_event_filter",
]

log = logging.getLogger("roadfeed.feeds")

Kind = Literal["events", "sites", "status"]
DataKind = Literal["events", "sites"]

XML = "application/xml; charset=utf-8"
JSON = "application/json"
GEOJSON = "application/geo+json"

GZIP_LEVEL = 6
BROTLI_QUALITY = 9  # whole feeds: rendered once, served many times
BROTLI_QUALITY_FILTERED = 5  # per-query renderings: cheaper to make
LISTENER_APPLICATION_NAME = "roadfeed-feed-listener"


def _waze_report(events: Sequence[StoredEvent], _publication: PublicationConfig, published_at: datetime) -> bytes:
    return waze.render_report(events, published_at)


@dataclass(frozen=True, slots=True)
class FeedSpec:
    """One published document: where it lives, which data it renders, and how."""

    path: str
    kind: Kind
    content_type: str
    render: Callable[[Sequence[Any], PublicationConfig, datetime], bytes] | None  # None: status, built here


EVENTS_GEOJSON = "/feeds/events.geojson"
STATUS_PATH = "/feeds/status.json"

FEEDS: tuple[FeedSpec, ...] = (
    FeedSpec("/feeds/datex2/v3/situations.xml", "events", XML, datex2_v3.render_situations),
    FeedSpec("/feeds/datex2/v3/measurement-sites.xml", "sites", XML, datex2_v3.render_measurement_sites),
    FeedSpec("/feeds/datex2/v3/measured-data.xml", "sites", XML, datex2_v3.render_measured_data),
    FeedSpec("/feeds/datex2/v2/situations.xml", "events", XML, datex2_v2.render_situations),
    FeedSpec(EVENTS_GEOJSON, "events", GEOJSON, geojson.render_events),
    FeedSpec("/feeds/sites.geojson", "sites", GEOJSON, geojson.render_sites),
    FeedSpec("/feeds/wzdx/v4.2/work-zones.geojson", "events", GEOJSON, wzdx.render_work_zones),
    FeedSpec("/feeds/waze/cifs.xml", "events", XML, waze.render_cifs_xml),
    FeedSpec("/feeds/waze/cifs.json", "events", JSON, waze.render_cifs_json),
    FeedSpec("/feeds/waze/report.json", "events", JSON, _waze_report),
)

# What each NOTIFY payload makes stale (see storage.CHANGES_CHANNEL); unknown
# payloads refresh everything.
_PAYLOAD_KINDS: dict[str, tuple[Kind, ...]] = {
    "events": ("events",),
    "measurements": ("sites",),
    "sites": ("sites",),
    "sources": ("status",),
}


# --------------------------------------------------------------------------- rendered bytes


@dataclass(frozen=True, slots=True)
class RenderedFeed:
    """One version of a feed, ready to send."""

    content_type: str
    body: bytes
    encoded: Mapping[str, bytes]  # "br" / "gzip" -> bytes; only variants smaller than the body
    tag: str  # opaque part of the strong ETag: a hash of the body
    published_at: datetime
    last_modified: datetime  # whole seconds, strictly increasing per feed
    generation_ms: float  # rendering only
    compression_ms: float

    @property
    def etag(self) -> str:
        return f'"{self.tag}"'

    def etag_for(self, coding: str) -> str:
        """Each content coding is its own representation, so its own strong ETag."""
        return self.etag if coding == "identity" else f'"{self.tag}-{coding}"'

    @property
    def last_modified_http(self) -> str:
        return format_datetime(self.last_modified, usegmt=True)

    @property
    def size(self) -> int:
        return len(self.body)


def body_tag(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=16).hexdigest()


def compress_variants(body: bytes, brotli_quality: int = BROTLI_QUALITY) -> dict[str, bytes]:
    """gzip and Brotli forms of `body`, keeping only those that are smaller."""
    variants = {"gzip": gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)}
    if brotli is not None:
        variants["br"] = brotli.compress(body, quality=brotli_quality)
    return {coding: data for coding, data in variants.items() if len(data) < len(body)}


def _next_last_modified(published_at: datetime, previous: RenderedFeed | None) -> datetime:
    # HTTP dates have one-second resolution: two versions in the same second must
    # still differ, or If-Modified-Since would wrongly answer 304.
    lm = published_at.astimezone(UTC).replace(microsecond=0)
    if previous is not None and lm <= previous.last_modified:
        lm = previous.last_modified + timedelta(seconds=1)
    return lm


def _rendered(
    content_type: str,
    body: bytes,
    published_at: datetime,
    previous: RenderedFeed | None,
    generation_ms: float,
    brotli_quality: int = BROTLI_QUALITY,
) -> RenderedFeed:
    t0 = time.perf_counter()
    encoded = compress_variants(body, brotli_quality)
    return RenderedFeed(
        content_type=content_type,
        body=body,
        encoded=encoded,
        tag=body_tag(body),
        published_at=published_at,
        last_modified=_next_last_modified(published_at, previous),
        generation_ms=generation_ms,
        compression_ms=(time.perf_counter() - t0) * 1000,
    )


class _Outcome(NamedTuple):
    body: bytes | None
    encoded: dict[str, bytes]
    generation_ms: float
    compression_ms: float
    empty: str | None  # the exporter had nothing it may publish
    error: str | None


def _render_outcome(spec: FeedSpec, data: Sequence[Any], publication: PublicationConfig, at: datetime) -> _Outcome:
    """Runs in a worker thread: render and compress one feed, never raising."""
    assert spec.render is not None
    t0 = time.perf_counter()
    try:
        body = spec.render(data, publication, at)
    except datex2_v3.NothingToPublish as exc:
        return _Outcome(None, {}, 0.0, 0.0, str(exc), None)
    except Exception as exc:  # an exporter bug must not take the other feeds down
        log.exception("rendering %s failed", spec.path)
        return _Outcome(None, {}, 0.0, 0.0, None, f"{type(exc).__name__}: {exc}")
    t1 = time.perf_counter()
    encoded = compress_variants(body)
    return _Outcome(body, encoded, (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000, None, None)


def _fingerprint(items: Sequence[Any]) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(len(items)).encode())
    for item in items:
        digest.update(item.model_dump_json().encode())
        digest.update(b"\x00")
    return digest.digest()


# --------------------------------------------------------------------------- publisher state


@dataclass
class FeedState:
    """A feed's current version (None until rendered) and what happened last."""

    spec: FeedSpec
    current: RenderedFeed | None = None
    empty: str | None = None  # why there is nothing to publish (the schema forbids an empty document)
    error: str | None = None  # last rendering error; `current`, if any, is the last good version
    error_at: datetime | None = None
    renders: int = 0

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


class EventFilter(NamedTuple):
    """A normalized `?bbox=&type=&status=` query (None: no criterion)."""

    bbox: tuple[float, float, float, float] | None = None
    types: tuple[str, ...] | None = None
    statuses: tuple[str, ...] | None = None

    @property
    def is_empty(self) -> bool:
        return self.bbox is None and self.types is None and self.statuses is None


@dataclass(frozen=True, slots=True)
class _EventsSnapshot:
    tag: str  # the unfiltered events.geojson version these events were rendered into
    events: list[StoredEvent]
    published_at: datetime
    last_modified: datetime


@dataclass
class _Listener:
    connected: bool = False
    connected_since: datetime | None = None
    connections: int = 0
    last_error: str | None = None
    last_error_at: datetime | None = None


def _utc_now() -> datetime:
    return datetime.now(UTC)


class FeedPublisher:
    """Renders the live feeds when their data changes and keeps them in memory.

    One task per data kind (events, sites, status) waits for a change, coalesces
    the burst (`debounce` seconds), reads the data, and renders every feed of
    that kind in worker threads. A dedicated connection LISTENs for changes and
    reconnects when lost; each (re)connection triggers a full refresh, so nothing
    committed while it was away is missed.
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
        self._states: dict[str, FeedState] = {spec.path: FeedState(spec) for spec in feeds}
        self._status = FeedState(FeedSpec(STATUS_PATH, "status", JSON, None))
        self._fingerprints: dict[DataKind, tuple[bytes, float]] = {}
        self._reads: dict[DataKind, int] = {"events": 0, "sites": 0}  # data reads, rendered or not
        self._fetch_errors: dict[Kind, tuple[str, datetime] | None] = {}
        self._sources: list[dict[str, Any]] = []
        self._events: _EventsSnapshot | None = None
        self._filtered: OrderedDict[tuple[str, EventFilter], asyncio.Task[RenderedFeed]] = OrderedDict()
        self._wake: dict[Kind, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = asyncio.Event()
        self._status_complete = False  # status.json rendered after every feed was
        self.listener = _Listener()

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
            asyncio.create_task(self._listen_loop(), name="feeds-listener"),
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._filtered.clear()

    def request(self, *kinds: Kind) -> None:
        """Marks data as changed: the feeds of these kinds re-render after the debounce."""
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

    async def filtered_events(self, query: EventFilter) -> RenderedFeed | None:
        """events.geojson restricted to `query`, rendered once per query and feed version."""
        snapshot = self._events
        if snapshot is None:
            return None
        key = (snapshot.tag, query)
        task = self._filtered.get(key)
        if task is None:
            task = asyncio.create_task(asyncio.to_thread(self._render_filtered, snapshot, query))
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
        events = geojson.filter_events(snapshot.events, query.bbox, query.types, query.statuses)
        body = geojson.render_events(events, self.publication, snapshot.published_at)
        generation_ms = (time.perf_counter() - t0) * 1000
        t1 = time.perf_counter()
        encoded = compress_variants(body, BROTLI_QUALITY_FILTERED)
        return RenderedFeed(GEOJSON, body, encoded, body_tag(body), snapshot.published_at, snapshot.last_modified,
                            generation_ms, (time.perf_counter() - t1) * 1000)

    # --- rendering -------------------------------------------------------------

    async def _kind_loop(self, kind: Kind, interval: float) -> None:
        wake = self._wake[kind]
        delay = 0.0 if wake.is_set() else interval
        while True:
            try:
                await asyncio.wait_for(wake.wait(), delay)
                await asyncio.sleep(self.debounce)  # let the rest of a burst arrive
            except TimeoutError:
                pass  # periodic safety refresh
            wake.clear()
            try:
                ok = await (self._refresh_status() if kind == "status" else self._refresh(kind))
            except Exception:  # keep the loop alive whatever happens
                log.exception("refreshing %s feeds failed", kind)
                ok = False
            if kind != "status":
                self._wake["status"].set()
            delay = interval if ok else min(interval, self.retry_interval)
            self._check_ready()

    def _check_ready(self) -> None:
        if self.ready:
            self._ready.set()

    async def _refresh(self, kind: DataKind) -> bool:
        """Reads `kind`'s data and re-renders its feeds if it changed; False if the read failed."""
        now = _utc_now()
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
        digest = await asyncio.to_thread(_fingerprint, data)
        states = [s for s in self._states.values() if s.spec.kind == kind]
        previous = self._fingerprints.get(kind)
        if previous and previous[0] == digest and loop.time() - previous[1] < self.republish_after:
            return True
        outcomes = await asyncio.gather(
            *(asyncio.to_thread(_render_outcome, s.spec, data, self.publication, now) for s in states)
        )
        for state, outcome in zip(states, outcomes, strict=True):
            self._apply(state, outcome, now)
        self._fingerprints[kind] = (digest, loop.time())
        if kind == "events":
            current = self._states[EVENTS_GEOJSON].current if EVENTS_GEOJSON in self._states else None
            if current is not None and (self._events is None or self._events.tag != current.tag):
                self._events = _EventsSnapshot(current.tag, data, current.published_at, current.last_modified)
                self._filtered.clear()  # renderings still running finish for the requests awaiting them
        log.debug("rendered %s feeds in %.1f ms", kind, sum(o.generation_ms for o in outcomes))
        return True

    def _apply(self, state: FeedState, outcome: _Outcome, now: datetime) -> None:
        state.renders += 1
        if outcome.error is not None:
            state.error, state.error_at = outcome.error, now
            return
        state.error = state.error_at = None
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
            last_modified=_next_last_modified(now, state.current),
            generation_ms=outcome.generation_ms,
            compression_ms=outcome.compression_ms,
        )

    async def _refresh_status(self) -> bool:
        now = _utc_now()
        ok = True
        try:
            rows = await self.storage.pool.fetch(
                "SELECT id, kind, last_success, last_error, last_error_at FROM sources ORDER BY id"
            )
            self._sources = [dict(r) for r in rows]
            self._fetch_errors["status"] = None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            self._fetch_errors["status"] = (f"{type(exc).__name__}: {exc}", now)
            ok = False
        settled = all(state.settled for state in self._states.values())
        t0 = time.perf_counter()
        body = geojson.dumps(self.status_document(now))
        self._status.renders += 1
        self._status.current = _rendered(JSON, body, now, self._status.current, (time.perf_counter() - t0) * 1000,
                                         BROTLI_QUALITY_FILTERED)
        self._status_complete = self._status_complete or settled
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
            sources.append({
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
            })
        feeds = []
        for path, state in self._states.items():
            cur = state.current
            feeds.append({
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
                "empty": state.empty,
                "error": state.error,
                "error_at": iso(state.error_at),
            })
        database_errors = {kind: {"error": err[0], "at": iso(err[1])}
                           for kind, err in self._fetch_errors.items() if err is not None}
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
            "sources": sources,
            "feeds": feeds,
        }

    # --- listening -------------------------------------------------------------

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.request(*_PAYLOAD_KINDS.get(payload, ("events", "sites", "status")))

    async def _listen_loop(self) -> None:
        backoff = 0.2
        while True:
            lost = asyncio.Event()

            def on_lost(_conn: Any) -> None:
                lost.set()

            try:
                async with self.storage.pool.acquire(timeout=30) as conn:
                    await conn.execute(f"SET application_name = '{LISTENER_APPLICATION_NAME}'")
                    conn.add_termination_listener(on_lost)
                    await conn.add_listener(CHANGES_CHANNEL, self._on_notify)
                    try:
                        self.listener.connected = True
                        self.listener.connected_since = _utc_now()
                        self.listener.connections += 1
                        # Catch up with whatever was committed before we listened (a no-op
                        # render-wise when nothing changed: the fingerprint is the same).
                        self.request()
                        backoff = 0.2
                        while not lost.is_set():
                            try:
                                await asyncio.wait_for(lost.wait(), self.refresh_interval)
                            except TimeoutError:
                                # a connection that died silently raises here instead of staying mute
                                await asyncio.wait_for(conn.fetchval("SELECT 1"), 10)
                        raise ConnectionError("the listening connection was closed")
                    finally:
                        self.listener.connected = False
                        # A terminated connection is already detached from its proxy: nothing to undo.
                        with contextlib.suppress(asyncpg.InterfaceError):
                            conn.remove_termination_listener(on_lost)
                            if not conn.is_closed():
                                await conn.remove_listener(CHANGES_CHANNEL, self._on_notify)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the listener must outlive any connection problem
                self.listener.last_error = f"{type(exc).__name__}: {exc}"
                self.listener.last_error_at = _utc_now()
                log.warning("feed change listener lost (%s); reconnecting in %.1f s", exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)


def _consume_exception(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


# --------------------------------------------------------------------------- query parameters

EVENT_TYPES: tuple[str, ...] = get_args(EventType)
EVENT_STATUSES: tuple[str, ...] = get_args(EventStatus)
BBOX_EXPECTED = "lon_min,lat_min,lon_max,lat_max in WGS 84 degrees, e.g. 3.2,43.3,4.1,43.8"


class BadParameter(ValueError):
    """A query parameter that cannot be used; `as_json` is the 400 body."""

    def __init__(self, parameter: str, value: str, expected: str, detail: str) -> None:
        super().__init__(detail)
        self.parameter = parameter
        self.value = value
        self.expected = expected
        self.detail = detail

    def as_json(self) -> dict[str, str]:
        return {"error": "invalid_parameter", "parameter": self.parameter, "value": self.value,
                "expected": self.expected, "detail": self.detail}


def _parse_list(query: MultiMapping[str], name: str, allowed: Sequence[str]) -> tuple[str, ...] | None:
    raws = query.getall(name, [])
    if not raws:
        return None
    expected = f"a comma-separated list of: {', '.join(allowed)}"
    chosen: set[str] = set()
    for raw in raws:
        for item in (part.strip() for part in raw.split(",")):
            if not item:
                raise BadParameter(name, raw, expected, f"{name} has an empty value in {raw!r}")
            if item not in allowed:
                raise BadParameter(name, raw, expected, f"unknown {name} {item!r}")
            chosen.add(item)
    return tuple(sorted(chosen))


def parse_event_filter(query: MultiMapping[str]) -> EventFilter:
    """`bbox`, `type` and `status` of /feeds/events.geojson, normalized (so equal
    queries share one cached rendering). Other parameters are ignored (cache busters)."""
    bbox = None
    raws = query.getall("bbox", [])
    if len(raws) > 1:
        raise BadParameter("bbox", "&".join(raws), BBOX_EXPECTED, f"bbox is given {len(raws)} times; give it once")
    if raws:
        try:
            bbox = geojson.parse_bbox(raws[0])
        except ValueError as exc:
            raise BadParameter("bbox", raws[0], BBOX_EXPECTED, str(exc)) from None
    return EventFilter(bbox, _parse_list(query, "type", EVENT_TYPES), _parse_list(query, "status", EVENT_STATUSES))


# --------------------------------------------------------------------------- HTTP


_QVALUE = re.compile(r"^\s*q\s*=\s*([0-9.]+)\s*$", re.IGNORECASE)
_ETAG = re.compile(r'(?:W/)?"([^"]*)"')
_CODING_PREFERENCE = ("br", "gzip")  # on equal q, the smaller first

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "ETag, Last-Modified, Content-Encoding",
}
PREFLIGHT_HEADERS = {
    **CORS_HEADERS,
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "If-None-Match, If-Modified-Since, Cache-Control",
    "Access-Control-Max-Age": "86400",
}


def negotiate_encoding(accept_encoding: str | None, available: Collection[str]) -> str:
    """'br', 'gzip' or 'identity': the highest q among the available codings, br
    before gzip on a tie, identity when nothing else is acceptable (q=0 excludes)."""
    if not accept_encoding:
        return "identity"
    weights: dict[str, float] = {}
    for element in accept_encoding.split(","):
        coding, *params = element.split(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        q = 1.0
        for param in params:
            m = _QVALUE.match(param)
            if m:
                try:
                    q = min(float(m.group(1)), 1.0)
                except ValueError:
                    q = 0.0
        if coding == "x-gzip":
            coding = "gzip"
        weights[coding] = max(q, weights.get(coding, 0.0))
    star = weights.get("*", 0.0)
    best, best_q = "identity", 0.0
    for coding in _CODING_PREFERENCE:
        q = weights.get(coding, star)
        if coding in available and q > best_q:
            best, best_q = coding, q
    return best


def etag_matches(if_none_match: str, tag: str) -> bool:
    """Weak comparison (as If-None-Match requires) against any coding's ETag of the version `tag`."""
    if if_none_match.strip() == "*":
        return True
    return any(
        opaque == tag or (opaque.startswith(tag + "-") and opaque[len(tag) + 1:] in _CODING_PREFERENCE)
        for opaque in _ETAG.findall(if_none_match)
    )


def _modified_since(if_modified_since: str, last_modified: datetime) -> bool:
    try:
        since = parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError, IndexError):
        return True  # an unreadable date is ignored
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return last_modified > since


def json_error(status: int, document: dict[str, Any], **extra: str) -> web.Response:
    headers = CIMultiDict({**CORS_HEADERS, "Cache-Control": "no-store", "Content-Type": JSON, **extra})
    return web.Response(status=status, body=geojson.dumps(document), headers=headers)


def serve(request: web.Request, feed: RenderedFeed, cache_control: str) -> web.Response:
    """The feed, its precompressed variant or a 304, with validators and CORS."""
    coding = negotiate_encoding(request.headers.get("Accept-Encoding"), feed.encoded)
    headers = CIMultiDict(CORS_HEADERS)
    headers["ETag"] = feed.etag_for(coding)
    headers["Last-Modified"] = feed.last_modified_http
    headers["Cache-Control"] = cache_control
    headers["Vary"] = "Accept-Encoding"
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None:  # takes precedence over If-Modified-Since (RFC 9110 §13.2.2)
        not_modified = etag_matches(if_none_match, feed.tag)
    else:
        since = request.headers.get("If-Modified-Since")
        not_modified = since is not None and not _modified_since(since, feed.last_modified)
    if not_modified:
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = feed.content_type
    if coding == "identity":
        return web.Response(body=feed.body, headers=headers)
    headers["Content-Encoding"] = coding
    return web.Response(body=feed.encoded[coding], headers=headers)


def _unavailable(path: str, state: FeedState) -> web.Response:
    if state.empty is not None:
        return json_error(503, {"error": "nothing_to_publish", "path": path, "detail": state.empty},
                          **{"Retry-After": "60"})
    detail = "the first rendering of this feed is not finished yet"
    if state.error:
        detail = f"this feed could not be rendered: {state.error}"
    return json_error(503, {"error": "not_ready", "path": path, "detail": detail}, **{"Retry-After": "5"})


def add_feed_routes(router: web.UrlDispatcher, publisher: FeedPublisher, max_age: int) -> None:
    """GET/HEAD and CORS preflight for every feed of `publisher`."""
    public = f"public, max-age={max_age}"

    async def preflight(_request: web.Request) -> web.Response:
        return web.Response(status=204, headers=PREFLIGHT_HEADERS)

    def feed_handler(path: str, cache_control: str) -> Callable[[web.Request], Any]:
        state = publisher.state(path)

        async def handle(request: web.Request) -> web.Response:
            feed = state.current
            if feed is None:
                return _unavailable(path, state)
            return serve(request, feed, cache_control)

        return handle

    def events_handler() -> Callable[[web.Request], Any]:
        whole = feed_handler(EVENTS_GEOJSON, public)

        async def handle(request: web.Request) -> web.Response:
            if not request.query:
                return await whole(request)
            try:
                query = parse_event_filter(request.query)
            except BadParameter as exc:
                return json_error(400, exc.as_json())
            if query.is_empty:
                return await whole(request)
            feed = await publisher.filtered_events(query)
            if feed is None:
                return _unavailable(EVENTS_GEOJSON, publisher.state(EVENTS_GEOJSON))
            return serve(request, feed, public)

        return handle

    for path in publisher.paths:
        if path == EVENTS_GEOJSON:
            handler = events_handler()
        elif path == STATUS_PATH:
            handler = feed_handler(path, "no-cache")  # operators want it fresh; 304s keep it cheap
        else:
            handler = feed_handler(path, public)
        router.add_get(path, handler)
        router.add_route("OPTIONS", path, preflight)
