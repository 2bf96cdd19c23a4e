"""From parsed items to storage: plausibility checks, quarantine, batched writes.

Memory is bounded by the batch, not by the document: a parser's records are
stored as they come, `CHUNK` at a time, events included (a complete snapshot
ends, at its end, the events its run did not see; no list of them is kept).

A parser is a synchronous generator doing CPU work. It runs in one thread of
its own for its whole life (`ParserThread`): libxml2's objects must not move
between threads, so the parser is never resumed by whichever pool thread is
free. The thread hands over one batch at a time and parses the next while the
previous one is stored.

A batch the database refuses (a value no check here foresaw) is split until
the refused record is isolated: that record is quarantined with the database's
reason, the others are stored.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

import asyncpg

from feed.config import PublicationConfig
from feed.errors import ParseError
from feed.model import (
    ChannelRecord,
    EventRecord,
    MeasurementRecord,
    ParsedItem,
    Quarantined,
    SiteRecord,
)
from feed.store.measurements import MeasurementRow
from feed.store.storage import Storage
from feed.store.writes import Counts

CHUNK = 5_000  # items per batch; at most three batches are alive at once (stored, waiting, parsed)
Clock = Callable[[], datetime]

# What the database (or the driver, encoding a value) says about one bad value; anything
# else (a lost connection, a timeout) fails the poll and nothing is quarantined for it.
REFUSED = (
    asyncpg.DataError,  # class 22: out of range, invalid text, bad JSON ...
    asyncpg.IntegrityConstraintViolationError,  # class 23: CHECK, NOT NULL ...
    asyncpg.ProgramLimitExceededError,  # class 54: index row too large ...
    asyncpg.InternalServerError,  # XX000: what PostGIS raises on a geometry it cannot read
    asyncpg.exceptions._base.DataError,  # the driver could not encode a value
    UnicodeError,
    OverflowError,
)


@dataclass(frozen=True)
class Plausibility:
    """What a record must satisfy to be believed."""

    bbox: tuple[float, float, float, float]  # lon_min, lat_min, lon_max, lat_max, margin included
    future_tolerance: timedelta = timedelta(minutes=15)

    @classmethod
    def from_publication(cls, pub: PublicationConfig) -> Plausibility:
        m = pub.bbox_margin_deg
        lon0, lat0, lon1, lat1 = pub.bbox
        return cls((lon0 - m, lat0 - m, lon1 + m, lat1 + m))

    def inside(self, lon: float, lat: float) -> bool:
        lon0, lat0, lon1, lat1 = self.bbox
        return lon0 <= lon <= lon1 and lat0 <= lat <= lat1


FUTURE = "in the future"  # the reason of a record that may become true later: it must not move a watermark


def implausible(item: ParsedItem, rules: Plausibility, now: datetime) -> str | None:
    """Why a well-formed record is still not believable, or None. Reasons do not depend
    on `now`, so that the same record seen again is the same quarantine row."""
    horizon = now + rules.future_tolerance
    if isinstance(item, MeasurementRecord):
        if item.start > horizon:
            return f"interval starts at {item.start.isoformat()}, {FUTURE}"
    elif isinstance(item, SiteRecord):
        if item.lon is not None and item.lat is not None and not rules.inside(item.lon, item.lat):
            return f"site coordinates ({item.lon}, {item.lat}) are outside the configured area {rules.bbox}"
    elif isinstance(item, EventRecord):
        if item.geometry is None and item.road is None and not item.location_refs:
            return "event has no location: no geometry, no road, no location reference"
        if item.geometry is not None and not any(rules.inside(lon, lat) for lon, lat in item.geometry.points):
            return f"event geometry lies outside the configured area {rules.bbox}"
        if item.source_updated is not None and item.source_updated > horizon:
            return f"event was last updated at {item.source_updated.isoformat()}, {FUTURE}"
    return None


@dataclass
class SinkResult:
    counts: Counts = field(default_factory=Counts)
    quarantined: int = 0
    events_seen: int = 0
    error: str | None = None  # a parse error that cut the document short

    @property
    def complete(self) -> bool:
        return self.error is None


@dataclass
class _Batch:
    items: list[ParsedItem]
    error: str | None = None  # the parse error that ended the document
    failure: BaseException | None = None  # anything else the parser raised (a bug: the poll fails)
    last: bool = False


class ParserThread:
    """Runs one parser from its first record to its end in one dedicated thread, handing
    batches to the event loop; at most one batch waits while the previous one is stored.
    Stopped (the poll failed, or ran out of time), it ends at its next record."""

    def __init__(self, items: Iterator[ParsedItem], size: int):
        self._items = items
        self._size = size
        self._loop = asyncio.get_running_loop()
        self._ready: asyncio.Queue[_Batch] = asyncio.Queue()
        self._room = threading.Semaphore(1)  # batches parsed ahead of the one being stored
        self._stop = threading.Event()
        self._done = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="roadfeed-parser", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        batch: list[ParsedItem] = []
        end = _Batch([], last=True)
        try:
            for item in self._items:
                if self._stop.is_set():
                    return
                batch.append(item)
                if len(batch) >= self._size:
                    if not self._wait_for_room():
                        return
                    self._send(_Batch(batch))
                    batch = []
            end.items = batch
        except ParseError as err:
            end.items, end.error = batch, str(err)
        except BaseException as err:  # noqa: BLE001 - handed to the poll, which records it
            end.items, end.failure = batch, err
        finally:
            try:
                close = getattr(self._items, "close", None)
                if close is not None:
                    close()  # the parser's objects are freed here, in its own thread
                self._items = iter(())
            finally:
                if not self._stop.is_set():
                    self._send(end)
                self._send(None)

    def _wait_for_room(self) -> bool:
        while not self._room.acquire(timeout=0.2):
            if self._stop.is_set():
                return False
        return not self._stop.is_set()

    def _send(self, batch: _Batch | None) -> None:
        try:
            if batch is None:
                self._loop.call_soon_threadsafe(self._done.set)
            else:
                self._loop.call_soon_threadsafe(self._ready.put_nowait, batch)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    async def next(self) -> _Batch:
        batch = await self._ready.get()
        self._room.release()
        return batch

    async def stop(self) -> None:
        """Asks the parser to stop at its next record and waits for its thread to end."""
        self._stop.set()
        self._room.release()
        await asyncio.shield(self._done.wait())


T = TypeVar("T")


async def _isolating(
    store: Callable[[list[T]], Awaitable[Counts]], items: list[T], refused: Callable[[T, BaseException], Quarantined]
) -> tuple[Counts, list[Quarantined]]:
    """Stores `items`; a batch the database refuses is halved until each refused item is
    alone, and that item is quarantined with the database's reason."""
    try:
        return await store(items), []
    except REFUSED as err:
        if len(items) == 1:
            return Counts(), [refused(items[0], err)]
    half = len(items) // 2
    counts, quarantined = await _isolating(store, items[:half], refused)
    more, refused_more = await _isolating(store, items[half:], refused)
    counts += more
    return counts, quarantined + refused_more


