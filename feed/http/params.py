"""The query parameters of /api/v1, parsed and checked: every refusal is a 400 in
the live feeds' shape, naming the parameter, the value and what was expected.
Lists are paged with opaque cursors (keyset on the id, so a walk sees every item
exactly once); instants are dates, months, years or date-times in local time,
and a site's counts cover whole periods of its step, within a bounded range.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from multidict import MultiMapping

from exporters import geojson
from feed.errors import BadParameter
from feed.http.documents import iso
from feed.publish.filters import BBOX_EXPECTED, unstorable
from feed.store import history
from feed.store.history import Step

# A site's counts: at most this many periods per request (one row per period).
MAX_PERIODS: dict[Step, int] = {"hour": 93 * 24, "day": 3 * 365 + 1, "month": 30 * 12, "year": 30}
MAX_RANGE_TEXT: dict[Step, str] = {"hour": "93 days", "day": "3 years", "month": "30 years", "year": "30 years"}
DEFAULT_PERIODS: dict[Step, int] = {"hour": 48, "day": 31, "month": 12, "year": 10}
YEARS = (1900, 2199)  # accepted years in dates and /annual
SITES_LIMIT = (100, 1000)  # default, maximum
EVENTS_LIMIT = (50, 500)


def bad(parameter: str, value: str, expected: str, detail: str) -> BadParameter:
    return BadParameter(parameter, value, expected, detail)


# --------------------------------------------------------------------------- query parameters


def one(query: MultiMapping[str], name: str) -> str | None:
    values = query.getall(name, [])
    if len(values) > 1:
        raise bad(name, "&".join(values), "the parameter once", f"{name} is given {len(values)} times; give it once")
    if not values:
        return None
    value = values[0].strip()
    _no_nul(name, value)
    return value or None


def _no_nul(name: str, raw: str) -> None:
    """PostgreSQL text cannot hold NUL: refuse it here rather than fail in the query."""
    if "\0" in raw:
        raise bad(name, raw.replace("\0", "\\0"), "text without NUL characters", f"{name} contains a NUL character")


def choice(query: MultiMapping[str], name: str, allowed: Sequence[str], default: str) -> str:
    raw = one(query, name)
    if raw is None:
        return default
    if raw not in allowed:
        raise bad(name, raw, f"one of: {', '.join(allowed)}", f"unknown {name} {raw!r}")
    return raw


def comma_list(query: MultiMapping[str], name: str, allowed: Sequence[str] | None = None) -> list[str] | None:
    raws = query.getall(name, [])
    if not raws:
        return None
    expected = f"a comma-separated list of: {', '.join(allowed)}" if allowed else "a comma-separated list"
    chosen: list[str] = []
    for raw in raws:
        _no_nul(name, raw)
        for item in (part.strip() for part in raw.split(",")):
            if not item:
                raise bad(name, raw, expected, f"{name} has an empty value in {raw!r}")
            if allowed is not None and item not in allowed:
                raise bad(name, raw, expected, f"unknown {name} {item!r}")
            if item not in chosen:
                chosen.append(item)
    return chosen


def integer(query: MultiMapping[str], name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = one(query, name)
    if raw is None:
        return default
    expected = f"an integer from {lo} to {hi}"
    try:
        value = int(raw)
    except ValueError:
        raise bad(name, raw, expected, f"{name} {raw!r} is not an integer") from None
    if not lo <= value <= hi:
        raise bad(name, raw, expected, f"{name} {value} is outside [{lo}, {hi}]")
    return value


def limit(query: MultiMapping[str], bounds: tuple[int, int]) -> int:
    value = integer(query, "limit", bounds[0], 1, bounds[1])
    assert value is not None
    return value


def bbox(query: MultiMapping[str]) -> tuple[float, float, float, float] | None:
    raw = one(query, "bbox")
    if raw is None:
        return None
    try:
        return geojson.parse_bbox(raw)
    except ValueError as exc:
        raise bad("bbox", raw, BBOX_EXPECTED, str(exc)) from None


def encode_cursor(kind: str, after: int | str) -> str:
    raw = json.dumps([kind, after], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(query: MultiMapping[str], kind: str) -> Any:
    raw = one(query, "cursor")
    if raw is None:
        return None
    expected = "the next_cursor of a previous page of this list"
    try:
        decoded = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        found, after = decoded
    except (binascii.Error, ValueError, TypeError):
        raise bad("cursor", raw, expected, "cursor is not one this API issued") from None
    if found != kind or not isinstance(after, int | str) or isinstance(after, bool):
        raise bad("cursor", raw, expected, f"cursor belongs to another list than {kind}")
    # Forged cursors: what is inside goes to the database, so it must be something it can hold.
    if isinstance(after, int) and not -(2**31) <= after < 2**31:
        raise bad("cursor", raw, expected, "cursor is not one this API issued (its position is out of range)")
    if isinstance(after, str) and unstorable(after):
        raise bad("cursor", raw, expected, f"cursor is not one this API issued (it {unstorable(after)})")
    return after


_MONTH = re.compile(r"^\d{4}-\d{2}$")
YEAR_PATTERN = re.compile(r"^\d{4}$")
INSTANT_EXPECTED = (
    "a date (2025-07-01), a month (2025-07), a year (2025) or an ISO 8601 date-time "
    "(2025-07-01T08:00, local time when it has no offset)"
)


def parse_instant(name: str, raw: str, tz: ZoneInfo) -> datetime:
    """A date, month, year or date-time; naive ones are local time of `tz`."""
    try:
        if YEAR_PATTERN.match(raw):
            value = datetime(int(raw), 1, 1, tzinfo=tz)
        elif _MONTH.match(raw):
            value = datetime(int(raw[:4]), int(raw[5:]), 1, tzinfo=tz)
        elif len(raw) == 10:
            d = date.fromisoformat(raw)
            value = datetime(d.year, d.month, d.day, tzinfo=tz)
        else:
            value = datetime.fromisoformat(raw)
            if value.tzinfo is None:
                value = value.replace(tzinfo=tz)
    except ValueError as exc:
        raise bad(name, raw, INSTANT_EXPECTED, f"{name} {raw!r} is not a date or date-time: {exc}") from None
    if not YEARS[0] <= value.astimezone(tz).year <= YEARS[1]:
        raise bad(name, raw, INSTANT_EXPECTED, f"{name} {raw!r} is outside the years {YEARS[0]}..{YEARS[1]}")
    return value


def instant(query: MultiMapping[str], name: str, tz: ZoneInfo) -> datetime | None:
    raw = one(query, name)
    return None if raw is None else parse_instant(name, raw, tz)


def floor_to(value: datetime, step: Step, tz: ZoneInfo) -> datetime:
    """The start of the period (hour, local day, month or year) holding `value`."""
    if step == "hour":
        return value.astimezone(UTC).replace(minute=0, second=0, microsecond=0).astimezone(tz)
    day = history.period_start(value.astimezone(tz).date(), step)
    return history.local_midnight(day, tz)


def ceil_to(value: datetime, step: Step, tz: ZoneInfo) -> datetime:
    start = floor_to(value, step, tz)
    return start if start == value else shift(start, step, 1, tz)


def shift(value: datetime, step: Step, n: int, tz: ZoneInfo) -> datetime:
    """`value` (a period start) moved by `n` periods."""
    if step == "hour":
        return (value.astimezone(UTC) + timedelta(hours=n)).astimezone(tz)
    d = value.astimezone(tz).date()
    if step == "day":
        d += timedelta(days=n)
    elif step == "month":
        months = d.year * 12 + d.month - 1 + n
        d = date(months // 12, months % 12 + 1, 1)
    else:
        d = date(d.year + n, 1, 1)
    return history.local_midnight(d, tz)


def count_periods(start: datetime, end: datetime, step: Step, tz: ZoneInfo) -> int:
    if step == "hour":
        return int((end.astimezone(UTC) - start.astimezone(UTC)).total_seconds() // 3600)  # real hours
    a, b = start.astimezone(tz).date(), end.astimezone(tz).date()
    if step == "day":
        return (b - a).days
    if step == "month":
        return (b.year - a.year) * 12 + b.month - a.month
    return b.year - a.year


def counts_range(query: MultiMapping[str], step: Step, tz: ZoneInfo, now: datetime) -> tuple[datetime, datetime]:
    """`from` floored and `to` ceiled to the step; defaults: the last periods up to now."""
    raw_from, raw_to = instant(query, "from", tz), instant(query, "to", tz)
    start = None if raw_from is None else floor_to(raw_from, step, tz)
    end = None if raw_to is None else ceil_to(raw_to, step, tz)
    if start is None and end is None:
        end = ceil_to(now, step, tz)
    if start is None:
        assert end is not None
        start = shift(end, step, -DEFAULT_PERIODS[step], tz)
    if end is None:
        end = shift(start, step, DEFAULT_PERIODS[step], tz)
    if end <= start:
        raise bad(
            "to",
            one(query, "to") or "",
            f"a time after from ({iso(start, tz)})",
            f"to ({iso(end, tz)}) must be after from ({iso(start, tz)}); to is exclusive",
        )
    n = count_periods(start, end, step, tz)
    if n > MAX_PERIODS[step]:
        raise bad(
            "to",
            one(query, "to") or iso(end, tz),
            f"at most {MAX_RANGE_TEXT[step]} after from with step={step} ({MAX_PERIODS[step]} {step}s)",
            f"from {iso(start, tz)} to {iso(end, tz)} is {n} {step}s (one row each); step={step} allows at most "
            f"{MAX_PERIODS[step]} rows ({MAX_RANGE_TEXT[step]}): narrow the range or use a longer step",
        )
    return start, end
