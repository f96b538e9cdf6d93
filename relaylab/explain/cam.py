"""Grad-CAM, LayerCAM and Focus LayerCAM at any named layer of a torch model.

All read a layer's output A (N, K, h, w) and the gradient of each sample's selected logit y_c with respect to it:

* Grad-CAM (Selvaraju et al. 2017): ReLU(sum_k mean_ij(dy_c/dA_k) * A_k) -- one weight per channel.
* LayerCAM (Jiang et al. 2021): ReLU(sum_k ReLU(dy_c/dA_k) ⊙ A_k) -- one weight per position, so it stays
  meaningful at early, high-resolution layers where Grad-CAM's channel averages wash out.
* Focus LayerCAM (relaylab's own definition): LayerCAM over only the channels that support the class as a whole, those
  with a positive Grad-CAM weight: ReLU(sum_{k: mean_ij(dy_c/dA_k) > 0} ReLU(dy_c/dA_k) ⊙ A_k).

Maps are upsampled bilinearly to the input size and left unnormalised (raw values), so they can be compared with a
hand-written formula and with each other across layers; normalising is the viewer's job.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import RelaylabError

log = logging.getLogger(__name__)

METHODS = ("gradcam", "layercam", "focus_layercam")


def resolve_layers(model: nn.Module, layers: Iterable[str]) -> dict[str, nn.Module]:
    """Name → module, or a RelaylabError naming the unknown layer and a few the model does have."""
    modules = dict(model.named_modules())
    resolved = {}
    for name in layers:
        if name not in modules or name == "":
            known = [n for n in modules if n]
            shown = ", ".join(known[:8]) + (f", … ({len(known)} in all)" if len(known) > 8 else "")
            raise RelaylabError.at(f"model {type(model).__name__}", f"layer '{name}'", f"a named layer of the model, e.g. {shown}",
                                   "no such layer")
        resolved[name] = modules[name]
    return resolved


def check_method(method: str) -> None:
    if method not in METHODS:
        raise RelaylabError.at("cam", "method", f"one of {', '.join(METHODS)}", repr(method))


@contextmanager
def capture(model: nn.Module, layers: Iterable[str]) -> Iterator[dict[str, Tensor]]:
    """Record the outputs of the named layers during forward passes inside the block.

    The hook hands a copy downstream, so an in-place operation after the layer (VGG's ReLU(inplace=True)) cannot
    overwrite the recorded tensor: a Conv2d's recorded output stays the pre-ReLU activation, and gradients taken with
    respect to it are the conv output's gradients. A module called more than once (ResNet's shared ReLU) is recorded
    at its first call, as `models.list_layers` records its output shape.
    """
    outputs: dict[str, Tensor] = {}

    def hook_for(name: str):
        def hook(module, inputs, output):
            if not isinstance(output, Tensor):
                raise RelaylabError.at(f"model {type(model).__name__}", f"layer '{name}'", "a layer whose output is one tensor",
                                       type(output).__name__)
            if name in outputs:
                return None
            outputs[name] = output
            return output.clone()
        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in resolve_layers(model, layers).items()]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def cam_map(activation: Tensor, gradient: Tensor, method: str) -> Tensor:
    """One method's map (N, h, w) at the layer's own resolution (the formulas of the module docstring)."""
    check_method(method)
    channel_weights = gradient.mean(dim=(2, 3), keepdim=True)  # Grad-CAM's, per sample and channel
    if method == "gradcam":
        weighted = channel_weights * activation
    else:
        weighted = gradient.clamp(min=0) * activation
        if method == "focus_layercam":
            weighted = weighted * (channel_weights > 0)
    return weighted.sum(dim=1).clamp(min=0)


@dataclass
class CamResult:
    maps: dict[tuple[str, str], Tensor]  # (layer, method) → (N, H, W) float32 at the input size
    logits: Tensor  # (N, K)
    activations: dict[str, Tensor]  # layer → its output, detached (the CAM layers and the `keep` layers)


def cams(model: nn.Module, x: Tensor, targets: Tensor, layers: list[str], methods: Iterable[str] = METHODS, *,
         keep: Iterable[str] = ()) -> CamResult:
    """All requested CAMs from one forward and one backward pass, so a viewer's depth slider costs nothing extra.

    `keep` names further layers whose outputs are only recorded (e.g. fully connected layers, for which a CAM is
    undefined), so a caller can serve activations from the same pass.
    """
    methods = list(methods)
    for method in methods:
        check_method(method)
    keep = [name for name in keep if name not in layers]
    targets = torch.as_tensor(targets, dtype=torch.long, device=x.device).reshape(-1)
    if x.ndim != 4 or targets.shape[0] != x.shape[0]:
        raise RelaylabError.at("cam", "x, targets", "a batch (N, C, H, W) and N target classes",
                               f"x {tuple(x.shape)}, targets {tuple(targets.shape)}")
    with torch.set_grad_enabled(bool(layers)), capture(model, [*layers, *keep]) as outputs:
        x = x.detach().requires_grad_(bool(layers))  # makes the graph reach every layer even when the weights are frozen
        logits = model(x)
        n_classes = logits.shape[1]
        if uncalled := [name for name in [*layers, *keep] if name not in outputs]:
            raise RelaylabError.at(f"model {type(model).__name__}", f"layer '{uncalled[0]}'", "a layer that the forward pass calls",
                                   "a module the model never calls")
        if targets.numel() and (targets.min() < 0 or targets.max() >= n_classes):
            raise RelaylabError.at("cam", "targets", f"class indices in 0…{n_classes - 1}", str(targets.tolist()))
        for name in layers:
            if outputs[name].ndim != 4:
                raise RelaylabError.at(f"model {type(model).__name__}", f"layer '{name}'", "a layer with a spatial output (N, C, h, w) for a CAM",
                                       f"output shape {tuple(outputs[name].shape)}")
        selected = logits.gather(1, targets[:, None]).sum()  # samples are independent in eval mode: one backward for all
        gradients = torch.autograd.grad(selected, [outputs[name] for name in layers]) if layers else []
    size = x.shape[-2:]
    maps = {}
    with torch.no_grad():
        for name, gradient in zip(layers, gradients):
            activation = outputs[name].detach()
            for method in methods:
                small = cam_map(activation, gradient, method)
                maps[name, method] = F.interpolate(small[:, None], size=size, mode="bilinear", align_corners=False)[:, 0].float()
    return CamResult(maps, logits.detach(), {name: out.detach() for name, out in outputs.items()})


def cam(model: nn.Module, x: Tensor, targets: Tensor, layer: str, method: str = "gradcam") -> tuple[Tensor, Tensor]:
    """One CAM method's map of each sample's target class at `layer`: (maps (N, H, W) float32, logits (N, K))."""
    check_method(method)
    result = cams(model, x, targets, [layer], [method])
    return result.maps[layer, method], result.logits
