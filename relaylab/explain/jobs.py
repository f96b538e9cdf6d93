"""Dataset-wide jobs: attributions and pooled activations of every sample, written into the project's store.

Both jobs check everything first (model spec, method, target class, layer names, device, scheduler) and write
nothing when something is wrong. They work in the store's write blocks: each block's completion is recorded, so a
killed job re-run with the same arguments resumes after the last finished block, and the result is byte-identical
to an uninterrupted run (batches are laid out from each block's start, SmoothGrad's noise is seeded by each batch's
first sample index, torch runs with deterministic algorithms where it has them).

The model is loaded once per process (cached by spec and device); with `scheduler=ADDRESS` the blocks are computed
on that Dask cluster's workers, each loading the model once, while this process writes them in order.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from .. import __version__
from ..compute import dask_client
from ..data import store as zstore
from ..data.dims import CLASS, SAMPLE
from ..errors import RelaylabError, step
from .attribution import Explainer
from .methods import STRATEGIES, attribution_channels, check_method
from .models import ORIGINAL, ModelSpec, check_layers, input_bounds, list_layers, load_model, model_spec_of, preprocess, torch_device

log = logging.getLogger(__name__)

_MODELS: dict[tuple[str, str], torch.nn.Module] = {}  # per process (and per Dask worker): one model per spec and device


def cached_model(spec: ModelSpec, device: str) -> torch.nn.Module:
    key = (spec.key(), device)
    if key not in _MODELS:
        if device.startswith("cuda"):  # cuBLAS is only deterministic with a fixed workspace, set before it starts
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        _MODELS[key] = load_model(spec, device)
    return _MODELS[key]


@contextmanager
def deterministic():
    """torch's deterministic algorithms for the duration of a block (warn where an op has none)."""
    enabled, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn)
        torch.backends.cudnn.benchmark = benchmark


@dataclass(frozen=True)
class Job:
    """Everything a block needs, small and picklable (sent to Dask workers)."""

    store: str
    spec: dict
    device: str
    batch_size: int
    method: str = ""
    target: str | int = "predicted_label"
    layer: str | None = None
    layers: tuple[str, ...] = ()
    pool: tuple[int, int] | None = None
    top_k: int = 0

    def model_spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.spec, where=self.store, path="zarr.json#attributes.relaylab.model.spec",
                                   base=Path(self.store).parent)


def read_rows(store: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, list | None]:
    """Raw inputs, labels and the value range of samples [start, stop)."""
    inputs = zstore.open_group(store, "inputs", chunks=None)
    rows = inputs.isel({SAMPLE: slice(start, stop)})
    return rows["input"].values, rows["label"].values, inputs.attrs.get("value_range")


def true_targets(labels: np.ndarray) -> np.ndarray:
    """Single labels as they are; for n-hot labels the first class set."""
    return labels.astype(np.int64) if labels.ndim == 1 else np.asarray(labels, dtype=bool).argmax(axis=1)


def attribution_block(job: Job, start: int, stop: int) -> dict[str, np.ndarray]:
    """Attributions and logits of samples [start, stop), in batches laid out from `start`."""
    spec = job.model_spec()
    model = cached_model(spec, job.device)
    raw, labels, value_range = read_rows(job.store, start, stop)
    device = torch.device(job.device)
    bounds = tuple(b.to(device) for b in input_bounds(spec, value_range, raw.dtype))
    attributions, logits = [], []
    with deterministic(), Explainer(model, job.method, layer=job.layer, canonizer=spec.canonizer, bounds=bounds) as explain:
        for i in range(0, stop - start, job.batch_size):
            x = preprocess(raw[i:i + job.batch_size], spec, device)
            if job.target == "predicted_label":
                targets = None
            elif job.target == "true_label":
                targets = torch.as_tensor(true_targets(labels[i:i + job.batch_size]), device=device)
            else:
                targets = torch.full((x.shape[0],), int(job.target), dtype=torch.long, device=device)
            attribution, output = explain(x, targets, seed=start + i)
            attributions.append(attribution.float().cpu().numpy())
            logits.append(output.float().cpu().numpy())
    return {"attribution": np.concatenate(attributions), "prediction": np.concatenate(logits)}


