"""Sample images for the explorer: ViRelAy's and zennit's colour maps, heatmaps, overlays, lossless PNGs, and serving.

Rendering. An attribution is summed over channels and divided by max |a| (ViRelAy divides three of its maps by max(a),
which inverts or overflows all-negative maps; an all-zero map divides by zero). An all-zero (or non-finite) map renders
as the colour map's colour for 0, never NaN. Colour maps take values in [-1, 1] and give RGBA uint8, computed exactly as
ViRelAy 0.6.1 (`virelay/image_processing.py`, and matplotlib's bwr/afmhot/jet/seismic look-up tables it calls) and
zennit (`zennit.image.imgify(..., vmin=-1, vmax=1)` on its 256-colour palettes) compute them. Overlay mode blends the
heatmap over a greyscale copy of the input with alpha 0.9 |a| / max |a|, as ViRelAy does. Images are PNG (lossless),
not ViRelAy's quality-70 JPEG.

Caching and serving. Rendered PNGs live in a process-wide LRU keyed by (project path, attribution set, sample, mode,
colour map), each with its content hash as ETag. The browser fetches them from `/relaylab/img/<key>/<sample>.png` where
<key> is a registry key (`register_project`): the handler serves only projects the app registered, never a path taken
from the URL, and answers unknown projects, samples, attribution sets, colour maps and modes with a 4xx and a one-line
text message. Responses carry `Cache-Control: private, max-age=3600` and an ETag; `If-None-Match` gets a 304. The cache
lives as long as the server process: a project rewritten on disk while served shows its old images until a restart.

One code path for both entry points. `relaylab serve` (`pn.serve`) and `panel serve apps/explorer.py` both run the app
on a Bokeh `BokehTornado` (a `tornado.web.Application`), but `panel serve` offers no way for the app script to pass
`extra_patterns` (only the `--plugins` flag, which users forget). So `install_routes()`, called when the first session
asks for an image URL, finds the running BokehTornado(s) of this process (one `gc` scan, ~0.2 s, once per server) and
adds the route with tornado's public `Application.add_handlers`; later sessions reuse it (a server started with
`pn.serve(extra_patterns=routes())` already has it and gets nothing added). Where no server is running
(a notebook, `save()` to static HTML), `image_url` returns a `data:` URI of the same cached PNG instead.
"""

from __future__ import annotations

import base64
import functools
import gc
import hashlib
import io
import logging
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import tornado.ioloop
import tornado.web
from PIL import Image

from ..data.hdf5 import guess_value_range
from ..data.project import Project, open_project
from ..errors import RelaylabError

log = logging.getLogger(__name__)

MODES = ("input", "attribution", "overlay")
SAMPLINGS = ("automatic", "smooth", "pixelated")
VIRELAY_COLORMAPS = ("gray-red", "black-green", "black-fire-red", "black-yellow", "blue-white-red", "afm-hot", "jet", "seismic")
DEFAULT_COLORMAP = "black-fire-red"
VIRELAY_DISPLAY_PX = 150  # ViRelAy's sample viewer switches to pixelated at shorter side <= 150 px (its hover preview: 128)
OVERLAY_OPACITY = 0.9

# ------------------------------------------------------------------------------------------------------ colour maps


def _rgba(rgb: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 1] → RGBA uint8, truncating as ViRelAy's `(heatmap * 255).astype(uint8)` does."""
    out = np.empty(rgb.shape[:-1] + (4,), dtype=np.uint8)
    out[..., :3] = (rgb * 255.0).astype(np.uint8)
    out[..., 3] = 255
    return out


def gray_red(x: np.ndarray) -> np.ndarray:
    base = 0.8
    neg = x < 0
    red = base + np.where(neg, x * base, x * (1 - base))
    green = base + np.where(neg, x * base, -x * base)
    blue = base + np.where(neg, -x * (1 - base), -x * base)
    return _rgba(np.stack([red, green, blue], axis=-1))


def black_green(x: np.ndarray) -> np.ndarray:
    zero = np.zeros_like(x)
    return _rgba(np.stack([zero, np.where(x >= 0, x, 0.0), np.where(x < 0, -x, 0.0)], axis=-1))


