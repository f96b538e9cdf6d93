"""The paged sample grid: every selected sample can be seen (ViRelAy shows only the first 20), with its cluster, true
label and predicted label on the card (ViRelAy shows the prediction only on hover, and never the true label).

Only the current page's rows are read (labels, predictions; images are fetched by the browser per card), so a
selection of a million samples costs what a page of 20 does. Cards are `<div class="rl-card" data-sample=".."
data-cluster="..">` so browser tests and users' scripts can read them; a click on one opens the sample inspector, and
hovering shows a larger image with labels and the top-5 stored outputs. Heatmaps and predictions are those of the
state's attribution set (by default the one the analysis was computed from). Bad state (a sample index outside the dataset,
an attribution set or clustering the project lacks) is shown as a message in the page, never as a traceback.
"""

from __future__ import annotations

import html
import logging
import math

import numpy as np
import panel as pn
import param

from ..errors import RelaylabError
from . import render
from .clicks import ClickableHTML
from .data import Clusters, ProjectData, small_read
from .serve import image_url
from .state import ViewState
from .view import ProjectViewer

log = logging.getLogger(__name__)

CSS = """
.rl-grid {display: flex; flex-wrap: wrap; gap: 10px;}
.rl-card {width: var(--rl-px); font-size: 12px; line-height: 1.35; position: relative;}
.rl-card .rl-tip {display: none; position: absolute; z-index: 20; top: 0; left: calc(100% + 4px); background: #fff;
  border: 1px solid #999; box-shadow: 0 2px 6px rgba(0,0,0,.25); padding: 6px; width: 200px; pointer-events: none;}
.rl-card:hover .rl-tip {display: block;}
.rl-card .rl-tip img {border: none;}
.rl-card img {display: block; border: 1px solid #ccc;}
.rl-card .rl-missing {display: flex; align-items: center; justify-content: center; border: 1px dashed #bbb; color: #888;}
.rl-card.rl-wrong .rl-prediction {color: #b00020; font-weight: 600;}
.rl-grid-error {color: #b00020; margin: 4px 0;}
"""


def label_names(label_map) -> dict[int, str]:
    return {int(c): str(n) for c, n in zip(label_map["class"].values, label_map["name"].values)}