def activation_block(job: Job, start: int, stop: int) -> dict[str, np.ndarray]:
    """Pooled activations of `job.layers` and the top-k classes (softmax) of samples [start, stop)."""
    spec = job.model_spec()
    model = cached_model(spec, job.device)
    raw, _, _ = read_rows(job.store, start, stop)
    device = torch.device(job.device)
    modules = dict(model.named_modules())
    found: dict[str, list[np.ndarray]] = {layer: [] for layer in job.layers}
    scores, classes = [], []

    def hook_for(layer: str):
        def hook(module, args, output):
            if layer in seen:  # a module called twice (a shared ReLU): its first call, as `relaylab layers` lists it
                return
            seen.add(layer)
            value = output.detach()
            if value.ndim == 4 and job.pool is not None:
                value = torch.nn.functional.adaptive_avg_pool2d(value, job.pool)
            found[layer].append(value.float().cpu().numpy().copy())  # copied now: later in-place ops cannot change it
        return hook

    handles = [modules[layer].register_forward_hook(hook_for(layer)) for layer in job.layers]
    try:
        with deterministic(), torch.no_grad():
            for i in range(0, stop - start, job.batch_size):
                seen: set[str] = set()
                output = model(preprocess(raw[i:i + job.batch_size], spec, device))
                top = torch.softmax(output.float(), dim=1).topk(job.top_k, dim=1)
                scores.append(top.values.cpu().numpy())
                classes.append(top.indices.cpu().numpy().astype(np.int64))
    finally:
        for handle in handles:
            handle.remove()
    values = {f"{layer}/activation": np.concatenate(parts) for layer, parts in found.items()}
    return {**values, "top_k/top_class": np.concatenate(classes), "top_k/top_score": np.concatenate(scores).astype(np.float32)}


# --------------------------------------------------------------------------------------------- where blocks run


def run_blocks(writer: zstore.SampleGroupWriter, compute: Callable[[Job, int, int], dict[str, np.ndarray]], job: Job, *,
               client, progress: bool) -> None:
    """Compute every block `writer` still lacks with `compute(job, start, stop)` and commit them in order, then
    finish the group. Blocks run in this process (`client` None), or on a Dask cluster's workers (a window of
    blocks in flight, each worker loading the model once) while this process writes them. An unexpected exception
    names the block it stopped at (`relaylab.errors.step`); the blocks before it stay committed."""
    todo = writer.pending()
    bounds = [(writer.rows_of(b).start, writer.rows_of(b).stop) for b in todo]
    with tqdm(total=writer.n, initial=writer.n - sum(stop - start for start, stop in bounds), unit="sample", desc=writer.group,
              disable=not progress, leave=False) as bar:
        results = (in_order(client, compute, job, bounds, f"{writer.group}-{uuid.uuid4().hex[:8]}") if client is not None
                   else (compute(job, start, stop) for start, stop in bounds))
        for b, (start, stop) in zip(todo, bounds):
            with step(f"computing {writer.group} {zstore.samples(writer.rows_of(b))}", writer.path):
                values = next(results)
            writer.commit(b, values)
            bar.update(stop - start)
    writer.finish()


def in_order(client, compute: Callable, job: Job, bounds: list[tuple[int, int]], tag: str) -> Iterator[dict[str, np.ndarray]]:
    """Results of `compute(job, start, stop)` for each block, in order, computed on the cluster with the next
    `window` blocks always in flight."""
    window = max(2, 2 * sum(client.nthreads().values()))
    submit = lambda i: client.submit(compute, job, *bounds[i], key=f"{tag}-{i}", pure=False)  # noqa: E731
    futures = deque(submit(i) for i in range(min(window, len(bounds))))
    for i in range(len(bounds)):
        result = futures.popleft().result()
        if i + window < len(bounds):
            futures.append(submit(i + window))
        yield result


# --------------------------------------------------------------------------------------------------- validation


@dataclass
class Checked:
    path: Path
    spec: ModelSpec
    model: torch.nn.Module
    inputs: xr.Dataset
    n_classes: int
    classes: np.ndarray
    version: str = ORIGINAL


