"""Parse the national "Comptage des mobilités" CSV files (site, channel, measure).

Schema: schema.data.gouv.fr/etalab/schema-comptage-mobilites-{site,channel,measure}
(Table Schema v0.2.5). Pure functions from bytes (or a stream of byte chunks) to
domain records; nothing here touches the network or the database.

Decisions, so that callers and operators know what happens to a file:

- Encoding: UTF-8, with or without BOM. A line that is not valid UTF-8 is read as
  Windows-1252 when it decodes cleanly that way (a "lying" file: declared or assumed
  UTF-8, written in Latin-1/Windows-1252); `items.notices` says so and a warning is
  logged. A line that is neither is quarantined. Decoding is per line, so a file
  that mixes both (concatenated exports) is read correctly.
- Separator: `,`, `;` or tab, chosen from the header (the one that yields the most
  schema column names).
- Header: the columns the schema marks required (plus `count` for measures: a
  measure file without counts has nothing to say) must be present, or the whole
  file is refused with `ParseError`, raised when the parser is created, before any
  row is read. Column names are matched case-insensitively; `columns` renames a
  source's own header to the national names (e.g. Saint-Étienne's
  `code_pme;horodate;debit`).
- Rows: a row that cannot become a record (wrong number of columns, missing
  required value, unparseable or impossible date, negative/non-finite count,
  undecodable bytes, broken quoting) becomes `Quarantined(reason, excerpt=<the raw
  line>, record_ref="line N")`, N being the physical line where the row starts
  (the header is line 1). Other rows are still yielded. Blank rows are skipped.
- Datetimes without an offset (allowed by no schema example, but common in French
  exports) are read as local time in `local_timezone` (default Europe/Paris); a
  local time that does not exist (spring-forward gap) or is ambiguous (the repeated
  autumn hour) is quarantined, since it cannot be placed on the timeline. Pass
  `local_timezone=None` to quarantine every naive datetime instead.
- `count` is a Table Schema "number": a decimal count is the result of a
  computation (interpolation, averaging) per the schema, so it is rounded and
  marked `quality="estimated"`; `20.0` is an ordinary observed 20. An empty count
  means "no counting" per the schema: kept with `count=None, quality="missing"`.
- Measure length: end - start; when `end_datetime` is empty, the channel's
  `time_step` (from `time_steps`, else `default_time_step`), a day step ending at
  the next local midnight-equivalent so a DST day lasts 23 or 25 hours.
- Channel `time_step`: the schema has no default (it is only required when measures
  lack `end_datetime`), while our ChannelRecord needs one. An empty time_step uses
  `default_time_step` when the caller gives one, otherwise the channel is
  quarantined: a guessed step would silently corrupt coverage figures.
"""

from __future__ import annotations

import codecs
import csv
import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import IO, Any, Generic, TypeVar
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from feed.errors import InputError, ParseError
from feed.model import ChannelRecord, MeasurementRecord, Quality, Quarantined, SiteRecord, VehicleClass

log = logging.getLogger(__name__)

__all__ = [
    "CsvItems",
    "classify_vehicles",
    "parse_channels",
    "parse_measures",
    "parse_measures_stream",
    "parse_sites",
]

SITE_COLUMNS = (
    "site_id",
    "parent_site_id",
    "site_name",
    "fr_insee_code",
    "xlong",
    "ylat",
    "external_ids",
    "infrastructure_type",
)
CHANNEL_COLUMNS = (
    "channel_id",
    "channel_provider_id",
    "site_provider_id",
    "site_id",
    "mobility_type",
    "comment",
    "counter_transmission_type",
    "publication_transmission_type",
    "counter_type",
    "direction",
    "provider_direction_code",
    "provider_direction_name",
    "data_provider_name",
    "temporality",
    "started_at",
    "ended_at",
    "last_updated_at",
    "time_step",
    "provider_portal_url",
)
MEASURE_COLUMNS = ("channel_id", "counter_id", "start_datetime", "end_datetime", "count")