def black_yellow(x: np.ndarray) -> np.ndarray:
    positive = np.where(x >= 0, x, 0.0)
    return _rgba(np.stack([positive, positive, np.where(x < 0, -x, 0.0)], axis=-1))


def black_fire_red(x: np.ndarray) -> np.ndarray:
    red = np.clip(x - 0.00, 0, 0.25) / 0.25 + np.clip(-x - 0.50, 0, 0.50) / 0.50
    green = np.clip(x - 0.25, 0, 0.25) / 0.25 + np.clip(-x - 0.25, 0, 0.25) / 0.25
    blue = np.clip(x - 0.50, 0, 0.50) / 0.50 + np.clip(-x - 0.00, 0, 0.25) / 0.25
    return _rgba(np.stack([red, green, blue], axis=-1))


def _segment_lut(segments, n: int = 256) -> np.ndarray:
    """matplotlib's `_create_lookup_table` for (x, y0, y1) rows, or a function of x."""
    if callable(segments):
        return np.clip(np.array(segments(np.linspace(0, 1, n)), dtype=float), 0, 1)
    data = np.array(segments, dtype=float)
    x, y0, y1 = data[:, 0] * (n - 1), data[:, 1], data[:, 2]
    xind = (n - 1) * np.linspace(0, 1, n)
    ind = np.searchsorted(x, xind)[1:-1]
    distance = (xind[1:-1] - x[ind - 1]) / (x[ind] - x[ind - 1])
    return np.clip(np.concatenate([[y1[0]], distance * (y0[ind] - y1[ind - 1]) + y1[ind - 1], [y0[-1]]]), 0.0, 1.0)


def _from_list(colors) -> dict:
    """matplotlib's `LinearSegmentedColormap.from_list`: colours evenly spaced over [0, 1]."""
    values = np.linspace(0, 1, len(colors))
    rgb = np.array(colors, dtype=float)
    return {channel: np.column_stack([values, rgb[:, i], rgb[:, i]]) for i, channel in enumerate(("red", "green", "blue"))}


# matplotlib 3.x `_cm.py` definitions of the four maps ViRelAy takes from matplotlib.
MATPLOTLIB_SEGMENTS = {
    "bwr": _from_list(((0.0, 0.0, 1.0), (1.0, 1.0, 1.0), (1.0, 0.0, 0.0))),
    "seismic": _from_list(((0.0, 0.0, 0.3), (0.0, 0.0, 1.0), (1.0, 1.0, 1.0), (1.0, 0.0, 0.0), (0.5, 0.0, 0.0))),
    "afmhot": {"red": lambda x: 2 * x, "green": lambda x: 2 * x - 0.5, "blue": lambda x: 2 * x - 1},
    "jet": {
        "red": ((0.00, 0, 0), (0.35, 0, 0), (0.66, 1, 1), (0.89, 1, 1), (1.00, 0.5, 0.5)),
        "green": ((0.000, 0, 0), (0.125, 0, 0), (0.375, 1, 1), (0.640, 1, 1), (0.910, 0, 0), (1.000, 0, 0)),
        "blue": ((0.00, 0.5, 0.5), (0.11, 1, 1), (0.34, 1, 1), (0.65, 0, 0), (1.00, 0, 0)),
    },
}


