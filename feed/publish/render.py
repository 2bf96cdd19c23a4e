"""Rendered feed versions: the bytes of a feed, compressed once, with their validators.

A `RenderedFeed` is one version of a feed ready to send: its body, its gzip and
(when the `brotli` package is installed) Brotli forms, a strong ETag from a hash
of the body, and a Last-Modified that strictly increases per feed.
`render_outcome` renders one feed in a worker thread, never raising: a record a
renderer cannot write is left out of that feed only (`LeftOut`), and an
exporter bug is reported, not propagated. `keyed` fingerprints the data, so an
unchanged read renders nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any, NamedTuple

from exporters import datex2_v3
from feed.config import PublicationConfig
from feed.model import StoredEvent
from feed.publish.catalogue import FeedSpec
from feed.publish.splice import Splicer

try:  # optional: without it feeds are offered as gzip and identity only
    import brotli
except ImportError:  # pragma: no cover - the project's environment has it
    brotli = None

__all__ = [
    "BROTLI_QUALITY",
    "BROTLI_QUALITY_FILTERED",
    "GZIP_LEVEL",
    "MAX_LEFT_OUT_LISTED",
    "LeftOut",
    "Outcome",
    "RenderedFeed",
    "body_tag",
    "compress_variants",
    "keyed",
    "next_last_modified",
    "render_outcome",
    "rendered",
]

log = logging.getLogger("roadfeed.feeds")

GZIP_LEVEL = 6
BROTLI_QUALITY = 7  # whole feeds: 1-4 % larger than 9 for a third of the time (Brotli holds the GIL)
BROTLI_QUALITY_FILTERED = 5  # per-query renderings: cheaper to make


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


def next_last_modified(published_at: datetime, previous: RenderedFeed | None) -> datetime:
    # HTTP dates have one-second resolution: two versions in the same second must
    # still differ, or If-Modified-Since would wrongly answer 304.
    lm = published_at.astimezone(UTC).replace(microsecond=0)
    if previous is not None and lm <= previous.last_modified:
        lm = previous.last_modified + timedelta(seconds=1)
    return lm


def rendered(
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
        last_modified=next_last_modified(published_at, previous),
        generation_ms=generation_ms,
        compression_ms=(time.perf_counter() - t0) * 1000,
    )


class LeftOut(NamedTuple):
    """A record one renderer cannot write: left out of that feed only, and listed in status.json."""

    record: str  # the record's id
    reason: str


MAX_LEFT_OUT_LISTED = 100  # per feed in status.json (all are counted)


class Outcome(NamedTuple):
    body: bytes | None
    encoded: dict[str, bytes]
    generation_ms: float
    compression_ms: float
    empty: str | None  # the exporter had nothing it may publish
    error: str | None
    spliced: bool = False  # made from cached parts (see Splicer)
    items: Sequence[Any] = ()  # the records rendered (without those left out)
    keys: Sequence[bytes] = ()  # their keys
    left_out: Mapping[bytes, LeftOut] = {}  # by key: the records this renderer cannot write


def _record_id(item: Any) -> str:
    return str(getattr(item, "id", "?"))


def _unwritable(
    spec: FeedSpec, items: Sequence[Any], keys: Sequence[bytes], publication: PublicationConfig, at: datetime
) -> dict[bytes, LeftOut]:
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


def render_outcome(
    spec: FeedSpec,
    data: Sequence[Any],
    publication: PublicationConfig,
    at: datetime,
    splicer: Splicer | None = None,
    keys: Sequence[bytes] = (),
    known_left_out: Mapping[bytes, LeftOut] | None = None,
) -> Outcome:
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
        return Outcome(None, {}, 0.0, 0.0, str(exc), None, items=items, keys=item_keys, left_out=left_out)
    except Exception as exc:  # an exporter bug must not take the other feeds down
        log.exception("rendering %s failed", spec.path)
        return Outcome(None, {}, 0.0, 0.0, None, f"{type(exc).__name__}: {exc}", left_out=left_out)
    t1 = time.perf_counter()
    encoded = compress_variants(body)
    return Outcome(
        body,
        encoded,
        (t1 - t0) * 1000,
        (time.perf_counter() - t1) * 1000,
        None,
        None,
        spliced=spliced,
        items=items,
        keys=item_keys,
        left_out=left_out,
    )


# What every poll of a source moves without the event changing (see Storage.upsert_events).
_POLL_FIELDS = {"last_seen"}


def keyed(items: Sequence[Any]) -> tuple[bytes, list[bytes], list[bytes]]:
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