# Columns whose absence refuses the file: `required: true` in the schema
# (+ `count` for measures).
REQUIRED_COLUMNS = {
    "site": ("site_id", "site_name", "xlong", "ylat"),
    "channel": ("channel_id", "site_id", "started_at"),
    "measure": ("channel_id", "start_datetime", "count"),
}
KNOWN_COLUMNS = {"site": SITE_COLUMNS, "channel": CHANNEL_COLUMNS, "measure": MEASURE_COLUMNS}

CHUNK_SIZE = 1 << 16
MAX_LINE = 1 << 20  # a "line" longer than this is cut (and will be quarantined)
MAX_EXCERPT = 500
MAX_COUNT = 2**31 - 1
_INSEE = re.compile(r"^([013-9]\d|2[AB1-9])\d{3}$")

# Mobility types (schema enum, plus labels common in French road counts) by class.
_HEAVY = {"TRUCK", "HGV", "BUS", "COACH", "LORRY", "PL", "POIDS LOURD", "POIDS LOURDS", "HEAVY"}
_LIGHT = {"CAR", "VAN", "MINIBUS", "VL", "VUL", "LIGHT", "VEHICULE LEGER", "VÉHICULE LÉGER"}


class _RowError(InputError, ValueError):
    """One row is refused; the message becomes the Quarantined reason."""


def classify_vehicles(labels: Iterable[str]) -> VehicleClass:
    """heavy if every label is a heavy-vehicle type, light if every one is light, else all."""
    norm = {" ".join(lab.upper().split()) for lab in labels if lab and lab.strip()}
    if norm and norm <= _HEAVY:
        return "heavy"
    if norm and norm <= _LIGHT:
        return "light"
    return "all"


# --------------------------------------------------------------------------- input


def byte_chunks(
    data: bytes | bytearray | memoryview | Iterable[bytes] | IO[bytes], size: int = CHUNK_SIZE
) -> Iterator[bytes]:
    """Bytes, an iterable of byte chunks or a binary file, as chunks: parsers stream all three."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        yield bytes(data)
        return
    read = getattr(data, "read", None)
    if callable(read):
        while chunk := read(size):
            yield bytes(chunk)
        return
    for chunk in data:
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise TypeError(f"expected byte chunks, got {type(chunk).__name__}")
        yield bytes(chunk)


def _split_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Physical lines, each with its b"\\n" (0x0A is never inside a UTF-8 or cp1252 character)."""
    buf = b""
    for chunk in chunks:
        if not chunk:
            continue
        buf = buf + chunk if buf else chunk
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            yield buf[start : nl + 1]
            start = nl + 1
        buf = buf[start:]
        while len(buf) > MAX_LINE:
            yield buf[:MAX_LINE]
            buf = buf[MAX_LINE:]
    if buf:
        yield buf


class _Decoder:
    """Per-line decoding: UTF-8, else Windows-1252 if clean, else marked undecodable."""

    def __init__(self, declared: str | None, source: str) -> None:
        self.source = source
        self.primary = "utf-8"
        if declared:
            try:
                name = codecs.lookup(declared).name
            except LookupError:
                raise ParseError(source, f"unknown declared encoding {declared!r}") from None
            if name in ("cp1252", "iso8859-1", "latin-1", "iso8859-15"):
                self.primary = "cp1252" if name != "iso8859-15" else name
            elif name not in ("utf-8", "utf-8-sig", "ascii"):
                raise ParseError(source, f"unsupported encoding {declared!r} (expected UTF-8 or Windows-1252)")
        self.fallback_lines = 0
        self.notices: list[str] = []

    def decode(self, raw: bytes, line_no: int) -> tuple[str, bool]:
        """(text, ok); not ok means the bytes are neither UTF-8 nor Windows-1252."""
        if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            return raw.decode(self.primary), True
        except UnicodeDecodeError:
            pass
        if self.primary == "utf-8":
            try:
                text = raw.decode("cp1252")
            except UnicodeDecodeError:
                return raw.decode("utf-8", errors="replace"), False
            self.fallback_lines += 1
            if self.fallback_lines == 1:
                msg = (
                    f"line {line_no}: bytes are not UTF-8; read as Windows-1252 "
                    "(the file is UTF-8 only in name: Latin-1/Windows-1252 content)"
                )
                self.notices.append(msg)
                log.warning("%s: %s", self.source, msg)
            return text, True
        return raw.decode(self.primary, errors="replace"), False

    @property
    def encoding(self) -> str:
        if self.primary != "utf-8":
            return self.primary
        return "utf-8+windows-1252" if self.fallback_lines else "utf-8"


