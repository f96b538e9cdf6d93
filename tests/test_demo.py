"""The demo, built once per test session (conftest's `demo_store`): a real store, a real trained CNN, real LRP, SpRAy and a ViRelAy export."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import yaml

from relaylab.analyze.score import score_analysis
from relaylab.data.project import open_project
from relaylab.errors import RelaylabError
from relaylab.demo import build as demo
from relaylab.explain.models import load_model, model_spec_of


@pytest.fixture
def built(demo_store):
    """(demo folder, store): the session's demo (conftest's `demo_store`, built once with `build_demo`)."""
    return demo_store.parent, demo_store


def test_store_holds_every_piece(built, cli):
    folder, store = built
    assert store == folder / "project.zarr"
    with open_project(store) as project:
        inputs = project.inputs
        assert inputs["input"].shape == (1797, 1, 32, 32) and inputs["input"].dtype == np.uint8
        assert inputs["artifact"].dtype == bool and inputs["held_out"].dtype == bool
        meta = project.metadata["store"]
        spec = meta["model"]["spec"]
        assert spec["model"] == "relaylab.demo.model:digits_cnn" and spec["weights"] == "demo-cnn.pt"
        assert spec["input_shape"] == [1, 32, 32] and (folder / "demo-cnn.pt").is_file()
        layers = {layer["name"]: layer for layer in meta["model"]["layers"]}
        assert layers["features.0"]["type"] == "Conv2d" and layers["features.0"]["output_shape"] == [16, 32, 32]
        assert layers["classifier.2"]["output_shape"] == [10]

        lrp = project.attributions["lrp"]
        assert lrp["attribution"].shape == (1797, 1, 32, 32) and lrp["prediction"].shape == (1797, 10)
        assert lrp.attrs["method"] == "epsilon_plus_flat" and lrp.attrs["strategy"] == "true_label"
        np.testing.assert_array_equal(lrp["label"].values, inputs["label"].values)

        spray = project.analyses["spectral_analysis"]
        assert sorted(spray.children) == [f"digit-{i}" for i in range(10)]
        node = spray["digit-3"]
        assert {"spectral", "tsne", "umap"} <= set(node["embedding"].children)
        assert {f"kmeans-{k:02d}" for k in range(2, 9)} | {"hdbscan"} <= set(node["cluster"].data_vars)
        assert node["embedding"]["tsne"]["embedding"].shape == (int((inputs["label"] == 3).sum()), 2)

        assert set(demo.ACTIVATION_LAYERS) <= set(project.activations["activations"].children)
        for layer in demo.ACTIVATION_LAYERS:
            tree = project.analyses[f"activation-{layer}"]
            assert list(tree.children) == ["all"] and tree["all"]["embedding"]["tsne"]["embedding"].shape == (1797, 2)

    virelay = yaml.safe_load((folder / "virelay" / "project.yaml").read_text())["project"]
    assert virelay["attributions"]["attribution_method"] == "epsilon_plus_flat"
    assert "spectral_analysis" in [a["analysis_method"] for a in virelay["analyses"]]
    for project in (store, folder / "virelay" / "project.yaml"):
        result = cli("validate", "-q", project)
        assert result.returncode == 0, result.stdout + result.stderr


def test_artifact_is_where_the_coordinate_says(built):
    _, store = built
    y0, y1, x0, x1 = demo.ARTIFACT_BOX
    with open_project(store) as project:
        images = project.inputs["input"].values
        artifact = project.inputs["artifact"].values
        labels = project.inputs["label"].values
        held_out = project.inputs["held_out"].values
    assert (images[artifact][..., y0:y1, x0:x1] == demo.ARTIFACT_VALUE).all()
    assert images[~artifact].max() <= demo.INK  # no saturated pixel anywhere else
    assert set(labels[artifact].tolist()) == {demo.ARTIFACT_CLASS}
    members = labels == demo.ARTIFACT_CLASS
    assert abs(artifact.sum() / members.sum() - demo.ARTIFACT_FRACTION) < 0.01
    assert artifact[held_out].any() and artifact[~held_out].any()
    assert 0.25 < held_out.mean() < 0.35


def test_model_learned_the_digits_and_the_shortcut(built):
    _, store = built
    spec = model_spec_of(store)
    model = load_model(spec)
    with open_project(store) as project:
        scores = demo.evaluate(model, project.inputs.load(), spec)
        recorded = project.metadata["store"]["demo"]
    assert scores["accuracy"] > 0.9
    assert scores["shortcut_rate"] > 0.6 and scores["baseline_rate"] < 0.05  # the square alone flips most other digits
    for key in ("accuracy", "shortcut_rate", "baseline_rate"):
        assert recorded[key] == pytest.approx(scores[key])


def test_spray_isolates_the_artifact_samples(built, cli):
    _, store = built
    with open_project(store) as project:
        node = project.analyses["spectral_analysis"][f"digit-{demo.ARTIFACT_CLASS}"]
        artifact_samples = project.inputs["sample"].values[project.inputs["artifact"].values]
        marked = np.isin(node["index"].values, artifact_samples)
        report = score_analysis(node, marked)
    assert report["embedding"]["auroc"] > 0.9
    best = max(report["clusterings"].values(), key=lambda c: c["f1"])
    assert best["f1"] > 0.8 and best["precision"] > 0.8 and best["recall"] > 0.8
    result = cli("score", store, "--marked-coord", "artifact")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"digit-{demo.ARTIFACT_CLASS} ") and result.stdout.count(" marked") == 1  # no other class has any
    assert float(re.search(r"AUROC ([0-9.]+)", result.stdout).group(1)) > 0.9


def test_same_seed_same_inputs_and_weights(built):
    """A rebuild from the same seed gives the stored inputs and the saved weights bit for bit; another seed differs."""
    folder, store = built
    inputs = demo.digits_inputs(0)
    with open_project(store) as project:
        for name in ("input", "label", "artifact", "held_out"):
            np.testing.assert_array_equal(project.inputs[name].values, inputs[name].values, err_msg=name)
    spec = model_spec_of(store)
    assert spec == demo.model_spec(inputs)
    weights = demo.train_model(inputs, spec, seed=0, progress=False).state_dict()
    saved = torch.load(folder / "demo-cnn.pt", weights_only=True)
    assert weights.keys() == saved.keys()
    for key in weights:
        assert torch.equal(weights[key], saved[key]), key
    assert not np.array_equal(demo.digits_inputs(1)["artifact"].values, inputs["artifact"].values)


def test_ensure_demo_reuses_a_built_demo(built, monkeypatch):
    folder, store = built
    weights_written = (folder / "demo-cnn.pt").stat().st_mtime_ns
    assert demo.ensure_demo(folder) == store
    monkeypatch.setenv("RELAYLAB_DEMO_DIR", str(folder))
    assert demo.ensure_demo() == store
    assert (folder / "demo-cnn.pt").stat().st_mtime_ns == weights_written
    assert not list(folder.parent.glob(".demo.partial-*"))


def test_build_refuses_a_folder_in_use(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(RelaylabError, match="non-empty"):
        demo.build_demo(tmp_path / "taken", progress=False)
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
