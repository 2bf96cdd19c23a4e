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
bytes of a whole rendering (`_Splicer`), so a change is published in milliseconds
of rendering rather than a second.

The HTTP side (`add_feed_routes`) is a thin adapter: conditional GET (ETag and
Last-Modified), content-coding negotiation over the precomputed variants, CORS,
and the `?bbox=&type=&status=` filters of `/feeds/events.geojson`, whose results
are rendered once per distinct query and feed version. `FeedFastPath` answers
the plain GET/HEAD of a whole feed (what polling apps send) before aiohttp sees
the request, with the same answers; `FeedSite` puts it in front of an aiohttp
runner. Other processes can serve the same versions (`copy_state`, feed.server.workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, formatdate, parsedate_to_datetime
from functools import partial
from typing import Any, Literal, NamedTuple, get_args

import asyncpg
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict, MultiMapping

from exporters import datex2_record, datex2_v2, datex2_v3, geojson, waze, wzdx
from feed.config import Config, PublicationConfig
from feed.metrics import REGISTRY as METRICS
from feed.http.security import FEED_SECURITY_HEADERS, NOT_MODIFIED_COST, RATE_LIMITER, RateLimiter
from feed.deadlines import cancel_and_wait
from feed.model import EventStatus, EventType, StoredEvent
from feed.store.storage import CHANGES_CHANNEL, Storage

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
    "FeedFastPath",
    "FeedPublisher",
    "FeedSite",
    "FeedSpec",
    "FeedState",
    "FeedStateCopy",
    "LeftOut",
    "RenderedFeed",
    "add_feed_routes",
    "check_request_text",
    "check_storable",
    "etag_matches",
    "feed_cache_control",
    "negotiate_encoding",
    "parse_event_filter",
    "printable",
    "unstorable",
]

log = logging.getLogger("roadfeed.feeds")

Kind = Literal["events", "sites", "status"]
DataKind = Literal["events", "sites"]

XML = "application/xml; charset=utf-8"
JSON = "application/json"
GEOJSON = "application/geo+json"

GZIP_LEVEL = 6
BROTLI_QUALITY = 7  # whole feeds: 1-4 % larger than 9 for a third of the time (Brotli holds the GIL)
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

# After a change, the feeds of its kind are rendered one at a time in this order
# (live data first: the measurement site table, which only changes with the
# sites, comes after the feeds of the latest counts).
FEEDS: tuple[FeedSpec, ...] = (
    FeedSpec("/feeds/datex2/v3/situations.xml", "events", XML, datex2_v3.render_situations),
    FeedSpec("/feeds/datex2/v3/measured-data.xml", "sites", XML, datex2_v3.render_measured_data),
    FeedSpec("/feeds/sites.geojson", "sites", GEOJSON, geojson.render_sites),
    FeedSpec("/feeds/datex2/v3/measurement-sites.xml", "sites", XML, datex2_v3.render_measurement_sites),
    FeedSpec("/feeds/datex2/v2/situations.xml", "events", XML, datex2_v2.render_situations),
    FeedSpec(EVENTS_GEOJSON, "events", GEOJSON, geojson.render_events),
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


_GZIP_ASIDE = 256 * 1024  # bodies from this size are gzipped in another thread while Brotli runs here
_gzip_pool: ThreadPoolExecutor | None = None


def compress_variants(body: bytes, brotli_quality: int = BROTLI_QUALITY) -> dict[str, bytes]:
    """gzip and Brotli forms of `body`, keeping only those that are smaller.

    zlib releases the GIL and Brotli does not: for big bodies both run at once."""
    global _gzip_pool
    pending = None
    if brotli is not None and len(body) >= _GZIP_ASIDE:
        if _gzip_pool is None:
            _gzip_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="feed-gzip")
        pending = _gzip_pool.submit(gzip.compress, body, compresslevel=GZIP_LEVEL, mtime=0)
    zipped = None if pending else gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
    compressed = brotli.compress(body, quality=brotli_quality) if brotli is not None else None
    variants = {"gzip": pending.result() if pending else zipped, "br": compressed}
    return {coding: data for coding, data in variants.items() if data is not None and len(data) < len(body)}


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


class LeftOut(NamedTuple):
    """A record one renderer cannot write: left out of that feed only, and listed in status.json."""

    record: str  # the record's id
    reason: str


MAX_LEFT_OUT_LISTED = 100  # per feed in status.json (all are counted)