def matplotlib_colormap(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """A map as ViRelAy applies matplotlib's: (x + 1) / 2 → index int(t · 256) (t = 1 → 255) into a 256-entry table."""
    segments = MATPLOTLIB_SEGMENTS[name]
    lut = np.stack([_segment_lut(segments[c]) for c in ("red", "green", "blue")], axis=-1)

    def apply(x: np.ndarray) -> np.ndarray:
        t = (x + 1.0) / 2.0 * 256
        t[t == 256] = 255
        return _rgba(lut[t.astype(int)])

    apply.__name__ = name
    return apply


# zennit.image.CMAPS, named here without importing zennit (which imports torch, ~5 s); `seismic` clashes with ViRelAy's.
ZENNIT_COLORMAPS = {"gray": "gray", "wred": "wred", "wblue": "wblue", "hot": "hot", "cold": "cold", "coldnhot": "coldnhot",
                    "bwr": "bwr", "france": "france", "zennit-seismic": "seismic", "coolio": "coolio", "coleus": "coleus"}


@functools.cache
def zennit_palette(name: str) -> np.ndarray:
    from zennit.image import CMAPS

    return CMAPS[name].palette(level=1.0)


def zennit_colormap(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """zennit's `imgify(x, vmin=-1, vmax=1, cmap=name)`: index ((x + 1) / 2 · 255) truncated into its 8-bit palette."""

    def apply(x: np.ndarray) -> np.ndarray:
        index = ((x - (-1.0)) / (1.0 - (-1.0)) * 255).clip(0, 255).astype(np.uint8)
        out = np.full(x.shape + (4,), 255, dtype=np.uint8)
        out[..., :3] = zennit_palette(name)[index]
        return out

    apply.__name__ = name
    return apply


COLORMAPS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gray-red": gray_red,
    "black-green": black_green,
    "black-fire-red": black_fire_red,
    "black-yellow": black_yellow,
    "blue-white-red": matplotlib_colormap("bwr"),
    "afm-hot": matplotlib_colormap("afmhot"),
    "jet": matplotlib_colormap("jet"),
    "seismic": matplotlib_colormap("seismic"),
    **{name: zennit_colormap(source) for name, source in ZENNIT_COLORMAPS.items()},
}


def check_colormap(name: str) -> None:
    if name not in COLORMAPS:
        raise RelaylabError.at("colormap", "", f"one of {', '.join(COLORMAPS)}", repr(name))


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise RelaylabError.at("mode", "", f"one of {', '.join(MODES)}", repr(mode))


# ------------------------------------------------------------------------------------------------------ heatmaps


def normalized(a: np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W) attribution → (H, W) float64 in [-1, 1]: summed over channels, divided by max |a|."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 3:
        a = a.sum(axis=0)
    a = np.where(np.isfinite(a), a, 0.0)
    peak = np.abs(a).max(initial=0.0)
    return a / peak if peak > 0 else np.zeros_like(a)


def heatmap_rgba(a: np.ndarray, colormap: str) -> np.ndarray:
    """(H, W, 4) uint8 heatmap; an all-zero map is the colour map's colour for 0 everywhere."""
    check_colormap(colormap)
    return COLORMAPS[colormap](normalized(a))


def overlay_rgba(image_rgb: np.ndarray, a: np.ndarray, colormap: str) -> np.ndarray:
    """ViRelAy's overlay: the heatmap blended over the greyscale input with alpha 0.9 |a| / max |a| (Pillow's composite)."""
    x = normalized(a)
    heat = Image.fromarray(heatmap_rgba(x, colormap)[..., :3])
    grey = Image.fromarray(image_rgb).convert("L").convert("RGB")
    mask = Image.fromarray((np.abs(x) * OVERLAY_OPACITY * 255).astype(np.uint8))
    rgb = np.asarray(Image.composite(heat, grey, mask))
    return np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1)


def sampling_for(height: int, width: int, display_px: int = VIRELAY_DISPLAY_PX) -> str:
    """ViRelAy's automatic sampling: pixelated when the image's shorter side is at most the size it is shown at (so small
    images are not smeared), smooth for larger ones (so pixelation does not hide detail)."""
    return "pixelated" if min(height, width) <= display_px else "smooth"


def css_image_rendering(sampling: str, height: int, width: int, display_px: int = VIRELAY_DISPLAY_PX) -> str:
    """The CSS `image-rendering` value for a sampling choice ('automatic' resolved by `sampling_for`)."""
    if sampling not in SAMPLINGS:
        raise RelaylabError.at("sampling", "", f"one of {', '.join(SAMPLINGS)}", repr(sampling))
    resolved = sampling_for(height, width, display_px) if sampling == "automatic" else sampling
    return "pixelated" if resolved == "pixelated" else "auto"


def encode_png(rgba: np.ndarray) -> bytes:
    """Lossless PNG; zlib level 1: 4x faster than the default 6 at 224 px (12 vs 54 ms), a few % larger."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def colormap_preview_png(name: str, width: int = 256, height: int = 16) -> bytes:
    """A gradient from -1 to 1, as ViRelAy's colour-map picker shows."""
    check_colormap(name)
    return encode_png(COLORMAPS[name](np.repeat(np.linspace(-1.0, 1.0, width)[None, :], height, axis=0)))


