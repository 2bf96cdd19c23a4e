"""The one place where an error becomes an HTTP answer: the status of every request
error (feed.errors), and the one function that writes a JSON error response.

Route modules raise a `feed.errors.RequestError`; the wrapper of their routes
(feed.http.api, feed.http.admin, feed.http.agents) or a middleware (feed.http.app)
hands it to `refusal`. Every JSON error is `no-store`. Two things differ between the
routes and are chosen by the caller, as they were before there was one renderer:
CORS (the public feeds and API carry it, the admin and agents' routes do not, being
for the same origin), and the spacing of the body (the public routes answer compact
JSON, the admin and agents' routes `json.dumps`' default spacing).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from exporters import geojson
from feed.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    RequestError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from feed.http.responses import CORS_HEADERS
from feed.publish.catalogue import JSON

__all__ = ["STATUS", "json_error", "refusal", "status_of"]

STATUS: dict[type[RequestError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    TooManyRequests: 429,
    Unavailable: 503,
}


def status_of(error: RequestError) -> int:
    """The HTTP status of `error`: its class's, or its nearest base class's, in STATUS."""
    for cls in type(error).__mro__:
        for known, status in STATUS.items():
            if cls is known:
                return status
    raise LookupError(f"no HTTP status for {type(error).__name__}: add it to feed.http.errors.STATUS")


def json_error(
    status: int,
    document: Mapping[str, Any],
    headers: Mapping[str, str] | None = None,
    *,
    cors: bool = True,
    compact: bool = True,
) -> web.Response:
    """A JSON error response: `document` as the body, never cached, with CORS when `cors`,
    then `headers` (e.g. Retry-After)."""
    body = geojson.dumps(document) if compact else json.dumps(document, ensure_ascii=False, default=str).encode()
    head = CIMultiDict(
        {**(CORS_HEADERS if cors else {}), "Cache-Control": "no-store", "Content-Type": JSON, **(headers or {})}
    )
    return web.Response(status=status, body=body, headers=head)


def refusal(
    error: RequestError, headers: Mapping[str, str] | None = None, *, cors: bool = True, compact: bool = True
) -> web.Response:
    """The response to a refused request: its status, its document, `headers`, and those
    the error asks for (Retry-After, a Bearer challenge)."""
    headers = dict(headers or {})
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, Unauthorized) and error.realm is not None:
        headers["WWW-Authenticate"] = f'Bearer realm="{error.realm}"'
    return json_error(status_of(error), error.as_json(), headers, cors=cors, compact=compact)
