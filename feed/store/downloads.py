"""Bulk files per year (hourly, daily, events, sites; CSV and Parquet) and the data dictionary.

A file is never built whole: rows are read in batches of channels (or events)
in the file's order, each batch a `COPY (SELECT ...) TO STDOUT` of at most
about `BATCH_ROWS` rows. CSV batches go to the client as PostgreSQL wrote them;
Parquet batches are parsed by Arrow's CSV reader and written as row groups
through a `ParquetWriter` over a sink that hands its bytes to the response. So
memory stays flat (one batch) and each statement stays short, however slow the
client: `statement_timeout` bounds every batch, not the whole download.

Every batch reads the same snapshot (one REPEATABLE READ transaction), whose
ETag is computed first from cheap markers of the year's data (see `YearData`).

The files' tables, columns and names are in feed.store.yearly_files.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from feed.store.history import AGGREGATION_VERSION, EVENT_SPAN_END, EVENT_SPAN_START, day_seconds_sql, local_midnight
from feed.store.yearly_files import (
    DAILY_COLUMNS,
    EVENT_COLUMNS,
    FORMAT_VERSION,
    HOURLY_COLUMNS,
    PARQUET_COMPRESSION,
    SITE_COLUMNS,
    Column,
    Format,
    Table,
    neutralised_sql,
    sql_literal,
)

BATCH_ROWS = 50_000  # rows per COPY statement (and at least per Parquet row group)

Write = Callable[[bytes], Awaitable[Any]]


# --------------------------------------------------------------------------- what a year holds


@dataclass
class YearData:
    """A year's bounds and the cheap markers its ETags derive from.

    Counts: per channel, the number of rollup days, their total and the newest
    row version (`xmin`) of the year's daily rollup. Every ingest that changes a
    measurement rewrites the daily rollup rows of the days it touched (in the
    same transaction as the hourly rollup), so any change to the year's hourly
    or daily values changes this marker. Sites and channels: their count, last
    update and a digest. Events: the number and the last `seq` of the versions
    of the year's events. Raw-data retention removes hourly channels' hours
    without touching rollups, so the hourly file's ETag also carries the
    retention horizon while it lies in the year.
    """

    year: int
    timezone: str
    channels: list[asyncpg.Record] = field(default_factory=list)  # id, site_id, time_step, days
    counts_marker: str = ""
    sites_marker: str = ""
    events_marker: str = ""
    event_ids: list[tuple[str, int]] = field(default_factory=list)  # (id, versions)

    @property
    def first_day(self) -> date:
        return date(self.year, 1, 1)

    @property
    def end_day(self) -> date:
        return date(self.year + 1, 1, 1)

    @property
    def start(self) -> datetime:
        return local_midnight(self.first_day, ZoneInfo(self.timezone))

    @property
    def end(self) -> datetime:
        return local_midnight(self.end_day, ZoneInfo(self.timezone))


_CHANNEL_DAYS = """
SELECT c.id, c.site_id, c.time_step, d.days, d.newest, d.total
  FROM (SELECT channel_id, count(*)::integer AS days, max(xmin::text::bigint) AS newest,
               sum(count_sum)::bigint AS total
          FROM rollup_daily WHERE day >= $1 AND day < $2 GROUP BY channel_id) d
  JOIN channels c ON c.id = d.channel_id
 ORDER BY c.site_id, c.id"""

_SITES_MARKER = """
SELECT (SELECT count(*) || ':' || coalesce(max(updated)::text, '') FROM sites) || '/'
       || (SELECT md5(coalesce(string_agg(c::text, ';' ORDER BY c.id), '')) FROM channels c)"""

_YEAR_EVENTS = f"""
SELECT e.id, count(v.version)::integer AS versions, max(v.seq) AS seq
  FROM events e JOIN event_versions v ON v.event_id = e.id
 WHERE {EVENT_SPAN_END} > $1 AND {EVENT_SPAN_START} < $2
 GROUP BY e.id ORDER BY e.id"""


async def year_data(conn: asyncpg.Connection, year: int, timezone: str, table: Table | None) -> YearData:
    """What the ETag of `table` (all tables when None) needs, read in the caller's snapshot."""
    data = YearData(year, timezone)
    if table is None or table.name != "events":
        data.channels = list(await conn.fetch(_CHANNEL_DAYS, data.first_day, data.end_day))
        digest = hashlib.blake2b(digest_size=16)
        for r in data.channels:
            digest.update(f"{r['id']}:{r['days']}:{r['newest']}:{r['total']};".encode())
        data.counts_marker = digest.hexdigest()
        data.sites_marker = await conn.fetchval(_SITES_MARKER)
    if table is None or table.name == "events":
        rows = await conn.fetch(_YEAR_EVENTS, data.start, data.end)
        data.event_ids = [(r["id"], r["versions"]) for r in rows]
        versions = sum(r["versions"] for r in rows)
        data.events_marker = f"{len(rows)}:{versions}:{max((r['seq'] for r in rows), default=0)}"
    return data


