"""`validate`: every problem of a project at once, each with its file, the path inside it, and what was expected.

The project is opened without Dask (plain lazy arrays, read block by block here), so a check of a small project
costs little more than opening it; the content checks are shared with `convert`, which runs them on each block it
copies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from ..errors import Problem, RelaylabError
from . import store as zstore
from .hdf5 import H5_ERRORS, analysis_problems, damaged, image_group_problems, open_h5
from .dims import CLASS, SAMPLE
from .labels import label_map_problems, label_map_warnings, read_label_map_json
from .schema import schema_problems
from .project import (Project, attribution_blocks, declared_sampling, open_project, project_file_problems,
                      read_project_yaml)

BLOCK_BYTES = 64 * 2**20  # samples checked at a time: bounded memory, few reads


def validate(path: str | Path, *, progress: bool = True) -> list[Problem]:
    """Every problem of a project, label map, viewer state or store; warnings (`Problem.level`) say what was assumed
    about input that is accepted, and do not stop the checks."""
    path = Path(path)
    if zstore.is_store(path):
        return store_problems(path, progress=progress)
    if not path.is_file():
        return [Problem(str(path), "", "a project YAML file or a relaylab Zarr store", "no such file" if not path.exists() else "a folder")]
    if path.suffix.lower() == ".json":
        return json_file_problems(path)
    try:
        data = read_project_yaml(path)
    except RelaylabError as error:
        return error.problems
    problems = project_file_problems(data, str(path))
    if problems:
        return problems  # the keys the file checks below rely on are wrong: report those first
    problems = yaml_file_problems(data["project"], path.parent)
    if errors(problems):
        return problems
    return problems + opened_problems(path, progress)


def errors(problems: list[Problem]) -> list[Problem]:
    """The problems that stop the input from being used (not the warnings)."""
    return [p for p in problems if p.level != "warning"]


def json_file_problems(path: Path) -> list[Problem]:
    """A label map (a JSON list) or an exported viewer state (a JSON object)."""
    try:
        data = read_label_map_json(path)
    except RelaylabError as error:
        return [Problem(p.file, p.path, "valid JSON", p.found) if "label map" in p.expected else p for p in error.problems]
    if isinstance(data, list):
        return label_map_problems(data, str(path)) or label_map_warnings(data, str(path))
    return viewer_state_problems(data, str(path))


def viewer_state_problems(state: object, file: str) -> list[Problem]:
    """An exported viewer state against viewer-state.schema.json, plus what JSON Schema cannot say: each indices
    array and its clusters array pair up entry by entry."""
    problems = schema_problems("viewer-state", state, file)
    if problems or not isinstance(state, dict):
        return problems
    for which in ("selected", "all"):
        indices, clusters = f"{which}EmbeddingVectorsIndices", f"{which}EmbeddingVectorsClusters"
        if indices in state and clusters in state and len(state[indices]) != len(state[clusters]):
            problems.append(Problem(file, clusters, f"one cluster per entry of {indices} ({len(state[indices])})",
                                    f"{len(state[clusters])}"))
    return problems


def yaml_file_problems(spec: dict, folder: Path) -> list[Problem]:
    """Problems of each referenced file on its own (so all of them are listed, not just the first)."""
    problems: list[Problem] = []
    warnings: list[Problem] = []
    label_map_path = folder / spec["label_map"]
    try:
        entries = read_label_map_json(label_map_path)
        problems += label_map_problems(entries, str(label_map_path))
        warnings += [] if problems else label_map_warnings(entries, str(label_map_path))  # type: ignore[arg-type]
    except RelaylabError as error:
        problems += error.problems
    dataset = spec["dataset"]
    if dataset["type"] == "image_directory" and not problems:
        from .imagedir import image_directory_problems
        from .labels import load_label_map

        keys = ("label_index_regex", "label_word_net_id_regex", "input_width", "input_height",
                "down_sampling_method", "up_sampling_method")
        problems += image_directory_problems(folder / dataset["path"], label_map=load_label_map(label_map_path),
                                             **{k: dataset.get(k) for k in keys})
    elif dataset["type"] == "hdf5":
        problems += h5_file_problems(folder / dataset["path"], dataset_keys(folder / dataset["path"]))
        problems += image_group_problems(folder / dataset["path"], "data", dataset.get("layout"), declared_sampling(dataset))
    for block in attribution_blocks(spec):
        for source in block["sources"]:  # `prediction` is optional: what needs it says so
            problems += h5_file_problems(folder / source, ("attribution", "label"))
            problems += image_group_problems(folder / source, "attribution", None, declared_sampling(dataset))
    for block in spec.get("analyses") or []:
        for source in block["sources"]:
            try:
                with open_h5(folder / source) as h5:
                    problems += analysis_problems(h5, str(folder / source))
            except RelaylabError as error:
                problems += error.problems
    return problems + warnings


def dataset_keys(path: Path) -> tuple[str, ...]:
    """What a dataset file needs: `data` and `label`; only `label` for an attribution file named as the dataset of a
    project of attributions alone (see attributions_only)."""
    from .attributions_only import is_attribution_file

    try:
        return ("label",) if is_attribution_file(path, without_data=True) else ("data", "label")
    except RelaylabError:
        return ("data", "label")  # h5_file_problems reports the damaged file


def h5_file_problems(path: Path, required: tuple[str, ...]) -> list[Problem]:
    try:
        with open_h5(path) as h5:
            return [Problem(str(path), f"/{name}", f"a '{name}' array or group", "it is missing") for name in required if name not in h5]
    except RelaylabError as error:
        return error.problems
    except H5_ERRORS as error:
        return damaged(path, "", error).problems


def opened_problems(path: Path, progress: bool) -> list[Problem]:
    try:
        project = open_project(path, dask=False)
    except RelaylabError as error:
        return error.problems
    with project:
        try:
            return content_problems(project, progress)
        except RelaylabError as error:  # e.g. a damaged chunk, found when its values are read
            return error.problems


def content_problems(project: Project, progress: bool) -> list[Problem]:
    """Checks that read the arrays: labels within the label map, HDF5 inputs readable, finite attributions, analysis
    indices in range."""
    problems = label_problems(project.inputs["label"], project.label_map, source_file(project.inputs, "input"), "/label")
    if project.has_images and project.metadata.get("dataset", {}).get("type") == "hdf5":
        # every stored input value read once, as the attributions are: a damaged chunk (a failing checksum or
        # decompression) is reported here, not first by the conversion that reads it
        problems += blockwise(project.inputs["input"], readable_problems, "inputs", progress)
    n = project.inputs.sizes[SAMPLE]
    for name, attributions in project.attributions.items():
        file = source_file(attributions, "attribution")
        problems += label_problems(attributions["label"], project.label_map, file, "/label")
        problems += blockwise(attributions["attribution"], lambda block, file=file: nonfinite_problems(block, file, "/attribution"),
                              f"attributions/{name}", progress)
    for tree in project.analyses.values():
        problems += analysis_index_problems(tree, n)
        problems += cluster_problems(tree)
        if project.attributions:
            problems += missing_attribution_problems(tree, project)
    return problems


def readable_problems(values: xr.DataArray) -> list[Problem]:
    try:
        values.values
    except RelaylabError as error:
        return error.problems
    return []


def label_problems(labels: xr.DataArray, label_map: xr.Dataset, file: str, path: str) -> list[Problem]:
    """Labels that name no class of the label map (integer labels), or n-hot vectors longer than it."""
    classes = label_map[CLASS].values
    if labels.ndim == 2:
        hot = np.flatnonzero(np.asarray(labels.values, dtype=bool).any(axis=0))
        unknown = np.setdiff1d(hot, classes)
        if unknown.size:
            return [Problem(file, path, "n-hot columns that are classes of the label map", f"columns {unknown[:5].tolist()} set")]
        return []
    values = np.asarray(labels.values)
    bad = ~np.isin(values, classes)
    if bad.any():
        samples = labels[SAMPLE].values[bad][:5].tolist()
        return [Problem(file, path, "labels that are class indices of the label map",
                        f"{int(bad.sum())} outside it, e.g. {np.unique(values[bad])[:5].tolist()} at samples {samples}")]
    return []


def nonfinite_problems(values: xr.DataArray, file: str, path: str) -> list[Problem]:
    """NaN/inf are reported with the samples that hold them, never passed on silently."""
    flat = np.asarray(values.values).reshape(values.shape[0], -1)
    bad = ~np.isfinite(flat).all(axis=1)
    if bad.any():
        samples = values[SAMPLE].values[bad][:5].tolist()
        return [Problem(file, path, "finite values (no NaN or inf)", f"{int(bad.sum())} samples with NaN/inf, e.g. {samples}")]
    return []


def source_file(ds: xr.Dataset, var: str) -> str:
    own = ds[var].attrs.get("source_file") if var in ds.variables else None  # inputs without images have no `input`
    return str(own or ds.attrs.get("source_file") or ", ".join(ds.attrs.get("sources", [])))


def analysis_index_problems(tree: xr.DataTree, n_samples: int) -> list[Problem]:
    problems = []
    for category, node in tree.children.items():
        index = np.asarray(node["index"].values)
        if index.size and (index.max() >= n_samples):
            file = node.attrs.get("source_file", "")
            problems.append(Problem(file, f"/{category}/index", f"sample indices below the dataset size {n_samples}",
                                    f"{index[index >= n_samples][:5].tolist()}"))
    return problems


def blockwise(values: xr.DataArray, check, desc: str, progress: bool) -> list[Problem]:
    """Run `check` over blocks of samples of about BLOCK_BYTES, so a huge array is never in memory at once."""
    n = values.sizes[SAMPLE]
    rows = max(1, BLOCK_BYTES // max(1, values.dtype.itemsize * values.size // max(1, n)))
    problems = []
    for start in tqdm(range(0, n, rows), desc=desc, unit="block", disable=not progress, leave=False):
        problems += check(values.isel({SAMPLE: slice(start, start + rows)}))
    return merge_counts(problems)


def merge_counts(problems: list[Problem]) -> list[Problem]:
    """One problem per place and expectation; block-by-block findings are summarised into the first."""
    merged: dict[tuple, Problem] = {}
    for p in problems:
        merged.setdefault((p.file, p.path, p.expected), p)
    return list(merged.values())


def cluster_problems(tree: xr.DataTree) -> list[Problem]:
    problems = []
    for category, node in tree.children.items():
        file = node.attrs.get("source_file", "")
        if "cluster" in node.children:
            for name, values in node["cluster"].dataset.data_vars.items():
                v = np.asarray(values.values)
                if not np.issubdtype(v.dtype, np.integer):
                    problems.append(Problem(file, f"/{category}/cluster/{name}", "integer cluster labels", f"dtype {v.dtype}"))
                elif v.size and v.min() < -1:
                    problems.append(Problem(file, f"/{category}/cluster/{name}", "cluster labels >= -1 (-1 is noise)", f"minimum {v.min()}"))
        if "embedding" in node.children:
            for name, emb in node["embedding"].children.items():
                values = np.asarray(emb["embedding"].values)
                if not np.isfinite(values).all():
                    problems.append(Problem(file, f"/{category}/embedding/{name}", "finite embedding coordinates",
                                            f"{int((~np.isfinite(values)).any(axis=1).sum())} rows with NaN/inf"))
    return problems


def missing_attribution_problems(tree: xr.DataTree, project: Project) -> list[Problem]:
    """ViRelAy shows each analysed sample's heatmap: every analysed index needs an attribution."""
    available = set()
    for attributions in project.attributions.values():
        available |= set(attributions[SAMPLE].values.tolist())
    problems = []
    for category, node in tree.children.items():
        index = np.asarray(node["index"].values)
        missing = np.setdiff1d(index, np.fromiter(available, dtype=np.int64, count=len(available)))
        if missing.size:
            problems.append(Problem(node.attrs.get("source_file", ""), f"/{category}/index",
                                    "indices of samples that have attributions", f"{missing.size} without, e.g. {missing[:5].tolist()}"))
    return problems


