"""`ProjectData`: one served project's data, opened once per server process and shared by all its sessions.

`ProjectData.of(path)` (thread-safe) opens a project on first use and gives every later caller, each browser session's
views and the HTTP image handler alike, the same object. It holds what every session reads the same way: the opened
`Project` (without the analyses that cannot be read, which `problems` lists), the embeddings' points in Z-order,
per-sample labels and predictions, cluster labels, the rendered PNGs with their ETags, and, for a project whose store
records a model, the model and its `SampleExplainer`, loaded on first use. Nothing a user chooses lives here: that is
each session's `ViewState`. A project rewritten on disk while it is served shows its old data until a restart.

Point arrays, clusterings and PNGs of every project go into one least-recently-used cache per process (`CACHE`),
bounded in bytes by a memory budget (`set_cache_budget`, `relaylab serve --cache-memory MB`): the server's memory
stays bounded whatever the number of sessions and projects, and what one session rendered is a hit for the next.

The image URLs name a project by `key`, a hash of its resolved path, never by the path itself; the image handler
serves only projects registered here (`ProjectData.registered(key)`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from ..cache import LRU
from ..data.project import Project, open_project
from ..errors import RelaylabError
from . import render
from . import state as vs
from .points import Points

log = logging.getLogger(__name__)

CACHE_BYTES = 512 * 2**20  # the default memory budget of CACHE
SCORES_CACHE = 32  # category scores (small) kept per project

_lock = threading.Lock()
_by_path: dict[Path, ProjectData] = {}
_by_key: dict[str, ProjectData] = {}
_served: dict[str, Path] = {}  # key → path of every project this process serves, opened or not yet
_maps = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relaylab-map")  # on-demand maps, one at a time per process


def nbytes(value) -> int:
    """The memory a cached value holds: its NumPy/pandas arrays and bytes, counted once each (an estimate: Python
    object overhead is left out)."""
    if isinstance(value, bytes | str):
        return len(value)
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, pd.Index):
        return int(value.memory_usage())
    if isinstance(value, tuple | list):
        return sum(nbytes(v) for v in value)
    if isinstance(value, Points):
        return sum(a.nbytes for a in (value.keys, value.x, value.y, value.sample, value.member))
    return 64


CACHE = LRU(max_bytes=CACHE_BYTES, size=nbytes)  # every project's points, clusterings and PNGs, keyed (project key, kind, ...)


def serve_paths(paths) -> None:
    """The projects this process serves (`relaylab serve`, `apps/explorer.py`): their image URLs are answered even
    before a session of this process opened them."""
    for path in paths:
        _served[project_key(path)] = Path(path).resolve()


def set_cache_budget(max_bytes: int) -> None:
    """Bound the process's cache (`CACHE`) to `max_bytes`; the least recently used items beyond it are dropped now."""
    if max_bytes < 2**20:
        raise RelaylabError.at("--cache-memory", "", "a memory budget of at least 1 MB", f"{max_bytes} bytes")
    CACHE.max_bytes = int(max_bytes)
    CACHE.trim()


@dataclasses.dataclass
class MapJob:
    """An on-demand map being computed (or done): its analysis name, future (the name, or the error) and progress 0–1."""

    name: str
    future: Future
    progress: float = 0.0


def small_read(array) -> np.ndarray:
    """The values of a small selection of a (maybe Dask-backed) DataArray, read in the calling thread: for a page of
    rows, the threaded scheduler's hand-offs cost more than the reading (most of a cluster click's time)."""
    data = array.data
    if hasattr(data, "compute"):
        return np.asarray(data.compute(scheduler="synchronous"))
    return np.asarray(data)


def project_key(path: str | os.PathLike) -> str:
    """The name of a project in image URLs: it neither reveals nor accepts a path."""
    return hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]


def readable(project: Project) -> tuple[Project, list[str]]:
    """The project without the analyses that cannot be opened (e.g. left half-written by a killed job), and why."""
    problems, analyses = [], {}
    for name in project.analyses:
        try:
            analyses[name] = project.analyses[name]
        except RelaylabError as error:
            problems.append(f"{project.name}: analysis '{name}' is left out: {error}")
    if len(analyses) == len(project.analyses):
        return project, problems
    return dataclasses.replace(project, analyses=analyses), problems


class Clusters(NamedTuple):
    """A clustering of a category: the members' dataset indices and each member's cluster (-1 = noise)."""

    members: pd.Index
    labels: np.ndarray


