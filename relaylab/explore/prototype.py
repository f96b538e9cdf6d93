"""The prototype of the selection: beside the samples a user picked (a cluster's button, a lasso), their mean and
median relevance and where it concentrates compared with the rest of the category (the estimated artifact mask), as
the census computes them for its clusters (`relaylab.analyze.census.cluster_summaries`); with the category's census
rank and score when the store holds a census of the analysis.
"""

from __future__ import annotations

import base64
import html
import logging

import numpy as np
import panel as pn

from ..errors import RelaylabError
from . import state as vs
from .data import small_read
from .render import encode_png, heatmap_rgba, mask_rgba
from .view import ProjectViewer

log = logging.getLogger(__name__)

MAX_ROWS = 2_000  # members read per side (selection, rest); larger sides are sampled
PX = 84


def png_uri(rgba: np.ndarray) -> str:
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(rgba)).resize((PX, PX), Image.NEAREST)
    return "data:image/png;base64," + base64.b64encode(encode_png(np.asarray(image))).decode()


class PrototypeView(ProjectViewer):
    """Mean and median relevance and estimated mask of the state's selection within its category."""

    def __init__(self, data, state, **params):
        super().__init__(data, state, **params)
        self.pane = pn.pane.HTML("", width=290, css_classes=["rl-prototype"])
        self.state.param.watch(lambda *events: self.refresh(), ["selection", "analysis", "category", "attribution", "colormap"])
        self.refresh()

    def __panel__(self):
        return self.pane

    def census_line(self) -> str:
        census = self.data.census(self.state.analysis)
        if census is None or self.state.category not in census.children:
            return ""
        scores = self.data.category_scores(self.state.analysis)
        rank = list(scores).index(self.state.category) + 1
        return (f'<div class="rl-census" data-rank="{rank}" data-score="{scores[self.state.category]:.4f}">census: '
                f"rank {rank} of {len(scores)}, score {scores[self.state.category]:.2f}</div>")

    def refresh(self) -> None:
        try:
            self.pane.object = self.census_line() + self._prototype_html()
        except RelaylabError as error:
            log.info("prototype: %s", error)
            self.pane.object = f"<i>{html.escape(str(error))}</i>"

    def _prototype_html(self) -> str:
        from ..analyze.census import cluster_summaries, relevance_maps

        s = self.state
        node = vs.category_node(self.project, s.analysis, s.category)
        attribution = self.data.attribution_of(s)
        if node is None or not s.selection or attribution is None or attribution not in self.project.attributions:
            return ""
        members = np.asarray(node["index"].values, dtype=np.int64)
        chosen = np.isin(members, s.selection_array())
        if not chosen.any():
            return ""
        rng = np.random.default_rng(0)
        pick = lambda rows: rows if len(rows) <= MAX_ROWS else np.sort(rng.choice(rows, MAX_ROWS, replace=False))  # noqa: E731
        inside, outside = pick(np.flatnonzero(chosen)), pick(np.flatnonzero(~chosen))
        rows = np.concatenate([inside, outside])
        heatmaps = small_read(self.project.attributions[attribution]["attribution"].sel(sample=members[rows]))
        maps = relevance_maps(heatmaps)
        labels = np.r_[np.ones(len(inside), np.int32), np.zeros(len(outside), np.int32)]
        summary = cluster_summaries(maps, labels, np.zeros(len(rows)), np.zeros((len(rows), 1)), members[rows], max_clusters=2, typical=0)
        slot = int(np.flatnonzero(summary["cluster_id"] == 1)[0])
        cmap = s.colormap
        images = [("mean relevance", png_uri(heatmap_rgba(summary["prototype_mean"][slot], cmap))),
                  ("median relevance", png_uri(heatmap_rgba(summary["prototype_median"][slot], cmap))),
                  ("estimated mask", png_uri(mask_rgba(summary["mask"][slot])))]
        figures = "".join(f'<figure style="display:inline-block;margin:2px"><img src="{uri}" alt="{name}" data-kind="{name.split()[0]}" '
                          f'style="image-rendering:pixelated"><figcaption style="font-size:10px">{name}</figcaption></figure>'
                          for name, uri in images)
        rest = "" if len(outside) else " (the whole category)"
        return (f'<div class="rl-prototype-body" data-count="{int(chosen.sum())}" data-mask-pixels="{int(summary["mask"][slot].sum())}" '
                f'data-concentration="{float(summary["concentration"][slot]):.4f}"><b>Prototype of the selection</b> '
                f"({int(chosen.sum())} samples{rest}; concentration {float(summary['concentration'][slot]):.2f})<br>{figures}</div>")
