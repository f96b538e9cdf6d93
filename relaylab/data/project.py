"""`open_project`: one labeled, lazy view of a project, whether it is a ViRelAy YAML, a relaylab YAML or a Zarr store."""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr
import yaml

from ..errors import IncompleteStoreError, Problem, RelaylabError
from . import store as zstore
from .hdf5 import open_virelay_analysis, open_virelay_dataset
from .dims import CLASS, SAMPLE
from .labels import category_display_name, load_label_map
from .schema import schema_problems

log = logging.getLogger(__name__)


class LazyGroups(Mapping):
    """Name → Dataset/DataTree, opened on first access (so an unfinished group only fails when it is used)."""

    def __init__(self, loaders: dict[str, Callable[[], object]]):
        self._loaders = loaders
        self._opened: dict[str, object] = {}

    def __getitem__(self, name: str):
        if name not in self._loaders:
            raise KeyError(f"no '{name}'; available: {', '.join(self._loaders) or 'none'}")
        if name not in self._opened:
            self._opened[name] = self._loaders[name]()
        return self._opened[name]

    def add(self, name: str, loader: Callable[[], object]) -> None:
        """Register a group written after opening (copy on write: iterations already running see the old listing)."""
        self._loaders = {**self._loaders, name: loader}
        self._opened.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)

    def close(self) -> None:
        for item in self._opened.values():
            item.close()


@dataclass
class Project:
    """A project: inputs, attribution sets, activation sets and analyses, all labeled and lazy."""

    name: str
    model: str
    path: Path
    label_map: xr.Dataset
    inputs: xr.Dataset
    attributions: Mapping[str, xr.Dataset] = field(default_factory=dict)
    activations: Mapping[str, xr.DataTree] = field(default_factory=dict)
    analyses: Mapping[str, xr.DataTree] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    @property
    def dataset_name(self) -> str:
        return self.metadata.get("dataset", {}).get("name", "")

    @property
    def has_images(self) -> bool:
        """False for a project of attributions without their dataset (`attributions_only`): its inputs hold the
        samples' labels only."""
        return "input" in self.inputs.variables

    def close(self) -> None:
        self.inputs.close()
        for group in (self.attributions, self.activations, self.analyses):
            if isinstance(group, LazyGroups):
                group.close()
            else:
                for item in group.values():
                    item.close()

    def __enter__(self) -> "Project":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def summary(self) -> str:
        n = self.inputs.sizes[SAMPLE]
        labels = "multi-label" if self.inputs["label"].ndim == 2 else "single-label"
        if self.has_images:
            c, h, w = (self.inputs.sizes[d] for d in ("channel", "y", "x"))
            dataset = (f"{n} samples, {c}×{h}×{w} {self.inputs['input'].dtype}, {labels}, "
                       f"value range {self.inputs.attrs.get('value_range')}")
        else:
            dataset = f"{n} samples, {labels}, no input images (attributions without their dataset)"
        lines = [
            f"project   {self.name}  ({self.metadata.get('format')}: {self.path})",
            f"model     {self.model}",
            f"dataset   {self.dataset_name}: {dataset}",
            f"classes   {self.label_map.sizes[CLASS]}",
        ]
        for name, ds in self.attributions.items():
            lines.append(f"attributions/{name}  {ds.sizes[SAMPLE]} samples, method {ds.attrs.get('method') or '?'}, "
                         f"strategy {ds.attrs.get('strategy') or '?'}" + ("" if "prediction" in ds else ", no predictions"))
        for name, tree in self.activations.items():
            lines.append(f"activations/{name}  layers: {', '.join(tree.children)}")
        for name, tree in self.analyses.items():
            embeddings = sorted({e for c in tree.children.values() if "embedding" in c.children for e in c["embedding"].children})
            clusterings = sorted({k for c in tree.children.values() if "cluster" in c.children for k in c["cluster"].data_vars})
            members = sum(c.sizes.get("member", 0) for c in tree.children.values())
            lines.append(f"analyses/{name}  {len(tree.children)} categories, {members} members; "
                         f"embeddings: {', '.join(embeddings)}; clusterings: {', '.join(clusterings)}")
        for name, entry in (self.metadata.get("store", {}).get("model_versions") or {}).items():
            correction = entry.get("correction") or {}
            lines.append(f"model version {name}  {correction.get('method')} at {correction.get('layer')} "
                         f"(category {(entry.get('selection') or {}).get('category')}; relaylab verify --model {name})")
        return "\n".join(lines)


