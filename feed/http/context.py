"""What every handler may need: the application's shared objects, and the shape of a route set-up.

Route modules import this, never feed.http.app: only the application imports the
route modules, so the HTTP package has no import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from feed.config import Config
from feed.publish.publisher import FeedPublisher
from feed.store.storage import Storage

__all__ = ["CONTEXT", "AppContext", "RouteSetup"]


@dataclass(frozen=True, slots=True)
class AppContext:
    """What every handler may need, shared by the whole application."""

    config: Config
    storage: Storage
    publisher: FeedPublisher


CONTEXT = web.AppKey("context", AppContext)
RouteSetup = Callable[[web.Application, AppContext], None]