def _refusal(ref: str | None, excerpt: str, err: BaseException) -> Quarantined:
    return Quarantined(
        reason=f"refused by the database: {type(err).__name__}: {err}".splitlines()[0], excerpt=excerpt, record_ref=ref
    )


def _listed_twice(event: EventRecord) -> Quarantined:
    return Quarantined(
        reason="event listed more than once in the document; its first listing is kept",
        excerpt=event.model_dump_json()[:500],
        record_ref=event.external_id,
    )


def _ref(item: SiteRecord | ChannelRecord | MeasurementRecord | EventRecord) -> str:
    if isinstance(item, MeasurementRecord):
        return f"{item.channel_external_id} {item.start.isoformat()}"
    return item.external_id


class Sink:
    """Stores what one run parsed, batch by batch."""

    def __init__(
        self,
        storage: Storage,
        source_id: str,
        run_id: int,
        rules: Plausibility,
        clock: Clock,
        progress: Callable[[str, SinkResult], None] | None = None,
    ):
        self.progress = progress  # told after every stored batch: long backfills show they move
        self.storage = storage
        self.source_id = source_id
        self.run_id = run_id
        self.rules = rules
        self.clock = clock  # read at each batch: a long poll judges late records by the time they arrive
        self.now = clock()  # the poll's start: what parsers compare event times with
        self.result = SinkResult()
        self._channels: dict[str, int] | None = None

    async def consume(self, items: Iterator[ParsedItem], chunk_size: int = CHUNK) -> None:
        """Reads the parser to its end (or its error), storing batch by batch."""
        parser = ParserThread(items, chunk_size)
        try:
            while True:
                batch = await parser.next()
                await self.store(batch.items)
                if batch.failure is not None:
                    raise batch.failure
                if batch.error is not None:
                    self.result.error = batch.error
                if batch.last:
                    return
        finally:
            await parser.stop()

    async def store(self, items: Sequence[ParsedItem]) -> None:
        sites: list[SiteRecord] = []
        channels: list[ChannelRecord] = []
        measurements: list[MeasurementRecord] = []
        events: dict[str, EventRecord] = {}
        quarantined: list[Quarantined] = []
        now = self.clock()
        for item in items:
            if isinstance(item, Quarantined):
                quarantined.append(item)
                continue
            why = implausible(item, self.rules, now)
            if why is not None:
                quarantined.append(Quarantined(reason=why, excerpt=item.model_dump_json()[:500], record_ref=_ref(item)))
            elif isinstance(item, SiteRecord):
                sites.append(item)
            elif isinstance(item, ChannelRecord):
                channels.append(item)
            elif isinstance(item, MeasurementRecord):
                measurements.append(item)
            elif isinstance(item, EventRecord):
                if item.external_id in events:
                    quarantined.append(_listed_twice(item))
                else:
                    events[item.external_id] = item
        if sites:
            quarantined += await self._store_sites(sites)
        if channels:
            quarantined += await self._store_channels(channels)
        if measurements:
            quarantined += await self._store_measurements(measurements)
        if events:
            quarantined += await self._store_events(list(events.values()))
        if quarantined:
            await self.storage.quarantine(self.source_id, self.run_id, quarantined)
            self.result.quarantined += len(quarantined)
        if self.progress is not None:
            self.progress(self.source_id, self.result)

    async def _store_sites(self, sites: list[SiteRecord]) -> list[Quarantined]:
        # Sites a parser made up from measured data never overwrite a described one.
        derived = [s for s in sites if s.metadata.get("derived_from")]
        if derived:
            known = await self.storage.site_ids(self.source_id, [s.external_id for s in derived])
            sites = [s for s in sites if not (s.metadata.get("derived_from") and s.external_id in known)]
        _, refused = await _isolating(
            lambda batch: self.storage.upsert_sites(self.source_id, batch),
            sites,
            lambda s, err: _refusal(s.external_id, s.model_dump_json()[:500], err),
        )
        return refused

    async def _store_channels(self, channels: list[ChannelRecord]) -> list[Quarantined]:
        known = await self.storage.site_ids(self.source_id, {c.site_external_id for c in channels})
        orphans = [c for c in channels if c.site_external_id not in known]
        _, refused = await _isolating(
            lambda batch: self.storage.upsert_channels(self.source_id, batch),
            [c for c in channels if c.site_external_id in known],
            lambda c, err: _refusal(c.external_id, c.model_dump_json()[:500], err),
        )
        self._channels = None  # reload on next use
        return refused + [
            Quarantined(
                reason=f"channel refers to unknown site {c.site_external_id!r}",
                excerpt=c.model_dump_json()[:500],
                record_ref=c.external_id,
            )
            for c in orphans
        ]

    async def _store_measurements(self, measurements: list[MeasurementRecord]) -> list[Quarantined]:
        if self._channels is None:
            self._channels = await self.storage.channel_ids(self.source_id)
        ids = self._channels
        rows: list[tuple[MeasurementRow, MeasurementRecord]] = []
        unknown: list[Quarantined] = []
        for m in measurements:
            channel = ids.get(m.channel_external_id)
            if channel is None:
                unknown.append(
                    Quarantined(
                        reason=f"measurement of unknown channel {m.channel_external_id!r}",
                        excerpt=m.model_dump_json()[:500],
                        record_ref=_ref(m),
                    )
                )
            else:
                rows.append(((channel, m.start, m.length, m.count, m.speed, m.occupancy, m.quality), m))
        if rows:
            counts, refused = await _isolating(
                lambda batch: self.storage.ingest_measurements([row for row, _ in batch], self.run_id),
                rows,
                lambda pair, err: _refusal(_ref(pair[1]), pair[1].model_dump_json()[:500], err),
            )
            self.result.counts += counts
            unknown += refused
        return unknown

    async def _store_events(self, events: list[EventRecord]) -> list[Quarantined]:
        # A document that lists an event twice: the first listing stands (in an earlier
        # batch, or this one), or every poll would store two versions.
        earlier = await self.storage.events_seen_by_run(self.source_id, self.run_id, [e.external_id for e in events])
        twice = [_listed_twice(e) for e in events if e.external_id in earlier]
        events = [e for e in events if e.external_id not in earlier]
        self.result.events_seen += len(events)
        counts, refused = await _isolating(
            lambda batch: self.storage.upsert_events(self.source_id, batch, seen_at=self.now, run_id=self.run_id),
            events,
            lambda e, err: _refusal(e.external_id, e.model_dump_json()[:500], err),
        )
        self.result.counts += counts
        return refused + twice

    async def finish(self, *, snapshot: bool) -> SinkResult:
        """A complete snapshot ends the source's events its run did not list."""
        if snapshot and self.result.complete:
            self.result.counts.updated += await self.storage.end_events_not_seen(self.source_id, self.run_id, self.now)
        return self.result