def open_project(path: str | os.PathLike, *, dask: bool = True, label_map: str | os.PathLike | None = None) -> Project:
    """Open a ViRelAy project YAML, a relaylab project YAML (ViRelAy's plus relaylab's keys) or a relaylab Zarr store;
    or, with `label_map`, an attribution HDF5 file without its dataset (CoRelAy's scenario, `attributions_only`).

    The inputs and attribution sets are Dask-backed, chunked like their storage (for work across the dataset);
    `dask=False` leaves a YAML project's arrays as plain lazy arrays that read exactly what is indexed, which is what
    a block-by-block copy wants: Dask would read a block that spans two of its chunks twice over and stitch it
    together (a fifth of a conversion's read time). Attribution sets split over several files stay Dask-backed."""
    from .attributions_only import is_attribution_file, open_attribution_file

    path = Path(path)
    if label_map is not None:
        if not is_attribution_file(path):
            raise RelaylabError.at(path, "/attribution", "an attribution HDF5 file (a label map is given only with one)",
                                   "no such file" if not path.exists() else "no 'attribution' array or group")
        return open_attribution_file(path, label_map, dask=dask)
    if zstore.is_store(path):
        return open_store_project(path, dask=dask)
    if not path.exists():
        raise RelaylabError.at(path, "", "an existing project file (YAML) or relaylab Zarr store", "no such file")
    if path.is_dir():
        raise RelaylabError.at(path, "zarr.json", "a project YAML file or a relaylab Zarr store", "a folder without zarr.json")
    if is_attribution_file(path):
        raise RelaylabError.at(path, "", "a project YAML file or a relaylab Zarr store; an attribution HDF5 file opens "
                               "with its label map (--label-map FILE)", "an attribution file without a label map")
    return open_yaml_project(path, dask=dask)


def open_projects(paths: list[str | os.PathLike]) -> dict[str, Project]:
    """Several projects side by side, keyed by name; names must be unique (ViRelAy silently mixes them up)."""
    projects: dict[str, Project] = {}
    with ExitStack() as on_error:  # every project opened so far is closed when a later one fails
        for path in paths:
            project = on_error.enter_context(open_project(path))
            if project.name in projects:
                other = projects[project.name].path
                raise RelaylabError.at(path, "project.name", f"a project name not already used by {other}", repr(project.name))
            projects[project.name] = project
        on_error.pop_all()
    return projects


# ----------------------------------------------------------------------------------------------------- YAML files


def read_project_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RelaylabError.at(path, where, "valid YAML", str(getattr(error, "problem", error))) from None
    except UnicodeDecodeError as error:
        raise RelaylabError.at(path, "", "a UTF-8 YAML text file", str(error)) from None
    return data


def project_file_problems(data: object, file: str) -> list[Problem]:
    """Schema problems of a parsed project file, each at its key path (e.g. `project.dataset.type`)."""
    return schema_problems("project", data, file)


def attribution_blocks(project: dict) -> list[dict]:
    """ViRelAy's single `attributions` block, or relaylab's list of named blocks, as a list."""
    blocks = project.get("attributions") or []
    return [blocks] if isinstance(blocks, dict) else list(blocks)


def attribution_set_name(block: dict) -> str:
    return str(block.get("name") or block.get("attribution_method") or "attribution")


