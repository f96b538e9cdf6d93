"""KNNGraph: exact search equals brute force, approximate search recalls it, the sparse graph fits scikit-learn."""

import sys

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.spatial.distance import cdist
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.manifold import SpectralEmbedding
from sklearn.neighbors import KNeighborsTransformer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from relaylab.analyze import backend, knn
from relaylab.analyze.knn import KNNGraph

K = 10
NUMBA = pytest.mark.slow  # pynndescent compiles its search with numba on first use in a process: ~40 s on 2 cores


def brute_force(X, k=K):
    """Float64 brute force: (indices, distances) of the k nearest others, and the k + 1 sorted distances."""
    D = cdist(np.asarray(X, np.float64), np.asarray(X, np.float64))
    np.fill_diagonal(D, np.inf)
    order = np.argsort(D, axis=1, kind="stable")
    return order[:, :k], np.take_along_axis(D, order[:, :k + 1], axis=1)


def untied(sorted_d, k=K, tol=1e-4):
    """Positions whose brute-force distance differs by more than tol from the previous and the next one."""
    gaps = np.diff(sorted_d, axis=1)  # (n, k)
    before = np.concatenate([np.full((len(gaps), 1), np.inf), gaps[:, :k - 1]], axis=1)
    after = gaps[:, :k]
    return (before > tol) & (after > tol)


def assert_matches_brute_force(indices, distances, X, k=K, rtol=1e-5):
    ref_i, ref_d = brute_force(X, k)
    np.testing.assert_allclose(distances, ref_d[:, :k], rtol=rtol, atol=1e-5)
    mask = untied(ref_d, k)
    assert mask.mean() > 0.9  # the comparison below covers most positions
    np.testing.assert_array_equal(indices[mask], ref_i[mask])


