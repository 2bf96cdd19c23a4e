"""The yearly bulk files of the history API under /api/v1/downloads: their index,
the data dictionary, and each year's tables streamed as CSV or Parquet from one
read-only transaction (feed.store.downloads reads and writes them).

Each download holds a database connection while it streams, so only a share of
the pool's connections serve downloads at once; a download that waits too long
for one is a 503.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import asyncpg
from aiohttp import web
from multidict import CIMultiDict

from feed.errors import NotFound, PublishError, Unavailable
from feed.http import params
from feed.http.documents import (
    API,
    LIVE_CACHE,
    VALIDATION_METHOD,
    annual_method,
    api_document,
    method_document,
    respond_json,
)
from feed.http.responses import CORS_HEADERS, etag_matches, negotiate_encoding
from feed.store import downloads, history, yearly_files
from feed.store.transactions import reading
from feed.store.yearly_files import MEDIA_TYPES

if TYPE_CHECKING:
    from feed.http.context import AppContext

log = logging.getLogger("roadfeed.api")

DOWNLOAD_SLOTS_SHARE = 4  # at most pool size / this many downloads at once (each holds a connection)
DOWNLOAD_WAIT = 30.0  # seconds a download waits for a slot before a 503


class _StreamBroken(PublishError):
    """A download failed after its headers were sent."""


class Downloads:
    """The handlers of /api/v1/downloads (feed.http.api registers them)."""

    def __init__(self, ctx: AppContext) -> None:
        self.config = ctx.config
        self.tz = ZoneInfo(ctx.config.publication.timezone)
        self.pool = ctx.storage.pool
        self.statement_timeout_ms = ctx.config.database.statement_timeout_ms
        slots = max(1, ctx.storage.pool.get_max_size() // DOWNLOAD_SLOTS_SHARE)
        self.download_slots = asyncio.Semaphore(slots)

    async def index(self, request: web.Request) -> web.StreamResponse:
        async with reading(self.pool, self.statement_timeout_ms) as conn:
            years = await history.data_years(conn, self.config.publication.timezone)
        return respond_json(
            request,
            api_document(
                self.config,
                {
                    "years": [
                        {
                            "year": y,
                            "files": {name: f"{API}/downloads/{y}/{name}" for name in yearly_files.file_names()},
                        }
                        for y in years
                    ],
                    "dictionary": f"{API}/downloads/{yearly_files.DICTIONARY}",
                    "publisher": self.config.publication.publisher,
                },
            ),
            cache_control=LIVE_CACHE,
        )

    def _dictionary(self) -> dict[str, Any]:
        extra = {**VALIDATION_METHOD, **annual_method(self.config)}
        dictionary = yearly_files.dictionary(self.config.publication, method_document(self.config, **extra))
        return api_document(self.config, dictionary, **extra)

    async def dictionary(self, request: web.Request) -> web.StreamResponse:
        return respond_json(request, self._dictionary())

    async def download(self, request: web.Request) -> web.StreamResponse:
        raw_year, name = request.match_info["year"], request.match_info["name"]
        expected_year = "a year listed by /api/v1/downloads"
        if not params.YEAR_PATTERN.match(raw_year):
            raise NotFound("year", raw_year, expected_year, f"no year {raw_year!r}")
        year = int(raw_year)
        if name == yearly_files.DICTIONARY:
            return await self.dictionary(request)
        parsed = yearly_files.parse_file_name(name)
        if parsed is None:
            raise NotFound("name", name, f"one of: {', '.join(yearly_files.file_names())}", f"no file {name!r}")
        table, fmt = parsed
        try:
            await asyncio.wait_for(self.download_slots.acquire(), DOWNLOAD_WAIT)
        except TimeoutError:
            raise Unavailable("busy", "every download slot is in use; retry shortly", retry_after=30) from None
        try:
            return await self._download(request, year, table, fmt)
        finally:
            self.download_slots.release()

    async def _download(
        self, request: web.Request, year: int, table: yearly_files.Table, fmt: yearly_files.Format
    ) -> web.StreamResponse:
        timezone = self.config.publication.timezone
        async with reading(self.pool, self.statement_timeout_ms, bulk_timezone=timezone) as conn:
            if year not in await history.data_years(conn, timezone):
                raise NotFound("year", str(year), "a year listed by /api/v1/downloads", f"no data for {year}")
            data = await downloads.year_data(conn, year, timezone, table)
            tag = downloads.etag_tag(
                data, table, fmt, self.config.database.retention_days, datetime.now(self.tz).date()
            )
            coding = "identity"
            if fmt == "csv":
                coding = negotiate_encoding(request.headers.get("Accept-Encoding"), ("gzip",))
            headers = CIMultiDict(CORS_HEADERS)
            headers["ETag"] = f'"{tag}"' if coding == "identity" else f'"{tag}-{coding}"'
            headers["Cache-Control"] = "public, max-age=300"
            headers["Vary"] = "Accept-Encoding"
            if_none_match = request.headers.get("If-None-Match")
            if if_none_match is not None and etag_matches(if_none_match, tag):
                return web.Response(status=304, headers=headers)
            headers["Content-Type"] = MEDIA_TYPES[fmt]
            headers["Content-Disposition"] = f'attachment; filename="roadfeed_{year}_{table.name}.{fmt}"'
            if request.method == "HEAD":
                return web.Response(headers=headers)
            response = web.StreamResponse(headers=headers)
            if coding == "gzip":
                response.enable_compression(web.ContentCoding.gzip)
            await response.prepare(request)
            try:
                await self._stream(conn, data, table, fmt, response)
            except Exception as exc:
                # Too late for an error document: cut the connection so the client
                # sees a truncated body (chunked transfer without its last chunk).
                log.warning("download %s/%s.%s failed: %s: %s", year, table.name, fmt, type(exc).__name__, exc)
                raise _StreamBroken from exc
        await response.write_eof()
        return response

    async def _stream(
        self,
        conn: asyncpg.Connection,
        data: downloads.YearData,
        table: yearly_files.Table,
        fmt: yearly_files.Format,
        response: web.StreamResponse,
    ) -> None:
        year = data.year
        if fmt == "csv":
            await downloads.stream_csv(conn, data, table, response.write)
        else:
            metadata = {
                "licence": self.config.publication.licence,
                "licence_url": self.config.publication.licence_url,
                "publisher": self.config.publication.publisher,
                "year": str(year),
                "aggregation_version": history.AGGREGATION_VERSION,
                "format_version": yearly_files.FORMAT_VERSION,
                "dictionary": f"{API}/downloads/{yearly_files.DICTIONARY}",
            }
            await downloads.stream_parquet(conn, data, table, response.write, metadata)
