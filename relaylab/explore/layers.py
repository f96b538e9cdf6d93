"""Per-layer inspection: pick a layer on a diagram of the model, a sample on that layer's activation embedding, and
see the sample's predictions and channel activations (its heatmaps are the sample inspector's, one click away).

The picked layer and sample are the session's `ViewState` fields `layer` and `sample` (so share links carry them and
a click on any view opens the sample here too); the view's own choices (channel order and channel, colour map of the
channels) are its params, so tests can drive the view without a browser. Channel thumbnails share one colour scale
(the layer's largest |activation| for this sample), shown by a legend, so channels compare by brightness. The model and
its explainer are the project's `ProjectData.explainer`, loaded once per process. Picking happens by clicking: the
diagram and the embedding are HoloViews plots with `hv.streams.Tap`, the channel thumbnails a small JSComponent whose
`channel` follows the click.
"""

from __future__ import annotations

import base64
import functools
import io
import logging
import math

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401  (registers the Bokeh backend, so .opts work outside a notebook)
import numpy as np
import pandas as pd
import panel as pn
import param
from bokeh.palettes import Category10_10, Category20_20
from PIL import Image

from ..errors import RelaylabError
from .colormaps import COLORMAPS
from .data import ProjectData
from .render import css_image_rendering, encode_png, input_rgb
from .serve import colormap_url
from .state import ViewState
from .view import ProjectViewer

log = logging.getLogger(__name__)

CATEGORY = "all"  # the single category of an activation analysis (relaylab.analyze.activations)
DATASHADE_ABOVE = 50_000  # points: beyond this the embedding is rendered by Datashader on the server
IMAGE_PX = 192  # display size of the sample image
THUMB_PX = 72  # display size of a channel thumbnail
THUMB_MAX = 64  # thumbnails are stored at most this many pixels wide (the zoom view shows full resolution)


def shows_errors(method):
    """A watcher that puts a RelaylabError (e.g. a model that fails on this sample) in the view's alert instead of
    leaving a traceback in the server log and half-updated panes."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except RelaylabError as error:
            log.info("layer inspector: %s", error)
            self.alert.param.update(object=str(error), visible=True)

    return run


def png_array(data: bytes) -> np.ndarray:
    """The image array back from PNG bytes (what a pane shows)."""
    return np.asarray(Image.open(io.BytesIO(data)))


def pixel_css(height: int, width: int, display_px: int = IMAGE_PX) -> list[str]:
    """ViRelAy's automatic sampling rule as a stylesheet for a pane's <img>: small images stay crisp when enlarged."""
    return [f"img {{ image-rendering: {css_image_rendering('automatic', height, width, display_px)}; }}"]


def thumbnail(rgba: np.ndarray) -> str:
    """A data URI of a channel heatmap, shrunk (area-averaged) to at most THUMB_MAX pixels wide."""
    image = Image.fromarray(rgba)
    if max(image.size) > THUMB_MAX:
        scale = THUMB_MAX / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BOX)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def box_heights(layers: list[dict]) -> np.ndarray:
    """Box height per layer from its output's spatial size (log scale), as in an isometric drawing of the network: wide
    feature maps near the input are tall boxes, flat feature vectors near the output are short ones."""
    spatial = np.array([math.prod(layer["output_shape"][1:]) if len(layer["output_shape"]) > 1 else 1
                        for layer in layers], dtype=float)
    logs = np.log2(np.maximum(spatial, 1))
    return 0.25 + 0.75 * logs / max(1.0, logs.max())


class ChannelGrid(pn.custom.JSComponent):
    """Thumbnails of a layer's channels, each `<div class="rl-channel" data-channel="k">`; a click sets `channel`."""

    items = param.List(default=[], doc="[{channel, score, src}] in display order")
    channel = param.Integer(default=None, allow_None=True, doc="the clicked channel")

    _esm = """
    export function render({ model, el }) {
      const grid = document.createElement("div")
      grid.className = "rl-channels"
      function draw() {
        grid.replaceChildren()
        for (const item of model.items) {
          const card = document.createElement("div")
          card.className = "rl-channel" + (item.channel === model.channel ? " rl-picked" : "")
          card.dataset.channel = item.channel
          card.title = `channel ${item.channel}, score ${item.score.toPrecision(3)}: click to zoom`
          const img = document.createElement("img")
          img.src = item.src
          const caption = document.createElement("span")
          caption.innerHTML = `<b>${item.channel}</b> ${item.score.toPrecision(3)}`
          card.append(img, caption)
          card.addEventListener("click", () => { model.channel = item.channel })
          grid.append(card)
        }
      }
      draw()
      model.on(["items", "channel"], draw)
      el.append(grid)
    }
    """

    _stylesheets = [f"""
    .rl-channels {{ display: flex; flex-wrap: wrap; gap: 4px; max-height: 420px; overflow-y: auto; }}
    .rl-channel {{ display: flex; flex-direction: column; align-items: center; cursor: pointer; border: 2px solid transparent;
                  font-size: 11px; font-family: sans-serif; }}
    .rl-channel.rl-picked {{ border-color: #222; }}
    .rl-channel img {{ width: {THUMB_PX}px; height: {THUMB_PX}px; object-fit: contain; image-rendering: pixelated; }}
    """]


