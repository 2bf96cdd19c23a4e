"""Long mode for the database property tests: `ROADFEED_LONG_PROPERTIES=N` runs N times
as many examples (with N times the time limit), to hunt rare cases before a release.
Hypothesis draws new examples on every run, so a property that passed may still be wrong."""

from __future__ import annotations

import os

FACTOR = max(1, int(os.environ.get("ROADFEED_LONG_PROPERTIES", "1") or "1"))


def examples(n: int) -> int:
    return n * FACTOR


def seconds(n: int) -> int:
    return n * FACTOR
