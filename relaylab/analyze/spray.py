"""Spectral Relevance Analysis of one category, as one scikit-learn estimator built from small steps.

    SpRAy(preprocessing, knn, affinity, spectral, clusterings={name: estimator}, embeddings={name: estimator})

`fit(heatmaps)` runs preprocessing → kNN graph → affinity → spectral embedding, then every clustering and 2-D
embedding on the spectral embedding. Each step is a scikit-learn estimator, so any scikit-learn clustering (or a
`Pipeline` ending in one) plugs in. Defaults follow CoRelAy's SpRAy: 10 neighbours, binary affinity symmetrised
(A + Aᵀ)/2, symmetric normalised Laplacian, 32 eigenvectors. Unlike CoRelAy's k-means on all 32 eigenvectors, the
default k-means for k clusters uses the k eigenvectors of smallest eigenvalue (Ng, Jordan & Weiss), and HDBSCAN is
run too, since a small planted group gives clusters of very unequal size that k-means with k = 2 splits wrongly.
"""

from __future__ import annotations

import contextlib
import functools
import logging

import numpy as np
import xarray as xr
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin, clone
from sklearn.cluster import HDBSCAN, KMeans
from sklearn.pipeline import Pipeline

from .graph import Affinity
from .preprocess import Flatten
from .spectral import SpectralEmbedding

log = logging.getLogger(__name__)


class SelectEigenvectors(TransformerMixin, BaseEstimator):
    """The first `n` coordinates of a spectral embedding (smallest eigenvalues first), rows rescaled to unit length."""

    def __init__(self, n: int | None = None, normalize_rows: bool = True):
        self.n = n
        self.normalize_rows = normalize_rows

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        X = np.asarray(X)[:, : self.n]
        if self.normalize_rows:
            X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), np.finfo(float).tiny)
        return X


def kmeans(k: int, eigenvectors: int | None = None, random_state=0, n_init: int = 10) -> Pipeline:
    """k-means with k clusters on the first `eigenvectors` (default k) spectral coordinates, the best of `n_init`
    k-means++ starts (scikit-learn's own default is one; CoRelAy uses that)."""
    return Pipeline([("select", SelectEigenvectors(eigenvectors or k)),
                     ("kmeans", KMeans(n_clusters=k, n_init=n_init, random_state=random_state))])


class Subsampled(ClusterMixin, BaseEstimator):
    """`clusterer` fitted on at most `max_samples` randomly chosen samples; every other sample takes the label of its
    nearest fitted sample (noise, -1, included).

    scikit-learn's HDBSCAN builds its minimum spanning tree with Prim's algorithm, O(n²) distance evaluations: seconds at
    20,000 samples, hours at 1,000,000. Clusters of a spectral embedding are dense, so a sample of 50,000 finds the
    same ones (down to min_cluster_size × n / max_samples samples); below `max_samples` this is `clusterer` itself.
    """

    def __init__(self, clusterer=None, max_samples: int = 50_000, random_state=0):
        self.clusterer = clusterer
        self.max_samples = max_samples
        self.random_state = random_state

    def fit(self, X, y=None):
        from sklearn.neighbors import KNeighborsClassifier
        from sklearn.utils import check_random_state

        X = np.asarray(X)
        if len(X) <= self.max_samples:
            self.labels_ = np.asarray(clone(self.clusterer).fit_predict(X))
            return self
        chosen = np.sort(check_random_state(self.random_state).choice(len(X), self.max_samples, replace=False))
        fitted = np.asarray(clone(self.clusterer).fit_predict(X[chosen]))
        log.info("%s on %d of %d samples, the rest labelled by their nearest fitted sample",
                 type(self.clusterer).__name__, self.max_samples, len(X))
        self.labels_ = np.empty(len(X), dtype=fitted.dtype)
        rest = np.setdiff1d(np.arange(len(X)), chosen, assume_unique=True)
        self.labels_[chosen] = fitted
        self.labels_[rest] = KNeighborsClassifier(n_neighbors=1).fit(X[chosen], fitted).predict(X[rest])
        return self

    def fit_predict(self, X, y=None):
        return self.fit(X).labels_


