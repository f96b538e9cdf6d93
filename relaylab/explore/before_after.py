"""Before and after a fix: the same samples explained by the original model and by a corrected model version
(`relaylab fix`), side by side, with each model's top prediction and the version's verification numbers.

The samples are the session's selection (a cluster button, a lasso), else the samples the version was learned from;
at most MAX_SAMPLES of them. The heatmaps are LRP of the version's class (the category it corrected) with the
session's composite, computed live by each model's `SampleExplainer` (shared by all sessions, cached).
The tab exists when the store records corrected versions; which one is shown is the state's `model_version`.
"""

from __future__ import annotations

import base64
import html
import logging

import numpy as np
import panel as pn

from ..errors import RelaylabError
from . import state as vs
from .render import encode_png, heatmap_rgba, input_rgb
from .view import ProjectViewer

log = logging.getLogger(__name__)

MAX_SAMPLES = 8
PX = 112
NUMBERS = (("accuracy", "clean accuracy"), ("flip_rate", "artifact flip rate"), ("relevance_in_mask", "relevance in the mask"),
           ("census_score", "census score"))


def uri(rgba_or_rgb: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_png(np.ascontiguousarray(rgba_or_rgb))).decode()


class BeforeAfterView(ProjectViewer):
    """The original and a corrected model's heatmaps of the same samples."""

    def __init__(self, data, state, **params):
        super().__init__(data, state, **params)
        self.version_select = pn.widgets.Select(label="Corrected model", width=260, css_classes=["rl-fix-version"])
        self.version_select.param.watch(self._on_select, "value")
        self.pane = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["rl-before-after"])
        self.state.param.watch(lambda *events: self.refresh(), ["tab", "selection", "model_version", "colormap", "composite"])
        self.refresh()

    def __panel__(self):
        return pn.Column(self.version_select, self.pane, sizing_mode="stretch_width")

    def versions(self) -> dict[str, dict]:
        return vs.model_versions(self.project)

    def _on_select(self, event) -> None:
        if event.new and event.new != self.state.model_version:
            self.state.apply({"model_version": event.new})

    def refresh(self) -> None:
        if self.state.tab != "fix":  # drawn when the tab is opened: a session that never opens it pays nothing
            return
        versions = self.versions()
        self.version_select.options = list(versions)
        version = self.state.model_version if self.state.model_version in versions else (list(versions)[-1] if versions else None)
        if version is not None and self.version_select.value != version:
            self.version_select.value = version
        try:
            self.pane.object = self.page(version, versions.get(version)) if version else "<i>No corrected model version: run relaylab fix.</i>"
        except RelaylabError as error:
            log.info("before/after: %s", error)
            self.pane.object = f"<i>{html.escape(str(error))}</i>"

    def samples(self, entry: dict) -> tuple[np.ndarray, str]:
        chosen = self.state.selection_array()
        if len(chosen):
            return chosen[:MAX_SAMPLES], f"the selection ({len(chosen)} samples)"
        recorded = np.asarray(entry["selection"]["samples"], dtype=np.int64)
        return recorded[:MAX_SAMPLES], f"the samples {html.escape(entry['selection']['source'])} the version was learned from"

    def page(self, version: str, entry: dict) -> str:
        label = int(entry["selection"]["label"])
        original, corrected = self.data.explainer, self.data.explainer_for(version)
        samples, which = self.samples(entry)
        composite, cmap = self.state.composite, self.state.inspector_colormap or self.state.colormap
        rows = []
        for sample in samples:
            sample = int(sample)
            cells = [f'<td><img src="{uri(input_rgb(self.project, sample))}" width="{PX}" data-model="input" '
                     f'style="image-rendering:pixelated;border:1px solid #ccc"></td>']
            for name, explainer in (("original", original), ("corrected", corrected)):
                heatmap = explainer.lrp(sample, label, composite)
                top = explainer.predictions(sample, top=1)[0]
                cells.append(f'<td><img src="{uri(heatmap_rgba(heatmap, cmap))}" width="{PX}" data-model="{name}" '
                             f'data-relevance="{float(heatmap.sum()):.6g}" style="image-rendering:pixelated"><br>'
                             f'<span style="font-size:11px" data-prediction="{top["class"]}">{html.escape(top["name"])} '
                             f'({top["score"]:.2f})</span></td>')
            rows.append(f'<tr class="rl-ba-row" data-sample="{sample}"><td>{sample}</td>{"".join(cells)}</tr>')
        correction = entry["correction"]
        verified = entry.get("verification") or {}
        numbers = ""
        if verified:
            show = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
            numbers = "<table class='rl-ba-numbers'><tr><th></th><th>original</th><th>corrected</th></tr>" + "".join(
                f"<tr><td>{label_}</td><td>{show(verified['original'].get(key))}</td><td>{show(verified['corrected'].get(key))}</td></tr>"
                for key, label_ in NUMBERS) + "</table>"
        return (f'<div class="rl-ba" data-version="{html.escape(version)}" data-label="{label}">'
                f"<p><b>{html.escape(version)}</b>: {html.escape(correction['method'])} at <code>{html.escape(correction['layer'])}</code>, "
                f"category {html.escape(entry['selection']['category'])}. LRP ({html.escape(composite)}) of class {label} for {which}.</p>"
                f"{numbers}<table><tr><th>sample</th><th>input</th><th>original</th><th>corrected</th></tr>{''.join(rows)}</table></div>")
