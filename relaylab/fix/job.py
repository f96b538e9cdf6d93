"""`relaylab fix` and `relaylab verify` on a store: find the artifact's samples, learn its direction, correct the model
into a new model version, and measure original against corrected.

Which samples carry the artifact: a cluster of the analysis (`kmeans-4:2`), a selection exported from the explorer
(its state file, or a list of sample indices), or by default the samples the category's census points at
(`census_suspects`).
Everything the user chose is checked (category, cluster, selection, layer, method) before any activation is computed
or any weight changes.

A model version is a checkpoint beside the store, `<store>.models/<version>.pt` (the state dict, and P-ClArC's
direction and reference), recorded in the store's root metadata (`model_versions.<version>`: its spec with the
correction, what it was learned from, its verification); the original model and its weights are never touched.
`relaylab attribute/activations --model VERSION` and the explorer's before/after tab load it like the original.

Samples for fine-tuning and for evaluation: with a boolean `held_out` coordinate (the demo records one) the held-out
samples are evaluated and the rest fine-tuned on; without one a fixed fifth of the store (by sample index) is kept
out of fine-tuning and evaluated. The samples of the artifact selection are left out of the clean accuracy.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import store as zstore
from ..data.dims import CLASS, SAMPLE
from ..data.project import Project, open_project
from ..errors import RelaylabError, step
from ..explain import models
from .cav import CAV, learn_cav
from .clarc import METHODS, add_projection, rr_clarc

log = logging.getLogger(__name__)

CAV_SAMPLES = 2_000  # per side (artifact, rest of the category): larger sides are sampled
TRAIN_SAMPLES = 5_000  # samples fine-tuned on (RR-, A-ClArC)
EVAL_SAMPLES = 5_000  # samples evaluated (accuracy, flip rate)
HEATMAP_SAMPLES = 64  # artifact samples explained by both models (relevance inside the mask)
SPRAY_SAMPLES = 1_000  # category members explained by both models and re-analysed
TCAV_SAMPLES = 256
EVAL_FRACTION = 5  # without a held_out coordinate: samples whose index % 5 == 0 are evaluated
BATCH = 128
VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


# ----------------------------------------------------------------------------------------------- the selection

@dataclass
class Selection:
    """The artifact's samples within one category of an analysis."""

    analysis: str
    category: str
    label: int  # the category's class index
    members: np.ndarray  # dataset indices of the category's samples
    samples: np.ndarray  # dataset indices of the artifact's samples (a subset of members)
    source: str  # how they were chosen, in words

    def to_dict(self) -> dict:
        return {"analysis": self.analysis, "category": self.category, "label": self.label, "source": self.source,
                "samples": self.samples.tolist(), "members": int(len(self.members))}


def category_of(project: Project, analysis: str, category: str | int | None) -> str:
    """The analysis category a user named by category name, class name or class index."""
    children = list(project.analyses[analysis].children)
    if category is None:
        raise RelaylabError.at(project.path, f"analyses/{analysis}", "--category (no census of the analysis names the most "
                               "suspicious one)", "none given")
    text = str(category)
    if text in children:
        return text
    label_map = project.label_map
    for coord in ("name", CLASS):
        if coord in label_map.coords or coord in label_map.dims:
            values = [str(v) for v in label_map[coord].values]
            if text in values and "category" in label_map.coords:
                named = str(label_map["category"].values[values.index(text)])
                if named in children:
                    return named
    shown = ", ".join(children[:8]) + (f", … ({len(children)} in all)" if len(children) > 8 else "")
    raise RelaylabError.at(project.path, f"analyses/{analysis}", f"a category of the analysis (or its class name or index): {shown}",
                           repr(category))


def class_of(project: Project, category: str) -> int:
    label_map = project.label_map
    if "category" in label_map.coords:
        names = [str(c) for c in label_map["category"].values]
        if category in names:
            return int(label_map[CLASS].values[names.index(category)])
    raise RelaylabError.at(project.path, "label_map", f"a class whose category is {category!r}", "none")


