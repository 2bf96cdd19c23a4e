"""What the reliability tests share: a faulty proxy in front of the simulator, the
source's truth, and checks that what is stored equals it (rollups included)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestServer

from feed.config import SourceConfig
from feed.simulator.clock import SimClock
from feed.simulator.server import build_simulator_app
from feed.simulator.simulation import Simulation, iter_all_counter_records
from feed.simulator.sources import simulator_sources

SEED = 34
T = datetime(2026, 6, 22, 4, tzinfo=UTC)  # the simulator's frozen "now" (a Monday, 06:00 in Paris)
CLASSES = {"VL": "light", "PL": "heavy"}


class Simulator:
    """The simulated département on 127.0.0.1, its clock frozen at `T`."""

    def __init__(self, history_days: float = 1.0) -> None:
        self.history = timedelta(days=history_days)
        self.clock = SimClock(T, speed=0)
        self.server = TestServer(
            build_simulator_app(SEED, history_days=history_days, clock=self.clock), host="127.0.0.1"
        )

    async def __aenter__(self) -> Simulator:
        await self.server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.close()

    @property
    def url(self) -> str:
        return str(self.server.make_url("/")).rstrip("/")

    def truth(self) -> Counter:
        """(site, hour, class) -> vehicles, both directions summed: the source's truth."""
        out: Counter = Counter()
        for r in iter_all_counter_records(Simulation(SEED), T - self.history, T):
            out[(r["id_site"], r["date_heure"], CLASSES[r["categorie"]])] += r["debit"]
        return out

    def truth_rows(self) -> int:
        return sum(1 for _ in iter_all_counter_records(Simulation(SEED), T - self.history, T))


Respond = Callable[[web.Request, Callable[[], Awaitable[tuple[int, bytes, dict]]]], Awaitable[web.StreamResponse]]


class FaultyProxy:
    """Forwards to an upstream, except when `fault` says otherwise.

    `fault` is None (healthy) or one of FAULTS; `healthy_first` requests are
    forwarded untouched before the fault applies (so a poll fails between pages).
    `before_forward` runs before each forwarded request (e.g. restart the database).
    """

    FAULTS = ("hang", "http500", "garbage", "cut")

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.fault: str | None = None
        self.healthy_first = 0
        self.requests = 0
        self.before_forward: Callable[[int], Awaitable[None]] | None = None
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self.server = TestServer(app, host="127.0.0.1")
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> FaultyProxy:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        await self.server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.close()
        assert self._session is not None
        await self._session.close()

    @property
    def url(self) -> str:
        return str(self.server.make_url("/")).rstrip("/")

    def set(self, fault: str | None, healthy_first: int = 0) -> None:
        self.fault, self.healthy_first, self.requests = fault, healthy_first, 0

    async def _forward(self, request: web.Request) -> tuple[int, bytes, dict]:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "accept-encoding")}
        async with self._session.get(self.upstream + request.path_qs, headers=headers) as r:
            keep = {k: v for k, v in r.headers.items() if k in ("ETag", "Last-Modified", "Content-Type")}
            return r.status, await r.read(), keep

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        n = self.requests
        if self.fault is None or n <= self.healthy_first:
            if self.before_forward is not None:
                await self.before_forward(n)
            status, body, headers = await self._forward(request)
            return web.Response(status=status, body=body, headers=headers)
        if self.fault == "hang":
            await asyncio.sleep(3600)
        if self.fault == "http500":
            return web.Response(status=500, text="upstream exploded")
        if self.fault == "garbage":
            return web.Response(
                body=b'{"total_count": 12, "results": [{"id_site": \x00\xff garbage <xml',
                content_type="application/json",
            )
        # "cut": announce the whole body, send half of it, close the connection.
        status, body, headers = await self._forward(request)
        response = web.StreamResponse(status=status, headers={**headers, "Content-Length": str(len(body))})
        await response.prepare(request)
        await response.write(body[: max(1, len(body) // 2)])
        assert request.transport is not None
        request.transport.close()
        return response


def counter_source(base_url: str, interval: int = 60, **extra_options) -> SourceConfig:
    raw = simulator_sources(base_url, interval=interval)[0]
    raw["options"].update(extra_options)
    return SourceConfig(**raw)


async def stored_counts(pool: asyncpg.Pool) -> Counter:
    rows = await pool.fetch(
        """SELECT s.external_id, m.start, c.vehicle_class, sum(m.count)::bigint AS n
             FROM measurements m JOIN channels c ON c.id = m.channel_id JOIN sites s ON s.id = c.site_id
            WHERE m.count IS NOT NULL GROUP BY 1, 2, 3"""
    )
    return Counter({(r[0], r[1], r[2]): r[3] for r in rows})


async def assert_subset_of_truth(pool: asyncpg.Pool, truth: Counter) -> Counter:
    """Every stored (site, hour, class) is true (a partial poll may miss some)."""
    stored = await stored_counts(pool)
    wrong = {k: (v, truth.get(k)) for k, v in stored.items() if truth.get(k) != v}
    # A page boundary may split an hour's records: a stored value may be lower than
    # the truth for the last hour stored, never higher, never for another hour.
    if wrong:
        last = max(k[1] for k in stored)
        assert all(k[1] == last and v < t for k, (v, t) in wrong.items()), list(wrong.items())[:5]
    return stored


async def assert_equals_truth(pool: asyncpg.Pool, sim: Simulator) -> None:
    """Nothing lost, nothing duplicated, nothing wrong, rollups exact."""
    truth = sim.truth()
    stored = await stored_counts(pool)
    assert stored == truth, (len(stored), len(truth), list(set(stored.items()) ^ set(truth.items()))[:5])
    rows = await pool.fetchval("SELECT count(*) FROM measurements WHERE count IS NOT NULL")
    assert rows == sim.truth_rows()
    await assert_rollups_exact(pool)


RECOMPUTE_DAILY = """
SELECT m.channel_id, (m.start AT TIME ZONE (SELECT value FROM roadfeed_meta WHERE key = 'timezone'))::date AS day,
       coalesce(sum(count) FILTER (WHERE ok), 0) AS count_sum,
       count(*) FILTER (WHERE ok) AS present,
       coalesce(sum(speed::float8 * count) FILTER (WHERE ok AND speed IS NOT NULL), 0) AS speed_weighted_sum
  FROM measurements m, LATERAL (SELECT count IS NOT NULL AND quality IN ('observed', 'estimated')
                                      AND validation IS NULL AS ok) q
 GROUP BY 1, 2 ORDER BY 1, 2"""


async def assert_rollups_exact(pool: asyncpg.Pool) -> None:
    want = [tuple(r) for r in await pool.fetch(RECOMPUTE_DAILY)]
    got = [
        tuple(r)
        for r in await pool.fetch(
            "SELECT channel_id, day, count_sum, intervals_present, speed_weighted_sum FROM rollup_daily ORDER BY 1, 2"
        )
    ]
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g[:4] == w[:4] and abs(g[4] - w[4]) < 1e-6 * max(1.0, abs(w[4])), (g, w)
