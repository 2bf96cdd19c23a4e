"""Hardening shared by every route: security headers, a per-client rate limit and
request size limits.

The feeds' fast path (feed.server.fastpath.FeedFastPath) answers polls before aiohttp sees
them, so middlewares do not run there: it writes `FEED_SECURITY_HEADERS` into its
prepared responses and asks the same `RateLimiter` before answering (a refused
request is handed to aiohttp, whose middleware answers the 429). Both paths thus
send the same headers and share one budget per client. Each serving process
(`[server] workers`) keeps its own buckets: the kernel spreads a client's
connections over them, so a client may get up to `workers` times the rate, which
is still bounded and keeps the check free of any shared state.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from feed.errors import TooManyRequests
from feed.http.errors import refusal

__all__ = [
    "FEED_SECURITY_HEADERS",
    "RATE_LIMITER",
    "RateLimiter",
    "client_address",
    "install_security",
    "security_headers_for",
]

# On every response (setdefault: a handler's own values win, e.g. the web page's
# Referrer-Policy). Feeds and the public API are read cross-origin (CORS is open),
# so their resources say so; the page and the admin API stay same-origin.
COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
NON_HTML_CSP = "default-src 'none'; frame-ancestors 'none'"  # documents that are data, never pages
FEED_SECURITY_HEADERS = {
    **COMMON_HEADERS,
    "Content-Security-Policy": NON_HTML_CSP,
    "Cross-Origin-Resource-Policy": "cross-origin",
}
PUBLIC_PREFIXES = ("/feeds/", "/api/v1/")
ADMIN_PREFIX = "/api/v1/admin/"

# Operators' probes and scrapers have a budget of their own per client: polling
# the public feeds from the same address (a NAT, the monitoring host) must not
# get /metrics or /healthz a 429, nor the other way round.
OPERATIONS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
OPERATIONS_BUDGET = "operations "

NOT_MODIFIED_COST = 0.5  # a 304 costs half a request: cheap to answer, but still counted
MAX_CLIENTS = 100_000  # buckets kept; full ones are forgotten first when there are more


def security_headers_for(path: str, content_type: str | None) -> dict[str, str]:
    """The headers a response to `path` with `content_type` should carry."""
    public = path.startswith(PUBLIC_PREFIXES) and not path.startswith(ADMIN_PREFIX)
    headers = dict(COMMON_HEADERS)
    headers["Cross-Origin-Resource-Policy"] = "cross-origin" if public else "same-origin"
    if not (content_type or "").startswith("text/html"):
        headers["Content-Security-Policy"] = NON_HTML_CSP
    return headers


# --------------------------------------------------------------------------- rate limit


class RateLimiter:
    """A token bucket per client address: `burst` requests at once, refilled at
    `per_minute` a minute. `per_minute == 0` disables it."""

    def __init__(
        self,
        per_minute: int,
        burst: int,
        trusted_proxies: Iterable[str] = (),
        exempt: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.enabled = per_minute > 0
        self.clock = clock
        self.proxies = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]
        self.exempt = [ipaddress.ip_network(p, strict=False) for p in exempt]
        self._trusted_cache: dict[str, bool] = {}
        self._exempt_cache: dict[str, bool] = {}
        self.buckets: dict[str, list[float]] = {}  # client -> [tokens, last refill]
        self.refused = 0

    def trusts(self, address: str | None) -> bool:
        if not self.proxies or not address:
            return False
        return _member(address, self.proxies, self._trusted_cache)

    def exempts(self, client: str) -> bool:
        return bool(self.exempt) and _member(client, self.exempt, self._exempt_cache)

    def client(self, peer: str | None, forwarded_for: str | None) -> str:
        """The client's address: the peer, or when the peer is a trusted proxy, the
        nearest address of X-Forwarded-For that is not a trusted proxy."""
        if peer is None:
            return "unknown"
        if forwarded_for is None or not self.trusts(peer):
            return peer
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):  # the right end was appended by our own proxies
            if not self.trusts(hop):
                return hop
        return hops[0] if hops else peer

    def _bucket(self, client: str, now: float) -> list[float]:
        bucket = self.buckets.get(client)
        if bucket is None:
            if len(self.buckets) >= MAX_CLIENTS:
                self._prune(now)
            bucket = self.buckets[client] = [self.burst, now]
        else:
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        return bucket

    def _prune(self, now: float) -> None:
        full_after = self.burst / self.rate if self.rate else 0.0
        for key in [k for k, (_, last) in self.buckets.items() if now - last >= full_after]:
            del self.buckets[key]
        if len(self.buckets) >= MAX_CLIENTS:  # everyone is active: forget the oldest half
            for key in sorted(self.buckets, key=lambda k: self.buckets[k][1])[: MAX_CLIENTS // 2]:
                del self.buckets[key]

    def take(self, client: str, cost: float = 1.0, budget: str = "") -> float:
        """0 when the request may go on (and is charged), else the seconds to wait.
        `budget` names a separate bucket for the same client (see OPERATIONS_PATHS)."""
        if not self.enabled or self.exempts(client):
            return 0.0
        bucket = self._bucket(budget + client, self.clock())
        if bucket[0] >= cost:
            bucket[0] -= cost
            return 0.0
        self.refused += 1
        return (cost - bucket[0]) / self.rate

    def charge(self, client: str, amount: float, budget: str = "") -> None:
        """Takes `amount` more from an admitted request (the bucket may go below zero)."""
        bucket = self.buckets.get(budget + client)
        if bucket is not None:
            bucket[0] -= amount


def _member(address: str, networks: list[Any], cache: dict[str, bool]) -> bool:
    known = cache.get(address)
    if known is None:
        try:
            ip = ipaddress.ip_address(address)
            known = any(ip in net for net in networks)
        except ValueError:
            known = False
        if len(cache) < 10_000:
            cache[address] = known
    return known


RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)


def client_address(request: web.Request, limiter: RateLimiter) -> str:
    return limiter.client(request.remote, request.headers.get("X-Forwarded-For"))


def too_many_requests(wait: float, path: str) -> web.Response:
    retry = max(1, math.ceil(wait))
    error = TooManyRequests(
        "rate_limited",
        "too many requests from this address; slow down and retry after the delay given",
        expected=f"a retry after {retry} s",
        retry_after=retry,
    )
    headers: dict[str, str] = {}
    if path.startswith(PUBLIC_PREFIXES) and not path.startswith(ADMIN_PREFIX):  # as the answer it replaces
        headers["Access-Control-Allow-Origin"] = "*"
    return refusal(error, headers, cors=False, compact=False)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def rate_limit_middleware(limiter: RateLimiter) -> Any:
    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not limiter.enabled:
            return await handler(request)
        client = client_address(request, limiter)
        budget = OPERATIONS_BUDGET if request.path in OPERATIONS_PATHS else ""
        # A conditional request is admitted at the price of a 304; if it gets a body, it pays the rest.
        conditional = "If-None-Match" in request.headers or "If-Modified-Since" in request.headers
        wait = limiter.take(client, NOT_MODIFIED_COST if conditional else 1.0, budget)
        if wait:
            return too_many_requests(wait, request.path)
        response = await handler(request)
        if conditional and response.status != 304 and not limiter.exempts(client):
            limiter.charge(client, 1.0 - NOT_MODIFIED_COST, budget)
        return response

    return limit


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    for name, value in security_headers_for(request.path, headers.get("Content-Type")).items():
        headers.setdefault(name, value)


def install_security(
    app: web.Application,
    *,
    rate_limit_per_minute: int,
    rate_limit_burst: int,
    trusted_proxies: Iterable[str],
    exempt: Iterable[str] = (),
) -> RateLimiter:
    """Adds the rate limit (a middleware, after those already there, e.g. /metrics' timing,
    so that refusals are counted there) and the security headers to `app`."""
    limiter = RateLimiter(rate_limit_per_minute, rate_limit_burst, trusted_proxies, exempt)
    app[RATE_LIMITER] = limiter
    app.middlewares.append(rate_limit_middleware(limiter))
    app.on_response_prepare.append(_add_headers)
    return limiter
