"""Public holidays, so that TMJO (mean daily traffic of working days) leaves them
out as the French "jours ouvrés" do. One calendar per country, chosen by
`[publication] holidays`; Easter-based days are computed, not listed."""

from __future__ import annotations

from datetime import date, timedelta
from functools import lru_cache
from typing import Literal

Calendar = Literal["fr", "none"]
CALENDARS: tuple[Calendar, ...] = ("fr", "none")


def easter(year: int) -> date:
    """Gregorian Easter Sunday (the anonymous Gregorian algorithm)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = b // 4, b % 4
    g = (8 * b + 13) // 25
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    l_ = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * l_) // 451
    month, day = divmod(h + l_ - 7 * m + 114, 31)
    return date(year, month, day + 1)


@lru_cache(maxsize=256)
def public_holidays(calendar: Calendar, year: int) -> frozenset[date]:
    """The public holidays of `year` in `calendar` ('none': no holiday)."""
    if calendar == "none":
        return frozenset()
    e = easter(year)
    fixed = [(1, 1), (5, 1), (5, 8), (7, 14), (8, 15), (11, 1), (11, 11), (12, 25)]
    # Easter Monday, Ascension Thursday, Whit Monday (metropolitan France).
    return frozenset(
        [date(year, m, d) for m, d in fixed] + [e + timedelta(days=1), e + timedelta(days=39), e + timedelta(days=50)]
    )
