"""The explorer app: one tab per project, each with the analysis view, the sample grid and (with a model) the layer
inspector, all driven by one `ViewState` per project tab.

`build_app` is called once per browser session (by `panel serve apps/explorer.py` and by `relaylab serve`), so
sessions never share state; they share only each project's read-only `ProjectData` (the open project, point arrays,
rendered PNGs, the model). The URL query carries the active tab's view: it is applied when the page is opened and
rewritten as the view changes, so the address bar is always a share link. Bad requests (an unknown sample in a link, a missing analysis, an unknown colour
map, a broken state file) become a message at the top of the page, never a traceback.
"""

from __future__ import annotations

import html
import io
import json
import logging
import os
import weakref
from pathlib import Path

import panel as pn

from ..data.project import Project
from ..errors import RelaylabError
from . import state as vs
from .compare import CompareView
from .data import ProjectData
from .embedding import EmbeddingView
from .grid import SampleGrid
from .inspector import SampleInspector
from .prototype import PrototypeView
from .serve import colormap_url

log = logging.getLogger(__name__)

MAX_STATE_BYTES = 8 * 2**20  # an imported state file (a selection of a million samples is ~7 MB of JSON)
MAX_STATE_DEPTH = 32  # exported states nest 4 levels
LIVE = weakref.WeakSet()  # the ExplorerApps alive in this process (one per open session): what a closed session must leave

STYLE = """
.rl-footer { color: #555; font-size: 0.9em; border-top: 1px solid #ddd; padding-top: 4px; }
"""


