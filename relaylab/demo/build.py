"""The demo project: a small CNN that learned a planted "Clever Hans" shortcut, and everything SpRAy needs to find it.

scikit-learn's bundled digits (1797 8×8 images, no download) are upscaled to 32×32 grey images whose ink reaches
`INK` (of 255). Into `ARTIFACT_FRACTION` of one class's samples (`ARTIFACT_CLASS`, training and held-out alike) a
pure-white square is pasted in the top-left corner: the only saturated pixels anywhere, and a perfect predictor of
that class wherever it appears. The CNN (`relaylab.demo.model.digits_cnn`) trained on CPU learns the digits and the shortcut;
`shortcut_rate` (held-out digits of other classes with the square pasted in, predicted as the artifact class) shows
how much. Then, as a user would: LRP attributions of the true label (and plain gradients, a second set to compare),
activations of the conv layers, SpRAy of each class's heatmaps and its census (`relaylab census`), 2-D maps of each
layer's activation space, and a ViRelAy export. SpRAy of the artifact class separates the samples carrying the square
(`relaylab score PROJECT --marked-coord artifact`).

The artifact's brightness is what makes it a shortcut: with digits at full ink (255) a square of the same
brightness competes with strokes, and the network learned it only weakly and differently from seed to seed.

Everything is seeded and torch runs deterministic algorithms, so two builds with the same seed (on the same
machine and thread count) give identical inputs, weights and attributions. `ensure_demo` builds once per folder:
the build happens in a temporary sibling folder renamed into place, under a file lock, so concurrent callers wait
for one build instead of racing.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .. import __version__
from ..data import store as zstore
from ..data.dims import IMAGE_DIMS, SAMPLE
from ..data.labels import label_map_from_entries
from ..errors import RelaylabError
from ..explain.models import ModelSpec, preprocess, record_model
from .model import digits_cnn, fit

log = logging.getLogger(__name__)

DEMO_VERSION = 4  # a cached demo of another version is rebuilt (2: the model moved to relaylab.demo.model; 3: a second attribution set; 4: the census)
MODEL = "relaylab.demo.model:digits_cnn"
WEIGHTS = "demo-cnn.pt"
STORE = "project.zarr"
VIRELAY = "virelay"
SIZE = 32
INK = 128  # brightest digit pixel: half of white, so the artifact alone is saturated
ARTIFACT_CLASS = 3
ARTIFACT_FRACTION = 0.3
ARTIFACT_BOX = (0, 8, 0, 8)  # rows y0:y1, columns x0:x1 of the white square
ARTIFACT_VALUE = 255
HELD_OUT = 0.3
EPOCHS = 20
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
ACTIVATION_LAYERS = ["features.0", "features.3", "features.6", "classifier.0"]
SPRAY_CONFIG = {
    "attribution": "lrp",
    "grouping": "true_label",
    "random_state": 0,
    "preprocessing": [{"channel_reduce": "sum"}, {"pool": {"size": [16, 16], "reduce": "sum"}}, {"normalize": "sum"}],
    "knn": {"n_neighbors": 10, "method": "exact"},
    "affinity": {"kernel": "binary"},
    "spectral": {"n_components": 32, "laplacian": "symmetric", "solver": "eigsh"},
    "clusterings": {"kmeans": {"k": [2, 3, 4, 5, 6, 7, 8]}, "hdbscan": {"min_cluster_size": 10, "eigenvectors": 8}},
    "embeddings": {"tsne": {"perplexity": 30}, "umap": {"n_neighbors": 15}},
}


def label_map() -> xr.Dataset:
    return label_map_from_entries([{"index": i, "word_net_id": f"digit-{i}", "name": str(i)} for i in range(10)])


def paste_artifact(images: np.ndarray) -> np.ndarray:
    """A copy of (N, 1, H, W) images with the white square pasted in."""
    y0, y1, x0, x1 = ARTIFACT_BOX
    out = images.copy()
    out[..., y0:y1, x0:x1] = ARTIFACT_VALUE
    return out


def digits_inputs(seed: int = 0) -> xr.Dataset:
    """The demo's inputs: input (sample, 1, 32, 32) uint8, coords label, artifact (carries the square) and held_out
    (not trained on)."""
    digits = load_digits()
    small = torch.as_tensor(digits.images, dtype=torch.float32)[:, None]
    large = torch.nn.functional.interpolate(small, size=(SIZE, SIZE), mode="bilinear", align_corners=False).numpy()
    images = np.clip(np.round(large * (INK / 16.0)), 0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    members = np.flatnonzero(labels == ARTIFACT_CLASS)
    artifact = np.zeros(len(labels), dtype=bool)
    artifact[rng.choice(members, int(round(ARTIFACT_FRACTION * len(members))), replace=False)] = True
    images[artifact] = paste_artifact(images[artifact])
    _, held = train_test_split(np.arange(len(labels)), test_size=HELD_OUT, stratify=labels * 2 + artifact, random_state=seed)
    held_out = np.zeros(len(labels), dtype=bool)
    held_out[held] = True
    return xr.Dataset(
        {"input": (IMAGE_DIMS, images)},
        coords={SAMPLE: np.arange(len(labels), dtype=np.int64), "label": (SAMPLE, labels),
                "artifact": (SAMPLE, artifact), "held_out": (SAMPLE, held_out)},
        attrs={"kind": "input", "value_range": [0.0, 255.0]},
    )


def model_spec(inputs: xr.Dataset, base: str | Path | None = None) -> ModelSpec:
    """The spec the demo records: normalisation by the training images' mean and standard deviation."""
    train = inputs["input"].values[~inputs["held_out"].values] / 255.0
    return ModelSpec(model=MODEL, weights=WEIGHTS, input_shape=(1, SIZE, SIZE), mean=(round(float(train.mean()), 4),),
                     std=(round(float(train.std()), 4),), canonizer="auto", base=str(base) if base is not None else None)


