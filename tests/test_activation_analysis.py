"""Activation-space analyses (`activation-<layer>`) on a real Zarr store with synthetic activations."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from relaylab.analyze.activations import INPUT, analyze_activations, compute_map
from relaylab.data import store as zstore
from relaylab.data.convert import convert_to_zarr
from relaylab.data.project import open_project
from relaylab.errors import RelaylabError

N = 120


def write_activations(store, name: str, layers: dict[str, np.ndarray]) -> None:
    """activations/<name>/<layer>/activation as the explain stage writes them, marked complete."""
    for layer, values in layers.items():
        dims = ("sample", "channel", "y", "x") if values.ndim == 4 else ("sample", "feature")
        ds = xr.Dataset({"activation": (dims, values)}, coords={"sample": np.arange(len(values))})
        zstore.write_dataset(store, f"activations/{name}/{layer}", ds, kind="activations", progress=False)
    zarr.open_group(str(store), mode="r+", zarr_format=3)[f"activations/{name}"].attrs["relaylab"] = {"kind": "activations",
                                                                                                   "status": "complete"}


@pytest.fixture
def store(make_project, tmp_path):
    """Two classes (even / odd samples) that differ in a few directions of a noisy, high-dimensional space."""
    path = tmp_path / "p.zarr"
    convert_to_zarr(make_project(n_samples=N, n_classes=2), path, progress=False)
    rng = np.random.default_rng(1)
    labels = np.arange(N) % 2
    conv = rng.normal(size=(N, 8, 4, 4)).astype(np.float32)
    conv[:, :2] += 3.0 * labels[:, None, None, None]  # channels 0 and 1 brighter for class 1
    dense = rng.normal(size=(N, 40)).astype(np.float32) * np.linspace(0.2, 1.0, 40, dtype=np.float32)
    dense[:, 0] += 4.0 * (2 * labels - 1)
    write_activations(path, "acts", {"features.3": conv, "classifier.1": dense})
    return path, labels, {"features.3": conv, "classifier.1": dense}


def knn_accuracy(points: np.ndarray, labels: np.ndarray) -> float:
    return cross_val_score(KNeighborsClassifier(5), points, labels, cv=5).mean()


def components_for(features: np.ndarray, variance: float) -> int:
    """The fewest principal components explaining `variance`, from a plain SVD."""
    centred = features - features.mean(axis=0)
    s = np.linalg.svd(centred.astype(np.float64), compute_uv=False)
    return int(np.searchsorted(np.cumsum(s ** 2) / (s ** 2).sum(), variance) + 1)


def test_each_layer_gets_a_2d_map_that_separates_the_classes(store, cli):
    path, labels, layers = store
    names = analyze_activations(path, "acts", method="tsne", max_features=64, progress=False)
    assert sorted(names) == ["activation-classifier.1", "activation-features.3"]
    validated = cli("validate", path)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    with open_project(path) as project:
        for layer, values in layers.items():
            tree = project.analyses[f"activation-{layer}"]
            assert list(tree.children) == ["all"]
            node = tree["all"]
            index = node["index"].values
            assert sorted(index.tolist()) == list(range(N))
            assert sorted(node["embedding"].children) == ["pca", "tsne"]
            attrs = node.attrs
            assert attrs["layer"] == layer and attrs["method"] == "tsne" and attrs["activation_set"] == "acts"
            assert attrs["explained_variance"] >= 0.9
            if values.ndim == 4:  # 8×4×4 = 128 values > 64: pooled 2×2 to 8×2×2
                assert attrs["pool_factor"] == 2 and attrs["features"] == 32
                pooled = values.reshape(N, 8, 2, 2, 2, 2).mean(axis=(3, 5)).reshape(N, -1)
            else:
                assert attrs["pool_factor"] == 1 and attrs["features"] == 40
                pooled = values
            assert attrs["pca_components"] == components_for(pooled[index], 0.9)
            pca = node["embedding/pca"]["embedding"].values
            centred = pooled[index] - pooled.mean(axis=0)
            leading = np.linalg.svd(centred.astype(np.float64), full_matrices=False)[2][:2]
            for j in range(2):  # the first two principal components, up to sign
                assert abs(np.corrcoef(pca[:, j], centred @ leading[j])[0, 1]) > 0.999
            for embedding in ("tsne", "pca"):
                points = node[f"embedding/{embedding}"]["embedding"].values
                assert points.shape == (N, 2) and np.isfinite(points).all()
                assert knn_accuracy(points, labels[index]) > 0.9, (layer, embedding)


def test_a_rerun_skips_finished_layers_and_other_settings_replace_them(store):
    path, labels, _ = store
    analyze_activations(path, "acts", layers=["classifier.1"], method="tsne", progress=False)
    embedding = path / "analyses/activation-classifier.1/all/embedding/tsne/embedding/zarr.json"
    before = embedding.stat().st_mtime_ns
    with open_project(path) as project:
        first = project.analyses["activation-classifier.1"]["all/embedding/tsne"]["embedding"].values
    assert analyze_activations(path, "acts", layers=["classifier.1"], method="tsne", progress=False) == ["activation-classifier.1"]
    assert embedding.stat().st_mtime_ns == before
    # no model recorded in this store: layers in name order
    assert analyze_activations(path, "acts", method="pca", progress=False) == ["activation-classifier.1", "activation-features.3"]
    with open_project(path) as project:
        node = project.analyses["activation-classifier.1"]["all"]
        assert node.attrs["method"] == "pca" and list(node["embedding"].children) == ["pca"]
        assert not np.array_equal(node["embedding/pca"]["embedding"].values, first)
        assert knn_accuracy(node["embedding/pca"]["embedding"].values, labels[node["index"].values]) > 0.9


def test_bad_arguments_fail_before_anything_is_written(store):
    path, _, _ = store
    before = zstore.list_groups(path, "analyses")
    with pytest.raises(RelaylabError, match="activations/acts/conv9: expected a layer of the set"):
        analyze_activations(path, "acts", layers=["features.3", "conv9"], progress=False)
    with pytest.raises(RelaylabError, match="activations/lrp: expected one of the project's activation sets"):
        analyze_activations(path, "lrp", progress=False)
    with pytest.raises(RelaylabError, match="expected method one of tsne, pca"):
        analyze_activations(path, "acts", method="umap", progress=False)
    assert zstore.list_groups(path, "analyses") == before


def test_the_cli_writes_the_per_layer_maps_and_reports_unknown_layers(store, cli):
    path, labels, _ = store
    bad = cli("analyze-layers", path, "--activations", "acts", "--layers", "features.9")
    assert bad.returncode == 2 and "features.9" in bad.stderr
    done = cli("analyze-layers", path, "--activations", "acts", "--layers", "classifier.1", "--method", "pca", "-q")
    assert done.returncode == 0, done.stderr
    tree = zstore.open_analysis(path, "activation-classifier.1")
    points = tree["all/embedding/pca"]["embedding"].values
    assert points.shape == (N, 2) and knn_accuracy(points, labels) > 0.9


def test_maps_on_demand_take_perplexity_and_a_seeded_subset_and_are_kept(store):
    """compute_map: a seeded subset of the samples, the perplexity asked for, progress from 0 to 1, written once and
    reused; the raw inputs map like a layer; an unknown layer or a tiny subset is a RelaylabError naming it."""
    path, labels, layers = store
    heard = []
    name = compute_map(path, "features.3", perplexity=10, subset=50, activation_set="acts", on_progress=heard.append)
    assert name == "activation-features.3--tsne-p10-n50"
    assert heard[-1] == 1.0 and heard == sorted(heard) and len(heard) > 10
    node = zstore.open_analysis(path, name)["all"]
    members = np.asarray(node["index"].values)
    assert len(members) == 50 and len(set(members.tolist())) == 50 and members.max() < N
    assert node["embedding"]["tsne"]["embedding"].shape == (50, 2)
    meta = zstore.read_group_meta(path, f"analyses/{name}")
    assert meta["status"] == "complete" and meta["perplexity"] == 10 and meta["subset"] == 50
    before = len(heard)
    again = compute_map(path, "features.3", perplexity=10, subset=50, activation_set="acts", on_progress=heard.append)
    assert again == name and len(heard) == before  # reused: nothing computed, no progress to report
    assert np.array_equal(zstore.open_analysis(path, name)["all"]["index"].values, members)  # the same seeded subset
    other = compute_map(path, "features.3", perplexity=90, activation_set="acts")
    assert other != name and zstore.open_analysis(path, other)["all"]["index"].size == N  # all samples
    raw = compute_map(path, INPUT, perplexity=30, subset=100)
    assert zstore.open_analysis(path, raw)["all"]["embedding"]["tsne"]["embedding"].shape == (100, 2)
    with pytest.raises(RelaylabError, match="no such layer"):
        compute_map(path, "nope", activation_set="acts")
    with pytest.raises(RelaylabError, match="at least 3 samples"):
        compute_map(path, "features.3", subset=2, activation_set="acts")
