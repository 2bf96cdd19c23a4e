"""The aiohttp application: one factory, and routes added by small functions.

To add routes (the `/api/v1/...` endpoints, the web page), write a function
`def api_routes(app: web.Application, ctx: AppContext) -> None` next to your
handlers and append it to `ROUTES`, or pass `routes=[*ROUTES, api_routes]` to
`build_app`. Handlers reach the shared objects through `request.app[CONTEXT]`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import asyncpg
from aiohttp import web

from feed.admin import admin_routes
from feed.agentpage import agent_page_routes
from feed.agents import agent_routes
from feed.authoring import authoring_routes
from feed.campaigns import campaign_routes
from feed.conditions import condition_routes
from feed.api import api_routes
from feed.changes import changes_routes
from feed.config import Config
from feed.feeds import FeedPublisher, add_feed_routes, json_error
from feed.metrics import http_middleware, metrics_routes
from feed.security import install_security
from feed.storage import Storage
from feed.webpage import web_routes

__all__ = ["CONTEXT", "ROUTES", "AppContext", "RouteSetup", "build_app", "feed_routes", "health_routes"]

READY_DB_TIMEOUT = 2.0  # seconds /readyz waits for the database
MAX_HEADER_LINE = 8190  # bytes of a request line or header field (the fast path hands longer heads here)


@dataclass(frozen=True, slots=True)
class AppContext:
    """What every handler may need, shared by the whole application."""

    config: Config
    storage: Storage
    publisher: FeedPublisher


CONTEXT = web.AppKey("context", AppContext)
RouteSetup = Callable[[web.Application, AppContext], None]


def health_routes(app: web.Application, ctx: AppContext) -> None:
    """`/healthz`: the process answers. `/readyz`: database reachable and every feed rendered."""

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"}, headers={"Cache-Control": "no-store"})

    async def readyz(_request: web.Request) -> web.Response:
        problems: list[str] = []
        try:
            await asyncio.wait_for(ctx.storage.pool.fetchval("SELECT 1"), READY_DB_TIMEOUT)
            database = "ok"
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            database = f"unreachable: {type(exc).__name__}: {exc}"
            problems.append("database")
        pending = ctx.publisher.pending_paths()
        if pending:
            problems.append("feeds")
        document = {"status": "not_ready" if problems else "ready", "database": database,
                    "feeds_pending": pending}
        if problems:
            return json_error(503, document)
        return web.json_response(document, headers={"Cache-Control": "no-store"})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


def feed_routes(app: web.Application, ctx: AppContext) -> None:
    """The live feeds under /feeds/ (see feed.feeds.FEEDS)."""
    add_feed_routes(app.router, ctx.publisher, ctx.config.server.feed_max_age)


ROUTES: list[RouteSetup] = [health_routes, metrics_routes, feed_routes, changes_routes, web_routes, admin_routes,
                            agent_routes, authoring_routes, condition_routes, campaign_routes,
                            agent_page_routes, api_routes]


def build_app(
    config: Config,
    storage: Storage,
    *,
    publisher: FeedPublisher | None = None,
    routes: Sequence[RouteSetup] | None = None,
) -> web.Application:
    """The application; the feed publisher starts and stops with it.

    `storage` stays owned by the caller: close it after the application's cleanup.
    """
    ctx = AppContext(config, storage, publisher or FeedPublisher(storage, config))
    # Bodies beyond max_request_bytes get 413; request lines and header fields beyond 8190 bytes get 400.
    app = web.Application(client_max_size=config.server.max_request_bytes,
                          handler_args={"max_line_size": MAX_HEADER_LINE, "max_field_size": MAX_HEADER_LINE})
    app[CONTEXT] = ctx
    app.middlewares.append(http_middleware)  # first: /metrics times every answer, refusals included
    install_security(app, rate_limit_per_minute=config.server.rate_limit_per_minute,
                     rate_limit_burst=config.server.rate_limit_burst, trusted_proxies=config.server.trusted_proxies,
                     exempt=config.server.rate_limit_exempt)

    async def run_publisher(_app: web.Application) -> AsyncIterator[None]:
        await ctx.publisher.start()
        yield
        await ctx.publisher.stop()

    app.cleanup_ctx.append(run_publisher)
    for setup in ROUTES if routes is None else routes:
        setup(app, ctx)
    return app