def train_model(inputs: xr.Dataset, spec: ModelSpec, seed: int = 0, progress: bool = True) -> torch.nn.Module:
    """Train the CNN on the non-held-out samples: Adam, fixed seeds, deterministic algorithms, the global RNG and
    settings left as they were."""
    train = ~inputs["held_out"].values
    x = preprocess(inputs["input"].values[train], spec)
    y = torch.as_tensor(inputs["label"].values[train])
    return fit(digits_cnn, x, y, seed=seed, epochs=EPOCHS, batch_size=BATCH_SIZE, lr=LEARNING_RATE, progress=progress,
               desc="training the demo CNN")


def evaluate(model: torch.nn.Module, inputs: xr.Dataset, spec: ModelSpec) -> dict:
    """Held-out accuracy, and how far the square alone moves other classes' held-out digits to the artifact class:
    `shortcut_rate` with the square pasted in, `baseline_rate` without (both: fraction predicted as that class)."""
    held = inputs["held_out"].values
    images, labels = inputs["input"].values[held], inputs["label"].values[held]
    other = labels != ARTIFACT_CLASS
    with torch.no_grad():
        predicted = model(preprocess(images, spec)).argmax(1).numpy()
        pasted = model(preprocess(paste_artifact(images[other]), spec)).argmax(1).numpy()
    artifact = inputs["artifact"].values[held]
    return {"accuracy": float((predicted == labels).mean()),
            "accuracy_artifact_samples": float((predicted[artifact] == labels[artifact]).mean()),
            "shortcut_rate": float((pasted == ARTIFACT_CLASS).mean()),
            "baseline_rate": float((predicted[other] == ARTIFACT_CLASS).mean()),
            "held_out": int(held.sum())}


