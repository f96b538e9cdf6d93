"""Heatmap preprocessing for SpRAy, as scikit-learn transformers on (sample, channel, y, x) arrays.

Each step does one thing, so they compose in `sklearn.pipeline.make_pipeline`:
`ChannelReduce` (sum or norm over channels), `Pool` (sum/mean pooling to a target size), `Normalize` (per sample),
`Flatten` (to (sample, features) for the kNN graph). PCA or random projections come from scikit-learn itself.
All are stateless: `fit` checks parameters only.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin


class _Stateless(TransformerMixin, BaseEstimator):
    def fit(self, X, y=None):
        self._check()
        return self

    def _check(self) -> None:
        pass

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags


def _as_4d(X) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 4:
        raise ValueError(f"expected heatmaps of shape (sample, channel, y, x), got shape {X.shape}")
    return X


class ChannelReduce(_Stateless):
    """Fold the channels of each heatmap into one: `sum` (signed relevance, zennit's convention), `abs` (sum of
    magnitudes) or `norm` (L2 over channels)."""

    METHODS = ("sum", "abs", "norm")

    def __init__(self, method: str = "sum"):
        self.method = method

    def _check(self):
        if self.method not in self.METHODS:
            raise ValueError(f"method must be one of {', '.join(self.METHODS)}, not {self.method!r}")

    def transform(self, X):
        self._check()
        X = _as_4d(X)
        if self.method == "sum":
            return X.sum(axis=1, keepdims=True)
        if self.method == "abs":
            return np.abs(X).sum(axis=1, keepdims=True)
        return np.sqrt((X.astype(np.float64) ** 2).sum(axis=1, keepdims=True)).astype(X.dtype)


class Pool(_Stateless):
    """Sum or mean pooling of each heatmap to `size` (height, width), which must divide the input size: a coarse
    heatmap keeps where relevance is while making the kNN graph cheaper and less sensitive to small shifts."""

    REDUCTIONS = ("sum", "mean")

    def __init__(self, size: tuple[int, int] = (32, 32), reduce: str = "sum"):
        self.size = size
        self.reduce = reduce

    def _check(self):
        if self.reduce not in self.REDUCTIONS:
            raise ValueError(f"reduce must be one of {', '.join(self.REDUCTIONS)}, not {self.reduce!r}")

    def transform(self, X):
        self._check()
        X = _as_4d(X)
        n, c, h, w = X.shape
        th, tw = self.size
        if h % th or w % tw:
            raise ValueError(f"pooling size {th}×{tw} must divide the heatmap size {h}×{w}")
        blocks = X.reshape(n, c, th, h // th, tw, w // tw)
        return blocks.sum(axis=(3, 5)) if self.reduce == "sum" else blocks.mean(axis=(3, 5))


class Normalize(_Stateless):
    """Per-sample normalisation, so that the analysis compares *where* relevance is, not how much there is.

    `sum` divides by the sample's total (CoRelAy's example; an all-zero or zero-sum heatmap is left as it is),
    `max` by its largest magnitude, `l2` by its Euclidean norm, `none` leaves values unchanged."""

    NORMS = ("sum", "max", "l2", "none")

    def __init__(self, norm: str = "sum"):
        self.norm = norm

    def _check(self):
        if self.norm not in self.NORMS:
            raise ValueError(f"norm must be one of {', '.join(self.NORMS)}, not {self.norm!r}")

    def transform(self, X):
        self._check()
        X = np.asarray(X)
        if self.norm == "none":
            return X
        flat = X.reshape(X.shape[0], -1)
        if self.norm == "sum":
            scale = flat.sum(axis=1)
        elif self.norm == "max":
            scale = np.abs(flat).max(axis=1)
        else:
            scale = np.linalg.norm(flat, axis=1)
        scale = np.where(scale == 0, 1, scale).astype(X.dtype)
        return X / scale.reshape((-1,) + (1,) * (X.ndim - 1))


class Flatten(_Stateless):
    """(sample, ...) → (sample, features)."""

    def transform(self, X):
        X = np.asarray(X)
        return X.reshape(X.shape[0], -1)
