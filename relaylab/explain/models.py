"""Model specs: which network explains a store, how it is built and loaded, what its inputs look like.

A spec names a network as `module:callable` (a function or class returning an `nn.Module`) or as a torchvision
architecture ("vgg16", "resnet18"), with an optional state-dict file, keyword arguments, the input shape and the
normalisation the model was trained with. It is recorded in the store's root metadata (`model`), so every job and the
explorer rebuild the same network. Everything that can be wrong with a spec is found by `load_model` before any work:
a callable that does not import, weights that do not fit, an input size the model rejects.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..compute import check_device, gpu_index
from ..data import store as zstore
from . import IMAGENET_MEAN, IMAGENET_STD
from ..errors import Problem, RelaylabError

log = logging.getLogger(__name__)

CANONIZERS = ("auto", "none", "sequential_merge_batch_norm", "vgg", "resnet")
SPEC_WHERE = "model spec"  # the `file` of problems found in a spec that was given on the command line or in code


@dataclass
class ModelSpec:
    """How to rebuild a model. `weights` is absolute or relative to `base` (a store's parent folder); `mean`/`std`
    default to ImageNet's for torchvision architectures, to no normalisation otherwise."""

    model: str
    weights: str | None = None
    kwargs: dict = field(default_factory=dict)
    input_shape: tuple[int, ...] = (3, 224, 224)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    canonizer: str = "auto"
    correction: dict | None = None  # a model version's ClArC correction (relaylab.fix): method, layer, ...
    base: str | None = field(default=None, compare=False)
    origin: str = field(default=SPEC_WHERE, compare=False)  # where problems are reported: a store, or "model spec"
    origin_path: str = field(default="", compare=False)  # and the path of the spec inside it

    def __post_init__(self):
        self.input_shape = tuple(int(v) for v in self.input_shape)
        channels = self.input_shape[0] if self.input_shape else 0
        torchvision_stats = is_torchvision_name(self.model) and channels == 3
        if self.mean is None:
            self.mean = IMAGENET_MEAN if torchvision_stats else (0.0,) * channels
        if self.std is None:
            self.std = IMAGENET_STD if torchvision_stats else (1.0,) * channels
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)

    @classmethod
    def from_dict(cls, spec: object, *, where: str = SPEC_WHERE, path: str = "", base: str | Path | None = None) -> ModelSpec:
        """Check a recorded spec and build it; every problem is reported at `where`:`path`."""
        if not isinstance(spec, dict):
            raise RelaylabError.at(where, path, "a model spec (a mapping with 'model', 'weights', 'kwargs', 'input_shape', ...)", type(spec).__name__)
        problems = []
        known = {"model", "weights", "kwargs", "input_shape", "mean", "std", "canonizer", "correction"}
        if unknown := sorted(set(spec) - known):
            problems.append(Problem(where, path, f"only the keys {sorted(known)}", f"{unknown}"))
        if not isinstance(spec.get("model"), str) or not spec.get("model"):
            problems.append(Problem(where, f"{path}.model", "'module:callable' or a torchvision architecture name", repr(spec.get("model"))))
        if spec.get("weights") is not None and not isinstance(spec["weights"], str):
            problems.append(Problem(where, f"{path}.weights", "a path to a state-dict file, or null", repr(spec["weights"])))
        if not isinstance(spec.get("kwargs", {}), dict):
            problems.append(Problem(where, f"{path}.kwargs", "a mapping of keyword arguments", repr(spec["kwargs"])))
        shape = spec.get("input_shape", [3, 224, 224])
        if not (isinstance(shape, list | tuple) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)):
            problems.append(Problem(where, f"{path}.input_shape", "[channels, height, width] (positive integers)", repr(shape)))
            shape = None
        for key in ("mean", "std"):
            value = spec.get(key)
            if value is None:
                continue
            if not (isinstance(value, list | tuple) and all(isinstance(v, int | float) for v in value)) \
                    or (shape and len(value) != shape[0]):
                problems.append(Problem(where, f"{path}.{key}", f"one number per input channel ({shape[0] if shape else '?'})", repr(value)))
            elif key == "std" and any(v == 0 for v in value):
                problems.append(Problem(where, f"{path}.std", "non-zero standard deviations", repr(value)))
        if spec.get("canonizer", "auto") not in CANONIZERS:
            problems.append(Problem(where, f"{path}.canonizer", f"one of {', '.join(CANONIZERS)}", repr(spec.get("canonizer"))))
        correction = spec.get("correction")
        if correction is not None and not (isinstance(correction, dict) and isinstance(correction.get("method"), str)
                                           and isinstance(correction.get("layer"), str)):
            problems.append(Problem(where, f"{path}.correction", "a correction with its 'method' and 'layer' (relaylab fix writes it)",
                                    repr(correction)))
        if problems:
            raise RelaylabError(problems)
        return cls(model=spec["model"], weights=spec.get("weights"), kwargs=dict(spec.get("kwargs") or {}),
                   input_shape=tuple(shape), mean=spec.get("mean"), std=spec.get("std"),
                   canonizer=spec.get("canonizer", "auto"), correction=dict(correction) if correction else None,
                   base=str(base) if base is not None else None, origin=where, origin_path=path)

    def to_dict(self) -> dict:
        spec = asdict(self)
        del spec["base"], spec["origin"], spec["origin_path"]
        if spec["correction"] is None:  # an uncorrected model's record stays as before versions existed
            del spec["correction"]
        return {**spec, "input_shape": list(self.input_shape), "mean": list(self.mean), "std": list(self.std)}

    def error(self, key: str, expected: str, found: str = "") -> RelaylabError:
        """A problem with one key of this spec, reported where the spec came from."""
        return RelaylabError.at(self.origin, f"{self.origin_path}.{key}" if self.origin_path else key, expected, found)

    def weights_path(self) -> Path | None:
        if self.weights is None:
            return None
        path = Path(self.weights).expanduser()
        return path if path.is_absolute() or self.base is None else Path(self.base) / path

    def key(self) -> str:
        """Identifies the built model (for per-process caches): the spec with its weights file (path, size, mtime)."""
        weights = self.weights_path()
        stat = weights.stat() if weights is not None and weights.is_file() else None
        file = (str(weights.resolve()), stat.st_size, stat.st_mtime_ns) if stat else str(weights)
        return repr((self.model, file, sorted(self.kwargs.items()), self.input_shape, sorted((self.correction or {}).items())))