class _Outcome(NamedTuple):
    body: bytes | None
    encoded: dict[str, bytes]
    generation_ms: float
    compression_ms: float
    empty: str | None  # the exporter had nothing it may publish
    error: str | None
    spliced: bool = False  # made from cached parts (see _Splicer)
    items: Sequence[Any] = ()  # the records rendered (without those left out)
    keys: Sequence[bytes] = ()  # their keys
    left_out: Mapping[bytes, LeftOut] = {}  # by key: the records this renderer cannot write


def _record_id(item: Any) -> str:
    return str(getattr(item, "id", "?"))


def _unwritable(spec: FeedSpec, items: Sequence[Any], keys: Sequence[bytes], publication: PublicationConfig,
                at: datetime) -> dict[bytes, LeftOut]:
    """The records `spec` cannot render, each tried alone (after a whole rendering failed)."""
    assert spec.render is not None
    found: dict[bytes, LeftOut] = {}
    for item, key in zip(items, keys, strict=True):
        try:
            spec.render([item], publication, at)
        except datex2_v3.NothingToPublish:
            pass
        except Exception as exc:  # noqa: BLE001 - whatever the exporter raises, this record is the cause
            found[key] = LeftOut(_record_id(item), f"{type(exc).__name__}: {exc}")
    return found


def _render_outcome(
    spec: FeedSpec,
    data: Sequence[Any],
    publication: PublicationConfig,
    at: datetime,
    splicer: _Splicer | None = None,
    keys: Sequence[bytes] = (),
    known_left_out: Mapping[bytes, LeftOut] | None = None,
) -> _Outcome:
    """Runs in a worker thread: render (from cached fragments when it can) and compress one feed, never raising.

    A record the renderer cannot write (a date beyond what the format carries, say)
    is left out of this feed, never holding it hostage: when a whole rendering
    fails, each record is tried alone, those that fail are left out (and
    remembered by content in `known_left_out`, so later renderings skip them
    without trying again), and the rest is rendered."""
    assert spec.render is not None
    t0 = time.perf_counter()
    keys = keys or [b"%d" % i for i in range(len(data))]
    left_out = {key: known_left_out[key] for key in keys if known_left_out and key in known_left_out}
    items, item_keys = data, keys
    if left_out:
        kept = [(item, key) for item, key in zip(data, keys, strict=True) if key not in left_out]
        items, item_keys = [item for item, _ in kept], [key for _, key in kept]
    try:
        try:
            body = splicer.splice(items, item_keys, publication, at) if splicer is not None else None
            spliced = body is not None
            if body is None:
                body = spec.render(items, publication, at)
        except datex2_v3.NothingToPublish:
            raise
        except Exception:
            found = _unwritable(spec, items, item_keys, publication, at)
            if not found:
                raise  # not a record's fault: an exporter bug, reported below
            for left in found.values():
                log.warning("%s: record %s left out: %s", spec.path, left.record, left.reason)
            left_out.update(found)
            kept = [(item, key) for item, key in zip(items, item_keys, strict=True) if key not in found]
            items, item_keys = [item for item, _ in kept], [key for _, key in kept]
            body, spliced = spec.render(items, publication, at), False
    except datex2_v3.NothingToPublish as exc:
        return _Outcome(None, {}, 0.0, 0.0, str(exc), None, items=items, keys=item_keys, left_out=left_out)
    except Exception as exc:  # an exporter bug must not take the other feeds down
        log.exception("rendering %s failed", spec.path)
        return _Outcome(None, {}, 0.0, 0.0, None, f"{type(exc).__name__}: {exc}", left_out=left_out)
    t1 = time.perf_counter()
    encoded = compress_variants(body)
    return _Outcome(body, encoded, (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000, None, None,
                    spliced=spliced, items=items, keys=item_keys, left_out=left_out)


# What every poll of a source moves without the event changing (see Storage.upsert_events).
_POLL_FIELDS = {"last_seen"}


def _keyed(items: Sequence[Any]) -> tuple[bytes, list[bytes], list[bytes]]:
    """The data's fingerprint; each item's complete JSON; and each item's JSON without
    what every poll moves (the keys of the parts of feeds that do not show it)."""
    if items and isinstance(items[0], StoredEvent):
        steady = [item.model_dump_json(exclude=_POLL_FIELDS).encode() for item in items]
        keys = [key + b"\x1f" + item.last_seen.isoformat().encode() for key, item in zip(steady, items, strict=True)]
    else:
        keys = steady = [item.model_dump_json().encode() for item in items]
    # A poll that only moved last_seen changes no feed (none shows it): same fingerprint.
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(len(items)).encode())
    for key in steady:
        digest.update(key)
        digest.update(b"\x00")
    return digest.digest(), keys, steady