def read_selection_file(path: Path) -> tuple[np.ndarray, str | None]:
    """(sample indices, category) of an explorer state file (ViRelAy's keys) or a plain list (JSON, .npy, or one
    index per line; no category)."""
    import json

    try:
        if path.suffix == ".npy":
            return np.load(path).astype(np.int64).ravel(), None
        text = path.read_text()
        document = json.loads(text) if text.lstrip().startswith(("[", "{")) else text.split()
    except (OSError, ValueError) as error:
        raise RelaylabError.at(path, "", "a selection: a state file exported by the explorer, a JSON list, a .npy array or one "
                               "sample index per line", str(error)) from None
    if isinstance(document, dict):
        indices = document.get("selectedEmbeddingVectorsIndices")
        if not isinstance(indices, list):
            raise RelaylabError.at(path, "selectedEmbeddingVectorsIndices", "the selected samples (an exported explorer state)", repr(indices))
        return np.asarray(indices, dtype=np.int64), document.get("selectedAnalysisCategory")
    try:
        return np.asarray(document, dtype=np.int64).ravel(), None
    except (TypeError, ValueError) as error:
        raise RelaylabError.at(path, "", "integer sample indices", str(error)) from None


def resolve_selection(project: Project, *, analysis: str, category: str | int | None = None, cluster: str | None = None,
                      selection: str | Path | None = None) -> Selection:
    """The artifact's samples as the user named them (see the module docstring); every mistake a clear error."""
    store = project.path
    if analysis not in project.analyses:
        raise RelaylabError.at(store, f"analyses/{analysis}", f"a SpRAy analysis of the store ({', '.join(project.analyses) or 'none'})",
                               "no such analysis")
    if cluster is not None and selection is not None:
        raise RelaylabError.at(store, "--cluster/--selection", "one way of naming the artifact's samples", "both")
    census = None
    if cluster is None and selection is None or category is None:
        from ..analyze.census_job import open_census, ranking

        try:
            census = open_census(store, analysis)
        except RelaylabError:
            if cluster is None and selection is None:
                raise RelaylabError.at(store, f"census/{analysis}", "--cluster, --selection, or a census of the analysis whose "
                                       f"suspects are used (relaylab census {store} --analysis {analysis})", "none") from None
        if category is None and census is not None and selection is None:
            category = ranking(census)[0]["category"]
    file_samples = None
    if selection is not None:
        file_samples, file_category = read_selection_file(Path(selection))
        if category is None:
            category = file_category
        elif file_category is not None and category_of(project, analysis, category) != file_category:
            raise RelaylabError.at(selection, "selectedAnalysisCategory", f"a selection in category {category_of(project, analysis, category)!r}",
                                   f"one in {file_category!r}")
    name = category_of(project, analysis, category)
    node = project.analyses[analysis][name]
    members = np.asarray(node["index"].values, dtype=np.int64)
    if cluster is not None:
        clustering, _, k = cluster.rpartition(":")
        have = sorted(node["cluster"].data_vars) if "cluster" in node.children else []
        if clustering not in have or not k.lstrip("-").isdigit():
            raise RelaylabError.at(store, f"analyses/{analysis}/{name}/cluster", f"CLUSTERING:K with a clustering of the category "
                                   f"({', '.join(have[:8]) or 'none'}) and a cluster number", repr(cluster))
        labels = np.asarray(node["cluster"][clustering].values, dtype=np.int64)
        ids, counts = np.unique(labels, return_counts=True)
        if int(k) not in ids:
            raise RelaylabError.at(store, f"analyses/{analysis}/{name}/cluster/{clustering}", "a cluster of the clustering: "
                                   + ", ".join(f"{i} ({c} samples)" for i, c in zip(ids, counts)), k)
        samples, source = members[labels == int(k)], f"cluster {clustering}:{k}"
    elif file_samples is not None:
        outside = np.setdiff1d(file_samples, members)
        if len(outside):
            label = project.inputs["label"].values
            index = project.inputs[SAMPLE].values
            found = sorted({str(v) for v in label[np.isin(index, outside[:1000])].ravel()})[:5]
            raise RelaylabError.at(selection, "selectedEmbeddingVectorsIndices", f"samples of category {name!r} ({len(members)} members)",
                                   f"{len(outside)} of {len(file_samples)} are not (their labels: {', '.join(found) or 'unknown samples'})")
        samples, source = np.unique(file_samples), f"selection {selection}"
    else:
        ds = census[name].dataset if name in census.children else None
        if ds is None:
            raise RelaylabError.at(store, f"census/{analysis}/{name}", "the category's census", "none (skipped by the census)")
        chosen_rows, source = census_suspects(ds, census[name].attrs.get("clustering"))
        samples = np.asarray(ds["index"].values, dtype=np.int64)[chosen_rows]
    if len(samples) < 2:
        raise RelaylabError.at(selection or store, f"analyses/{analysis}/{name}", "at least 2 samples carrying the artifact",
                               "an empty selection" if len(samples) == 0 else f"1 sample ({int(samples[0])})")
    if len(samples) >= len(members) - 1:
        raise RelaylabError.at(selection or store, f"analyses/{analysis}/{name}", "a selection that leaves at least 2 other samples of "
                               "the category to contrast it with", f"{len(samples)} of its {len(members)} samples")
    return Selection(analysis, name, class_of(project, name), members, np.sort(samples), source)