# --------------------------------------------------------------------------- reading

T = TypeVar("T")


class CsvItems(Generic[T]):
    """The records of one CSV file, read lazily; the header is checked on creation.

    After (or during) iteration: `encoding` ("utf-8", "utf-8+windows-1252" when some
    lines needed the fallback, or the declared one), `separator`, `columns` (the
    national names, in file order) and `notices` (file-level remarks such as the
    encoding fallback, which are not about any one record).
    """

    def __init__(
        self,
        data: Any,
        *,
        source: str,
        kind: str,
        convert: Callable[[dict[str, str], str], T],
        columns: Mapping[str, str] | None,
        encoding: str | None,
    ) -> None:
        self.source = source
        self.kind = kind
        self._convert = convert
        self._decoder = _Decoder(encoding, source)
        self.notices = self._decoder.notices
        self._raw_lines = _split_lines(byte_chunks(data))
        self._line_no = 0  # physical lines consumed
        self._pending: list[str] = []  # decoded lines of the row being read
        self._pending_bad = False

        header_text = self._header_line()
        self.separator = _detect_separator(header_text, kind, columns)
        try:
            names = next(csv.reader([header_text], delimiter=self.separator, strict=True), [])
        except csv.Error as err:
            raise ParseError(source, f"unreadable header: {err}", 1) from None
        rename = {k.strip().lower(): v for k, v in (columns or {}).items()}
        norm = [_norm_name(n) for n in names]
        norm = [rename.get(n, n) for n in norm]
        while norm and norm[-1] == "":  # "a;b;c;" headers: a trailing separator
            norm.pop()
        dupes = sorted({n for n in norm if n and norm.count(n) > 1})
        if dupes:
            raise ParseError(source, f"duplicate column(s) in header: {', '.join(dupes)}", 1)
        missing = [c for c in REQUIRED_COLUMNS[kind] if c not in norm]
        if missing:
            found = ", ".join(n for n in norm if n) or "(none)"
            raise ParseError(
                source,
                f"not a {kind} file of the Comptage des mobilités schema: missing required "
                f"column(s) {', '.join(missing)}; header has {found}",
                1,
            )
        self.columns = norm
        self._gen = self._rows()

    @property
    def encoding(self) -> str:
        return self._decoder.encoding

    def __iter__(self) -> CsvItems[T]:
        return self

    def __next__(self) -> T | Quarantined:
        return next(self._gen)

    # -- lines

    def _header_line(self) -> str:
        for raw in self._raw_lines:
            self._line_no += 1
            if self._line_no == 1 and raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                raise ParseError(self.source, "file is UTF-16; expected UTF-8 or Windows-1252", 1)
            text, ok = self._decoder.decode(raw, self._line_no)
            if not ok:
                raise ParseError(self.source, "header is neither UTF-8 nor Windows-1252", self._line_no)
            if text.strip():
                return text
        raise ParseError(self.source, "empty file: no header")

    def _text_lines(self) -> Iterator[str]:
        for raw in self._raw_lines:
            self._line_no += 1
            text, ok = self._decoder.decode(raw, self._line_no)
            if not ok:
                self._pending_bad = True
            self._pending.append(text)
            yield text

    # -- rows

    def _rows(self) -> Iterator[T | Quarantined]:
        reader = csv.reader(self._text_lines(), delimiter=self.separator, strict=True)
        width = len(self.columns)
        while True:
            start = self._line_no + 1
            self._pending.clear()
            self._pending_bad = False
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                yield self._quarantine(f"malformed CSV: {err}", start)
                continue
            if not any(cell.strip() for cell in row):
                continue
            if self._pending_bad:
                yield self._quarantine("bytes are neither UTF-8 nor Windows-1252", start)
                continue
            if len(row) > width and not any(c.strip() for c in row[width:]):
                row = row[:width]  # trailing separator(s)
            if len(row) != width:
                yield self._quarantine(f"expected {width} columns, found {len(row)}", start)
                continue
            values = {name: cell.strip() for name, cell in zip(self.columns, row, strict=True) if name}
            try:
                yield self._convert(values, self.separator)
            except (_RowError, ValidationError) as err:
                yield self._quarantine(_reason(err), start)
            except (ValueError, OverflowError, ArithmeticError) as err:
                yield self._quarantine(f"unusable value: {err}", start)

    def _quarantine(self, reason: str, line: int) -> Quarantined:
        excerpt = "".join(self._pending).rstrip("\r\n")
        if len(excerpt) > MAX_EXCERPT:
            excerpt = excerpt[:MAX_EXCERPT] + "…"
        return Quarantined(reason=reason, excerpt=excerpt, record_ref=f"line {line}")