# --------------------------------------------------------------------------- incremental rendering
#
# The event feeds are lists: a head, one part per event, a tail. After a change,
# only the changed events' parts need rendering, and re-rendering 2,000 events to
# change one is most of the time between a change and its publication. A `_Splicer`
# keeps each event's part, keyed by the event's complete data and by what of the
# publication time the part depends on (declared below, per exporter: a DATEX
# situation's validity status moves with the time, a GeoJSON feature does not),
# and rebuilds the document as head + parts + tail, the head and tail taken from
# the exporter's own rendering of no event at the current time.
#
# Nothing about an exporter is assumed blindly: a feed is spliced only after a
# whole rendering equalled the splice of the same data, and a whole rendering is
# compared again every `verify_every`-th splice; any difference (an exporter that
# changed shape) turns splicing off for that feed and publishes the whole rendering.


def _timeless(_item: Any, _at: datetime) -> None:
    return None


def _v3_validity(event: StoredEvent, at: datetime) -> Any:
    return datex2_record.validity(event, at)


def _v2_validity(event: StoredEvent, at: datetime) -> Any:
    return datex2_record.validity(event, at, planned_status=False)


class SpliceRule(NamedTuple):
    """What one item's part of a list-shaped feed depends on, besides the item's content."""

    time_key: Callable[[Any, datetime], Any]  # what of the publication time it shows
    shows_poll_fields: bool = False  # it shows what every poll moves (an event's last_seen)


# Renderers not listed are always rendered whole (their head depends on the items,
# like WZDx's data sources, or an empty list renders differently, like CIFS XML).
SPLICE_RULES: dict[Callable[..., bytes], SpliceRule] = {
    datex2_v3.render_situations: SpliceRule(_v3_validity),
    datex2_v2.render_situations: SpliceRule(_v2_validity),
    geojson.render_events: SpliceRule(_timeless),
    waze.render_cifs_json: SpliceRule(_timeless),
}


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    lo, hi = 0, n  # a[:lo] == b[:lo]; binary search on slices compares in C
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class _Splicer:
    """One feed's per-item parts, and whether splicing may be trusted for it."""

    def __init__(self, path: str, render: Callable[..., bytes], time_key: Callable[[Any, datetime], Any],
                 *, verify_every: int = 20, max_misses: float = 0.1) -> None:
        self.path = path
        self.render = render
        self.time_key = time_key
        self.verify_every = verify_every
        self.max_misses = max_misses  # share of items to render one by one before a whole rendering is cheaper
        self.parts: dict[tuple[bytes, Any], bytes] = {}
        self.trusted = False  # a whole rendering equalled a splice
        self.disabled: str | None = None
        self.splices = 0

    def _frame(self, items: Sequence[Any], publication: PublicationConfig, at: datetime
               ) -> tuple[bytes, bytes, bytes] | None:
        """(head, separator, tail) of the document at `at`, or None if it does not split."""
        empty = self.render([], publication, at)
        for item in items[:8]:
            one = self.render([item], publication, at)
            if one != empty:
                break
        else:
            return None
        cut = _common_prefix(empty, one)
        head, tail = empty[:cut], empty[cut:]
        if not (one.startswith(head) and one.endswith(tail)) or len(one) < len(empty):
            return None
        part = one[cut:len(one) - len(tail)]
        two = self.render([item, item], publication, at)
        if not (two.startswith(head + part) and two.endswith(part + tail)
                and len(two) >= len(head) + 2 * len(part) + len(tail)):
            return None
        separator = two[cut + len(part):len(two) - len(tail) - len(part)]
        return head, separator, tail

    def _assemble(self, items: Sequence[Any], keys: Sequence[bytes], publication: PublicationConfig, at: datetime,
                  budget: int | None) -> bytes | None:
        """head + the items' parts + tail, rendering at most `budget` missing parts (None: no limit)."""
        frame = self._frame(items, publication, at)
        if frame is None:
            return None
        head, separator, tail = frame
        parts: dict[tuple[bytes, Any], bytes] = {}
        out: list[bytes] = []
        time_key, cached = self.time_key, self.parts
        for item, key in zip(items, keys, strict=True):
            k = (key, time_key(item, at))
            part = cached.get(k)
            if part is None:
                if budget is not None:
                    budget -= 1
                    if budget < 0:
                        return None
                one = self.render([item], publication, at)
                if not (one.startswith(head) and one.endswith(tail)) or len(one) < len(head) + len(tail):
                    return None
                part = one[len(head):len(one) - len(tail)]
            parts[k] = part
            if part:
                out.append(part)
        self.parts = parts  # only the current items' parts are kept
        return head + separator.join(out) + tail

    def splice(self, items: Sequence[Any], keys: Sequence[bytes], publication: PublicationConfig,
               at: datetime) -> bytes | None:
        """The document from cached parts, or None when a whole rendering is due (or cheaper)."""
        if self.disabled or not self.trusted or not items:
            return None
        if (self.splices + 1) % self.verify_every == 0:
            return None  # this one is rendered whole, and checked against the parts in `check`
        try:
            body = self._assemble(items, keys, publication, at, int(len(items) * self.max_misses) + 1)
        except Exception:  # noqa: BLE001 - the whole rendering says what is wrong, if anything
            self.trusted = False
            return None
        if body is not None:
            self.splices += 1
        return body

    def check(self, items: Sequence[Any], keys: Sequence[bytes], publication: PublicationConfig, at: datetime,
              whole: bytes) -> None:
        """After a whole rendering: fill the parts, and trust splicing only if it gives the same bytes."""
        if self.disabled or not items:
            return
        try:
            spliced = self._assemble(items, keys, publication, at, None)
        except Exception as exc:  # noqa: BLE001 - the whole rendering worked: keep it, stop splicing
            spliced, reason = None, f"{type(exc).__name__}: {exc}"
        else:
            reason = "the document does not split into a head, one part per item and a tail"
        if spliced is not None and spliced != whole:
            reason = "splicing gave other bytes than a whole rendering"
        if spliced != whole:
            self.disabled, self.parts, self.trusted = reason, {}, False
            log.warning("%s: rendered whole from now on (%s)", self.path, reason)
            return
        self.trusted = True
        self.splices += 1  # counts toward the next check


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


