"""The k-nearest-neighbour graph of SpRAy without CoRelAy's dense N×N distance matrix.

`KNNGraph` finds each sample's `n_neighbors` nearest other samples (euclidean) either

- exactly, by chunked brute force on BLAS: squared distances |x|² + |y|² − 2 x·yᵀ of a block of query rows against
  a block of reference rows (one GEMM), a partition for the block's k best, merged into a running top-k per query
  row. Memory is O(chunk_size² + n·k), never O(n²); a Dask array is read block by block, so the samples never need to
  be in memory together. The code is written against the array namespace of `backend`, so the same lines run on NumPy
  ("cpu") and CuPy ("cuda"); or
- approximately, with pynndescent's NN-descent, when the exact search would be too slow (method="auto" above
  `exact_max_samples`).

Sparse graph convention (`fit_transform`, `transform` of the fitted samples): an n × n `scipy.sparse.csr_matrix` whose
row i holds exactly k entries, the euclidean distances to sample i's k nearest *other* samples, in ascending order of
distance; nnz = n·k. Self is excluded (by index, so an exact duplicate of i is kept as a neighbour at distance 0,
stored as an explicit zero: never call `eliminate_zeros` on the graph). These are the edges of CoRelAy's `SparseKNN`
(argsort of each distance row without its first column) and what `relaylab.analyze.graph.Affinity` and
`sklearn.manifold.SpectralEmbedding(affinity="precomputed_nearest_neighbors", n_neighbors=k)` expect: the latter
queries the precomputed graph with X given and would otherwise count each sample as its own neighbour.
scikit-learn's `KNeighborsTransformer(n_neighbors=k, mode="distance")` instead stores k + 1 entries per row with the
sample itself first (an explicit 0), for estimators that query with X=None and drop the first column (Isomap,
TSNE(metric="precomputed")); `include_self=True` gives that layout.

Precision: float32 input is searched in float32 (half the memory and twice the GEMM speed of float64), other input in
float64. The data are centred (mean in float64) before the GEMM, which removes most of the cancellation of the
|x|² + |y|² − 2 x·y expansion; the k distances that are returned are then recomputed directly as |x − y| of the chosen
pairs, so they are accurate (duplicates come out exactly 0). Only the choice among near-ties (distances equal to about
1e-6 relative in float32) can differ from a float64 brute force.

Method choice. `python -m benchmarks knn` measures it (exact vs pynndescent at both widths: CPU and wall time, their
ratios, recall@10, pynndescent's first-call cost in a fresh process, and the crossover estimate below, on blobs and
attribution-like data). The exact search costs n²·d (the GEMM) plus n² (the selection); pynndescent grows about
linearly in n, so warm, i.e. after its first call in the process, it is faster from a few thousand samples on, and
5-15 times faster at 20,000. But its first call in a process also compiles its numba kernels, most of them uncached,
once per process (so once per Dask worker), which costs more CPU time than an exact search of 20,000 samples. Counting
that compilation, the exact search stays the cheaper one up to about 1.5-2 times 20,000 samples at d = 256 and 1024,
and it is exact, while pynndescent's recall@10 falls as n grows: at its default width (k + 1 neighbours) most on
isotropic Gaussian blobs in 256-1024 dimensions (the hard case for any graph method), much less on attribution-like
data, which vary along few directions; this module's width 2k + 1 (`APPROXIMATE_WIDTH`) recovers most of it for about
twice pynndescent's time. `EXACT_MAX_SAMPLES["cpu"] = 20,000` therefore keeps the exact answer below that crossover,
with a margin for the compilation cost (which varies from run to run, and is paid only once when one process builds
several graphs), and leaves larger groups, where the n² term dominates, to pynndescent.

On "cuda" (CuPy, with torch for the GEMM and the top-k) float32 distances are computed in TF32 on the tensor cores
and 2k candidates per row are kept, then ranked by their exactly recomputed distances, so TF32's ~1e-3 relative
error only chooses candidates; each block's candidates are picked with torch.topk, since CuPy's partition sorts whole
rows. `python -m benchmarks gpu` times the GPU search.
"""

from __future__ import annotations

import logging
import math
import numbers
import time

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ..compute import device_kind
from .backend import array_namespace, to_numpy

log = logging.getLogger(__name__)

