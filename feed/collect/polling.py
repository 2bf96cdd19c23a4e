"""One poll of each source kind: which URLs to fetch, which parser reads them.

A poller fetches through the shared `Fetcher`, hands parsed items to the run's
`Sink`, and returns the polling state to persist. Runs, errors and quarantine
bookkeeping live in `feed.collect.poll`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from collectors import comptage_parse, opendatasoft_parse
from collectors.datex2_parse import parse_datex2
from collectors.fetch import Fetched, Fetcher
from feed.collect.ingest import Sink
from feed.config import SourceConfig
from feed.model import ChannelRecord, ParsedItem
from feed.store.storage import SourceState

MAX_PAGES_PER_POLL = 100  # Opendatasoft: 10,000 records, then the next poll goes on


@dataclass
class PollOutcome:
    http_status: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    watermark: str | None = None
    snapshot: bool = False  # the events seen are the source's complete current list


Poller = Callable[[SourceConfig, SourceState, Fetcher, Sink], Awaitable[PollOutcome]]


async def _consume(sink: Sink, fetched: Fetched, items: Iterator[ParsedItem]) -> None:
    """Stores what the parser reads from the body, then lets the body go."""
    try:
        await sink.consume(items)
    finally:
        fetched.close()


def _noting_time_steps(items: Iterator[ParsedItem], steps: dict[str, int]) -> Iterator[ParsedItem]:
    for item in items:
        if isinstance(item, ChannelRecord):
            steps[item.external_id] = item.time_step
        yield item


async def poll_datex2(source: SourceConfig, state: SourceState, fetcher: Fetcher, sink: Sink) -> PollOutcome:
    """A DATEX II v2/v3 pull: conditional GET, streaming parse of the whole document."""
    fetched = await fetcher.get(source.id, source.url, etag=state.etag, last_modified=state.last_modified)
    outcome = PollOutcome(
        fetched.status, fetched.etag, fetched.last_modified, snapshot=bool(source.options.get("snapshot", True))
    )
    if fetched.status == 304:
        outcome.snapshot = False  # nothing read: nothing may be ended
        return outcome
    await _consume(sink, fetched, parse_datex2(fetched.content, source_id=source.id, now=sink.now))
    return outcome


async def poll_comptage(source: SourceConfig, state: SourceState, fetcher: Fetcher, sink: Sink) -> PollOutcome:
    """The national CSV model: optional site and channel files, then the measures at `url`."""
    opts = source.options
    tz = opts.get("timezone", "Europe/Paris")
    time_steps: dict[str, int] = {}
    if "sites_url" in opts:
        fetched = await fetcher.get(source.id, opts["sites_url"])
        await _consume(sink, fetched, iter(comptage_parse.parse_sites(fetched.content, source=source.id)))
    if "channels_url" in opts:
        fetched = await fetcher.get(source.id, opts["channels_url"])
        await _consume(
            sink,
            fetched,
            _noting_time_steps(
                iter(
                    comptage_parse.parse_channels(
                        fetched.content, source=source.id, default_time_step=opts.get("time_step"), local_timezone=tz
                    )
                ),
                time_steps,
            ),
        )
    fetched = await fetcher.get(source.id, source.url, etag=state.etag, last_modified=state.last_modified)
    outcome = PollOutcome(fetched.status, fetched.etag, fetched.last_modified)
    if fetched.status == 304:
        return outcome
    await _consume(
        sink,
        fetched,
        iter(
            comptage_parse.parse_measures_stream(
                fetched.content,
                source=source.id,
                time_steps=time_steps,
                default_time_step=opts.get("time_step"),
                local_timezone=tz,
                columns=opts.get("columns"),
            )
        ),
    )
    return outcome


def _api_headers(source: SourceConfig) -> dict[str, str]:
    key = source.options.get("api_key")
    return {"Authorization": f"Apikey {key}"} if key else {}


def _cursor(state: SourceState) -> tuple[datetime | None, int]:
    if not state.watermark:
        return None, 0
    saved = json.loads(state.watermark)
    return datetime.fromisoformat(saved["time"]), int(saved.get("seen", 0))


def _cursor_text(watermark: datetime | None, seen: int) -> str | None:
    return None if watermark is None else json.dumps({"time": watermark.isoformat(), "seen": seen})


async def poll_opendatasoft(source: SourceConfig, state: SourceState, fetcher: Fetcher, sink: Sink) -> PollOutcome:
    """Counters page by watermark through `records`; event datasets come whole from
    `exports/json`, so that events no longer listed can be ended. Bodies are parsed as
    they are read and stored batch by batch.

    The watermark moves over records stored or refused for good, never over a record
    dated after the poll's horizon (`now` + the future tolerance): such a record may be
    true later, and in time order every record after it is later still, so the poll
    stops at that page and the next one reads from before it again."""
    opts = source.options
    mapping = opendatasoft_parse.mapping_from_options(opts)
    dataset = opts["dataset"]
    headers = _api_headers(source)
    if isinstance(mapping, opendatasoft_parse.EventMapping):
        url = opendatasoft_parse.exports_url(source.url, dataset)
        fetched = await fetcher.get(source.id, url, headers=headers, error_detail=opendatasoft_parse.parse_ods_error)
        await _consume(
            sink,
            fetched,
            opendatasoft_parse.parse_export_json(fetched.content, mapping, source=source.id, now=sink.now),
        )
        return PollOutcome(fetched.status, snapshot=True)

    watermark, seen = _cursor(state)
    horizon = sink.now + sink.rules.future_tolerance
    if watermark is None and "backfill_days" in opts:
        return await _backfill_counters(source, mapping, fetcher, sink, headers, horizon)
    outcome = PollOutcome()
    for _ in range(MAX_PAGES_PER_POLL):
        url = opendatasoft_parse.records_url(
            source.url,
            dataset,
            time_field=mapping.time_field,
            watermark=watermark,
            seen_at_watermark=seen,
            order_by_id=opts.get("order_by_id", mapping.site_id),
        )
        fetched = await fetcher.get(source.id, url, headers=headers, error_detail=opendatasoft_parse.parse_ods_error)
        outcome.http_status = fetched.status
        page = opendatasoft_parse.parse_records_stream(
            fetched.content, mapping, source=source.id, now=sink.now, not_after=horizon
        )
        await _consume(sink, fetched, page)
        if not sink.result.complete:
            break  # a page cut short moves nothing: the next poll reads it again
        watermark, seen = page.cursor_after(watermark, seen)
        # Progress is kept page by page: a crash resumes after the last stored page.
        outcome.watermark = _cursor_text(watermark, seen)
        await sink.storage.save_watermark(source.id, outcome.watermark)
        if page.held or page.result_count < opendatasoft_parse.MAX_LIMIT:
            break
    return outcome


# A backfill's export is spooled to a temporary file as it arrives, so its size is
# bounded by disk, not memory: the cap (source option `max_body_bytes`) is only a
# safety net against a runaway server. A year of a département's hourly counts is
# a few hundred MB.
BACKFILL_MAX_BYTES = 8 * 1024**3


async def _backfill_counters(
    source: SourceConfig,
    mapping: opendatasoft_parse.CounterMapping,
    fetcher: Fetcher,
    sink: Sink,
    headers: dict[str, str],
    horizon: datetime,
) -> PollOutcome:
    """First poll of a counters dataset: the last `backfill_days` in one streamed export."""
    since = sink.now - timedelta(days=float(source.options["backfill_days"]))
    url = opendatasoft_parse.exports_url(
        source.url,
        source.options["dataset"],
        time_field=mapping.time_field,
        watermark=since,
        order_by_id=source.options.get("order_by_id", mapping.site_id),
    )
    fetched = await fetcher.get(
        source.id,
        url,
        headers=headers,
        error_detail=opendatasoft_parse.parse_ods_error,
        policy=replace(
            fetcher.policy,
            timeout=max(fetcher.policy.timeout, 600),
            max_bytes=int(source.options.get("max_body_bytes", BACKFILL_MAX_BYTES)),
        ),
    )
    items = opendatasoft_parse.parse_export_json(
        fetched.content, mapping, source=source.id, now=sink.now, not_after=horizon
    )
    await _consume(sink, fetched, items)
    return PollOutcome(fetched.status, watermark=_cursor_text(items.watermark, items.at_watermark))


POLLERS: dict[str, Poller] = {
    "datex2": poll_datex2,
    "comptage-mobilites": poll_comptage,
    "opendatasoft": poll_opendatasoft,
}