def check_common(store_path, *, name: str, kind: str, batch_size: int, device: str, version: str | None = None) -> Checked:
    """What both jobs need, checked in the order a user fixes things: store, name, sizes, device, model (the
    recorded one, or the corrected `version` `relaylab fix` added)."""
    path = Path(store_path)
    where = str(path)
    zstore.store_metadata(path)  # a relaylab store at all
    if not name or "/" in name or name.startswith(("_", ".")):
        raise RelaylabError.at(where, f"{kind}/{name}", "a set name without '/' that does not start with '_' or '.'", repr(name))
    if not isinstance(batch_size, int) or batch_size < 1:
        raise RelaylabError.at(where, "batch_size", "a positive number of samples per batch", repr(batch_size))
    torch_device(device)
    spec = model_spec_of(path, version)
    inputs = zstore.open_group(path, "inputs", chunks=None)
    shape = tuple(int(inputs.sizes[d]) for d in ("channel", "y", "x"))
    if shape != tuple(spec.input_shape):
        raise RelaylabError.at(where, "inputs/input", f"images of the model's input shape {list(spec.input_shape)}", f"{list(shape)}")
    model = cached_model(spec, device)
    with torch.no_grad():
        n_classes = int(model(torch.zeros((1, *spec.input_shape), device=device)).shape[1])
    classes = zstore.store_label_map(path)[CLASS].values
    if classes.max() >= n_classes:
        raise RelaylabError.at(where, "zarr.json#attributes.relaylab.label_map", f"classes the model outputs (0…{n_classes - 1})",
                               f"class {int(classes.max())}")
    return Checked(path, spec, model, inputs, n_classes, classes, version or ORIGINAL)


def provenance(checked: Checked, **settings) -> dict:
    """How a group was made. zennit's version is part of it: its batch-norm merging changed numerically between
    releases, so a job resumed under another release is refused rather than mixing the two."""
    from importlib.metadata import version

    spec = checked.spec
    return {"model": spec.model, "weights": spec.weights or "", "canonizer": spec.canonizer,
            **({"model_version": checked.version} if checked.version != ORIGINAL else {}), **settings,
            "zennit": version("zennit"), "created_by": f"relaylab {__version__}"}


# ------------------------------------------------------------------------------------------------------ the jobs


def attribute(store_path: str | os.PathLike, *, name: str = "lrp", method: str = "epsilon_plus_flat",
              target: str | int = "predicted_label", layer: str | None = None, batch_size: int = 64, device: str = "cpu",
              scheduler: str | None = None, progress: bool = True, model: str | None = None) -> str:
    """Write attributions/<name>: attribution (sample, channel, y, x) and prediction (sample, class) float32 (the
    logits), for every sample of the store, of the recorded model or its version `model`; returns the group written."""
    where = str(store_path)
    check_method(method, layer, where)
    if not (target in STRATEGIES or (isinstance(target, int | np.integer) and not isinstance(target, bool))):
        raise RelaylabError.at(where, "target", f"{' or '.join(STRATEGIES)}, or a class index", repr(target))
    checked = check_common(store_path, name=name, kind="attributions", batch_size=batch_size, device=device, version=model)
    path, inputs = checked.path, checked.inputs
    if not isinstance(target, str) and int(target) not in checked.classes:
        raise RelaylabError.at(where, "target", f"a class of the label map ({int(checked.classes.min())}…{int(checked.classes.max())}, "
                               f"{len(checked.classes)} classes)", str(target))
    if target == "true_label" and inputs["label"].ndim == 2 and not np.asarray(inputs["label"].values, dtype=bool).any(axis=1).all():
        raise RelaylabError.at(where, "inputs/label", "a class for every sample, to explain its true label", "samples without any class")
    if layer:
        check_layers(checked.model, [layer], where)
        shape = list_layers(checked.model, checked.spec.input_shape, names=[layer])
        if not shape or len(shape[0]["output_shape"]) != 3:
            raise RelaylabError.at(where, "layer", f"a layer with a spatial output (C, h, w) for {method}",
                                   f"{layer!r} with output {shape[0]['output_shape'] if shape else 'none'}")
    channels, height, width = checked.spec.input_shape
    attrs = provenance(checked, method=method, strategy=target if isinstance(target, str) else int(target), layer=layer or "",
                       batch_size=batch_size, device=device)
    job = Job(str(path), checked.spec.to_dict(), device, batch_size, method=method,
              target=target if isinstance(target, str) else int(target), layer=layer)
    template = placeholders(inputs, {"attribution": ((SAMPLE, "channel", "y", "x"), (attribution_channels(method, channels), height, width),
                                                     np.float32, {}),
                                     "prediction": ((SAMPLE, CLASS), (checked.n_classes,), np.float32, {})}, attrs)
    group = f"attributions/{name}"
    log.info("attributing %d samples with %s (%s) into %s", inputs.sizes[SAMPLE], method, target, group)
    with dask_client(scheduler, where) as client, \
            zstore.begin_samples(path, group, template, kind="attributions", attrs=attrs, rows=zstore.block_rows(template)) as writer:
        run_blocks(writer, attribution_block, job, client=client, progress=progress)
    return group


