"""`SampleExplainer`: explanations of one sample, computed on demand for the explorer and cached.

A click on a sample in the explorer asks for a CAM at some depth, an LRP heatmap, the top-10 predictions and the
selected layer's activations. One forward and one backward pass yield the CAMs of every CAM layer with every CAM method,
the logits and every recorded layer's activations, so moving the depth slider or picking another layer after the first
click is a cache hit; LRP and guided backprop need a pass each (zennit rewrites the backward pass of every layer), and
Guided Grad-CAM at any layer is the product of two cached results.

Channel score ("entropy × magnitude", as in the sample-analysis page of Grad-CAM/LayerCAM dashboards): for a channel's activations a (h × w values),

    score = H(a) · mean|a|,   H(a) = -sum_b p_b ln p_b,   p_b = share of the values in bin b

with SCORE_BINS equal-width bins spanning the channel's own [min, max] (numpy.histogram). A constant channel has one
full bin, so H = 0 and score 0; so does every unit of a fully connected layer, which is served as (F, 1, 1).
High scores mark channels with both varied and strong responses.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import torch

from ..cache import LRU
from ..data import store as zstore
from ..data.dims import CLASS
from ..data.project import Project
from ..errors import RelaylabError
from . import models
from .attribution import Explainer, guided_gradcam
from .methods import METHODS as ATTRIBUTION_METHODS
from .cam import METHODS, cams, check_method

log = logging.getLogger(__name__)

SCORE_BINS = 10  # equal-width bins per flattened channel
CAM_CACHE = 8  # (sample, label) passes: all CAM layers × every CAM method at input size (VGG16 at 224²: every CAM layer at input size, float32)
FORWARD_CACHE = 3  # samples whose logits and activations of every recorded layer are kept (VGG16 at 224²: 100+ MB each)
SMALL_CACHE = 64  # LRP and guided backprop heatmaps, Guided Grad-CAMs and per-layer (activations, scores) pairs
# The LRP composites `SampleExplainer.lrp` offers (the registry's other composites, guided and excitation backprop, are not LRP)
LRP_COMPOSITES = tuple(name for name, m in ATTRIBUTION_METHODS.items() if m.kind == "composite" and name.startswith("epsilon"))


def frozen(array: np.ndarray) -> np.ndarray:
    """Cached arrays are shared between callers: make them read-only so no caller can change another's result."""
    array.flags.writeable = False
    return array


def channel_scores(activations: np.ndarray, bins: int = SCORE_BINS) -> np.ndarray:
    """Entropy of each channel's histogram over its own range × its mean |activation| (see the module docstring)."""
    scores = np.empty(activations.shape[0], dtype=np.float64)
    for c, channel in enumerate(activations.reshape(activations.shape[0], -1)):
        counts, _ = np.histogram(channel, bins=bins)
        p = counts[counts > 0] / channel.size
        scores[c] = -(p * np.log(p)).sum() * np.abs(channel).mean()
    return scores


