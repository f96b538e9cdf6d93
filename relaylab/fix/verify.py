"""Numbers that say whether a shortcut is gone: what the artifact does to other classes' samples (flip rate), how
much relevance still falls on it, and how sensitive the model's class output is along its direction (TCAV).

The artifact itself is either given (an image and a mask) or estimated from the samples that carry it: the census
mask of their cluster (where their relevance concentrates) scaled up to the input size, filled with their mean input
there (`estimated_artifact`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def paste(images: np.ndarray, artifact: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`images` (n, c, h, w) with the artifact drawn in: x · (1 − mask) + artifact · mask; `artifact` (c, h, w),
    `mask` (h, w), (1, h, w) or (c, h, w) in [0, 1]."""
    images = np.asarray(images)
    if mask.ndim == 2:
        mask = mask[None]
    if artifact.shape[-2:] != images.shape[-2:] or mask.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"artifact {artifact.shape} and mask {mask.shape} must match the images' size {images.shape[-2:]}")
    return (images * (1 - mask) + artifact * mask).astype(images.dtype, copy=False)


def upsample_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A (h', w') mask at (height, width) by nearest neighbour (the census pools maps to at most 32²)."""
    mask = np.asarray(mask)
    rows = np.minimum(np.arange(height) * mask.shape[0] // height, mask.shape[0] - 1)
    cols = np.minimum(np.arange(width) * mask.shape[1] // width, mask.shape[1] - 1)
    return mask[np.ix_(rows, cols)]


def estimated_artifact(inputs: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(artifact (c, h, w), mask (h, w) as float) from the inputs of the samples that carry it and their cluster's
    census mask: their mean input inside the mask, scaled to the input size."""
    inputs = np.asarray(inputs, dtype=np.float32)
    full = upsample_mask(np.asarray(mask, dtype=bool), inputs.shape[-2], inputs.shape[-1]).astype(np.float32)
    return inputs.mean(axis=0) * full[None], full


def flip_rate(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, labels: np.ndarray, target: int,
              artifact: np.ndarray, mask: np.ndarray) -> float:
    """Share of the samples of other classes that `predict` gets right without the artifact and calls `target` with
    it pasted in; nan when there are none."""
    labels = np.asarray(labels)
    others = np.flatnonzero(labels != target)
    if len(others) == 0:
        return float("nan")
    right = others[predict(images[others]) == labels[others]]
    if len(right) == 0:
        return float("nan")
    return float(np.mean(predict(paste(images[right], artifact, mask)) == target))


def relevance_in_mask(heatmaps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per sample, the share of its positive relevance (summed over channels) inside `mask` (h, w); 0 for a map
    without positive relevance."""
    maps = np.asarray(heatmaps, dtype=np.float64)
    if maps.ndim == 4:
        maps = maps.sum(axis=1)
    positive = np.clip(maps, 0, None)
    total = positive.sum(axis=(1, 2))
    inside = (positive * np.asarray(mask, dtype=bool)).sum(axis=(1, 2))
    return np.divide(inside, total, out=np.zeros_like(total), where=total > 0)


def tcav(model, layer: str, direction: np.ndarray, inputs, target: int) -> tuple[float, float]:
    """(TCAV score, mean directional derivative): the share of `inputs` whose `target` logit rises along the
    direction in `layer`'s (flattened) output, and the mean of that derivative (Kim et al. 2018, "Interpretability
    beyond feature attribution: TCAV")."""
    import torch

    modules = dict(model.named_modules())
    if layer not in modules:
        raise KeyError(layer)
    captured = {}

    def keep(module, args, output):
        output.retain_grad()
        captured["a"] = output

    handle = modules[layer].register_forward_hook(keep)
    try:
        x = torch.as_tensor(inputs)
        model.zero_grad()
        model(x)[:, target].sum().backward()
    finally:
        handle.remove()
    gradient = captured["a"].grad.reshape(len(x), -1).detach().numpy()
    derivative = gradient @ np.asarray(direction, dtype=np.float64).ravel()
    return float(np.mean(derivative > 0)), float(np.mean(derivative))
