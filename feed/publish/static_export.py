"""Feeds written as static files, for a CDN or a plain web server to publish.

`export_feeds` renders every live feed exactly as `roadfeed serve` does (the same
`FeedPublisher`, so the same bytes and ETags) and writes each body, its gzip form
(`.gz`, for nginx `gzip_static` and CDNs) and an `index.json` into a directory.
Every file is written to a temporary name and renamed into place, and the index
last, so a reader never sees a half-written file and an index only lists files
that are there. Unchanged feeds are not rewritten (their mtime stays).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from feed.config import Config
from feed.errors import PublishError
from feed.publish.publisher import FeedPublisher
from feed.publish.render import GZIP_LEVEL, RenderedFeed
from feed.store.storage import Storage

INDEX = "index.json"


class ExportError(PublishError):
    """The feeds could not be rendered in time."""


def _write_atomic(target: Path, data: bytes) -> bool:
    """Writes `data` at `target` by rename; False (and nothing written) when it is already there."""
    try:
        if target.stat().st_size == len(data) and target.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def write_feeds(
    feeds: Mapping[str, RenderedFeed], directory: str | Path, *, exported_at: datetime | None = None
) -> dict[str, Any]:
    """Writes each feed at `directory` + its path (e.g. feeds/events.geojson), its
    `.gz`, then `index.json`; returns the index."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for path, feed in sorted(feeds.items()):
        relative = path.lstrip("/")
        if not relative or ".." in Path(relative).parts:
            raise ValueError(f"feed path {path!r} cannot be written under {root}")
        zipped = feed.encoded.get("gzip") or gzip.compress(feed.body, compresslevel=GZIP_LEVEL, mtime=0)
        _write_atomic(root / relative, feed.body)
        _write_atomic(root / (relative + ".gz"), zipped)
        entries.append(
            {
                "path": path,
                "file": relative,
                "content_type": feed.content_type,
                "etag": feed.etag,
                "last_modified": feed.last_modified_http,
                "published_at": feed.published_at.isoformat(),
                "bytes": len(feed.body),
                "gzip_bytes": len(zipped),
                "sha256": hashlib.sha256(feed.body).hexdigest(),
            }
        )
    index = {"exported_at": (exported_at or datetime.now(UTC)).isoformat(), "feeds": entries}
    previous = _read_index(root)
    if previous is None or previous.get("feeds") != entries:
        _write_atomic(root / INDEX, json.dumps(index, indent=1, ensure_ascii=False).encode() + b"\n")
        return index
    return previous


def _read_index(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / INDEX).read_text())
    except (FileNotFoundError, ValueError):
        return None


async def export_feeds(
    storage: Storage, config: Config, directory: str | Path, *, timeout: float = 120.0
) -> dict[str, Any]:
    """Renders every feed from the database once and writes them (see `write_feeds`).

    Feeds with nothing to publish (e.g. no sites yet) are left out of the index."""
    publisher = FeedPublisher(storage, config)
    await publisher.start()
    try:
        if not await publisher.wait_ready(timeout):
            raise ExportError(f"feeds not rendered within {timeout:g} s: {', '.join(publisher.pending_paths())}")
        feeds = {path: publisher.state(path).current for path in publisher.paths}
    finally:
        await publisher.stop()
    return write_feeds({p: f for p, f in feeds.items() if f is not None}, directory)