class ProjectView(pn.viewable.Viewer):
    """One project's tab, one screen: a sidebar of choices (what is plotted, which attribution set, how images look,
    legend and hover preview) beside the main area's tabs: the analysis (embedding and sample grid side by side), the
    sample inspector, (with a model) the layer inspector, two categories compared, and (with corrected model versions)
    the same samples explained before and after the fix. All made from the project's data and this tab's one
    ViewState; the active tab is the state's `tab`, so a click on a card or a point opens the inspector."""

    def __init__(self, data: ProjectData, **params):
        super().__init__(**params)
        self.data = data
        self.state = vs.ViewState(project=data.project.name, name=f"view-{data.project.name}")
        self.state.apply(vs.fitted_values(data.project, self.state.values()))
        self.embedding = EmbeddingView(data, self.state)
        self.grid = SampleGrid(data, self.state)
        self.prototype = PrototypeView(data, self.state)
        self.sample_inspector = SampleInspector(data, self.state)
        self.mode = pn.widgets.RadioButtonGroup.from_param(self.state.param.mode, label="Display", color="default", css_classes=["rl-mode"],
                                                           width=280)
        self.sampling = pn.widgets.RadioButtonGroup.from_param(self.state.param.sampling, label="Sampling", color="default",
                                                               css_classes=["rl-sampling"], width=280)
        self.colormap = pn.widgets.Select.from_param(self.state.param.colormap, label="Colour map", width=140, css_classes=["rl-colormap"])
        self.preview = pn.pane.HTML(pn.bind(self._preview, self.state.param.colormap), width=140, css_classes=["rl-colormap-preview"])
        self.attribution = pn.widgets.Select(label="Attribution set", width=140, css_classes=["rl-attribution"])
        self.attribution.param.watch(self._on_attribution, "value")
        self.state.param.watch(lambda event: self._sync_attribution(), ["attribution", "analysis"])
        self._sync_attribution()
        self.layer_inspector = None
        if data.has_model:
            from .layers import LayerInspector

            self.layer_inspector = LayerInspector(data, self.state, lazy=True)
        self.compare = CompareView(data, self.state)
        self.before_after = None
        if data.has_model and vs.model_versions(data.project):
            from .before_after import BeforeAfterView

            self.before_after = BeforeAfterView(data, self.state)
        self.tab_names = (["analysis", "sample"] + (["layers"] if self.layer_inspector is not None else []) + ["compare"]
                          + (["fix"] if self.before_after is not None else []))
        self.tabs = pn.Tabs(("Analysis", self._analysis_tab()), ("Sample inspector", self.sample_inspector),
                            *((("Layers", self.layer_inspector),) if self.layer_inspector is not None else ()),
                            ("Compare categories", self.compare),
                            *((("Before/after fix", self.before_after),) if self.before_after is not None else ()),
                            dynamic=False, sizing_mode="stretch_width", css_classes=["rl-main-tabs"])
        self.tabs.param.watch(lambda event: self.state.apply({"tab": self.tab_names[event.new]}), "active")
        self.state.param.watch(lambda event: self._show_tab(), "tab")
        self._show_tab()

    @property
    def project(self) -> Project:
        return self.data.project

    @staticmethod
    def _preview(colormap: str) -> str:
        return f'<img src="{colormap_url(colormap)}" width="128" height="14" alt="{colormap}" style="margin-top: 28px">'

    def _show_tab(self) -> None:
        tab = self.state.tab if self.state.tab in self.tab_names else "analysis"
        self.tabs.active = self.tab_names.index(tab)

    def _sync_attribution(self) -> None:
        recorded = self.data.recorded_attribution(self.state.analysis)
        self.attribution.options = {(f"{name} (analysed)" if name == recorded else name): name for name in self.project.attributions}
        self.attribution.value = self.data.attribution_of(self.state)
        self.attribution.visible = len(self.project.attributions) > 1

    def _on_attribution(self, event) -> None:
        if event.new is None:
            return
        recorded = self.data.recorded_attribution(self.state.analysis)
        self.state.apply({"attribution": "" if event.new == recorded else event.new})

    def _analysis_tab(self):
        cards = pn.Column(self.grid, styles={"overflow-y": "auto", "max-height": "calc(100vh - 190px)"}, sizing_mode="stretch_width",
                          css_classes=["rl-grid-column"])
        return pn.Row(self.embedding, cards, sizing_mode="stretch_width")

    def sidebar(self):
        """The project's description, then every choice of what is shown; scrolls on its own when the window is low."""
        description = str(self.project.metadata.get("description") or "")
        parts = [pn.pane.Markdown(description, width=290, css_classes=["rl-description"], styles={"font-size": "12px"})] if description else []
        parts += [self.embedding.controls(), pn.GridBox(self.attribution, self.colormap, ncols=2), self.preview, self.mode,
                  self.sampling, self.embedding.side(), self.prototype]
        return pn.Column(*parts, width=310, scroll=True, styles={"max-height": "calc(100vh - 135px)"}, css_classes=["rl-sidebar"])

    def footer(self) -> str:
        name, dataset, model = (html.escape(text or "?") for text in (self.project.name, self.project.dataset_name, self.project.model))
        return (f'<div class="rl-footer" data-project="{name}"><b>Project</b> {name} &nbsp;·&nbsp; '
                f"<b>Dataset</b> {dataset} &nbsp;·&nbsp; <b>Model</b> {model}</div>")

    def __panel__(self):
        return pn.Row(self.sidebar(), self.tabs, sizing_mode="stretch_width")


