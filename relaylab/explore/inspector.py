"""The sample inspector: one sample (and any pinned ones) beside every explanation the project can give of it.

Each row shows the input; the heatmap of the state's attribution set (as stored); with a recorded model also Grad-CAM,
LayerCAM and Focus LayerCAM at the chosen depth, guided backprop and guided Grad-CAM at the same layer, and LRP with the
chosen composite (computed by the process's one `SampleExplainer`, cached there); and the top-10 predictions (the
model's probabilities, or the attribution set's stored outputs without a model). Without a model every attribution
set that holds the sample is shown instead. Pinned samples (the state's `pinned`, Tensorleap's "add another sample")
stay side by side when the category or selection changes.

Everything chosen here is the session's `ViewState` (sample, pinned, label, depth, composite, inspector colour map), so
share links and exported states carry it. Figures are `<figure class="rl-explanation" data-kind=".." data-sample="..">`
holding a PNG data URI at the explanation's own resolution, so tests and scripts read back the exact pixels.
"""

from __future__ import annotations

import base64
import html
import logging
import math

import numpy as np
import panel as pn
import param

from ..errors import RelaylabError
from .clicks import ClickableHTML
from .colormaps import COLORMAPS
from .data import ProjectData
from .render import css_image_rendering, encode_png, heatmap_rgba, input_rgb, overlay_rgba
from .state import MAX_PINNED, ViewState
from .view import ProjectViewer

log = logging.getLogger(__name__)

FIGURE_PX = 132  # display size of each explanation
TOP = 10  # predictions listed per sample
PREDICTED = -1  # the label Select's value for "the predicted class" (state.label None)
CAM_KINDS = (("gradcam", "Grad-CAM"), ("layercam", "LayerCAM"), ("focus_layercam", "Focus LayerCAM"))

CSS = f"""
.rl-inspect-row {{ border-bottom: 1px solid #ddd; padding: 6px 0; }}
.rl-inspect-head {{ font-size: 13px; margin-bottom: 4px; }}
.rl-inspect-head button {{ margin-left: 8px; font-size: 11px; }}
.rl-inspect-body {{ display: flex; gap: 14px; align-items: flex-start; }}
.rl-figures {{ display: flex; flex-wrap: wrap; gap: 6px; }}
.rl-explanation {{ margin: 0; width: {FIGURE_PX}px; font-size: 11px; text-align: center; }}
.rl-explanation img {{ display: block; width: {FIGURE_PX}px; height: {FIGURE_PX}px; border: 1px solid #ccc; }}
.rl-explanation .rl-blank {{ width: {FIGURE_PX}px; height: {FIGURE_PX}px; border: 1px dashed #bbb; color: #888; display: flex;
  align-items: center; justify-content: center; }}
.rl-top {{ font-size: 11px; min-width: 220px; }}
.rl-top td {{ padding: 0 4px; white-space: nowrap; }}
.rl-top .rl-bar {{ display: inline-block; height: 9px; background: #4c72b0; }}
.rl-inspect-error {{ color: #b00020; }}
"""


def data_uri(rgba: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_png(rgba)).decode()


def default_depth(layers: list[dict], cam_layers: list[str]) -> int:
    """The last CAM layer that still has a spatial extent (a CAM of a 1×1 map shows nothing), else the last one."""
    shapes = {x["name"]: x["output_shape"] for x in layers}
    spatial = [i for i, name in enumerate(cam_layers) if math.prod(shapes[name][1:]) > 1]
    return (spatial or [max(0, len(cam_layers) - 1)])[-1]


