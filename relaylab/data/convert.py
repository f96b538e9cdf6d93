"""Conversions: any project → relaylab Zarr store (resumable), and a Zarr/YAML project → ViRelAy's HDF5 + YAML
(written to a temporary folder and renamed into place, so a killed export leaves nothing that looks finished)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path

import dask.array as da
import h5py
import numpy as np
import xarray as xr
import yaml
from tqdm.auto import tqdm

from ..errors import Problem, RelaylabError, step
from . import store as zstore
from .hdf5 import Readahead, guess_value_range
from .dims import SAMPLE
from .labels import virelay_label_map_entries
from .project import Project, open_project
from .validate import analysis_index_problems, label_problems, nonfinite_problems, source_file

log = logging.getLogger(__name__)


def convert_to_zarr(project_path: str | os.PathLike, out: str | os.PathLike, *, allow_nonfinite: bool = False,
                    compression: str = "auto", progress: bool = True, label_map: str | os.PathLike | None = None) -> Path:
    """Copy a project into a relaylab Zarr store; a killed conversion resumes when re-run with the same arguments.

    Bad content (labels outside the label map, NaN/inf in attributions) stops the conversion and removes the store
    it started, so no half-written output is left; so does any other failure before a block was committed, while
    one after keeps the committed blocks for the same command to resume (`store.output_store`). `compression`:
    "auto" (LZ4 where it saves at least a fifth, see store.AUTO_MIN_RATIO), "lz4", "zstd" or "none", for inputs
    and attributions. With `label_map`, the project is an attribution HDF5 file without its dataset
    (`attributions_only`). The store records the files it was made from (`workstore.source_files`), so a command
    given them again can tell whether it may reuse it.
    """
    from .workstore import source_files

    if compression not in zstore.COMPRESSIONS:
        raise RelaylabError.at(out, "", f"a compression of {', '.join(zstore.COMPRESSIONS)}", repr(compression))
    out = Path(out)
    resuming = zstore.is_store(out)
    with open_project(project_path, dask=False, label_map=label_map) as project, zstore.output_store(out):
        with step("creating the store", out):
            zstore.create_store(  # refuses foreign or finished outputs before touching them
                out, project={"name": project.name, "model": project.model, "description": project.metadata.get("description", "")},
                dataset={"name": project.dataset_name}, label_map=project.label_map, source=str(Path(project_path).resolve()),
            )
            if not resuming:
                zstore.update_store_metadata(out, source_files=source_files(project_path, label_map))
        write_project(project, out, allow_nonfinite=allow_nonfinite, compression=compression, progress=progress)
    return out


def write_project(project: Project, out: Path, *, allow_nonfinite: bool, compression: str, progress: bool) -> None:
    inputs = project.inputs
    n = inputs.sizes[SAMPLE]
    problems = [p for tree in project.analyses.values() for p in analysis_index_problems(tree, n)]
    if problems:  # found before any sample is copied
        raise RelaylabError(problems)
    write_samples(project, out, allow_nonfinite=allow_nonfinite, compression=compression, progress=progress)
    for name, tree in project.analyses.items():
        with step(f"copying analyses/{name}", tree.attrs.get("source_file") or project.path):
            zstore.write_analysis(out, name, tree, progress=progress)
    zstore.update_store_metadata(out, status="complete")


def write_samples(project: Project, out: Path, *, allow_nonfinite: bool, compression: str, progress: bool) -> None:
    """Inputs and attribution sets, block by block, each block checked before it is written."""
    inputs = project.inputs
    input_file = source_file(inputs, "input") if project.has_images else str(inputs.attrs.get("source_file", ""))

    def check_inputs(block: xr.Dataset, rows: slice) -> list[Problem]:
        return label_problems(block["label"], project.label_map, input_file, "/label")

    with Readahead(inputs) as readahead:
        zstore.write_dataset(out, "inputs", inputs, kind="inputs", check=check_inputs, readahead=readahead,
                             compression=compression, progress=progress, source=input_file or None,
                             attrs={"name": project.dataset_name, "value_range": inputs.attrs.get("value_range")})
    if project.has_images and inputs.attrs.get("value_range") is None:
        stored = zstore.open_group(out, "inputs")["input"].data
        low, high = da.compute(stored.min(), stored.max())
        zstore.update_group_meta(out, "inputs", value_range=guess_value_range(float(low), float(high)))

    for name, attributions in project.attributions.items():
        file = source_file(attributions, "attribution")

        def check_attributions(block: xr.Dataset, rows: slice, file=file) -> list[Problem]:
            problems = label_problems(block["label"], project.label_map, file, "/label")
            if not allow_nonfinite:
                problems += nonfinite_problems(block["attribution"], file, "/attribution")
            return problems

        provenance = {k: attributions.attrs.get(k, "") for k in ("method", "strategy", "model")}
        attributions = attributions.drop_vars([c for c in ("class_name", "word_net_id") if c in attributions.coords])
        with Readahead(attributions) as readahead:
            zstore.write_dataset(out, f"attributions/{name}", attributions, kind="attributions",
                                 check=check_attributions, readahead=readahead, compression=compression,
                                 progress=progress, attrs=provenance, source=file or None)


# ----------------------------------------------------------------------------------------------- back to ViRelAy


def convert_to_virelay(project_path: str | os.PathLike, out: str | os.PathLike, *, attribution: str | None = None,
                       progress: bool = True, label_map: str | os.PathLike | None = None) -> Path:
    """Write ViRelAy 0.6.1's layout: project.yaml, label-map.json, dataset.h5, attributions.h5, one file per analysis.

    ViRelAy shows one attribution set per project: `attribution` picks it (default: the first). With `label_map`,
    the project is an attribution HDF5 file without its dataset (`attributions_only`): dataset.h5 holds its labels.
    """
    out = Path(out)
    if out.exists():
        raise RelaylabError.at(out, "", "a new output folder", "it exists already")
    project = open_project(project_path, label_map=label_map)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent if out.parent.exists() else None))
    umask = os.umask(0)
    os.umask(umask)
    partial.chmod(0o777 & ~umask)  # mkdtemp makes it private (0700); the result is an ordinary folder
    with ExitStack() as on_error, project:
        on_error.callback(shutil.rmtree, partial, ignore_errors=True)
        write_virelay(project, partial, attribution, progress)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial.rename(out)
        on_error.pop_all()
    return out


H5_OPTIONS = {"compression": "lzf"}


def write_sample_array(h5: h5py.File, name: str, values: xr.DataArray, progress: bool, desc: str) -> None:
    """Copy a lazy (sample, ...) array into HDF5 chunk by chunk, one sample per HDF5 chunk (ViRelAy reads samples)."""
    n = values.shape[0]
    chunks = (1,) + values.shape[1:] if values.ndim > 1 else (min(n, 65536),)
    target = h5.create_dataset(name, shape=values.shape, dtype=values.dtype, chunks=chunks if n else None, **H5_OPTIONS)
    step = values.chunks[0] if values.chunks else (n,)
    start = 0
    with tqdm(total=n, desc=desc, unit="sample", disable=not progress, leave=False) as bar:
        for size in step:
            target[start:start + size] = values[start:start + size].values
            start += size
            bar.update(size)


def write_virelay(project: Project, folder: Path, attribution: str | None, progress: bool) -> None:
    (folder / "label-map.json").write_text(json.dumps(virelay_label_map_entries(project.label_map), indent=2))
    inputs = project.inputs
    # a project without images (attributions alone) gets a dataset file of labels only: ViRelAy reads just those
    # until a sample's image is asked for
    size_of = inputs if project.has_images else next(iter(project.attributions.values()), inputs)
    with h5py.File(folder / "dataset.h5", "w") as h5:
        if project.has_images:
            write_sample_array(h5, "data", inputs["input"], progress, "dataset.h5")
            h5["data"].attrs["layout"] = "chw"
            if inputs.attrs.get("value_range") is not None:
                h5["data"].attrs["value_range"] = inputs.attrs["value_range"]
        write_sample_array(h5, "label", virelay_labels(inputs["label"]), progress, "labels")
    spec: dict = {
        "name": project.name, "model": project.model or "unknown", "label_map": "label-map.json",
        "dataset": {"name": project.dataset_name or project.name, "type": "hdf5", "path": "dataset.h5",
                    "input_width": int(size_of.sizes.get("x", 0)), "input_height": int(size_of.sizes.get("y", 0)),
                    "down_sampling_method": "none", "up_sampling_method": "none",
                    "label_index_regex": None, "label_word_net_id_regex": None},
    }
    if project.attributions:
        name = attribution or next(iter(project.attributions))
        if name not in project.attributions:
            raise RelaylabError.at(project.path, f"attributions/{name}", f"one of {list(project.attributions)}", "no such set")
        ds = project.attributions[name]
        with h5py.File(folder / "attributions.h5", "w") as h5:
            write_sample_array(h5, "attribution", ds["attribution"], progress, "attributions.h5")
            if "prediction" in ds:  # without it, ViRelAy loads the project but cannot show an attribution
                write_sample_array(h5, "prediction", ds["prediction"].astype(np.float32), progress, "predictions")
            write_sample_array(h5, "label", virelay_labels(ds["label"]), progress, "labels")
            h5["index"] = ds[SAMPLE].values.astype(np.uint32)
        spec["attributions"] = {"attribution_method": ds.attrs.get("method") or name,
                                "attribution_strategy": ds.attrs.get("strategy") or "true_label",
                                "sources": ["attributions.h5"]}
    analyses = []
    for i, (name, tree) in enumerate(project.analyses.items()):
        file = f"analysis-{i:02d}.h5"
        write_virelay_analysis(tree, folder / file)
        analyses.append({"analysis_method": name, "sources": [file]})
    if analyses:
        spec["analyses"] = analyses
    (folder / "project.yaml").write_text(yaml.safe_dump({"project": spec}, sort_keys=False))


def virelay_labels(labels: xr.DataArray) -> xr.DataArray:
    """ViRelAy tells multi-label data by a boolean dtype."""
    return labels.astype(bool) if labels.ndim == 2 else labels.astype(np.int64)


def export_virelay_analysis(tree: xr.DataTree, path: str | os.PathLike) -> Path:
    """One analysis as a ViRelAy analysis HDF5 file, written beside and renamed into place."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    with ExitStack() as on_error:
        on_error.callback(partial.unlink, missing_ok=True)
        write_virelay_analysis(tree, partial)
        partial.replace(path)
        on_error.pop_all()
    return path


def write_virelay_analysis(tree: xr.DataTree, path: Path) -> None:
    with h5py.File(path, "w") as h5:
        for category, node in tree.children.items():
            group = h5.create_group(category)
            group["index"] = np.asarray(node["index"].values).astype(np.uint32)
            if "embedding" in node.children:
                for name, emb in node["embedding"].children.items():
                    dataset = group.create_dataset(f"embedding/{name}", data=np.asarray(emb["embedding"].values, dtype=np.float32))
                    if "eigenvalue" in emb.coords:
                        dataset.attrs["eigenvalue"] = np.asarray(emb["eigenvalue"].values, dtype=np.float32)
                    for key, value in emb.attrs.items():
                        dataset.attrs[key] = value
            if "cluster" in node.children:
                for name, values in node["cluster"].dataset.data_vars.items():
                    dataset = group.create_dataset(f"cluster/{name}", data=np.asarray(values.values))
                    for key, value in values.attrs.items():
                        dataset.attrs[key] = value