def etag_tag(data: YearData, table: Table, fmt: Format, retention_days: int | None, today: date) -> str:
    """The opaque part of the file's strong ETag."""
    parts = [FORMAT_VERSION, AGGREGATION_VERSION, data.timezone, str(data.year), table.name, fmt]
    if table.name == "events":
        parts.append(data.events_marker)
    else:
        parts += [data.counts_marker, data.sites_marker]
    if table.name == "hourly" and retention_days is not None:
        horizon = today - timedelta(days=retention_days)
        if data.first_day <= horizon <= data.end_day + timedelta(days=7):
            parts.append(f"retention:{horizon.isoformat()}")
    return hashlib.blake2b("|".join(parts).encode(), digest_size=16).hexdigest()


# --------------------------------------------------------------------------- batches


def _select(columns: Sequence[Column], csv: bool) -> str:
    def expr(c: Column) -> str:
        sql = f"k.{c.name}" if c.keyed else (c.csv_sql if csv else c.parquet_sql) or c.sql
        return neutralised_sql(sql) if csv and c.text and not c.keyed else sql

    return ", ".join(f"{expr(c)} AS {c.name}" for c in columns)


def _keys(columns: Sequence[Column], channel_ids: Sequence[int], csv: bool) -> str:
    """The per-channel columns of a batch, computed once per channel (MATERIALIZED keeps
    the planner from re-evaluating them, formula guard included, on every row)."""
    keyed = ", ".join(
        (neutralised_sql(c.sql) if csv and c.text else c.sql) + f" AS {c.name}" for c in columns if c.keyed
    )
    return f"""WITH k AS MATERIALIZED (
    SELECT c.time_step, {keyed}
      FROM channels c JOIN sites s ON s.id = c.site_id
     WHERE c.id = ANY({sql_literal(list(channel_ids))}))"""


def _channel_batches(
    channels: Sequence[asyncpg.Record], rows_per_day: Callable[[asyncpg.Record], int]
) -> list[list[asyncpg.Record]]:
    """Consecutive channels (file order) grouped into batches of about BATCH_ROWS rows."""
    batches: list[list[asyncpg.Record]] = []
    current: list[asyncpg.Record] = []
    rows = 0
    for c in channels:
        n = c["days"] * rows_per_day(c)
        if n == 0:
            continue
        if current and rows + n > BATCH_ROWS:
            batches.append(current)
            current, rows = [], 0
        current.append(c)
        rows += n
    if current:
        batches.append(current)
    return batches


