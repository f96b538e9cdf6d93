"""Affinity, Laplacian eigenpairs and the SpRAy estimator, checked against dense linear algebra and known structure."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import KNeighborsTransformer

from relaylab.analyze.graph import Affinity
from relaylab.analyze.preprocess import ChannelReduce, Flatten, Normalize, Pool
from relaylab.analyze.spectral import SpectralEmbedding
from relaylab.analyze.spray import SpRAy, kmeans


def knn_affinity(X, k=10, kernel="binary"):
    graph = KNeighborsTransformer(n_neighbors=k, mode="distance").fit_transform(X)
    graph.setdiag(0)
    graph.eliminate_zeros()
    return Affinity(kernel=kernel).fit_transform(graph)


def dense_laplacian_eigenvalues(affinity):
    A = affinity.toarray()
    d = A.sum(axis=1)
    L = np.eye(len(A)) - A / np.sqrt(np.outer(d, d))
    return np.linalg.eigvalsh(L)


def test_binary_affinity_is_corelays_symmetrised_knn():
    X = np.random.default_rng(0).normal(size=(50, 4))
    graph = KNeighborsTransformer(n_neighbors=5, mode="distance").fit_transform(X)
    graph.setdiag(0)
    graph.eliminate_zeros()
    A = Affinity().fit_transform(graph).toarray()
    B = (graph.toarray() > 0).astype(float)
    np.testing.assert_array_equal(A, (B + B.T) / 2)
    assert set(np.unique(A)) <= {0.0, 0.5, 1.0}


def test_heat_kernel_uses_median_distance():
    X = np.random.default_rng(1).normal(size=(40, 3))
    graph = KNeighborsTransformer(n_neighbors=4, mode="distance").fit_transform(X)
    graph.setdiag(0)
    graph.eliminate_zeros()
    affinity = Affinity(kernel="heat").fit(graph)
    sigma = np.median(graph.data)
    assert affinity.sigma_ == pytest.approx(sigma)
    W = np.exp(-(graph.toarray() ** 2) / (2 * sigma ** 2)) * (graph.toarray() > 0)
    np.testing.assert_allclose(affinity.transform(graph).toarray(), (W + W.T) / 2)


@pytest.mark.parametrize("solver", ["eigsh", "lobpcg", "dense"])
def test_eigenvalues_are_the_smallest_of_the_symmetric_laplacian(solver):
    X, _ = make_blobs(n_samples=900, centers=4, n_features=8, random_state=0, cluster_std=3.0)
    affinity = knn_affinity(X)
    spectral = SpectralEmbedding(n_components=12, solver=solver, normalize_rows=False, tol=1e-8).fit(affinity)
    expected = dense_laplacian_eigenvalues(affinity)[:12]
    np.testing.assert_allclose(spectral.eigenvalues_, np.clip(expected, 0, 2), atol=1e-5 if solver == "lobpcg" else 1e-8)
    assert np.all(np.diff(spectral.eigenvalues_) >= -1e-12)
    A = affinity.toarray()
    d = A.sum(axis=1)
    M = A / np.sqrt(np.outer(d, d))
    v = spectral.embedding_
    residual = (np.eye(len(A)) - M) @ v - v * spectral.eigenvalues_
    assert np.abs(residual).max() < (1e-3 if solver == "lobpcg" else 1e-6)


def test_random_walk_eigenvectors_solve_the_random_walk_laplacian():
    X, _ = make_blobs(n_samples=600, centers=3, random_state=2, cluster_std=2.5)
    affinity = knn_affinity(X)
    spectral = SpectralEmbedding(n_components=6, laplacian="random_walk", normalize_rows=False).fit(affinity)
    A = affinity.toarray()
    L_rw = np.eye(len(A)) - A / A.sum(axis=1, keepdims=True)
    u = spectral.embedding_
    np.testing.assert_allclose(L_rw @ u, u * spectral.eigenvalues_, atol=1e-6)


def test_disconnected_graph_gets_component_indicators():
    X, labels = make_blobs(n_samples=[300, 250, 200], centers=[[0, 0], [100, 0], [0, 100]], cluster_std=1.0, random_state=3)
    spectral = SpectralEmbedding(n_components=8, normalize_rows=False).fit(knn_affinity(X))
    assert spectral.n_connected_components_ == 3
    np.testing.assert_allclose(spectral.eigenvalues_[:3], 0)
    assert spectral.eigenvalues_[3] > 1e-3
    for j in range(3):
        nonzero = spectral.embedding_[:, j] != 0
        assert len(np.unique(labels[nonzero])) == 1 and nonzero.sum() in (300, 250, 200)
        assert (spectral.embedding_[nonzero, j] > 0).all()


def test_too_few_samples_for_the_eigenvectors_is_a_clear_error():
    X = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(ValueError, match="32 eigenvectors need more than 32 samples; this category has 20"):
        SpectralEmbedding().fit(knn_affinity(X, k=5))


def test_unknown_step_options_are_clear_errors():
    with pytest.raises(ValueError, match="laplacian must be one of symmetric, random_walk"):
        SpectralEmbedding(laplacian="unnormalized").fit(sp.eye(40))
    with pytest.raises(ValueError, match="kernel must be one of binary, heat"):
        Affinity(kernel="gauss").fit(sp.eye(4))
    with pytest.raises(ValueError, match="pooling size 3×3 must divide the heatmap size 8×8"):
        Pool(size=(3, 3)).fit_transform(np.zeros((2, 1, 8, 8)))
    with pytest.raises(ValueError, match="norm must be one of"):
        Normalize("softmax").fit_transform(np.zeros((2, 4)))


def test_preprocessing_steps():
    X = np.arange(2 * 3 * 4 * 4, dtype=np.float64).reshape(2, 3, 4, 4) - 40
    np.testing.assert_array_equal(ChannelReduce("sum").fit_transform(X), X.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(ChannelReduce("norm").fit_transform(X)[:, 0], np.sqrt((X ** 2).sum(axis=1)))
    pooled = Pool(size=(2, 2), reduce="mean").fit_transform(X)
    assert pooled.shape == (2, 3, 2, 2) and pooled[1, 2, 1, 0] == X[1, 2, 2:4, 0:2].mean()
    normalized = Normalize("max").fit_transform(X)
    np.testing.assert_allclose(np.abs(normalized).reshape(2, -1).max(axis=1), 1)
    zero = Normalize("sum").fit_transform(np.zeros((2, 1, 2, 2)))
    assert np.isfinite(zero).all() and (zero == 0).all()
    assert Flatten().fit_transform(X).shape == (2, 48)


def blob_heatmaps(n_per_class, seed=0):
    """Heatmaps of three strategies: relevance in one of three image regions."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n_per_class)
    maps = rng.normal(0, 0.2, size=(len(labels), 3, 16, 16))
    for c in range(3):
        maps[labels == c, :, 5 * c:5 * c + 5, 2:8] += 1.0
    return maps.astype(np.float32), labels


