"""The live feeds over aiohttp: GET/HEAD and CORS preflight of every feed of the publisher.

The HTTP side is a thin adapter: conditional GET (ETag and Last-Modified),
content-coding negotiation over the precomputed variants, CORS, and the
`?bbox=&type=&status=` filters of `/feeds/events.geojson`, whose results are
rendered once per distinct query and feed version (feed.publish.publisher).
The plain GET/HEAD of a whole feed is usually answered before aiohttp sees it,
with the same answers, by feed.server.fastpath.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from feed.errors import BadParameter
from feed.http.errors import json_error
from feed.http.responses import PREFLIGHT_HEADERS, serve
from feed.publish.catalogue import EVENTS_GEOJSON, STATUS_PATH
from feed.publish.filters import parse_event_filter
from feed.publish.publisher import FeedPublisher, FeedState

__all__ = ["add_feed_routes", "feed_cache_control"]


def feed_cache_control(path: str, max_age: int) -> str:
    """operators want status.json fresh (304s keep it cheap); feeds may be cached `max_age` seconds."""
    return "no-cache" if path == STATUS_PATH else f"public, max-age={max_age}"


def _unavailable(path: str, state: FeedState) -> web.Response:
    if state.empty is not None:
        return json_error(
            503, {"error": "nothing_to_publish", "path": path, "detail": state.empty}, {"Retry-After": "60"}
        )
    detail = "the first rendering of this feed is not finished yet"
    if state.error:
        detail = f"this feed could not be rendered: {state.error}"
    return json_error(503, {"error": "not_ready", "path": path, "detail": detail}, {"Retry-After": "5"})


def add_feed_routes(router: web.UrlDispatcher, publisher: FeedPublisher, max_age: int) -> None:
    """GET/HEAD and CORS preflight for every feed of `publisher`."""
    public = f"public, max-age={max_age}"

    async def preflight(_request: web.Request) -> web.Response:
        return web.Response(status=204, headers=PREFLIGHT_HEADERS)

    def feed_handler(path: str, cache_control: str) -> Callable[[web.Request], Any]:
        state = publisher.state(path)

        async def handle(request: web.Request) -> web.Response:
            feed = state.current
            if feed is None:
                return _unavailable(path, state)
            return serve(request, feed, cache_control)

        return handle

    def events_handler() -> Callable[[web.Request], Any]:
        whole = feed_handler(EVENTS_GEOJSON, public)

        async def handle(request: web.Request) -> web.Response:
            if not request.query:
                return await whole(request)
            try:
                query = parse_event_filter(request.query)
            except BadParameter as exc:
                return json_error(400, exc.as_json())
            if query.is_empty:
                return await whole(request)
            feed = await publisher.filtered_events(query)
            if feed is None:
                return _unavailable(EVENTS_GEOJSON, publisher.state(EVENTS_GEOJSON))
            return serve(request, feed, public)

        return handle

    for path in publisher.paths:
        handler = events_handler() if path == EVENTS_GEOJSON else feed_handler(path, feed_cache_control(path, max_age))
        router.add_get(path, handler)
        router.add_route("OPTIONS", path, preflight)