def _hourly_batches(data: YearData, csv: bool) -> list[str]:
    select = _select(HOURLY_COLUMNS, csv)
    lo, hi = sql_literal(data.start), sql_literal(data.end)
    out = []

    def hours(c: asyncpg.Record) -> int:  # rows per day; channels coarser than an hour have none
        return 24 if c["time_step"] <= 3600 else 0

    for batch in _channel_batches(data.channels, hours):
        sub = [c["id"] for c in batch if c["time_step"] < 3600]
        hourly = [c["id"] for c in batch if c["time_step"] == 3600]
        out.append(f"""{_keys(HOURLY_COLUMNS, sub + hourly, csv)}
SELECT {select}
  FROM (SELECT channel_id, bucket, count_sum, speed_weighted_sum, speed_count, intervals_present,
               intervals_estimated, intervals_expected
          FROM rollup_hourly
         WHERE channel_id = ANY({sql_literal(sub)}) AND bucket >= {lo} AND bucket < {hi}
        UNION ALL
        SELECT m.channel_id, date_trunc('hour', m.start, 'UTC'),
               CASE WHEN q.ok THEN m.count ELSE 0 END,
               CASE WHEN q.ok AND m.speed IS NOT NULL THEN m.speed::float8 * m.count ELSE 0 END,
               CASE WHEN q.ok AND m.speed IS NOT NULL THEN m.count ELSE 0 END,
               q.ok::integer, (q.ok AND m.quality = 'estimated')::integer, 1
          FROM measurements m
         CROSS JOIN LATERAL (SELECT m.count IS NOT NULL AND m.quality IN ('observed', 'estimated')
                                           AND m.validation IS NULL AS ok) q
         WHERE m.channel_id = ANY({sql_literal(hourly)}) AND m.start >= {lo} AND m.start < {hi}) r
  JOIN k ON k.channel_id = r.channel_id
 ORDER BY k.site_id, k.channel_id, r.bucket""")
    return out


def _daily_batches(data: YearData, csv: bool) -> list[str]:
    select = _select(DAILY_COLUMNS, csv).replace("{day_seconds}", day_seconds_sql([data.year], data.timezone, "r.day"))
    out = []
    for batch in _channel_batches(data.channels, lambda c: 1):
        ids = [c["id"] for c in batch]
        out.append(f"""{_keys(DAILY_COLUMNS, ids, csv)}
SELECT {select}
  FROM rollup_daily r
  JOIN k ON k.channel_id = r.channel_id
 WHERE r.channel_id = ANY({sql_literal(ids)})
   AND r.day >= {sql_literal(data.first_day)} AND r.day < {sql_literal(data.end_day)}
 ORDER BY k.site_id, k.channel_id, r.day""")
    return out


def _event_batches(data: YearData, csv: bool) -> list[str]:
    select = _select(EVENT_COLUMNS, csv)
    batches: list[list[str]] = []
    current: list[str] = []
    rows = 0
    for event_id, versions in data.event_ids:
        if current and rows + versions > BATCH_ROWS:
            batches.append(current)
            current, rows = [], 0
        current.append(event_id)
        rows += versions
    if current:
        batches.append(current)
    return [
        f"""
SELECT {select}
  FROM event_versions v
 WHERE v.event_id = ANY({sql_literal(batch)})
 ORDER BY v.event_id, v.version"""
        for batch in batches
    ]


def _site_batches(data: YearData, csv: bool) -> list[str]:
    if not data.channels:
        return []
    ids = [c["id"] for c in data.channels]
    days = [c["days"] for c in data.channels]
    return [
        f"""
SELECT {_select(SITE_COLUMNS, csv)}
  FROM unnest({sql_literal(ids)}, {sql_literal(days)}) AS d(channel_id, days)
  JOIN channels c ON c.id = d.channel_id
  JOIN sites s ON s.id = c.site_id
 ORDER BY c.site_id, c.id"""
    ]


_BATCHES = {"hourly": _hourly_batches, "daily": _daily_batches, "events": _event_batches, "sites": _site_batches}


def batch_queries(data: YearData, table: Table, fmt: Format) -> list[str]:
    return _BATCHES[table.name](data, fmt == "csv")


# --------------------------------------------------------------------------- streaming


async def _copy(conn: asyncpg.Connection, query: str) -> bytes:
    """One batch as CSV (no header), read whole so the statement ends before the client is served."""
    chunks: list[bytes] = []

    async def collect(chunk: bytes) -> None:
        chunks.append(chunk)

    await conn.copy_from_query(query, output=collect, format="csv")
    return b"".join(chunks)


def csv_header(table: Table) -> bytes:
    return (",".join(c.name for c in table.columns) + "\n").encode()