def placeholders(inputs: xr.Dataset, variables: dict[str, tuple], attrs: dict | None = None) -> xr.Dataset:
    """A Dataset along the inputs' samples (with their sample and label coordinates) whose variables, name →
    (dims, per-sample shape, dtype, attrs), are empty lazy arrays: the layout of a group a job will compute."""
    import dask.array as da

    n = inputs.sizes[SAMPLE]
    coords = {SAMPLE: inputs[SAMPLE].values, "label": inputs["label"].variable.load()}
    return xr.Dataset({var: (dims, da.empty((n, *shape), dtype=dtype), var_attrs) for var, (dims, shape, dtype, var_attrs) in variables.items()},
                      coords=coords, attrs=attrs or {})


def activations(store_path: str | os.PathLike, *, layers: list[str], name: str = "activations", pool: tuple[int, int] | None = (4, 4),
                top_k: int = 10, batch_size: int = 64, device: str = "cpu", scheduler: str | None = None, progress: bool = True,
                model: str | None = None) -> str:
    """Write activations/<name>/<layer>/activation (adaptive-avg-pooled to `pool` for spatial layers, (sample,
    feature) for flat ones) and activations/<name>/top_k (top_class, top_score = softmax); returns the group."""
    where = str(store_path)
    if not layers or not all(isinstance(layer, str) and layer for layer in layers) or len(set(layers)) != len(layers):
        raise RelaylabError.at(where, "layers", "one or more distinct layer names", repr(layers))
    if pool is not None and not (len(pool) == 2 and all(isinstance(p, int) and p > 0 for p in pool)):
        raise RelaylabError.at(where, "pool", "(height, width), positive integers, or None for no pooling", repr(pool))
    checked = check_common(store_path, name=name, kind="activations", batch_size=batch_size, device=device, version=model)
    check_layers(checked.model, list(layers), where)
    if "top_k" in layers:
        raise RelaylabError.at(where, "layers", "layer names other than 'top_k' (the group of the top classes)", "'top_k'")
    if not isinstance(top_k, int) or top_k < 1:
        raise RelaylabError.at(where, "top_k", "a positive number of classes", repr(top_k))
    top_k = min(top_k, checked.n_classes)
    shapes = {entry["name"]: entry for entry in list_layers(checked.model, checked.spec.input_shape, names=list(layers))}
    datasets = {}
    for layer in layers:
        entry = shapes.get(layer)
        if entry is None or len(entry["output_shape"]) not in (1, 3):
            raise RelaylabError.at(where, "layers", "layers with an output (C, h, w) or (features,), called by the forward pass",
                                   f"{layer!r} with output {entry['output_shape'] if entry else 'none (not called)'}")
        out = entry["output_shape"]
        if len(out) == 3:
            shape, dims = (out[0], *(pool or out[1:])), (SAMPLE, "channel", "y", "x")
        else:
            shape, dims = tuple(out), (SAMPLE, "feature")
        datasets[layer] = {"activation": (dims, shape, np.float32, {"layer_type": entry["type"], "output_shape": out})}
    datasets["top_k"] = {"top_class": ((SAMPLE, "rank"), (top_k,), np.int64, {}),
                         "top_score": ((SAMPLE, "rank"), (top_k,), np.float32, {"score": "softmax probability"})}
    attrs = provenance(checked, layers=list(layers), pool=list(pool) if pool else None, top_k=top_k, batch_size=batch_size, device=device)
    job = Job(str(checked.path), checked.spec.to_dict(), device, batch_size, layers=tuple(layers),
              pool=tuple(pool) if pool else None, top_k=top_k)
    group = f"activations/{name}"
    children = {child: placeholders(checked.inputs, variables) for child, variables in datasets.items()}
    with dask_client(scheduler, where) as client, zstore.begin_samples(checked.path, group, children, kind="activations", attrs=attrs) as writer:
        run_blocks(writer, activation_block, job, client=client, progress=progress)
    return group
