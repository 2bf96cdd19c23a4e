"""The agents' page at `/agents`: plain files (no build step), same-origin only.

It works through the public /api/v1 routes with the session cookie and its CSRF
token, like any script would with a personal token.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from feed.http.context import AppContext

__all__ = ["agent_page_routes"]

FILES = Path(__file__).with_name("agentpage")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
TYPES = {"index.html": "text/html", "agents.js": "text/javascript", "agents.css": "text/css"}


def agent_page_routes(app: web.Application, _ctx: AppContext) -> None:
    def serve(name: str) -> web.Response:
        body = (FILES / name).read_bytes()
        return web.Response(
            body=body,
            content_type=TYPES[name],
            charset="utf-8",
            headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP},
        )

    async def index(_request: web.Request) -> web.Response:
        return serve("index.html")

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in TYPES or name == "index.html":
            raise web.HTTPNotFound()
        return serve(name)

    app.router.add_get("/agents", index)
    app.router.add_get("/agents/{name}", asset)
