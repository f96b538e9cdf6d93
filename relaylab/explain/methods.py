"""The attribution methods relaylab knows, by name: what each is and what it needs (no torch, so the CLI's help and
argument checks load at once; `attribution.Explainer` runs them)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import RelaylabError

STRATEGIES = ("true_label", "predicted_label")


@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # composite (zennit rules + Gradient), attributor (zennit attributor, no rules), cam, guided_gradcam
    seed: str  # what the backward pass starts from: "logit" (one-hot × output) or "one_hot"
    doc: str


METHODS = {m.name: m for m in (
    Method("epsilon_plus", "composite", "logit", "LRP: epsilon for dense layers, z+ for convolutions"),
    Method("epsilon_plus_flat", "composite", "logit", "LRP epsilon_plus with the flat rule in the first layer (recommended for SpRAy)"),
    Method("epsilon_alpha2_beta1", "composite", "logit", "LRP: epsilon for dense layers, alpha2-beta1 for convolutions"),
    Method("epsilon_alpha2_beta1_flat", "composite", "logit", "LRP epsilon_alpha2_beta1 with the flat rule in the first layer"),
    Method("epsilon_gamma_box", "composite", "logit", "LRP: z-box in the first layer (bounds from the value range), gamma for convolutions"),
    Method("guided_backprop", "composite", "one_hot", "guided backpropagation"),
    Method("excitation_backprop", "composite", "one_hot", "excitation backpropagation"),
    Method("gradient", "attributor", "one_hot", "plain input gradient dy_c/dx"),
    Method("smoothgrad", "attributor", "one_hot", "SmoothGrad: gradients averaged over 20 noisy copies (noise 10% of the range)"),
    Method("integrated_gradients", "attributor", "one_hot", "Integrated Gradients from a zero (mean-image) baseline, 20 steps"),
    Method("occlusion", "attributor", "one_hot", "occlusion: target logit with only an 8x8 window kept, stride 8"),
    Method("gradcam", "cam", "one_hot", "Grad-CAM at --layer, upsampled to the input (one channel)"),
    Method("layercam", "cam", "one_hot", "LayerCAM at --layer, upsampled to the input (one channel)"),
    Method("focus_layercam", "cam", "one_hot", "Focus LayerCAM at --layer: LayerCAM over the channels with a positive Grad-CAM weight (one channel)"),
    Method("guided_gradcam", "guided_gradcam", "one_hot", "guided backprop (channel sum) × Grad-CAM at --layer (one channel)"),
)}


def method_help() -> str:
    return "\n".join(f"  {m.name:<26} {m.doc}" for m in METHODS.values())


def check_method(method: str, layer: str | None, where: str = "attribute") -> Method:
    """The method's registry entry; unknown methods, CAMs without a layer and layers given to non-CAMs are errors."""
    if method not in METHODS:
        raise RelaylabError.at(where, "method", f"one of {', '.join(METHODS)}", repr(method))
    entry = METHODS[method]
    if entry.kind in ("cam", "guided_gradcam") and not layer:
        raise RelaylabError.at(where, "layer", f"a layer for {method} (a conv layer; `relaylab layers` lists them)", "none")
    if entry.kind not in ("cam", "guided_gradcam") and layer:
        raise RelaylabError.at(where, "layer", f"no layer: {method} explains the input, only CAM methods take one", repr(layer))
    return entry


def attribution_channels(method: str, input_channels: int) -> int:
    """CAM-type attributions are one channel (a spatial map); the others have the input's channels."""
    return 1 if METHODS[method].kind in ("cam", "guided_gradcam") else input_channels