class LayerInspector(ProjectViewer):
    """One project's model, layer by layer: diagram, activation embedding, and a picked sample's explanations. The
    inspected layer is the state's `layer` (None: `default_layer()`), the picked sample the state's `sample`.

    With lazy=True (the explorer's tab) nothing is drawn until the state's `tab` is "layers" for the first time: a
    session that never opens the tab costs no plots and no model."""

    channel_order = param.Selector(default="score", objects=["score", "index"], doc="order of the channel thumbnails")
    channel = param.Integer(default=None, allow_None=True, doc="channel shown zoomable at full resolution")
    embedding = param.Selector(default=None, objects=[], allow_None=True, doc="embedding of the activation analysis")
    colormap = param.Selector(default="bwr", objects=list(COLORMAPS), doc="colour map of the channel activations")

    def __init__(self, data: ProjectData, state: ViewState, lazy: bool = False, **params):
        super().__init__(data, state, **params)
        self.explainer = None
        self.layers: list[dict] = []
        self.cam_layers: list[str] = []
        self.alert = pn.pane.Alert("", alert_type="danger", visible=False, sizing_mode="stretch_width")
        self.embedding_note = pn.pane.Alert("", alert_type="info", visible=False, sizing_mode="stretch_width")
        self.diagram_pipe = hv.streams.Pipe(data="")
        self.diagram_boxes: hv.DynamicMap | None = None
        self.diagram_tap: hv.streams.Tap | None = None
        self.marker_pipe = hv.streams.Pipe(data=np.empty((0, 2)))
        self.embedding_tap: hv.streams.Tap | None = None
        self._points = np.empty((0, 2))
        self._point_samples = np.empty(0, dtype=np.int64)
        self.diagram_pane = pn.pane.HoloViews(None, sizing_mode="stretch_width", linked_axes=False)
        self.embedding_pane = pn.pane.HoloViews(None, sizing_mode="stretch_width", min_height=360, linked_axes=False)
        self.sample_info = pn.pane.Markdown("Click a point of the embedding to pick a sample.", width=380)
        self.image_pane = pn.pane.PNG(None, width=IMAGE_PX, height=IMAGE_PX)
        self.bars_pane = pn.pane.HoloViews(None, width=360, height=280, linked_axes=False)
        self.inspect_button = pn.widgets.Button(label="Open in the sample inspector", width=230, css_classes=["rl-open-inspector"],
                                                disabled=True)
        self.inspect_button.on_click(lambda event: self.state.apply({"tab": "sample"}))
        self.channel_legend = pn.pane.HTML("", css_classes=["rl-channel-legend"])
        self.map_progress = pn.indicators.Progress(value=0, max=100, visible=False, width=300, css_classes=["rl-map-progress"])
        self.map_job = None
        self._poller = None
        self.map_title = ""
        self._map_shown = None
        self.channel_grid = ChannelGrid(sizing_mode="stretch_width")
        self.channel_grid.link(self, channel="channel", bidirectional=True)
        self.channel_title = pn.pane.Markdown("")
        self.zoom_pane = pn.pane.HoloViews(None, width=420, height=400, linked_axes=False)
        self._layout = pn.Column(sizing_mode="stretch_width")
        self._choosing_embedding = False
        self._waiting = None
        if lazy and state.tab != "layers":
            self._waiting = state.param.watch(self._on_first_show, "tab")
        else:
            self._load()

    def _on_first_show(self, event) -> None:
        if event.new == "layers" and self._waiting is not None:
            self.state.param.unwatch(self._waiting)
            self._waiting = None
            self._load()

    # ----------------------------------------------------------------------------------------------------- loading

    def _load(self) -> None:
        """Get the project's explainer (the model, loaded once per process); everything else is drawn from it."""
        try:
            self._open()
        except RelaylabError as error:
            log.info("layer inspector: %s", error)
            self._layout[:] = [pn.pane.Alert(f"**Per-layer inspection is not available.** {error}", alert_type="warning",
                                             sizing_mode="stretch_width")]
            return
        self._layout[:] = self._sections()
        self._build_diagram()
        self._refresh()

    def _open(self) -> None:
        self.explainer = self.data.explainer
        self.layers = list(self.explainer.layers)
        self.cam_layers = list(self.explainer.cam_layers)
        self.class_names = dict(zip(self.project.label_map["class"].values.tolist(), map(str, self.project.label_map["name"].values)))

    def default_layer(self) -> str:
        """The deepest layer with an activation embedding, else the deepest CAM layer, else the last layer."""
        analysed = [x["name"] for x in self.layers if f"activation-{x['name']}" in self.project.analyses]
        return (analysed or self.cam_layers or self.layer_names)[-1]

    def _sections(self) -> list:
        return [
            self.alert,
            pn.pane.Markdown("### Model — click a layer", margin=(0, 10)),
            self.diagram_pane,
            pn.Row(
                pn.Column(pn.pane.Markdown("### Activation embedding — click a sample", margin=(0, 10)),
                          pn.Row(pn.widgets.Select.from_param(self.param.embedding, width=110),
                                 pn.widgets.RadioButtonGroup.from_param(self.state.param.map_source, label="Map of", width=150,
                                                                        css_classes=["rl-map-source"]),
                                 pn.widgets.RadioButtonGroup.from_param(self.state.param.map_perplexity, label="Perplexity",
                                                                        width=150, css_classes=["rl-map-perplexity"]),
                                 pn.widgets.Select.from_param(self.state.param.map_subset, label="Samples", width=100,
                                                              css_classes=["rl-map-subset"]), align="end"),
                          self.map_progress, self.embedding_note, self.embedding_pane, sizing_mode="stretch_width"),
                pn.Column(self.sample_info, self.inspect_button, self.image_pane, self.bars_pane, width=400),  # fixed: the plot keeps its size
                sizing_mode="stretch_width",
            ),
            pn.Row(pn.pane.Markdown("### Channel activations", margin=(0, 10)),
                   pn.widgets.RadioButtonGroup.from_param(self.param.channel_order),
                   pn.widgets.Select.from_param(self.param.colormap, width=160), self.channel_legend),
            self.channel_title,
            pn.Row(self.zoom_pane, self.channel_grid, sizing_mode="stretch_width"),  # the grid wraps in what the zoom leaves
        ]

    def panel(self) -> pn.Column:
        return self._layout

    def __panel__(self) -> pn.Column:
        return self._layout

    # ---------------------------------------------------------------------------------------------------- checking

    @property
    def layer(self) -> str | None:
        """The inspected layer: the state's, else the default one (None while no model is loaded)."""
        return self.state.layer or (self.default_layer() if self.layers else None)

    @property
    def sample(self) -> int | None:
        """The picked sample (the state's)."""
        return self.state.sample

    @property
    def layer_names(self) -> list[str]:
        return [x["name"] for x in self.layers]

    def layer_problem(self) -> str:
        if self.layer not in self.layer_names:
            return f"Unknown layer '{self.layer}'. The model's layers: {', '.join(self.layer_names)}."
        return ""

    def sample_problem(self) -> str:
        if self.sample is None:
            return ""
        samples = self.project.inputs["sample"].values
        if self.sample not in samples:
            return f"Unknown sample {self.sample}: this dataset's samples are {samples.min()}–{samples.max()}."
        return ""

    def _show_problems(self) -> bool:
        """Show what is wrong with the picked layer/sample/label; True when all is well."""
        problems = [p for p in (self.layer_problem(), self.sample_problem()) if p]
        self.alert.object = " ".join(problems)
        self.alert.visible = bool(problems)
        return not problems

    # ---------------------------------------------------------------------------------------------------- drawing

    def _refresh(self) -> None:
        self._draw_diagram()
        self._draw_embedding()
        self._draw_sample()

    @param.depends("state.layer", watch=True)
    @shows_errors
    def _on_layer(self) -> None:
        if self.explainer is None:
            return
        self.channel = None  # channels of another layer
        self._show_problems()
        self._draw_diagram()
        self._draw_embedding()
        self._draw_channels()

    @param.depends("state.sample", watch=True)
    @shows_errors
    def _on_sample(self) -> None:
        if self.explainer is not None:
            self._draw_sample()

    @param.depends("colormap", watch=True)
    @shows_errors
    def _on_colormap(self) -> None:
        if self.explainer is not None and self._show_problems():
            self._draw_channels()

    @param.depends("channel_order", watch=True)
    @shows_errors
    def _on_channel_order(self) -> None:
        if self.explainer is not None and self._show_problems():
            self._draw_channels()

    @param.depends("channel", watch=True)
    @shows_errors
    def _on_channel(self) -> None:
        if self.explainer is not None and self._show_problems():
            self._draw_zoom()

    @param.depends("embedding", watch=True)
    @shows_errors
    def _on_embedding(self) -> None:
        if self.explainer is not None and not self._choosing_embedding:
            self._draw_embedding()

    def _draw_diagram(self) -> None:
        self.diagram_pipe.send(self.layer)

    def _build_diagram(self) -> None:
        """Boxes (redrawn when the picked layer changes) over static labels. The click stream's source is the boxes'
        DynamicMap itself: a Tap on a DynamicMap that returns an Overlay receives no clicks (HoloViews 1.23)."""
        layers = self.layers
        self.diagram_boxes = hv.DynamicMap(self._diagram_boxes, streams=[self.diagram_pipe])
        self.diagram_tap = hv.streams.Tap(source=self.diagram_boxes, x=None, y=None)
        self.diagram_tap.add_subscriber(self._on_diagram_tap)
        labels = hv.Labels(pd.DataFrame({"x": np.arange(len(layers)) + 0.5, "y": np.full(len(layers), -0.55),
                                         "text": [f"{x['name']} {x['type']}" for x in layers]}), kdims=["x", "y"], vdims=["text"])
        self.diagram_pane.object = (self.diagram_boxes * labels.opts(
            angle=60, text_font_size="8pt", text_align="right", text_baseline="middle", text_color="#333333")).opts(
            height=280, responsive=True, xaxis=None, yaxis=None, toolbar=None, show_frame=False,
            xlim=(-1.5, max(1, len(layers)) + 0.1), ylim=(-2.9, 0.6), title="")

    def _diagram_boxes(self, data: str) -> hv.Rectangles:
        """A box per layer in order, coloured by type, sized by its output (box_heights); the picked one outlined;
        hover names layer, type and output shape."""
        layers = self.layers
        types = sorted({x["type"] for x in layers})
        palette = {t: Category10_10[i % 10] for i, t in enumerate(types)}
        heights = box_heights(layers) if layers else np.empty(0)
        rows = [(i + 0.08, -h / 2, i + 0.92, h / 2, x["name"], x["type"], "×".join(map(str, x["output_shape"])),
                 palette[x["type"]], 3 if x["name"] == data else 0.5, "#000000" if x["name"] == data else "#888888")
                for i, (x, h) in enumerate(zip(layers, heights))]
        frame = pd.DataFrame(rows, columns=["x0", "y0", "x1", "y1", "name", "type", "shape", "color", "width", "line"])
        boxes = hv.Rectangles(frame, kdims=["x0", "y0", "x1", "y1"], vdims=["name", "type", "shape", "color", "width", "line"])
        return boxes.opts(color="color", line_width="width", line_color="line", tools=["hover", "tap"],
                          hover_tooltips=[("layer", "@name"), ("type", "@type"), ("output", "@shape")], nonselection_alpha=1.0)

    @shows_errors
    def _on_diagram_tap(self, x=None, y=None) -> None:
        """A click on the diagram picks the layer whose box column holds x."""
        if x is None or not self.layers:
            return
        i = math.floor(x)
        if 0 <= i < len(self.layers):
            self.state.layer = self.layers[i]["name"]

    def map_request(self) -> tuple[str, str | None, bool]:
        """(what the map shows, the analysis holding it or None, whether that must be computed on demand): the stored
        `activation-<layer>` for the default settings, else `activation-<layer or input>--tsne-p…-n…`."""
        from ..analyze.activations import INPUT, map_name

        s = self.state
        if s.map_source == "input":
            return "the raw inputs", map_name(INPUT, s.map_perplexity, s.map_subset or None), True
        what, stored = f"the activations of {self.layer}", f"activation-{self.layer}"
        if s.map_perplexity == 30 and s.map_subset == 0 and stored in self.project.analyses:
            return what, stored, False
        sets = self.project.activations
        recorded = "activations" in sets and self.layer in sets["activations"].children
        return what, map_name(self.layer, s.map_perplexity, s.map_subset or None) if recorded else None, recorded

    def _clear_embedding(self, note: str) -> None:
        self.embedding_note.object, self.embedding_note.visible = note, bool(note)
        self.embedding_pane.object = None
        self._points, self._point_samples = np.empty((0, 2)), np.empty(0, dtype=np.int64)

    def _draw_embedding(self) -> None:
        """The map of the picked layer's activations (or of the raw inputs), coloured by true class: the stored one,
        or one computed on demand in the background while the rest of the page stays usable."""
        self.embedding_tap = None
        what, name, on_demand = self.map_request()
        if self.layer_problem() and self.state.map_source == "layer":
            self._clear_embedding(f"No activation embedding for layer **{self.layer}**.")
            return
        if name is None:
            self._clear_embedding(f"No activation embedding for layer **{self.layer}**: the store has no analysis "
                                  f"`activation-{self.layer}` and no recorded activations of it to map (compute them with "
                                  "`relaylab activations`, the maps with `relaylab.analyze.activations.analyze_activations`).")
            return
        if name not in self.project.analyses:
            if on_demand:
                self._start_map()
            return
        self.map_progress.visible = False
        node = self.project.analyses[name][CATEGORY]
        available = sorted(node["embedding"].children) if "embedding" in node.children else []
        # chosen before the Select's options change: a widget on a live page answers new options with its first one
        chosen = self.embedding
        if chosen not in available or (on_demand and name != self._map_shown and "tsne" in available):
            chosen = "tsne" if "tsne" in available else (available[0] if available else None)
        self._choosing_embedding = True  # the Select follows; this is no new choice of the user's
        try:
            self.param.embedding.objects = available
            self.embedding = chosen
        finally:
            self._choosing_embedding = False
        if self.embedding is None:
            self.embedding_note.object = f"The analysis `{name}` holds no embedding."
            self.embedding_note.visible = True
            self.embedding_pane.object = None
            return
        self.embedding_note.visible = False
        self.map_title, self._map_shown = f"{self.embedding} of {what}", name
        coords = np.asarray(node["embedding"][self.embedding]["embedding"].values[:, :2], dtype=np.float64)
        samples = np.asarray(node["index"].values, dtype=np.int64)
        labels = self.project.inputs["label"].sel(sample=samples).values
        if labels.ndim == 2:  # multi-label: colour by the first class set
            labels = labels.argmax(axis=1)
        texts = {c: f"{c}: {n}" for c, n in self.class_names.items()}  # colours follow the class index, on every layer
        palette = {texts[c]: Category20_20[i % 20] for i, c in enumerate(texts)}
        frame = pd.DataFrame({"x": coords[:, 0], "y": coords[:, 1], "sample": samples,
                              "class": pd.Categorical([texts.get(int(c), str(c)) for c in labels],
                                                      categories=[t for t in texts.values() if t in set(map(texts.get, labels.tolist()))])})
        self._points, self._point_samples = coords, samples
        self.marker_pipe.send(self._marker_points())
        points = hv.Points(frame, kdims=["x", "y"], vdims=["sample", "class"])
        classes = list(frame["class"].cat.categories)
        if len(frame) > DATASHADE_ABOVE:
            import datashader as ds
            from holoviews.operation.datashader import datashade, dynspread

            base = dynspread(datashade(points, aggregator=ds.count_cat("class"), color_key=palette))
        else:
            base = points.opts(color="class", cmap=palette, size=5, tools=["hover", "tap"], nonselection_alpha=1.0,
                               show_legend=len(classes) <= 20, legend_position="right")
        marker = hv.DynamicMap(lambda data: hv.Points(data, kdims=["x", "y"]), streams=[self.marker_pipe])
        low, high = coords.min(axis=0), coords.max(axis=0)
        pad = np.where(high > low, (high - low) * 0.05, 1.0)  # fixed limits: the ringed point must not move the view
        plot = (base * marker.opts(marker="circle", size=14, fill_alpha=0, line_color="black", line_width=2)).opts(
            responsive=True, min_height=360, title=self.map_title,
            xaxis=None, yaxis=None, xlim=(low[0] - pad[0], high[0] + pad[0]), ylim=(low[1] - pad[1], high[1] + pad[1]))
        self.embedding_tap = hv.streams.Tap(source=base, x=None, y=None)  # not the Overlay: see _build_diagram
        self.embedding_tap.add_subscriber(self._on_embedding_tap)
        self.embedding_pane.object = plot

    def _start_map(self) -> None:
        """Ask for the map in the background (shared by every session of the process) and follow its progress."""
        s = self.state
        from ..analyze.activations import INPUT

        layer = INPUT if s.map_source == "input" else self.layer
        self.map_job = self.data.request_map(layer, s.map_perplexity, s.map_subset or None)
        self._clear_embedding(f"Computing a t-SNE map (perplexity {s.map_perplexity}, "
                              f"{s.map_subset or 'all'} samples) in the background; everything else stays usable.")
        self.map_progress.param.update(value=int(100 * self.map_job.progress), visible=True)
        if pn.state.curdoc is not None and self._poller is None:  # a served session or a notebook; plain Python polls itself
            self._poller = pn.state.add_periodic_callback(self.poll_map, period=250)

    @shows_errors
    def poll_map(self) -> None:
        """Show the running job's progress; draw the map once it is done (or say why it failed)."""
        job = self.map_job
        if job is None:
            return
        self.map_progress.value = int(100 * job.progress)
        if not job.future.done():
            return
        if self._poller is not None:
            self._poller.stop()
            self._poller = None
        self.map_job = None
        self.map_progress.visible = False
        error = job.future.exception()
        if error is not None:
            log.warning("on-demand map %s failed: %s", job.name, error)
            self._clear_embedding(f"The map could not be computed: {error}")
            return
        self._draw_embedding()

    @param.depends("state.map_source", "state.map_perplexity", "state.map_subset", watch=True)
    @shows_errors
    def _on_map_choice(self) -> None:
        if self.explainer is not None:
            self._draw_embedding()

    def _marker_points(self) -> np.ndarray:
        hit = np.flatnonzero(self._point_samples == self.sample) if self.sample is not None else []
        return self._points[hit] if len(hit) else np.empty((0, 2))

    @shows_errors
    def _on_embedding_tap(self, x=None, y=None) -> None:
        """A click picks the nearest point (distances measured relative to the embedding's extent)."""
        if x is None or y is None or not len(self._points):
            return
        span = np.ptp(self._points, axis=0)
        span[span == 0] = 1
        distance = (((self._points - (x, y)) / span) ** 2).sum(axis=1)
        self.state.sample = int(self._point_samples[np.argmin(distance)])

    def _draw_sample(self) -> None:
        """Image, labels, top-10 predictions and channel activations of the picked sample."""
        self.marker_pipe.send(self._marker_points())
        ok = self._show_problems()
        if self.sample is None or not ok:
            self.sample_info.object = "Click a point of the embedding to pick a sample." if ok else ""
            self.inspect_button.disabled = True
            self.image_pane.object = None
            self.bars_pane.object = None
            self.channel_grid.items = []
            self.zoom_pane.object = None
            return
        rgb = np.asarray(input_rgb(self.project, self.sample))
        self.image_pane.param.update(object=encode_png(rgb), stylesheets=pixel_css(rgb.shape[0], rgb.shape[1]))
        top = self.explainer.predictions(self.sample, top=10)
        names = self.class_names
        true = self.project.inputs["label"].sel(sample=self.sample).values
        true_text = ", ".join(names.get(int(c), str(c)) for c in np.flatnonzero(true)) if true.ndim else names.get(int(true), str(true))
        self.sample_info.object = (f"**Sample {self.sample}** — true: **{true_text}**, "
                                   f"predicted: **{top[0]['name']}** ({top[0]['score']:.1%})")
        bars = hv.Bars([(f"{p['class']}: {p['name']}", p["score"]) for p in top[::-1]], kdims=["class"], vdims=["probability"])
        self.bars_pane.object = bars.opts(invert_axes=True, width=360, height=280, title="top-10 predictions", color="#4c72b0",
                                          xlabel="", tools=["hover"], toolbar=None)
        self.inspect_button.disabled = False
        self._draw_channels()

    def channel_activations(self) -> tuple[np.ndarray, np.ndarray]:
        """The picked sample's activations at the picked layer, as (C, h, w), with the per-channel scores."""
        acts, scores = self.explainer.layer_activations(self.sample, self.layer)
        acts = np.asarray(acts)
        if acts.ndim < 3:  # flat (C,) or sequence-like (C, L) outputs: one row per channel
            acts = acts.reshape(acts.shape[0], 1, -1)
        return acts, np.asarray(scores)

    def channel_order_of(self, scores: np.ndarray) -> np.ndarray:
        """Channels in display order: by descending score (ties by index), or by index."""
        return np.argsort(-scores, kind="stable") if self.channel_order == "score" else np.arange(len(scores))

    def _draw_channels(self) -> None:
        """Channel thumbnails (conv layers) or one zoomable heatmap of all units (flat layers)."""
        if self.sample is None or self.layer_problem() or self.sample_problem():
            self.channel_grid.items = []
            self.zoom_pane.object = None
            return
        acts, scores = self.channel_activations()
        if acts.shape[1] * acts.shape[2] == 1:  # a flat layer: units, not feature maps
            self.channel_grid.items = []
            self.channel_legend.object = ""
            units = acts.reshape(-1)
            width = math.ceil(math.sqrt(units.size))
            grid = np.full(width * math.ceil(units.size / width), np.nan, dtype=np.float32)
            grid[:units.size] = units
            self.channel_title.object = f"`{self.layer}` is flat: its {units.size} units, row by row"
            self.zoom_pane.object = self._zoomable(grid.reshape(-1, width), f"{self.layer}: units")
            return
        order = self.channel_order_of(scores)
        peak = float(np.abs(acts).max(initial=0.0)) or 1.0  # one scale for every channel of the layer
        self.channel_grid.items = [{"channel": int(c), "score": float(scores[c]),
                                    "src": thumbnail(COLORMAPS[self.colormap](np.clip(acts[c] / peak, -1, 1)))} for c in order]
        self.channel_legend.object = (f'<span class="rl-scale" data-peak="{peak:.6g}" style="font-size:11px">−{peak:.3g} '
                                      f'<img src="{colormap_url(self.colormap, 120, 10)}" width="120" height="10"> +{peak:.3g}</span>')
        self.channel_title.object = (f"`{self.layer}`: {acts.shape[0]} channels of {acts.shape[1]}×{acts.shape[2]}, "
                                     f"by {'entropy × magnitude score' if self.channel_order == 'score' else 'index'}; click one to zoom")
        self._draw_zoom()

    def _draw_zoom(self) -> None:
        """The clicked channel at full resolution, with wheel zoom and value hover."""
        if self.sample is None or self.channel is None:
            self.zoom_pane.object = None
            return
        acts, _ = self.channel_activations()
        if not 0 <= self.channel < acts.shape[0] or acts.shape[1] * acts.shape[2] == 1:
            self.zoom_pane.object = None
            return
        self.zoom_pane.object = self._zoomable(acts[self.channel], f"{self.layer}: channel {self.channel}")

    @staticmethod
    def _zoomable(values: np.ndarray, title: str) -> hv.Image:
        h, w = values.shape
        return hv.Image(values, bounds=(0, 0, w, h), kdims=["column", "row"], vdims=["activation"]).opts(
            cmap="fire", colorbar=True, tools=["hover"], active_tools=["wheel_zoom"], title=title,
            width=420, height=400, data_aspect=1, xaxis=None, yaxis=None)
