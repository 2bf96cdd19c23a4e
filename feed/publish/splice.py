"""Incremental rendering of the event feeds: a changed event re-renders its own part only.

The event feeds are lists: a head, one part per event, a tail. After a change,
only the changed events' parts need rendering, and re-rendering 2,000 events to
change one is most of the time between a change and its publication. A `Splicer`
keeps each event's part, keyed by the event's complete data and by what of the
publication time the part depends on (declared below, per exporter: a DATEX
situation's validity status moves with the time, a GeoJSON feature does not),
and rebuilds the document as head + parts + tail, the head and tail taken from
the exporter's own rendering of no event at the current time.

Nothing about an exporter is assumed blindly: a feed is spliced only after a
whole rendering equalled the splice of the same data, and a whole rendering is
compared again every `verify_every`-th splice; any difference (an exporter that
changed shape) turns splicing off for that feed and publishes the whole rendering.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from exporters import datex2_record, datex2_v2, datex2_v3, geojson, waze
from feed.config import PublicationConfig
from feed.model import StoredEvent

__all__ = ["SPLICE_RULES", "SpliceRule", "Splicer"]

log = logging.getLogger("roadfeed.feeds")


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


class Splicer:
    """One feed's per-item parts, and whether splicing may be trusted for it."""

    def __init__(
        self,
        path: str,
        render: Callable[..., bytes],
        time_key: Callable[[Any, datetime], Any],
        *,
        verify_every: int = 20,
        max_misses: float = 0.1,
    ) -> None:
        self.path = path
        self.render = render
        self.time_key = time_key
        self.verify_every = verify_every
        self.max_misses = max_misses  # share of items to render one by one before a whole rendering is cheaper
        self.parts: dict[tuple[bytes, Any], bytes] = {}
        self.trusted = False  # a whole rendering equalled a splice
        self.disabled: str | None = None
        self.splices = 0

    def _frame(
        self, items: Sequence[Any], publication: PublicationConfig, at: datetime
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
        part = one[cut : len(one) - len(tail)]
        two = self.render([item, item], publication, at)
        if not (
            two.startswith(head + part)
            and two.endswith(part + tail)
            and len(two) >= len(head) + 2 * len(part) + len(tail)
        ):
            return None
        separator = two[cut + len(part) : len(two) - len(tail) - len(part)]
        return head, separator, tail

    def _assemble(
        self,
        items: Sequence[Any],
        keys: Sequence[bytes],
        publication: PublicationConfig,
        at: datetime,
        budget: int | None,
    ) -> bytes | None:
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
                part = one[len(head) : len(one) - len(tail)]
            parts[k] = part
            if part:
                out.append(part)
        self.parts = parts  # only the current items' parts are kept
        return head + separator.join(out) + tail

    def splice(
        self, items: Sequence[Any], keys: Sequence[bytes], publication: PublicationConfig, at: datetime
    ) -> bytes | None:
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

    def check(
        self, items: Sequence[Any], keys: Sequence[bytes], publication: PublicationConfig, at: datetime, whole: bytes
    ) -> None:
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