class SampleExplainer:
    """The recorded model of a store, loaded once, explaining single samples (CAMs, LRP, guided backprop, Guided Grad-CAM,
    predictions, activations)."""

    def __init__(self, project: Project, device: str = "cpu", version: str | None = None):
        self.project = project
        self.spec = models.model_spec_of(project.path, version)
        recorded = project.metadata.get("store", {}).get("model", {})
        self.layers: list[dict] = list(recorded.get("layers", []))
        self.cam_layers: list[str] = [layer["name"] for layer in self.layers if len(layer.get("output_shape", [])) == 3]
        self._layer_names = [layer["name"] for layer in self.layers]
        self._inputs = zstore.open_group(project.path, "inputs", chunks=None)["input"]  # one sample per read
        self._samples = self._inputs.indexes["sample"]
        self._names = {int(c): str(n) for c, n in zip(project.label_map[CLASS].values, project.label_map["name"].values)}
        self.device = torch.device(device)
        self.model = models.load_model(self.spec, device=device)
        self._n_outputs = models.n_outputs(self.model, self.spec.input_shape)
        self._value_range = project.inputs.attrs.get("value_range")
        self._lock = threading.RLock()  # one model, one pass at a time (zennit temporarily rewrites it)
        self._cams = LRU(max_items=CAM_CACHE)
        self._forwards = LRU(max_items=FORWARD_CACHE)
        self._small = LRU(max_items=SMALL_CACHE)
        log.info("explainer for %s: %d layers, %d usable for CAMs", project.path, len(self.layers), len(self.cam_layers))

    # ------------------------------------------------------------------------------------------------ checks

    def _position(self, sample) -> int:
        try:
            if isinstance(sample, bool) or not isinstance(sample, int | np.integer):
                raise TypeError
            return int(self._samples.get_loc(int(sample)))
        except (KeyError, TypeError):
            raise RelaylabError.at(self.project.path, "inputs/sample", f"a sample index of the dataset ({self._samples.min()}…{self._samples.max()})",
                                   repr(sample)) from None

    def _check_label(self, label) -> int:
        if isinstance(label, bool) or not isinstance(label, int | np.integer) or int(label) not in self._names \
                or not 0 <= int(label) < self._n_outputs:
            raise RelaylabError.at(self.project.path, "label_map", f"a class index of the label map that the model outputs (0…"
                                   f"{min(len(self._names), self._n_outputs) - 1})", repr(label))
        return int(label)

    def _check_layer(self, layer: str, allowed: list[str], what: str) -> None:
        if layer not in allowed:
            shown = ", ".join(allowed[:6]) + (f", … ({len(allowed)} in all)" if len(allowed) > 6 else "")
            raise RelaylabError.at(self.project.path, "model.layers", f"{what}: {shown or 'none recorded'}", repr(layer))

    # ------------------------------------------------------------------------------------------------ passes

    def _input(self, sample: int) -> torch.Tensor:
        return models.preprocess(self._inputs.isel(sample=self._position(sample)).values[None], self.spec, self.device)

    def _record(self, logits: torch.Tensor, activations: dict[str, torch.Tensor]) -> dict:
        """What a sample's forward pass leaves for later calls: class probabilities and every recorded layer's output."""
        def as_chw(a: torch.Tensor) -> np.ndarray:
            a = a[0].float().cpu().numpy()
            return frozen(a.reshape(a.shape[0], *([1, 1] if a.ndim == 1 else a.shape[1:])))
        return {
            "probabilities": frozen(torch.softmax(logits[0].double(), dim=0).cpu().numpy()),
            "activations": {name: as_chw(activations[name]) for name in self._layer_names},
        }

    def _forward(self, sample: int) -> dict:
        """Logits and every recorded layer's activations (a CAM pass fills this too)."""
        def compute():
            result = cams(self.model, self._input(sample), torch.zeros(1, dtype=torch.long), [], keep=self._layer_names)
            return self._record(result.logits, result.activations)
        with self._lock:
            return self._forwards.get(sample, compute)

    def _cam_pass(self, sample: int, label: int) -> dict:
        def compute():
            log.debug("CAM pass for sample %s, label %s", sample, label)
            result = cams(self.model, self._input(sample), torch.tensor([label]), self.cam_layers, METHODS,
                          keep=[n for n in self._layer_names if n not in self.cam_layers])
            if sample not in self._forwards:
                self._forwards.put(sample, self._record(result.logits, result.activations))
            return {key: frozen(m[0].cpu().numpy()) for key, m in result.maps.items()}
        with self._lock:
            return self._cams.get((sample, label), compute)

    def _composite(self, sample: int, label: int, method: str) -> np.ndarray:
        """A zennit composite's attribution (C, H, W) float32 of class `label`, as `relaylab attribute` computes it
        (same composite, canonizers, input bounds and seed)."""
        def compute():
            x = self._input(sample)
            bounds = None
            if method == "epsilon_gamma_box":  # the input layer's z^B rule needs the lowest and highest model input
                low, high = models.input_bounds(self.spec, self._value_range, self._inputs.dtype)
                bounds = (low.to(x).expand_as(x), high.to(x).expand_as(x))
            with Explainer(self.model, method, canonizer=self.spec.canonizer, bounds=bounds) as explainer:
                attribution, _ = explainer(x, torch.tensor([label], device=x.device))
            return frozen(attribution[0].float().cpu().numpy())
        with self._lock:
            return self._small.get(("composite", sample, label, method), compute)

    # ------------------------------------------------------------------------------------------------ public

    def predictions(self, sample: int, top: int = 10) -> list[dict]:
        """The `top` most probable classes: [{"class", "name", "score" (softmax probability)}], most probable first."""
        self._position(sample)
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise RelaylabError.at("predictions", "top", "a positive number of classes", repr(top))
        p = self._forward(sample)["probabilities"]
        order = np.argsort(-p, kind="stable")[:top]
        return [{"class": int(c), "name": self._names.get(int(c), str(int(c))), "score": float(p[c])} for c in order]

    def cam(self, sample: int, label: int, layer: str, method: str = "gradcam") -> np.ndarray:
        """A CAM (H, W) float32 of class `label` at `layer` (a method of cam.METHODS), upsampled to the input size,
        unnormalised."""
        self._position(sample)
        label = self._check_label(label)
        self._check_layer(layer, self.cam_layers, "a layer with a spatial output")
        check_method(method)
        return self._cam_pass(int(sample), label)[layer, method]

    def lrp(self, sample: int, label: int, method: str = "epsilon_plus_flat") -> np.ndarray:
        """LRP relevance (C, H, W) float32 of class `label` with one of LRP_COMPOSITES: the numbers `relaylab attribute`
        stores for that method (same composite, canonizers and seed, the target logit)."""
        self._position(sample)
        label = self._check_label(label)
        if method not in LRP_COMPOSITES:
            raise RelaylabError.at("lrp", "method", f"an LRP composite: {', '.join(LRP_COMPOSITES)}", repr(method))
        return self._composite(int(sample), label, method)

    def guided_backprop(self, sample: int, label: int) -> np.ndarray:
        """Guided backpropagation (C, H, W) float32 of class `label`: the numbers `relaylab attribute --method
        guided_backprop` stores (one-hot seed)."""
        self._position(sample)
        return self._composite(int(sample), self._check_label(label), "guided_backprop")

    def guided_gradcam(self, sample: int, label: int, layer: str) -> np.ndarray:
        """Guided Grad-CAM (H, W) float32 of class `label` at `layer`: guided backprop summed over channels × Grad-CAM
        at the input size, the numbers `relaylab attribute --method guided_gradcam --layer` stores, from cached halves."""
        self._position(sample)
        label = self._check_label(label)
        self._check_layer(layer, self.cam_layers, "a layer with a spatial output")

        def compute():
            guided = self.guided_backprop(sample, label)
            gradcam = self._cam_pass(int(sample), label)[layer, "gradcam"]
            return frozen(guided_gradcam(guided[None], gradcam[None])[0, 0])
        with self._lock:
            return self._small.get(("guided_gradcam", int(sample), label, layer), compute)

    def layer_activations(self, sample: int, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """The layer's activations (C, h, w) float32 for one sample at full resolution, and each channel's score."""
        self._position(sample)
        self._check_layer(layer, self._layer_names, "a recorded layer")

        def compute():
            activations = self._forward(int(sample))["activations"][layer]
            return activations, frozen(channel_scores(activations))
        with self._lock:
            return self._small.get(("layer", int(sample), layer), compute)

    def close(self) -> None:
        self._inputs.close()
