"""Class Artifact Compensation (ClArC; Anders et al. 2022, "Finding and removing Clever Hans"): correct a model
along an artifact's direction in one layer.

P-ClArC projects the direction out at inference, a forward hook on the layer: a ← a − v vᵀ (a − z), with v the
CAV's unit direction and z the clean samples' mean activation (the CAV's reference), so every sample is moved onto
the hyperplane through the clean mean orthogonal to v. An activation with no component along v relative to z is left
as it is, so the model's outputs on such inputs do not change.

RR-ClArC (Pahde, Dreyer et al. 2023, "Reveal to Revise") fine-tunes instead: cross-entropy plus λ times the squared
gradient of each sample's class logit along v in the layer, (∂f_y/∂a · v)², so the model learns not to respond to
the direction at all rather than having it removed at inference.
"""

from __future__ import annotations

import torch
from torch import nn

from .cav import CAV


class Projection(nn.Module):
    """The P-ClArC projection of one layer's (flattened) output, as a module its forward hook calls."""

    def __init__(self, cav: CAV):
        super().__init__()
        self.register_buffer("direction", torch.as_tensor(cav.direction, dtype=torch.float32))
        self.register_buffer("reference", torch.as_tensor(cav.reference, dtype=torch.float32))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        flat = a.reshape(len(a), -1)
        if flat.shape[1] != self.direction.numel():
            raise ValueError(f"the CAV has {self.direction.numel()} features, the layer's output {flat.shape[1]}")
        v = self.direction.to(flat.dtype)
        along = (flat - self.reference.to(flat.dtype)) @ v
        return (flat - along[:, None] * v[None]).reshape(a.shape)


def add_projection(model: nn.Module, layer: str, cav: CAV) -> torch.utils.hooks.RemovableHandle:
    """Register P-ClArC on `layer` of `model` (a forward hook that replaces the layer's output); the handle removes it."""
    modules = dict(model.named_modules())
    if layer not in modules:
        raise KeyError(layer)
    projection = Projection(cav)
    return modules[layer].register_forward_hook(lambda module, inputs, output: projection(output))


def rr_clarc(model: nn.Module, layer: str, cav: CAV, x: torch.Tensor, y: torch.Tensor, *, strength: float = 10.0,
             epochs: int = 3, batch_size: int = 64, lr: float = 1e-4, seed: int = 0, progress: bool = False) -> nn.Module:
    """`model` fine-tuned in place with RR-ClArC's loss (see above) on (x, y); returned in eval mode. The global RNG
    is left as it was."""
    from tqdm.auto import tqdm

    modules = dict(model.named_modules())
    if layer not in modules:
        raise KeyError(layer)
    v = torch.as_tensor(cav.direction, dtype=torch.float32)
    captured = {}
    handle = modules[layer].register_forward_hook(lambda module, args, output: captured.__setitem__("a", output))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            order = torch.Generator().manual_seed(seed)
            model.train()
            for _ in tqdm(range(epochs), desc="RR-ClArC", unit="epoch", disable=not progress, leave=False):
                for rows in torch.randperm(len(x), generator=order).split(batch_size):
                    logits = model(x[rows])
                    a = captured["a"]
                    chosen = logits.gather(1, y[rows][:, None]).sum()
                    gradient, = torch.autograd.grad(chosen, a, create_graph=True)
                    penalty = ((gradient.reshape(len(rows), -1) @ v.to(gradient.dtype)) ** 2).mean()
                    loss = torch.nn.functional.cross_entropy(logits, y[rows]) + strength * penalty
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
    finally:
        handle.remove()
    return model.eval()