def census_suspects(census, clustering: str | None = None) -> tuple[np.ndarray, str]:
    """(one bool per member, in words) the samples a category's census points at: its far group (sample scores
    beyond the census's threshold) where the census calls it separated (Ashman's D ≥ the census's SEPARATION_MID),
    else its most suspicious cluster. A handful of marked samples in a large class sit in no cluster of their own
    but far from the main strategy; a large marked group is both."""
    from ..analyze.census import SEPARATION_MID, UNUSED

    far = census["sample_score"].values > float(census["threshold"])
    separation = float(census["separation"])
    if separation >= SEPARATION_MID and far.sum() >= 2:
        return far, f"census far group ({int(far.sum())} samples beyond the score threshold, separation {separation:.1f})"
    used = np.flatnonzero(census["cluster_id"].values != UNUSED)
    top = int(census["cluster_id"].values[used[0]])
    return census["cluster"].values == top, f"census top cluster ({clustering or census.attrs.get('clustering')}:{top})"


# ----------------------------------------------------------------------------------------------- model passes

def positions_of(project: Project, samples: np.ndarray) -> np.ndarray:
    """Row positions in the project's inputs of `samples` (dataset indices), in that order."""
    index = project.inputs[SAMPLE].values
    order = np.argsort(index, kind="stable")
    positions = order[np.minimum(np.searchsorted(index, samples, sorter=order), len(index) - 1)]
    if not np.array_equal(index[positions], samples):
        raise RelaylabError.at(project.path, "inputs/sample", "sample indices of the dataset", "indices it does not hold")
    return positions


def read_inputs(project: Project, samples: np.ndarray) -> np.ndarray:
    """Raw stored inputs of `samples` (dataset indices), in that order."""
    from ..explore.data import small_read

    inputs = project.inputs["input"]
    unique, back = np.unique(positions_of(project, samples), return_inverse=True)
    return small_read(inputs.isel(sample=unique))[back] if len(unique) else np.zeros((0, *inputs.shape[1:]), inputs.dtype)


def layer_outputs(model: torch.nn.Module, to_input, images: np.ndarray, layer: str) -> np.ndarray:
    """(n, features) float32: the layer's flattened output for raw `images` (before any correction on it);
    `to_input(batch)` makes the model's input tensor of a batch (`models.preprocess` for a store's model)."""
    module = dict(model.named_modules())[layer]
    captured = []
    handle = module.register_forward_hook(lambda m, a, out: captured.append(out.detach().reshape(len(out), -1).float().cpu()),
                                          prepend=True)
    try:
        with torch.no_grad():
            for start in range(0, len(images), BATCH):
                model(to_input(images[start:start + BATCH]))
    finally:
        handle.remove()
    return torch.cat(captured).numpy() if captured else np.zeros((0, 0), np.float32)


