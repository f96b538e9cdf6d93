"""The explorer's images over HTTP: tornado handlers for sample images and colour-map previews, and their URLs.

The browser fetches a sample's image from `/relaylab/img/<key>/<sample>.png?mode=..&colormap=..&attribution=..`, where
<key> names a project registered in `ProjectData` (a hash, never a path taken from the URL), and a colour map's gradient
from `/relaylab/colormap/<name>.png`. Unknown projects, samples, attribution sets, colour maps and modes get a 4xx and a
one-line text message. Responses carry `Cache-Control: private, max-age=3600` and the content hash as ETag;
`If-None-Match` gets a 304. PNGs are rendered off the server's event loop, and cached by `ProjectData.png`.

One code path for both entry points. `relaylab serve` (`pn.serve`) and `panel serve apps/explorer.py` both run the app
on a Bokeh `BokehTornado` (a `tornado.web.Application`), but `panel serve` offers no way for the app script to pass
`extra_patterns` (only the `--plugins` flag, which users forget). So `install_routes()`, called when the first session
asks for an image URL, finds the running BokehTornado(s) of this process (one scan of the garbage collector's objects,
once per server) and adds the routes with tornado's public `Application.add_handlers`; later sessions reuse them (a
server started with `pn.serve(extra_patterns=routes())` already has them and gets nothing added). Where no server is
running (a notebook, `save()` to static HTML), `image_url` returns a `data:` URI of the same cached PNG instead.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import logging
import weakref
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import tornado.ioloop
from bokeh.server.auth_provider import NullAuth
from bokeh.server.views.auth_request_handler import AuthRequestHandler

from ..errors import RelaylabError
from .colormaps import DEFAULT_COLORMAP, check_colormap
from .data import ProjectData
from .render import check_attributed, check_mode, check_sample, colormap_preview_png

log = logging.getLogger(__name__)

QUERY_LIMITS = {"mode": 32, "colormap": 64, "attribution": 256, "width": 8, "height": 8}  # name → longest value accepted
IMAGE_ROUTE = r"/relaylab/img/([^/]+)/([^/]+)\.png"
COLORMAP_ROUTE = r"/relaylab/colormap/([^/]+)\.png"
CACHE_CONTROL = "private, max-age=3600"
_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="relaylab-img")
_served_apps: weakref.WeakSet = weakref.WeakSet()
_prefixes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # ApplicationContext → URL prefix (None: no server)


class ImageHandler(AuthRequestHandler):
    """GET /relaylab/img/<project key>/<sample>.png?mode=...&colormap=...&attribution=... → PNG with ETag.

    With a login configured (`relaylab serve --basic-auth/--oauth-*`), requests without a logged-in user get 401: the
    handler asks the server's auth provider, as Bokeh's own page and websocket handlers do."""

    def fail(self, status: int, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(message + "\n")

    async def prepare(self) -> None:
        await super().prepare()  # AuthRequestHandler: the current user from the auth provider (async providers too)
        provider = getattr(self.application, "auth_provider", None)
        if provider is not None and not isinstance(provider, NullAuth) and not self.current_user:
            self.fail(401, "authentication required: log in to the explorer first")
            return
        for name, value in self.request.query_arguments.items():
            if name not in QUERY_LIMITS:
                return self.fail(400, f"{name}: not a parameter of this route (expected {', '.join(QUERY_LIMITS)})")
            if len(value) != 1 or len(value[0]) > QUERY_LIMITS[name]:
                return self.fail(400, f"{name}: expected one value of at most {QUERY_LIMITS[name]} characters")

    async def get(self, key: str, sample_text: str) -> None:
        loop = tornado.ioloop.IOLoop.current()
        data = await loop.run_in_executor(_executor, ProjectData.registered, key) if len(key) <= 64 else None
        if data is None:
            return self.fail(404, f"unknown project '{key}': this server serves only the projects it was started with")
        mode = self.get_argument("mode", "input")
        colormap = self.get_argument("colormap", DEFAULT_COLORMAP)
        attribution = self.get_argument("attribution", None)
        if not sample_text.isdigit() or len(sample_text) > 18:
            return self.fail(400, f"sample: expected a non-negative integer sample index (found {sample_text[:40]!r})")
        sample = int(sample_text)
        try:
            check_mode(mode)
            check_colormap(colormap)
        except RelaylabError as error:
            return self.fail(400, str(error))
        try:
            check_sample(data.project, sample)
            if mode != "input":
                check_attributed(data.project, sample, attribution)
            png, etag = await loop.run_in_executor(_executor, data.png, sample, mode, colormap, attribution)
        except RelaylabError as error:
            return self.fail(404, str(error))
        self.send_png(png, etag)

    def send_png(self, png: bytes, etag: str) -> None:
        self.set_header("Cache-Control", CACHE_CONTROL)
        self.set_header("Etag", f'"{etag}"')
        if self.check_etag_header():
            self.set_status(304)
            return self.finish()
        self.set_header("Content-Type", "image/png")
        self.finish(png)

    def compute_etag(self) -> None:
        """ETags are content hashes set by `send_png`; tornado must not hash error messages."""
        return None


class ColormapHandler(ImageHandler):
    """GET /relaylab/colormap/<name>.png?width=256&height=16 → the colour map's gradient."""

    async def get(self, name: str) -> None:
        try:
            check_colormap(name)
        except RelaylabError as error:
            return self.fail(400, str(error))
        try:
            width, height = int(self.get_argument("width", "256")), int(self.get_argument("height", "16"))
        except ValueError:
            return self.fail(400, "width, height: expected integers (pixels)")
        if not (1 <= width <= 4096 and 1 <= height <= 4096):
            return self.fail(400, f"width, height: expected 1..4096 (found {width}, {height})")
        png = colormap_preview_png(name, width, height)
        self.send_png(png, hashlib.sha256(png).hexdigest()[:32])