def test_spray_separates_three_strategies_and_writes_the_analysis_form():
    maps, labels = blob_heatmaps(150)
    knn = KNeighborsTransformer(n_neighbors=10, mode="distance")
    spray = SpRAy(preprocessing=None, knn=knn, spectral=SpectralEmbedding(n_components=16)).fit(maps)
    assert adjusted_rand_score(labels, spray.labels_["kmeans-03"]) == 1.0
    assert set(spray.labels_) == {"kmeans-02", "kmeans-03", "kmeans-04", "kmeans-05", "hdbscan"}
    tree = spray.to_tree(np.arange(450) + 1000)
    assert tree["embedding/spectral"]["embedding"].shape == (450, 16)
    np.testing.assert_allclose(tree["embedding/spectral"]["eigenvalue"].values, spray.eigenvalues_, rtol=1e-6)
    np.testing.assert_array_equal(tree["cluster"]["kmeans-03"].values, spray.labels_["kmeans-03"])
    assert tree["index"].values[0] == 1000


def test_spray_steps_are_swappable_sklearn_estimators():
    maps, labels = blob_heatmaps(60, seed=1)
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline

    spray = SpRAy(preprocessing=make_pipeline(ChannelReduce(), Flatten(), PCA(10, random_state=0)),
                  knn=KNeighborsTransformer(n_neighbors=8, mode="distance"),
                  spectral=SpectralEmbedding(n_components=6),
                  clusterings={"agglomerative-03": make_pipeline(kmeans(3)[0], AgglomerativeClustering(3))},
                  embeddings={"pca": PCA(2)})
    assert adjusted_rand_score(labels, clone(spray).fit_predict(maps)) == 1.0
    assert spray.get_params()["spectral__n_components"] == 6
    fitted = spray.fit(maps)
    assert fitted.embeddings_["pca"].shape == (180, 2)


def test_spray_checks_its_parameters_on_the_first_fit_and_after_set_params():
    """Later fits of one estimator skip scikit-learn's parameter checks (a small category's fixed cost) and give the
    same result; `set_params` turns the checks back on, so a bad value is still reported by name."""
    X, _ = make_blobs(n_samples=80, centers=3, n_features=6, random_state=0)
    spray = SpRAy(clusterings={"kmeans-03": kmeans(3)})
    first = spray.fit(X).labels_["kmeans-03"].copy()
    np.testing.assert_array_equal(spray.fit(X).labels_["kmeans-03"], first)
    spray.set_params(clusterings={"kmeans-03": kmeans(3).set_params(kmeans__n_init=-1)})
    with pytest.raises(ValueError, match="n_init"):
        spray.fit(X)
