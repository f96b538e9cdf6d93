"""The analysis view: an embedding drawn by Datashader on the server, with ViRelAy's choices and server-side selection.

No per-point data goes to the browser: HoloViews' `datashade` renders each frame to one RGBA image on the server, so
a category of 10 million points costs the same bytes per frame as one of 100. Points are stored in Z-order (sorted
along a space-filling curve once per embedding): Datashader's categorical aggregation then touches memory in order
(≈ 10× faster at 1e7 points) and the points of one grid cell are contiguous, which makes the hover/click lookup a
binary search. Box, lasso and click selections arrive as geometry (hv.streams) and are resolved with vectorised
NumPy on the server to dataset sample indices, which go into the one `ViewState`.
"""

from __future__ import annotations

import functools
import html
import logging
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable

import colorcet
import datashader as ds
import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401  (registers the Bokeh backend's plot options used below)
import numpy as np
import pandas as pd
import panel as pn
import param
from holoviews.operation.datashader import datashade, dynspread
from PIL import Image, ImageDraw

from ..data.project import Project
from ..errors import RelaylabError
from . import state as vs

log = logging.getLogger(__name__)
# shading the selection layer while nothing is selected takes nanmin of an empty aggregate: harmless, and not news
warnings.filterwarnings("ignore", message="All-NaN slice encountered", category=RuntimeWarning, module="datashader")

CELL_BITS = 8  # Z-order grid of 256×256 cells: 16-bit keys, sorted with NumPy's radix sort
MAX_COLORS = 20  # more categories than this (e.g. 1000 classes) are folded into "other"
NOISE_COLOR, OTHER_COLOR, SELECTED_COLOR = "#b0b0b0", "#808080", "#000000"
PLOT_WIDTH, PLOT_HEIGHT = 600, 460
HOVER_PX = 8  # the hover and click lookups take the nearest point within this many screen pixels
LASSO_GRID = 1024  # a lasso polygon is rasterised at this resolution; points on its outline pixels are tested exactly
MAX_CLUSTER_BUTTONS = 40
CACHE_SIZE = 8
SELECTION_MODES = ("replace", "add", "subtract")


# ---------------------------------------------------------------------------------------------------- point data


class Points:
    """One embedding's points in Z-order: x, y, the dataset index and the member position (row in the category)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, sample: np.ndarray):
        x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float32)
        finite = np.isfinite(x) & np.isfinite(y)
        self.bounds = (float(x[finite].min()), float(x[finite].max()), float(y[finite].min()), float(y[finite].max())) \
            if finite.any() else (0.0, 1.0, 0.0, 1.0)
        keys = self.cell_keys(x, y)
        order = np.argsort(keys, kind="stable")  # 16-bit keys: a radix sort, ~0.3 s at 1e7
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


class Cache:
    """A small process-wide LRU for data every session reads the same way (never for per-session state)."""

    def __init__(self, size: int = CACHE_SIZE):
        self.size, self.items = size, OrderedDict()

    def get(self, key, make: Callable):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = self.items[key] = make()
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return value


POINTS, SAMPLE_INFO = Cache(), Cache()


def points_of(project: Project, analysis: str, category: str, embedding: str, x_dim: int, y_dim: int) -> Points:
    def make() -> Points:
        started = time.perf_counter()
        node = project.analyses[analysis][category]
        values = node["embedding"][embedding]["embedding"]
        xy = np.asarray(values.isel(component=[x_dim, y_dim]).values)
        points = Points(xy[:, 0], xy[:, 1], vs.member_indices(node))
        log.info("%s/%s/%s: %d points in Z-order in %.2f s", analysis, category, embedding, len(points), time.perf_counter() - started)
        return points

    return POINTS.get((str(project.path), analysis, category, embedding, x_dim, y_dim), make)


class SampleInfo:
    """Per-sample facts for colouring and hover, indexed by dataset index: true label, prediction, boolean marks."""

    def __init__(self, project: Project):
        self.project = project
        labels = np.asarray(project.inputs["label"].values)
        self.multi_hot = labels if labels.ndim == 2 else None
        self.label = labels.argmax(axis=1) if labels.ndim == 2 else labels.astype(np.int64)
        self.names = [str(n) for n in project.label_map["name"].values]
        self.classes = np.asarray(project.label_map["class"].values)
        self._prediction: np.ndarray | None = None

    def class_name(self, k: int) -> str:
        hit = np.flatnonzero(self.classes == k)
        return self.names[hit[0]] if hit.size else f"class {k}"

    @property
    def prediction(self) -> np.ndarray:
        """Predicted class (argmax of the model outputs) per dataset index; -1 where the first attribution set has no row."""
        if self._prediction is None:
            prediction = np.full(self.label.size, -1, dtype=np.int64)
            if self.project.attributions:
                ds_ = next(iter(self.project.attributions.values()))
                prediction[np.asarray(ds_["sample"].values)] = np.asarray(ds_["prediction"].argmax("class").values)
            self._prediction = prediction
        return self._prediction

    def correct(self, samples: np.ndarray) -> np.ndarray:
        predicted = self.prediction[samples]
        if self.multi_hot is not None:
            return self.multi_hot[samples, np.maximum(predicted, 0)] & (predicted >= 0)
        return predicted == self.label[samples]

    def predicted_of(self, sample: int) -> int | None:
        """One sample's prediction without computing all of them (what hover needs)."""
        if self._prediction is not None:
            value = int(self._prediction[sample])
            return value if value >= 0 else None
        for ds_ in self.project.attributions.values():
            try:
                return int(ds_["prediction"].sel(sample=sample).argmax("class").values)
            except KeyError:
                return None
        return None


def sample_info(project: Project) -> SampleInfo:
    return SAMPLE_INFO.get(str(project.path), lambda: SampleInfo(project))


# ---------------------------------------------------------------------------------------------------- colours


def palette(n: int) -> list[str]:
    """n distinct colours, none of them grey (grey means noise or "other")."""
    colours = [c for c in colorcet.palette["glasbey_category10"]
               if np.ptp([int(c[i:i + 2], 16) for i in (1, 3, 5)]) > 40]
    return colours[:n]


def folded(values: np.ndarray, names: dict[int, str]) -> tuple[np.ndarray, list[str], list[str], np.ndarray]:
    """Integer categories → (codes, names, colours, counts): the MAX_COLORS - 1 most frequent keep a colour each,
    the rest become "other"; -1 (noise / unknown) gets its own grey entry."""
    kinds, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    special = kinds < 0
    regular = np.flatnonzero(~special)
    if regular.size > MAX_COLORS:
        keep = np.sort(regular[np.argsort(-counts[regular], kind="stable")[:MAX_COLORS - 1]])
    else:
        keep = regular
    code_of = np.full(kinds.size, -1, dtype=np.int64)
    code_of[keep] = np.arange(keep.size)
    labels = [names.get(int(kinds[k]), str(kinds[k])) for k in keep]
    colors = palette(keep.size)
    extra = 0
    if special.any():
        code_of[special] = keep.size
        labels.append(names.get(-1, "none"))
        colors.append(NOISE_COLOR)
        extra = 1
    rest = (code_of < 0)
    if rest.any():
        code_of[rest] = keep.size + extra
        labels.append(f"other ({int(rest.sum())} kinds)")
        colors.append(OTHER_COLOR)
    codes = code_of[inverse]
    return codes.astype(np.int16), labels, colors, np.bincount(codes, minlength=len(labels))


def colouring(project: Project, state: vs.ViewState, points: Points) -> tuple[np.ndarray, list[str], list[str], np.ndarray]:
    """Per-point category codes (in the points' order), names, colours and counts for `state.color_by`."""
    info = sample_info(project)
    samples = points.sample
    if state.color_by == "cluster":
        clusters = vs.cluster_labels(vs.category_node(project, state.analysis, state.category), state.clustering)
        if clusters is None:
            return folded(np.zeros(len(points), dtype=np.int64), {0: "no clustering"})
        values = clusters[points.member]
        return folded(values, {**{int(k): f"cluster {k}" for k in np.unique(values) if k >= 0}, -1: "noise"})
    if state.color_by == "label":
        values = info.label[samples]
        return folded(values, {int(k): info.class_name(int(k)) for k in np.unique(values)})
    if state.color_by == "prediction":
        values = info.prediction[samples]
        return folded(values, {**{int(k): info.class_name(int(k)) for k in np.unique(values) if k >= 0}, -1: "no prediction"})
    if state.color_by == "correct":
        values = np.where(info.prediction[samples] < 0, -1, np.where(info.correct(samples), 0, 1))
        return folded(values, {0: "correct", 1: "incorrect", -1: "no prediction"})
    marks = np.asarray(project.inputs[state.color_by].values, dtype=bool)[samples]
    return folded(marks.astype(np.int64), {0: f"no {state.color_by}", 1: state.color_by})


def combine(mode: str, current, new: np.ndarray) -> np.ndarray:
    """The selection after a gesture: replace it, add to it or subtract from it. Ascending dataset indices, via a
    mask over the index range (linear time: sorting a 10-million selection would take seconds)."""
    new, current = np.asarray(new, dtype=np.int64), np.asarray(current, dtype=np.int64)
    marked = np.zeros(max(int(new.max(initial=-1)), int(current.max(initial=-1))) + 1, dtype=bool)
    if mode != "replace":
        marked[current] = True
    marked[new] = mode != "subtract"
    return np.flatnonzero(marked)


@functools.cache
def warm_up() -> None:
    """Compile Datashader's Numba kernels for the aggregations this view uses (≈ 10 s on a busy 2-core machine), once
    per process, so the first page a user opens does not pay for it. Servers call this before taking requests."""
    started = time.perf_counter()
    frame = Points(np.arange(4, dtype=np.float32), np.arange(4, dtype=np.float32), np.arange(4)).frame(
        np.array([0, 1, 0, 1], dtype=np.int16), ["a", "b"])
    categorical = {"aggregator": ds.count_cat("c"), "color_key": {"a": "#000000", "b": "#ff0000"}}
    for element, options in ((hv.Points(frame, kdims=["x", "y"], vdims=["c"]), categorical),
                             (hv.Points(frame[["x", "y"]], kdims=["x", "y"]), {"cmap": [SELECTED_COLOR, SELECTED_COLOR]})):
        dynspread(datashade(element, dynamic=False, width=50, height=50, **options), dynamic=False)
    log.info("Datashader kernels compiled in %.1f s", time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------------- the view


class EmbeddingView(pn.viewable.Viewer):
    """Toolbox (analysis, category, embedding, clustering, dimensions, colours), the Datashader plot with box, lasso
    and click selection and a hover readout, its legend, the eigenvalue plot and one button per cluster."""

    selection_mode = param.Selector(default="replace", objects=list(SELECTION_MODES))
    hovered = param.Integer(default=None, allow_None=True, doc="dataset index of the sample under the cursor")
    last_geometry = param.String(default="", doc="the last selection gesture in data coordinates (shown, and read by tests)")

    VIEW_FIELDS = ("analysis", "category", "embedding", "x_dim", "y_dim", "clustering", "color_by")

    def __init__(self, project: Project, state: vs.ViewState, thumbnail: Callable[[int], str | None] | None = None, **params):
        super().__init__(**params)
        self.project, self.state, self.thumbnail = project, state, thumbnail
        self.points: Points | None = None
        self._syncing = False
        self._range = None
        self.analysis_select = pn.widgets.Select(label="Analysis", css_classes=["rl-analysis"], width=180)
        self.category_select = pn.widgets.Select(label="Category", css_classes=["rl-category"], width=200)
        self.embedding_select = pn.widgets.Select(label="Embedding", css_classes=["rl-embedding"], width=120)
        self.clustering_select = pn.widgets.Select(label="Clustering", css_classes=["rl-clustering"], width=140)
        self.x_select = pn.widgets.Select(label="X dimension", css_classes=["rl-x-dim"], width=90)
        self.y_select = pn.widgets.Select(label="Y dimension", css_classes=["rl-y-dim"], width=90)
        self.color_select = pn.widgets.Select(label="Colour by", css_classes=["rl-color-by"], width=130)
        self.mode_buttons = pn.widgets.RadioButtonGroup.from_param(self.param.selection_mode, label="Selection", color="default",
                                                                   css_classes=["rl-selection-mode"])
        self.clear_button = pn.widgets.Button(label="Clear selection", width=120, css_classes=["rl-clear"])
        self.clear_button.on_click(lambda event: self.state.apply({"selection": [], "page": 0}))
        for widget, field in ((self.analysis_select, "analysis"), (self.category_select, "category"),
                              (self.embedding_select, "embedding"), (self.clustering_select, "clustering"),
                              (self.x_select, "x_dim"), (self.y_select, "y_dim"), (self.color_select, "color_by")):
            widget.param.watch(lambda event, field=field: self._on_widget(field, event.new), "value")
        self.plot_pane = pn.pane.HoloViews(sizing_mode="fixed", width=PLOT_WIDTH + 80, height=PLOT_HEIGHT + 60, linked_axes=False,
                                           css_classes=["rl-embedding-plot"])
        self.legend = pn.pane.HTML(width=220, css_classes=["rl-legend"])
        self.summary = pn.pane.HTML(css_classes=["rl-selection-summary"])
        self.message = pn.pane.Alert("", alert_type="danger", visible=False, sizing_mode="stretch_width", css_classes=["rl-view-alert"])
        self.hover_pane = pn.pane.HTML(width=220, min_height=120, css_classes=["rl-hover"])
        self.eigen_pane = pn.pane.HoloViews(visible=False, width=320, height=200)
        self.cluster_buttons = pn.FlexBox(css_classes=["rl-cluster-buttons"])
        self.selected_pipe = hv.streams.Pipe(data=self._selected_frame())
        self.state.param.watch(self._on_state, list(vs.ViewState.FIELDS))
        self.param.watch(lambda event: self._show_hover(), "hovered")
        self.refresh(rebuild=True)

    # ------------------------------------------------------------------------------------------------ layout

    def __panel__(self):
        toolbox = pn.Row(self.analysis_select, self.category_select, self.embedding_select, self.clustering_select,
                         self.x_select, self.y_select, self.color_select, css_classes=["rl-toolbox"])
        selection_bar = pn.Row(self.mode_buttons, self.clear_button, self.summary, align="center")
        side = pn.Column(self.legend, self.hover_pane)
        return pn.Column(toolbox, selection_bar, self.message, pn.Row(self.plot_pane, side),
                         pn.Row(self.eigen_pane, pn.Column(pn.pane.Markdown("**Clusters**", margin=(0, 5)), self.cluster_buttons, width=460)))

    # ------------------------------------------------------------------------------------------------ state ↔ widgets

    def _on_widget(self, field: str, value) -> None:
        if self._syncing or value is None or getattr(self.state, field) == value:
            return
        values = vs.fitted_values(self.project, {**self.state.values(), field: value})
        if field in ("analysis", "category"):  # another set of points: the old selection would be invisible
            values.update(selection=[], page=0)
        self.state.apply(values)

    def _on_state(self, *events) -> None:
        names = {event.name for event in events}
        if names & set(self.VIEW_FIELDS):
            self.refresh(rebuild=True)
        elif "selection" in names:
            self.refresh(rebuild=False)

    def refresh(self, rebuild: bool) -> None:
        """Bring widgets, plot, legend and buttons in line with the state (after any change of it)."""
        self._syncing = True
        try:
            self._sync_widgets()
        finally:
            self._syncing = False
        if rebuild:
            try:
                self._build_plot()
                self.message.visible = False
            except RelaylabError as error:  # e.g. an analysis file that cannot be read: say so, keep the session
                log.warning("embedding view: %s", error)
                self.points, self.plot_pane.object = None, None
                self.message.object, self.message.visible = f"**This embedding cannot be shown.** {error}", True
        self.selected_pipe.send(self._selected_frame())
        self._show_summary()

    def _show_summary(self) -> None:
        n = len(self.state.selection)
        geometry = f' data-geometry="{html.escape(self.last_geometry)}"' if self.last_geometry else ""
        self.summary.object = f'<span class="rl-selected" data-count="{n}"{geometry}>{n} selected</span>'

    def _sync_widgets(self) -> None:
        s, project = self.state, self.project
        self.analysis_select.options = {vs.virelay_analysis_name(a): a for a in project.analyses}
        self.analysis_select.value = s.analysis or None
        cats = vs.categories(project, s.analysis)
        self.category_select.options = {(f"{name} ({c})" if name != c else c): c for c, name in cats.items()}
        self.category_select.value = s.category or None
        node = vs.category_node(project, s.analysis, s.category)
        self.embedding_select.options = vs.embeddings(node)
        self.embedding_select.value = s.embedding or None
        self.clustering_select.options = vs.clusterings(node)
        self.clustering_select.value = s.clustering or None
        d = vs.components(node, s.embedding) if node is not None and s.embedding else 0
        for widget, value in ((self.x_select, s.x_dim), (self.y_select, s.y_dim)):
            widget.options = list(range(d))
            widget.value = value if value < d else None
            widget.visible = d > 2
        self.color_select.options = vs.color_options(project)
        self.color_select.value = s.color_by

    # ------------------------------------------------------------------------------------------------ plot

    def _build_plot(self) -> None:
        s = self.state
        node = vs.category_node(self.project, s.analysis, s.category)
        if node is None or not s.embedding:
            self.points = None
            self.plot_pane.object = None
            self.legend.object = "<i>this project has no analysis to show</i>"
            self.eigen_pane.visible = False
            self.cluster_buttons.objects = []
            return
        started = time.perf_counter()
        self.points = points_of(self.project, s.analysis, s.category, s.embedding, s.x_dim, s.y_dim)
        codes, names, colors, counts = colouring(self.project, s, self.points)
        # HoloViews 1.23's datashade draws nothing for a single category: give it an unused second one
        keys = dict(zip(names, colors)) if len(names) > 1 else {names[0]: colors[0], "\u200b": colors[0]}
        points = hv.Points(self.points.frame(codes, list(keys)), kdims=["x", "y"], vdims=["c"])
        shaded = dynspread(datashade(points, aggregator=ds.count_cat("c"), color_key=keys, min_alpha=90), threshold=0.7, max_px=3)
        selected = dynspread(datashade(hv.DynamicMap(lambda data: hv.Points(data, kdims=["x", "y"]), streams=[self.selected_pipe]),
                                       cmap=[SELECTED_COLOR, SELECTED_COLOR], min_alpha=255), threshold=0.9, max_px=4)
        x0, x1, y0, y1 = self.points.bounds
        padx, pady = (x1 - x0) * 0.03 or 1, (y1 - y0) * 0.03 or 1
        xlabel, ylabel = f"{s.embedding} {s.x_dim}", f"{s.embedding} {s.y_dim}"
        shaded = shaded.opts(frame_width=PLOT_WIDTH, frame_height=PLOT_HEIGHT, xlabel=xlabel, ylabel=ylabel,
                             xlim=(x0 - padx, x1 + padx), ylim=(y0 - pady, y1 + pady),
                             tools=["box_select", "lasso_select", "tap"], active_tools=["box_select", "wheel_zoom"], show_legend=False,
                             default_tools=["pan", "wheel_zoom", "reset"])
        for stream, callback in ((hv.streams.BoundsXY(source=shaded), self._on_box), (hv.streams.Lasso(source=shaded), self._on_lasso),
                                 (hv.streams.Tap(source=shaded), self._on_tap), (hv.streams.PointerXY(source=shaded), self._on_pointer),
                                 (hv.streams.RangeXY(source=shaded), self._on_range)):
            stream.add_subscriber(callback)
        self._range = ((x0 - padx, x1 + padx), (y0 - pady, y1 + pady))
        self.plot_pane.object = shaded * selected
        self.legend.object = legend_html(names, colors, counts, s.color_by)
        self._build_eigenvalues(node)
        self._build_cluster_buttons(node)
        log.info("embedding view %s/%s/%s built in %.2f s", s.analysis, s.category, s.embedding, time.perf_counter() - started)

    def _selected_frame(self) -> pd.DataFrame:
        if self.points is None or not self.state.selection:
            return pd.DataFrame({"x": np.empty(0, np.float32), "y": np.empty(0, np.float32)})
        chosen = self.state.selection_array()
        marked = np.zeros(max(int(self.points.sample.max()), int(chosen[-1])) + 1, dtype=bool)
        marked[chosen] = True
        inside = marked[self.points.sample]
        return pd.DataFrame({"x": self.points.x[inside], "y": self.points.y[inside]})

    def _build_eigenvalues(self, node) -> None:
        spectral = [e for e in vs.embeddings(node) if "eigenvalue" in node["embedding"][e].coords]
        if not spectral:
            self.eigen_pane.visible = False
            return
        name = self.state.embedding if self.state.embedding in spectral else spectral[0]
        values = np.asarray(node["embedding"][name]["eigenvalue"].values, dtype=float)
        data = pd.DataFrame({"k": np.arange(values.size), "eigenvalue": values})
        curve = hv.Curve(data, "k", "eigenvalue").opts(width=320, height=200, xlabel="index", toolbar=None)
        self.eigen_pane.object = (curve * hv.Scatter(data, "k", "eigenvalue").opts(size=6, tools=["hover"])).opts(title=f"Eigenvalues ({name})")
        self.eigen_pane.visible = True

    def _build_cluster_buttons(self, node) -> None:
        clusters = vs.cluster_labels(node, self.state.clustering)
        if clusters is None:
            self.cluster_buttons.objects = []
            return
        kinds, counts = np.unique(clusters, return_counts=True)
        buttons = []
        for k, count in list(zip(kinds.tolist(), counts.tolist()))[:MAX_CLUSTER_BUTTONS]:
            button = pn.widgets.Button(label=f"{'Noise' if k < 0 else f'Cluster {k}'} ({count})", width=130, css_classes=["rl-cluster-button"])
            button.on_click(lambda event, k=k: self.select_cluster(k))
            buttons.append(button)
        self.cluster_buttons.objects = buttons

    # ------------------------------------------------------------------------------------------------ selection

    def select(self, positions: np.ndarray, geometry: str, **also) -> None:
        """Points (positions in `self.points`) chosen by a gesture → the state's selection, by the current mode (and
        `also` other state fields, in the same batch)."""
        started = time.perf_counter()
        self.last_geometry = geometry
        selection = combine(self.selection_mode, self.state.selection_array(), self.points.sample[positions]).tolist()
        self.state.apply({"selection": selection, "page": 0, **also})
        self._show_summary()  # also when the selection did not change: the geometry shown did
        log.info("%s: %d points, selection %d, %.3f s", geometry, positions.size, len(selection), time.perf_counter() - started)

    def select_cluster(self, k: int) -> None:
        if self.points is None:
            return
        clusters = vs.cluster_labels(vs.category_node(self.project, self.state.analysis, self.state.category), self.state.clustering)
        self.select(np.flatnonzero(clusters[self.points.member] == k), f"cluster {k}")

    def _on_box(self, bounds=None, **_) -> None:
        if bounds is None or self.points is None:
            return
        x0, y0, x1, y1 = map(float, bounds)
        self.select(self.points.in_box(x0, y0, x1, y1), f"box {x0!r},{y0!r},{x1!r},{y1!r}")

    def _on_lasso(self, geometry=None, **_) -> None:
        if geometry is None or self.points is None or len(geometry) < 3:
            return
        self.select(self.points.in_polygon(np.asarray(geometry)), f"lasso {len(geometry)} vertices")

    def _on_tap(self, x=None, y=None, **_) -> None:
        hit = self._nearest(x, y)
        if hit is None:
            return
        sample = int(self.points.sample[hit])
        self.select(np.array([hit]), f"click {sample}", sample=sample)  # the clicked sample also opens in the layer view

    # ------------------------------------------------------------------------------------------------ hover

    def _on_range(self, x_range=None, y_range=None, **_) -> None:
        if x_range is not None and y_range is not None:
            self._range = (x_range, y_range)

    def _nearest(self, x, y) -> int | None:
        if x is None or y is None or self.points is None or self._range is None:
            return None
        (xa, xb), (ya, yb) = self._range
        return self.points.nearest(float(x), float(y), abs(xb - xa) * HOVER_PX / PLOT_WIDTH, abs(yb - ya) * HOVER_PX / PLOT_HEIGHT)

    def _on_pointer(self, x=None, y=None, **_) -> None:
        """HoloViews sends pointer moves at most every ~100 ms; the lookup reads only the cells near the cursor."""
        hit = self._nearest(x, y)
        self.hovered = None if hit is None else int(self.points.sample[hit])

    def _show_hover(self) -> None:
        sample = self.hovered
        if sample is None:
            self.hover_pane.object = ""
            return
        info = sample_info(self.project)
        label = info.class_name(int(info.label[sample]))
        predicted = info.predicted_of(sample)
        prediction = info.class_name(predicted) if predicted is not None else "none"
        src = self.thumbnail(sample) if self.thumbnail else None
        image = f'<img src="{html.escape(src)}" width="96" height="96" style="image-rendering: auto">' if src else ""
        self.hover_pane.object = (f'<div class="rl-hover-sample" data-sample="{sample}">{image}<div><b>sample {sample}</b><br>'
                                  f"label: {html.escape(label)}<br>predicted: {html.escape(prediction)}</div></div>")


def legend_html(names: list[str], colors: list[str], counts: np.ndarray, title: str) -> str:
    rows = "".join(f'<div class="rl-legend-item"><span style="display:inline-block;width:12px;height:12px;background:{c};'
                   f'margin-right:6px;border-radius:2px"></span>{html.escape(n)} <span style="color:#777">({int(k)})</span></div>'
                   for n, c, k in zip(names, colors, counts))
    return f"<div><b>{html.escape(title)}</b>{rows}</div>"
