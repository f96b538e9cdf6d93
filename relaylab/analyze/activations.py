"""Activation-space analyses: where each sample lies in a layer's activation space, as a 2-D map per layer.

For each layer of an activation set (`activations/<set>/<layer>/activation`, (sample, channel, y, x) or
(sample, feature)), as in the per-layer VGG16 dashboard this follows: spatial maps are average-pooled until a sample
has at most `max_features` values (a layer's raw maps have millions), the samples are flattened, PCA keeps the
components that explain `variance` of the variance (typically a few hundred), and t-SNE (openTSNE, as SpRAy's
embeddings) or PCA maps them to 2-D. Each layer becomes the analysis `activation-<layer>` with the single category
`all` holding every sample, embeddings `pca` (the first two principal components, always: they come free) and
`tsne` (method="tsne"), and attributes recording how it was made. A layer whose analysis is complete with the same
settings is skipped, so re-running the command costs nothing.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import xarray as xr
from sklearn.decomposition import PCA
from tqdm.auto import tqdm

from ..data import store as zstore
from ..data.dims import SAMPLE
from ..data.project import open_project
from ..errors import RelaylabError, step
from .config import EMBEDDINGS

log = logging.getLogger(__name__)

METHODS = ("tsne", "pca")
PREFIX = "activation-"
MAX_FEATURES = 4096  # per sample, after spatial pooling: PCA of N × 4096 float32 stays within seconds and ~1 GB per 50k samples


def analysis_name(layer: str) -> str:
    return f"{PREFIX}{layer}"


def downsample(activation: xr.DataArray, max_features: int = MAX_FEATURES) -> tuple[xr.DataArray, int]:
    """(sample, channel, y, x) maps average-pooled by the smallest factor f that leaves at most `max_features` values
    per sample (edge blocks averaged over what they hold); other shapes unchanged. Returns (maps, f)."""
    if activation.ndim != 4:
        return activation, 1
    _, channels, height, width = activation.shape
    factor = 1
    while channels * math.ceil(height / factor) * math.ceil(width / factor) > max_features and factor < max(height, width):
        factor += 1
    if factor == 1:
        return activation, 1
    y, x = activation.dims[2:]
    return activation.coarsen({y: factor, x: factor}, boundary="pad").mean(), factor


def embed_layer(features: np.ndarray, method: str = "tsne", variance: float = 0.9, random_state=0) -> tuple[dict, dict]:
    """PCA to `variance` (at least 2 components), then t-SNE or PCA to 2-D. Returns ({name: (n, 2)}, attrs)."""
    features = features.reshape(len(features), -1)
    pca = PCA(n_components=variance if variance < 1 else None, random_state=random_state).fit(features)
    if pca.n_components_ < 2:  # one component explains `variance`: keep two, a 2-D map needs them
        pca = PCA(n_components=2, random_state=random_state).fit(features)
    reduced = pca.transform(features)
    embeddings = {"pca": reduced[:, :2]}
    if method == "tsne":
        embeddings["tsne"] = EMBEDDINGS["tsne"](random_state).fit_transform(reduced)
    attrs = {"method": method, "variance_target": float(variance), "pca_components": int(pca.n_components_),
             "explained_variance": float(pca.explained_variance_ratio_.sum()), "features": int(features.shape[1])}
    return {name: np.asarray(values, dtype=np.float32) for name, values in embeddings.items()}, attrs


def layer_tree(samples: np.ndarray, embeddings: dict, attrs: dict) -> xr.DataTree:
    """The analysis in relaylab's form: one category `all` with `index`, `embedding/<name>` and an empty `cluster`."""
    nodes = {"/all": xr.Dataset(coords={"index": ("member", np.asarray(samples, dtype=np.uint32))}, attrs=attrs)}
    for name, values in embeddings.items():
        nodes[f"/all/embedding/{name}"] = xr.Dataset({"embedding": (("member", "component"), values)})
    nodes["/all/cluster"] = xr.Dataset()
    return xr.DataTree.from_dict(nodes)


def analyze_activations(store_path: str | Path, activation_set: str = "activations", layers: list[str] | None = None,
                        method: str = "tsne", variance: float = 0.9, random_state=0, max_features: int = MAX_FEATURES,
                        progress: bool = True) -> list[str]:
    """Write `activation-<layer>` for each layer (default: all of the set); returns the analysis names written or
    already complete with these settings. Bad arguments raise a RelaylabError before anything is computed."""
    store = str(Path(store_path))
    with open_project(store_path) as project:
        if project.metadata.get("format") != "relaylab-zarr":
            raise RelaylabError.at(store_path, "", "a relaylab Zarr store to write the analyses into",
                                   "a project file; convert it first: relaylab convert PROJECT OUT.zarr")
        if activation_set not in project.activations:
            raise RelaylabError.at(store_path, f"activations/{activation_set}",
                                   f"one of the project's activation sets ({', '.join(project.activations) or 'none'})", "no such set")
        tree = project.activations[activation_set]
        recorded = [entry["name"] for entry in (project.metadata["store"].get("model") or {}).get("layers", [])]
        # input to output where the store records the model, else by name: a folder listing has no order of its own
        present = sorted((name for name, node in tree.children.items() if "activation" in node.data_vars),
                         key=lambda name: (recorded.index(name) if name in recorded else len(recorded), name))
    if method not in METHODS:
        raise RelaylabError.at(store_path, "", f"method one of {', '.join(METHODS)}", repr(method))
    if not 0 < variance <= 1:
        raise RelaylabError.at(store_path, "", "a fraction of variance to keep in (0, 1]", repr(variance))
    layers = present if layers is None else list(layers)
    missing = [layer for layer in layers if layer not in present]
    if missing:
        raise RelaylabError.at(store_path, f"activations/{activation_set}/{missing[0]}",
                               f"a layer of the set ({', '.join(present) or 'none'})", "no such layer")
    settings = {"activation_set": activation_set, "method": method, "variance": float(variance),
                "random_state": random_state, "max_features": int(max_features)}
    written = []
    activations = zstore.open_tree(store, f"activations/{activation_set}")  # lazy: each layer reads its own arrays
    for layer in tqdm(layers, desc=f"activations/{activation_set}", unit="layer", disable=not progress):
        name = analysis_name(layer)
        settings_of_layer = {**settings, "layer": layer}
        meta = zstore.read_group_meta(store, f"analyses/{name}")  # not every group's: a store holds many
        if meta is not None and meta.get("status") == "complete" and all(meta.get(k) == v for k, v in settings_of_layer.items()):
            log.info("analyses/%s is complete, skipping", name)
            written.append(name)
            continue
        with step(f"embedding activations/{activation_set}/{layer}", store):
            activation = activations[layer]["activation"]
            pooled, factor = downsample(activation, max_features)
            embeddings, attrs = embed_layer(np.asarray(pooled.values, dtype=np.float32), method, variance, random_state)
        attrs = {**attrs, "layer": layer, "activation_set": activation_set, "pool_factor": factor,
                 "activation_shape": list(activation.shape[1:])}
        log.info("%s: %d features, %d PCA components keep %.1f%% of the variance", name, attrs["features"],
                 attrs["pca_components"], 100 * attrs["explained_variance"])
        # one made with other settings is made anew; one a kill left unfinished is completed
        zstore.write_analysis(store, name, layer_tree(activation[SAMPLE].values, embeddings, attrs), attrs=settings_of_layer,
                              replace=True, progress=False)
        written.append(name)
    return written
