"""The web page at `/` and its assets under `/static/`.

`scripts/build-web` builds the page from `web/` into `feed/webassets/` (not
committed: it is rebuilt by `make demo` and `make test`): `index.html`, bundles
whose names carry a hash of their content, their gzip and Brotli variants, and
`manifest.json` listing them. Hashed files never change, so browsers keep them
for a year; `index.html` is filled in per request (language, time zone, coverage
threshold, optional tile server) and revalidated every time, so a new build is
picked up at once. `/static/herault.geojson` is the département outline, the
map's base layer: no tile server is needed.

A tile layer is drawn only when `ROADFEED_TILE_URL` is set (a Leaflet URL
template such as `https://tiles.example.org/{z}/{x}/{y}.png`, with
`ROADFEED_TILE_ATTRIBUTION`); the page's Content-Security-Policy then allows
images from that origin and nothing else outside this server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from feed.http.responses import negotiate_encoding
from feed.publish.render import compress_variants

__all__ = [
    "ASSETS_DIR",
    "LANGUAGES",
    "OUTLINE_PATH",
    "WebAssets",
    "content_security_policy",
    "make_web_routes",
    "page_config",
    "render_index",
    "web_routes",
]

log = logging.getLogger("roadfeed.webpage")

ASSETS_DIR = Path(__file__).resolve().parents[1] / "webassets"
OUTLINE_PATH = Path(__file__).resolve().parents[1] / "data" / "herault.geojson"
LANGUAGES = ("fr", "en")
TILE_URL_ENV = "ROADFEED_TILE_URL"
TILE_ATTRIBUTION_ENV = "ROADFEED_TILE_ATTRIBUTION"

IMMUTABLE = "public, max-age=31536000, immutable"
SHORT = "public, max-age=300"
OUTLINE_CACHE = "public, max-age=86400"
CONFIG_MARKER = "<!--roadfeed:config-->"
NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>roadfeed: web page not built</title></head>
<body><h1>The web page is not built</h1>
<p>Run <code>scripts/build-web</code> (<code>make demo</code> and <code>make test</code> do it).
The API (<a href="/api/v1/openapi.json">/api/v1/</a>) and the live feeds
(<a href="/feeds/status.json">/feeds/</a>) work without it.</p></body></html>
"""


@dataclass(frozen=True, slots=True)
class WebAssets:
    """One build of the page: its index template and the files it may serve."""

    directory: Path
    index: str
    files: frozenset[str]
    immutable: frozenset[str]
    stamp: float  # manifest.json's mtime, to notice a new build

    @classmethod
    def load(cls, directory: Path) -> WebAssets | None:
        """The build in `directory`, or None when there is none (or only half of one)."""
        try:
            manifest_path = directory / "manifest.json"
            stamp = manifest_path.stat().st_mtime
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            index = (directory / "index.html").read_text(encoding="utf-8")
        except (OSError, ValueError):
            return None
        files = frozenset(manifest.get("files", []))
        return cls(directory, index, files, frozenset(manifest.get("immutable", [])) & files, stamp)


def page_config(config: Any, lang: str, tile_url: str | None, tile_attribution: str | None) -> dict[str, Any]:
    """What the page's script needs to know from the server's configuration."""
    publication = config.publication
    return {
        "lang": lang,
        "timezone": publication.timezone,
        "coverage_threshold": publication.coverage_threshold,
        "publisher": publication.publisher,
        "licence": publication.licence,
        "licence_url": publication.licence_url,
        "tile_url": tile_url,
        "tile_attribution": tile_attribution,
    }


def render_index(template: str, lang: str, settings: dict[str, Any]) -> bytes:
    """index.html in `lang`, with `settings` as an inert JSON script element."""
    data = json.dumps(settings, ensure_ascii=False).replace("<", "\\u003c").replace("&", "\\u0026")
    html = template.replace('<html lang="fr">', f'<html lang="{lang}">', 1)
    html = html.replace(CONFIG_MARKER, f'<script type="application/json" id="roadfeed-config">{data}</script>', 1)
    return html.encode()