class SampleGrid(ProjectViewer):
    """A page of the state's selection as cards, with a pager ("page k of n", "N selected"). Selection, page, page
    size, mode, colour map, sampling and the clustering that labels the cards are the state's."""

    display_px = param.Integer(render.VIRELAY_DISPLAY_PX, bounds=(8, 1024), doc="card image size in CSS pixels")

    def __init__(self, data: ProjectData, state: ViewState, **params):
        super().__init__(data, state, **params)
        self._previous = pn.widgets.Button(label="◀ previous", width=100, css_classes=["rl-page-previous"])
        self._next = pn.widgets.Button(label="next ▶", width=100, css_classes=["rl-page-next"])
        self._status = pn.pane.HTML("", css_classes=["rl-pager-status"])
        self._cards = ClickableHTML(on_action=self._on_action, sizing_mode="stretch_width", stylesheets=[CSS], css_classes=["rl-cards"])
        self._previous.on_click(lambda event: self._turn(-1))
        self._next.on_click(lambda event: self._turn(+1))
        self._refresh()

    # ------------------------------------------------------------------------------------------------ paging

    @property
    def pages(self) -> int:
        return max(1, math.ceil(len(self.state.selection) / self.state.page_size))

    @property
    def current_page(self) -> int:
        """The state's page, shown clamped to the last page."""
        return min(self.state.page, self.pages - 1)

    @property
    def page_samples(self) -> list:
        start = self.current_page * self.state.page_size
        return list(self.state.selection[start:start + self.state.page_size])

    def _on_action(self, action: str, sample: int) -> None:
        if action == "inspect":  # a card was clicked: open it in the sample inspector
            self.state.apply({"sample": sample, "tab": "sample"})

    def _turn(self, step: int) -> None:
        self.state.page = min(max(self.current_page + step, 0), self.pages - 1)

    def status_html(self) -> str:
        k, n, count = self.current_page + 1, self.pages, len(self.state.selection)
        return (f'<span class="rl-pager" data-page="{k}" data-pages="{n}" data-selected="{count}">'
                f"page {k} of {n} &nbsp;·&nbsp; {count} selected</span>")

    # ------------------------------------------------------------------------------------------------ content

    def _attribution(self) -> str | None:
        """The attribution set used (None for a project without any in input mode); RelaylabError for an unknown one."""
        if self.state.mode == "input" and not self.project.attributions:
            return None
        return render.attribution_set(self.project, self.data.attribution_of(self.state))

    def cards_html(self) -> str:
        """The page's cards, or a message saying what is wrong with the view."""
        project, state = self.project, self.state
        try:
            attribution = self._attribution()
            if state.mode == "input" and not project.has_images:
                raise RelaylabError.at(project.path, "inputs/input", "input images (mode 'input')",
                                       "none: the project holds attributions without their dataset; show 'attribution'")
        except RelaylabError as error:
            return f'<div class="rl-grid-error">{html.escape(str(error))}</div>'
        problems, rows, bad = [], [], []
        n = project.inputs.sizes["sample"]
        for sample in self.page_samples:
            try:
                rows.append(render.check_sample(project, sample))
            except RelaylabError:
                bad.append(repr(sample))
        if bad:
            problems.append(f"{project.path}:inputs/sample: expected sample indices in 0..{n - 1} "
                            f"(found {', '.join(bad[:10])}{' …' if len(bad) > 10 else ''} on this page)")
        try:
            clusters = self.data.clusters(state.analysis, state.category, state.clustering)
        except RelaylabError as error:
            problems.append(str(error))
            clusters = None
        messages = "".join(f'<div class="rl-grid-error">{html.escape(p)}</div>' for p in problems)
        if not rows:
            empty = "" if problems else f'<div class="rl-grid-empty">no samples selected (the dataset has {n})</div>'
            return messages + empty
        cards = "".join(self._cards_for(rows, attribution, clusters))
        return f'{messages}<div class="rl-grid" style="--rl-px: {self.display_px}px">{cards}</div>'

    def _cards_for(self, rows: list[int], attribution: str | None, clusters: Clusters | None) -> list[str]:
        project, state = self.project, self.state
        names = label_names(project.label_map)
        labels = small_read(project.inputs["label"].sel(sample=rows))
        predicted: dict[int, int] = {}
        top5: dict[int, list[int]] = {}
        attributed: set[int] = set()
        if attribution is not None:
            ds = project.attributions[attribution]
            present = [s for s in rows if s in ds.indexes["sample"]]
            attributed = set(present)
            if present and "prediction" in ds:
                scores = small_read(ds["prediction"].sel(sample=present))
                predicted = dict(zip(present, scores.argmax(axis=1).tolist()))
                top5 = dict(zip(present, np.argsort(-scores, axis=1, kind="stable")[:, :5].tolist()))
        member_at = clusters.members.get_indexer(rows) if clusters is not None else None
        shaped = project.inputs if project.has_images or attribution is None else project.attributions[attribution]
        height, width = shaped.sizes.get("y", 1), shaped.sizes.get("x", 1)
        rendering = render.css_image_rendering(state.sampling, height, width, self.display_px)
        cards = []
        for i, sample in enumerate(rows):
            label = labels[i]
            true_classes = np.flatnonzero(label).tolist() if label.ndim else [int(label)]
            true_name = ", ".join(names.get(c, f"class {c}") for c in true_classes)
            pred = predicted.get(sample)
            pred_name = names.get(pred, f"class {pred}") if pred is not None else "—"
            if clusters is None or member_at[i] < 0:
                data_cluster, cluster_text = "", "—" if clusters is None else "not in category"
            else:
                c = int(clusters.labels[member_at[i]])
                data_cluster, cluster_text = str(c), "noise" if c == -1 else f"cluster {c}"
            wrong = pred is not None and pred not in true_classes
            if state.mode != "input" and sample not in attributed:
                picture = (f'<div class="rl-missing" style="width:{self.display_px}px;height:{self.display_px}px">'
                           f"no attribution in '{html.escape(attribution)}'</div>")
            else:
                src = image_url(self.data, sample, state.mode, state.colormap, attribution)
                picture = (f'<img src="{html.escape(src)}" width="{self.display_px}" height="{self.display_px}" '
                           f'style="image-rendering: {rendering}" alt="sample {sample}" loading="lazy">')
            top = ", ".join(html.escape(names.get(c, f"class {c}")) for c in top5.get(sample, [])) or "—"
            larger = picture.replace(f'width="{self.display_px}" height="{self.display_px}"', 'width="188" height="188"').replace(
                ' loading="lazy"', "")  # shown on hover: the browser has the image by then (same URL)
            tip = (f'<div class="rl-tip">{larger}'
                   f"<b>#{sample}</b><br>true: {html.escape(true_name)}<br>predicted: {html.escape(pred_name)}<br>"
                   f'top-5: <span class="rl-top5">{top}</span></div>')
            cards.append(
                f'<div class="rl-card{" rl-wrong" if wrong else ""}" data-action="inspect" data-sample="{sample}" data-cluster="{data_cluster}" '
                f'data-label="{html.escape(true_name)}" data-prediction="{html.escape(pred_name)}">'
                f"{picture}{tip}"
                f'<div class="rl-card-head"><b>#{sample}</b> · <span class="rl-cluster">{cluster_text}</span></div>'
                f'<div class="rl-label">true: {html.escape(true_name)}</div>'
                f'<div class="rl-prediction">predicted: {html.escape(pred_name)}</div></div>')
        return cards

    @param.depends("state.selection", "state.page", "state.page_size", "state.mode", "state.colormap", "state.sampling",
                   "state.analysis", "state.category", "state.clustering", "state.attribution", "display_px", watch=True)
    def _refresh(self) -> None:
        self._status.object = self.status_html()
        self._previous.disabled = self.current_page == 0
        self._next.disabled = self.current_page >= self.pages - 1
        self._cards.html = self.cards_html()

    def __panel__(self):
        return pn.Column(pn.Row(self._previous, self._status, self._next, align="center"), self._cards, sizing_mode="stretch_width")
