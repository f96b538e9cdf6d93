"""Two categories side by side: the state's category and `state.compare`, each in its own embedding plot coloured the
same way (as in the SpRAy paper's comparison of a class with a Clever-Hans strategy and one without).

Both plots use the state's embedding, dimensions, clustering and colouring where the second category has them (else
its defaults, as the main view picks them), drawn by Datashader like the analysis view; the suspicion score of each
category is in its title. The second category is chosen here and lives in the session's `ViewState`.
"""

from __future__ import annotations

import logging

import panel as pn
import param

from ..errors import RelaylabError
from . import state as vs
from .data import ProjectData
from .embedding import category_label, colouring, legend_html, shaded_points
from .state import ViewState
from .view import ProjectViewer

log = logging.getLogger(__name__)

PANEL_PX = 430  # each plot's frame


class CompareView(ProjectViewer):
    """The state's category beside `state.compare`."""

    def __init__(self, data: ProjectData, state: ViewState, **params):
        super().__init__(data, state, **params)
        self.compare_select = pn.widgets.Select(label="Compare with", width=220, css_classes=["rl-compare-category"])
        self.compare_select.param.watch(self._on_select, "value")
        self.panes = [pn.pane.HoloViews(None, width=PANEL_PX + 40, height=PANEL_PX + 60, linked_axes=False,
                                        css_classes=[f"rl-compare-{side}"]) for side in ("left", "right")]
        self.legends = [pn.pane.HTML("", width=180) for _ in self.panes]
        self.message = pn.pane.HTML("", css_classes=["rl-compare-note"])
        self._stale = True
        self.state.param.watch(lambda event: self.refresh() if self._stale else None, "tab")
        self.refresh()

    def _on_select(self, event) -> None:
        if event.new is not None and event.new != self.state.compare:
            self.state.apply({"compare": event.new})

    def side_state(self, category: str) -> ViewState:
        """What one plot shows: the session's choices, made to fit `category` (a copy: the session's state is not touched)."""
        values = vs.fitted_values(self.project, {**self.state.values(), "category": category, "selection": [], "compare": ""})
        return ViewState(**{k: v for k, v in values.items() if k in ViewState.FIELDS})

    def plot(self, state: ViewState, score: float | None):
        points = self.data.points(state.analysis, state.category, state.embedding, state.x_dim, state.y_dim)
        codes, names, colors, counts = colouring(self.data, state, points)
        title = category_label(state.category, vs.categories(self.project, state.analysis).get(state.category, state.category), score)
        plot = shaded_points(points, codes, names, colors).opts(
            frame_width=PANEL_PX, frame_height=PANEL_PX, title=title, xlabel=f"{state.embedding} {state.x_dim}",
            ylabel=f"{state.embedding} {state.y_dim}", default_tools=["pan", "wheel_zoom", "reset"])
        return plot, legend_html(names, colors, counts, state.color_by)

    @param.depends("state.analysis", "state.category", "state.compare", "state.embedding", "state.clustering", "state.color_by",
                   "state.x_dim", "state.y_dim", watch=True)
    def refresh(self) -> None:
        """Redraw both sides; while the compare tab is not shown, only remember to (its plots cost a session ~0.5 s)."""
        s = self.state
        self._stale = s.tab != "compare"
        if self._stale:
            return
        cats = vs.categories(self.project, s.analysis)
        scores = self.data.category_scores(s.analysis)
        self.compare_select.options = {"(choose a category)": "", **{category_label(c, n, scores.get(c)): c for c, n in cats.items()
                                                                      if c != s.category}}
        self.compare_select.value = s.compare if s.compare in cats else ""
        if not s.category:
            self.message.object = "<i>this project has no analysis to compare</i>"
            return
        sides = [s.category] + ([s.compare] if s.compare in cats and s.compare != s.category else [])
        self.message.object = "" if len(sides) == 2 else "<i>choose a second category to see it beside this one</i>"
        for i, pane in enumerate(self.panes):
            if i >= len(sides):
                pane.object, self.legends[i].object = None, ""
                continue
            try:
                state = self.side_state(sides[i])
                pane.object, self.legends[i].object = self.plot(state, scores.get(sides[i]))
            except (RelaylabError, KeyError) as error:  # e.g. a category without the chosen embedding
                log.info("compare view: %s", error)
                pane.object, self.legends[i].object = None, f'<span class="rl-grid-error">{error}</span>'

    def __panel__(self):
        return pn.Column(pn.Row(self.compare_select, self.message, align="end"),
                         pn.Row(self.panes[0], self.legends[0], self.panes[1], self.legends[1]), sizing_mode="stretch_width")
