"""The explorer's view state: one param object that the views read and write, and that share links and files carry.

Everything the user can choose lives in `ViewState`; each view is made from (ProjectData, ViewState), its widgets write
the state and it redraws when the state changes. Exported files use ViRelAy's keys (so ViRelAy and relaylab read each
other's exports) plus relaylab's own under `relaylab`; share links use ViRelAy's query keys plus relaylab's, with the
selection written as ranges (`3-9,12`) so a big selection stays short.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import NamedTuple
from urllib.parse import parse_qs, urlencode

import numpy as np
import param
import xarray as xr

from ..data.project import Project
from ..data.schema import schema_problems
from ..errors import Problem, RelaylabError
from .colormaps import COLORMAPS, DEFAULT_COLORMAP
from .render import MODES, SAMPLINGS

log = logging.getLogger(__name__)

COLOR_BY = ("cluster", "label", "prediction", "correct")  # plus every boolean coordinate of the inputs (e.g. artifact)
PREFERRED_EMBEDDINGS = ("tsne", "umap", "pca", "spectral")
STATE_VERSION = 1
MAX_QUERY_SAMPLES = 50_000_000  # a share link's ranges may not expand beyond this (a typo like 0-999999999999 would)
MAX_LINK_RANGES = 2000  # a selection needing more ranges is left out of share links (URLs of > ~30 kB break); Export keeps it
MAX_PINNED = 12  # samples side by side in the inspector
CATEGORY_ORDERS = ("index", "suspicion")
TABS = ("analysis", "sample", "layers", "compare", "fix")
LRP_COMPOSITES = ("epsilon_plus_flat", "epsilon_plus", "epsilon_alpha2_beta1_flat", "epsilon_alpha2_beta1", "epsilon_gamma_box")
DEFAULT_COMPOSITE = "epsilon_plus_flat"
MAP_SOURCES = ("layer", "input")
MAP_PERPLEXITIES = (10, 30, 90)
MAP_SUBSETS = (100, 1000, 0)  # 0: all samples


class Key(NamedTuple):
    """Where a ViewState field goes in share links (`query`) and exported files (`json`: a top-level ViRelAy key, or
    `relaylab.<key>` for relaylab's own), and how it is written there (`kind`: text, int, optional int, ranges)."""

    field: str
    query: str | None
    json: str | None
    kind: str = "text"


# one row per field that links and files carry (project and the ViRelAy-derived keys are written by to_virelay_json)
KEYS = (
    Key("analysis", "analysisMethod", "selectedAnalysisMethod"),
    Key("category", "analysisCategory", "selectedAnalysisCategory"),
    Key("embedding", "embedding", "selectedEmbeddingName"),
    Key("clustering", "clustering", "selectedClustering"),
    Key("x_dim", "firstEmbeddingDimension", "relaylab.firstEmbeddingDimension", "int"),
    Key("y_dim", "secondEmbeddingDimension", "relaylab.secondEmbeddingDimension", "int"),
    Key("color_by", "colorBy", "relaylab.colorBy"),
    Key("colormap", "colorMap", "selectedColorMap"),
    Key("mode", "imageMode", "selectedImageMode"),
    Key("sampling", "imageSampling", "relaylab.imageSampling"),
    Key("page", "page", "relaylab.page", "int"),
    Key("page_size", "pageSize", "relaylab.pageSize", "int"),
    Key("layer", "layer", "relaylab.selectedLayer", "optional"),
    Key("sample", "sample", "relaylab.selectedSample", "optional int"),
    Key("selection", "embeddingVectors", "selectedEmbeddingVectorsIndices", "ranges"),
    Key("attribution", "attribution", "relaylab.attribution"),
    Key("pinned", "pinned", "relaylab.pinnedSamples", "list"),
    Key("category_order", "categoryOrder", "relaylab.categoryOrder"),
    Key("compare", "compareCategory", "relaylab.compareCategory"),
    Key("tab", "tab", "relaylab.tab"),
    Key("label", "explainedLabel", "relaylab.explainedLabel", "optional int"),
    Key("depth", "camDepth", "relaylab.camDepth", "optional int"),
    Key("composite", "lrpComposite", "relaylab.lrpComposite"),
    Key("inspector_colormap", "inspectorColorMap", "relaylab.inspectorColorMap"),
    Key("map_source", "mapSource", "relaylab.mapSource"),
    Key("map_perplexity", "mapPerplexity", "relaylab.mapPerplexity", "int"),
    Key("map_subset", "mapSubset", "relaylab.mapSubset", "int"),
    Key("model_version", "modelVersion", "relaylab.modelVersion"),
)
NEWER_FIELDS = frozenset({"attribution", "pinned", "category_order", "compare", "tab", "label", "depth", "composite",
                          "inspector_colormap", "map_source", "map_perplexity", "map_subset",
                          "model_version"})  # links carry these only when not at their defaults
QUERY_KEYS = frozenset({"project", *(k.query for k in KEYS)})  # what makes a URL a share link


class ViewState(param.Parameterized):
    """What the explorer shows for one project; the single source of truth for widgets, URL and exported files."""

    project = param.String("", doc="the project's name")
    analysis = param.String("", doc="analysis name as stored (e.g. spectral_analysis)")
    category = param.String("", doc="analysis category (group name, e.g. a WordNet id)")
    embedding = param.String("", doc="embedding shown, e.g. tsne, spectral")
    clustering = param.String("", doc="clustering used for colours and cluster buttons, e.g. kmeans-03")
    x_dim = param.Integer(0, bounds=(0, None), doc="embedding component on the horizontal axis")
    y_dim = param.Integer(1, bounds=(0, None), doc="embedding component on the vertical axis")
    color_by = param.String("cluster", doc="cluster, label, prediction, correct, or a boolean input coordinate")
    selection = param.List([], item_type=int, doc="dataset indices of the selected samples, ascending")
    mode = param.Selector(default="overlay", objects=list(MODES))
    colormap = param.Selector(default=DEFAULT_COLORMAP, objects=list(COLORMAPS))
    sampling = param.Selector(default="automatic", objects=list(SAMPLINGS))
    page = param.Integer(0, bounds=(0, None))
    page_size = param.Integer(20, bounds=(1, 1000))
    layer = param.String(None, allow_None=True, doc="model layer inspected, None for none")
    sample = param.Integer(None, allow_None=True, bounds=(0, None), doc="dataset index of the sample opened in detail")
    attribution = param.String("", doc="attribution set of grid, hover and inspector; '' = the one the analysis was computed from")
    pinned = param.List([], item_type=int, doc="samples pinned side by side in the sample inspector, in pinning order")
    category_order = param.Selector(default="index", objects=list(CATEGORY_ORDERS), doc="category list: by class index or most suspicious first")
    compare = param.String("", doc="second category shown beside the first in the compare tab ('' = none)")
    tab = param.Selector(default="analysis", objects=list(TABS), doc="the main area's tab")
    label = param.Integer(None, allow_None=True, doc="class the inspector's heatmaps explain; None = the predicted class")
    depth = param.Integer(None, allow_None=True, bounds=(0, None), doc="CAM layer of the inspector (index, input → output); None = the deepest spatial one")
    composite = param.Selector(default=DEFAULT_COMPOSITE, objects=list(LRP_COMPOSITES), doc="LRP composite of the inspector")
    inspector_colormap = param.String("", doc="colour map of the inspector's heatmaps; '' = follow `colormap`")
    map_source = param.Selector(default="layer", objects=list(MAP_SOURCES), doc="the layer view's map: of the picked layer, or of the raw inputs")
    map_perplexity = param.Selector(default=30, objects=list(MAP_PERPLEXITIES), doc="t-SNE perplexity of the layer view's map")
    map_subset = param.Selector(default=0, objects={"100": 100, "1,000": 1000, "all": 0}, doc="samples in the layer view's map (0 = all)")
    model_version = param.String("", doc="corrected model version (relaylab fix) the before/after tab shows beside the original ('' = the newest)")

    FIELDS = ("project", "analysis", "category", "embedding", "clustering", "x_dim", "y_dim", "color_by", "selection",
              "mode", "colormap", "sampling", "page", "page_size", "layer", "sample", "attribution", "pinned",
              "category_order", "compare", "tab", "label", "depth", "composite", "inspector_colormap", "map_source",
              "map_perplexity", "map_subset", "model_version")

    def values(self) -> dict:
        return {name: getattr(self, name) for name in self.FIELDS}

    def selection_array(self) -> np.ndarray:
        """The selection as an int64 array, converted once per change of it (converting a list of millions is slow)."""
        cached = getattr(self, "_selection_cache", None)
        if cached is None or cached[0] is not self.selection:
            cached = self._selection_cache = (self.selection, np.asarray(self.selection, dtype=np.int64))
        return cached[1]

    def link_holds_selection(self, max_ranges: int = MAX_LINK_RANGES) -> bool:
        """Whether the selection is short enough, written as ranges, to go into a share link."""
        chosen = self.selection_array()
        return chosen.size < 2 or int(np.count_nonzero(np.diff(chosen) != 1)) + 1 <= max_ranges

    def _link_selection(self) -> str:
        return encode_ranges(self.selection_array()) if self.link_holds_selection() else ""

    def apply(self, values: dict) -> ViewState:
        """Set many fields at once (watchers see one batch, never a half-changed view)."""
        changed = {k: v for k, v in values.items() if getattr(self, k) != v}
        if changed:
            self.param.update(**changed)
        return self

    # ------------------------------------------------------------------------------------------------ JSON files

    def to_virelay_json(self, project: Project | None = None, project_id: int = 0) -> dict:
        """The exported state: ViRelAy's keys plus `relaylab`. With the open project, also the derived keys ViRelAy
        writes (model, dataset, human-readable category, clusters of the selected and of all category members)."""
        out: dict = {"projectId": project_id, "projectName": self.project}
        node = category_node(project, self.analysis, self.category) if project is not None else None
        if project is not None:
            out.update(modelName=project.model, datasetName=project.dataset_name)
        out.update(selectedAnalysisMethod=virelay_analysis_name(self.analysis), selectedAnalysisCategory=self.category)
        if node is not None:
            out["selectedCategoryHumanReadableName"] = str(node.attrs.get("display_name", self.category))
        out.update(selectedEmbeddingName=self.embedding or None, selectedClustering=self.clustering or None)
        clusters = cluster_labels(node, self.clustering) if node is not None else None
        if clusters is not None:
            out["numberOfClusters"] = int(np.unique(clusters).size)
        out.update(selectedColorMap=self.colormap, selectedImageMode=self.mode,
                   selectedEmbeddingVectorsIndices=[int(i) for i in self.selection])
        if node is not None:
            members = member_indices(node)
            if clusters is None:
                clusters = np.full(members.size, -1, dtype=np.int64)
            out["selectedEmbeddingVectorsClusters"] = clusters_of(members, clusters, np.asarray(self.selection, dtype=np.int64)).tolist()
            out["allEmbeddingVectorsIndices"] = members.tolist()
            out["allEmbeddingVectorsClusters"] = clusters.tolist()
        out["relaylab"] = {"version": STATE_VERSION, **{k.json.split(".", 1)[1]: self._written(k) for k in KEYS
                                                         if k.json and k.json.startswith("relaylab.")}}
        return out

    def from_json(self, document: dict | str | bytes, projects: Sequence[Project] | Mapping[str, Project] | None = None,
                  file: str = "state file") -> ViewState:
        """Import a ViRelAy or relaylab state file. Everything is checked (schema, then against the served projects)
        before anything changes: a bad file raises RelaylabError and leaves this state as it was."""
        if isinstance(document, bytes | str):
            try:
                document = json.loads(document)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise RelaylabError.at(file, "", "a JSON file exported by relaylab or ViRelAy", str(error)) from None
        problems = schema_problems("viewer-state", document, file)
        for a, b in (("selectedEmbeddingVectorsIndices", "selectedEmbeddingVectorsClusters"),
                     ("allEmbeddingVectorsIndices", "allEmbeddingVectorsClusters")):
            if not problems and b in document and len(document.get(a, [])) != len(document[b]):
                problems.append(Problem(file, b, f"one cluster per entry of {a} ({len(document.get(a, []))})", f"{len(document[b])} entries"))
        if problems:
            raise RelaylabError(problems)
        extra = document.get("relaylab", {})
        given, keys = {}, {"project": "projectName"}
        for k in KEYS:
            if not k.json:
                continue
            keys[k.field] = k.json
            block, name = (extra, k.json.split(".", 1)[1]) if k.json.startswith("relaylab.") else (document, k.json)
            if block.get(name) is not None or (k.kind.startswith("optional") and name in block):  # null: nothing chosen
                given[k.field] = block[name]
        project = pick_project(projects, document.get("projectName"), document.get("projectId"), file)
        given["project"] = project.name if project is not None else document.get("projectName", "")
        return self.apply(checked_values(given, project, file, keys))

    # ------------------------------------------------------------------------------------------------ share links

    def _written(self, key: Key):
        """A field's value as links and files write it."""
        value = getattr(self, key.field)
        if key.field == "analysis":
            return virelay_analysis_name(value)
        if key.kind == "list":
            return [int(i) for i in value]
        return value

    def to_query(self) -> str:
        """The view as a URL query (ViRelAy's share-link keys plus relaylab's), without the leading '?'. A selection
        too scattered for a URL (see `link_holds_selection`) is left out; relaylab's newer fields only when they differ
        from their defaults (links stay short)."""
        pairs = [("project", self.project)]
        for k in KEYS:
            value = self._written(k)
            if k.kind == "ranges":
                value = self._link_selection()
            elif k.kind == "list":
                value = ",".join(map(str, value))
            if k.field in NEWER_FIELDS and getattr(self, k.field) == self.param[k.field].default:
                continue
            pairs.append((k.query, value))
        return urlencode([(k, v) for k, v in pairs if v not in (None, "")], safe=",-")

    def from_query(self, query: str | Mapping, projects: Sequence[Project] | Mapping[str, Project] | None = None,
                   file: str = "share link") -> ViewState:
        """Restore a view from a share link's query (a string, or Panel's session arguments). Checked like from_json;
        ViRelAy's own share links work too (its keys are a subset)."""
        args = query_args(query)
        problems: list[Problem] = []
        given: dict = {}
        for k in KEYS:
            if k.query not in args:
                continue
            text = args[k.query]
            try:
                if k.kind in ("int", "optional int"):
                    given[k.field] = int(text)
                elif k.kind == "ranges":
                    given[k.field] = decode_ranges(text)
                elif k.kind == "list":
                    given[k.field] = [int(i) for i in text.split(",") if i.strip()]
                else:
                    given[k.field] = text
            except ValueError as error:
                expected = {"ranges": "sample indices as ranges, e.g. 3-9,12", "list": "sample indices, e.g. 3,12,7"}
                problems.append(Problem(file, k.query, expected.get(k.kind, "a whole number"),
                                        str(error) if k.kind == "ranges" else repr(text)))
        if problems:
            raise RelaylabError(problems)
        project = pick_project(projects, args.get("project"), None, file) if "project" in args or projects else None
        given["project"] = project.name if project is not None else args.get("project", "")
        keys = {"project": "project", **{k.field: k.query for k in KEYS}}
        return self.apply(checked_values(given, project, file, keys))


# ---------------------------------------------------------------------------------------------- what a project offers


def virelay_analysis_name(name: str) -> str:
    """ViRelAy shows analysis methods with '_' as '-' (spectral_analysis → spectral-analysis)."""
    return name.replace("_", "-")


def resolve_analysis(project: Project, name: str) -> str | None:
    if name in project.analyses:
        return name
    return next((a for a in project.analyses if virelay_analysis_name(a) == name), None)


def default_analysis(project: Project) -> str:
    """SpRAy's analyses before the per-layer activation analyses (`activation-<layer>`, shown by the layer view)."""
    names = list(project.analyses)
    return next((a for a in names if not a.startswith("activation-")), names[0] if names else "")


def categories(project: Project, analysis: str) -> dict[str, str]:
    """Category name → human-readable name (the label map's class name), in class-index order (categories the label
    map does not name, e.g. of a predicted-label grouping it lacks, after them by name)."""
    if analysis not in project.analyses:
        return {}
    children = project.analyses[analysis].children
    label_map = project.label_map
    known = [str(c) for c in label_map["category"].values] if "category" in label_map.coords else []
    order = {c: i for i, c in enumerate(known)}
    names = sorted(children, key=lambda c: (order.get(c, len(order)), c))
    return {c: str(children[c].attrs.get("display_name", c)) for c in names}


def category_node(project: Project, analysis: str, category: str) -> xr.DataTree | None:
    if analysis not in project.analyses or category not in project.analyses[analysis].children:
        return None
    return project.analyses[analysis][category]


def embeddings(node: xr.DataTree | None) -> list[str]:
    return list(node["embedding"].children) if node is not None and "embedding" in node.children else []


def clusterings(node: xr.DataTree | None) -> list[str]:
    return sorted(node["cluster"].data_vars) if node is not None and "cluster" in node.children else []


def components(node: xr.DataTree, embedding: str) -> int:
    return int(node["embedding"][embedding]["embedding"].shape[1])


def member_indices(node: xr.DataTree) -> np.ndarray:
    return np.asarray(node["index"].values, dtype=np.int64)


def cluster_labels(node: xr.DataTree | None, clustering: str) -> np.ndarray | None:
    if node is None or clustering not in clusterings(node):
        return None
    return np.asarray(node["cluster"][clustering].values, dtype=np.int64)


def clusters_of(members: np.ndarray, clusters: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """The cluster of each sample; -1 for samples that are not members of the category."""
    order = np.argsort(members, kind="stable")
    at = np.clip(np.searchsorted(members, samples, sorter=order), 0, max(0, members.size - 1))
    if members.size == 0:
        return np.full(samples.size, -1, dtype=np.int64)
    hit = members[order[at]] == samples
    return np.where(hit, clusters[order[at]], -1)


def has_predictions(project: Project) -> bool:
    """Whether the first attribution set (the one SampleInfo reads predictions from) has any: CoRelAy's attribution
    files may not. A set that cannot be opened has none to show."""
    try:
        first = next(iter(project.attributions.values()), None)
    except RelaylabError:
        return False
    return first is not None and "prediction" in first


def color_options(project: Project) -> list[str]:
    """What the points can be coloured by in this project."""
    options = ["cluster", "label"]
    if has_predictions(project):
        options += ["prediction", "correct"]
    return options + [str(name) for name, coord in project.inputs.coords.items()
                      if coord.dims == ("sample",) and coord.dtype == bool]


def model_versions(project: Project) -> dict[str, dict]:
    """The corrected model versions `relaylab fix` recorded in the project's store, by name, oldest first (read from
    the store each time: a version added while the explorer runs shows in the next session)."""
    if project.metadata.get("format") != "relaylab-zarr":
        return {}
    from ..data.store import store_metadata

    return dict(store_metadata(project.path).get("model_versions") or {})


def model_layers(project: Project) -> list[str]:
    model = project.metadata.get("store", {}).get("model") or {}
    return [layer["name"] for layer in model.get("layers", [])]


def default_embedding(names: list[str]) -> str:
    return next((e for e in PREFERRED_EMBEDDINGS if e in names), names[0] if names else "")


def sample_problems(project: Project, samples: Sequence[int], file: str, key: str) -> list[Problem]:
    """Indices that are not samples of the dataset."""
    if not len(samples):
        return []
    values = np.asarray(samples, dtype=np.int64)
    known = project.inputs["sample"].values
    n = known.size
    contiguous = n and known[0] == 0 and known[-1] == n - 1
    bad = values[(values < 0) | (values >= n)] if contiguous else values[~np.isin(values, known)]
    if bad.size:
        return [Problem(file, key, f"sample indices of project '{project.name}' (0 to {n - 1})",
                        f"{bad[:5].tolist()}{' and more' if bad.size > 5 else ''}")]
    return []


def pick_project(projects, name: str | None, project_id: int | None, file: str) -> Project | None:
    """The served project a state refers to: by name, else by position (ViRelAy's projectId)."""
    if projects is None:
        return None
    listed = list(projects.values()) if isinstance(projects, Mapping) else list(projects)
    for project in listed:
        if project.name == name:
            return project
    if project_id is not None and 0 <= project_id < len(listed):
        return listed[project_id]
    if not name and project_id is None and listed:
        return listed[0]
    raise RelaylabError.at(file, "projectName" if project_id is not None else "project",
                           "one of the served projects: " + ", ".join(p.name for p in listed), repr(name))


def checked_values(given: dict, project: Project | None, file: str, keys: dict[str, str]) -> dict:
    """Complete values for a ViewState: the given ones checked against the project, the rest defaults. Raises
    RelaylabError listing every problem, each at the key the user wrote (so the message points into their file)."""
    values = {name: ViewState.param[name].default for name in ViewState.FIELDS}
    values["selection"], values["pinned"] = [], []
    values.update({k: v for k, v in given.items() if k in values})
    problems: list[Problem] = []

    def problem(field: str, expected: str, found) -> None:
        problems.append(Problem(file, keys.get(field, field), expected, repr(found)))

    if values["mode"] not in MODES:
        problem("mode", "one of " + ", ".join(MODES), values["mode"])
    if values["sampling"] not in SAMPLINGS:
        problem("sampling", "one of " + ", ".join(SAMPLINGS), values["sampling"])
    for field in ("x_dim", "y_dim", "page"):
        if values[field] < 0:
            problem(field, "a number ≥ 0", values[field])
    if not 1 <= values["page_size"] <= 1000:
        problem("page_size", "a page size from 1 to 1000", values["page_size"])
    if values["colormap"] not in COLORMAPS:
        problem("colormap", "one of the colour maps: " + ", ".join(COLORMAPS), values["colormap"])
    values["selection"] = sorted({int(i) for i in values["selection"]})
    for field, allowed in (("category_order", CATEGORY_ORDERS), ("tab", TABS), ("composite", LRP_COMPOSITES),
                           ("map_source", MAP_SOURCES), ("map_perplexity", MAP_PERPLEXITIES), ("map_subset", MAP_SUBSETS)):
        if values[field] not in allowed:
            problem(field, "one of " + ", ".join(map(str, allowed)), values[field])
    if values["inspector_colormap"] not in ("", *COLORMAPS):
        problem("inspector_colormap", "one of the colour maps (or nothing: follow the main one)", values["inspector_colormap"])
    if values["depth"] is not None and values["depth"] < 0:
        problem("depth", "a CAM depth ≥ 0", values["depth"])
    values["pinned"] = list(dict.fromkeys(int(i) for i in values["pinned"]))  # pinning order, once each
    if len(values["pinned"]) > MAX_PINNED:
        problem("pinned", f"at most {MAX_PINNED} pinned samples", f"{len(values['pinned'])} samples")
    if project is None:
        if problems:
            raise RelaylabError(problems)
        return values

    values["project"] = project.name
    if project.analyses:
        analysis = resolve_analysis(project, values["analysis"]) if values["analysis"] else default_analysis(project)
        if analysis is None:
            problem("analysis", "one of the project's analyses: " + ", ".join(map(virelay_analysis_name, project.analyses)), values["analysis"])
        else:
            values["analysis"] = analysis
            cats = categories(project, analysis)
            category = values["category"] or next(iter(cats), "")
            by_name = {v: k for k, v in cats.items()}
            if category not in cats and category in by_name:
                category = by_name[category]
            if category not in cats:
                problem("category", f"one of the categories of {analysis}: " + ", ".join(list(cats)[:20]), values["category"])
            else:
                values["category"] = category
                node = category_node(project, analysis, category)
                names = embeddings(node)
                if values["embedding"] and values["embedding"] not in names:
                    problem("embedding", "one of the category's embeddings: " + ", ".join(names), values["embedding"])
                else:
                    values["embedding"] = values["embedding"] or default_embedding(names)
                    d = components(node, values["embedding"]) if values["embedding"] else 0
                    if values["embedding"] and "x_dim" not in given and "y_dim" not in given:
                        values["x_dim"], values["y_dim"] = 0, min(1, d - 1)
                    for field in ("x_dim", "y_dim"):
                        if d and values[field] >= d:
                            problem(field, f"an embedding dimension below {d} ({values['embedding']} has {d})", values[field])
                known = clusterings(node)
                if values["clustering"] and values["clustering"] not in known:
                    problem("clustering", "one of the category's clusterings: " + ", ".join(known), values["clustering"])
                values["clustering"] = values["clustering"] or (known[0] if known else "")
                if values["compare"] and values["compare"] not in cats:
                    by_name_compare = by_name.get(values["compare"])
                    if by_name_compare is None:
                        problem("compare", f"one of the categories of {analysis}", values["compare"])
                    else:
                        values["compare"] = by_name_compare
    elif values["analysis"]:
        problem("analysis", f"no analysis (project '{project.name}' has none)", values["analysis"])
    if values["attribution"] and values["attribution"] not in project.attributions:
        problem("attribution", "one of the project's attribution sets: " + ", ".join(project.attributions), values["attribution"])
    classes = np.asarray(project.label_map["class"].values)
    if values["label"] is not None and values["label"] not in classes:
        problem("label", f"a class index of the label map ({classes.min()}–{classes.max()})", values["label"])
    problems += sample_problems(project, values["pinned"], file, keys.get("pinned", "pinned"))
    options = color_options(project)
    if values["color_by"] not in options:
        problem("color_by", "one of " + ", ".join(options), values["color_by"])
    problems += sample_problems(project, values["selection"], file, keys.get("selection", "selection"))
    if values["sample"] is not None:
        problems += sample_problems(project, [values["sample"]], file, keys.get("sample", "sample"))
    layers = model_layers(project)
    if values["layer"] is not None and values["layer"] not in layers:
        problem("layer", ("one of the model's layers: " + ", ".join(layers[:30])) if layers else "no layer (the project records no model)", values["layer"])
    if values["model_version"] and values["model_version"] not in (versions := model_versions(project)):
        problem("model_version", "one of the store's corrected model versions: " + (", ".join(versions) or "none (relaylab fix adds them)"),
                values["model_version"])
    if problems:
        raise RelaylabError(problems)
    return values


def fitted_values(project: Project, values: dict) -> dict:
    """`values` made consistent with the project after one widget changed: an analysis, category, embedding,
    clustering or dimension the project lacks is replaced by a default (what the user picked is kept where it exists)."""
    values = dict(values, project=project.name)
    analysis = resolve_analysis(project, values["analysis"]) or default_analysis(project)
    cats = categories(project, analysis)
    category = values["category"] if values["category"] in cats else next(iter(cats), "")
    node = category_node(project, analysis, category)
    names = embeddings(node)
    embedding = values["embedding"] if values["embedding"] in names else default_embedding(names)
    d = components(node, embedding) if embedding else 2
    if values["x_dim"] >= d or values["y_dim"] >= d or embedding != values["embedding"]:
        values["x_dim"], values["y_dim"] = 0, min(1, d - 1)
    known = clusterings(node)
    clustering = values["clustering"] if values["clustering"] in known else (known[0] if known else "")
    options = color_options(project)
    color_by = values["color_by"] if values["color_by"] in options else options[0]
    compare = values.get("compare", "")
    compare = compare if compare in cats and compare != category else ""
    attribution = values.get("attribution", "")
    attribution = attribution if attribution in project.attributions else ""
    mode = values.get("mode")
    if mode == "input" and not project.has_images:  # attributions without their dataset: heatmaps are all there is
        mode = "attribution"
    return dict(values, analysis=analysis, category=category, embedding=embedding, clustering=clustering, color_by=color_by,
                mode=mode, compare=compare, attribution=attribution)


# ---------------------------------------------------------------------------------------------- compact selections


def encode_ranges(samples: Sequence[int]) -> str:
    """Ascending sample indices as ranges: [3, 4, 5, 9] → "3-5,9"."""
    values = np.asarray(samples, dtype=np.int64)
    if values.size > 1 and not (np.diff(values) > 0).all():
        values = np.unique(values)
    if values.size == 0:
        return ""
    breaks = np.flatnonzero(np.diff(values) != 1)
    starts = values[np.r_[0, breaks + 1]]
    ends = values[np.r_[breaks, values.size - 1]]
    return ",".join(str(s) if s == e else f"{s}-{e}" for s, e in zip(starts.tolist(), ends.tolist()))


def decode_ranges(text: str) -> list[int]:
    """"3-5,9" → [3, 4, 5, 9]; ViRelAy's "3,4,5,9" too. ValueError on anything else."""
    parts = []
    total = 0
    for item in filter(None, (p.strip() for p in text.split(","))):
        low, dash, high = item.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"'{item}' is not an index or a range a-b")
        a, b = int(low), int(high) if dash else int(low)
        if b < a:
            raise ValueError(f"range '{item}' runs backwards")
        total += b - a + 1
        if total > MAX_QUERY_SAMPLES:
            raise ValueError(f"more than {MAX_QUERY_SAMPLES} samples")
        parts.append(np.arange(a, b + 1, dtype=np.int64))
    return np.unique(np.concatenate(parts)).tolist() if parts else []


def query_args(query: str | Mapping) -> dict[str, str]:
    """A query string or Panel's `session_args` (name → list of bytes) as name → last value."""
    if isinstance(query, str):
        return {k: v[-1] for k, v in parse_qs(query.lstrip("?"), keep_blank_values=True).items()}
    return {k: (v[-1].decode() if isinstance(v[-1], bytes) else str(v[-1])) if isinstance(v, list) else str(v)
            for k, v in query.items() if not isinstance(v, list) or v}
