"""Numbers that say whether a shortcut is gone: what the artifact does to other classes' samples (flip rate), how
much relevance still falls on it, and how sensitive the model's class output is along its direction (TCAV).

The artifact itself is either given (an image and a mask) or estimated from the samples that carry it
(`estimated_artifact_of`): where their relevance concentrates, grown to the pixels where their inputs differ from
the rest of their category, filled with their mean input.
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
    beyond feature attribution: TCAV"). Measured at the layer's own output, before a P-ClArC projection on it: the
    projection makes the derivative along its direction exactly 0."""
    import torch

    modules = dict(model.named_modules())
    if layer not in modules:
        raise KeyError(layer)
    captured = {}

    def keep(module, args, output):
        output.retain_grad()
        captured["a"] = output

    handle = modules[layer].register_forward_hook(keep, prepend=True)  # the layer's own output, before any correction
    try:
        x = torch.as_tensor(inputs)
        model.zero_grad()
        model(x)[:, target].sum().backward()
    finally:
        handle.remove()
    gradient = captured["a"].grad.reshape(len(x), -1).detach().double().cpu().numpy()
    derivative = gradient @ np.asarray(direction, dtype=np.float64).ravel()
    # a derivative within rounding of 0 (P-ClArC's, exactly 0 in exact arithmetic) does not count as rising
    rising = derivative > 1e-6 * np.linalg.norm(gradient, axis=1)
    return float(np.mean(rising)), float(np.mean(derivative))


def estimate_artifact(inputs_in: np.ndarray, inputs_out: np.ndarray, heatmaps_in: np.ndarray,
                      heatmaps_out: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """(artifact (c, h, w), mask (h, w) float, how) from the inputs and heatmaps of the samples carrying it (`_in`)
    and of the rest of their category (`_out`): where the selection's relevance exceeds the rest's (the census mask,
    on its pooled grid), grown to the input pixels that tell the two groups' inputs apart (connected regions of at
    least half the largest mean difference that touch the relevance mask); filled with the selection's mean input.
    The relevance mask alone picks an artifact's most relevant pixels (often its edges), too few to paste it back;
    the input contrast alone would also pick the category's own shapes."""
    from scipy import ndimage

    from ..analyze.census import cluster_summaries, relevance_maps

    maps = relevance_maps(np.concatenate([heatmaps_in, heatmaps_out]))
    labels = np.r_[np.ones(len(heatmaps_in), np.int32), np.zeros(len(heatmaps_out), np.int32)]
    summary = cluster_summaries(maps, labels, np.zeros(len(labels)), np.zeros((len(labels), 1)), np.arange(len(labels)), max_clusters=2,
                                typical=0)
    relevance = summary["mask"][int(np.flatnonzero(summary["cluster_id"] == 1)[0])]
    inside, outside = np.asarray(inputs_in, dtype=np.float32), np.asarray(inputs_out, dtype=np.float32)
    height, width = inside.shape[-2:]
    full = upsample_mask(relevance, height, width)
    grown = ndimage.binary_dilation(full, iterations=max(1, height // relevance.shape[0])) if full.any() else full
    contrast = np.abs(inside.mean(axis=0) - outside.mean(axis=0)).sum(axis=0)
    mask = full
    if contrast.max() > 0:
        regions, _ = ndimage.label(contrast >= 0.5 * contrast.max(), structure=np.ones((3, 3)))
        touching = np.setdiff1d(np.unique(regions[grown]), [0])
        if len(touching):
            mask = np.isin(regions, touching)
    how = {"source": "estimated", "relevance_mask_pixels": int(full.sum()), "mask_pixels": int(mask.sum()), "samples": int(len(inside))}
    return inside.mean(axis=0), mask.astype(np.float32), how


def estimated_artifact_of(project, selection, attribution: str | None = None, max_rows: int = 500,
                          seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """`estimate_artifact` of a `relaylab.fix.job.Selection` in its project: at most `max_rows` samples a side, the
    heatmaps of the attribution set its analysis was computed on."""
    from ..explore.data import small_read
    from .job import attribution_method, read_inputs

    if attribution is None:
        attribution = attribution_method(project, selection.analysis)[0]
    if attribution not in project.attributions:
        raise ValueError(f"no attribution set {attribution!r} to estimate the artifact's mask from")
    rng = np.random.default_rng(seed)
    rest = np.setdiff1d(selection.members, selection.samples)
    pick = lambda rows: rows if len(rows) <= max_rows else np.sort(rng.choice(rows, max_rows, replace=False))  # noqa: E731
    inside, outside = pick(selection.samples), pick(rest)
    heatmaps = project.attributions[attribution]["attribution"]
    artifact, mask, how = estimate_artifact(read_inputs(project, inside), read_inputs(project, outside),
                                            small_read(heatmaps.sel(sample=inside)), small_read(heatmaps.sel(sample=outside)))
    return artifact, mask, {**how, "attribution": attribution}
