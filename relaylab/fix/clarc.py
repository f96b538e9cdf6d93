"""Class Artifact Compensation (ClArC; Anders et al. 2022, "Finding and removing Clever Hans"): correct a model
along an artifact's direction in one layer.

P-ClArC projects the direction out at inference, a forward hook on the layer: a ← a − v vᵀ (a − z), with v the
CAV's unit direction and z the clean samples' mean activation (the CAV's reference), so every sample is moved onto
the hyperplane through the clean mean orthogonal to v. An activation with no component along v relative to z is left
as it is, so the model's outputs on such inputs do not change.
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