def open_yaml_project(path: Path, dask: bool = True) -> Project:
    data = read_project_yaml(path)
    problems = project_file_problems(data, str(path))
    if problems:
        raise RelaylabError(problems)
    folder = path.parent
    spec = data["project"]
    label_map = load_label_map(folder / spec["label_map"])
    with ExitStack() as on_error:  # what is open is closed when a later part fails
        inputs = open_inputs(spec["dataset"], folder, label_map, str(path), dask=dask)
        on_error.callback(inputs.close)
        attributions = {}
        for block in attribution_blocks(spec):
            name = attribution_set_name(block)
            attributions[name] = open_attribution_set(block, folder, inputs, label_map, spec.get("model", ""), f"{path}",
                                                      dask=dask, sampling=declared_sampling(spec["dataset"]))
            on_error.callback(attributions[name].close)
        analyses = {}
        for block in spec.get("analyses") or []:
            method = block["analysis_method"]
            sources = [folder / s for s in block["sources"]]
            analyses[method] = merge_analyses([analyses[method]] if method in analyses else [], sources, label_map)
            on_error.callback(analyses[method].close)
        activations: Mapping = {}
        if spec.get("store"):
            extra = open_store_project(folder / spec["store"])
            attributions.update(extra.attributions)
            activations = extra.activations
            analyses.update(extra.analyses)
        on_error.pop_all()
    metadata = {
        "format": "relaylab-yaml" if is_relaylab_yaml(spec) else "virelay-yaml",
        "dataset": {k: v for k, v in spec["dataset"].items()},
        "description": spec.get("description", ""),
    }
    return Project(spec["name"], spec.get("model", ""), path, label_map, inputs, attributions, activations, analyses, metadata)


RELAYLAB_KEYS = {"store", "description"}


def is_relaylab_yaml(spec: dict) -> bool:
    dataset_extra = {"value_range", "layout"} & set(spec.get("dataset", {}))
    return bool(RELAYLAB_KEYS & set(spec) or dataset_extra or isinstance(spec.get("attributions"), list))


def open_inputs(dataset: dict, folder: Path, label_map: xr.Dataset, project_file: str, dask: bool = True) -> xr.Dataset:
    from .attributions_only import is_attribution_file, labels_only_inputs

    source = folder / dataset["path"]
    if dataset["type"] == "hdf5" and is_attribution_file(source, without_data=True):
        # ViRelAy needs a dataset, so a project of attributions alone names its attribution file here (ViRelAy reads
        # only its `label` until a sample is shown): the samples' labels, no images
        attributions = open_virelay_dataset(source, kind="attribution")
        with attributions:
            inputs = labels_only_inputs(attributions, str(source), dataset["name"])
        inputs.attrs["name"] = dataset["name"]
        return inputs
    if dataset["type"] == "hdf5":
        inputs = open_virelay_dataset(source, kind="input", layout=dataset.get("layout"), value_range=dataset.get("value_range"),
                                      sampling=declared_sampling(dataset))
    else:
        from .imagedir import open_image_directory

        inputs = open_image_directory(
            source, label_map=label_map,
            label_index_regex=dataset.get("label_index_regex"),
            label_word_net_id_regex=dataset.get("label_word_net_id_regex"),
            input_width=dataset["input_width"], input_height=dataset["input_height"],
            down_sampling_method=dataset.get("down_sampling_method", "none"),
            up_sampling_method=dataset.get("up_sampling_method", "none"),
        )
    if dask:
        inputs = inputs.chunk(dask_chunks(inputs))
    inputs.attrs["name"] = dataset["name"]
    return inputs


DASK_CHUNK_BYTES = 64 * 2**20


