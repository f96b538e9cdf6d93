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
from collections.abc import Callable
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
INPUT = "input"  # compute_map's name for the raw inputs, as if they were a layer
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


def embed_layer(features: np.ndarray, method: str = "tsne", variance: float = 0.9, random_state=0, perplexity: float | None = None,
                on_progress: Callable[[float], None] | None = None) -> tuple[dict, dict]:
    """PCA to `variance` (at least 2 components), then t-SNE (openTSNE's default perplexity 30 unless given) or PCA to
    2-D. Returns ({name: (n, 2)}, attrs). `on_progress(fraction)` hears how far t-SNE's optimisation is."""
    features = features.reshape(len(features), -1)
    pca = PCA(n_components=variance if variance < 1 else None, random_state=random_state).fit(features)
    if pca.n_components_ < 2:  # one component explains `variance`: keep two, a 2-D map needs them
        pca = PCA(n_components=2, random_state=random_state).fit(features)
    reduced = pca.transform(features)
    embeddings = {"pca": reduced[:, :2]}
    if method == "tsne":
        options = {} if perplexity is None else {"perplexity": float(perplexity)}
        if on_progress is not None:  # openTSNE calls back every 10 iterations of its two phases (250 + 500 by default)
            calls = iter(range(1, 10**9))
            options.update(callbacks=lambda *_: on_progress(min(0.99, next(calls) * 10 / 750)) or False, callbacks_every_iters=10)
        embeddings["tsne"] = EMBEDDINGS["tsne"](random_state, **options).fit_transform(reduced)
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


def map_name(layer: str, perplexity: float, subset: int | None) -> str:
    """The analysis holding an on-demand map: `activation-<layer>--tsne-p<perplexity>-n<subset or all>`."""
    return f"{analysis_name(layer)}--tsne-p{perplexity:g}-n{subset or 'all'}"


def compute_map(store_path: str | Path, layer: str, perplexity: float = 30, subset: int | None = None,
                activation_set: str = "activations", variance: float = 0.9, random_state=0, max_features: int = MAX_FEATURES,
                on_progress: Callable[[float], None] | None = None) -> str:
    """A t-SNE map of one layer's activations (or of the raw inputs: layer `INPUT`) with the given perplexity, of all
    samples or a seeded random `subset` of them, written as its own analysis (`map_name`) and reused when asked
    again with the same settings (the explorer's per-layer maps on demand). Returns the analysis name."""
    store = str(Path(store_path))
    name = map_name(layer, perplexity, subset)
    settings = {"layer": layer, "activation_set": None if layer == INPUT else activation_set, "method": "tsne",
                "perplexity": float(perplexity), "subset": subset, "variance": float(variance), "random_state": random_state,
                "max_features": int(max_features)}
    meta = zstore.read_group_meta(store, f"analyses/{name}")
    if meta is not None and meta.get("status") == "complete" and all(meta.get(k) == v for k, v in settings.items()):
        return name
    if layer == INPUT:
        data = zstore.open_group(store, "inputs", chunks=None)["input"]
    else:
        activations = zstore.open_tree(store, f"activations/{activation_set}")
        if layer not in activations.children:
            raise RelaylabError.at(store, f"activations/{activation_set}/{layer}",
                                   f"a layer of the set ({', '.join(activations.children) or 'none'})", "no such layer")
        data = activations[layer]["activation"]
    n = data.sizes[SAMPLE]
    if subset is not None and not 3 <= subset:
        raise RelaylabError.at(store, "subset", "at least 3 samples, or all", repr(subset))
    positions = np.arange(n) if subset is None or subset >= n else np.sort(np.random.default_rng(random_state).choice(n, subset, replace=False))
    with step(f"mapping {name}", store):
        picked = data.isel({SAMPLE: positions})
        pooled, factor = downsample(picked, max_features)
        features = np.asarray(pooled.values, dtype=np.float32)
        if on_progress is not None:
            on_progress(0.05)
        embeddings, attrs = embed_layer(features, "tsne", variance, random_state, perplexity=min(perplexity, (len(positions) - 1) / 3),
                                        on_progress=None if on_progress is None else lambda f: on_progress(0.05 + 0.94 * f))
    attrs = {**attrs, "layer": layer, "pool_factor": factor, "perplexity": float(perplexity), "subset": subset or "all"}
    zstore.write_analysis(store, name, layer_tree(picked[SAMPLE].values, embeddings, attrs), attrs=settings, replace=True,
                          progress=False)
    if on_progress is not None:
        on_progress(1.0)
    return name
