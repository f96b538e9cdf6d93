"""The spectral step of SpRAy: the smallest eigenpairs of the normalised graph Laplacian.

With M = D^-1/2 A D^-1/2, L_sym = I - M, so the smallest Laplacian eigenvalues are 1 - (largest algebraic
eigenvalues of M). relaylab asks the eigensolver for those ('LA'). CoRelAy asks for the largest *magnitude* ones
('LM'), which on graphs with near-bipartite parts returns eigenvalues of M near -1, i.e. Laplacian eigenvalues near 2,
in place of small ones; where that happens the two differ and relaylab's are the right ones. CoRelAy also lists
eigenvalues largest first; relaylab lists them smallest first, with the eigenvectors in the same order.

A kNN graph of a clean class often has several connected components (λ = 0 repeats). Any basis of that null space is
a valid answer, and solvers return an arbitrary rotation of it; relaylab replaces it with the components' indicator
vectors, so the first coordinates say which component a sample is in.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state

from .graph import graph_components, normalized_affinity

log = logging.getLogger(__name__)

LAPLACIANS = ("symmetric", "random_walk")
SOLVERS = ("eigsh", "lobpcg", "dense")
DENSE_BELOW = 500  # samples: a dense eigendecomposition is faster and exact there


class SpectralEmbedding(TransformerMixin, BaseEstimator):
    """Smallest `n_components` eigenpairs of the normalised Laplacian of a sparse affinity matrix.

    After `fit`: `eigenvalues_` (ascending), `embedding_` (n, n_components), `n_connected_components_`.
    `normalize_rows` scales each sample's coordinates to unit length, as CoRelAy (and Ng, Jordan & Weiss) do.
    """

    def __init__(self, n_components: int = 32, laplacian: str = "symmetric", solver: str = "eigsh",
                 normalize_rows: bool = True, tol: float = 1e-6, max_iter: int | None = None,
                 device: str = "cpu", random_state=0):
        self.n_components = n_components
        self.laplacian = laplacian
        self.solver = solver
        self.normalize_rows = normalize_rows
        self.tol = tol
        self.max_iter = max_iter
        self.device = device
        self.random_state = random_state

    def fit(self, affinity, y=None):
        if self.laplacian not in LAPLACIANS:
            raise ValueError(f"laplacian must be one of {', '.join(LAPLACIANS)}, not {self.laplacian!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, not {self.solver!r}")
        affinity = sp.csr_matrix(affinity)
        n = affinity.shape[0]
        k = self.n_components
        if not 0 < k < n:
            raise ValueError(f"{k} eigenvectors need more than {k} samples; this category has {n}")
        self.n_connected_components_, components = graph_components(affinity)
        if self.n_connected_components_ > 1:
            log.info("the affinity graph has %d connected components", self.n_connected_components_)
        from .backend import array_namespace, sparse_namespace, to_device, to_numpy

        xp, xsp = array_namespace(self.device), sparse_namespace(self.device)
        operator, degree = normalized_affinity(xsp.csr_matrix(to_device(affinity, self.device)), xp, xsp)
        mu, vectors = self._largest(operator, k, xp, xsp, n)
        order = xp.argsort(-mu)
        eigenvalues, vectors = 1.0 - mu[order], vectors[:, order]
        eigenvalues, vectors = to_numpy(eigenvalues).astype(np.float64), to_numpy(vectors).astype(np.float64)
        degree = to_numpy(degree)
        vectors = self._null_space_indicators(eigenvalues, vectors, components, degree)
        if self.laplacian == "random_walk":  # L_rw u = λ u with u = D^-1/2 v
            vectors = vectors / np.sqrt(degree)[:, None]
            vectors /= np.linalg.norm(vectors, axis=0, keepdims=True)
        vectors = deterministic_signs(vectors)
        if self.normalize_rows:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), np.finfo(float).tiny)
        self.eigenvalues_ = np.clip(eigenvalues, 0.0, 2.0)
        self.embedding_ = vectors
        return self

    def transform(self, affinity=None):
        """The embedding of the fitted samples (spectral embeddings do not extend to new samples)."""
        return self.embedding_

    def _largest(self, operator, k, xp, xsp, n):
        """Largest algebraic eigenpairs of the normalised affinity."""
        rng = check_random_state(self.random_state)
        if self.solver == "dense" or n < DENSE_BELOW:
            mu, vectors = xp.linalg.eigh(operator.toarray())
            return mu[-k:], vectors[:, -k:]
        if self.solver == "lobpcg":
            from .backend import linalg_namespace

            start = xp.asarray(rng.standard_normal((n, k)))
            mu, vectors = linalg_namespace(self.device).lobpcg(operator, start, largest=True, tol=self.tol,
                                                               maxiter=self.max_iter or 500)
            return mu, vectors
        from .backend import linalg_namespace

        start = xp.asarray(rng.uniform(-1, 1, n))  # a fixed start vector makes ARPACK's result reproducible
        return linalg_namespace(self.device).eigsh(operator, k=k, which="LA", v0=start, tol=self.tol, maxiter=self.max_iter)

    def _null_space_indicators(self, eigenvalues, vectors, components, degree):
        """Replace the solver's arbitrary basis of λ = 0 by one normalised indicator per connected component."""
        c = self.n_connected_components_
        if c <= 1:
            return vectors
        vectors = vectors.copy()
        for j in range(min(c, vectors.shape[1])):
            indicator = np.where(components == j, np.sqrt(degree), 0.0)
            vectors[:, j] = indicator / np.linalg.norm(indicator)
            eigenvalues[j] = 0.0
        return vectors


def deterministic_signs(vectors: np.ndarray) -> np.ndarray:
    """Flip each eigenvector so its largest-magnitude entry is positive: solvers pick signs arbitrarily."""
    rows = np.abs(vectors).argmax(axis=0)
    signs = np.sign(vectors[rows, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1
    return vectors * signs