def is_torchvision_name(name: str) -> bool:
    return ":" not in name


ORIGINAL = "original"  # the version name of the model `relaylab model` recorded
VERSIONS = "model_versions"  # root metadata key: corrected versions of the model (relaylab fix), by name


def model_versions(store_path: str | Path) -> dict[str, dict]:
    """The model versions a store records, by name: the original (what `relaylab model` recorded) first, then each
    corrected version `relaylab fix` added ({"spec", "parent", "correction", "verification", ...})."""
    meta = zstore.store_metadata(store_path)
    out = {ORIGINAL: meta["model"]} if isinstance(meta.get("model"), dict) else {}
    out.update(meta.get(VERSIONS) or {})
    return out


def model_spec_of(store_path: str | Path, version: str | None = None) -> ModelSpec:
    """The spec recorded in a store (by `relaylab model` / `record_model`), or of one of its corrected versions
    (`relaylab fix`); relative weights are found beside the store."""
    meta = zstore.store_metadata(store_path)
    recorded = meta.get("model")
    if not isinstance(recorded, dict) or "spec" not in recorded:
        raise RelaylabError.at(store_path, "zarr.json#attributes.relaylab.model", "a model spec, recorded with `relaylab model PROJECT MODEL`",
                               "none")
    where = "zarr.json#attributes.relaylab.model.spec"
    if version not in (None, ORIGINAL):
        versions = meta.get(VERSIONS) or {}
        if version not in versions:
            raise RelaylabError.at(store_path, f"zarr.json#attributes.relaylab.{VERSIONS}",
                                   f"a model version of the store ({', '.join([ORIGINAL, *versions])})", repr(version))
        recorded, where = versions[version], f"zarr.json#attributes.relaylab.{VERSIONS}.{version}.spec"
    return ModelSpec.from_dict(recorded["spec"], where=str(store_path), path=where, base=Path(store_path).resolve().parent)


def recorded_layers(store_path: str | Path) -> list[dict]:
    return list((zstore.store_metadata(store_path).get("model") or {}).get("layers") or [])


