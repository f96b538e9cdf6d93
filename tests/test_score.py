"""Clever-Hans scoring (relaylab.analyze.score) on cases whose answers are known by construction or by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.cluster import KMeans

from relaylab.analyze.score import (
    adjusted_rand,
    arrays_from_node,
    best_cluster,
    best_coordinate_auroc,
    coordinate_aurocs,
    count_components,
    eigengap,
    marked_members,
    score_analysis,
)


def mask(n: int, marked: int) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[:marked] = True
    return out


def comb2(x: int) -> float:
    return x * (x - 1) / 2


# ----------------------------------------------------------------------------------------------------- clusterings

def test_perfect_clustering_scores_one_whatever_the_label_values():
    marked = np.random.default_rng(0).permutation(mask(200, 30))
    labels = np.where(marked, 7, 3)  # arbitrary label values: only the partition matters
    assert adjusted_rand(labels, marked) == pytest.approx(1.0)
    assert best_cluster(labels, marked) == (7, 1.0, 1.0, 1.0)


def test_random_clustering_has_ari_near_zero_over_seeds():
    marked = mask(2000, 200)
    aris = [adjusted_rand(np.random.default_rng(seed).integers(0, 4, marked.size), marked) for seed in range(20)]
    assert abs(np.mean(aris)) < 0.002
    assert max(map(abs, aris)) < 0.01
    # and a random cluster is a poor pick: precision near the 10% base rate
    _, precision, _, _ = best_cluster(np.random.default_rng(0).integers(0, 4, marked.size), marked)
    assert 0.05 < precision < 0.2


def test_marked_set_split_in_two_clusters_matches_hand_computation():
    # 80 unmarked in cluster 0; 20 marked split 12 (cluster 1) + 8 (cluster 2)
    marked = np.array([False] * 80 + [True] * 20)
    labels = np.array([0] * 80 + [1] * 12 + [2] * 8)
    cluster, precision, recall, f1 = best_cluster(labels, marked)
    assert cluster == 1
    assert precision == 1.0
    assert recall == pytest.approx(12 / 20)
    assert f1 == pytest.approx(2 * 1.0 * 0.6 / (1.0 + 0.6))
    # ARI from pair counts: cells (80, 12, 8), rows (80, 20), columns (80, 12, 8), n = 100
    index = comb2(80) + comb2(12) + comb2(8)
    rows, cols = comb2(80) + comb2(20), comb2(80) + comb2(12) + comb2(8)
    expected = rows * cols / comb2(100)
    ari = (index - expected) / ((rows + cols) / 2 - expected)
    assert ari == pytest.approx(0.95636, abs=1e-5)
    assert adjusted_rand(labels, marked) == pytest.approx(ari)


def test_best_cluster_prefers_f1_over_precision_alone():
    # cluster 1: 5 marked of 5 (precision 1, recall 0.25); cluster 2: 15 marked of 20 (precision .75, recall .75)
    marked = np.array([True] * 5 + [True] * 15 + [False] * 5 + [False] * 75)
    labels = np.array([1] * 5 + [2] * 20 + [0] * 75)
    cluster, precision, recall, f1 = best_cluster(labels, marked)
    assert (cluster, precision, recall) == (2, 0.75, 0.75)
    assert f1 == pytest.approx(0.75)


def test_noise_is_its_own_cluster_or_excluded_as_chosen():
    # perfect separation, except 10 unmarked samples are noise
    marked = np.array([True] * 20 + [False] * 80)
    labels = np.array([1] * 20 + [0] * 70 + [-1] * 10)
    assert adjusted_rand(labels, marked, noise="exclude") == pytest.approx(1.0)
    counted = adjusted_rand(labels, marked, noise="cluster")
    assert counted < 0.99
    # "cluster" is the same as giving noise an ordinary label of its own
    assert counted == pytest.approx(adjusted_rand(np.where(labels == -1, 5, labels), marked))
    assert adjusted_rand(labels, marked) == counted  # the default


def test_noise_is_never_the_best_cluster_and_its_marked_samples_count_as_missed():
    marked = np.array([True] * 20 + [False] * 80)
    labels = np.array([-1] * 15 + [1] * 5 + [0] * 80)  # noise would have the better F1, were it a cluster
    cluster, precision, recall, _ = best_cluster(labels, marked)
    assert (cluster, precision, recall) == (1, 1.0, 0.25)
    all_marked_noise = np.array([-1] * 20 + [0] * 80)
    assert best_cluster(all_marked_noise, marked) == (None, 0.0, 0.0, 0.0)


def test_all_noise_excluded_gives_nan_not_a_score():
    marked = mask(10, 3)
    assert math.isnan(adjusted_rand(np.full(10, -1), marked, noise="exclude"))


# ---------------------------------------------------------------------------------------------- spectral embedding

def test_auroc_is_direction_free():
    rng = np.random.default_rng(1)
    marked = mask(300, 30)
    embedding = rng.normal(size=(300, 4))
    embedding[:, 2] += np.where(marked, 1.5, 0.0)  # marked samples high on coordinate 2: partly separated
    component, auroc = best_coordinate_auroc(embedding, marked)
    assert component == 2 and 0.75 < auroc < 1.0
    flipped = embedding.copy()
    flipped[:, 2] *= -1  # marked samples now low on it
    assert best_coordinate_auroc(flipped, marked) == (component, pytest.approx(auroc))
    assert np.allclose(coordinate_aurocs(flipped, marked), coordinate_aurocs(embedding, marked))
    assert (coordinate_aurocs(embedding, marked) >= 0.5).all()


def small_planted_fraction(seed: int = 0):
    """A 2-blob spectral-like embedding: 5% marked samples separated along coordinate 1 only, the unmarked ones spread
    widely along coordinate 0 (so k = 2 k-means gains more by halving the big blob than by isolating the small one)."""
    rng = np.random.default_rng(seed)
    n = 1000
    marked = rng.permutation(mask(n, 50))
    embedding = np.column_stack([
        rng.normal(0, 1.0, n),
        np.where(marked, 1.0, 0.0) + rng.normal(0, 0.05, n),
        rng.normal(0, 0.1, n),
    ])
    return embedding, marked


def test_unequal_sizes_kmeans_fails_where_the_best_coordinate_succeeds():
    embedding, marked = small_planted_fraction()
    kmeans = KMeans(n_clusters=2, n_init=10, random_state=0).fit_predict(embedding)
    eigenvalues = np.array([0.0, 0.02, 0.4])
    report = score_analysis({"clusterings": {"kmeans-02": kmeans, "truth": marked.astype(int)},
                             "embedding": embedding, "eigenvalues": eigenvalues}, marked)
    assert report["n_members"] == 1000 and report["n_marked"] == 50
    km = report["clusterings"]["kmeans-02"]
    assert km["ari"] < 0.1 and km["f1"] < 0.3 and km["precision"] < 0.2  # k-means cut the big blob instead
    assert report["clusterings"]["truth"]["ari"] == pytest.approx(1.0)
    spectral = report["embedding"]
    assert spectral["component"] == 1 and spectral["auroc"] > 0.999
    assert spectral["n_components"] == 3
    assert (spectral["eigengap_k"], spectral["connected_components"]) == (2, 1)
    assert spectral["eigengap"] == pytest.approx(0.38)


def test_eigengap_and_components():
    values = [0.0, 0.0, 0.01, 0.5, 0.6]
    k, gap = eigengap(values)
    assert k == 3 and gap == pytest.approx(0.49)
    assert eigengap(values[::-1]) == (k, gap)  # CoRelAy's largest-first order gives the same answer
    assert count_components(values) == 2  # exactly zero
    assert count_components(values, tol=0.05) == 3  # counting the nearly disconnected group too
    assert count_components([1e-9, -1e-9, 0.3]) == 2  # solver round-off around 0 still counts


# -------------------------------------------------------------------------------------------------- analysis nodes

def analysis_node(embedding, eigenvalues, clusterings, index):
    xr = pytest.importorskip("xarray")
    return xr.DataTree.from_dict({
        "/": xr.Dataset(coords={"index": ("member", index)}),
        "/cluster": xr.Dataset({name: ("member", labels) for name, labels in clusterings.items()}),
        "/embedding/spectral": xr.Dataset({"embedding": (("member", "component"), embedding)},
                                          coords={"eigenvalue": ("component", eigenvalues)}),
    })


def test_tree_node_and_arrays_give_the_same_report():
    embedding, marked = small_planted_fraction(seed=3)
    clusterings = {"kmeans-02": KMeans(2, n_init=3, random_state=0).fit_predict(embedding), "all": np.zeros(1000, int)}
    eigenvalues = np.array([0.0, 0.05, 0.3])
    index = np.arange(1000) * 3 + 7  # dataset indices of the members
    node = analysis_node(embedding, eigenvalues, clusterings, index)
    arrays = arrays_from_node(node)
    assert np.array_equal(arrays["index"], index) and np.array_equal(arrays["eigenvalues"], eigenvalues)
    assert score_analysis(node, marked) == score_analysis(
        {"clusterings": clusterings, "embedding": embedding, "eigenvalues": eigenvalues}, marked)
    # marked given as dataset indices, some outside this category
    samples = np.concatenate([index[marked], [0, 1, 10**6]])
    assert np.array_equal(marked_members(node, samples), marked)
    with pytest.raises(ValueError, match="999 entries|members but marked"):
        score_analysis(node, marked[:-1])


def test_partial_inputs_are_scored_as_far_as_they_go():
    marked = mask(10, 3)
    only_clusters = score_analysis({"clusterings": {"c": marked.astype(int)}}, marked)
    assert only_clusters["embedding"] is None and only_clusters["clusterings"]["c"]["f1"] == 1.0
    only_eigenvalues = score_analysis({"eigenvalues": [0, 0.2, 0.3]}, marked)
    assert only_eigenvalues["embedding"]["auroc"] is None
    assert only_eigenvalues["embedding"]["eigengap_k"] == 1


# ------------------------------------------------------------------------------------------------------- bad input

def test_marked_must_hold_both_classes_and_say_which_is_missing():
    labels = np.zeros(5, int)
    with pytest.raises(ValueError, match="no marked samples"):
        adjusted_rand(labels, np.zeros(5, bool))
    with pytest.raises(ValueError, match="no unmarked samples"):
        best_cluster(labels, np.ones(5, bool))
    with pytest.raises(ValueError, match="boolean"):
        best_cluster(labels, [0, 1, 2, 0, 1])


def test_lengths_must_match():
    marked = mask(10, 3)
    with pytest.raises(ValueError, match="9 entries but marked has 10"):
        adjusted_rand(np.zeros(9, int), marked)
    with pytest.raises(ValueError, match="9 rows but marked has 10"):
        best_coordinate_auroc(np.zeros((9, 2)), marked)
    with pytest.raises(ValueError, match="one per component"):
        score_analysis({"embedding": np.random.default_rng(0).normal(size=(10, 3)), "eigenvalues": [0, 1]}, marked)


def test_nan_and_malformed_inputs_are_rejected():
    marked = mask(10, 3)
    embedding = np.random.default_rng(0).normal(size=(10, 3))
    embedding[4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        best_coordinate_auroc(embedding, marked)
    with pytest.raises(ValueError, match="NaN"):
        score_analysis({"embedding": embedding}, marked)
    with pytest.raises(ValueError, match=r"\(members, components\)"):
        best_coordinate_auroc(np.zeros(10), marked)
    with pytest.raises(ValueError, match="integer cluster labels"):
        best_cluster(np.array([0.5] * 10), marked)
    with pytest.raises(ValueError, match="at least 2"):
        eigengap([0.0])
    with pytest.raises(ValueError, match="NaN"):
        eigengap([0.0, np.nan, 0.5])
    with pytest.raises(ValueError, match="noise must be one of"):
        adjusted_rand(np.zeros(10, int), marked, noise="drop")
    with pytest.raises(ValueError, match="unknown keys"):
        score_analysis({"clusterings": {}, "embeddings": embedding}, marked)
    with pytest.raises(TypeError):
        score_analysis([1, 2, 3], marked)


def test_the_tau_offered_is_the_pair_counting_one_and_says_it_is_not_the_papers():
    """The paper's tau score could not be pinned down (see the module docstring): what is offered is the pair-counting
    tau the census issue names as the fallback, documented as such."""
    from relaylab.analyze import score

    assert [name for name in dir(score) if "tau" in name.lower()] == ["tau_score"]
    text = " ".join(score.__doc__.split())
    assert "pair-counting tau" in text and "could not be found" in text and "1912.11425" in text
    assert "2 · Rand index − 1" in text
