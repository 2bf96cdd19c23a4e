"""The aiohttp application: one factory, and routes added by small functions.

To add routes (the `/api/v1/...` endpoints, the web page), write a function
`def api_routes(app: web.Application, ctx: AppContext) -> None` next to your
handlers and append it to `ROUTES`, or pass `routes=[*ROUTES, api_routes]` to
`build_app`. Handlers reach the shared objects through `request.app[CONTEXT]`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.typedefs import Middleware

from feed.config import Config
from feed.errors import RequestError, Unavailable, printable
from feed.http.admin import admin_routes
from feed.http.agentpage import agent_page_routes
from feed.http.agents import agent_routes
from feed.http.api import api_routes
from feed.http.authoring import authoring_routes
from feed.http.campaigns import campaign_routes
from feed.http.changes import changes_routes
from feed.http.conditions import condition_routes
from feed.http.context import CONTEXT, AppContext, RouteSetup
from feed.http.errors import json_error, refusal
from feed.http.feeds import add_feed_routes
from feed.http.metrics import http_middleware, metrics_routes
from feed.http.openapi import openapi_routes
from feed.http.page import web_routes
from feed.http.security import ADMIN_PREFIX, install_security
from feed.logs import ThrottledLog
from feed.publish.filters import check_request_text
from feed.publish.publisher import FeedPublisher
from feed.store.storage import DATABASE_UNAVAILABLE, Storage

__all__ = ["ROUTES", "build_app", "feed_routes", "health_routes"]

log = logging.getLogger("roadfeed.http")

READY_DB_TIMEOUT = 2.0  # seconds /readyz waits for the database
DATABASE_RETRY_AFTER = 5  # seconds a client is asked to wait while the database is away
MAX_HEADER_LINE = 8190  # bytes of a request line or header field (the fast path hands longer heads here)


def health_routes(app: web.Application, ctx: AppContext) -> None:
    """`/healthz`: the process answers. `/readyz`: database reachable and every feed rendered."""

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"}, headers={"Cache-Control": "no-store"})

    async def readyz(_request: web.Request) -> web.Response:
        problems: list[str] = []
        try:
            await ctx.storage.ping(READY_DB_TIMEOUT)
            database = "ok"
        except DATABASE_UNAVAILABLE as exc:
            database = f"unreachable: {_reason(exc)}"
            problems.append("database")
        pending = ctx.publisher.pending_paths()
        if pending:
            problems.append("feeds")
        document = {"status": "not_ready" if problems else "ready", "database": database, "feeds_pending": pending}
        if problems:
            return json_error(503, document, {"Retry-After": str(DATABASE_RETRY_AFTER)})
        return web.json_response(document, headers={"Cache-Control": "no-store"})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "TimeoutError: the database did not answer in time"
    return f"{type(exc).__name__}: {exc}"


def database_unavailable_middleware(throttled: ThrottledLog) -> Middleware:
    """Any route that needs the database answers a JSON 503 with Retry-After while it
    is away (refused, frozen, restarting), and logs one line every few seconds, not a
    traceback per request. Recovery needs nothing: the pool reconnects on next use."""

    @web.middleware
    async def unavailable(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except DATABASE_UNAVAILABLE as exc:
            reason = _reason(exc)
            throttled.warning(
                "database", f"database unavailable; answering 503 ({request.method} {request.path}: {reason})"
            )
            return _refusal(
                request,
                Unavailable(
                    "database_unavailable",
                    f"the database is unavailable ({reason}); retry shortly",
                    expected=f"a retry after {DATABASE_RETRY_AFTER} s",
                    retry_after=DATABASE_RETRY_AFTER,
                ),
            )

    return unavailable


def _refusal(request: web.Request, error: RequestError) -> web.Response:
    """A refusal in the API's shape, with CORS except on the admin API (same-origin only)."""
    return refusal(error, cors=not request.path.startswith(ADMIN_PREFIX))


@web.middleware
async def storable_text_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A 400 naming the parameter for any query or path text PostgreSQL cannot hold."""
    try:
        check_request_text(request.query, request.match_info)
    except RequestError as exc:
        return _refusal(request, exc)
    return await handler(request)


class RefusalLog(logging.LoggerAdapter):
    """aiohttp's server logger for our application: a request aiohttp refuses as
    malformed or oversized (a line or header field too long, a bad head) is one
    line, at most one every few seconds, instead of a traceback per request that
    anyone could use to flood the logs. Other errors keep their traceback."""

    def __init__(self, throttled: ThrottledLog) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self.throttled = throttled

    def log(self, level: int, msg: object, *args: object, **kwargs: object) -> None:
        exc_info = kwargs.get("exc_info")
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1] if exc_info else None
        if level >= logging.ERROR and isinstance(exc, BadHttpMessage):
            what = printable(" ".join(str(exc.message).split()))  # one line, whatever the client sent
            self.throttled.warning("refused", f"refused a malformed or oversized request: {type(exc).__name__}: {what}")
            return
        super().log(level, msg, *args, **kwargs)  # type: ignore[arg-type]


def feed_routes(app: web.Application, ctx: AppContext) -> None:
    """The live feeds under /feeds/ (see feed.publish.catalogue.FEEDS)."""
    add_feed_routes(app.router, ctx.publisher, ctx.config.server.feed_max_age)


ROUTES: list[RouteSetup] = [
    health_routes,
    metrics_routes,
    feed_routes,
    changes_routes,
    web_routes,
    admin_routes,
    agent_routes,
    authoring_routes,
    condition_routes,
    campaign_routes,
    agent_page_routes,
    api_routes,
    openapi_routes,
]


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
    throttled = ThrottledLog(log)
    app = web.Application(
        client_max_size=config.server.max_request_bytes,
        handler_args={
            "max_line_size": MAX_HEADER_LINE,
            "max_field_size": MAX_HEADER_LINE,
            "logger": RefusalLog(throttled),
        },
    )
    app[CONTEXT] = ctx
    app.middlewares.append(http_middleware)  # first: /metrics times every answer, refusals included
    install_security(
        app,
        rate_limit_per_minute=config.server.rate_limit_per_minute,
        rate_limit_burst=config.server.rate_limit_burst,
        trusted_proxies=config.server.trusted_proxies,
        exempt=config.server.rate_limit_exempt,
    )
    app.middlewares.append(storable_text_middleware)
    app.middlewares.append(database_unavailable_middleware(throttled))

    async def run_publisher(_app: web.Application) -> AsyncIterator[None]:
        await ctx.publisher.start()
        yield
        await ctx.publisher.stop()

    app.cleanup_ctx.append(run_publisher)
    for setup in ROUTES if routes is None else routes:
        setup(app, ctx)
    return app