def _build(spec: ModelSpec) -> nn.Module:
    if is_torchvision_name(spec.model):
        import torchvision.models

        names = torchvision.models.list_models()
        if spec.model not in names:
            close = difflib.get_close_matches(spec.model, names, n=5)
            raise spec.error("model", "'module:callable' or a torchvision architecture name",
                                   f"'{spec.model}'" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        build, what = torchvision.models.get_model_builder(spec.model), f"torchvision.models.{spec.model}"
        kwargs = {"weights": None, **spec.kwargs}
    else:
        module_name, _, attr = spec.model.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as error:  # a broken module raises anything; the user needs its message, not our traceback
            raise spec.error("model", f"an importable module '{module_name}' (from '{spec.model}')",
                                   f"{type(error).__name__}: {error}") from None
        build = module
        for part in attr.split("."):
            build = getattr(build, part, None)
        if not callable(build):
            raise spec.error("model", f"a callable '{attr}' in module '{module_name}'",
                                   "it is missing" if build is None else f"a {type(build).__name__}")
        what, kwargs = spec.model, dict(spec.kwargs)
    try:
        model = build(**kwargs)
    except Exception as error:
        raise spec.error("kwargs", f"keyword arguments that {what} accepts", f"{kwargs}: {type(error).__name__}: {error}") from None
    if not isinstance(model, nn.Module):
        raise spec.error("model", f"{what} to return a torch.nn.Module", f"a {type(model).__name__}")
    return model


def _load_weights(model: nn.Module, spec: ModelSpec) -> None:
    path = spec.weights_path()
    if not path.is_file():
        raise RelaylabError.at(path, "", "a state-dict file (torch.save(model.state_dict(), ...))", "no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise RelaylabError.at(path, "", "a state-dict file (torch.save(model.state_dict(), ...))", f"{type(error).__name__}: {error}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # checkpoints that wrap the state dict
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise RelaylabError.at(path, "", "a state dict (a mapping of parameter names to tensors)", type(state).__name__)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("with another shape (file vs model)", mismatched)):
        if keys:
            problems.append(Problem(str(path), "", f"weights that fit {spec.model}",
                                    f"{len(keys)} {what}: {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}"))
    if problems:
        raise RelaylabError(problems)
    model.load_state_dict(state)
    log.info("loaded %s into %s", path, spec.model)


def torch_device(device: str) -> torch.device:
    """The torch device of a device name (`relaylab.compute.check_device`), once torch sees that GPU."""
    index = gpu_index(check_device(device, SPEC_WHERE))
    if index is not None and index >= torch.cuda.device_count():
        found = (f"{torch.cuda.device_count()} GPUs (cuda:0…cuda:{torch.cuda.device_count() - 1})" if torch.cuda.is_available()
                 else f"none: torch {torch.__version__} sees no GPU; use --device cpu")
        raise RelaylabError.at(SPEC_WHERE, "device", f"a CUDA device torch sees ({device})", found)
    return torch.device(device)


def load_model(spec: ModelSpec, device: str = "cpu") -> nn.Module:
    """Build, load weights, move to `device`, eval mode; then one dummy forward of `input_shape`, so a model that
    rejects the input size fails here with the model's own message instead of in the middle of a job."""
    on = torch_device(device)
    model = _build(spec)
    if spec.weights is not None:
        _load_weights(model, spec)
    model = model.eval().to(on)
    if spec.correction is not None:
        from ..fix.clarc import apply_correction  # a corrected version (relaylab fix)

        apply_correction(model, spec)
    try:
        with torch.no_grad():
            output = model(torch.zeros((1, *spec.input_shape), device=on))
    except Exception as error:
        message = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise spec.error("input_shape",
                               f"an input size {spec.model} accepts", f"{list(spec.input_shape)}: {message}") from None
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        found = f"shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else type(output).__name__
        raise spec.error("model", "a classifier returning logits (N, classes)", found)
    return model


def n_outputs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    device = next(model.parameters(), torch.zeros(())).device
    with torch.no_grad():
        return int(model(torch.zeros((1, *input_shape), device=device)).shape[1])


def list_layers(model: nn.Module, input_shape: tuple[int, ...], names: list[str] | None = None) -> list[dict]:
    """Every leaf module the forward pass calls (or the modules `names`), in call order (input to output), with its
    type and output shape (first call, for modules called twice such as ResNet's shared ReLU)."""
    device = next(model.parameters(), torch.zeros(())).device
    seen: dict[str, dict] = {}
    handles = []

    def hook(name):
        def record(module, args, output):
            if name not in seen and isinstance(output, torch.Tensor):
                seen[name] = {"name": name, "type": type(module).__name__, "output_shape": list(output.shape[1:])}
        return record

    for name, module in model.named_modules():
        if (name in names) if names is not None else (name and not any(True for _ in module.children())):
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        for handle in handles:
            handle.remove()
    return list(seen.values())


def check_layers(model: nn.Module, layers: list[str], where: str) -> None:
    """Unknown layer names, reported with the nearest names the model has."""
    names = [name for name, _ in model.named_modules() if name]
    problems = []
    for layer in layers:
        if layer not in names:
            close = difflib.get_close_matches(layer, names, n=4, cutoff=0.4) or names[:4]
            problems.append(Problem(where, "layer", f"a layer of the model (`relaylab layers` lists them), e.g. {', '.join(close)}", repr(layer)))
    if problems:
        raise RelaylabError(problems)


def input_scale(dtype: np.dtype) -> float:
    return 255.0 if np.dtype(dtype) == np.uint8 else 1.0


def preprocess(batch: np.ndarray | torch.Tensor, spec: ModelSpec, device: str | torch.device = "cpu") -> torch.Tensor:
    """Raw stored images (uint8, or floats in the value range) → what the model sees: (x / scale - mean) / std."""
    dtype = batch.numpy().dtype if isinstance(batch, torch.Tensor) else np.asarray(batch).dtype
    x = torch.as_tensor(np.asarray(batch) if not isinstance(batch, torch.Tensor) else batch).to(device=device, dtype=torch.float32)
    if x.ndim != 4 or x.shape[1] != len(spec.mean):
        raise RelaylabError.at(SPEC_WHERE, "input_shape", f"images (N, {len(spec.mean)}, H, W)", f"shape {tuple(x.shape)}")
    mean = torch.tensor(spec.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, -1, 1, 1)
    return (x / input_scale(dtype) - mean) / std


def input_bounds(spec: ModelSpec, value_range: list[float] | None, dtype: np.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The lowest and highest values the model can see per channel (1, C, 1, 1): the stored value range,
    preprocessed. The ZBox rule of epsilon_gamma_box needs them."""
    low, high = value_range or ([0.0, 255.0] if np.dtype(dtype) == np.uint8 else [0.0, 1.0])
    scale = input_scale(dtype)
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return (low / scale - mean) / std, (high / scale - mean) / std


def canonizers_for(model: nn.Module, name: str = "auto") -> list:
    """zennit canonizers that make the model LRP-ready: "auto" picks ResNetCanonizer for torchvision ResNets,
    VGGCanonizer for torchvision VGGs, SequentialMergeBatchNorm for any model with a batch norm right after a
    linear/conv layer (zennit's own leaf-order test), none otherwise."""
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.core import collect_leaves
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    if name == "none":
        return []
    if name == "resnet":
        return [ResNetCanonizer()]
    if name == "vgg":
        return [VGGCanonizer()]
    if name == "sequential_merge_batch_norm":
        return [SequentialMergeBatchNorm()]
    import torchvision.models

    if isinstance(model, torchvision.models.ResNet):
        return [ResNetCanonizer()]
    if isinstance(model, torchvision.models.VGG):
        return [VGGCanonizer()]
    leaves = list(collect_leaves(model))
    if any(isinstance(a, SequentialMergeBatchNorm.linear_type) and isinstance(b, SequentialMergeBatchNorm.batch_norm_type)
           for a, b in zip(leaves, leaves[1:])):
        return [SequentialMergeBatchNorm()]
    return []


def relative_weights(weights: str | os.PathLike | None, store_path: str | Path) -> str | None:
    """A weights path as recorded: relative to the store's parent folder when it lies inside it, else absolute."""
    if weights is None:
        return None
    path = Path(weights).expanduser().resolve()
    parent = Path(store_path).resolve().parent
    return str(path.relative_to(parent)) if path.is_relative_to(parent) else str(path)


def record_model(store_path: str | Path, spec: ModelSpec) -> list[dict]:
    """Load the model (all checks), list its layers and record both in the store's root metadata."""
    inputs = zstore.open_group(store_path, "inputs", chunks=None)
    shape = tuple(int(inputs.sizes[d]) for d in ("channel", "y", "x"))
    if tuple(spec.input_shape) != shape:
        raise RelaylabError.at(store_path, "inputs/input", f"images of the model's input shape {list(spec.input_shape)}", f"{list(shape)}")
    model = load_model(spec)
    layers = list_layers(model, spec.input_shape)
    project = zstore.store_metadata(store_path).get("project") or {}
    zstore.update_store_metadata(store_path, model={"spec": spec.to_dict(), "layers": layers},
                                 project={**project, "model": project.get("model") or spec.model})
    return layers
