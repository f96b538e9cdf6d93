"""CoRelAy's own scenario: an attribution HDF5 file (`attribution`, `label`, maybe `prediction` and `index`) and a
label map, without the dataset the attributions were computed on.

Such a project has no input images. relaylab represents it like any other project, with an inputs Dataset that
holds only what is known about the samples: their `sample` index and `label` (the attributions' labels, which are
the samples' labels in CoRelAy's scenario), and no `input` variable (`Project.has_images` is False). Everything that
does not need the images works on it: `convert` (a store whose `inputs` group holds the labels only), `analyze`,
`info`, `validate`, and the explorer's heatmaps.

The samples are the attribution file's rows, numbered by its `index` when it has one. An `index` with gaps (the
attributions of some samples of a larger dataset) is refused: without the dataset, nothing says what the missing
samples were, and the rest of relaylab numbers a project's samples 0..N-1.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

import h5py
import numpy as np
import xarray as xr

from ..errors import RelaylabError
from .dims import SAMPLE
from .hdf5 import open_h5, open_virelay_dataset
from .labels import load_label_map


def is_attribution_file(path: str | os.PathLike, *, without_data: bool = False) -> bool:
    """An HDF5 file with an `attribution` array or group at its root (what CoRelAy's pipelines read); with
    `without_data`, one that holds no dataset `data` beside it."""
    path = Path(path)
    if not path.is_file() or not h5py.is_hdf5(path):
        return False
    with open_h5(path) as h5:
        return "attribution" in h5 and not (without_data and "data" in h5)


def labels_only_inputs(attributions: xr.Dataset, file: str, name: str) -> xr.Dataset:
    """The inputs of an attribution-only project: the samples' labels (read here: one small vector), no images.

    Rows are ordered by sample index; the file's `index` must number them 0..N-1 (see the module docstring)."""
    samples = np.asarray(attributions[SAMPLE].values)
    n = samples.size
    order = np.argsort(samples, kind="stable")
    if n and (samples[order] != np.arange(n)).any():
        gaps = np.setdiff1d(np.arange(n), samples)[:5].tolist()
        raise RelaylabError.at(file, "/index", f"sample indices 0..{n - 1} in any order (the file's {n} rows are all the samples "
                               "there are, as no dataset is given)",
                               f"indices up to {int(samples.max())}, missing e.g. {gaps}; open the project's YAML with its dataset instead")
    label = attributions["label"]
    values = np.asarray(label.values)[order]
    return xr.Dataset(
        coords={SAMPLE: np.arange(n, dtype=np.int64), "label": (label.dims, values, dict(label.attrs))},
        attrs={"kind": "input", "name": name, "source_file": os.path.abspath(file), "value_range": None, "images": 0},
    )


def open_attribution_file(path: str | os.PathLike, label_map: str | os.PathLike, *, dask: bool = True):
    """An attribution HDF5 file and its label map as a `Project` without input images (see the module docstring).

    The attribution set is named `attribution`; the project is named after the file."""
    from .project import Project, attach_classes, dask_chunks

    path = Path(path)
    label_map_ds = load_label_map(label_map)
    attributions = open_virelay_dataset(path, kind="attribution")
    with ExitStack() as on_error:
        on_error.callback(attributions.close)
        inputs = labels_only_inputs(attributions, str(path), path.stem)
        if dask:
            attributions = attributions.chunk(dask_chunks(attributions))
        attributions = attach_classes(attributions, label_map_ds)
        attributions.attrs = {"kind": "attribution", "method": "", "strategy": "", "model": "",
                              "sources": [os.path.abspath(path)]}
        on_error.pop_all()
    metadata = {"format": "attribution-hdf5", "dataset": {"name": path.stem}, "description": "",
                "label_map": os.path.abspath(label_map)}
    return Project(path.stem, "", path, label_map_ds, inputs, {"attribution": attributions}, {}, {}, metadata)
