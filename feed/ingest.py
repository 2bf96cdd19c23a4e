"""From parsed items to storage: plausibility checks, quarantine, chunked writes.

Parsers are synchronous generators doing CPU work; they are advanced in a worker
thread a chunk at a time so one large document never blocks the other sources.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from collectors.comptage_parse import ParseError as CsvParseError
from collectors.datex2_parse import ParseError as DatexParseError
from feed.config import PublicationConfig
from feed.model import (
    ChannelRecord,
    EventRecord,
    MeasurementRecord,
    ParsedItem,
    Quarantined,
    SiteRecord,
)
from feed.storage import Counts, MeasurementRow, Storage

PARSE_ERRORS = (CsvParseError, DatexParseError)
CHUNK = 20_000


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


def implausible(item: ParsedItem, rules: Plausibility, now: datetime) -> str | None:
    """Why a well-formed record is still not believable, or None."""
    if isinstance(item, MeasurementRecord):
        if item.start > now + rules.future_tolerance:
            return f"interval starts at {item.start.isoformat()}, in the future (now {now.isoformat()})"
    elif isinstance(item, SiteRecord):
        if item.lon is not None and item.lat is not None and not rules.inside(item.lon, item.lat):
            return f"site coordinates ({item.lon}, {item.lat}) are outside the configured area {rules.bbox}"
    elif isinstance(item, EventRecord) and item.geometry is not None:
        if not any(rules.inside(lon, lat) for lon, lat in item.geometry.points):
            return f"event geometry lies outside the configured area {rules.bbox}"
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


def _take(items: Iterator[ParsedItem], n: int) -> tuple[list[ParsedItem], str | None]:
    chunk: list[ParsedItem] = []
    try:
        for item in items:
            chunk.append(item)
            if len(chunk) >= n:
                break
    except PARSE_ERRORS as err:
        return chunk, str(err)
    return chunk, None


class Sink:
    """Stores what one run parsed. Events are written at the end, as one snapshot."""

    def __init__(self, storage: Storage, source_id: str, run_id: int | None, rules: Plausibility, now: datetime,
                 progress: Callable[[str, SinkResult], None] | None = None):
        self.progress = progress  # told after every stored chunk: long backfills show they move
        self.storage = storage
        self.source_id = source_id
        self.run_id = run_id
        self.rules = rules
        self.now = now
        self.result = SinkResult()
        self.events: dict[str, EventRecord] = {}
        self._channels: dict[str, int] | None = None

    async def consume(self, items: Iterator[ParsedItem], chunk_size: int = CHUNK) -> None:
        """Reads the parser to its end (or its error), storing as it goes: the next
        chunk is parsed in a worker thread while this one is being stored."""
        pending = asyncio.ensure_future(asyncio.to_thread(_take, items, chunk_size))
        while True:
            chunk, error = await pending
            last = error is not None or len(chunk) < chunk_size
            if not last:
                pending = asyncio.ensure_future(asyncio.to_thread(_take, items, chunk_size))
            try:
                await self.store(chunk)
            except BaseException:
                if not last:  # a thread cannot be stopped: let it finish its chunk
                    await asyncio.gather(pending, return_exceptions=True)
                raise
            if error is not None:
                self.result.error = error
                return
            if last:
                return

    async def store(self, items: list[ParsedItem]) -> None:
        sites: list[SiteRecord] = []
        channels: list[ChannelRecord] = []
        measurements: list[MeasurementRecord] = []
        quarantined: list[Quarantined] = []
        for item in items:
            if isinstance(item, Quarantined):
                quarantined.append(item)
                continue
            why = implausible(item, self.rules, self.now)
            if why is not None:
                quarantined.append(Quarantined(reason=why, excerpt=item.model_dump_json()[:500],
                                               record_ref=getattr(item, "external_id", None)
                                               or getattr(item, "channel_external_id", None)))
            elif isinstance(item, SiteRecord):
                sites.append(item)
            elif isinstance(item, ChannelRecord):
                channels.append(item)
            elif isinstance(item, MeasurementRecord):
                measurements.append(item)
            elif isinstance(item, EventRecord):
                self.events[item.external_id] = item
        if sites:
            await self._store_sites(sites)
        if channels:
            quarantined += await self._store_channels(channels)
        if measurements:
            quarantined += await self._store_measurements(measurements)
        if quarantined:
            await self.storage.quarantine(self.source_id, self.run_id, quarantined)
            self.result.quarantined += len(quarantined)
        if self.progress is not None:
            self.progress(self.source_id, self.result)

    async def _store_sites(self, sites: list[SiteRecord]) -> None:
        # Sites a parser made up from measured data never overwrite a described one.
        derived = [s for s in sites if s.metadata.get("derived_from")]
        if derived:
            known = await self.storage.site_ids(self.source_id, [s.external_id for s in derived])
            sites = [s for s in sites if not (s.metadata.get("derived_from") and s.external_id in known)]
        await self.storage.upsert_sites(self.source_id, sites)

    async def _store_channels(self, channels: list[ChannelRecord]) -> list[Quarantined]:
        known = await self.storage.site_ids(self.source_id, {c.site_external_id for c in channels})
        orphans = [c for c in channels if c.site_external_id not in known]
        await self.storage.upsert_channels(self.source_id, [c for c in channels if c.site_external_id in known])
        self._channels = None  # reload on next use
        return [Quarantined(reason=f"channel refers to unknown site {c.site_external_id!r}",
                            excerpt=c.model_dump_json()[:500], record_ref=c.external_id) for c in orphans]

    async def _store_measurements(self, measurements: list[MeasurementRecord]) -> list[Quarantined]:
        if self._channels is None:
            self._channels = await self.storage.channel_ids(self.source_id)
        ids = self._channels
        rows: list[MeasurementRow] = []
        unknown: list[Quarantined] = []
        for m in measurements:
            channel = ids.get(m.channel_external_id)
            if channel is None:
                unknown.append(Quarantined(reason=f"measurement of unknown channel {m.channel_external_id!r}",
                                           excerpt=m.model_dump_json()[:500], record_ref=m.channel_external_id))
            else:
                rows.append((channel, m.start, m.length, m.count, m.speed, m.occupancy, m.quality))
        if rows:
            self.result.counts += await self.storage.ingest_measurements(rows, self.run_id)
        return unknown

    async def finish(self, *, snapshot: bool) -> SinkResult:
        """Writes the events; a complete snapshot also ends the events it no longer lists."""
        self.result.events_seen = len(self.events)
        if self.events or (snapshot and self.result.complete):
            self.result.counts += await self.storage.upsert_events(
                self.source_id, list(self.events.values()), seen_at=self.now, run_id=self.run_id,
                complete_snapshot=snapshot and self.result.complete,
            )
        return self.result
