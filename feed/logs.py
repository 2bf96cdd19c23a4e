"""Log set-up: human text (the default) or JSON lines for log collectors.

`--log-format json` (or `ROADFEED_LOG_FORMAT=json`) writes one JSON object per
line on stderr: `time` (UTC, ISO 8601), `level`, `logger`, `message`, and the
record's structured fields when it has some (`extra={"fields": {...}}`: a poll
report gives `event: "poll"`, `source`, `run_id`, `ok`, `http_status`, `new`,
`updated`, `unchanged`, `quarantined`, `bytes`, `duration_s`, `error`,
`watermark`), plus `exception` with the traceback when there is one.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

__all__ = ["ENV_VAR", "FORMATS", "JsonFormatter", "ThrottledLog", "resolve_format", "setup_logging"]

ENV_VAR = "ROADFEED_LOG_FORMAT"
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_RESERVED = {"time", "level", "logger", "message"}


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (as logging's last resort does)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            document.update((k, v) for k, v in fields.items() if k not in _RESERVED)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        return json.dumps(document, ensure_ascii=False, default=str)


def resolve_format(option: str | None) -> str:
    """The command-line option, else ROADFEED_LOG_FORMAT, else text; ValueError when unknown."""
    chosen = (option or os.environ.get(ENV_VAR) or "text").strip().lower()
    if chosen not in FORMATS:
        raise ValueError(f"log format {chosen!r}: expected text or json")
    return chosen


def setup_logging(log_format: str = "text", level: int = logging.INFO) -> None:
    """One handler on stderr in `log_format` (replacing ours from an earlier call; others' stay)."""
    handler = _Stderr()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    handler.set_name("roadfeed")
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "roadfeed":
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


class ThrottledLog:
    """One line per `interval` seconds and kind at most: what any client can cause
    (a refused request, a database outage seen by every request) must not flood the logs.
    The lines held back are counted in the next one written."""

    def __init__(
        self, logger: logging.Logger, interval: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, kind: str, message: str) -> bool:
        """Writes `message` (one line, no traceback) unless `kind` was written less than
        `interval` seconds ago; True when written."""
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._held[kind] = self._held.get(kind, 0) + 1
            return False
        if len(self._last) > 1000:  # kinds are few; never grow on hostile input
            self._last.clear()
        self._last[kind] = now
        held = self._held.pop(kind, 0)
        suffix = f" ({held} more like this in the last {self.interval:g} s not logged)" if held else ""
        self.logger.warning("%s%s", message.replace("\n", " ").replace("\r", " "), suffix)
        return True