# ------------------------------------------------------------------------------------------------------ samples


def check_sample(project: Project, sample) -> int:
    n = project.inputs.sizes["sample"]
    if isinstance(sample, bool) or not isinstance(sample, int | np.integer) or not 0 <= sample < n:
        raise RelaylabError.at(project.path, "inputs/sample", f"a sample index in 0..{n - 1}", repr(sample))
    return int(sample)


def attribution_set(project: Project, name: str | None) -> str:
    """The named attribution set, or the project's first when None."""
    names = list(project.attributions)
    if name is None and names:
        return names[0]
    if name not in project.attributions:
        raise RelaylabError.at(project.path, "attributions", f"an attribution set ({', '.join(names) or 'the project has none'})", repr(name))
    return name


def check_attributed(project: Project, sample: int, name: str | None) -> str:
    """The attribution set's name, if it holds the sample (an attribution set may cover only some samples)."""
    name = attribution_set(project, name)
    if sample not in project.attributions[name].indexes["sample"]:
        raise RelaylabError.at(project.path, f"attributions/{name}/sample", "a sample that has an attribution", str(sample))
    return name


def attribution_of(project: Project, sample: int, name: str | None) -> np.ndarray:
    return project.attributions[check_attributed(project, sample, name)]["attribution"].sel(sample=sample).values


def value_range(project: Project, x: np.ndarray) -> tuple[float, float]:
    """The project's recorded input value range; unrecorded (float HDF5 inputs never converted), ViRelAy's guess from
    this sample's values, as ViRelAy makes it per sample."""
    recorded = project.inputs.attrs.get("value_range")
    low, high = recorded if recorded is not None else guess_value_range(float(x.min()), float(x.max()))
    return float(low), float(high)


def input_rgb(project: Project, sample: int) -> np.ndarray:
    """(H, W, 3) uint8 image of a sample scaled from the project's value range; one channel (or other than 3) → grey."""
    x = project.inputs["input"].sel(sample=check_sample(project, sample)).values.astype(np.float64)
    lo, hi = value_range(project, x)
    x = ((x - lo) / (hi - lo) * 255).round().clip(0, 255).astype(np.uint8)
    if x.shape[0] != 3:
        x = np.repeat(x.mean(axis=0, keepdims=True).round().astype(np.uint8), 3, axis=0)
    return np.ascontiguousarray(x.transpose(1, 2, 0))


def render_rgba(project: Project, sample: int, mode: str, colormap: str, attribution: str | None = None) -> np.ndarray:
    check_mode(mode)
    check_colormap(colormap)
    sample = check_sample(project, sample)
    if mode == "input":
        rgb = input_rgb(project, sample)
        return np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    a = attribution_of(project, sample, attribution)
    return heatmap_rgba(a, colormap) if mode == "attribution" else overlay_rgba(input_rgb(project, sample), a, colormap)


def render_png(project: Project, sample: int, mode: str, colormap: str, attribution: str | None = None) -> bytes:
    return encode_png(render_rgba(project, sample, mode, colormap, attribution))


# ------------------------------------------------------------------------------------------------------ cache


class PngCache:
    """LRU of rendered PNGs (bounded in bytes) with each one's content hash."""

    def __init__(self, max_bytes: int = 256 * 2**20):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, tuple[bytes, str]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple, render: Callable[[], bytes]) -> tuple[bytes, str]:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        png = render()
        item = (png, hashlib.sha256(png).hexdigest()[:32])
        with self._lock:
            if key not in self._items:
                self._items[key] = item
                self._bytes += len(png)
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, (old, _) = self._items.popitem(last=False)
                self._bytes -= len(old)
        return item

    def __len__(self) -> int:
        return len(self._items)


CACHE = PngCache()
_projects: dict[Path, Project] = {}
_registry: dict[str, Path] = {}
_lock = threading.Lock()