def hdbscan(min_cluster_size: int = 10, eigenvectors: int | None = 8, max_samples: int = 50_000, random_state=0) -> Pipeline:
    """HDBSCAN on the first `eigenvectors` spectral coordinates (of at most `max_samples` samples, see `Subsampled`);
    -1 marks noise."""
    return Pipeline([("select", SelectEigenvectors(eigenvectors)),
                     ("hdbscan", Subsampled(HDBSCAN(min_cluster_size=min_cluster_size, copy=True), max_samples, random_state))])


def default_clusterings(random_state=0) -> dict[str, ClusterMixin]:
    clusterings = {f"kmeans-{k:02d}": kmeans(k, random_state=random_state) for k in (2, 3, 4, 5)}
    clusterings["hdbscan"] = hdbscan()
    return clusterings


ONE_THREAD_BELOW = 2_000  # samples: below this, BLAS/OpenMP threads cost more to wake than the arithmetic they share


@functools.cache
def _threadpools():
    """One threadpoolctl controller per process (building one scans the loaded libraries, ~10 ms)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _one_thread(n: int):
    """BLAS and OpenMP limited to one thread for a small category: its k-means, eigensolver and products are too
    small to share, and on a worker with siblings the extra threads only oversubscribe the cores."""
    return _threadpools().limit(limits=1) if n < ONE_THREAD_BELOW else contextlib.nullcontext()


def default_knn():
    from .knn import KNNGraph

    return KNNGraph(n_neighbors=10)


class SpRAy(BaseEstimator):
    """One category's spectral relevance analysis. After `fit`: `eigenvalues_` (ascending), `embedding_`
    (n, n_eigenvectors), `labels_` {clustering: (n,)}, `embeddings_` {name: (n, d)} including "spectral",
    `n_connected_components_`."""

    def __init__(self, preprocessing=None, knn=None, affinity=None, spectral=None, clusterings=None, embeddings=None):
        self.preprocessing = preprocessing
        self.knn = knn
        self.affinity = affinity
        self.spectral = spectral
        self.clusterings = clusterings
        self.embeddings = embeddings

    def set_params(self, **params):
        self._checked = False
        return super().set_params(**params)

    def fit(self, X, y=None):
        """Parameters of every step are validated on the first fit (and the first after `set_params`); later fits of
        the same estimator skip scikit-learn's per-call checks, which cost more than a small category's arithmetic."""
        from sklearn import config_context

        with _one_thread(len(X)), config_context(skip_parameter_validation=getattr(self, "_checked", False)):
            self._fit(X)
        self._checked = True
        return self

    def _fit(self, X):
        features = clone(self.preprocessing or Flatten()).fit_transform(X)
        features = np.asarray(features).reshape(len(features), -1)
        graph = clone(self.knn or default_knn()).fit_transform(features)
        affinity = clone(self.affinity or Affinity()).fit_transform(graph)
        spectral = clone(self.spectral or SpectralEmbedding()).fit(affinity)
        self.eigenvalues_ = spectral.eigenvalues_
        self.embedding_ = spectral.embedding_
        self.n_connected_components_ = spectral.n_connected_components_
        clusterings = default_clusterings() if self.clusterings is None else self.clusterings
        self.labels_ = {name: np.asarray(clone(est).fit_predict(self.embedding_)) for name, est in clusterings.items()}
        self.embeddings_ = {"spectral": self.embedding_}
        for name, est in (self.embeddings or {}).items():
            self.embeddings_[name] = np.asarray(clone(est).fit_transform(self.embedding_), dtype=np.float32)

    def fit_predict(self, X, y=None):
        """The labels of the first clustering (scikit-learn's ClusterMixin contract)."""
        return next(iter(self.fit(X).labels_.values()))

    def to_tree(self, index: np.ndarray) -> xr.DataTree:
        """This category in relaylab's analysis form: `index`, `embedding/<name>`, `cluster`."""
        nodes = {"/": xr.Dataset(coords={"index": ("member", np.asarray(index, dtype=np.uint32))})}
        for name, values in self.embeddings_.items():
            coords = {"eigenvalue": ("component", self.eigenvalues_.astype(np.float32))} if name == "spectral" else {}
            attrs = {} if name == "spectral" else {"embedding": "spectral"}
            nodes[f"/embedding/{name}"] = xr.Dataset({"embedding": (("member", "component"), values.astype(np.float32))},
                                                     coords=coords, attrs=attrs)
        nodes["/cluster"] = xr.Dataset({name: ("member", labels.astype(np.int64), {"embedding": "spectral"})
                                        for name, labels in self.labels_.items()})
        return xr.DataTree.from_dict(nodes)
