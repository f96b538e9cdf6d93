"""The GPU path (device="cuda", CuPy) against the CPU path on the same data: same neighbours, same spectrum, same
clusters. Skipped where no CUDA device and CuPy are present (CI); run on a GPU machine with `pytest tests/test_gpu.py`."""

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

cupy = pytest.importorskip("cupy")
try:
    HAVE_GPU = cupy.cuda.runtime.getDeviceCount() > 0
except cupy.cuda.runtime.CUDARuntimeError:
    HAVE_GPU = False
pytestmark = pytest.mark.skipif(not HAVE_GPU, reason="no CUDA device")

from relaylab.analyze.config import build_spray, load_config  # noqa: E402
from relaylab.analyze.graph import Affinity  # noqa: E402
from relaylab.analyze.knn import KNNGraph  # noqa: E402
from relaylab.analyze.spectral import SpectralEmbedding  # noqa: E402


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=3000, n_features=64, centers=4, cluster_std=2.0, random_state=0)
    return X.astype(np.float32), y


def test_exact_knn_on_the_gpu_finds_the_cpu_neighbours(blobs):
    X, _ = blobs
    cpu = KNNGraph(n_neighbors=10, method="exact", device="cpu").fit_transform(X)
    gpu = KNNGraph(n_neighbors=10, method="exact", device="cuda").fit_transform(X)
    assert type(gpu) is type(cpu)  # results come back as SciPy CSR matrices on either device
    same = np.mean([set(cpu[i].indices) == set(gpu[i].indices) for i in range(cpu.shape[0])])
    assert same > 0.999  # float32 ties may swap the 10th neighbour of a handful of rows
    np.testing.assert_allclose(np.sort(cpu.data.reshape(-1, 10), axis=1), np.sort(gpu.data.reshape(-1, 10), axis=1), rtol=1e-3, atol=1e-3)


def test_gpu_eigensolver_matches_the_cpu_spectrum_and_subspace(blobs):
    X, _ = blobs
    affinity = Affinity().fit_transform(KNNGraph(n_neighbors=10, method="exact").fit_transform(X))
    cpu = SpectralEmbedding(n_components=8, device="cpu").fit(affinity)
    gpu = SpectralEmbedding(n_components=8, device="cuda").fit(affinity)
    np.testing.assert_allclose(gpu.eigenvalues_, cpu.eigenvalues_, atol=1e-4)
    # the eigenvectors of distinct eigenvalues agree up to sign; compare subspaces by their principal angles
    q_cpu, _ = np.linalg.qr(cpu.embedding_.astype(np.float64))
    q_gpu, _ = np.linalg.qr(gpu.embedding_.astype(np.float64))
    cosines = np.linalg.svd(q_cpu.T @ q_gpu, compute_uv=False)
    assert cosines.min() > 0.999


def test_spray_on_the_gpu_clusters_as_on_the_cpu(blobs):
    X, y = blobs
    config = load_config(None)
    cpu = build_spray(config).fit(X)
    gpu = build_spray({**config, "device": "cuda"}).fit(X)
    assert gpu.knn.device == "cuda" and gpu.spectral.device == "cuda"
    # four blobs: the four smallest eigenvalues are ~0, so only k-means with k = 4 has a unique answer (k = 2 on a
    # degenerate 2-D slice of the null space may split the blobs either way on either device)
    assert adjusted_rand_score(cpu.labels_["kmeans-04"], gpu.labels_["kmeans-04"]) > 0.99
    assert adjusted_rand_score(y, gpu.labels_["kmeans-04"]) > 0.99