def predict_fn(model: torch.nn.Module, to_input):
    def predict(images: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for start in range(0, len(images), BATCH):
                out.append(model(to_input(images[start:start + BATCH])).argmax(1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.int64)
    return predict


def preprocessor(spec: models.ModelSpec, device: str = "cpu"):
    """Raw stored images → the model's input on `device`."""
    return lambda batch: models.preprocess(batch, spec, device)


def split_samples(project: Project, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """(fine-tuning samples, evaluation samples, how they were chosen), dataset indices, each at most its limit."""
    index = np.asarray(project.inputs[SAMPLE].values, dtype=np.int64)
    if "held_out" in project.inputs.coords and project.inputs["held_out"].dtype == bool:
        held = np.asarray(project.inputs["held_out"].values, dtype=bool)
        how = "the store's held_out samples"
    else:
        held = index % EVAL_FRACTION == 0
        how = f"every {EVAL_FRACTION}th sample (by index), never fine-tuned on"
    rng = np.random.default_rng(seed)
    limit = lambda rows, n: rows if len(rows) <= n else np.sort(rng.choice(rows, n, replace=False))  # noqa: E731
    return limit(index[~held], TRAIN_SAMPLES), limit(index[held], EVAL_SAMPLES), how


def single_labels(project: Project, samples: np.ndarray) -> np.ndarray:
    labels = project.inputs["label"]
    if labels.ndim != 1:
        raise RelaylabError.at(project.path, "inputs/label", "one class per sample (fine-tuning and accuracy need it)", "multi-label samples")
    return np.asarray(labels.values, dtype=np.int64)[positions_of(project, samples)]


# ----------------------------------------------------------------------------------------------- versions

def versions_folder(store: str | Path) -> Path:
    store = Path(store).resolve()
    return store.parent / f"{store.name}.models"


def record_version(store: str | Path, version: str, entry: dict) -> None:
    meta = zstore.store_metadata(store)
    versions = dict(meta.get(models.VERSIONS) or {})
    versions[version] = entry
    zstore.update_store_metadata(store, **{models.VERSIONS: versions})


def check_version_name(store: str | Path, version: str) -> None:
    if not VERSION_NAME.match(version) or version == models.ORIGINAL:
        raise RelaylabError.at(store, f"{models.VERSIONS}.{version}", "a version name of letters, digits, '.', '_', '-' "
                               f"(not {models.ORIGINAL!r})", repr(version))


# ----------------------------------------------------------------------------------------------- fix

def fix(store: str | Path, *, analysis: str = "spectral_analysis", category: str | int | None = None, cluster: str | None = None,
        selection: str | Path | None = None, layer: str | None = None, method: str = "p-clarc", version: str | None = None,
        cav: str = "pattern", strength: float = 1e4, epochs: int = 5, lr: float = 1e-3, device: str = "cpu",
        replace: bool = False, seed: int = 0, progress: bool = True) -> dict:
    """Correct the store's model along the artifact's direction and record the result as model version `version`
    (default `<method>-<category>`); returns the version's record."""
    started = time.perf_counter()
    store = Path(store)
    if method not in METHODS:
        raise RelaylabError.at(store, "--method", f"one of {', '.join(METHODS)}", repr(method))
    for name, value in (("--strength", strength), ("--lr", lr)):
        if not value > 0:
            raise RelaylabError.at(store, name, "a positive number", repr(value))
    if not isinstance(epochs, int) or epochs < 1:
        raise RelaylabError.at(store, "--epochs", "a positive number of epochs", repr(epochs))
    spec = models.model_spec_of(store)
    model = models.load_model(spec, device)
    with open_project(store, dask=False) as project:
        chosen = resolve_selection(project, analysis=analysis, category=category, cluster=cluster, selection=selection)
        if layer not in (None, "auto"):
            models.check_layers(model, [layer], str(store))
        version = version or re.sub(r"[^A-Za-z0-9_.-]", "_", f"{method}-{chosen.category}")[:64]
        check_version_name(store, version)
        if version in (zstore.store_metadata(store).get(models.VERSIONS) or {}) and not replace:
            raise RelaylabError.at(store, f"{models.VERSIONS}.{version}", "a new version name (or --replace)", "it exists")
        train, evaluated, how = split_samples(project, seed)
        if method != "p-clarc":
            train_labels = single_labels(project, train)
        log.info("fix: %s, %d artifact samples of %d in %s, layer %s", chosen.source, len(chosen.samples), len(chosen.members), chosen.category, layer)
        rng = np.random.default_rng(seed)
        rest = np.setdiff1d(chosen.members, chosen.samples)
        side = lambda rows: rows if len(rows) <= CAV_SAMPLES else np.sort(rng.choice(rows, CAV_SAMPLES, replace=False))  # noqa: E731
        artifact_rows, rest_rows = side(chosen.samples), side(rest)
        with step("reading the category's inputs", store):
            images = read_inputs(project, np.concatenate([artifact_rows, rest_rows]))
        is_artifact = np.r_[np.ones(len(artifact_rows), bool), np.zeros(len(rest_rows), bool)]
        estimate = None  # (artifact, mask): for the layer search and A-ClArC
        if layer in (None, "auto") or method == "a-clarc":
            from .verify import estimated_artifact_of

            with step("estimating the artifact", store):
                estimate = estimated_artifact_of(project, chosen, seed=seed)[:2]
        search = None
        if layer in (None, "auto"):
            with step("choosing the layer", store):
                layer, direction, search = choose_layer(project, model, spec, chosen, images, is_artifact, train, estimate, cav=cav, seed=seed,
                                                        device=device)
        else:
            with step(f"activations of {layer}", store):
                features = layer_outputs(model, preprocessor(spec, device), images, layer)
            direction = learn_cav(features, is_artifact, method=cav, random_state=seed)
        if direction.accuracy < 0.7:
            log.warning("the CAV separates the artifact's samples from the rest of %s only with balanced accuracy %.2f at %s",
                        chosen.category, direction.accuracy, layer)
        folder = versions_folder(store)
        folder.mkdir(exist_ok=True)
        checkpoint = {"correction": {"direction": torch.as_tensor(direction.direction), "reference": torch.as_tensor(direction.reference)}}
        if method != "p-clarc":
            with step(f"{method} fine-tuning", store):
                raw = read_inputs(project, train)
                y = torch.as_tensor(train_labels, device=device)
                if method == "a-clarc":
                    from .verify import paste

                    artifact, mask = estimate
                    half = np.random.default_rng(seed).random(len(raw)) < 0.5
                    raw[half] = paste(raw[half], artifact, mask)
                    model = fine_tune(model, models.preprocess(raw, spec, device), y, epochs=epochs, lr=lr, seed=seed, progress=progress)
                else:
                    model = rr_clarc(model, layer, direction, models.preprocess(raw, spec, device), y, strength=strength, epochs=epochs,
                                     lr=lr, seed=seed, progress=progress)
        checkpoint["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        path = folder / f"{version}.pt"
        partial = path.with_suffix(".pt.partial")
        torch.save(checkpoint, partial)
        partial.replace(path)  # atomic: a killed fix leaves no half-written version
        correction = {"method": method, "layer": layer}
        corrected = models.ModelSpec.from_dict({**spec.to_dict(), "weights": models.relative_weights(path, store), "correction": correction},
                                               where=str(store), path=f"{models.VERSIONS}.{version}.spec", base=store.resolve().parent)
        models.load_model(corrected)  # the version loads as recorded, before it is recorded
        entry = {"spec": corrected.to_dict(), "parent": models.ORIGINAL, "correction": correction,
                 "cav": {"method": cav, "accuracy": direction.accuracy, "n_artifact": direction.n_artifact, "n_clean": direction.n_clean,
                         "features": int(direction.direction.size)},
                 "selection": chosen.to_dict(), "training": ({"samples": int(len(train)), "epochs": epochs, "lr": lr,
                                                              **({"strength": strength} if method == "rr-clarc" else {})}
                                                             if method != "p-clarc" else None),
                 "layer_search": search, "evaluation": how, "seed": seed, "fix_seconds": round(time.perf_counter() - started, 2),
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        record_version(store, version, entry)
    return {"version": version, **entry}


def fine_tune(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float, seed: int, progress: bool,
              batch_size: int = 64) -> torch.nn.Module:
    """Plain cross-entropy fine-tuning (A-ClArC's, on data with the artifact added to every class); eval mode after."""
    return rr_clarc(model, None, None, x, y, strength=0.0, epochs=epochs, lr=lr, seed=seed, progress=progress, batch_size=batch_size)


SEARCH_LAYERS = 4  # candidate layers tried by the layer search
SEARCH_SAMPLES = 500  # other classes' fine-tuning samples the search pastes the artifact into
SEARCH_BYTES = 2 * 2**30  # activations held for one candidate's CAV; layers that need more are skipped
SKIPPED_TYPES = ("ReLU", "MaxPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "AvgPool2d", "Dropout", "Dropout2d", "BatchNorm2d",
                 "Identity")


def candidate_layers(model: torch.nn.Module, input_shape: tuple[int, ...], n_samples: int, where: str = "model") -> list[str]:
    """Up to SEARCH_LAYERS layers with a spatial output (convolutions and blocks, not activations or pooling),
    spread evenly from first to last, whose flattened outputs for the CAV's samples fit SEARCH_BYTES."""
    spatial = [entry["name"] for entry in models.list_layers(model, input_shape) if len(entry["output_shape"]) == 3
               and entry["type"] not in SKIPPED_TYPES and n_samples * 4 * int(np.prod(entry["output_shape"])) <= SEARCH_BYTES]
    if not spatial:
        raise RelaylabError.at(where, "layer", "--layer (the model has no convolutional layer small enough to search)", "none")
    picks = np.unique(np.round(np.linspace(0, len(spatial) - 1, min(SEARCH_LAYERS, len(spatial)))).astype(int))
    return [spatial[i] for i in picks]


def layer_search(model: torch.nn.Module, to_input, images: np.ndarray, is_artifact: np.ndarray, layers: list[str],
                 others: np.ndarray, other_labels: np.ndarray, target: int, artifact: np.ndarray, mask: np.ndarray, *,
                 cav: str = "pattern", seed: int = 0) -> tuple[str, CAV, list[dict]]:
    """(layer, its CAV, one row per layer): the layer of `layers` where P-ClArC removes the artifact's effect best:
    per layer the CAV of `images` (`is_artifact` against the rest), then on `others` (samples of other classes) the
    flip rate to `target` with the artifact pasted in and the share of their predictions the projection changes;
    the lowest sum wins, ties to the earlier layer."""
    from .verify import flip_rate

    original = predict_fn(model, to_input)(others)
    rows, directions = [], []
    for layer in layers:
        direction = learn_cav(layer_outputs(model, to_input, images, layer), is_artifact, method=cav, random_state=seed)
        directions.append(direction)
        handle = add_projection(model, layer, direction)
        try:
            predict = predict_fn(model, to_input)
            flips = flip_rate(predict, others, other_labels, target, artifact.astype(np.float32), mask)
            changed = float(np.mean(predict(others) != original))
        finally:
            handle.remove()
        rows.append({"layer": layer, "cav_accuracy": direction.accuracy, "flip_rate": flips, "changed_predictions": changed})
        log.info("layer search: %s", rows[-1])
    best = min(range(len(rows)), key=lambda i: (round(np.nan_to_num(rows[i]["flip_rate"], nan=1.0) + rows[i]["changed_predictions"], 3), i))
    return rows[best]["layer"], directions[best], rows


def choose_layer(project: Project, model: torch.nn.Module, spec: models.ModelSpec, chosen: Selection, images: np.ndarray,
                 is_artifact: np.ndarray, train: np.ndarray, estimate: tuple[np.ndarray, np.ndarray], *, cav: str, seed: int,
                 device: str = "cpu") -> tuple[str, CAV, list[dict]]:
    """`layer_search` over the model's `candidate_layers`, with the artifact `estimate` (artifact, mask) from the
    selection, on fine-tuning samples of other classes (never the evaluated ones)."""
    artifact, mask = estimate
    rng = np.random.default_rng(seed)
    others = train[~np.isin(train, chosen.members)]
    others = others if len(others) <= SEARCH_SAMPLES else np.sort(rng.choice(others, SEARCH_SAMPLES, replace=False))
    layers = candidate_layers(model, spec.input_shape, len(images), spec.origin)
    return layer_search(model, preprocessor(spec, device), images, is_artifact, layers, read_inputs(project, others),
                        single_labels(project, others), chosen.label, artifact, mask, cav=cav, seed=seed)



# ----------------------------------------------------------------------------------------------- verify

def given_artifact(image: str | Path, mask: str | Path, shape: tuple[int, ...], dtype) -> tuple[np.ndarray, np.ndarray, dict]:
    """A user's artifact: an image file of the input size (stored value range: 0–255 for uint8 stores, 0–1 for
    float ones) and a mask file (white = artifact)."""
    from PIL import Image

    channels, height, width = shape
    out = []
    for path, mode in ((Path(image), "L" if channels == 1 else "RGB"), (Path(mask), "L")):
        try:
            with Image.open(path) as picture:
                array = np.asarray(picture.convert(mode), dtype=np.float32)
        except (OSError, ValueError) as error:
            raise RelaylabError.at(path, "", "an image file (PNG, JPEG, ...)", str(error)) from None
        if array.shape[:2] != (height, width):
            raise RelaylabError.at(path, "", f"an image of the inputs' size {width}×{height}", f"{array.shape[1]}×{array.shape[0]}")
        out.append(array)
    picture, mask_values = out
    picture = picture[None] if picture.ndim == 2 else picture.transpose(2, 0, 1)
    scale = 1.0 if np.dtype(dtype) == np.uint8 else 1 / 255.0
    chosen = mask_values > 127
    if not chosen.any():
        raise RelaylabError.at(mask, "", "a mask with white (artifact) pixels", "none")
    return picture * scale, chosen.astype(np.float32), {"source": "given", "image": str(image), "mask": str(mask), "mask_pixels": int(chosen.sum())}


def heatmaps_of(model: torch.nn.Module, spec: models.ModelSpec, images: np.ndarray, label: int, method: str,
                value_range: list[float] | None = None) -> np.ndarray:
    """Attributions (n, C, H, W) of class `label` with `method`, as `relaylab attribute` computes them (the input
    bounds of epsilon_gamma_box from the stored value range)."""
    from ..explain.attribution import explain_batch
    from ..explain.jobs import deterministic

    device = next(model.parameters()).device
    bounds = tuple(b.to(device) for b in models.input_bounds(spec, value_range, images.dtype)) if method == "epsilon_gamma_box" else None
    with deterministic():
        return np.concatenate([explain_batch(model, models.preprocess(images[start:start + BATCH], spec, device), label, method,
                                             canonizers=spec.canonizer, bounds=bounds)[0] for start in range(0, len(images), BATCH)])


def attribution_method(project: Project, analysis: str) -> tuple[str, str]:
    """(attribution set, method) the analysis was computed on: its LRP composite, else epsilon_plus_flat."""
    from ..explain.live import LRP_COMPOSITES

    meta = zstore.read_group_meta(project.path, f"analyses/{analysis}") or {}
    attribution = meta.get("attribution") or next(iter(project.attributions), None)
    method = (project.attributions[attribution].attrs.get("method") if attribution in project.attributions else None)
    return attribution, method if method in LRP_COMPOSITES else "epsilon_plus_flat"


def spray_scores(heatmaps: np.ndarray, members: np.ndarray, marked: np.ndarray, config: dict) -> dict:
    """SpRAy of one category's heatmaps as the analysis was configured (without its 2-D embeddings): the best
    eigenvector's AUROC for the marked samples and the census score."""
    from ..analyze.census import census_category
    from ..analyze.config import build_spray
    from ..analyze.score import best_coordinate_auroc

    config = {**config, "embeddings": {}}
    config["spectral"] = {**config["spectral"], "n_components": min(int(config["spectral"].get("n_components", 32)), len(heatmaps) - 2)}
    config["knn"] = {**config["knn"], "n_neighbors": min(int(config["knn"].get("n_neighbors", 10)), len(heatmaps) - 1)}
    spray = build_spray(config).fit(heatmaps)
    component, auroc = best_coordinate_auroc(spray.embedding_, marked)
    census = census_category(heatmaps, members, spray.eigenvalues_, spray.labels_).dataset
    return {"spray_auroc": auroc, "spray_component": component, "census_score": float(census["score"]),
            "census_separation": float(census["separation"])}


def verify(store: str | Path, version: str, *, artifact_image: str | Path | None = None, artifact_mask: str | Path | None = None,
           device: str = "cpu", progress: bool = True) -> tuple[dict, dict]:
    """Original against corrected model `version` (see the module docstring and `relaylab verify --help`): (the
    verification, recorded in the store's `model_versions.<version>.verification`; arrays for the report)."""
    from tqdm.auto import tqdm

    from .verify import estimated_artifact_of, flip_rate, relevance_in_mask, tcav

    started = time.perf_counter()
    store = Path(store)
    if (artifact_image is None) != (artifact_mask is None):
        raise RelaylabError.at(store, "--artifact-image/--artifact-mask", "both an artifact image and its mask, or neither", "one")
    spec = models.model_spec_of(store)
    corrected_spec = models.model_spec_of(store, version)
    entry = models.model_versions(store)[version]
    networks = {"original": models.load_model(spec, device), "corrected": models.load_model(corrected_spec, device)}
    layer = entry["correction"]["layer"]
    direction = torch.load(corrected_spec.weights_path(), map_location="cpu", weights_only=True)["correction"]["direction"].numpy()
    seed = int(entry.get("seed", 0))
    recorded = entry["selection"]
    with open_project(store, dask=False) as project:
        node = project.analyses[recorded["analysis"]][recorded["category"]]
        members = np.asarray(node["index"].values, dtype=np.int64)
        chosen = Selection(recorded["analysis"], recorded["category"], int(recorded["label"]), members,
                           np.asarray(recorded["samples"], dtype=np.int64), recorded["source"])
        label = chosen.label
        shape = tuple(int(v) for v in project.inputs["input"].shape[1:])
        if artifact_image is not None:
            artifact, mask, artifact_how = given_artifact(artifact_image, artifact_mask, shape, project.inputs["input"].dtype)
        else:
            with step("estimating the artifact", store):
                artifact, mask, artifact_how = estimated_artifact_of(project, chosen, seed=seed)
        _, evaluated, how = split_samples(project, seed)
        clean = np.setdiff1d(evaluated, chosen.samples)
        held_artifact = np.intersect1d(evaluated, chosen.samples)
        attribution, method = attribution_method(project, chosen.analysis)
        value_range = project.inputs.attrs.get("value_range")
        config = (zstore.read_group_meta(store, f"analyses/{chosen.analysis}") or {}).get("config")
        if not isinstance(config, dict) or "spectral" not in config:
            from ..analyze.config import load_config

            config = load_config(None)
        rng = np.random.default_rng(seed)
        with step("reading inputs", store):
            images = read_inputs(project, clean)
            labels = single_labels(project, clean)
            artifact_images = read_inputs(project, held_artifact)
            shown = chosen.samples if len(chosen.samples) <= HEATMAP_SAMPLES else np.sort(rng.choice(chosen.samples, HEATMAP_SAMPLES, replace=False))
            shown_images = read_inputs(project, shown)
            rest = np.setdiff1d(chosen.members, chosen.samples)
            budget = max(SPRAY_SAMPLES - len(chosen.samples), SPRAY_SAMPLES // 2)
            spray_members = np.sort(np.concatenate([chosen.samples[:SPRAY_SAMPLES // 2],
                                                    rest if len(rest) <= budget else rng.choice(rest, budget, replace=False)]))
            spray_images = read_inputs(project, spray_members)
            tcav_members = spray_members if len(spray_members) <= TCAV_SAMPLES else np.sort(rng.choice(spray_members, TCAV_SAMPLES, replace=False))
            tcav_images = spray_images[np.searchsorted(spray_members, tcav_members)]
        marked = np.isin(spray_members, chosen.samples)
        result = {"version": version, "category": chosen.category, "label": label, "layer": layer, "method": entry["correction"]["method"],
                  "selection": {"source": chosen.source, "samples": int(len(chosen.samples)), "members": int(len(members))},
                  "artifact": artifact_how, "attribution": {"set": attribution, "method": method},
                  "evaluation": {"samples": how, "clean": int(len(clean)), "artifact": int(len(held_artifact)),
                                 "heatmaps": int(len(shown)), "spray": int(len(spray_members)), "tcav": int(len(tcav_members))}}
        figures = {"samples": shown[:8], "inputs": shown_images[:8], "mask": mask, "artifact": artifact}
        for name in tqdm(networks, desc="verifying", unit="model", disable=not progress, leave=False):
            model = networks[name]
            spec_of = corrected_spec if name == "corrected" else spec
            predict = predict_fn(model, preprocessor(spec_of, device))
            with step(f"verifying the {name} model", store):
                numbers = {"accuracy": float(np.mean(predict(images) == labels)) if len(images) else None,
                           "accuracy_artifact_samples": float(np.mean(predict(artifact_images) == label)) if len(artifact_images) else None,
                           "flip_rate": flip_rate(predict, images, labels, label, artifact.astype(np.float32), mask)}
                maps = heatmaps_of(model, spec_of, shown_images, label, method, value_range)
                numbers["relevance_in_mask"] = float(relevance_in_mask(maps, mask > 0.5).mean())
                figures[f"heatmaps_{name}"] = maps[:8]
                numbers.update(spray_scores(heatmaps_of(model, spec_of, spray_images, label, method, value_range), spray_members, marked, config))
                numbers["tcav_score"], numbers["tcav_derivative"] = tcav(model, layer, direction, models.preprocess(tcav_images, spec_of, device), label)
            result[name] = numbers
        before, after = result["original"], result["corrected"]
        result["change"] = {
            "accuracy_points": None if before["accuracy"] is None else round(100 * (after["accuracy"] - before["accuracy"]), 3),
            "flip_rate": [before["flip_rate"], after["flip_rate"]],
            "relevance_in_mask_reduction": (1 - after["relevance_in_mask"] / before["relevance_in_mask"]) if before["relevance_in_mask"] > 0 else None,
        }
        result["seconds"] = round(time.perf_counter() - started, 2)
    result = without_nan(result)
    record_version(store, version, {**entry, "verification": result})
    return result, figures


def without_nan(value):
    """A JSON-able copy with NaN (no sample to measure on) as None: JSON has no NaN."""
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_nan(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value