class SampleInfo:
    """Per-sample facts for colouring, hover and cards, indexed by dataset index: true label, prediction, class names."""

    def __init__(self, project: Project):
        self.project = project
        labels = np.asarray(project.inputs["label"].values)
        self.multi_hot = labels if labels.ndim == 2 else None
        self.label = labels.argmax(axis=1) if labels.ndim == 2 else labels.astype(np.int64)
        self.names = [str(n) for n in project.label_map["name"].values]
        self.classes = np.asarray(project.label_map["class"].values)
        self._prediction: np.ndarray | None = None

    def class_name(self, k: int) -> str:
        hit = np.flatnonzero(self.classes == k)
        return self.names[hit[0]] if hit.size else f"class {k}"

    @property
    def prediction(self) -> np.ndarray:
        """Predicted class (argmax of the model outputs) per dataset index; -1 where the first attribution set has no row."""
        if self._prediction is None:
            prediction = np.full(self.label.size, -1, dtype=np.int64)
            first = next(iter(self.project.attributions.values()), None)
            if first is not None and "prediction" in first:  # CoRelAy's attribution files may have none
                prediction[np.asarray(first["sample"].values)] = np.asarray(first["prediction"].argmax("class").values)
            self._prediction = prediction
        return self._prediction

    def correct(self, samples: np.ndarray) -> np.ndarray:
        predicted = self.prediction[samples]
        if self.multi_hot is not None:
            return self.multi_hot[samples, np.maximum(predicted, 0)] & (predicted >= 0)
        return predicted == self.label[samples]

    def predicted_of(self, sample: int) -> int | None:
        """One sample's prediction without computing all of them (what hover needs)."""
        if self._prediction is not None:
            value = int(self._prediction[sample])
            return value if value >= 0 else None
        for attributions in self.project.attributions.values():
            if "prediction" not in attributions:
                return None
            try:
                return int(attributions["prediction"].sel(sample=sample).argmax("class").values)
            except KeyError:
                return None
        return None


