"""HTTP fetching for every source kind: conditional GET, size limit, retries.

The body is spooled to a temporary file (in memory while small), so a 100 MB
document never sits whole in memory and parsers can stream it.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO

import aiohttp

from feed.errors import InputError

SPOOL_IN_MEMORY = 8 * 1024 * 1024
RETRY_STATUSES = {429, 500, 502, 503, 504}


class FetchError(InputError):
    """A fetch that failed for good (after retries where retrying made sense): every
    transport fault ends as this, with what happened and how many bytes were read."""

    def __init__(self, source_id: str, url: str, reason: str, status: int | None = None, bytes_read: int = 0):
        super().__init__(f"{source_id}: GET {url}: {reason}")
        self.source_id = source_id
        self.url = url
        self.reason = reason
        self.status = status
        self.bytes_read = bytes_read


# Transport faults: retried, then reported as a FetchError. ClientResponseError covers a
# response aiohttp cannot read (e.g. the bytes a lying Content-Length left on the connection).
TRANSPORT_ERRORS = (TimeoutError, aiohttp.ClientError, OSError, ValueError)


@dataclass
class Fetched:
    status: int  # 200, or 304 when unchanged
    body: IO[bytes] | None  # positioned at 0; None on 304
    etag: str | None
    last_modified: str | None
    attempts: int

    @property
    def content(self) -> IO[bytes]:
        """The body of a 200 (a 304, which has none, is never read)."""
        assert self.body is not None, "a 304 has no body"
        return self.body

    def close(self) -> None:
        if self.body is not None:
            self.body.close()


@dataclass(frozen=True)
class FetchPolicy:
    timeout: float = 30.0  # seconds for the whole request, body included
    max_bytes: int = 200 * 1024 * 1024  # after decompression
    retries: int = 3
    backoff_base: float = 1.0
    backoff_max: float = 60.0


def retry_delay(
    attempt: int, policy: FetchPolicy, headers: dict[str, str] | None = None, rand: Callable[[], float] = random.random
) -> float:
    """Exponential backoff with jitter; a server's Retry-After / X-RateLimit-Reset wins."""
    told = _server_delay(headers or {})
    if told is not None:
        return min(told, policy.backoff_max)
    base = min(policy.backoff_max, policy.backoff_base * 2**attempt)
    return base * (0.5 + rand())  # jitter: 0.5x to 1.5x


def _server_delay(headers: dict[str, str]) -> float | None:
    retry_after = headers.get("Retry-After")
    if retry_after:
        if retry_after.strip().isdigit():
            return float(retry_after)
        try:
            when = email.utils.parsedate_to_datetime(retry_after)
            return max(0.0, (when - datetime.now(UTC)).total_seconds())
        except (TypeError, ValueError):
            pass
    reset = headers.get("X-RateLimit-Reset")
    if reset:
        try:
            value = float(reset)
            # Epoch seconds (Opendatasoft) or a number of seconds to wait.
            return max(0.0, value - time.time()) if value > 1e9 else value
        except ValueError:
            try:
                when = datetime.fromisoformat(reset.replace("Z", "+00:00"))
                return max(0.0, (when - datetime.now(UTC)).total_seconds())
            except ValueError:
                return None
    return None


