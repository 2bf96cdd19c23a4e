"""Pure random draws: every number the simulation draws is a hash of (seed, key),
so any draw is a function of its arguments and two runs with one seed agree.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any


def _digest(seed: int, parts: tuple[Any, ...]) -> int:
    key = "|".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=16).digest(), "big")


def _unit(seed: int, *parts: Any) -> float:
    """A uniform number in [0, 1), a pure function of its arguments."""
    return (_digest(seed, parts) >> 75) / float(1 << 53)


def _units(seed: int, *parts: Any) -> tuple[float, float, float, float, float, float]:
    """Six independent uniforms (21 bits each) from one hash."""
    d = _digest(seed, parts)
    return tuple(((d >> (21 * i)) & 0x1FFFFF) / float(1 << 21) for i in range(6))  # type: ignore[return-value]


class _Draw:
    """Successive pure random draws under one key."""

    def __init__(self, seed: int, *key: Any) -> None:
        self._seed, self._key, self._n = seed, key, 0

    def u(self) -> float:
        self._n += 1
        return _unit(self._seed, *self._key, self._n)

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.u()

    def randint(self, a: int, b: int) -> int:
        return a + min(int(self.u() * (b - a + 1)), b - a)

    def chance(self, p: float) -> bool:
        return self.u() < p

    def choice(self, items: Sequence[Any]) -> Any:
        return items[min(int(self.u() * len(items)), len(items) - 1)]

    def weighted(self, weights: Sequence[float]) -> int:
        x = self.u() * sum(weights)
        for i, w in enumerate(weights):
            x -= w
            if x < 0:
                return i
        return len(weights) - 1


def _poisson(rate: float, u: float) -> int:
    k, p = 0, math.exp(-rate)
    cdf = p
    while u > cdf and k < 60:
        k += 1
        p *= rate / k
        cdf += p
    return k