def store_problems(path: Path, progress: bool) -> list[Problem]:
    try:
        meta = zstore.store_metadata(path)
    except RelaylabError as error:
        return error.problems
    problems = schema_problems("store", meta, str(path), "zarr.json#attributes.relaylab")
    problems += group_meta_problems(path)
    for group in zstore.unfinished_groups(path):
        problems.append(Problem(str(path), group, "a completely written group",
                                "left unfinished by a job that did not complete; run the same command again to resume it"))
    if problems:
        return problems
    warnings = label_map_warnings(meta["label_map"], str(path), "zarr.json#attributes.relaylab.label_map")
    return warnings + opened_problems(path, progress)


def group_meta_problems(path: Path) -> list[Problem]:
    """Each relaylab group's attributes.relaylab against group.schema.json."""
    problems = []
    for group, meta in zstore.group_metas(path).items():
        problems += schema_problems("group", meta, str(path), f"{group}/zarr.json#attributes.relaylab")
    return problems


def projects_problems(paths: list[Path], progress: bool = True) -> list[Problem]:
    """Problems of several projects served together, including names that collide."""
    problems: list[Problem] = []
    names: dict[str, Path] = {}
    for path in paths:
        problems += validate(path, progress=progress)
        try:
            with open_project(path) as project:
                if project.name in names:
                    problems.append(Problem(str(path), "project.name", f"a name not already used by {names[project.name]}", repr(project.name)))
                names.setdefault(project.name, path)
        except RelaylabError:
            pass  # already reported by validate
    return problems
