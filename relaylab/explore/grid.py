"""The paged sample grid: every selected sample can be seen (ViRelAy shows only the first 20), with its cluster, true
label and predicted label on the card (ViRelAy shows the prediction only on hover, and never the true label).

Only the current page's rows are read (labels, predictions; images are fetched by the browser per card), so a
selection of a million samples costs what a page of 20 does. Cards are `<div class="rl-card" data-sample=".."
data-cluster="..">` so browser tests and users' scripts can read them. Bad state (a sample index outside the dataset,
an unknown colour map or attribution set) is shown as a message in the page, never as a traceback.
"""

from __future__ import annotations

import html
import logging
import math

import numpy as np
import pandas as pd
import panel as pn
import param

from ..data.project import Project
from ..errors import RelaylabError
from . import images

log = logging.getLogger(__name__)

CSS = """
.rl-grid {display: flex; flex-wrap: wrap; gap: 10px;}
.rl-card {width: var(--rl-px); font-size: 12px; line-height: 1.35;}
.rl-card img {display: block; border: 1px solid #ccc;}
.rl-card .rl-missing {display: flex; align-items: center; justify-content: center; border: 1px dashed #bbb; color: #888;}
.rl-card.rl-wrong .rl-prediction {color: #b00020; font-weight: 600;}
.rl-grid-error {color: #b00020; margin: 4px 0;}
"""


def label_names(label_map) -> dict[int, str]:
    return {int(c): str(n) for c, n in zip(label_map["class"].values, label_map["name"].values)}


