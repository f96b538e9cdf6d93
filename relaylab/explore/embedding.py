"""The analysis view: an embedding drawn by Datashader on the server, with ViRelAy's choices and server-side selection.

No per-point data of the category goes to the browser: HoloViews' `datashade` renders each frame to one RGBA image on
the server, so a category of 10 million points costs the same bytes per frame as one of 100. The selection is drawn
over it as a plain Bokeh scatter whose data source is updated in place (at most SELECTION_POINTS points, a random
subset of a larger selection): a selection change then sends those coordinates and re-renders nothing, where a
datashaded selection layer made HoloViews re-shade the whole overlay on every click. Points are kept in Z-order (`points.py`,
once per embedding and process in `ProjectData`): Datashader's categorical aggregation then touches memory in order
(about 10× faster at 1e7 points) and the hover/click lookup is a binary search. Box, lasso and click selections arrive
as geometry (hv.streams) and are resolved with vectorised NumPy on the server to dataset sample indices, which go into
the session's `ViewState`.
"""

from __future__ import annotations

import functools
import html
import logging
import time
import warnings

import colorcet
import datashader as ds
import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401  (registers the Bokeh backend's plot options used below)
import numpy as np
import pandas as pd
import panel as pn
import param
from holoviews.operation.datashader import datashade, dynspread

from ..errors import RelaylabError
from . import state as vs
from .data import ProjectData
from .points import Points
from .serve import image_url
from .view import ProjectViewer

log = logging.getLogger(__name__)
# shading the selection layer while nothing is selected takes nanmin of an empty aggregate: harmless, and not news
warnings.filterwarnings("ignore", message="All-NaN slice encountered", category=RuntimeWarning, module="datashader")

MAX_COLORS = 20  # more categories than this (e.g. 1000 classes) are folded into "other"
NOISE_COLOR, OTHER_COLOR, SELECTED_COLOR = "#b0b0b0", "#808080", "#000000"
SELECTION_POINTS = 20_000  # selected points drawn as a scatter (a random subset of more)
PLOT_WIDTH, PLOT_HEIGHT = 500, 420
HOVER_PX = 8  # the hover and click lookups take the nearest point within this many screen pixels
MAX_CLUSTER_BUTTONS = 40
SELECTION_MODES = ("replace", "add", "subtract")


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


def colouring(data: ProjectData, state: vs.ViewState, points: Points) -> tuple[np.ndarray, list[str], list[str], np.ndarray]:
    """Per-point category codes (in the points' order), names, colours and counts for `state.color_by`."""
    info = data.sample_info
    samples = points.sample
    if state.color_by == "cluster":
        clusters = data.clusters(state.analysis, state.category, state.clustering)
        if clusters is None:
            return folded(np.zeros(len(points), dtype=np.int64), {0: "no clustering"})
        values = clusters.labels[points.member]
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
    marks = np.asarray(data.project.inputs[state.color_by].values, dtype=bool)[samples]
    return folded(marks.astype(np.int64), {0: f"no {state.color_by}", 1: state.color_by})


def shaded_points(points: Points, codes: np.ndarray, names: list[str], colors: list[str]):
    """The points coloured by category, drawn by Datashader on the server (the analysis view's and the compare view's
    plot before their own options)."""
    # HoloViews 1.23's datashade draws nothing for a single category: give it an unused second one
    keys = dict(zip(names, colors)) if len(names) > 1 else {names[0]: colors[0], "\u200b": colors[0]}
    element = hv.Points(points.frame(codes, list(keys)), kdims=["x", "y"], vdims=["c"])
    return dynspread(datashade(element, aggregator=ds.count_cat("c"), color_key=keys, min_alpha=90), threshold=0.7, max_px=3)


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
    """Compile Datashader's Numba kernels for the aggregations this view uses, once per process, so the first page a
    user opens does not wait for the compiler. Servers call this before taking requests."""
    started = time.perf_counter()
    frame = Points(np.arange(4, dtype=np.float32), np.arange(4, dtype=np.float32), np.arange(4)).frame(
        np.array([0, 1, 0, 1], dtype=np.int16), ["a", "b"])
    categorical = {"aggregator": ds.count_cat("c"), "color_key": {"a": "#000000", "b": "#ff0000"}}
    element = hv.Points(frame, kdims=["x", "y"], vdims=["c"])
    dynspread(datashade(element, dynamic=False, width=50, height=50, **categorical), dynamic=False)
    log.info("Datashader kernels compiled in %.1f s", time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------------- the view


class EmbeddingView(ProjectViewer):
    """Toolbox (analysis, category, embedding, clustering, dimensions, colours), the Datashader plot with box, lasso
    and click selection and a hover readout, its legend, the eigenvalue plot and one button per cluster."""

    selection_mode = param.Selector(default="replace", objects=list(SELECTION_MODES))
    hovered = param.Integer(default=None, allow_None=True, doc="dataset index of the sample under the cursor")
    last_geometry = param.String(default="", doc="the last selection gesture in data coordinates (shown, and read by tests)")

    VIEW_FIELDS = ("analysis", "category", "embedding", "x_dim", "y_dim", "clustering", "color_by")
    WIDGET_FIELDS = ("category_order",)  # change only the widgets

    def __init__(self, data: ProjectData, state: vs.ViewState, **params):
        super().__init__(data, state, **params)
        self.points: Points | None = None
        self._syncing = False
        self._range = None
        self.analysis_select = pn.widgets.Select(label="Analysis", css_classes=["rl-analysis"], width=140)
        self.category_select = pn.widgets.Select(label="Category", css_classes=["rl-category"], width=140)
        self.order_buttons = pn.widgets.RadioButtonGroup.from_param(self.state.param.category_order, label="Order", width=140,
                                                                    color="default", css_classes=["rl-category-order"])
        self.embedding_select = pn.widgets.Select(label="Embedding", css_classes=["rl-embedding"], width=140)
        self.clustering_select = pn.widgets.Select(label="Clustering", css_classes=["rl-clustering"], width=140)
        self.x_select = pn.widgets.Select(label="X dimension", css_classes=["rl-x-dim"], width=140)
        self.y_select = pn.widgets.Select(label="Y dimension", css_classes=["rl-y-dim"], width=140)
        self.color_select = pn.widgets.Select(label="Colour by", css_classes=["rl-color-by"], width=140)
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
        self._selection_sources: list = []  # the selection scatter's data source in each Bokeh figure of the plot
        self.eigen_pipe = hv.streams.Pipe(data=(pd.DataFrame({"k": [], "eigenvalue": []}), ""))
        self.state.param.watch(self._on_state, [*self.VIEW_FIELDS, *self.WIDGET_FIELDS, "selection"])
        self.refresh(rebuild=True)

    # ------------------------------------------------------------------------------------------------ layout

    def controls(self) -> pn.GridBox:
        """What is plotted: analysis, category (and its order), embedding, clustering, dimensions, colours (a sidebar)."""
        return pn.GridBox(self.analysis_select, self.embedding_select, self.category_select, self.order_buttons,
                          self.clustering_select, self.color_select, self.x_select, self.y_select, ncols=2,
                          css_classes=["rl-toolbox"])

    def side(self) -> pn.Column:
        """Legend, hover preview and eigenvalues (beside or below the plot)."""
        return pn.Column(self.legend, self.hover_pane, self.eigen_pane)

    def __panel__(self):
        selection_bar = pn.Row(self.mode_buttons, self.clear_button, self.summary, align="center")
        return pn.Column(selection_bar, self.message, self.plot_pane,
                         pn.Column(pn.pane.Markdown("**Clusters**", margin=(0, 5)), self.cluster_buttons, width=PLOT_WIDTH + 80))

    # ------------------------------------------------------------------------------------------------ state ↔ widgets

    def _on_widget(self, field: str, value) -> None:
        if self._syncing or value is None or getattr(self.state, field) == value:
            return
        values = vs.fitted_values(self.project, {**self.state.values(), field: value})
        if field in ("analysis", "category"):  # another set of points: the old selection would be invisible
            values.update(selection=[], page=0)
        self.state.apply(values)

    def _on_state(self, *events) -> None:
        """One batch of state changes: a new plot if what is plotted changed, else the selection layer and summary."""
        names = {event.name for event in events}
        if names & set(self.VIEW_FIELDS):
            self.refresh(rebuild=True)
        elif names & {"selection", *self.WIDGET_FIELDS}:
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
        self._draw_selection()
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
        scores = self.data.category_scores(s.analysis)
        ranked = s.category_order == "suspicion" and bool(scores)
        if ranked:
            cats = {c: cats[c] for c in sorted(cats, key=lambda c: -scores.get(c, -1.0))}
        # ranked entries start with their rank: the labels change with the order (a Select compares its options as a
        # dict, order-blind, and would not redraw a list that was only re-ordered)
        self.category_select.options = {f"{f'#{i} ' if ranked else ''}{category_label(c, name, scores.get(c))}": c
                                        for i, (c, name) in enumerate(cats.items(), 1)}
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
        self.points = self.data.points(s.analysis, s.category, s.embedding, s.x_dim, s.y_dim)
        codes, names, colors, counts = colouring(self.data, s, self.points)
        shaded = shaded_points(self.points, codes, names, colors)
        x0, x1, y0, y1 = self.points.bounds
        padx, pady = (x1 - x0) * 0.03 or 1, (y1 - y0) * 0.03 or 1
        xlabel, ylabel = f"{s.embedding} {s.x_dim}", f"{s.embedding} {s.y_dim}"
        shaded = shaded.opts(frame_width=PLOT_WIDTH, frame_height=PLOT_HEIGHT, xlabel=xlabel, ylabel=ylabel,
                             xlim=(x0 - padx, x1 + padx), ylim=(y0 - pady, y1 + pady),
                             tools=["box_select", "lasso_select", "tap"], active_tools=["box_select", "wheel_zoom"], show_legend=False,
                             default_tools=["pan", "wheel_zoom", "reset"], hooks=[self._add_selection_glyph])
        for stream, callback in ((hv.streams.BoundsXY(source=shaded), self._on_box), (hv.streams.Lasso(source=shaded), self._on_lasso),
                                 (hv.streams.Tap(source=shaded), self._on_tap), (hv.streams.PointerXY(source=shaded), self._on_pointer),
                                 (hv.streams.RangeXY(source=shaded), self._on_range)):
            stream.add_subscriber(callback)
        self._range = ((x0 - padx, x1 + padx), (y0 - pady, y1 + pady))
        self._selection_sources = []  # the new figure gets its own
        self.plot_pane.object = shaded
        self.legend.object = legend_html(names, colors, counts, s.color_by)
        self._build_eigenvalues(node)
        self._build_cluster_buttons()
        log.info("embedding view %s/%s/%s built in %.2f s", s.analysis, s.category, s.embedding, time.perf_counter() - started)

    def _selected_xy(self) -> dict[str, np.ndarray]:
        """The selected points' coordinates in this embedding, at most SELECTION_POINTS (a fixed random subset)."""
        if self.points is None or not self.state.selection:
            return {"x": np.empty(0, np.float32), "y": np.empty(0, np.float32)}
        chosen = self.state.selection_array()
        marked = np.zeros(max(int(self.points.sample.max()), int(chosen.max())) + 1, dtype=bool)
        marked[chosen] = True
        inside = np.flatnonzero(marked[self.points.sample])
        if len(inside) > SELECTION_POINTS:
            inside = np.sort(np.random.default_rng(0).choice(inside, SELECTION_POINTS, replace=False))
        return {"x": self.points.x[inside], "y": self.points.y[inside]}

    def _add_selection_glyph(self, plot, element) -> None:
        """HoloViews hook: the selection scatter, added once to each Bokeh figure this plot renders into."""
        figure = plot.state
        if any(getattr(r, "name", None) == "rl-selection" for r in figure.renderers):
            return
        from bokeh.models import ColumnDataSource

        source = ColumnDataSource(data=self._selected_xy())
        figure.scatter("x", "y", source=source, size=4, color=SELECTED_COLOR, name="rl-selection", level="overlay")
        self._selection_sources.append(source)

    def _draw_selection(self) -> None:
        """New data for the selection scatter: set directly without a server (a notebook), else on the document's next
        tick, which holds its lock (plot gestures reach here from HoloViews' stream callbacks, which do not)."""
        data = self._selected_xy()
        for source in self._selection_sources:
            document = source.document
            if document is None or document.session_context is None:
                source.data = data
            else:
                document.add_next_tick_callback(functools.partial(setattr, source, "data", data))

    def _build_eigenvalues(self, node) -> None:
        spectral = [e for e in vs.embeddings(node) if "eigenvalue" in node["embedding"][e].coords]
        if not spectral:
            self.eigen_pane.visible = False
            return
        name = self.state.embedding if self.state.embedding in spectral else spectral[0]
        values = np.asarray(node["embedding"][name]["eigenvalue"].values, dtype=float)
        self.eigen_pipe.send((pd.DataFrame({"k": np.arange(values.size), "eigenvalue": values}), name))
        if self.eigen_pane.object is None:  # one figure per session, its data replaced on each category
            self.eigen_pane.object = hv.DynamicMap(eigenvalue_plot, streams=[self.eigen_pipe])
        self.eigen_pane.visible = True

    def _build_cluster_buttons(self) -> None:
        clusters = self.data.clusters(self.state.analysis, self.state.category, self.state.clustering)
        if clusters is None:
            self.cluster_buttons.objects = []
            return
        kinds, counts = np.unique(clusters.labels, return_counts=True)
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
        clusters = self.data.clusters(self.state.analysis, self.state.category, self.state.clustering)
        self.select(np.flatnonzero(clusters.labels[self.points.member] == k), f"cluster {k}")

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
        self.select(np.array([hit]), f"click {sample}", sample=sample, tab="sample")  # and opens in the sample inspector

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

    @param.depends("hovered", watch=True)
    def _show_hover(self) -> None:
        sample = self.hovered
        if sample is None:
            self.hover_pane.object = ""
            return
        info = self.data.sample_info
        label = info.class_name(int(info.label[sample]))
        predicted = info.predicted_of(sample)
        prediction = info.class_name(predicted) if predicted is not None else "none"
        # a project of attributions without their dataset has no images: its heatmap instead
        src = image_url(self.data, sample, "input" if self.data.project.has_images else "attribution")
        image = f'<img src="{html.escape(src)}" width="96" height="96" style="image-rendering: auto">'
        top = self.data.top_predictions(sample, self.data.attribution_of(self.state), 5)
        top5 = ", ".join(html.escape(p["name"]) for p in top) or "—"
        self.hover_pane.object = (f'<div class="rl-hover-sample" data-sample="{sample}">{image}<div><b>sample {sample}</b><br>'
                                  f"label: {html.escape(label)}<br>predicted: {html.escape(prediction)}<br>"
                                  f'top-5: <span class="rl-top5">{top5}</span></div></div>')


def eigenvalue_plot(data) -> hv.Overlay:
    """The spectrum of a category's spectral embedding: `data` is (frame of k and eigenvalue, the embedding's name)."""
    frame, name = data
    curve = hv.Curve(frame, "k", "eigenvalue").opts(width=320, height=200, xlabel="index", toolbar=None, framewise=True)
    points = hv.Scatter(frame, "k", "eigenvalue").opts(size=6, tools=["hover"], framewise=True)
    return (curve * points).opts(title=f"Eigenvalues ({name})")


def category_label(category: str, name: str, score: float | None) -> str:
    """A category's entry in the list: its name, its key when that differs, and its suspicion score when known."""
    text = f"{name} ({category})" if name != category else category
    return f"{text} · {score:.2f}" if score is not None else text


def legend_html(names: list[str], colors: list[str], counts: np.ndarray, title: str) -> str:
    rows = "".join(f'<div class="rl-legend-item"><span style="display:inline-block;width:12px;height:12px;background:{c};'
                   f'margin-right:6px;border-radius:2px"></span>{html.escape(n)} <span style="color:#777">({int(k)})</span></div>'
                   for n, c, k in zip(names, colors, counts))
    return f"<div><b>{html.escape(title)}</b>{rows}</div>"