class Fetcher:
    """GETs with the source's polling state; one per process, sharing a session.

    `for_poll` gives one poll its own view: the bytes it read (failed attempts
    included) and its deadline, which every attempt and retry must fit in.
    """

    def __init__(
        self, session: aiohttp.ClientSession, policy: FetchPolicy = FetchPolicy(), deadline: float | None = None
    ):
        self.session = session
        self.policy = policy
        self.deadline = deadline  # loop time after which no attempt starts or goes on
        self.bytes_read = 0

    def for_poll(self, seconds: float | None) -> Fetcher:
        loop = asyncio.get_running_loop()
        return Fetcher(self.session, self.policy, None if seconds is None else loop.time() + seconds)

    def _time_left(self) -> float | None:
        return None if self.deadline is None else self.deadline - asyncio.get_running_loop().time()

    async def get(
        self,
        source_id: str,
        url: str,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
        headers: dict[str, str] | None = None,
        policy: FetchPolicy | None = None,
        error_detail: Callable[[int, bytes], str] | None = None,
    ) -> Fetched:
        policy = policy or self.policy
        request_headers = {"Accept-Encoding": "gzip, deflate", **(headers or {})}
        if etag:
            request_headers["If-None-Match"] = etag
        if last_modified:
            request_headers["If-Modified-Since"] = last_modified
        last_reason, status, delay = "no attempt made", None, 0.0
        start = self.bytes_read
        for attempt in range(policy.retries + 1):
            if attempt:
                left = self._time_left()
                if left is not None and left <= delay:
                    raise FetchError(
                        source_id,
                        url,
                        f"{last_reason} (after {attempt} attempt(s); no time left "
                        "for another within the poll's deadline)",
                        status,
                        self.bytes_read - start,
                    )
                await asyncio.sleep(delay)
            timeout = policy.timeout
            left = self._time_left()
            if left is not None:
                timeout = min(timeout, max(left, 0.001))
            try:
                return await self._once(source_id, url, request_headers, policy, attempt + 1, error_detail, timeout)
            except _Retry as retry:
                last_reason, status = retry.reason, retry.status
                delay = retry_delay(attempt, policy, retry.headers)
            except FetchError as err:
                err.bytes_read = self.bytes_read - start
                raise
            except TRANSPORT_ERRORS as err:
                last_reason, status = _describe(err, timeout), None
                delay = retry_delay(attempt, policy)
        raise FetchError(
            source_id, url, f"{last_reason} (after {policy.retries + 1} attempts)", status, self.bytes_read - start
        )

    async def _once(
        self,
        source_id: str,
        url: str,
        headers: dict[str, str],
        policy: FetchPolicy,
        attempt: int,
        error_detail: Callable[[int, bytes], str] | None,
        seconds: float,
    ) -> Fetched:
        timeout = aiohttp.ClientTimeout(total=seconds)
        async with self.session.get(url, headers=headers, timeout=timeout) as resp:
            if resp.status == 304:
                return Fetched(304, None, resp.headers.get("ETag"), resp.headers.get("Last-Modified"), attempt)
            if resp.status in RETRY_STATUSES or resp.status >= 400:
                excerpt = await resp.content.read(64 * 1024)
                self.bytes_read += len(excerpt)
                detail = error_detail(resp.status, excerpt) if error_detail else _excerpt(excerpt)
                reason = f"HTTP {resp.status}: {detail}"
                if resp.status in RETRY_STATUSES:
                    raise _Retry(reason, resp.status, dict(resp.headers))
                raise FetchError(source_id, url, reason, resp.status)
            declared = resp.content_length
            if declared is not None and resp.headers.get("Content-Encoding") is None and declared > policy.max_bytes:
                raise FetchError(source_id, url, f"body of {declared} bytes exceeds the limit of {policy.max_bytes}")
            body = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - handed to Fetched, which closes it
            size = 0
            try:
                async for chunk in resp.content.iter_chunked(256 * 1024):
                    size += len(chunk)
                    self.bytes_read += len(chunk)
                    if size > policy.max_bytes:
                        raise FetchError(
                            source_id,
                            url,
                            f"body exceeds the limit of {policy.max_bytes} bytes (after decompression)",
                            resp.status,
                        )
                    body.write(chunk)
            except BaseException:
                body.close()
                raise
            body.seek(0)
            return Fetched(resp.status, body, resp.headers.get("ETag"), resp.headers.get("Last-Modified"), attempt)


class _Retry(InputError):
    def __init__(self, reason: str, status: int, headers: dict[str, str]):
        self.reason = reason
        self.status = status
        self.headers = headers


def _describe(err: BaseException, seconds: float) -> str:
    if isinstance(err, TimeoutError):
        return f"no complete answer within {seconds:.3g} s"
    if isinstance(err, aiohttp.ClientPayloadError):
        return f"body cut short or corrupt ({err})"
    if isinstance(err, aiohttp.ClientResponseError):
        return f"unreadable response ({err.message or type(err).__name__})"
    if isinstance(err, aiohttp.ClientConnectionError | OSError):
        return f"connection failed ({err or type(err).__name__})"
    return f"transport fault ({type(err).__name__}: {err})"


def _excerpt(data: bytes) -> str:
    text = data[:300].decode("utf-8", "replace").strip()
    return text or "(empty body)"
