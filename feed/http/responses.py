"""HTTP negotiation shared by the route modules: content codings, conditional GET, CORS, JSON errors.

`serve` answers with a `RenderedFeed` (feed.publish.render): its precompressed
variant for the client's Accept-Encoding, or a 304 when If-None-Match (or
If-Modified-Since) says the client has it, with validators and CORS headers.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from aiohttp import web
from multidict import CIMultiDict

from feed.publish.render import RenderedFeed

__all__ = [
    "CORS_HEADERS",
    "PREFLIGHT_HEADERS",
    "etag_matches",
    "modified_since",
    "negotiate_encoding",
    "serve",
]

_QVALUE = re.compile(r"^\s*q\s*=\s*([0-9.]+)\s*$", re.IGNORECASE)
_ETAG = re.compile(r'(?:W/)?"([^"]*)"')
_CODING_PREFERENCE = ("br", "gzip")  # on equal q, the smaller first

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "ETag, Last-Modified, Content-Encoding",
}
PREFLIGHT_HEADERS = {
    **CORS_HEADERS,
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "If-None-Match, If-Modified-Since, Cache-Control",
    "Access-Control-Max-Age": "86400",
}


def negotiate_encoding(accept_encoding: str | None, available: Collection[str]) -> str:
    """'br', 'gzip' or 'identity': the highest q among the available codings, br
    before gzip on a tie, identity when nothing else is acceptable (q=0 excludes)."""
    if not accept_encoding:
        return "identity"
    weights: dict[str, float] = {}
    for element in accept_encoding.split(","):
        coding, *params = element.split(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        q = 1.0
        for param in params:
            m = _QVALUE.match(param)
            if m:
                try:
                    q = min(float(m.group(1)), 1.0)
                except ValueError:
                    q = 0.0
        if coding == "x-gzip":
            coding = "gzip"
        weights[coding] = max(q, weights.get(coding, 0.0))
    star = weights.get("*", 0.0)
    best, best_q = "identity", 0.0
    for coding in _CODING_PREFERENCE:
        q = weights.get(coding, star)
        if coding in available and q > best_q:
            best, best_q = coding, q
    return best


def etag_matches(if_none_match: str, tag: str) -> bool:
    """Weak comparison (as If-None-Match requires) against any coding's ETag of the version `tag`."""
    if if_none_match.strip() == "*":
        return True
    return any(
        opaque == tag or (opaque.startswith(tag + "-") and opaque[len(tag) + 1 :] in _CODING_PREFERENCE)
        for opaque in _ETAG.findall(if_none_match)
    )


def modified_since(if_modified_since: str, last_modified: datetime) -> bool:
    try:
        since = parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError, IndexError):
        return True  # an unreadable date is ignored
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return last_modified > since


def serve(request: web.Request, feed: RenderedFeed, cache_control: str) -> web.Response:
    """The feed, its precompressed variant or a 304, with validators and CORS."""
    coding = negotiate_encoding(request.headers.get("Accept-Encoding"), feed.encoded)
    headers = CIMultiDict(CORS_HEADERS)
    headers["ETag"] = feed.etag_for(coding)
    headers["Last-Modified"] = feed.last_modified_http
    headers["Cache-Control"] = cache_control
    headers["Vary"] = "Accept-Encoding"
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None:  # takes precedence over If-Modified-Since (RFC 9110 §13.2.2)
        not_modified = etag_matches(if_none_match, feed.tag)
    else:
        since = request.headers.get("If-Modified-Since")
        not_modified = since is not None and not modified_since(since, feed.last_modified)
    if not_modified:
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = feed.content_type
    if coding == "identity":
        return web.Response(body=feed.body, headers=headers)
    headers["Content-Encoding"] = coding
    return web.Response(body=feed.encoded[coding], headers=headers)
