"""The one error tree: every exception class of feed/, collectors/ and exporters/ derives
from `RoadfeedError`, so a caller can catch one branch, and the tree is read here:

    RoadfeedError
    ├── ConfigError                  the configuration cannot be used (feed.config)
    │   └── MappingError             a source's field mapping (collectors.opendatasoft_parse)
    ├── InputError                   what comes in from outside cannot be used
    │   ├── FetchError               a source cannot be fetched, after retries (collectors.fetch)
    │   ├── ParseError               a whole file or response cannot be read (every parser)
    │   ├── ReferentialError         a road referential file cannot be imported (feed.store.roads)
    │   ├── OffRoad                  a position the road referential cannot place (feed.store.roads)
    │   ├── AgentError               an account operation refused (feed.http.agents)
    │   └── OdsError                 a query the simulated Opendatasoft portal refuses (feed.simulator)
    ├── StorageError                 the database cannot be used
    │   ├── ClusterError             the embedded PostgreSQL cluster (feed.store.cluster)
    │   ├── NoDatabase               no database configured and none running (feed.store.embedded)
    │   ├── MigrationError           a migration cannot be applied (feed.store.migrations)
    │   └── NotMigrated              the database has no roadfeed schema yet (feed.server.service)
    ├── PublishError                 something cannot be published
    │   ├── NothingToPublish         a DATEX II document without any record (exporters.datex2_v3)
    │   ├── ExportError              the static export cannot be written (feed.publish.static_export)
    │   └── PushError                the MQTT broker refused or went away (feed.publish.mqtt)
    └── RequestError                 a request refused; feed.http.errors maps each to its status
        ├── BadRequest               400
        │   └── BadParameter         400, naming the parameter, its value and what was expected
        ├── Unauthorized             401
        ├── Forbidden                403
        ├── NotFound                 404
        ├── Conflict                 409
        ├── TooManyRequests          429
        └── Unavailable              503 (the database, a download slot, the statement timeout)

Private classes that carry control flow inside one module (a record refused and
quarantined, a response to retry, a stream cut) derive from the branch they belong to.
Classes raised by several modules are defined here; the others stay in their module.
Classes that were a `ValueError` stay one too, so existing `except ValueError` still holds.

The request errors are plain Python: what was refused and why, no HTTP. Their statuses,
headers and JSON bodies are made in one place, feed.http.errors.
"""

from __future__ import annotations

import re

__all__ = [
    "MAX_ECHO",
    "BadParameter",
    "BadRequest",
    "ConfigError",
    "Conflict",
    "Forbidden",
    "InputError",
    "NotFound",
    "ParseError",
    "PublishError",
    "RequestError",
    "RoadfeedError",
    "StorageError",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "printable",
]


class RoadfeedError(Exception):
    """The root of every error this project raises."""


class ConfigError(RoadfeedError):
    """The configuration file cannot be used; the message says where and why."""


class InputError(RoadfeedError):
    """What comes in from outside (a source, a file, an agent's entry) cannot be used."""


class ParseError(InputError):
    """A whole file or response cannot be read (as opposed to one bad record, which is
    quarantined); records yielded before it stand.

    `document` names what was refused when the message should say it
    ("src: DATEX II document refused at line 3: reason"); without it the message is
    "src: line 3: reason"."""

    def __init__(self, source: str, reason: str, line: int | None = None, *, document: str | None = None) -> None:
        self.source = source
        self.reason = reason
        self.line = line
        if document is not None:
            at = f" at line {line}" if line else ""
            message = f"{source}: {document} refused{at}: {reason}"
        else:
            where = f"{source}: " if source else ""
            at = f"line {line}: " if line is not None else ""
            message = f"{where}{at}{reason}"
        super().__init__(message)

    @property
    def source_id(self) -> str:
        """`source` under the name the DATEX II parser and the polls give it."""
        return self.source


class StorageError(RoadfeedError):
    """The database cannot be used: absent, not running, or not in the state expected."""


class PublishError(RoadfeedError):
    """Something cannot be published: rendered, exported or pushed."""


# --------------------------------------------------------------------------- requests


MAX_ECHO = 200  # characters of a refused value echoed in the error
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def printable(text: str) -> str:
    """`text` as an error may echo it: control characters and lone surrogates escaped
    (a JSON body must encode as UTF-8), at most MAX_ECHO characters."""
    if len(text) > MAX_ECHO:
        text = text[:MAX_ECHO] + "…"
    if _UNPRINTABLE.search(text) is None:
        return text
    return _UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class RequestError(RoadfeedError):
    """A request refused: `code` names the refusal, `detail` explains it; `parameter`,
    `value` and `expected` say what to change when one part of the request is at fault.
    `retry_after` (seconds) when asking again later can succeed."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        parameter: str | None = None,
        value: str | None = None,
        expected: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.parameter = parameter
        self.value = value
        self.expected = expected
        self.retry_after = retry_after

    def as_json(self) -> dict[str, str | None]:
        """The error document every refusal answers with."""
        return {
            "error": self.code,
            "parameter": self.parameter,
            "value": self.value,
            "expected": self.expected,
            "detail": self.detail,
        }


class BadRequest(RequestError):
    """The request as a whole cannot be used."""


class BadParameter(BadRequest, ValueError):
    """A parameter (of the query, the path or the body) that cannot be used; echoed printable."""

    def __init__(self, parameter: str, value: str, expected: str, detail: str) -> None:
        super().__init__(
            "invalid_parameter", detail, parameter=printable(parameter), value=printable(value), expected=expected
        )
        self.detail = printable(detail)  # the message keeps the text as given; the body echoes it printable


class Unauthorized(RequestError):
    """No valid credentials. `realm`: the Bearer realm to challenge with, if any."""

    def __init__(self, code: str, detail: str, *, realm: str | None = None) -> None:
        super().__init__(code, detail)
        self.realm = realm


class Forbidden(RequestError):
    """Credentials that do not allow this request (or a route switched off)."""


class NotFound(RequestError):
    """No such item: names the parameter, the value and what would be found."""

    def __init__(self, parameter: str, value: str, expected: str, detail: str) -> None:
        super().__init__("not_found", detail, parameter=parameter, value=value, expected=expected)


class Conflict(RequestError):
    """The item's state, or the process's, does not allow this now."""


class TooManyRequests(RequestError):
    """A client over its rate limit."""


class Unavailable(RequestError):
    """The request cannot be answered now: the database away or too slow, every slot busy."""