def dask_chunks(ds: xr.Dataset) -> dict:
    """Dask chunks aligned with the storage chunks (HDF5 chunks, image batches): along `sample`, whole multiples of
    the widest variable's storage rows, about DASK_CHUNK_BYTES each, so no storage chunk is read twice and Dask's
    per-task overhead does not dominate (16-row HDF5 chunks would mean 62,500 tasks per variable at 1M samples)."""
    chunks: dict = {}
    widest = max((v for v in ds.variables.values() if SAMPLE in v.encoding.get("preferred_chunks", {})),
                 key=lambda v: v.dtype.itemsize * v.size // max(1, v.sizes[SAMPLE]), default=None)
    for var in ds.variables.values():
        for dim, size in var.encoding.get("preferred_chunks", {}).items():
            chunks.setdefault(dim, size)
    if widest is not None:
        step = widest.encoding["preferred_chunks"][SAMPLE]
        sample_bytes = max(1, widest.dtype.itemsize * widest.size // max(1, widest.sizes[SAMPLE]))
        chunks[SAMPLE] = step * max(1, DASK_CHUNK_BYTES // (step * sample_bytes))
    return chunks


def declared_sampling(dataset: dict):
    """The input size and sampling methods a project file declares for its dataset (`imagedir.Sampling`), or None
    without a size: image folders are brought to it, and so are per-sample HDF5 arrays of different shapes (inputs
    and attributions), which ViRelAy's per-sample groups exist for."""
    width, height = dataset.get("input_width"), dataset.get("input_height")
    if width is None or height is None:
        return None
    from .imagedir import Sampling

    return Sampling(width, height, dataset.get("up_sampling_method") or "none", dataset.get("down_sampling_method") or "none")


def open_attribution_set(block: dict, folder: Path, inputs: xr.Dataset, label_map: xr.Dataset, model: str,
                         project_file: str, dask: bool = True, sampling=None) -> xr.Dataset:
    """All sources of one attribution set as one Dataset along `sample` (the dataset index of each row);
    `sampling` (`declared_sampling`) brings per-sample attributions of different shapes to the input size."""
    parts = []
    with ExitStack() as on_error:
        for source in block["sources"]:
            part = open_virelay_dataset(folder / source, kind="attribution", sampling=sampling)
            on_error.callback(part.close)
            check_attribution_part(part, inputs, str(folder / source))
            parts.append(part.chunk(dask_chunks(part)) if dask or len(block["sources"]) > 1 else part)
        attributions = parts[0] if len(parts) == 1 else xr.concat(parts, dim=SAMPLE, data_vars="all", coords="different", compat="equals", join="outer")
        on_error.pop_all()
    if len(parts) > 1:
        attributions.set_close(lambda: [p.close() for p in parts])
    samples = attributions[SAMPLE].values
    ordered = np.sort(samples)
    if (ordered[1:] == ordered[:-1]).any():
        raise RelaylabError.at(project_file, "project.attributions.sources",
                               "each sample in at most one attribution source (give each file an 'index')",
                               f"sample indices {duplicated(samples)} in more than one source")
    attributions = attach_classes(attributions, label_map)
    attributions.attrs = {
        "kind": "attribution",
        "method": block.get("attribution_method", ""),
        "strategy": block.get("attribution_strategy", ""),
        "model": block.get("model", model),
        "sources": [str(folder / s) for s in block["sources"]],
    }
    return attributions


def duplicated(values: np.ndarray) -> list[int]:
    unique, counts = np.unique(values, return_counts=True)
    return unique[counts > 1][:5].tolist()


def check_attribution_part(part: xr.Dataset, inputs: xr.Dataset, file: str) -> None:
    """Shape and index checks that need no array data: spatial size, channels, index range. Predictions are optional
    (CoRelAy's attribution files may lack them): what needs them says so (`analyze --grouping predicted_label`)."""
    a, i = part["attribution"], inputs.get("input")
    if i is not None and ((a.sizes["y"], a.sizes["x"]) != (i.sizes["y"], i.sizes["x"]) or a.sizes["channel"] not in (1, i.sizes["channel"])):
        raise RelaylabError.at(file, "/attribution", f"per-sample shape ({i.sizes['channel']} or 1, {i.sizes['y']}, {i.sizes['x']}) like the inputs",
                               f"({a.sizes['channel']}, {a.sizes['y']}, {a.sizes['x']})")
    samples = part[SAMPLE].values
    n = inputs.sizes[SAMPLE]
    if samples.size and samples.max() >= n:
        bad = samples[samples >= n][:5].tolist()
        raise RelaylabError.at(file, "/index" if samples.size != n or (samples != np.arange(n)).any() else "/attribution",
                               f"sample indices below the dataset size {n}", f"{bad}")


def attach_classes(ds: xr.Dataset, label_map: xr.Dataset) -> xr.Dataset:
    """Label the `class` dimension of predictions with the label map when they cover the same classes."""
    if CLASS not in ds.dims:
        return ds
    k = ds.sizes[CLASS]
    if label_map.sizes[CLASS] == k and (label_map[CLASS].values == np.arange(k)).all():
        return ds.assign_coords({CLASS: np.arange(k), "class_name": (CLASS, label_map["name"].values),
                                 "word_net_id": (CLASS, label_map["word_net_id"].values)})
    return ds.assign_coords({CLASS: np.arange(k)})


def with_display_names(tree: xr.DataTree, label_map: xr.Dataset) -> xr.DataTree:
    """Each category's human-readable class name, from the label map, as ViRelAy shows it."""
    for category, node in tree.children.items():
        node.attrs["display_name"] = category_display_name(label_map, category)
    return tree


def merge_analyses(existing: list[xr.DataTree], sources: list[Path], label_map: xr.Dataset) -> xr.DataTree:
    """One tree per analysis method: the categories of all its sources side by side. A category in several sources
    (CoRelAy run in parts: one file per embedding) is one category with the embeddings and clusterings of all of
    them, as ViRelAy looks each one up in the sources in order: the first source that has a name gives it. Its
    `index` must then be the same in every source (each embedding has one row per index entry)."""
    nodes: dict[str, xr.Dataset] = {}
    origin: dict[str, tuple[str, np.ndarray]] = {}
    trees = list(existing)
    with ExitStack() as on_error:  # the trees opened here are closed when a later one fails
        for source in sources:
            trees.append(open_virelay_analysis(source))
            on_error.callback(trees[-1].close)
        for tree in trees:
            for category, child in tree.children.items():
                file = child.attrs.get("source_file", tree.attrs.get("source_file", ""))
                index = np.asarray(child["index"].values)
                if category in origin and not np.array_equal(origin[category][1], index):
                    raise RelaylabError.at(file, f"/{category}/index", f"the same sample indices as category "
                                           f"'{category}' of {origin[category][0]} (a category repeated in several "
                                           "sources of one analysis method merges their embeddings and clusterings)",
                                           f"{index.size} other indices" if index.size != origin[category][1].size
                                           else "other indices")
                origin.setdefault(category, (file, index))
                for node in child.subtree:
                    key, dataset = f"/{node.relative_to(tree)}", node.to_dataset(inherit=False)
                    if key not in nodes:
                        nodes[key] = dataset
                    elif key == f"/{category}/cluster":  # a repeated category's clusterings: the new names only
                        nodes[key] = nodes[key].assign({k: v for k, v in dataset.data_vars.items() if k not in nodes[key]})
        on_error.pop_all()
    merged = with_display_names(xr.DataTree.from_dict(nodes), label_map)
    closers = [t.close for t in trees]
    merged.set_close(lambda: [close() for close in closers])
    return merged


# ----------------------------------------------------------------------------------------------------- Zarr stores


def open_store_project(path: Path, dask: bool = True) -> Project:
    meta = zstore.store_metadata(path)
    if meta.get("status") != "complete":
        unfinished = zstore.unfinished_groups(path)
        raise IncompleteStoreError(Problem(
            str(path), "zarr.json#attributes.relaylab.status", "a complete store",
            f"status '{meta.get('status')}' left by a job that did not finish"
            + (f" (unfinished: {', '.join(unfinished)})" if unfinished else "")
            + "; run the same command again to resume it"))
    label_map = zstore.store_label_map(path)
    chunks = "blocks" if dask else None
    inputs = zstore.open_group(path, "inputs", chunks=chunks)
    attributions = LazyGroups({
        name: (lambda name=name: attach_classes(zstore.open_group(path, f"attributions/{name}", chunks=chunks), label_map))
        for name in zstore.list_groups(path, "attributions")
    })
    activations = LazyGroups({
        name: (lambda name=name: zstore.open_tree(path, f"activations/{name}", chunks={} if dask else None))
        for name in zstore.list_groups(path, "activations")
    })
    analyses = LazyGroups({
        name: (lambda name=name: with_display_names(zstore.open_analysis(path, name, chunks={} if dask else None), label_map))
        for name in zstore.list_groups(path, "analyses")
    })
    project = meta.get("project", {})
    metadata = {"format": "relaylab-zarr", "dataset": meta.get("dataset", {}), "description": project.get("description", ""),
                "store": meta}
    return Project(project.get("name", path.stem), project.get("model", ""), path, label_map, inputs,
                   attributions, activations, analyses, metadata)