def content_security_policy(tile_url: str | None) -> str:
    """Everything from this server only; map tiles also from the configured tile server."""
    images = "'self' data:"
    if tile_url:
        parts = urlsplit(tile_url.replace("{s}", "a"))
        if parts.scheme in ("http", "https") and parts.netloc:
            host = parts.netloc if "{s}" not in tile_url else "*." + parts.netloc.split(".", 1)[-1]
            images += f" {parts.scheme}://{host}"
    return "; ".join(
        [
            "default-src 'self'",
            f"img-src {images}",
            "style-src 'self'",
            "script-src 'self'",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'self'",
        ]
    )


def make_web_routes(
    directory: Path = ASSETS_DIR, outline_path: Path = OUTLINE_PATH
) -> Callable[[web.Application, Any], None]:
    """A RouteSetup serving the build in `directory` (tests point it elsewhere)."""

    def setup(app: web.Application, ctx: Any) -> None:
        tile_url = os.environ.get(TILE_URL_ENV) or None
        tile_attribution = os.environ.get(TILE_ATTRIBUTION_ENV) or None
        csp = content_security_policy(tile_url)
        outline = outline_path.read_bytes()
        outline_variants = compress_variants(outline)
        outline_etag = '"' + hashlib.blake2b(outline, digest_size=16).hexdigest() + '"'
        current: list[WebAssets | None] = [WebAssets.load(directory)]

        def assets() -> WebAssets | None:
            """The current build, reloaded when scripts/build-web has run again."""
            built = current[0]
            try:
                stamp = (directory / "manifest.json").stat().st_mtime
            except OSError:
                stamp = None
            if built is None or stamp != built.stamp:
                current[0] = built = WebAssets.load(directory)
            return built

        async def index(request: web.Request) -> web.StreamResponse:
            built = assets()
            if built is None:
                log.warning("web page requested but not built in %s (run scripts/build-web)", directory)
                return web.Response(
                    status=503,
                    text=NOT_BUILT,
                    content_type="text/html",
                    headers={"Cache-Control": "no-store", "Retry-After": "60"},
                )
            asked = request.query.get("lang", "")
            lang = asked if asked in LANGUAGES else LANGUAGES[0]
            body = render_index(built.index, lang, page_config(ctx.config, lang, tile_url, tile_attribution))
            etag = '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'
            headers = {
                "Cache-Control": "no-cache",
                "ETag": etag,
                "Content-Language": lang,
                "Content-Security-Policy": csp,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "same-origin",
            }
            if etag in request.headers.get("If-None-Match", ""):
                return web.Response(status=304, headers=headers)
            response = web.Response(body=body, content_type="text/html", charset="utf-8", headers=headers)
            response.enable_compression()
            return response

        async def outline_handler(request: web.Request) -> web.Response:
            headers = {
                "Cache-Control": OUTLINE_CACHE,
                "ETag": outline_etag,
                "Vary": "Accept-Encoding",
                "X-Content-Type-Options": "nosniff",
            }
            if outline_etag in request.headers.get("If-None-Match", ""):
                return web.Response(status=304, headers=headers)
            coding = negotiate_encoding(request.headers.get("Accept-Encoding"), outline_variants)
            body = outline if coding == "identity" else outline_variants[coding]
            if coding != "identity":
                headers["Content-Encoding"] = coding
            return web.Response(body=body, headers={**headers, "Content-Type": "application/geo+json"})

        async def static(request: web.Request) -> web.StreamResponse:
            name = request.match_info["name"]
            built = assets()
            if built is None or name not in built.files:
                raise web.HTTPNotFound(text=f"no such file: /static/{name}\n")
            response = web.FileResponse(built.directory / name)
            response.headers["Cache-Control"] = IMMUTABLE if name in built.immutable else SHORT
            response.headers["Vary"] = "Accept-Encoding"
            response.headers["X-Content-Type-Options"] = "nosniff"
            return response

        app.router.add_get("/", index)
        app.router.add_get("/static/herault.geojson", outline_handler)
        app.router.add_get("/static/{name}", static)

    return setup


web_routes = make_web_routes()
web_routes.__doc__ = "`/` (the web page), `/static/herault.geojson` and the built assets under `/static/`."