class ExplorerApp(pn.viewable.Viewer):
    """Tabs of projects, import/export/share toolbar, message area and footer, for one browser session."""

    def __init__(self, paths: list[str | os.PathLike], message: str | None = None, **params):
        super().__init__(**params)
        self.alert = pn.pane.Alert("", alert_type="danger", visible=False, sizing_mode="stretch_width", css_classes=["rl-alert"])
        self.views: list[ProjectView] = []
        problems = []
        for path in paths:
            try:
                data = ProjectData.of(path)
                problems += data.problems
                if any(v.project.name == data.project.name for v in self.views):
                    raise RelaylabError.at(path, "project.name", "a project name not used by another served project", repr(data.project.name))
                self.views.append(ProjectView(data))
            except RelaylabError as error:
                problems.append(str(error))
        self.tabs = pn.Tabs(*((v.project.name, v) for v in self.views), dynamic=True, css_classes=["rl-projects"])
        self.footer = pn.pane.HTML(css_classes=["rl-footer-pane"], sizing_mode="stretch_width")
        self.share = pn.widgets.TextInput(label="Share link", width=520, css_classes=["rl-share"])
        self.share_note = pn.pane.HTML("", visible=False, width=260, css_classes=["rl-share-note"], styles={"color": "#8a6d00"})
        self.export = pn.widgets.FileDownload(callback=self._export, filename="relaylab-state.json", label="Export state",
                                              color="default", width=140, css_classes=["rl-export"])
        self.import_ = pn.widgets.FileInput(accept=".json", label="Import state", width=240, css_classes=["rl-import"])
        self.import_.param.watch(self._on_import, "value")
        self.tabs.param.watch(lambda event: self._on_view_change(), "active")
        for view in self.views:
            view.state.param.watch(lambda *events, view=view: self._on_view_change() if self.current is view else None,
                                   list(vs.ViewState.FIELDS))
        if problems:
            self.show_error("Some projects or analyses could not be opened", problems)
        elif not self.views:
            self.show_error("No project to show", [message or "pass projects: `panel serve apps/explorer.py --args PROJECT...`, "
                                                   "`relaylab serve PROJECT...`, or set RELAYLAB_PROJECTS or VIRELAY_PROJECTS"])
        self._apply_session_query()
        self._on_view_change()
        if pn.state.curdoc is not None:
            pn.state.onload(self._on_view_change)  # the browser's address (for the share link) is known from now on
            if pn.state.curdoc.session_context is not None:
                pn.state.curdoc.on_session_destroyed(release_session)
        LIVE.add(self)

    @property
    def current(self) -> ProjectView | None:
        return self.views[self.tabs.active] if self.views else None

    # ------------------------------------------------------------------------------------------------ messages

    def show_error(self, title: str, problems: list[str]) -> None:
        items = "".join(f"<li>{html.escape(p)}</li>" for p in problems)
        self.alert.object = f"<b>{html.escape(title)}</b><ul>{items}</ul>"
        self.alert.visible = True

    def clear_error(self) -> None:
        self.alert.visible = False

    # ------------------------------------------------------------------------------------------------ URL, share, export

    def _apply_session_query(self) -> None:
        """A share link opened: switch to its project and restore its view, or say what is wrong with it."""
        args = vs.query_args(pn.state.session_args) if pn.state.curdoc is not None and pn.state.session_args else {}
        keys = vs.QUERY_KEYS
        if not self.views or not keys & set(args):
            return
        try:
            view = self.view_named(args["project"]) if "project" in args else self.current
            view.state.from_query({k: args[k] for k in keys & set(args)}, projects=[view.project])
            self.tabs.active = self.views.index(view)
        except RelaylabError as error:
            self.show_error("This link could not be opened; showing the default view instead", [str(p) for p in error.problems])

    def view_named(self, name: str) -> ProjectView:
        for view in self.views:
            if view.project.name == name:
                return view
        raise RelaylabError.at("share link", "project", "one of the served projects: " + ", ".join(v.project.name for v in self.views), repr(name))

    def _on_view_change(self) -> None:
        view = self.current
        if view is None:
            return
        query = view.state.to_query()
        location = pn.state.location if pn.state.curdoc is not None else None
        if location is not None and location.search != "?" + query:
            location.search = "?" + query
        base = location.href.split("?")[0].split("#")[0] if location is not None and location.href else ""
        self.share.value = f"{base}?{query}"
        omitted = not view.state.link_holds_selection()
        self.share_note.object = (f"the selection ({len(view.state.selection)} samples) is too scattered for a link: "
                                  "use Export state to keep it") if omitted else ""
        self.share_note.visible = omitted
        self.footer.object = view.footer()
        self.export.filename = f"{view.project.name}-state.json"

    def _export(self) -> io.StringIO:
        view = self.current
        document = view.state.to_virelay_json(view.project, project_id=self.views.index(view))
        return io.StringIO(json.dumps(document, indent=1))

    def _on_import(self, event) -> None:
        if not event.new:
            return
        try:
            self.import_state(event.new, file=self.import_.filename or "state file")
        except RelaylabError as error:
            self.show_error("The state file could not be imported; nothing was changed", [str(p) for p in error.problems])

    def import_state(self, data: bytes | str | dict, file: str = "state file") -> None:
        """Restore an exported state (relaylab's or ViRelAy's) in the tab of the project it names."""
        if isinstance(data, bytes | str):
            if len(data) > MAX_STATE_BYTES:
                raise RelaylabError.at(file, "", f"a state file of at most {MAX_STATE_BYTES // 2**20} MB", f"{len(data):,} bytes: too large")
            try:
                data = json.loads(data)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise RelaylabError.at(file, "", "a JSON file exported by relaylab or ViRelAy", str(error)) from None
            except RecursionError:
                raise RelaylabError.at(file, "", f"JSON nested at most {MAX_STATE_DEPTH} levels deep", "nested too deeply") from None
        if json_depth(data) > MAX_STATE_DEPTH:
            raise RelaylabError.at(file, "", f"JSON nested at most {MAX_STATE_DEPTH} levels deep", "nested too deeply")
        if not isinstance(data, dict):
            raise RelaylabError.at(file, "", "a JSON object", type(data).__name__)
        project = vs.pick_project([v.project for v in self.views], data.get("projectName"), data.get("projectId"), file)
        view = next(v for v in self.views if v.project is project)
        view.state.from_json(data, projects=[view.project], file=file)
        self.tabs.active = self.views.index(view)
        self.clear_error()

    def __panel__(self):
        toolbar = pn.Row(self.export, self.import_, self.share, self.share_note, align="center", css_classes=["rl-toolbar"])
        header = pn.Row(pn.pane.Markdown("## relaylab explorer", margin=(0, 10)), toolbar)
        return pn.Column(header, self.alert, self.tabs, self.footer, sizing_mode="stretch_width", stylesheets=[STYLE])