async def stream_csv(conn: asyncpg.Connection, data: YearData, table: Table, write: Write) -> int:
    """Writes the header and every batch; returns the number of bytes."""
    header = csv_header(table)
    await write(header)
    size = len(header)
    for query in batch_queries(data, table, "csv"):
        chunk = await _copy(conn, query)
        if chunk:
            await write(chunk)
            size += len(chunk)
    return size


class _Sink(io.RawIOBase):
    """A write-only file for ParquetWriter that keeps bytes until `take()`."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._buffer += b
        self._position += len(b)
        return len(b)

    def tell(self) -> int:
        return self._position

    def take(self) -> bytes:
        out = bytes(self._buffer)
        self._buffer.clear()
        return out


def geo_metadata(table: Table) -> dict[str, str]:
    """GeoParquet 1.1 file metadata for the table's geometry columns (none: empty)."""
    columns = {
        c.name: {"encoding": "WKB", "geometry_types": list(c.geometry_types)}
        for c in table.columns
        if c.type == "geometry"
    }
    if not columns:
        return {}
    # No "crs": GeoParquet's default, OGC:CRS84, is WGS 84 in lon/lat order.
    return {"geo": json.dumps({"version": "1.1.0", "primary_column": next(iter(columns)), "columns": columns})}


def arrow_schema(table: Table, timezone: str, metadata: dict[str, str] | None = None) -> pa.Schema:
    return pa.schema(
        [pa.field(c.name, c.arrow_type(timezone)) for c in table.columns],
        metadata={**(metadata or {}), **geo_metadata(table)},
    )


def _csv_type(field: pa.Field) -> pa.DataType:
    if pa.types.is_timestamp(field.type):
        return pa.timestamp("s", tz="UTC")
    return pa.string() if pa.types.is_binary(field.type) else field.type  # bytea comes as \x<hex>


def _parse_batch(chunk: bytes, schema: pa.Schema) -> pa.Table:
    parsed = pa_csv.read_csv(
        io.BytesIO(chunk),
        read_options=pa_csv.ReadOptions(column_names=schema.names, block_size=1 << 22),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(
            column_types={f.name: _csv_type(f) for f in schema},
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )
    for i, column in enumerate(schema):
        if pa.types.is_binary(column.type):
            hex_cells = parsed.column(i).to_pylist()
            parsed = parsed.set_column(
                i,
                column.name,
                pa.array([None if h is None else bytes.fromhex(h.removeprefix("\\x")) for h in hex_cells], pa.binary()),
            )
    return parsed.cast(schema)


async def stream_parquet(
    conn: asyncpg.Connection, data: YearData, table: Table, write: Write, metadata: dict[str, str]
) -> int:
    """Row groups of at least BATCH_ROWS rows (except the last), each sent once written.

    Parsing and writing run in one worker thread of this download, in order, so a
    cancelled request (client gone) never closes the writer under a running write.
    """
    schema = arrow_schema(table, data.timezone, metadata)
    sink = _Sink()
    writer = pq.ParquetWriter(sink, schema, compression=PARQUET_COMPRESSION)
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet")
    loop = asyncio.get_running_loop()
    size = 0
    pending: list[pa.Table] = []
    pending_rows = 0

    def flush(tables: list[pa.Table]) -> bytes:
        writer.write_table(pa.concat_tables(tables), row_group_size=max(BATCH_ROWS * 2, 1))
        return sink.take()

    def finish() -> bytes:
        writer.close()
        return sink.take()

    try:
        for query in batch_queries(data, table, "parquet"):
            chunk = await _copy(conn, query)
            if not chunk:
                continue
            batch = await loop.run_in_executor(worker, _parse_batch, chunk, schema)
            pending.append(batch)
            pending_rows += batch.num_rows
            if pending_rows >= BATCH_ROWS:
                out = await loop.run_in_executor(worker, flush, pending)
                pending, pending_rows = [], 0
                await write(out)
                size += len(out)
        if pending:
            out = await loop.run_in_executor(worker, flush, pending)
            await write(out)
            size += len(out)
        tail = await loop.run_in_executor(worker, finish)
    finally:
        worker.submit(writer.close)  # after any write still running; closing twice is harmless
        worker.shutdown(wait=False)
    await write(tail)
    return size + len(tail)