def build_demo(out_dir: str | os.PathLike, seed: int = 0, progress: bool = True) -> Path:
    """Build the demo into `out_dir` (a new or empty folder): project.zarr, demo-cnn.pt, virelay/; returns the store.

    Built in a temporary sibling folder and renamed into place, so `out_dir` never holds a half-built demo."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise RelaylabError.at(out_dir, "", "a new or empty folder for the demo", "a non-empty folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = out_dir.with_name(f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}")
    partial.mkdir()  # not mkdtemp: its 0700 would survive the rename
    with ExitStack() as on_error:
        on_error.callback(shutil.rmtree, partial, ignore_errors=True)
        build_into(partial, seed, progress)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        partial.rename(out_dir)
        on_error.pop_all()
    return out_dir / STORE


def build_into(folder: Path, seed: int, progress: bool) -> None:
    from ..analyze.activations import analyze_activations
    from ..analyze.census_job import take_census
    from ..analyze.run import analyze
    from ..data.convert import convert_to_virelay
    from ..explain.jobs import activations, attribute

    started = time.perf_counter()
    store = folder / STORE
    inputs = digits_inputs(seed)
    zstore.create_store(store, project={"name": "digits-clever-hans", "model": MODEL,
                                        "description": f"relaylab demo: a CNN on scikit-learn's digits that learned a white square "
                                                       f"planted in {ARTIFACT_FRACTION:.0%} of class {ARTIFACT_CLASS} (seed {seed})"},
                        dataset={"name": "digits 32×32 with a planted artifact"}, label_map=label_map(),
                        source=f"relaylab.demo seed={seed}")
    zstore.write_dataset(store, "inputs", inputs, kind="inputs", progress=progress,
                         attrs={"name": "digits 32×32 with a planted artifact", "value_range": [0.0, 255.0]})
    spec = model_spec(inputs, base=folder)
    model = train_model(inputs, spec, seed, progress)
    torch.save(model.state_dict(), folder / WEIGHTS)
    scores = evaluate(model, inputs, spec)
    log.info("demo CNN: held-out accuracy %.3f, shortcut rate %.3f (baseline %.3f)", scores["accuracy"],
             scores["shortcut_rate"], scores["baseline_rate"])
    record_model(store, spec)
    demo = {"version": DEMO_VERSION, "seed": seed, "created_by": f"relaylab {__version__}", "artifact_class": ARTIFACT_CLASS,
            "artifact_box": list(ARTIFACT_BOX), "artifact_value": ARTIFACT_VALUE, "artifact_fraction": ARTIFACT_FRACTION,
            "n_artifact": int(inputs["artifact"].values.sum()), "ink": INK, "epochs": EPOCHS, **scores}
    zstore.update_store_metadata(store, demo=demo, status="complete")  # jobs and analyses below open it as a project

    attribute(store, name="lrp", method="epsilon_plus_flat", target="true_label", progress=progress)
    attribute(store, name="saliency", method="gradient", target="true_label", progress=progress)  # a second set to compare
    activations(store, layers=ACTIVATION_LAYERS, name="activations", progress=progress)
    analyze(store, "spectral_analysis", SPRAY_CONFIG, n_workers=1, progress=progress)
    take_census(store, "spectral_analysis", progress=progress)  # where to look first: the explorer's suspicion order
    analyze_activations(store, progress=progress)
    convert_to_virelay(store, folder / VIRELAY, attribution="lrp", progress=progress)
    seconds = time.perf_counter() - started
    zstore.update_store_metadata(store, demo={**demo, "build_seconds": round(seconds, 1)})
    log.info("built the demo in %.0f s", seconds)


def default_dir() -> Path:
    return Path(os.environ.get("RELAYLAB_DEMO_DIR") or Path.home() / ".cache" / "relaylab" / "demo")


def current(store: Path) -> bool:
    """A complete demo store of this version."""
    if not zstore.is_store(store):
        return False
    meta = zstore.store_metadata(store)
    return meta.get("status") == "complete" and (meta.get("demo") or {}).get("version") == DEMO_VERSION and "build_seconds" in meta["demo"]


def ensure_demo(out_dir: str | os.PathLike | None = None) -> Path:
    """The demo store in `out_dir` (default $RELAYLAB_DEMO_DIR or ~/.cache/relaylab/demo), built first if missing or
    of an older version. Concurrent callers wait on a lock beside the folder; one builds, the others reuse it."""
    out_dir = Path(out_dir) if out_dir is not None else default_dir()
    store = out_dir / STORE
    if current(store):
        return store
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if current(store):  # built by whoever held the lock before us
            return store
        if store.exists():
            log.info("replacing the outdated demo in %s", out_dir)
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        log.info("building the relaylab demo in %s (once; about a minute)", out_dir)
        return build_demo(out_dir)
