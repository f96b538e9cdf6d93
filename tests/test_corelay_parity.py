"""relaylab's SpRAy against CoRelAy 1.0.0's `SpectralClustering`, run in its own virtual environment.

CoRelAy pins versions that clash with relaylab's, so `./dev test` installs it into .venv-corelay and exports
RELAYLAB_CORELAY_PYTHON; without it these tests are skipped. Both pipelines get the same data (scikit-learn's
digits, with a tiny fixed jitter so that no two neighbour distances tie: CoRelAy's argsort and relaylab's partition
break ties differently) and CoRelAy's defaults: 10 neighbours, binary affinity (A + Aᵀ)/2, symmetric normalised
Laplacian, 32 eigenvectors, k-means on all 32 row-normalised eigenvectors.
"""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.linalg import subspace_angles
from scipy.spatial.distance import cdist
from sklearn.datasets import load_digits
from sklearn.metrics import adjusted_rand_score

from relaylab.analyze.spray import SpRAy, kmeans

CORELAY = os.environ.get("RELAYLAB_CORELAY_PYTHON")
pytestmark = pytest.mark.skipif(not CORELAY, reason="RELAYLAB_CORELAY_PYTHON (a Python with corelay 1.0.0) is not set; ./dev test sets it")
KS = (2, 3, 4, 5)

# CoRelAy's own pipeline with its defaults; only k-means gets a seed and 10 restarts, so that both sides are deterministic.
CORELAY_SCRIPT = """
import sys
import numpy as np
from corelay.pipeline.spectral import SpectralClustering
from corelay.processor.clustering import KMeans
from corelay.processor.flow import Parallel

data, out, ks = np.load(sys.argv[1]), sys.argv[2], [int(k) for k in sys.argv[3].split(",")]
pipeline = SpectralClustering(clustering=Parallel([KMeans(n_clusters=k, kwargs={"n_init": 10, "random_state": 0}) for k in ks],
                                                  broadcast=True, is_output=True))
(eigenvalues, eigenvectors), labels = pipeline(data)
np.savez(out, eigenvalues=eigenvalues, eigenvectors=eigenvectors, **{f"kmeans-{k:02d}": l for k, l in zip(ks, labels)})
"""


def digits(n: int) -> np.ndarray:
    features = load_digits().data[:n]
    return features + np.random.default_rng(0).normal(scale=1e-3, size=features.shape)


def run_corelay(data: np.ndarray, tmp_path) -> dict:
    np.save(tmp_path / "data.npy", data)
    (tmp_path / "corelay_spray.py").write_text(CORELAY_SCRIPT)
    result = subprocess.run([CORELAY, tmp_path / "corelay_spray.py", tmp_path / "data.npy", tmp_path / "out.npz", ",".join(map(str, KS))],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "out.npz") as out:
        return dict(out)


def run_relaylab(data: np.ndarray) -> SpRAy:
    return SpRAy(clusterings={f"kmeans-{k:02d}": kmeans(k, eigenvectors=32) for k in KS}).fit(data)


@pytest.mark.parametrize("n", [400, 800], ids=["dense-solver", "eigsh"])  # relaylab decomposes densely below 500 samples
def test_relaylab_matches_corelay_on_a_connected_graph(n, tmp_path):
    data = digits(n)
    theirs, ours = run_corelay(data, tmp_path), run_relaylab(data)
    assert ours.n_connected_components_ == 1
    order = np.argsort(theirs["eigenvalues"])  # CoRelAy lists them largest first
    np.testing.assert_allclose(ours.eigenvalues_, theirs["eigenvalues"][order], rtol=0, atol=1e-5)
    assert subspace_angles(ours.embedding_, theirs["eigenvectors"]).max() < 1e-5
    # each eigenvector whose eigenvalue stands apart is the same up to sign (row normalisation scales both alike)
    values = ours.eigenvalues_
    gaps = np.minimum(np.diff(values, prepend=-np.inf), np.diff(values, append=np.inf))
    distinct = gaps > 1e-4
    assert distinct.sum() >= 16
    mine, other = ours.embedding_[:, distinct], theirs["eigenvectors"][:, order][:, distinct]
    cosine = np.abs((mine * other).sum(axis=0)) / (np.linalg.norm(mine, axis=0) * np.linalg.norm(other, axis=0))
    assert cosine.min() > 1 - 1e-6
    for k in KS:
        assert adjusted_rand_score(ours.labels_[f"kmeans-{k:02d}"], theirs[f"kmeans-{k:02d}"]) >= 0.99, k


def test_where_they_differ_relaylab_has_the_smallest_laplacian_eigenvalues(tmp_path):
    """On a graph that falls apart, CoRelAy's eigsh(which='LM') also returns negative eigenvalues of D^-1/2 A D^-1/2,
    i.e. Laplacian eigenvalues above 1, in place of small ones; relaylab's are the 32 smallest of a dense decomposition."""
    data = digits(300)
    theirs, ours = run_corelay(data, tmp_path), run_relaylab(data)
    distances = cdist(data, data)
    np.fill_diagonal(distances, np.inf)
    neighbours = np.argsort(distances, axis=1)[:, :10]
    knn = sp.csr_matrix((np.ones(neighbours.size), (np.repeat(np.arange(len(data)), 10), neighbours.ravel())), shape=distances.shape)
    affinity = ((knn + knn.T) / 2).toarray()
    scale = affinity.sum(axis=1) ** -0.5
    spectrum = np.linalg.eigvalsh(np.eye(len(data)) - scale[:, None] * affinity * scale[None, :])
    assert ours.n_connected_components_ > 1
    np.testing.assert_allclose(ours.eigenvalues_, spectrum[:32], atol=1e-8)
    # CoRelAy's are eigenvalues too, but some come from the far end of the spectrum (1 - λ < 0)
    assert np.abs(theirs["eigenvalues"][:, None] - spectrum[None, :]).min(axis=1).max() < 1e-8
    assert theirs["eigenvalues"].max() > 1 and not np.isin(np.round(spectrum[:32], 8), np.round(theirs["eigenvalues"], 8)).all()