class EventFilter(NamedTuple):
    """A normalized `?bbox=&type=&status=&geometry_type=` query (None: no criterion)."""

    bbox: tuple[float, float, float, float] | None = None
    types: tuple[str, ...] | None = None
    statuses: tuple[str, ...] | None = None
    geometry_types: tuple[str, ...] | None = None

    @property
    def is_empty(self) -> bool:
        return self.bbox is None and self.types is None and self.statuses is None and self.geometry_types is None


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


@dataclass
class _Listener:
    connected: bool = False
    connected_since: datetime | None = None
    connections: int = 0
    last_error: str | None = None
    last_error_at: datetime | None = None


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
        self._splicers = {spec.path: _Splicer(spec.path, spec.render, SPLICE_RULES[spec.render].time_key)
                          for spec in feeds if spec.render in SPLICE_RULES}
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
        self.listener = _Listener()
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
            asyncio.create_task(self._listen_loop(), name="feeds-listener"),
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
        return await self._cached_filtered(snapshot.tag, query,
                                           lambda: asyncio.to_thread(self._render_filtered, snapshot, query))

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
        events = geojson.filter_events(snapshot.events, query.bbox, query.types, query.statuses,
                                       query.geometry_types)
        body = geojson.render_events(events, self.publication, snapshot.published_at)
        generation_ms = (time.perf_counter() - t0) * 1000
        t1 = time.perf_counter()
        encoded = compress_variants(body, BROTLI_QUALITY_FILTERED)
        return RenderedFeed(GEOJSON, body, encoded, body_tag(body), snapshot.published_at, snapshot.last_modified,
                            generation_ms, (time.perf_counter() - t1) * 1000)

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
        digest, keys, steady_keys = await asyncio.to_thread(_keyed, data)
        self._read_ms[kind] = {"read": round((t1 - t0) * 1000, 2),
                               "fingerprint": round((time.perf_counter() - t1) * 1000, 2)}
        states = [s for s in self._states.values() if s.spec.kind == kind]
        previous = self._fingerprints.get(kind)
        if previous and previous[0] == digest and loop.time() - previous[1] < self.republish_after:
            return True
        gate = asyncio.Semaphore(self.render_concurrency)  # FIFO: feeds start in `feeds` order

        async def render(state: FeedState) -> _Outcome:
            splicer = self._splicers.get(state.spec.path)
            item_keys = keys if splicer is None or SPLICE_RULES[state.spec.render].shows_poll_fields else steady_keys
            async with gate:
                outcome = await asyncio.to_thread(_render_outcome, state.spec, data, self.publication, now,
                                                  splicer, item_keys, state.left_out_keys)
            if splicer is not None and outcome.body is not None and not outcome.spliced:
                self._checks.setdefault(kind, []).append(
                    partial(splicer.check, outcome.items, outcome.keys, self.publication, now, outcome.body))
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
                self._events = _EventsSnapshot(current.tag, list(rendered), current.published_at,
                                               current.last_modified)
                self._filtered.clear()  # renderings still running finish for the requests awaiting them
        log.debug("rendered %s feeds in %.1f ms", kind, sum(o.generation_ms for o in outcomes))
        return True

    def _set(self, state: FeedState, outcome: _Outcome, now: datetime) -> None:
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
                "left_out": len(state.left_out),
                "left_out_records": [{"id": left.record, "reason": left.reason}
                                     for left in state.left_out[:MAX_LEFT_OUT_LISTED]],
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
            "data_read_ms": dict(self._read_ms),
            **({"processes": self.processes()} if self.processes is not None else {}),
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

            on_notify = self.storage.listener(self._on_notify)  # on a standby: once replayed
            try:
                async with self.storage.listen_pool.acquire(timeout=30) as conn:
                    await conn.execute(f"SET application_name = '{LISTENER_APPLICATION_NAME}'")
                    conn.add_termination_listener(on_lost)
                    await conn.add_listener(CHANGES_CHANNEL, on_notify)
                    try:
                        self.listener.connected = True
                        self.listener.connected_since = _utc_now()
                        self.listener.connections += 1
                        # Catch up with whatever was committed before we listened (a no-op
                        # render-wise when nothing changed: the fingerprint is the same).
                        on_notify(conn, 0, CHANGES_CHANNEL, "")
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
                                await conn.remove_listener(CHANGES_CHANNEL, on_notify)
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
# Single-type layers for tools that refuse mixed geometries (a Shapefile holds one type).
GEOMETRY_TYPES: tuple[str, ...] = ("Point", "LineString")
BBOX_EXPECTED = "lon_min,lat_min,lon_max,lat_max in WGS 84 degrees, e.g. 3.2,43.3,4.1,43.8"