class SampleGrid(pn.viewable.Viewer):
    """A page of the selected samples as cards, with a pager ("page k of n", "N selected")."""

    project_path = param.String("", doc="project file or store, opened once per process (images.shared_project)")
    samples = param.List([], doc="dataset indices of the selected samples, in display order")
    page = param.Integer(0, bounds=(0, None), doc="0-based page; shown clamped to the last page")
    page_size = param.Integer(20, bounds=(1, 1000))
    mode = param.String("overlay", doc="input | attribution | overlay")
    colormap = param.String(images.DEFAULT_COLORMAP)
    sampling = param.String("automatic", doc="automatic (ViRelAy's rule) | smooth | pixelated")
    attribution = param.String(None, allow_None=True, doc="attribution set for heatmaps and predictions; None: the first")
    analysis = param.String("", doc="analysis whose clustering labels the cards")
    category = param.String("")
    clustering = param.String("")
    display_px = param.Integer(images.VIRELAY_DISPLAY_PX, bounds=(8, 1024), doc="card image size in CSS pixels")

    def __init__(self, **params):
        super().__init__(**params)
        self._previous = pn.widgets.Button(label="◀ previous", width=100, css_classes=["rl-page-previous"])
        self._next = pn.widgets.Button(label="next ▶", width=100, css_classes=["rl-page-next"])
        self._status = pn.pane.HTML("", css_classes=["rl-pager-status"])
        self._cards = pn.pane.HTML("", sizing_mode="stretch_width", stylesheets=[CSS], css_classes=["rl-cards"])
        self._previous.on_click(lambda event: self._turn(-1))
        self._next.on_click(lambda event: self._turn(+1))
        self._cluster_cache: dict[tuple, tuple[pd.Index, np.ndarray] | None] = {}
        self.param.watch(lambda *events: self._refresh(), [p for p in self.param if p != "name"])
        self._refresh()

    # ------------------------------------------------------------------------------------------------ paging

    @property
    def pages(self) -> int:
        return max(1, math.ceil(len(self.samples) / self.page_size))

    @property
    def current_page(self) -> int:
        return min(self.page, self.pages - 1)

    @property
    def page_samples(self) -> list:
        start = self.current_page * self.page_size
        return list(self.samples[start:start + self.page_size])

    def _turn(self, step: int) -> None:
        self.page = min(max(self.current_page + step, 0), self.pages - 1)

    def status_html(self) -> str:
        k, n, count = self.current_page + 1, self.pages, len(self.samples)
        return (f'<span class="rl-pager" data-page="{k}" data-pages="{n}" data-selected="{count}">'
                f"page {k} of {n} &nbsp;·&nbsp; {count} selected</span>")

    # ------------------------------------------------------------------------------------------------ content

    def _project(self) -> Project:
        if not self.project_path:
            raise RelaylabError.at("project_path", "", "a project file or store", "none given")
        return images.shared_project(self.project_path)

    def _clusters(self, project: Project) -> tuple[pd.Index, np.ndarray] | None:
        """(member sample indices, cluster labels) of the chosen clustering, read once per (analysis, category, clustering)."""
        key = (str(project.path), self.analysis, self.category, self.clustering)
        if key not in self._cluster_cache:
            self._cluster_cache[key] = None
            if self.analysis and self.category and self.clustering:
                if self.analysis not in project.analyses:
                    raise RelaylabError.at(project.path, "analyses", f"an analysis ({', '.join(project.analyses) or 'none'})", repr(self.analysis))
                tree = project.analyses[self.analysis]
                if self.category not in tree.children:
                    raise RelaylabError.at(project.path, f"analyses/{self.analysis}", "a category of the analysis", repr(self.category))
                node = tree[self.category]
                if "cluster" not in node.children or self.clustering not in node["cluster"].data_vars:
                    raise RelaylabError.at(project.path, f"analyses/{self.analysis}/{self.category}/cluster",
                                           "a clustering of the category", repr(self.clustering))
                self._cluster_cache[key] = (pd.Index(np.asarray(node["index"].values, dtype=np.int64)),
                                            np.asarray(node["cluster"][self.clustering].values, dtype=np.int64))
        return self._cluster_cache[key]

    def _check_view(self, project: Project) -> str | None:
        """The attribution set used (None in input mode); raises RelaylabError for a view that cannot be drawn."""
        images.check_mode(self.mode)
        images.check_colormap(self.colormap)
        images.css_image_rendering(self.sampling, 1, 1)
        if self.mode == "input" and self.attribution is None and not project.attributions:
            return None
        return images.attribution_set(project, self.attribution)

    def cards_html(self) -> str:
        """The page's cards, or a message saying what is wrong with the view."""
        try:
            project = self._project()
            attribution = self._check_view(project)
        except RelaylabError as error:
            return f'<div class="rl-grid-error">{html.escape(str(error))}</div>'
        problems, rows, bad = [], [], []
        n = project.inputs.sizes["sample"]
        for sample in self.page_samples:
            try:
                rows.append(images.check_sample(project, sample))
            except RelaylabError:
                bad.append(repr(sample))
        if bad:
            problems.append(f"{project.path}:inputs/sample: expected sample indices in 0..{n - 1} "
                            f"(found {', '.join(bad[:10])}{' …' if len(bad) > 10 else ''} on this page)")
        try:
            clusters = self._clusters(project)
        except RelaylabError as error:
            problems.append(str(error))
            clusters = None
        messages = "".join(f'<div class="rl-grid-error">{html.escape(p)}</div>' for p in problems)
        if not rows:
            empty = "" if problems else f'<div class="rl-grid-empty">no samples selected (the dataset has {n})</div>'
            return messages + empty
        cards = "".join(self._cards_for(project, rows, attribution, clusters))
        return f'{messages}<div class="rl-grid" style="--rl-px: {self.display_px}px">{cards}</div>'

    def _cards_for(self, project: Project, rows: list[int], attribution: str | None, clusters) -> list[str]:
        names = label_names(project.label_map)
        labels = project.inputs["label"].sel(sample=rows).values
        predicted: dict[int, int] = {}
        if attribution is not None:
            ds = project.attributions[attribution]
            present = [s for s in rows if s in ds.indexes["sample"]]
            if present:
                scores = ds["prediction"].sel(sample=present).values
                predicted = dict(zip(present, scores.argmax(axis=1).tolist()))
        member_at = clusters[0].get_indexer(rows) if clusters is not None else None
        height, width = project.inputs.sizes["y"], project.inputs.sizes["x"]
        rendering = images.css_image_rendering(self.sampling, height, width, self.display_px)
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
                c = int(clusters[1][member_at[i]])
                data_cluster, cluster_text = str(c), "noise" if c == -1 else f"cluster {c}"
            wrong = pred is not None and pred not in true_classes
            if self.mode != "input" and pred is None:
                picture = (f'<div class="rl-missing" style="width:{self.display_px}px;height:{self.display_px}px">'
                           f"no attribution in '{html.escape(attribution)}'</div>")
            else:
                src = images.image_url(project.path, sample, self.mode, self.colormap, attribution)
                picture = (f'<img src="{html.escape(src)}" width="{self.display_px}" height="{self.display_px}" '
                           f'style="image-rendering: {rendering}" alt="sample {sample}" loading="lazy">')
            cards.append(
                f'<div class="rl-card{" rl-wrong" if wrong else ""}" data-sample="{sample}" data-cluster="{data_cluster}" '
                f'data-label="{html.escape(true_name)}" data-prediction="{html.escape(pred_name)}" title="predicted: {html.escape(pred_name)}">'
                f"{picture}"
                f'<div class="rl-card-head"><b>#{sample}</b> · <span class="rl-cluster">{cluster_text}</span></div>'
                f'<div class="rl-label">true: {html.escape(true_name)}</div>'
                f'<div class="rl-prediction">predicted: {html.escape(pred_name)}</div></div>')
        return cards

    def _refresh(self) -> None:
        self._status.object = self.status_html()
        self._previous.disabled = self.current_page == 0
        self._next.disabled = self.current_page >= self.pages - 1
        self._cards.object = self.cards_html()

    def __panel__(self):
        return pn.Column(pn.Row(self._previous, self._status, self._next, align="center"), self._cards, sizing_mode="stretch_width")