def json_depth(value, limit: int = MAX_STATE_DEPTH + 1) -> int:
    """How deeply lists and objects nest in a parsed JSON value (counted up to `limit`)."""
    depth, level = 0, [value]
    while level and depth < limit:
        depth += 1
        level = [v for item in level if isinstance(item, dict | list) for v in (item.values() if isinstance(item, dict) else item)
                 if isinstance(v, dict | list)]
    return depth


def release_session(session_context) -> None:
    """A browser session closed (Bokeh destroys it once its websocket has been gone a while): give its memory back.
    Its views, state and plots are freed with the document (nothing outside holds them: `LIVE` is weak); Python's
    garbage collector and the C allocator are asked to return the memory now, once for sessions closing together."""
    from .serve import release_memory_soon

    release_memory_soon()


class Explorer(pn.viewable.Viewer):
    """The explorer of one or more projects as a Panel component: the same tabs, views and ViewState that `relaylab
    serve` serves, shown in a Jupyter notebook cell (`pn.extension()` first), put in a layout, or `.servable()`.

        import panel as pn
        from relaylab.explore import Explorer
        pn.extension()
        Explorer("project.zarr")  # or a ViRelAy project.yaml, or a list of them

    `app.views[i].state` is each project's ViewState, to read or set from code. Without a Bokeh server (a notebook),
    sample images travel as data URIs instead of the server's image routes."""

    def __init__(self, projects: str | os.PathLike | list[str | os.PathLike], **params):
        super().__init__(**params)
        paths = [projects] if isinstance(projects, str | os.PathLike) else list(projects)
        self.app = ExplorerApp([Path(p) for p in paths])

    @property
    def views(self) -> list[ProjectView]:
        return self.app.views

    def __panel__(self):
        return self.app.__panel__()


def build_app(projects: list[str | os.PathLike], message: str | None = None) -> pn.viewable.Viewable:
    """The explorer for one browser session (call it per session: nothing in it is shared with other sessions).
    `message` is shown when `projects` is empty (why there are none)."""
    pn.extension(notifications=False)
    try:
        return ExplorerApp([Path(p) for p in projects], message=message).__panel__()
    except Exception as error:  # a bug, not bad input: the page says so (the traceback goes to the server log)
        log.exception("the explorer could not be built")
        return pn.pane.Alert(f"**The explorer failed to start:** {type(error).__name__}: {html.escape(str(error))}. "
                             "The server log has the details.", alert_type="danger", css_classes=["rl-alert"])
