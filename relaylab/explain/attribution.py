"""Attribution methods as small composable pieces: a registry of what relaylab knows, and an `Explainer` that binds
one method to one model for many batches (zennit composites are registered once, not per batch).

Targets are class indices per sample; `explain_batch` also takes "predicted_label" (each sample's arg-max) or one
fixed class. LRP composites are seeded with the target logit (one-hot × output), so on a bias-free network the input
relevance sums to the logit it explains (conservation); gradient-type methods and occlusion use the plain one-hot
seed, so a gradient is dy_c/dx as usual.
"""

from __future__ import annotations

import logging
import numpy as np
import torch
from torch import Tensor, nn

from ..errors import Problem, RelaylabError
from .methods import check_method
from .models import canonizers_for

log = logging.getLogger(__name__)

def one_hot(targets: Tensor, like: Tensor) -> Tensor:
    return torch.nn.functional.one_hot(targets, like.shape[1]).to(like.dtype)


class Explainer:
    """One method bound to one model. Use as a context manager: a zennit composite is registered on enter and
    removed on exit, so a job registers it once for all its batches.

    `bounds` = (low, high) of the preprocessed input, needed by epsilon_gamma_box. `canonizer`: "auto", "none", or
    one of relaylab.explain.models.CANONIZERS.
    """

    def __init__(self, model: nn.Module, method: str, *, layer: str | None = None, canonizer: str = "auto",
                 bounds: tuple[Tensor, Tensor] | None = None):
        self.model = model
        self.method = check_method(method, layer)
        self.layer = layer
        self.canonizer = canonizer
        self.bounds = bounds
        if method == "epsilon_gamma_box" and bounds is None:
            raise RelaylabError.at("attribute", "bounds", "the lowest and highest model inputs, for epsilon_gamma_box's z-box rule", "none")
        self.attributor = None

    def _composite(self, name: str):
        from zennit.composites import COMPOSITES

        from .rules import FAST_COMPOSITES, fast_maps

        kwargs = {"canonizers": canonizers_for(self.model, self.canonizer)}
        if name == "epsilon_gamma_box":
            kwargs.update(low=self.bounds[0], high=self.bounds[1])
        if name in FAST_COMPOSITES:  # zennit's numbers without its discarded backward passes (see rules.py)
            kwargs.update(fast_maps(name, low=kwargs.get("low"), high=kwargs.get("high")))
        return COMPOSITES[name](**kwargs)

    def __enter__(self) -> Explainer:
        from zennit.attribution import Gradient, IntegratedGradients, Occlusion, SmoothGrad

        kind, name = self.method.kind, self.method.name
        if kind == "composite":
            self.attributor = Gradient(model=self.model, composite=self._composite(name))
        elif kind == "guided_gradcam":  # registered per batch: the Grad-CAM half needs the plain gradient
            self.attributor = Gradient(model=self.model, composite=self._composite("guided_backprop"))
        elif kind == "attributor":
            self.attributor = {"gradient": Gradient, "smoothgrad": SmoothGrad, "integrated_gradients": IntegratedGradients,
                               "occlusion": Occlusion}[name](model=self.model)
        if kind == "composite":
            self.attributor.__enter__()
            from ..fix.clarc import corrections_last  # a corrected model's projections after the rules' hooks

            corrections_last(self.model)
        return self

    def __exit__(self, *exc) -> None:
        if self.method.kind == "composite" and self.attributor is not None:
            self.attributor.__exit__(*exc)
        self.attributor = None

    def seed_fn(self, targets: Tensor | None):
        """The output attribution: one-hot (or one-hot × logit) of each sample's target, the arg-max when None."""
        def seed(output: Tensor) -> Tensor:
            chosen = output.argmax(1) if targets is None else targets
            hot = one_hot(chosen, output)
            return hot * output.detach() if self.method.seed == "logit" else hot
        return seed

    def __call__(self, x: Tensor, targets: Tensor | None, seed: int = 0) -> tuple[Tensor, Tensor]:
        """(attribution, logits) for a preprocessed batch; `targets` None = predicted labels. `seed` fixes the
        noise of SmoothGrad (jobs pass the batch's first sample index, so a resumed job draws the same noise)."""
        if self.attributor is None and self.method.kind != "cam":
            raise RuntimeError("use the Explainer inside `with`")
        kind = self.method.kind
        if kind == "composite" or self.method.name == "gradient":  # one pass: the seed picks predicted labels itself
            with torch.enable_grad():
                logits, attribution = self.attributor(x, self.seed_fn(targets))
            return attribution.detach(), logits.detach()
        if targets is None:
            with torch.no_grad():
                targets = self.model(x).argmax(1)
        if kind == "attributor":
            with torch.enable_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                torch.manual_seed(seed)
                logits, attribution = self.attributor(x, self.seed_fn(targets))
            return attribution.detach(), logits.detach()
        from .cam import cam

        maps, logits = cam(self.model, x, targets, self.layer, "gradcam" if kind == "guided_gradcam" else self.method.name)
        if kind == "cam":
            return maps[:, None], logits
        with torch.enable_grad(), self.attributor:
            from ..fix.clarc import corrections_last

            corrections_last(self.model)
            _, guided = self.attributor(x, self.seed_fn(targets))
        return guided_gradcam(guided.detach(), maps), logits


def guided_gradcam(guided, gradcam):
    """Guided Grad-CAM (N, 1, H, W): guided backprop (N, C, H, W) summed over channels × Grad-CAM (N, H, W) at the
    input size. Torch tensors or NumPy arrays, so the live explainer combines its cached halves the same way."""
    return (guided.sum(1) * gradcam)[:, None]


def resolve_targets(targets, n: int, n_classes: int, device: torch.device) -> Tensor | None:
    """Class indices (N,) from a strategy: "predicted_label" → None (decided from the output), an int → that class
    for every sample, a sequence → as given. Classes outside the model's outputs are an error."""
    if isinstance(targets, str):
        if targets != "predicted_label":
            raise RelaylabError.at("explain_batch", "targets", "'predicted_label', a class index, or one class index per sample", repr(targets))
        return None
    values = np.full(n, targets) if np.ndim(targets) == 0 else np.asarray(targets)
    if values.shape != (n,) or not np.issubdtype(values.dtype, np.integer):
        raise RelaylabError.at("explain_batch", "targets", f"{n} integer class indices", f"shape {values.shape}, dtype {values.dtype}")
    bad = (values < 0) | (values >= n_classes)
    if bad.any():
        raise RelaylabError(Problem("explain_batch", "targets", f"classes of the model's {n_classes} outputs", f"{np.unique(values[bad])[:5].tolist()}"))
    return torch.as_tensor(values, dtype=torch.long, device=device)


def explain_batch(model: nn.Module, x: Tensor, targets, method: str, layer: str | None = None, *, canonizers: str = "auto",
                  bounds: tuple[Tensor, Tensor] | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Attributions (N, C or 1, H, W) and logits (N, K) of one preprocessed batch, both float32 NumPy arrays."""
    explainer = Explainer(model, method, layer=layer, canonizer=canonizers, bounds=bounds)
    with torch.no_grad():
        n_classes = int(model(x[:1]).shape[1])
    chosen = resolve_targets(targets, x.shape[0], n_classes, x.device)
    with explainer:
        attribution, logits = explainer(x, chosen, seed=seed)
    return attribution.float().cpu().numpy(), logits.float().cpu().numpy()