MAX_ECHO = 200  # characters of a refused value echoed in the error


def printable(text: str) -> str:
    """`text` as an error may echo it: control characters and lone surrogates escaped
    (a JSON body must encode as UTF-8), at most MAX_ECHO characters."""
    if len(text) > MAX_ECHO:
        text = text[:MAX_ECHO] + "…"
    if _UNPRINTABLE.search(text) is None:
        return text
    return _UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
# What PostgreSQL text cannot hold (NUL) or UTF-8 cannot encode (lone surrogates).
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
UNSTORABLE_EXPECTED = "text without NUL (U+0000) or lone surrogates (U+D800 to U+DFFF)"


def unstorable(text: str) -> str | None:
    """Why `text` cannot be stored or compared in PostgreSQL, or None when it can."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    char = found.group()
    what = "a NUL character (U+0000)" if char == "\x00" else f"a lone surrogate (U+{ord(char):04X})"
    return f"contains {what}, which the database cannot hold"


def check_storable(parameter: str, value: str) -> None:
    """Raises BadParameter naming `parameter` when `value` is text PostgreSQL cannot hold."""
    reason = unstorable(value)
    if reason is not None:
        raise BadParameter(parameter, value, UNSTORABLE_EXPECTED, f"{parameter} {reason}")


def check_request_text(query: MultiMapping[str], path_parameters: Mapping[str, str]) -> None:
    """Every query parameter (name and value) and path parameter: text PostgreSQL can hold.

    Checked once for every route, before any handler reads a parameter: no route
    can hand a database driver text it would refuse with a server error."""
    for name, value in path_parameters.items():
        check_storable(name, value)
    for name, value in query.items():
        check_storable(printable(name), name)
        check_storable(name, value)


class BadParameter(ValueError):
    """A query parameter that cannot be used; `as_json` is the 400 body."""

    def __init__(self, parameter: str, value: str, expected: str, detail: str) -> None:
        super().__init__(detail)
        self.parameter = printable(parameter)
        self.value = printable(value)
        self.expected = expected
        self.detail = printable(detail)

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
    """`bbox`, `type`, `status` and `geometry_type` of /feeds/events.geojson, normalized (so equal
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
    return EventFilter(bbox, _parse_list(query, "type", EVENT_TYPES), _parse_list(query, "status", EVENT_STATUSES),
                       _parse_list(query, "geometry_type", GEOMETRY_TYPES))


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
        else:
            handler = feed_handler(path, feed_cache_control(path, max_age))
        router.add_get(path, handler)
        router.add_route("OPTIONS", path, preflight)


# --------------------------------------------------------------------------- HTTP fast path
#
# A GPS app polling a feed sends a GET of a known path with a few headers and gets
# a 304 (or the bytes of the current version): work that aiohttp does with a
# Request, a router, a Response and a header multidict per request. `FeedFastPath`
# answers exactly those requests straight from the connection's bytes, with every
# response's headers prepared once per feed version, and hands everything else
# (other paths, query strings, other methods, HTTP/1.0, bodies, upgrades, anything
# unusual) to aiohttp on the same connection, which then keeps it. Both paths send
# the same status, headers and body for the same request (tests/feed/test_feeds_fastpath.py).

MAX_HEAD = 8190  # longer request heads go to aiohttp, which refuses lines beyond this
BODY_CHUNK = 256 * 1024  # bigger bodies are handed to the socket this much at a time, as the client reads
KEEPALIVE_TIMEOUT = 75.0  # idle keep-alive connections are closed after this (aiohttp's default)
_HANDOFF_FIELDS = frozenset({b"transfer-encoding", b"expect", b"upgrade", b"content-length"})
_SERVER_LINE = b"Server: " + SERVER_SOFTWARE.encode() + b"\r\n"
_CORS_LINES = "".join(f"{name}: {value}\r\n" for name, value in CORS_HEADERS.items())
# What feed.http.security's response hook adds to the same feeds on aiohttp's side.
_SECURITY_LINES = "".join(f"{name}: {value}\r\n" for name, value in FEED_SECURITY_HEADERS.items())
_date_cache: list[Any] = [0, b""]


def _date_line() -> bytes:
    now = int(time.time())
    if now != _date_cache[0]:
        _date_cache[0], _date_cache[1] = now, f"Date: {formatdate(now, usegmt=True)}\r\n".encode()
    return _date_cache[1]


def feed_cache_control(path: str, max_age: int) -> str:
    """operators want status.json fresh (304s keep it cheap); feeds may be cached `max_age` seconds."""
    return "no-cache" if path == STATUS_PATH else f"public, max-age={max_age}"


class _Prepared:
    """One feed version's responses, as bytes, for each content coding."""

    __slots__ = ("codings", "feed", "last_modified", "matching", "not_modified", "ok", "bodies")

    def __init__(self, feed: RenderedFeed, cache_control: str) -> None:
        self.feed = feed
        self.codings: dict[bytes | None, str] = {}  # Accept-Encoding value -> chosen coding
        self.last_modified = feed.last_modified_http.encode()
        self.ok: dict[str, bytes] = {}
        self.not_modified: dict[str, bytes] = {}
        self.bodies: dict[str, bytes] = {}
        self.matching: set[bytes] = set()  # If-None-Match values that match as they are
        for coding in ("identity", *feed.encoded):
            body = feed.body if coding == "identity" else feed.encoded[coding]
            etag = feed.etag_for(coding)
            common = (f"{_CORS_LINES}{_SECURITY_LINES}ETag: {etag}\r\nLast-Modified: {feed.last_modified_http}\r\n"
                      f"Cache-Control: {cache_control}\r\nVary: Accept-Encoding\r\n")
            encoding = "" if coding == "identity" else f"Content-Encoding: {coding}\r\n"
            self.not_modified[coding] = f"HTTP/1.1 304 Not Modified\r\n{common}".encode()
            self.ok[coding] = (f"HTTP/1.1 200 OK\r\n{common}Content-Type: {feed.content_type}\r\n{encoding}"
                               f"Content-Length: {len(body)}\r\n").encode()
            self.bodies[coding] = body
            self.matching.update((etag.encode(), b"W/" + etag.encode()))
        self.matching.add(b"*")

    def coding(self, accept_encoding: bytes | None) -> str:
        coding = self.codings.get(accept_encoding)
        if coding is None:
            text = accept_encoding.decode("latin-1") if accept_encoding is not None else None
            coding = negotiate_encoding(text, self.feed.encoded)
            if len(self.codings) < 256:  # clients send few distinct values; do not grow on garbage
                self.codings[accept_encoding] = coding
        return coding


class _FastRoute:
    __slots__ = ("cache_control", "latency_200", "latency_304", "prepared", "state")

    def __init__(self, state: FeedState, cache_control: str) -> None:
        self.state = state
        self.cache_control = cache_control
        self.prepared: _Prepared | None = None
        # /metrics: looked up once here, so a request costs a bisect and two additions
        self.latency_200 = METRICS.http.child(state.spec.path, "2xx", "fast")
        self.latency_304 = METRICS.http.child(state.spec.path, "3xx", "fast")


_ANSWERED, _CLOSE, _HANDOFF = 0, 1, 2


class FeedFastPath:
    """Answers GET/HEAD of the whole feeds of `publisher`; `protocol_factory` wraps aiohttp's."""

    def __init__(self, publisher: FeedPublisher, max_age: int, *, keepalive_timeout: float = KEEPALIVE_TIMEOUT):
        self.routes = {path.encode(): _FastRoute(publisher.state(path), feed_cache_control(path, max_age))
                       for path in publisher.paths}
        self.keepalive_timeout = keepalive_timeout
        self.connections: set[_FeedConnection] = set()
        self.handed_off = 0  # connections given to aiohttp (a gauge of what the fast path misses)
        # The app's per-client limit (set by FeedSite.start): a refused poll goes to aiohttp, which says 429.
        self.limiter: RateLimiter | None = None

    def protocol_factory(self, fallback: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _FeedConnection(self, fallback)

    def close_connections(self) -> None:
        """Closes every connection still on the fast path (pending writes are sent first;
        a body being sent is finished first)."""
        for conn in list(self.connections):
            if conn.sending is not None:
                conn.close_after = True
            else:
                conn.close()

    def answer(self, head: bytes, conn: _FeedConnection) -> int:
        """Writes the response to one request head (without its final CRLF CRLF), or says _HANDOFF."""
        t0 = time.perf_counter()
        line_end = head.find(b"\r\n")
        request_line = head if line_end < 0 else head[:line_end]
        method, _, rest = request_line.partition(b" ")
        target, _, version = rest.partition(b" ")
        route = self.routes.get(target)
        if route is None or version != b"HTTP/1.1" or (method != b"GET" and method != b"HEAD"):
            return _HANDOFF
        feed = route.state.current
        if feed is None:
            return _HANDOFF  # aiohttp explains the 503
        inm = ims = accept = forwarded = None
        close = False
        if line_end >= 0:
            for line in head[line_end + 2:].split(b"\r\n"):
                name, colon, value = line.partition(b":")
                if not colon or not name or name[-1] in b" \t" or name[0] in b" \t" or b"\r" in line or b"\n" in line:
                    return _HANDOFF  # malformed, folded or bare-CR/LF: aiohttp refuses it properly
                name = name.lower()  # a repeated field counts once, as `request.headers.get` reads it
                if name == b"if-none-match":
                    if inm is None:
                        inm = value.strip()
                elif name == b"accept-encoding":
                    if accept is None:
                        accept = value.strip()
                elif name == b"if-modified-since":
                    if ims is None:
                        ims = value.strip()
                elif name == b"x-forwarded-for":
                    forwarded = value.strip() if forwarded is None else forwarded + b"," + value.strip()
                elif name == b"connection":
                    tokens = {t.strip() for t in value.lower().split(b",")}
                    if b"upgrade" in tokens:
                        return _HANDOFF
                    close = b"close" in tokens
                elif name in _HANDOFF_FIELDS and not (name == b"content-length" and value.strip() == b"0"):
                    return _HANDOFF
        prepared = route.prepared
        if prepared is None or prepared.feed is not feed:
            prepared = route.prepared = _Prepared(feed, route.cache_control)
        coding = prepared.coding(accept)
        if inm is not None:  # takes precedence over If-Modified-Since (RFC 9110 §13.2.2)
            not_modified = inm in prepared.matching or etag_matches(inm.decode("latin-1"), feed.tag)
        elif ims is not None:
            not_modified = ims == prepared.last_modified or not _modified_since(ims.decode("latin-1"),
                                                                                feed.last_modified)
        else:
            not_modified = False
        limiter = self.limiter
        if limiter is not None and limiter.enabled:
            client = limiter.client(conn.peer, forwarded.decode("latin-1") if forwarded is not None else None)
            if limiter.take(client, NOT_MODIFIED_COST if not_modified else 1.0):
                return _HANDOFF
        end = b"Connection: close\r\n" + _SERVER_LINE + b"\r\n" if close else _SERVER_LINE + b"\r\n"
        transport = conn.transport
        assert transport is not None
        if not_modified:
            transport.write(prepared.not_modified[coding] + _date_line() + end)
            route.latency_304.observe(time.perf_counter() - t0)
        else:
            transport.write(prepared.ok[coding] + _date_line() + end)
            if method == b"GET":
                conn.send_body(prepared.bodies[coding])
            route.latency_200.observe(time.perf_counter() - t0)
        return _CLOSE if close else _ANSWERED


class _FeedConnection(asyncio.Protocol):
    """One client connection, on the fast path until a request needs aiohttp."""

    __slots__ = ("buffer", "close_after", "fallback", "fast", "last_active", "loop", "paused", "peer", "sending",
                 "timer", "transport")

    def __init__(self, fast: FeedFastPath, fallback: Callable[[], asyncio.Protocol]) -> None:
        self.fast = fast
        self.fallback = fallback
        self.buffer = b""
        self.paused = False  # the client reads slower than we write
        self.sending: memoryview | None = None  # the rest of a big body, handed over as the client reads
        self.close_after = False
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()
        self.last_active = 0.0
        self.peer: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peername = transport.get_extra_info("peername")
        self.peer = peername[0] if isinstance(peername, tuple | list) and peername else None
        self.fast.connections.add(self)
        self.last_active = self.loop.time()
        self.timer = self.loop.call_later(self.fast.keepalive_timeout, self._check_idle)

    def data_received(self, data: bytes) -> None:
        self.last_active = self.loop.time()
        self.buffer = self.buffer + data if self.buffer else data
        if not self.paused:
            self._process()

    def _process(self) -> None:
        buffer, answer = self.buffer, self.fast.answer
        while buffer:
            end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
            if end < 0:
                if len(buffer) > MAX_HEAD or b"\n\n" in buffer:  # too long, or bare LF line ends
                    self._hand_off(buffer)
                    return
                break
            outcome = answer(buffer[:end], self)
            if outcome == _HANDOFF:
                self._hand_off(buffer)
                return
            buffer = buffer[end + 4:]
            if outcome == _CLOSE:
                buffer = b""
                if self.sending is None:
                    self.close()
                else:
                    self.close_after = True
                break
            if self.paused or self.sending is not None:  # the next request waits for resume_writing
                break
        self.buffer = buffer

    def send_body(self, body: bytes) -> None:
        """Small bodies go at once; big ones a chunk at a time, so a connection never
        buffers a whole feed and every client's download moves at each turn of the loop."""
        if len(body) <= BODY_CHUNK:
            assert self.transport is not None
            self.transport.write(body)
        else:
            self.sending = memoryview(body)
            self._pump()

    def _pump(self) -> None:
        view, transport = self.sending, self.transport
        assert transport is not None
        while view is not None and not self.paused:
            transport.write(view[:BODY_CHUNK])  # pause_writing may come from inside this call
            view = view[BODY_CHUNK:] or None
        self.sending = view

    def _hand_off(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        self._detach()
        self.fast.handed_off += 1
        protocol = self.fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(data)

    def _detach(self) -> None:
        self.fast.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.buffer = b""
        self.sending = None

    def _check_idle(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        idle = self.loop.time() - self.last_active
        if idle >= self.fast.keepalive_timeout and not transport.get_write_buffer_size() and self.sending is None:
            self.close()
        else:
            self.timer = self.loop.call_later(max(self.fast.keepalive_timeout - idle, 1.0), self._check_idle)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self._detach()

    def pause_writing(self) -> None:
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is None or self.transport.is_closing():
            return
        if self.sending is not None:
            self._pump()
            if self.sending is not None:
                return  # paused again
        if self.close_after:
            self.close()
            return
        self.transport.resume_reading()
        if self.buffer:
            self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        self._detach()
        self.transport = None


class FeedSite(web.BaseSite):
    """A TCP site of an aiohttp runner whose connections start on a `FeedFastPath`.

    `reuse_port` lets several processes listen on the same address (SO_REUSEPORT):
    the kernel spreads new connections over them.
    """

    __slots__ = ("_bound_port", "_fast", "_host", "_port", "_reuse_port")

    def __init__(self, runner: web.BaseRunner, fast: FeedFastPath, host: str, port: int, *,
                 reuse_port: bool = False, backlog: int = 1024) -> None:
        super().__init__(runner, backlog=backlog)
        self._fast = fast
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._bound_port: int | None = None

    @property
    def port(self) -> int:
        return self._bound_port if self._bound_port is not None else self._port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        if self._fast.limiter is None and isinstance(self._runner, web.AppRunner):
            self._fast.limiter = self._runner.app.get(RATE_LIMITER)
        self._server = await asyncio.get_running_loop().create_server(
            self._fast.protocol_factory(server), self._host, self._port, backlog=self._backlog,
            reuse_address=True, reuse_port=self._reuse_port or None,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        await super().stop()
        self._fast.close_connections()