_release_pending = False


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc keeps them otherwise, so a server's RSS would
    only grow): after sessions closed."""
    global _release_pending
    _release_pending = False
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): the collector alone
        pass


def release_memory_soon(delay: float = 1.0) -> None:
    """`release_memory` once, `delay` seconds from now on the server's event loop (sessions closing together share it)."""
    global _release_pending
    if _release_pending:
        return
    _release_pending = True
    tornado.ioloop.IOLoop.current().call_later(delay, release_memory)


def routes(prefix: str = "") -> list[tuple]:
    """The tornado routes; `install_routes` adds them, and `pn.serve(extra_patterns=routes())` may pass them up front."""
    return [(prefix + IMAGE_ROUTE, ImageHandler), (prefix + COLORMAP_ROUTE, ColormapHandler)]


def has_routes(app) -> bool:
    return any(getattr(rule, "target", None) is ImageHandler for rule in app.wildcard_router.rules)


def _current_application_context():
    """The Bokeh ApplicationContext of the session being served, or None (notebook, static export, no session)."""
    import panel as pn

    doc = pn.state.curdoc
    context = doc.session_context if doc is not None else None
    server = getattr(context, "server_context", None) if context is not None else None
    return server.application_context if server is not None else None


def install_routes() -> str | None:
    """Add the image routes to the Bokeh server running the current session, once per server; the URL prefix to use
    (the server's --prefix), or None when no server runs this session."""
    from bokeh.server.tornado import BokehTornado

    context = _current_application_context()
    if context is None:
        return None
    if context in _prefixes:
        return _prefixes[context]
    serving = lambda app: any(c is context for c in app.applications.values())
    # type(obj), not isinstance: isinstance reads obj.__class__, which some module proxies (torch) answer with a warning
    found = (obj for obj in gc.get_objects() if issubclass(type(obj), BokehTornado) and serving(obj))
    servers = [app for app in _served_apps if serving(app)] or list(found)
    for app in servers:
        if app not in _served_apps and not has_routes(app):  # not installed by an earlier session, nor given as extra_patterns
            app.add_handlers(r".*", routes(app.prefix))
            log.info("image routes installed on the server at prefix '%s'", app.prefix)
        _served_apps.add(app)
    _prefixes[context] = servers[0].prefix if servers else None
    if not servers:
        log.warning("no running Bokeh server found for this session; images are sent as data: URIs")
    return _prefixes[context]


def image_url(data: ProjectData, sample: int, mode: str = "attribution", colormap: str = DEFAULT_COLORMAP,
              attribution: str | None = None) -> str:
    """A URL the browser can cache (inside a served session), else a `data:` URI of the same PNG."""
    prefix = install_routes()
    if prefix is None:
        png, _ = data.png(sample, mode, colormap, attribution)
        return "data:image/png;base64," + base64.b64encode(png).decode()
    query = {"mode": mode}
    if mode != "input":
        query["colormap"] = colormap
        if attribution is not None:
            query["attribution"] = attribution
    return f"{prefix}/relaylab/img/{data.register()}/{int(sample)}.png?{urlencode(query)}"


def colormap_url(name: str, width: int = 256, height: int = 16) -> str:
    prefix = install_routes()
    if prefix is None:
        return "data:image/png;base64," + base64.b64encode(colormap_preview_png(name, width, height)).decode()
    return f"{prefix}/relaylab/colormap/{name}.png?{urlencode({'width': width, 'height': height})}"
