"""HDBSCAN at scale: fitted on a sample, every other sample labelled by its nearest fitted neighbour."""

import numpy as np
from sklearn.cluster import HDBSCAN
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from relaylab.analyze.spray import Subsampled, hdbscan


def blobs(n=6000):
    X, y = make_blobs(n_samples=n, centers=[[0, 0], [6, 0], [0, 6], [6, 6]], cluster_std=0.6, random_state=0)
    return X, y


def test_below_max_samples_it_is_the_clusterer_itself():
    X, _ = blobs(1500)
    np.testing.assert_array_equal(Subsampled(HDBSCAN(min_cluster_size=20), max_samples=2000).fit_predict(X),
                                  HDBSCAN(min_cluster_size=20).fit_predict(X))


def test_a_sample_finds_the_clusters_and_the_rest_follow_their_nearest_fitted_sample():
    X, y = blobs()
    model = Subsampled(HDBSCAN(min_cluster_size=20), max_samples=1000, random_state=3)
    labels = model.fit_predict(X)
    assert labels.shape == (len(X),)
    assert adjusted_rand_score(y, labels) > 0.95
    assert adjusted_rand_score(HDBSCAN(min_cluster_size=20).fit_predict(X), labels) > 0.9
    again = Subsampled(HDBSCAN(min_cluster_size=20), max_samples=1000, random_state=3).fit_predict(X)
    np.testing.assert_array_equal(labels, again)  # seeded: the same sample, the same labels


def test_the_default_pipeline_subsamples_large_embeddings():
    _, y = blobs()
    rng = np.random.default_rng(0)  # like a spectral embedding: one direction per cluster, rows of unit length
    embedding = np.eye(8)[y] + rng.normal(0, 0.05, (len(y), 8))
    labels = hdbscan(min_cluster_size=20, max_samples=1500).fit_predict(embedding)
    assert adjusted_rand_score(y, labels) > 0.95
