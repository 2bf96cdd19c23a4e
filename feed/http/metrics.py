"""`/metrics` over aiohttp: the route that answers a scrape, and the middleware that
times every aiohttp request. The registry and the exposition they use are in
feed.metrics, a base module that imports no aiohttp.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from feed.metrics import CONTENT_TYPE, REGISTRY, expose

SCRAPE_DB_TIMEOUT = 2.0


def status_class(status: int) -> str:
    return f"{status // 100}xx"


@web.middleware
async def http_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Latency of every aiohttp request, by route template ("unmatched" for 404s, so paths stay bounded)."""
    t0 = time.perf_counter()
    gauge = REGISTRY.http_in_flight
    gauge.values[()] += 1
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        gauge.values[()] -= 1
        info = request.match_info
        route = (
            info.route.resource.canonical
            if info.route.resource is not None and info.http_exception is None
            else "unmatched"
        )
        REGISTRY.http.child(route, status_class(status), "app").observe(time.perf_counter() - t0)


def metrics_routes(app: web.Application, ctx: Any) -> None:
    """`/metrics` (a RouteSetup for feed.http.app)."""

    async def metrics(_request: web.Request) -> web.Response:
        try:
            sources = await ctx.storage.source_times(SCRAPE_DB_TIMEOUT)  # a frozen server cannot hold it
        except Exception:  # noqa: BLE001 - a scrape shows what it can; roadfeed_database_up says why
            sources = None
        body = expose(ctx.publisher, ctx.storage.pool, sources)
        return web.Response(body=body.encode(), headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})

    app.router.add_get("/metrics", metrics)