class ProjectData:
    """One project and everything read or computed from it that all sessions share (see the module docstring)."""

    def __init__(self, project: Project, problems: list[str] | None = None):
        self.project = project
        self.problems = list(problems or [])
        self.key = project_key(project.path)
        self._scores = LRU(max_items=SCORES_CACHE)  # category scores per analysis
        self._census = LRU(max_items=SCORES_CACHE)  # the census of an analysis (None: none in the store)
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()  # loading a model takes a while: not under the lock of the quick reads
        self._sample_info: SampleInfo | None = None
        self._explainer = None
        self._versions: dict[str, object] = {}  # corrected model versions' explainers (the before/after tab)
        self._map_jobs: dict[str, MapJob] = {}
        self._recorded: dict[str, str | None] = {}  # analysis → the attribution set it records

    @classmethod
    def of(cls, path: str | os.PathLike) -> ProjectData:
        """The process's one ProjectData of the project at `path`, opened on first use. RelaylabError if it cannot be
        opened (nothing is registered then, so a later call tries again)."""
        path = Path(path).resolve()
        with _lock:
            if path not in _by_path:
                data = cls(*readable(open_project(path)))
                _by_path[path] = _by_key[data.key] = data
            return _by_path[path]

    @staticmethod
    def registered(key: str) -> ProjectData | None:
        """The project served under an image URL's key, or None. A served project (`serve_paths`) not opened yet by
        this process is opened now: with several server processes, the page may come from one and its images from
        another."""
        data = _by_key.get(key)
        if data is None and key in _served:
            try:
                data = ProjectData.of(_served[key])
            except RelaylabError as error:
                log.warning("image request for %s: %s", _served[key], error)
                return None
        return data

    def register(self) -> str:
        """Make this project's images servable by key (`of` does this; for a ProjectData made from an open Project)."""
        with _lock:
            _by_key.setdefault(self.key, self)
        return self.key

    def close(self) -> None:
        for explainer in [self._explainer, *self._versions.values()]:
            if explainer is not None:
                explainer.close()
        self.project.close()

    # ------------------------------------------------------------------------------------------------ analyses

    def points(self, analysis: str, category: str, embedding: str, x_dim: int, y_dim: int) -> Points:
        """The embedding's two chosen components in Z-order."""
        def make() -> Points:
            started = time.perf_counter()
            node = self.project.analyses[analysis][category]
            xy = np.asarray(node["embedding"][embedding]["embedding"].isel(component=[x_dim, y_dim]).values)
            points = Points(xy[:, 0], xy[:, 1], vs.member_indices(node))
            log.info("%s/%s/%s: %d points in Z-order in %.2f s", analysis, category, embedding, len(points), time.perf_counter() - started)
            return points

        return CACHE.get((self.key, "points", analysis, category, embedding, x_dim, y_dim), make)

    def clusters(self, analysis: str, category: str, clustering: str) -> Clusters | None:
        """A category's clustering; None when any of the three is empty (no clustering chosen), RelaylabError when the
        project lacks one of them."""
        if not (analysis and category and clustering):
            return None

        def make() -> Clusters:
            if analysis not in self.project.analyses:
                raise RelaylabError.at(self.project.path, "analyses", f"an analysis ({', '.join(self.project.analyses) or 'none'})",
                                       repr(analysis))
            tree = self.project.analyses[analysis]
            if category not in tree.children:
                raise RelaylabError.at(self.project.path, f"analyses/{analysis}", "a category of the analysis", repr(category))
            node = tree[category]
            if clustering not in vs.clusterings(node):
                raise RelaylabError.at(self.project.path, f"analyses/{analysis}/{category}/cluster", "a clustering of the category",
                                       repr(clustering))
            return Clusters(pd.Index(vs.member_indices(node)), vs.cluster_labels(node, clustering))

        return CACHE.get((self.key, "clusters", analysis, category, clustering), make)

    @property
    def sample_info(self) -> SampleInfo:
        with self._lock:
            if self._sample_info is None:
                self._sample_info = SampleInfo(self.project)
            return self._sample_info

    def recorded_attribution(self, analysis: str) -> str | None:
        """The attribution set the analysis was computed from (relaylab records it), else the project's first set;
        None for a project without attributions."""
        if not self.project.attributions:
            return None
        if analysis not in self._recorded:  # read once per analysis: the grid asks on every redraw
            meta = None
            if analysis and self.project.metadata.get("format") == "relaylab-zarr":  # ViRelAy/CoRelAy files record none
                from ..data import store as zstore

                meta = zstore.read_group_meta(self.project.path, f"analyses/{analysis}")
            self._recorded[analysis] = (meta or {}).get("attribution")
        recorded = self._recorded[analysis]
        return recorded if recorded in self.project.attributions else next(iter(self.project.attributions))

    def attribution_of(self, state) -> str | None:
        """The state's attribution set: the one chosen, else the analysis's own."""
        return state.attribution or self.recorded_attribution(state.analysis)

    def category_scores(self, analysis: str) -> dict[str, float]:
        """How suspicious each category of an analysis looks, 0 to 1, most suspicious first: its census score when
        the store holds a census of the analysis (`relaylab census`), else the split score of its spectrum
        (`relaylab.analyze.score.split_score`); categories without either are left out."""
        def make() -> dict[str, float]:
            from ..analyze.score import split_score

            census = self.census(analysis)
            if census is not None:
                scores = {category: float(node["score"].values) for category, node in census.children.items()}
                return dict(sorted(scores.items(), key=lambda item: -item[1]))
            scores = {}
            for category, node in self.project.analyses[analysis].children.items():
                spectral = [e for e in vs.embeddings(node) if "eigenvalue" in node["embedding"][e].coords]
                if spectral:
                    scores[category] = split_score(node["embedding"][spectral[0]]["eigenvalue"].values)[1]
            return dict(sorted(scores.items(), key=lambda item: -item[1]))

        if analysis not in self.project.analyses:
            return {}
        return self._scores.get(analysis, make)

    def census(self, analysis: str):
        """The store's census of `analysis` (`relaylab census`, loaded once), or None when there is none."""
        def make():
            if self.project.metadata.get("format") != "relaylab-zarr":
                return None
            from ..analyze.census_job import CENSUS, open_census
            from ..data import store as zstore

            meta = zstore.read_group_meta(self.project.path, f"{CENSUS}/{analysis}")
            if (meta or {}).get("status") != "complete":
                return None
            return open_census(self.project.path, analysis)

        return self._census.get(analysis, make)

    def top_predictions(self, sample: int, attribution: str | None, top: int = 10) -> list[dict]:
        """The stored model outputs of one sample (the attribution set's `prediction`), highest first:
        [{"class", "name", "score"}]; [] when the set stores none for it."""
        if attribution is None or attribution not in self.project.attributions:
            return []
        ds = self.project.attributions[attribution]
        if "prediction" not in ds or sample not in ds.indexes["sample"]:
            return []
        scores = np.asarray(ds["prediction"].sel(sample=sample).values, dtype=np.float64)
        order = np.argsort(-scores, kind="stable")[:top]
        info = self.sample_info
        return [{"class": int(c), "name": info.class_name(int(c)), "score": float(scores[c])} for c in order]

    def request_map(self, layer: str, perplexity: float, subset: int | None) -> MapJob:
        """The t-SNE map of a layer (or of the raw inputs, `analyze.activations.INPUT`) with these settings: computed
        once per process in the background (`compute_map`, which keeps it in the store and reuses a stored one), then
        registered among the project's analyses. Every session asking for the same map gets the same job."""
        from ..analyze.activations import compute_map, map_name
        from ..data import project as projects
        from ..data import store as zstore

        name = map_name(layer, perplexity, subset)
        with self._lock:
            job = self._map_jobs.get(name)
            if job is not None and not (job.future.done() and job.future.exception() is not None):
                return job  # running or done; a failed one is tried again

            def run() -> str:
                compute_map(self.project.path, layer, perplexity, subset, on_progress=lambda f: setattr(job, "progress", f))
                loader = lambda: projects.with_display_names(zstore.open_analysis(self.project.path, name), self.project.label_map)
                analyses = self.project.analyses
                if isinstance(analyses, projects.LazyGroups):
                    analyses.add(name, loader)
                else:  # a dict (some analysis of the store could not be opened): a new dict, swapped in at once
                    self.project.analyses = {**analyses, name: loader()}
                log.info("%s: on-demand map %s ready", self.project.path, name)
                return name

            job = self._map_jobs[name] = MapJob(name, Future())
            job.future = _maps.submit(run)
            return job

    # ------------------------------------------------------------------------------------------------ images

    def png(self, sample: int, mode: str, colormap: str, attribution: str | None = None) -> tuple[bytes, str]:
        """(PNG, ETag) of one image, rendered once per (attribution set, sample, mode, colour map)."""
        name = None if mode == "input" else render.attribution_set(self.project, attribution)

        def make() -> tuple[bytes, str]:
            png = render.render_png(self.project, sample, mode, colormap, name)
            return png, hashlib.sha256(png).hexdigest()[:32]

        return CACHE.get((self.key, "png", name, int(sample), mode, None if mode == "input" else colormap), make)

    # ------------------------------------------------------------------------------------------------ the model

    @property
    def has_model(self) -> bool:
        """Whether the store records a model with its layers (what the layer inspector needs)."""
        return bool(vs.model_layers(self.project))

    @property
    def explainer(self):
        """The recorded model's `SampleExplainer`, loaded on first use and shared by all sessions (it runs one pass at a
        time). RelaylabError when the store records no model or it cannot be loaded."""
        with self._model_lock:
            if self._explainer is None:
                if not self.has_model:
                    raise RelaylabError.at(self.project.path, "zarr.json#attributes.relaylab.model",
                                           "a recorded model (spec and layer listing), as the explain stage records it", "none")
                from ..explain.live import SampleExplainer  # torch: only for projects with a model

                self._explainer = SampleExplainer(self.project)
                threading.Thread(target=self._warm_up, args=(self._explainer,), daemon=True, name="relaylab-warm-up").start()
            return self._explainer

    def explainer_for(self, version: str):
        """The `SampleExplainer` of a corrected model version (`relaylab fix`), loaded on first use and shared by all
        sessions like the original's."""
        with self._model_lock:
            if version not in self._versions:
                from ..explain.live import SampleExplainer

                self._versions[version] = SampleExplainer(self.project, version=version)
            return self._versions[version]

    def _warm_up(self, explainer) -> None:
        """Explain the first sample once in the background: torch's first passes (kernel selection, deterministic-mode
        set-up) cost a second or more, which the first click on a sample would otherwise wait for."""
        try:
            sample = int(self.project.inputs["sample"].values[0])
            label = explainer.predictions(sample, top=1)[0]["class"]
            for layer in explainer.cam_layers[-1:]:
                explainer.cam(sample, label, layer)
                explainer.guided_gradcam(sample, label, layer)
            explainer.guided_backprop(sample, label)
            explainer.lrp(sample, label)
        except Exception as error:  # a model that fails here fails visibly on the user's click, with its message
            log.info("explainer warm-up of %s: %s", self.project.path, error)