class SampleInspector(ProjectViewer):
    """The state's sample and pinned samples, each with every explanation (see the module docstring)."""

    def __init__(self, data: ProjectData, state: ViewState, **params):
        super().__init__(data, state, **params)
        n = self.project.inputs.sizes["sample"]
        self.explainer = None
        self.model_problem = ""
        self.sample_input = pn.widgets.IntInput(label="Sample index", start=0, end=max(0, n - 1), value=None, width=130,
                                                css_classes=["rl-sample-input"])
        self.sample_input.param.watch(self._on_typed, "value")
        self.pin_button = pn.widgets.Button(label="Pin this sample", width=130, css_classes=["rl-pin"])
        self.pin_button.on_click(lambda event: self.pin(self.state.sample))
        self.unpin_button = pn.widgets.Button(label="Unpin all", width=100, css_classes=["rl-unpin-all"])
        self.unpin_button.on_click(lambda event: self.state.apply({"pinned": []}))
        classes = {f"{c}: {name}": int(c) for c, name in zip(self.project.label_map["class"].values.tolist(),
                                                             map(str, self.project.label_map["name"].values))}
        self.label_select = pn.widgets.Select(label="Explained class", options={"predicted": PREDICTED, **classes}, width=170,
                                              css_classes=["rl-explained-label"])
        self.label_select.param.watch(lambda event: self.state.apply({"label": None if event.new == PREDICTED else event.new}), "value")
        self.composite_select = pn.widgets.Select.from_param(self.state.param.composite, label="LRP composite", width=190,
                                                             css_classes=["rl-composite"])
        self.colormap_select = pn.widgets.Select(label="Colour map", options={"as the grid": "", **{c: c for c in COLORMAPS}}, width=150,
                                                 css_classes=["rl-inspector-colormap"])
        self.colormap_select.param.watch(lambda event: self.state.apply({"inspector_colormap": event.new}), "value")
        self.depth_slider = pn.widgets.IntSlider(label="CAM depth", start=0, end=1, value=0, width=200, visible=False,
                                                 css_classes=["rl-depth"])
        self.depth_slider.param.watch(lambda event: self.state.apply({"depth": event.new}), "value_throttled")
        self.note = pn.pane.HTML("", css_classes=["rl-inspector-note"], sizing_mode="stretch_width")
        self.body = ClickableHTML(on_action=self._on_action, sizing_mode="stretch_width", css_classes=["rl-inspector"],
                                  stylesheets=[CSS])
        self._open_model()
        self.refresh()

    # ------------------------------------------------------------------------------------------------ model

    def _open_model(self) -> None:
        if not self.data.has_model:
            self.model_problem = "the store records no model: stored heatmaps and outputs only"
            return
        try:
            self.explainer = self.data.explainer
        except RelaylabError as error:  # e.g. weights that cannot be loaded: the stored explanations still show
            log.info("sample inspector: %s", error)
            self.model_problem = f"the model could not be loaded: {error}"
            return
        cams = self.explainer.cam_layers
        self.depth_slider.param.update(start=0, end=max(1, len(cams) - 1), disabled=len(cams) < 2, visible=bool(cams))

    @property
    def depth(self) -> int | None:
        """The state's depth, else the deepest spatial CAM layer; None without CAM layers."""
        if self.explainer is None or not self.explainer.cam_layers:
            return None
        last = len(self.explainer.cam_layers) - 1
        chosen = self.state.depth if self.state.depth is not None else default_depth(self.explainer.layers, self.explainer.cam_layers)
        return min(chosen, last)

    @property
    def colormap(self) -> str:
        return self.state.inspector_colormap or self.state.colormap

    # ------------------------------------------------------------------------------------------------ actions

    @property
    def samples(self) -> list[int]:
        """The rows: the state's sample first, then the pinned ones."""
        rows = [self.state.sample] if self.state.sample is not None else []
        return rows + [s for s in self.state.pinned if s not in rows]

    def pin(self, sample: int | None) -> None:
        if sample is None or sample in self.state.pinned:
            return
        self.state.apply({"pinned": [*self.state.pinned, int(sample)][-MAX_PINNED:]})

    def _on_action(self, action: str, sample: int) -> None:
        if action == "pin":
            self.pin(sample)
        elif action == "unpin":
            self.state.apply({"pinned": [s for s in self.state.pinned if s != sample]})
        elif action == "inspect":
            self.state.apply({"sample": sample})

    def _on_typed(self, event) -> None:
        if event.new is not None and event.new != self.state.sample:
            self.state.apply({"sample": int(event.new), "tab": "sample"})

    # ------------------------------------------------------------------------------------------------ drawing

    @param.depends("state.sample", "state.pinned", "state.label", "state.depth", "state.composite", "state.inspector_colormap",
                   "state.colormap", "state.attribution", "state.analysis", watch=True)
    def refresh(self) -> None:
        s = self.state
        self.sample_input.value = s.sample
        self.label_select.value = PREDICTED if s.label is None else s.label
        self.colormap_select.value = s.inspector_colormap
        if self.depth is not None:
            self.depth_slider.value = self.depth
            self.depth_slider.label = f"CAM depth ({self.explainer.cam_layers[self.depth]})"
        self.pin_button.disabled = s.sample is None or s.sample in s.pinned or len(s.pinned) >= MAX_PINNED
        self.unpin_button.disabled = not s.pinned
        self.note.object = (f'<span style="color:#8a6d00">{html.escape(self.model_problem)}</span>' if self.model_problem else "")
        if not self.samples:
            self.body.html = ('<div class="rl-inspect-empty">No sample yet: click a card, a point of an embedding, or type a '
                              "sample index.</div>")
            return
        self.body.html = "".join(self.row_html(sample) for sample in self.samples)

    def row_html(self, sample: int) -> str:
        """One sample's row (head, figures, predictions), or what is wrong with it."""
        try:
            return self._row(sample)
        except RelaylabError as error:
            log.info("sample inspector: %s", error)
            return (f'<div class="rl-inspect-row" data-sample="{sample}"><div class="rl-inspect-error">sample {sample}: '
                    f"{html.escape(str(error))}</div>{self._pin_button(sample)}</div>")

    def _pin_button(self, sample: int) -> str:
        if sample in self.state.pinned:
            return f'<button class="rl-unpin" data-action="unpin" data-sample="{sample}">unpin</button>'
        return f'<button class="rl-pin-row" data-action="pin" data-sample="{sample}">pin</button>'

    def _row(self, sample: int) -> str:
        project, info = self.project, self.data.sample_info
        n = project.inputs.sizes["sample"]
        if not 0 <= sample < n:
            raise RelaylabError.at(project.path, "inputs/sample", f"a sample index in 0..{n - 1}", repr(sample))
        attribution = self.data.attribution_of(self.state)
        top = self.explainer.predictions(sample, top=TOP) if self.explainer is not None else self.data.top_predictions(sample, attribution, TOP)
        predicted = top[0]["class"] if top else None
        label = self.state.label if self.state.label is not None else predicted
        true = info.class_name(int(info.label[sample]))
        figures = self._figures(sample, attribution, label)
        head = (f'<div class="rl-inspect-head"><b>#{sample}</b>{" (pinned)" if sample in self.state.pinned else ""} · true: '
                f'<b>{html.escape(true)}</b> · predicted: <b>{html.escape(top[0]["name"]) if top else "—"}</b>'
                f' · explained: <b>{html.escape(info.class_name(label)) if label is not None else "—"}</b>{self._pin_button(sample)}</div>')
        return (f'<div class="rl-inspect-row" data-sample="{sample}" data-label="{"" if label is None else label}">{head}'
                f'<div class="rl-inspect-body"><div class="rl-figures">{"".join(figures)}</div>{self._top_html(top)}</div></div>')

    def _figure(self, sample: int, kind: str, caption: str, rgba: np.ndarray | None, note: str = "") -> str:
        if rgba is None:
            picture = f'<div class="rl-blank">{html.escape(note)}</div>'
        else:
            rendering = css_image_rendering("automatic", rgba.shape[0], rgba.shape[1], FIGURE_PX)
            picture = f'<img src="{data_uri(rgba)}" style="image-rendering: {rendering}" alt="{html.escape(caption)}">'
        return (f'<figure class="rl-explanation" data-kind="{kind}" data-sample="{sample}">{picture}'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def _figures(self, sample: int, attribution: str | None, label: int | None) -> list[str]:
        project, cmap = self.project, self.colormap
        figures = []
        image = input_rgb(project, sample) if project.has_images else None
        if image is not None:
            figures.append(self._figure(sample, "input", "input", np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])))
        stored = [attribution] if self.explainer is not None else list(project.attributions)
        for name in filter(None, stored):
            ds = project.attributions[name]
            caption = f"{name} (stored{', chosen' if name == attribution and len(stored) > 1 else ''})"
            if sample in ds.indexes["sample"]:
                figures.append(self._figure(sample, f"stored:{name}", caption, heatmap_rgba(ds["attribution"].sel(sample=sample).values, cmap)))
            else:
                figures.append(self._figure(sample, f"stored:{name}", caption, None, "not in this set"))
        if self.explainer is None or label is None:
            return figures
        explainer = self.explainer
        if explainer.cam_layers:
            layer = explainer.cam_layers[self.depth]
            for method, name in CAM_KINDS:
                cam = explainer.cam(sample, label, layer, method=method)
                figures.append(self._figure(sample, method, f"{name} · {layer}", heatmap_rgba(cam, cmap)))
            if image is not None:
                figures.append(self._figure(sample, "gradcam_overlay", "Grad-CAM over the input",
                                            overlay_rgba(image, explainer.cam(sample, label, layer, method="gradcam"), cmap)))
            figures.append(self._figure(sample, "guided_gradcam", f"guided Grad-CAM · {layer}",
                                        heatmap_rgba(explainer.guided_gradcam(sample, label, layer), cmap)))
        figures.append(self._figure(sample, "guided_backprop", "guided backprop", heatmap_rgba(explainer.guided_backprop(sample, label), cmap)))
        composite = self.state.composite
        figures.append(self._figure(sample, "lrp", f"LRP {composite}", heatmap_rgba(explainer.lrp(sample, label, composite), cmap)))
        return figures

    def _top_html(self, top: list[dict]) -> str:
        """The top predictions as a table with bars (probabilities with a model, the stored outputs without)."""
        if not top:
            return '<div class="rl-top"><i>no predictions stored</i></div>'
        probabilities = self.explainer is not None
        peak = max(abs(p["score"]) for p in top) or 1.0
        rows = "".join(
            f'<tr data-class="{p["class"]}"><td>{p["class"]}: {html.escape(p["name"])}</td>'
            f'<td>{format(p["score"], ".1%" if probabilities else ".3g")}</td>'
            f'<td><span class="rl-bar" style="width:{max(1, round(80 * abs(p["score"]) / peak))}px"></span></td></tr>'
            for p in top)
        title = f"top-{len(top)} predictions" if probabilities else f"top-{len(top)} stored outputs"
        return f'<div class="rl-top"><b>{title}</b><table>{rows}</table></div>'

    def __panel__(self):
        controls = pn.Row(self.sample_input, self.pin_button, self.unpin_button, self.label_select, self.depth_slider,
                          self.composite_select, self.colormap_select, align="end", css_classes=["rl-inspector-controls"])
        return pn.Column(controls, self.note, self.body, sizing_mode="stretch_width")