def _norm_name(name: str) -> str:
    return name.strip().strip('"').strip().lower()


def _detect_separator(header: str, kind: str, columns: Mapping[str, str] | None) -> str:
    known = set(KNOWN_COLUMNS[kind]) | {k.strip().lower() for k in (columns or {})}
    best, best_key = ",", (-1, -1)
    for sep in (",", ";", "\t"):
        names = [_norm_name(n) for n in header.split(sep)]
        key = (sum(n in known for n in names), len(names))
        if key > best_key:
            best, best_key = sep, key
    return best


def _reason(err: Exception) -> str:
    if isinstance(err, ValidationError):
        parts = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "record"
            parts.append(f"{loc}: {e['msg']}")
        return "invalid record: " + "; ".join(parts)
    return str(err)


# --------------------------------------------------------------------------- values


def _required(values: Mapping[str, str], name: str) -> str:
    value = values.get(name, "")
    if not value:
        raise _RowError(f"missing required value {name}")
    return value


def _number(text: str, name: str, separator: str) -> float:
    s = text.replace(" ", "").replace("\u00a0", "")
    if separator != "," and s.count(",") == 1 and "." not in s:
        s = s.replace(",", ".")  # French decimal comma in a ;-separated file
    try:
        value = float(s)
    except ValueError:
        raise _RowError(f"{name} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise _RowError(f"{name} {text!r} is not a finite number")
    return value


def _zone(name: str | None) -> ZoneInfo | None:
    return ZoneInfo(name) if name else None


def parse_datetime(text: str, name: str, local: ZoneInfo | None) -> datetime:
    """An ISO 8601 date-time; a naive one is local time in `local` (None: refused)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise _RowError(f"{name} {text!r} is not an ISO 8601 date-time") from None
    if value.tzinfo is not None:
        return value
    if local is None:
        raise _RowError(f"{name} {text!r} has no UTC offset")
    return _localize(value, local, name, text)


def _localize(naive: datetime, zone: ZoneInfo, name: str, text: str) -> datetime:
    aware = naive.replace(tzinfo=zone)
    back = aware.astimezone(UTC).astimezone(zone)
    if back.replace(tzinfo=None) != naive:
        raise _RowError(f"{name} {text!r} does not exist in {zone.key} (skipped hour at a DST change)")
    if aware.replace(fold=1).utcoffset() != aware.utcoffset():
        raise _RowError(f"{name} {text!r} is ambiguous in {zone.key} (repeated hour at a DST change)")
    return aware


def _seconds(delta: timedelta, what: str) -> int:
    seconds = delta.total_seconds()
    if seconds != int(seconds):
        raise _RowError(f"{what} is not a whole number of seconds")
    return int(seconds)


def _time_step(text: str, separator: str) -> int:
    value = _number(text, "time_step", separator)
    if value != int(value) or value <= 0:
        raise _RowError(f"time_step {text!r} is not a positive whole number of seconds")
    return int(value)


def _count(text: str, separator: str) -> tuple[int | None, bool]:
    """(count, estimated)."""
    if not text:
        return None, False
    value = _number(text, "count", separator)
    if value < 0:
        raise _RowError(f"negative count {text}")
    if value > MAX_COUNT:
        raise _RowError(f"count {text} is out of range")
    rounded = round(value)
    return int(rounded), rounded != value


# --------------------------------------------------------------------------- sites


def _site(values: dict[str, str], separator: str) -> SiteRecord:
    site_id = _required(values, "site_id")
    name = _required(values, "site_name")
    lon = _number(_required(values, "xlong"), "xlong", separator)
    lat = _number(_required(values, "ylat"), "ylat", separator)
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise _RowError(f"xlong/ylat {lon}, {lat} is not a WGS 84 lon/lat position")
    insee = values.get("fr_insee_code") or None
    if insee is not None:
        if re.fullmatch(r"\d{4}", insee):
            insee = "0" + insee  # a leading zero lost by a spreadsheet
        if not _INSEE.match(insee):
            raise _RowError(f"fr_insee_code {values['fr_insee_code']!r} is not an INSEE commune code")
    metadata: dict[str, Any] = {}
    if values.get("parent_site_id"):
        metadata["parent_site_id"] = values["parent_site_id"]
    if values.get("external_ids"):
        metadata["external_ids"] = [v.strip() for v in values["external_ids"].split(",") if v.strip()]
    if values.get("infrastructure_type"):
        metadata["infrastructure_type"] = values["infrastructure_type"]
    for key, value in values.items():  # columns outside the schema are kept, not lost
        if key not in SITE_COLUMNS and value:
            metadata[key] = value
    return SiteRecord(external_id=site_id, name=name, insee=insee, lon=lon, lat=lat, metadata=metadata)


def parse_sites(
    data: bytes | Iterable[bytes] | IO[bytes],
    *,
    source: str,
    columns: Mapping[str, str] | None = None,
    encoding: str | None = None,
) -> CsvItems[SiteRecord]:
    """Sites of a `site` file. Raises ParseError at once if the header is unusable."""
    return CsvItems(data, source=source, kind="site", convert=_site, columns=columns, encoding=encoding)


# --------------------------------------------------------------------------- channels


def _channel_converter(
    default_time_step: int | None, local: ZoneInfo | None
) -> Callable[[dict[str, str], str], ChannelRecord]:
    def convert(values: dict[str, str], separator: str) -> ChannelRecord:
        channel_id = _required(values, "channel_id")
        site_id = _required(values, "site_id")
        parse_datetime(_required(values, "started_at"), "started_at", local)
        for name in ("ended_at", "last_updated_at"):
            if values.get(name):
                parse_datetime(values[name], name, local)
        types = [t.strip() for t in values.get("mobility_type", "").split(",") if t.strip()]
        mobility = " ".join(types[0].lower().split()) if types else "undefined"
        direction = (
            values.get("direction")
            or values.get("provider_direction_code")
            or values.get("provider_direction_name")
            or None
        )
        if values.get("time_step"):
            step = _time_step(values["time_step"], separator)
        elif default_time_step is not None:
            step = default_time_step
        else:
            raise _RowError("time_step is empty and no default_time_step was given (the schema has no default step)")
        return ChannelRecord(
            site_external_id=site_id,
            external_id=channel_id,
            direction=direction,
            direction_name=values.get("provider_direction_name") or None,
            vehicle_class=classify_vehicles(types),
            mobility_type=mobility,
            time_step=step,
        )

    return convert


def parse_channels(
    data: bytes | Iterable[bytes] | IO[bytes],
    *,
    source: str,
    default_time_step: int | None = None,
    local_timezone: str | None = "Europe/Paris",
    columns: Mapping[str, str] | None = None,
    encoding: str | None = None,
) -> CsvItems[ChannelRecord]:
    """Channels of a `channel` file. Raises ParseError at once if the header is unusable.

    mobility_type: the first listed type, lower-cased ("E-SCOOTER,PEDESTRIAN" →
    "e-scooter"; empty → "undefined"); vehicle_class from all listed types.
    direction: the compass `direction`, else `provider_direction_code`, else
    `provider_direction_name`; direction_name: `provider_direction_name`.
    """
    convert = _channel_converter(default_time_step, _zone(local_timezone))
    return CsvItems(data, source=source, kind="channel", convert=convert, columns=columns, encoding=encoding)


# --------------------------------------------------------------------------- measures


def _end_from_step(start: datetime, step: int, local: ZoneInfo | None) -> datetime:
    """start + step; a day step on a local-time series ends at the same wall time next day."""
    if step == 86400 and local is not None and start.utcoffset() == start.astimezone(local).utcoffset():
        wall = start.astimezone(local).replace(tzinfo=None) + timedelta(days=1)
        end = wall.replace(tzinfo=local)
        if end.astimezone(UTC).astimezone(local).replace(tzinfo=None) == wall:
            return end
    return start + timedelta(seconds=step)


def _measure_converter(
    time_steps: Mapping[str, int] | None, default_time_step: int | None, local: ZoneInfo | None
) -> Callable[[dict[str, str], str], MeasurementRecord]:
    steps = time_steps or {}

    def convert(values: dict[str, str], separator: str) -> MeasurementRecord:
        channel_id = _required(values, "channel_id")
        start = parse_datetime(_required(values, "start_datetime"), "start_datetime", local)
        if values.get("end_datetime"):
            end = parse_datetime(values["end_datetime"], "end_datetime", local)
        else:
            step = steps.get(channel_id, default_time_step)
            if step is None:
                raise _RowError(f"end_datetime is empty and the time_step of channel {channel_id!r} is unknown")
            end = _end_from_step(start, step, local)
        length = _seconds(end - start, "end_datetime - start_datetime")
        if length <= 0:
            raise _RowError(f"end_datetime {end.isoformat()} is not after start_datetime {start.isoformat()}")
        count, estimated = _count(values.get("count", ""), separator)
        quality: Quality = "missing" if count is None else "estimated" if estimated else "observed"
        return MeasurementRecord(
            channel_external_id=channel_id, start=start, length=length, count=count, quality=quality
        )

    return convert


def parse_measures_stream(
    data: bytes | Iterable[bytes] | IO[bytes],
    *,
    source: str,
    time_steps: Mapping[str, int] | None = None,
    default_time_step: int | None = None,
    local_timezone: str | None = "Europe/Paris",
    columns: Mapping[str, str] | None = None,
    encoding: str | None = None,
) -> CsvItems[MeasurementRecord]:
    """Measures from bytes, an iterable of byte chunks or a binary file, one row at a time.

    `time_steps` (channel id → seconds) gives the length of rows without
    end_datetime; `default_time_step` covers channels missing from it.
    """
    convert = _measure_converter(time_steps, default_time_step, _zone(local_timezone))
    return CsvItems(data, source=source, kind="measure", convert=convert, columns=columns, encoding=encoding)


def parse_measures(
    data: bytes,
    *,
    source: str,
    time_steps: Mapping[str, int] | None = None,
    default_time_step: int | None = None,
    local_timezone: str | None = "Europe/Paris",
    columns: Mapping[str, str] | None = None,
    encoding: str | None = None,
) -> CsvItems[MeasurementRecord]:
    """Measures of a `measure` file. Raises ParseError at once if the header is unusable."""
    return parse_measures_stream(
        data,
        source=source,
        time_steps=time_steps,
        default_time_step=default_time_step,
        local_timezone=local_timezone,
        columns=columns,
        encoding=encoding,
    )
