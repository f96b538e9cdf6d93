"""From a kNN distance graph to affinities and normalised graph operators, on CPU (SciPy) or GPU (CuPy).

`Affinity` turns the sparse kNN distance graph (`KNNGraph.fit_transform`) into a symmetric sparse affinity:
- kernel="binary": 1 for each neighbour, symmetrised as CoRelAy does, (A + Aᵀ)/2, so mutual neighbours weigh 1 and
  one-sided ones 0.5;
- kernel="heat": exp(-d² / (2σ²)) with σ the median neighbour distance (or a given `sigma`), symmetrised the same way.

Laplacians are never formed densely: the spectral step needs only products with the normalised affinity
D^-1/2 A D^-1/2 (for L_sym = I - D^-1/2 A D^-1/2; L_rw = I - D^-1 A shares its eigenvalues).
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from sklearn.base import BaseEstimator, TransformerMixin

log = logging.getLogger(__name__)

KERNELS = ("binary", "heat")


class Affinity(TransformerMixin, BaseEstimator):
    """Sparse symmetric affinity from a sparse kNN distance graph (rows: a sample's neighbours)."""

    def __init__(self, kernel: str = "binary", sigma: float | None = None):
        self.kernel = kernel
        self.sigma = sigma

    def fit(self, graph, y=None):
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, not {self.kernel!r}")
        graph = sp.csr_matrix(graph)
        self.sigma_ = float(self.sigma if self.sigma is not None else np.median(graph.data)) if self.kernel == "heat" else None
        if self.kernel == "heat" and not self.sigma_ > 0:
            raise ValueError("the heat kernel needs a positive sigma; every neighbour distance is 0 (identical samples?)")
        return self

    def transform(self, graph):
        graph = sp.csr_matrix(graph, copy=True)
        if self.kernel == "binary":
            graph.data[:] = 1.0
        else:
            graph.data = np.exp(-(graph.data ** 2) / (2 * self.sigma_ ** 2))
        affinity = ((graph + graph.T) / 2).tocsr()
        affinity.eliminate_zeros()
        return affinity


def graph_components(affinity) -> tuple[int, np.ndarray]:
    """Connected components of the affinity graph: clean classes often fall apart into several."""
    return connected_components(sp.csr_matrix(affinity), directed=False)


def normalized_affinity(affinity, xp=np, xsp=sp):
    """D^-1/2 A D^-1/2 and the degrees; `xp`/`xsp` are NumPy/SciPy or CuPy/cupyx, so one code path serves both."""
    degree = xp.asarray(affinity.sum(axis=1)).ravel()
    if bool((degree <= 0).any()):
        raise ValueError(f"{int((degree <= 0).sum())} samples have no neighbours in the affinity graph")
    scale = xsp.diags(degree ** -0.5)
    return (scale @ affinity @ scale).tocsr(), degree
