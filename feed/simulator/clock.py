"""Simulated time, the one thing that moves (`SimClock`), and how the simulator writes
an instant.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from feed.simulator.traffic import floor_hour

__all__ = [
    "SimClock",
]


class SimClock:
    """Simulated time: `speed` simulated seconds per real second, from `start`.

    `start` defaults to now, truncated to the hour. `speed` 0 freezes the clock
    (then only `advance` moves it: handy in tests). `monotonic` is the real clock.
    """

    def __init__(
        self, start: datetime | None = None, speed: float = 1.0, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        if start is None:
            start = floor_hour(datetime.now(UTC))
        if start.tzinfo is None:
            raise ValueError("start must carry a timezone")
        if not (speed >= 0 and math.isfinite(speed)):
            raise ValueError(f"speed must be a finite number >= 0, not {speed!r}")
        self.start = start.astimezone(UTC)
        self.speed = float(speed)
        self._monotonic = monotonic
        self._t0 = monotonic()
        self._offset = timedelta(0)

    def now(self) -> datetime:
        elapsed = (self._monotonic() - self._t0) * self.speed
        return self.start + self._offset + timedelta(seconds=elapsed)

    def advance(self, delta: timedelta) -> None:
        """Jump simulated time forward (or back, with a negative delta)."""
        self._offset += delta

    def describe(self) -> dict[str, Any]:
        return {"start": _iso(self.start, UTC), "now": _iso(self.now(), UTC), "speed": self.speed}


def _iso(value: datetime, tz: ZoneInfo | timezone) -> str:
    return value.astimezone(tz).isoformat(timespec="seconds")