METHODS = ("auto", "exact", "approximate")
METRICS = ("euclidean",)
# Working memory of the exact search: two block × block buffers (distances and a copy to partition) and a mask.
MEMORY_BUDGET = {"cpu": 256 * 2**20, "cuda": 2 * 2**30}
# method="auto" searches exactly up to this many samples (why: the module docstring; measured by `python -m
# benchmarks knn`).
EXACT_MAX_SAMPLES = {"cpu": 20_000, "cuda": 2_000_000}
# pynndescent builds a graph of APPROXIMATE_WIDTH * k + 1 neighbours, of which the k nearest are kept: at k + 1 its
# recall@10 fell to 0.94 at 50,000 attribution-like samples; at 2k + 1 it is 0.997 for about twice pynndescent's time
# (`python -m benchmarks knn --sizes n=50000 --kinds attribution-like`).
APPROXIMATE_WIDTH = 2


class KNNGraph(TransformerMixin, BaseEstimator):
    """Sparse k-nearest-neighbour distance graph of the samples (rows) of an (n, d) array.

    Parameters
    ----------
    n_neighbors : neighbours per sample, the sample itself not counted.
    method : "exact", "approximate" (pynndescent) or "auto" (exact up to `exact_max_samples` samples).
    chunk_size : rows per query block and per reference block of the exact search; None chooses it from
        `MEMORY_BUDGET` of the device (about 4,096 rows for float32 on "cpu").
    device : "cpu" (NumPy) or "cuda" / "cuda:N" (CuPy, the relaylab[gpu] extra) for the exact search; pynndescent runs on CPU.
    metric : "euclidean" (the distance of CoRelAy's SpRAy).
    random_state : seed of pynndescent's random projection trees and NN-descent.
    exact_max_samples : largest n that method="auto" searches exactly; None takes `EXACT_MAX_SAMPLES[device]`.
    include_self : store each sample as its own first neighbour (distance 0), scikit-learn's KNeighborsTransformer
        layout with k + 1 entries per row; False (default) stores the k other samples only.

    Attributes after `fit`: `indices_` (n, k) int64, `distances_` (n, k) ascending, `method_` ("exact" or
    "approximate"), `chunk_size_` (exact search), `n_samples_fit_`, `n_features_in_`.
    """

    def __init__(self, n_neighbors: int = 10, method: str = "auto", chunk_size: int | None = None,
                 device: str = "cpu", metric: str = "euclidean", random_state=None,
                 exact_max_samples: int | None = None, include_self: bool = False):
        self.n_neighbors = n_neighbors
        self.method = method
        self.chunk_size = chunk_size
        self.device = device
        self.metric = metric
        self.random_state = random_state
        self.exact_max_samples = exact_max_samples
        self.include_self = include_self

    # -- scikit-learn API -------------------------------------------------------------------------------------------

    def fit(self, X, y=None):
        """Find every sample's `n_neighbors` nearest other samples."""
        self._check_params()
        X = _as_2d(X, self.device)
        n, d = X.shape
        k = self.n_neighbors
        if n < k + 1:
            raise ValueError(f"a {k}-nearest-neighbour graph needs at least {k + 1} samples (each sample and {k} "
                             f"others); got {n} samples. Lower n_neighbors or analyse a larger group.")
        dtype = _compute_dtype(X.dtype)
        mean = _finite_mean(X, self.device)
        limit = self.exact_max_samples if self.exact_max_samples is not None else EXACT_MAX_SAMPLES[device_kind(self.device)]
        method = self.method if self.method != "auto" else ("exact" if n <= limit else "approximate")
        log.info("kNN graph of %d samples x %d features, k=%d: %s search on %s", n, d, k, method,
                 self.device if method == "exact" else "cpu (pynndescent)")
        start = time.perf_counter()
        if method == "exact":
            self.chunk_size_ = self._chunk_rows(n, d, dtype)
            indices, distances = exact_kneighbors(X, X, k, self.chunk_size_, self.device, mean=mean, dtype=dtype,
                                                  exclude_self=True)
        else:
            self.chunk_size_ = None
            indices, distances = self._approximate(X, k, dtype, mean)
        log.info("kNN graph done in %.1f s", time.perf_counter() - start)
        self.indices_, self.distances_ = indices, distances
        self.method_ = method
        self.n_samples_fit_, self.n_features_in_ = n, d
        self._fit_X, self._fit_mean, self._fit_dtype = X, mean, dtype
        return self

    def fit_transform(self, X, y=None):
        """`fit`, then the graph of the fitted samples (see the module docstring for its layout)."""
        return self.fit(X)._graph()

    def transform(self, X):
        """The graph of the fitted samples when X is them; for new samples, their k nearest fitted samples
        (exact search; an m × n_fit matrix, nothing excluded, k + include_self entries per row as in
        scikit-learn's KNeighborsTransformer)."""
        check_is_fitted(self, "indices_")
        X = _as_2d(X, self.device)
        if _same_data(X, self._fit_X):
            return self._graph()
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but KNNGraph was fitted with {self.n_features_in_}")
        _finite_mean(X, self.device)  # raises on NaN/inf rows
        k = self.n_neighbors + bool(self.include_self)
        if k > self.n_samples_fit_:
            raise ValueError(f"{k} neighbours requested but only {self.n_samples_fit_} samples were fitted")
        indices, distances = exact_kneighbors(X, self._fit_X, k, self._chunk_rows(max(len(X), self.n_samples_fit_),
                                              self.n_features_in_, self._fit_dtype), self.device,
                                              mean=self._fit_mean, dtype=self._fit_dtype, exclude_self=False)
        return _csr(indices, distances, self.n_samples_fit_)

    # -- internals --------------------------------------------------------------------------------------------------

    def _check_params(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if device_kind(self.device) == "cuda":
            array_namespace(self.device)  # fail now, not after a pass over the data, when CuPy is missing
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, not {self.metric!r}")
        if not _is_int(self.n_neighbors, 1):
            raise ValueError(f"n_neighbors must be a positive integer, not {self.n_neighbors!r}")
        if self.chunk_size is not None and not _is_int(self.chunk_size, 1):
            raise ValueError(f"chunk_size must be a positive integer or None, not {self.chunk_size!r}")
        if self.exact_max_samples is not None and not _is_int(self.exact_max_samples, 0):
            raise ValueError("exact_max_samples must be a non-negative integer or None, "
                             f"not {self.exact_max_samples!r}")

    def _chunk_rows(self, n, d, dtype):
        if self.chunk_size is not None:
            return int(min(self.chunk_size, n))
        return auto_chunk_size(n, d, dtype, MEMORY_BUDGET[device_kind(self.device)])

    def _approximate(self, X, k, dtype, mean):
        """pynndescent on the CPU; its distances are then recomputed in `dtype` like the exact ones."""
        from pynndescent import NNDescent

        if _is_dask(X):
            log.warning("approximate kNN needs all %d samples in memory (%.1f GB); loading the Dask array",
                        X.shape[0], X.shape[0] * X.shape[1] * 4 / 1e9)
            X = X.compute()
        source = to_numpy(X)
        data = np.ascontiguousarray(source, dtype=np.float32)
        width = min(APPROXIMATE_WIDTH * k + 1, len(data))
        index = NNDescent(data, n_neighbors=width, metric="euclidean", random_state=self.random_state)
        found, _ = index.neighbor_graph
        del index
        indices = _drop_self(np.asarray(found, dtype=np.int64))[:, :k]
        missing = np.flatnonzero((indices < 0).any(axis=1))
        distances = np.empty(indices.shape, dtype=dtype)
        step = 1024
        for start in range(0, len(indices), step):  # direct |x - y| of the found pairs in `dtype`, sorted again
            rows = np.arange(start, min(start + step, len(indices)))
            safe = np.where(indices[rows] < 0, rows[:, None], indices[rows])
            distances[rows] = _pair_distances(np.asarray(source[rows], dtype=dtype), source, safe, dtype, np)
        distances[indices < 0] = np.inf
        order = np.argsort(distances, axis=1, kind="stable")
        indices, distances = np.take_along_axis(indices, order, 1), np.take_along_axis(distances, order, 1)
        if len(missing):  # NN-descent could not fill these rows: search them exactly
            log.info("pynndescent left %d rows short of %d neighbours; searching them exactly", len(missing), k)
            fixed_i, fixed_d = exact_kneighbors(source[missing], source, k, auto_chunk_size(
                len(source), source.shape[1], dtype, MEMORY_BUDGET["cpu"]), "cpu", mean=mean, dtype=dtype,
                exclude_self=True, query_ids=missing)
            indices[missing], distances[missing] = fixed_i, fixed_d
        return indices, distances

    def _graph(self):
        """The n × n CSR graph of the fitted samples."""
        indices, distances = self.indices_, self.distances_
        if self.include_self:
            n = len(indices)
            indices = np.concatenate([np.arange(n, dtype=np.int64)[:, None], indices], axis=1)
            distances = np.concatenate([np.zeros((n, 1), distances.dtype), distances], axis=1)
        return _csr(indices, distances, self.n_samples_fit_)


# -- the exact search, one code path for NumPy and CuPy -------------------------------------------------------------

def auto_chunk_size(n: int, d: int, dtype, budget: int) -> int:
    """Rows per block so that the block × block work (distances, a copy to partition, a mask, with room to spare:
    2 × itemsize + 8 bytes an entry) and the blocks themselves stay within `budget` bytes."""
    itemsize = np.dtype(dtype).itemsize
    rows = int(math.sqrt(budget / (2 * itemsize + 8)))
    rows = min(rows, max(1, budget // (4 * d * itemsize)))
    return max(1, min(rows, n))


def exact_kneighbors(queries, references, k: int, chunk_size: int, device: str = "cpu", *, mean=None,
                     dtype=np.float64, exclude_self: bool = True, query_ids=None):
    """The k nearest rows of `references` to each row of `queries`, by blocks of `chunk_size` rows.

    `queries`/`references`: NumPy, CuPy or Dask arrays. Dask ones are read block by block: the queries once, the
    references once per block of queries (n_queries / chunk_size passes, so larger blocks read less). With
    `exclude_self`, query row i (global id `query_ids[i]`, default i) never gets reference row `query_ids[i]`: self
    is excluded by index, so exact duplicates of it stay. Returns NumPy (indices int64, distances `dtype`),
    ascending by distance.
    """
    xp = array_namespace(device)
    dtype = np.dtype(dtype)
    final_k, gemm = k, None
    if device_kind(device) == "cuda" and dtype == np.float32 and (gemm := _tf32_gemm()) is not None:
        k = min(2 * k, references.shape[0] - exclude_self)  # TF32 candidates, oversampled; ranked exactly below
    center = xp.asarray(np.zeros(references.shape[1]) if mean is None else to_numpy(mean), dtype=dtype)
    stream = _is_dask(references)
    ref = references if stream else xp.asarray(references)
    n_q, n_r = queries.shape[0], references.shape[0]
    ids = np.arange(n_q) if query_ids is None else np.asarray(query_ids)
    out_i = np.empty((n_q, final_k), dtype=np.int64)
    out_d = np.empty((n_q, final_k), dtype=dtype)
    ref_blocks = [(a, min(a + chunk_size, n_r)) for a in range(0, n_r, chunk_size)]
    refine_rows = max(1, MEMORY_BUDGET[device_kind(device)] // (4 * k * references.shape[1] * dtype.itemsize))
    # two block-sized work buffers, reused: fresh 64 MB arrays cost page faults on every block
    space = xp.empty(2 * min(chunk_size, n_q) * min(chunk_size, n_r), dtype=dtype)
    for q0 in range(0, n_q, chunk_size):
        q1 = min(q0 + chunk_size, n_q)
        q = _block(queries, q0, q1, xp, dtype, center)
        q_minus2 = q * -2
        q_ids = xp.asarray(ids[q0:q1])
        best_d = xp.full((q1 - q0, k), xp.inf, dtype=dtype)
        best_i = xp.full((q1 - q0, k), -1, dtype=xp.int64)
        for r0, r1 in ref_blocks:
            r = _block(ref, r0, r1, xp, dtype, center)
            size = (q1 - q0) * (r1 - r0)
            dist = space[:size].reshape(q1 - q0, r1 - r0)
            # |q|² + |r|² - 2 q·r without the |q|² (constant along a row, so it does not change the ranking)
            if gemm is not None:
                gemm(q_minus2, r, dist)
            else:
                xp.matmul(q_minus2, r.T, out=dist)
            dist += (r * r).sum(axis=1)[None, :]
            if exclude_self:
                rows = xp.nonzero((q_ids >= r0) & (q_ids < r1))[0]
                dist[rows, q_ids[rows] - r0] = xp.inf
            cols = _smallest(dist, min(k, r1 - r0), space[size:2 * size].reshape(dist.shape), xp)
            cand = xp.take_along_axis(dist, cols, axis=1)
            if stream:  # this block is gone after this step: make its candidates' distances exact now
                exact = _pair_distances(q, r, cols, dtype, xp, refine_rows) ** 2
                cand = xp.where(xp.isinf(cand), cand, exact)
            both_d = xp.concatenate([best_d, cand], axis=1)
            both_i = xp.concatenate([best_i, cols + r0], axis=1)
            keep = xp.argpartition(both_d, k - 1, axis=1)[:, :k]
            best_d, best_i = xp.take_along_axis(both_d, keep, axis=1), xp.take_along_axis(both_i, keep, axis=1)
        if stream:
            best_d = xp.sqrt(best_d)
        else:  # recompute the chosen pairs' distances directly: no cancellation, duplicates exactly 0
            best_d = _pair_distances(q, ref, best_i, dtype, xp, refine_rows, ref_center=center)
        order = xp.argsort(best_d, axis=1)[:, :final_k]
        out_i[q0:q1] = to_numpy(xp.take_along_axis(best_i, order, axis=1))
        out_d[q0:q1] = to_numpy(xp.take_along_axis(best_d, order, axis=1))
        log.debug("exact kNN: %d / %d query rows", q1, n_q)
    return out_i, out_d


def _smallest(dist, take, work, xp):
    """Column indices (int64) of the `take` smallest entries of each row of `dist`, unordered.

    A value partition of a copy (`work`) gives each row's take-th smallest value; the entries at or below it are the
    candidates. This is several times faster on NumPy than `argpartition` of the whole block, which sorts indices
    indirectly and allocates an int64 index per entry. Rows with ties at the threshold (duplicate samples) have more
    candidates than `take` and are cut down by an `argpartition` of just those candidates.
    """
    n_rows, width = dist.shape
    if take >= width:
        return xp.broadcast_to(xp.arange(width, dtype=xp.int64), (n_rows, width))
    if xp is not np and (topk := _torch_topk()) is not None:
        # CuPy's partition sorts every row in full; torch's radix-select top-k is about 10x faster on the GPU (the
        # partition had taken over 90% of the exact GPU search). Zero-copy through DLPack.
        return xp.from_dlpack(topk(dist, take))
    work[...] = dist
    work.partition(take - 1, axis=1)
    rows, cols = xp.nonzero(dist <= work[:, take - 1:take])
    counts = xp.bincount(rows, minlength=n_rows)
    widest = int(counts.max())
    if widest == take:
        return cols.astype(xp.int64).reshape(n_rows, take)
    position = xp.arange(len(rows)) - (xp.cumsum(counts) - counts)[rows]
    padded_d = xp.full((n_rows, widest), xp.inf, dtype=dist.dtype)
    padded_c = xp.zeros((n_rows, widest), dtype=xp.int64)
    padded_d[rows, position] = dist[rows, cols]
    padded_c[rows, position] = cols
    keep = xp.argpartition(padded_d, take - 1, axis=1)[:, :take]
    return xp.take_along_axis(padded_c, keep, axis=1)


def _tf32_gemm():
    """`gemm(a, b, out)`: out = a @ b.T in TF32 on the GPU's tensor cores (torch, zero-copy on CuPy arrays), or None
    without torch. About 8x the float32 rate on A100/H100-class GPUs; its ~1e-3 relative error only picks candidates:
    the search keeps 2k of them per row and ranks them by exactly recomputed distances."""
    try:
        import torch
    except ImportError:
        return None

    def gemm(a, b, out):
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            torch.matmul(torch.from_dlpack(a), torch.from_dlpack(b).T, out=torch.from_dlpack(out))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous

    return gemm


def _torch_topk():
    """`topk(cupy_matrix, k)` -> column indices of each row's k smallest entries (torch on the same GPU), or None
    without torch."""
    try:
        import torch
    except ImportError:
        return None

    def topk(dist, k):
        return torch.topk(torch.from_dlpack(dist), k, dim=1, largest=False, sorted=False).indices

    return topk


def _block(X, start, stop, xp, dtype, center):
    """Rows start:stop of X on the device, cast and centred (a copy; Dask blocks are read here)."""
    rows = X[start:stop]
    if _is_dask(rows):
        rows = rows.compute()
    return xp.asarray(rows, dtype=dtype) - center


def _pair_distances(q, ref, cols, dtype, xp, rows_per_step=4096, ref_center=None):
    """|q[i] - ref[cols[i, j]]| computed directly, `rows_per_step` query rows at a time (bounded memory)."""
    out = xp.empty(cols.shape, dtype=dtype)
    for a in range(0, len(cols), rows_per_step):
        b = min(a + rows_per_step, len(cols))
        others = xp.asarray(ref[cols[a:b]], dtype=dtype)
        if ref_center is not None:
            others -= ref_center
        diff = others - q[a:b, None, :]
        out[a:b] = xp.sqrt((diff * diff).sum(axis=2))
    return out


# -- helpers --------------------------------------------------------------------------------------------------------

def _is_int(value, minimum) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def _is_dask(X) -> bool:
    return type(X).__module__.split(".")[0] == "dask" and hasattr(X, "chunks")


def _as_2d(X, device):
    if type(X).__module__.split(".")[0] == "xarray":
        X = X.data
    if not _is_dask(X) and not (device_kind(device) == "cuda" and type(X).__module__.split(".")[0] == "cupy"):
        X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"KNNGraph needs a 2-D (samples, features) array; got shape {tuple(X.shape)}. "
                         "Flatten each sample's heatmap first (relaylab.analyze.preprocess).")
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)
            or np.issubdtype(X.dtype, np.bool_)):
        raise ValueError(f"KNNGraph needs numeric samples, not dtype {X.dtype}")
    return X


def _compute_dtype(dtype):
    return np.dtype(np.float32) if np.dtype(dtype).itemsize <= 4 and np.issubdtype(dtype, np.floating) \
        else np.dtype(np.float64)


def _finite_mean(X, device, rows_per_step=8192):
    """The float64 column mean, raising a ValueError that names the rows holding NaN or infinity (one pass)."""
    n = X.shape[0]
    if _is_dask(X):
        import dask
        import dask.array as da

        bad, total = dask.compute(~da.isfinite(X).all(axis=1), X.sum(axis=0, dtype=np.float64))
        bad_rows = np.flatnonzero(bad)
    else:
        xp = array_namespace(device) if type(X).__module__.split(".")[0] == "cupy" else np
        total = xp.zeros(X.shape[1], dtype=np.float64)
        bad_rows = []
        for a in range(0, n, rows_per_step):
            block = X[a:a + rows_per_step]
            bad = xp.nonzero(~xp.isfinite(block).all(axis=1))[0]
            if len(bad):
                bad_rows.append(to_numpy(bad) + a)
            else:
                total += block.sum(axis=0, dtype=np.float64)
        bad_rows = np.concatenate(bad_rows) if bad_rows else np.empty(0, dtype=np.int64)
    if len(bad_rows):
        shown = ", ".join(str(int(i)) for i in bad_rows[:5]) + (", ..." if len(bad_rows) > 5 else "")
        raise ValueError(f"{len(bad_rows)} of {n} samples contain NaN or infinite values (rows {shown}); "
                         "drop or impute them before building the kNN graph")
    return to_numpy(total) / n


def _drop_self(indices):
    """(n, k+1) neighbour lists -> (n, k) without each row's own index; rows lacking it lose their last entry."""
    n, width = indices.shape
    is_self = indices == np.arange(n)[:, None]
    lacking = ~is_self.any(axis=1)
    is_self[lacking, width - 1] = True
    first = is_self.argmax(axis=1)  # drop exactly one entry per row
    keep = np.ones_like(is_self)
    keep[np.arange(n), first] = False
    return indices[keep].reshape(n, width - 1)


def _same_data(X, fitted) -> bool:
    if X is fitted:
        return True
    if X.shape != fitted.shape:
        return False
    if _is_dask(X) or _is_dask(fitted):
        return _is_dask(X) and _is_dask(fitted) and X.name == fitted.name
    if isinstance(X, np.ndarray) != isinstance(fitted, np.ndarray):
        return False
    xp = np if isinstance(X, np.ndarray) else array_namespace("cuda")
    return bool(xp.array_equal(X, fitted))


def _csr(indices, distances, n_columns):
    n, width = indices.shape
    indptr = np.arange(0, n * width + 1, width, dtype=np.int64)
    return sp.csr_matrix((distances.ravel(), indices.ravel(), indptr), shape=(n, n_columns))
