"""One embedding's points in Z-order, and the geometry the explorer needs of them: box, lasso and nearest point.

Points are stored sorted along a space-filling curve (Z-order over a 256×256 grid of the points' bounds), once per
embedding: Datashader's categorical aggregation then touches memory in order, and the points of one grid cell are a
contiguous run of the sorted keys, which makes the hover and click lookups a binary search. Box and lasso selections
are vectorised NumPy over all points; a lasso is rasterised, and only the points on its outline are tested exactly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

CELL_BITS = 8  # Z-order grid of 256×256 cells: 16-bit keys, sorted with NumPy's radix sort
LASSO_GRID = 1024  # a lasso polygon is rasterised at this resolution; points on its outline pixels are tested exactly


class Points:
    """One embedding's points in Z-order: x, y, the dataset index and the member position (row in the category)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, sample: np.ndarray):
        x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float32)
        finite = np.isfinite(x) & np.isfinite(y)
        self.bounds = (float(x[finite].min()), float(x[finite].max()), float(y[finite].min()), float(y[finite].max())) \
            if finite.any() else (0.0, 1.0, 0.0, 1.0)
        keys = self.cell_keys(x, y)
        order = np.argsort(keys, kind="stable")  # 16-bit keys: NumPy sorts them with a radix sort
        self.keys = keys[order]
        self.x, self.y = x[order], y[order]
        self.sample = np.asarray(sample, dtype=np.int64)[order]
        self.member = order.astype(np.int64)

    def __len__(self) -> int:
        return self.x.size

    def cells(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x0, x1, y0, y1 = self.bounds
        n = (1 << CELL_BITS) - 1
        cx = np.clip((np.nan_to_num(x, nan=x0) - x0) / max(x1 - x0, 1e-30) * n, 0, n).astype(np.uint16)
        cy = np.clip((np.nan_to_num(y, nan=y0) - y0) / max(y1 - y0, 1e-30) * n, 0, n).astype(np.uint16)
        return cx, cy

    def cell_keys(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        cx, cy = self.cells(x, y)
        return interleave(cx) | (interleave(cy) << 1)

    def frame(self, codes: np.ndarray, names: list[str]) -> pd.DataFrame:
        return pd.DataFrame({"x": self.x, "y": self.y, "c": pd.Categorical.from_codes(codes, categories=names)})

    def in_box(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        """Positions of the points inside the box (edges included)."""
        x0, x1 = sorted((x0, x1))
        y0, y1 = sorted((y0, y1))
        return np.flatnonzero((self.x >= x0) & (self.x <= x1) & (self.y >= y0) & (self.y <= y1))

    def in_polygon(self, polygon: np.ndarray) -> np.ndarray:
        """Positions of the points inside a lasso polygon (even-odd rule). The polygon is rasterised over its bounding
        box; points in pixels well inside or outside are decided by the pixel, points on or next to the outline exactly."""
        polygon = np.asarray(polygon, dtype=np.float64)
        if polygon.ndim != 2 or len(polygon) < 3:
            return np.empty(0, dtype=np.int64)
        (px0, py0), (px1, py1) = polygon.min(axis=0), polygon.max(axis=0)
        candidates = self.in_box(px0, py0, px1, py1)
        if candidates.size == 0:
            return candidates
        sx, sy = (LASSO_GRID - 1) / max(px1 - px0, 1e-30), (LASSO_GRID - 1) / max(py1 - py0, 1e-30)
        mask = Image.new("L", (LASSO_GRID, LASSO_GRID), 0)
        ImageDraw.Draw(mask).polygon([((vx - px0) * sx, (vy - py0) * sy) for vx, vy in polygon], fill=1, outline=2)
        pixels = np.asarray(mask).copy()
        outline = np.pad(pixels == 2, 1)  # an edge can cut any pixel next to the drawn outline: those are tested exactly
        near = np.zeros_like(pixels, dtype=bool)
        for dy in range(3):
            for dx in range(3):
                near |= outline[dy:dy + LASSO_GRID, dx:dx + LASSO_GRID]
        pixels[near] = 2
        col = np.clip(np.rint((self.x[candidates] - px0) * sx), 0, LASSO_GRID - 1).astype(np.intp)
        row = np.clip(np.rint((self.y[candidates] - py0) * sy), 0, LASSO_GRID - 1).astype(np.intp)
        state = pixels[row, col]
        edge = candidates[state == 2]
        exact = edge[point_in_polygon(self.x[edge], self.y[edge], polygon)]
        return np.sort(np.concatenate([candidates[state == 1], exact]))

    def nearest(self, x: float, y: float, rx: float, ry: float) -> int | None:
        """Position of the point nearest to (x, y) within the ellipse of radii rx, ry (data units), or None. Only the
        Z-order cells overlapping the ellipse are read: each is a contiguous run of the sorted keys."""
        if not len(self) or rx <= 0 or ry <= 0:
            return None
        (cx0, cx1), (cy0, cy1) = (self.cells(np.array([x - rx, x + rx]), np.array([y - ry, y + ry])))
        if (int(cx1) - int(cx0) + 1) * (int(cy1) - int(cy0) + 1) > 4096:  # zoomed far out: one pass over the window
            candidates = self.in_box(x - rx, y - ry, x + rx, y + ry)
        else:
            gx, gy = np.meshgrid(np.arange(cx0, cx1 + 1, dtype=np.uint16), np.arange(cy0, cy1 + 1, dtype=np.uint16))
            keys = np.unique(interleave(gx.ravel()) | (interleave(gy.ravel()) << 1))
            starts, ends = np.searchsorted(self.keys, keys, "left"), np.searchsorted(self.keys, keys, "right")
            runs = [np.arange(s, e) for s, e in zip(starts, ends) if e > s]
            candidates = np.concatenate(runs) if runs else np.empty(0, dtype=np.int64)
        if candidates.size == 0:
            return None
        d = ((self.x[candidates] - x) / rx) ** 2 + ((self.y[candidates] - y) / ry) ** 2
        best = int(np.argmin(d))
        return int(candidates[best]) if d[best] <= 1 else None


def interleave(v: np.ndarray) -> np.ndarray:
    """Spread the low 8 bits of each value to the even bits of a 16-bit word (Morton / Z-order code)."""
    v = v.astype(np.uint16) & 0xFF
    v = (v | (v << 4)) & 0x0F0F
    v = (v | (v << 2)) & 0x3333
    return (v | (v << 1)) & 0x5555


def point_in_polygon(x: np.ndarray, y: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd ray casting, vectorised over points (meant for the few points on a polygon's outline)."""
    inside = np.zeros(x.size, dtype=bool)
    for (ax, ay), (bx, by) in zip(polygon, np.roll(polygon, -1, axis=0)):
        crosses = (ay > y) != (by > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = ax + (y - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (x < at)
    return inside