def random_data(n=250, d=20, dtype=np.float64, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(dtype)


def clustered_data(n=250, d=20, dtype=np.float64, seed=0):
    X, _ = make_blobs(n_samples=n, n_features=d, centers=4, cluster_std=1.0, random_state=seed)
    return (X + 50).astype(dtype)  # far from the origin: the |x|² + |y|² − 2x·y expansion would lose digits


def attribution_like_blobs(n=3000, d=256, seed=0):
    """Blobs on a 16-dimensional subspace of 256, plus noise: heatmaps vary along few directions."""
    rng = np.random.default_rng(seed)
    latent, _ = make_blobs(n_samples=n, n_features=16, centers=8, cluster_std=1.5, random_state=seed)
    return (latent @ rng.normal(size=(16, d)) + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


def heatmap_images(n=3000, size=16, seed=0):
    """Smooth heatmap-like 16×16 images: a few Gaussian bumps per image, some with a corner 'artifact', noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.zeros((n, size, size))
    for _ in range(3):
        cy, cx = rng.uniform(3, size - 3, (2, n))
        width = rng.uniform(1.5, 3.0, n)
        images += rng.uniform(0.5, 1.0, n)[:, None, None] * np.exp(
            -((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / (2 * width[:, None, None] ** 2))
    artifact = rng.random(n) < 0.2
    images[artifact] += 2 * np.exp(-((yy - 1) ** 2 + (xx - 1) ** 2) / 2.0)
    images += 0.02 * rng.normal(size=images.shape)
    images /= np.abs(images).sum(axis=(1, 2), keepdims=True)  # per-sample normalisation, as SpRAy does
    return images.reshape(n, -1).astype(np.float32)


def recall(found, exact):
    return np.mean([len(np.intersect1d(a, b)) / exact.shape[1] for a, b in zip(found, exact)])


# -- exact search ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make", [random_data, clustered_data])
@pytest.mark.parametrize("chunk_size", [None, 7, 64, 249, 1000])
def test_exact_equals_brute_force(make, dtype, chunk_size):
    X = make(dtype=dtype)
    graph = KNNGraph(n_neighbors=K, method="exact", chunk_size=chunk_size).fit(X)
    assert graph.method_ == "exact"
    assert graph.indices_.dtype == np.int64 and graph.indices_.shape == (len(X), K)
    assert graph.distances_.dtype == dtype
    assert np.all(np.diff(graph.distances_, axis=1) >= 0)
    assert_matches_brute_force(graph.indices_, graph.distances_, X, rtol=1e-5 if dtype == np.float32 else 1e-10)


def test_exact_self_is_excluded_by_index_and_duplicates_stay():
    X = random_data(n=120, d=8)
    X[[30, 60, 90]] = X[5]  # four copies of one point
    X[100:115] = 0.0  # fifteen identical rows: more duplicates than neighbours
    graph = KNNGraph(n_neighbors=K, method="exact", chunk_size=16).fit(X)
    rows = np.arange(len(X))[:, None]
    assert not (graph.indices_ == rows).any()
    for i in (5, 30, 60, 90):
        assert set(graph.indices_[i, :3]) == {5, 30, 60, 90} - {i}
        np.testing.assert_array_equal(graph.distances_[i, :3], 0.0)  # exactly 0, not ~1e-8
    zeros = graph.indices_[100:115]
    assert np.isin(zeros, np.arange(100, 115)).all()
    assert all(len(set(row)) == K for row in graph.indices_)
    np.testing.assert_array_equal(graph.distances_[100:115], 0.0)
    _, ref_d = brute_force(X)
    np.testing.assert_allclose(graph.distances_, ref_d[:, :K], atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dask_input_streams_blocks_and_equals_numpy(dtype):
    X = clustered_data(n=300, d=24, dtype=dtype, seed=3)
    dX = da.from_array(X, chunks=(45, 12))  # row chunks that divide neither n nor the search blocks
    from dask.callbacks import Callback

    largest = []

    class Largest(Callback):
        def _posttask(self, key, result, dsk, state, id):
            largest.append(getattr(result, "nbytes", 0))

    with Largest():
        streamed = KNNGraph(n_neighbors=K, method="exact", chunk_size=64).fit(dX)
    in_memory = KNNGraph(n_neighbors=K, method="exact", chunk_size=64).fit(X)
    # no task ever held more than a block's rows (64 rows, or two 45-row chunks) of the 300-row array
    assert 0 < max(largest) <= 90 * 24 * X.itemsize < X.nbytes
    rtol = 1e-5 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(streamed.distances_, in_memory.distances_, rtol=rtol, atol=1e-5)
    assert_matches_brute_force(streamed.indices_, streamed.distances_, X, rtol=rtol)
    graph = KNNGraph(n_neighbors=K, method="exact", chunk_size=64).fit_transform(dX)
    assert graph.shape == (300, 300) and graph.nnz == 300 * K


def test_exact_runs_through_the_device_namespace(monkeypatch):
    """device="cuda" takes the same code path with CuPy; here NumPy stands in for CuPy."""
    X = clustered_data(n=200, d=16, dtype=np.float32)
    requested = []

    def fake_namespace(device):
        requested.append(device)
        return np

    monkeypatch.setattr(knn, "array_namespace", fake_namespace)
    gpu = KNNGraph(n_neighbors=K, method="exact", device="cuda").fit(X)
    assert "cuda" in requested
    assert gpu.chunk_size_ == 200  # the larger GPU memory budget takes the whole set in one block
    assert_matches_brute_force(gpu.indices_, gpu.distances_, X)


def test_chunk_size_is_chosen_from_the_memory_budget():
    assert knn.auto_chunk_size(10**6, 1024, np.float32, 256 * 2**20) == 4096
    assert knn.auto_chunk_size(100, 1024, np.float32, 256 * 2**20) == 100
    # wide samples: the blocks themselves must fit too
    assert knn.auto_chunk_size(10**6, 10**6, np.float64, 256 * 2**20) == 8


# -- approximate search ---------------------------------------------------------------------------------------------

@NUMBA
@pytest.mark.parametrize("make", [attribution_like_blobs, heatmap_images])
def test_approximate_recall_against_exact(make):
    X = make()
    exact = KNNGraph(n_neighbors=K, method="exact").fit(X)
    approximate = KNNGraph(n_neighbors=K, method="approximate", random_state=0).fit(X)
    assert approximate.method_ == "approximate"
    assert not (approximate.indices_ == np.arange(len(X))[:, None]).any()
    assert np.all(np.diff(approximate.distances_, axis=1) >= 0)
    assert recall(approximate.indices_, exact.indices_) >= 0.95
    # its distances are those of the pairs it found
    found = np.linalg.norm(X[approximate.indices_] - X[:, None, :], axis=2)
    np.testing.assert_allclose(approximate.distances_, found, rtol=1e-5, atol=1e-6)


@NUMBA
def test_auto_chooses_by_size():
    X = clustered_data(n=150, d=8)
    assert KNNGraph(n_neighbors=K).fit(X).method_ == "exact"
    auto = KNNGraph(n_neighbors=K, exact_max_samples=100, random_state=0).fit(X)
    assert auto.method_ == "approximate"
    assert recall(auto.indices_, brute_force(X)[0]) >= 0.95


@NUMBA
def test_approximate_keeps_duplicates_and_drops_self():
    X = clustered_data(n=400, d=8, seed=1)
    X[200:230] = X[0]
    graph = KNNGraph(n_neighbors=K, method="approximate", random_state=0).fit(X)
    assert not (graph.indices_ == np.arange(len(X))[:, None]).any()
    assert all(len(set(row)) == K for row in graph.indices_)
    np.testing.assert_array_equal(graph.distances_[200:230], 0.0)


# -- sparse graph and scikit-learn ----------------------------------------------------------------------------------

def test_sparse_graph_layout():
    X = clustered_data(n=180, d=10)
    X[17] = X[3]
    est = KNNGraph(n_neighbors=K, method="exact")
    graph = est.fit_transform(X)
    assert sp.isspmatrix_csr(graph) and graph.shape == (180, 180)
    assert graph.nnz == 180 * K  # the explicit zero between the duplicates is kept
    assert graph.diagonal().sum() == 0 and not any(i in graph[i].indices for i in range(180))
    for i in (0, 3, 17, 99):
        row = graph.getrow(i)
        np.testing.assert_array_equal(row.indices, est.indices_[i])
        np.testing.assert_array_equal(row.data, est.distances_[i])
    assert graph[3, 17] == 0 and 17 in graph[3].indices
    assert (graph.data >= 0).all()
    # transform of the fitted samples gives the same graph
    assert (est.transform(X.copy()) != graph).nnz == 0


def test_include_self_is_scikit_learns_layout():
    X = random_data(n=160, d=12, seed=4)
    ours = KNNGraph(n_neighbors=K, method="exact", include_self=True).fit_transform(X)
    theirs = KNeighborsTransformer(n_neighbors=K, mode="distance").fit_transform(X)
    assert ours.nnz == theirs.nnz == 160 * (K + 1)
    np.testing.assert_allclose(ours.toarray(), theirs.toarray(), rtol=1e-10, atol=1e-12)


def test_transform_new_samples_matches_scikit_learn():
    X, new = random_data(n=200, d=6, seed=5), random_data(n=33, d=6, seed=6)
    ours = KNNGraph(n_neighbors=K, method="exact", include_self=True).fit(X).transform(new)
    theirs = KNeighborsTransformer(n_neighbors=K, mode="distance").fit(X).transform(new)
    assert ours.shape == (33, 200) and ours.nnz == 33 * (K + 1)
    np.testing.assert_allclose(ours.toarray(), theirs.toarray(), rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings("ignore:Graph is not fully connected")  # separated blobs
def test_graph_plugs_into_spectral_embedding():
    X, _ = make_blobs(n_samples=300, n_features=8, centers=3, random_state=0)
    est = KNNGraph(n_neighbors=K, method="exact")
    graph = est.fit_transform(X)
    spectral = SpectralEmbedding(n_components=2, affinity="precomputed_nearest_neighbors", n_neighbors=K,
                                 random_state=0)
    embedding = spectral.fit_transform(graph)
    assert embedding.shape == (300, 2)
    # sklearn took our k neighbours (no self loops) and symmetrised them as CoRelAy does
    connectivity = sp.csr_matrix((np.ones(300 * K), est.indices_.ravel(), np.arange(0, 300 * K + 1, K)),
                                 shape=(300, 300))
    expected = 0.5 * (connectivity + connectivity.T)
    assert abs(spectral.affinity_matrix_ - expected).max() == 0
    assert spectral.affinity_matrix_.diagonal().sum() == 0


@pytest.mark.filterwarnings("ignore:Graph is not fully connected")  # separated blobs
def test_pipeline_and_estimator_api():
    X, labels = make_blobs(n_samples=240, n_features=8, centers=3, random_state=1)
    pipe = Pipeline([("scale", StandardScaler()), ("knn", KNNGraph(n_neighbors=K, method="exact")),
                     ("embed", SpectralEmbedding(n_components=2, affinity="precomputed_nearest_neighbors",
                                                 n_neighbors=K, random_state=0))])
    embedding = pipe.fit_transform(X)
    assert embedding.shape == (240, 2)
    # the three blobs are three separated groups along the embedding
    centroids = np.array([embedding[labels == c].mean(axis=0) for c in range(3)])
    spread = max(embedding[labels == c].std(axis=0).max() for c in range(3))
    assert min(np.linalg.norm(a - b) for i, a in enumerate(centroids) for b in centroids[i + 1:]) > 2 * spread
    pipe.set_params(knn__n_neighbors=5, embed__n_neighbors=5)
    pipe.fit(X)
    assert pipe.named_steps["knn"].indices_.shape == (240, 5)

    est = KNNGraph(n_neighbors=7, method="exact", chunk_size=50, random_state=3)
    params = est.get_params()
    assert params == {"n_neighbors": 7, "method": "exact", "chunk_size": 50, "device": "cpu",
                      "metric": "euclidean", "random_state": 3, "exact_max_samples": None, "include_self": False}
    copy = clone(est)
    assert copy is not est and copy.get_params() == params
    assert copy.set_params(n_neighbors=3) is copy and copy.n_neighbors == 3 and est.n_neighbors == 7
    assert not hasattr(clone(est.fit(X)), "indices_")


def test_init_does_no_work():
    est = KNNGraph(method="nonsense", device="tpu")  # validated in fit, as scikit-learn estimators do
    assert est.method == "nonsense" and not hasattr(est, "indices_")


# -- bad input ------------------------------------------------------------------------------------------------------

def test_too_few_samples():
    with pytest.raises(ValueError, match=r"at least 11 samples .*got 10 samples"):
        KNNGraph(n_neighbors=10).fit(random_data(n=10, d=3))
    assert KNNGraph(n_neighbors=10, method="exact").fit(random_data(n=11, d=3)).indices_.shape == (11, 10)


@pytest.mark.parametrize("as_dask", [False, True])
def test_nan_and_inf_rows_are_named(as_dask):
    X = random_data(n=50, d=4)
    X[3, 1], X[17, 0], X[40, 3] = np.nan, np.inf, -np.inf
    data = da.from_array(X, chunks=(16, 4)) if as_dask else X
    with pytest.raises(ValueError, match=r"3 of 50 samples contain NaN or infinite values \(rows 3, 17, 40\)"):
        KNNGraph(n_neighbors=5).fit(data)


def test_many_bad_rows_are_abbreviated():
    X = random_data(n=50, d=4)
    X[10:20] = np.nan
    with pytest.raises(ValueError, match=r"10 of 50 samples .*rows 10, 11, 12, 13, 14, \.\.\.\)"):
        KNNGraph(n_neighbors=5).fit(X)


@pytest.mark.parametrize("param, value, message", [
    ("method", "kd_tree", "method must be one of auto, exact, approximate, not 'kd_tree'"),
    ("device", "tpu", "device must be 'cpu', 'cuda' or 'cuda:N' .N: the GPU's index., not 'tpu'"),
    ("metric", "cosine", "metric must be one of euclidean, not 'cosine'"),
    ("n_neighbors", 0, "n_neighbors must be a positive integer, not 0"),
    ("chunk_size", 0, "chunk_size must be a positive integer or None, not 0"),
])
def test_bad_parameters(param, value, message):
    with pytest.raises(ValueError, match=message):
        KNNGraph(**{param: value}).fit(random_data(n=30, d=3))


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"2-D \(samples, features\) array; got shape \(5, 4, 4\)"):
        KNNGraph(n_neighbors=2).fit(np.zeros((5, 4, 4)))
    est = KNNGraph(n_neighbors=3, method="exact").fit(random_data(n=20, d=3))
    with pytest.raises(ValueError, match="X has 4 features, but KNNGraph was fitted with 3"):
        est.transform(random_data(n=5, d=4))


# -- backend --------------------------------------------------------------------------------------------------------

def test_backend_cpu():
    assert backend.array_namespace("cpu") is np
    assert backend.sparse_namespace("cpu") is sp
    import scipy.sparse.linalg

    assert backend.linalg_namespace("cpu") is scipy.sparse.linalg
    x = np.arange(6.0).reshape(2, 3)
    assert backend.to_device(x, "cpu") is x and backend.to_numpy(x) is x
    m = sp.eye(3, format="csr")
    assert backend.to_device(m, "cpu") is m
    np.testing.assert_array_equal(backend.to_numpy([1, 2]), np.array([1, 2]))
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N' .N: the GPU's index., not 'gpu'"):
        backend.array_namespace("gpu")


def test_backend_without_cupy_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` fail, installed or not
    for get in (backend.array_namespace, backend.sparse_namespace, backend.linalg_namespace):
        with pytest.raises(RuntimeError, match=r"cupy.*relaylab\[gpu\]"):
            get("cuda")
    with pytest.raises(RuntimeError, match="cupy"):
        KNNGraph(n_neighbors=3, method="exact", device="cuda").fit(random_data(n=20, d=3))


def test_approximate_rows_pynndescent_left_short_are_searched_exactly(monkeypatch):
    """NN-descent may pad rows with -1 or list a duplicate before the sample itself: self is dropped by index."""
    X = clustered_data(n=120, d=6, seed=2)
    X[8] = X[7]
    true_i, _ = brute_force(X, 2 * K + 1)

    class FakeNNDescent:
        def __init__(self, data, n_neighbors, **kwargs):
            assert n_neighbors == 2 * K + 1 and data.dtype == np.float32
            rows = np.arange(len(data))[:, None]
            graph = np.concatenate([rows, true_i[:, :2 * K]], axis=1)
            graph[3, 1:] = -1  # nothing found
            graph[4, K - 2:] = -1  # found too few
            graph[5] = true_i[5, :2 * K + 1]  # self missing: the farthest entry goes
            graph[7, :2] = [8, 7]  # the duplicate listed first
            self.neighbor_graph = (graph, np.zeros(graph.shape, np.float32))

    import pynndescent

    monkeypatch.setattr(pynndescent, "NNDescent", FakeNNDescent)
    graph = KNNGraph(n_neighbors=K, method="approximate").fit(X)
    assert not (graph.indices_ == np.arange(len(X))[:, None]).any()
    assert_matches_brute_force(graph.indices_, graph.distances_, X, rtol=1e-5)
    assert graph.indices_[7, 0] == 8 and graph.distances_[7, 0] == 0


def test_torch_topk_selection_used_on_the_gpu_picks_each_rows_k_smallest():
    """On CuPy blocks the kNN search selects with torch.topk through DLPack; DLPack takes NumPy arrays too, so the
    same function is checked here."""
    from relaylab.analyze.knn import _torch_topk

    dist = np.random.default_rng(3).random((40, 257)).astype(np.float32)
    cols = np.from_dlpack(_torch_topk()(dist, 7))
    assert cols.shape == (40, 7)
    for row, picked in zip(dist, cols):
        assert set(picked.tolist()) == set(np.argsort(row)[:7].tolist())