def register_project(path: str | os.PathLike) -> str:
    """The URL key of a project the app serves; only registered projects can be fetched by key."""
    path = Path(path).resolve()
    key = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    with _lock:
        _registry[key] = path
    return key


def registered_path(key: str) -> Path | None:
    return _registry.get(key)


def shared_project(path: str | os.PathLike) -> Project:
    """One open Project per path for the whole process (sessions and the image handler share it)."""
    path = Path(path).resolve()
    with _lock:
        if path not in _projects:
            _projects[path] = open_project(path)
        return _projects[path]


def cached_png(path: str | os.PathLike, sample: int, mode: str, colormap: str, attribution: str | None = None) -> tuple[bytes, str]:
    """(PNG, ETag) of one image, rendered once per (project, attribution set, sample, mode, colour map)."""
    project = shared_project(path)
    name = None if mode == "input" else attribution_set(project, attribution)
    key = (str(project.path.resolve()), name, int(sample), mode, None if mode == "input" else colormap)
    return CACHE.get(key, lambda: render_png(project, sample, mode, colormap, name))


# ------------------------------------------------------------------------------------------------------ serving

IMAGE_ROUTE = r"/relaylab/img/([^/]+)/([^/]+)\.png"
COLORMAP_ROUTE = r"/relaylab/colormap/([^/]+)\.png"
CACHE_CONTROL = "private, max-age=3600"
_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="relaylab-img")
_served_apps: weakref.WeakSet = weakref.WeakSet()
_prefixes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # ApplicationContext → URL prefix (None: no server)


class ImageHandler(tornado.web.RequestHandler):
    """GET /relaylab/img/<project key>/<sample>.png?mode=...&colormap=...&attribution=... → PNG with ETag."""

    def fail(self, status: int, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(message + "\n")

    async def get(self, key: str, sample_text: str) -> None:
        path = registered_path(key)
        if path is None:
            return self.fail(404, f"unknown project '{key}': this server serves only the projects it was started with")
        mode = self.get_argument("mode", "input")
        colormap = self.get_argument("colormap", DEFAULT_COLORMAP)
        attribution = self.get_argument("attribution", None)
        try:
            sample = int(sample_text)
        except ValueError:
            return self.fail(400, f"sample: expected an integer sample index (found {sample_text!r})")
        try:
            check_mode(mode)
            check_colormap(colormap)
        except RelaylabError as error:
            return self.fail(400, str(error))
        try:
            project = shared_project(path)
            check_sample(project, sample)
            if mode != "input":
                check_attributed(project, sample, attribution)
            loop = tornado.ioloop.IOLoop.current()
            png, etag = await loop.run_in_executor(_executor, cached_png, path, sample, mode, colormap, attribution)
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
            width, height = int(self.get_argument("width", "256")), int(self.get_argument("height", "16"))
        except (RelaylabError, ValueError) as error:
            return self.fail(400, str(error))
        if not (1 <= width <= 4096 and 1 <= height <= 4096):
            return self.fail(400, f"width, height: expected 1..4096 (found {width}, {height})")
        png = colormap_preview_png(name, width, height)
        self.send_png(png, hashlib.sha256(png).hexdigest()[:32])


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


def image_url(project_path: str | os.PathLike, sample: int, mode: str = "attribution", colormap: str = DEFAULT_COLORMAP,
              attribution: str | None = None) -> str:
    """A URL the browser can cache (inside a served session), else a `data:` URI of the same PNG."""
    prefix = install_routes()
    if prefix is None:
        png, _ = cached_png(project_path, sample, mode, colormap, attribution)
        return "data:image/png;base64," + base64.b64encode(png).decode()
    query = {"mode": mode}
    if mode != "input":
        query["colormap"] = colormap
        if attribution is not None:
            query["attribution"] = attribution
    return f"{prefix}/relaylab/img/{register_project(project_path)}/{int(sample)}.png?{urlencode(query)}"


def colormap_url(name: str, width: int = 256, height: int = 16) -> str:
    prefix = install_routes()
    if prefix is None:
        return "data:image/png;base64," + base64.b64encode(colormap_preview_png(name, width, height)).decode()
    return f"{prefix}/relaylab/colormap/{name}.png?{urlencode({'width': width, 'height': height})}"
