"""LRP rules that give zennit's numbers with less work.

zennit computes a rule's relevance in a hook on the layer's input gradient: autograd first runs the layer's own
backward pass, whose result the hook then throws away. `Direct` rules instead replace the layer's output by a custom
autograd function whose backward pass is the rule itself (zennit's own `BasicHook.backward`), so the layer's plain
backward never runs.

zennit's `ZPlus` (alpha=1, beta=0) runs two modified forward and backward passes per layer: one for the positive
part of the input with the positive weights, one for the negative part with the negative weights. After a ReLU (the
case for every convolution but the first in VGG and ResNet) a layer's input has no negative entry, so the second
term is exactly zero: its input is all zeros and its bias is zeroed. `ZPlus` here skips it then, and falls back to
zennit's two-term computation whenever the input has a negative entry, so the relevance is the same bit for bit
(up to the sign of zeros). Together, a convolution costs three passes (forward, modified forward, modified backward)
instead of zennit's six, against a plain gradient's two.
"""

from __future__ import annotations

import torch
from zennit import rules
from zennit.core import ParamMod, RemovableHandle, RemovableHandleList


class _Relevance(torch.autograd.Function):
    """Passes the layer's output through; its backward pass is the rule's relevance for the layer's input."""

    @staticmethod
    def forward(ctx, input, output, hook, module, args, kwargs):
        ctx.save_for_backward(input)
        ctx.hook, ctx.module, ctx.args, ctx.kwargs = hook, module, args, kwargs
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        # What zennit's BasicHook.forward stores: the call's positional arguments (0.5 reads only the first) and, since
        # zennit 1.0, its keyword arguments, which 1.0's BasicHook.backward passes on to the modified forward passes.
        ctx.hook.stored_tensors.update(input=(input, *ctx.args), kwargs=ctx.kwargs)
        try:
            (relevance,) = ctx.hook.backward(ctx.module, (input,), (grad_output,))
        finally:
            ctx.hook.stored_tensors.pop("input", None)
            ctx.hook.stored_tensors.pop("kwargs", None)
        return relevance, None, None, None, None, None


class Direct:
    """Mixin for a zennit `BasicHook` rule: the same relevance, without the layer's discarded plain backward pass."""

    def register(self, module):
        return RemovableHandleList([RemovableHandle(self), module.register_forward_hook(self._replace_output, with_kwargs=True)])

    def _replace_output(self, module, args, kwargs, output):
        if not (torch.is_grad_enabled() and isinstance(output, torch.Tensor) and args and args[0].requires_grad):
            return None
        return _Relevance.apply(args[0], output.detach(), self, module, args[1:], kwargs)


class ZPlus(Direct, rules.ZPlus):
    """zennit's ZPlus rule, one term instead of two on non-negative inputs."""

    def backward(self, module, grad_input, grad_output):
        original = self.stored_tensors["input"][0]
        if bool((original < 0).any()):
            return super().backward(module, grad_input, grad_output)
        input = original.clone().requires_grad_()
        with ParamMod.ensure(self.param_modifiers[0])(module) as modified, torch.autograd.enable_grad():
            output = self.output_modifiers[0](modified.forward(input, *self.stored_tensors["input"][1:], **self.stored_tensors["kwargs"]))
        grad_output_scaled = self.gradient_mapper(grad_output[0], [output])[0]  # out_grad / stabilized(z+)
        (gradient,) = torch.autograd.grad(output, input, grad_outputs=grad_output_scaled,
                                          create_graph=grad_output[0].requires_grad)
        relevance = input * gradient
        return tuple(relevance if original.shape == relevance.shape else None for original in grad_input)


class Epsilon(Direct, rules.Epsilon):
    """zennit's Epsilon rule."""


class Flat(Direct, rules.Flat):
    """zennit's Flat rule."""


class AlphaBeta(Direct, rules.AlphaBeta):
    """zennit's AlphaBeta rule."""


class Gamma(Direct, rules.Gamma):
    """zennit's Gamma rule."""


class ZBox(Direct, rules.ZBox):
    """zennit's ZBox rule."""


FAST_COMPOSITES = ("epsilon_plus", "epsilon_plus_flat", "epsilon_alpha2_beta1", "epsilon_alpha2_beta1_flat", "epsilon_gamma_box")


def fast_maps(composite: str, epsilon: float = 1e-6, stabilizer: float = 1e-6, zero_params=None, low=None, high=None,
              gamma: float = 0.25) -> dict:
    """`layer_map` (and `first_map`) arguments that make one of zennit's composites in FAST_COMPOSITES use these rules,
    with that composite's own parameters (prepended to its maps, so they take precedence; every other layer keeps
    zennit's rule). `low`/`high` are epsilon_gamma_box's input bounds."""
    from torch import nn
    from zennit.types import Convolution, Linear

    kw = {"stabilizer": stabilizer, "zero_params": zero_params}
    conv = {"epsilon_plus": ZPlus, "epsilon_plus_flat": ZPlus,
            "epsilon_alpha2_beta1": lambda **k: AlphaBeta(alpha=2, beta=1, **k),
            "epsilon_alpha2_beta1_flat": lambda **k: AlphaBeta(alpha=2, beta=1, **k),
            "epsilon_gamma_box": lambda **k: Gamma(gamma=gamma, **k)}[composite]
    maps = {"layer_map": [(Convolution, conv(**kw)), (nn.Linear, Epsilon(epsilon=epsilon, zero_params=zero_params))]}
    if composite.endswith("_flat"):
        maps["first_map"] = [(Linear, Flat(**kw))]
    elif composite == "epsilon_gamma_box":
        maps["first_map"] = [(Convolution, ZBox(low=low, high=high, **kw))]
    return maps
