"""Colour maps for heatmaps: ViRelAy's eight and zennit's eleven, as functions of values in [-1, 1] to RGBA uint8.

Each is computed exactly as its origin computes it: ViRelAy 0.6.1 (`virelay/image_processing.py`, and the matplotlib
bwr/afmhot/jet/seismic look-up tables it calls, rebuilt here from matplotlib's segment data) and zennit
(`zennit.image.imgify(..., vmin=-1, vmax=1)` on its 256-colour palettes), so a heatmap looks the same in relaylab as in
the tool its user knows. ViRelAy's maps truncate to uint8 as ViRelAy's `(heatmap * 255).astype(uint8)` does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from ..errors import RelaylabError

VIRELAY_COLORMAPS = ("gray-red", "black-green", "black-fire-red", "black-yellow", "blue-white-red", "afm-hot", "jet", "seismic")
DEFAULT_COLORMAP = "black-fire-red"  # ViRelAy's default


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


# zennit.image.CMAPS, named here without importing zennit (which imports torch); `seismic` clashes with ViRelAy's.
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
