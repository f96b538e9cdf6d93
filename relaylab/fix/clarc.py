"""Class Artifact Compensation (ClArC; Anders et al. 2022, "Finding and removing Clever Hans"): correct a model
along an artifact's direction in one layer.

P-ClArC projects the direction out at inference, a forward hook on the layer: a ← a − v vᵀ (a − z), with v the
CAV's unit direction and z the clean samples' mean activation (the CAV's reference), so every sample is moved onto
the hyperplane through the clean mean orthogonal to v. An activation with no component along v relative to z is left
as it is, so the model's outputs on such inputs do not change.

RR-ClArC (Pahde, Dreyer et al. 2023, "Reveal to Revise") fine-tunes instead: cross-entropy plus λ times the squared
gradient along v in the layer of the logits summed with random signs per sample and class, (∂(Σ_k s_k f_k)/∂a · v)²
(the authors' "all logits, random" choice): every output, not only the sample's own class, learns not to respond to
the direction, so the artifact cannot pull other classes' samples to its class either. A-ClArC (Anders et al. 2022) fine-tunes on data
with the artifact added to samples of every class, so it stops predicting any one of them.

A P-ClArC model keeps its architecture and weights (state-dict keys and layer names stay those of the original), the
projection is a forward hook. zennit's LRP rules hook the same layer and read the gradient at whatever output the
hooks before them returned, so `corrections_last` moves the projection behind them once a composite is registered
(`relaylab.explain.attribution.Explainer` does): relevance then flows through the projection like the forward pass.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .cav import CAV

METHODS = ("p-clarc", "rr-clarc", "a-clarc")


class Projection(nn.Module):
    """The P-ClArC projection of one layer's (flattened) output, as a module its forward hook calls."""

    def __init__(self, cav: CAV | None = None, *, direction=None, reference=None):
        super().__init__()
        direction = cav.direction if cav is not None else direction
        reference = cav.reference if cav is not None else reference
        self.register_buffer("direction", torch.as_tensor(np.asarray(direction), dtype=torch.float32).reshape(-1))
        self.register_buffer("reference", torch.as_tensor(np.asarray(reference), dtype=torch.float32).reshape(-1))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        flat = a.reshape(len(a), -1)
        if flat.shape[1] != self.direction.numel():
            raise ValueError(f"the CAV has {self.direction.numel()} features, the layer's output {flat.shape[1]}")
        v = self.direction.to(flat.dtype)
        along = (flat - self.reference.to(flat.dtype)) @ v
        return (flat - along[:, None] * v[None]).reshape(a.shape)


class ProjectionHook:
    """The forward hook P-ClArC registers: the layer's output replaced by its projection (a class of its own, so
    `corrections_last` recognises it among a layer's hooks)."""

    def __init__(self, projection: Projection):
        self.projection = projection

    def __call__(self, module, inputs, output):
        return self.projection(output)


def add_projection(model: nn.Module, layer: str, cav: CAV | Projection) -> torch.utils.hooks.RemovableHandle:
    """Register P-ClArC on `layer` of `model` (a forward hook that replaces the layer's output); the handle removes it."""
    modules = dict(model.named_modules())
    if layer not in modules:
        raise KeyError(layer)
    projection = cav if isinstance(cav, Projection) else Projection(cav)
    parameter = next(model.parameters(), None)
    if parameter is not None:
        projection = projection.to(parameter.device)
    return modules[layer].register_forward_hook(ProjectionHook(projection))


def corrections_last(model: nn.Module) -> None:
    """Move the model's projection hooks behind every other forward hook of their layers (see the module docstring)."""
    for module in model.modules():
        for hook_id, hook in list(module._forward_hooks.items()):  # torch keeps them in an ordered dict, run in order
            if isinstance(hook, ProjectionHook):
                module._forward_hooks.move_to_end(hook_id)


def apply_correction(model: nn.Module, spec) -> None:
    """Make `model` the corrected version `spec` (a `ModelSpec` with a `correction`) describes: P-ClArC registers its
    projection, stored with the weights; the fine-tuned versions (RR-, A-ClArC) are their weights."""
    correction = spec.correction
    if correction["method"] not in METHODS:
        raise spec.error("correction.method", f"one of {', '.join(METHODS)}", repr(correction["method"]))
    if correction["method"] != "p-clarc":
        return
    if correction["layer"] not in dict(model.named_modules()):
        raise spec.error("correction.layer", "a layer of the model", repr(correction["layer"]))
    checkpoint = torch.load(spec.weights_path(), map_location="cpu", weights_only=True)
    stored = checkpoint.get("correction") if isinstance(checkpoint, dict) else None
    if not isinstance(stored, dict) or not {"direction", "reference"} <= set(stored):
        raise spec.error("weights", "a checkpoint with the P-ClArC direction and reference (relaylab fix writes it)",
                         f"{spec.weights_path()}: none")
    add_projection(model, correction["layer"], Projection(direction=stored["direction"], reference=stored["reference"]))


def rr_clarc(model: nn.Module, layer: str | None, cav: CAV | None, x: torch.Tensor, y: torch.Tensor, *, strength: float = 10.0,
             epochs: int = 3, batch_size: int = 64, lr: float = 1e-4, seed: int = 0, progress: bool = False) -> nn.Module:
    """`model` fine-tuned in place with RR-ClArC's loss (see above) on (x, y) (tensors on the model's device); returned
    in eval mode. Without a layer (or with strength 0) plain cross-entropy fine-tuning, as A-ClArC uses. Batch-norm
    layers keep their running statistics. The global RNG is left as it was."""
    from tqdm.auto import tqdm

    penalised = layer is not None and cav is not None and strength > 0
    handle, captured = None, {}
    if penalised:
        modules = dict(model.named_modules())
        if layer not in modules:
            raise KeyError(layer)
        v = torch.as_tensor(cav.direction, dtype=torch.float32, device=x.device)
        handle = modules[layer].register_forward_hook(lambda module, args, output: captured.__setitem__("a", output), prepend=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            order = torch.Generator().manual_seed(seed)
            model.train()
            for module in model.modules():  # batch-norm statistics stay the trained network's (small fine-tuning batches)
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
            for _ in tqdm(range(epochs), desc="RR-ClArC" if penalised else "fine-tuning", unit="epoch", disable=not progress, leave=False):
                for rows in torch.randperm(len(x), generator=order).split(batch_size):
                    rows = rows.to(x.device)
                    logits = model(x[rows])
                    loss = torch.nn.functional.cross_entropy(logits, y[rows])
                    if penalised:
                        a = captured["a"]
                        chosen = (logits * torch.sign(0.5 - torch.rand_like(logits))).sum()
                        gradient, = torch.autograd.grad(chosen, a, create_graph=True)
                        along = gradient.reshape(len(rows), -1) @ v.to(gradient.dtype)
                        loss = loss + strength * (along ** 2).mean()
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
    finally:
        if handle is not None:
            handle.remove()
    return model.eval()
