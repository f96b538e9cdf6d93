"""The activations job and the explain CLI commands (model, layers, activations, ingest) on real tiny stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from relaylab.cli import main
from relaylab.data import store as zstore
from relaylab.data.project import open_project
from relaylab.errors import IncompleteStoreError, RelaylabError
from relaylab.explain import jobs
from relaylab.explain.models import load_model, model_spec_of, preprocess

from .helpers import TINY, make_store, save_weights


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("act") / "p.zarr")


def hooked(store: Path, layers: list[str]):
    """Each layer's raw output and the logits, from hooks on a model rebuilt from the store's spec."""
    spec = model_spec_of(store)
    model = load_model(spec)
    with open_project(store) as project:
        x = preprocess(project.inputs["input"].values, spec)
    outputs = {}
    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(lambda m, i, o, name=name: outputs.setdefault(name, o.detach().clone()))
               for name in layers]
    with torch.no_grad():
        logits = model(x)
    for handle in handles:
        handle.remove()
    return outputs, logits


def test_pooled_activations_and_top_classes(store):
    jobs.activations(store, layers=["features.0", "features.3", "classifier"], name="acts", pool=(2, 3), top_k=3, batch_size=16,
                     progress=False)
    outputs, logits = hooked(store, ["features.0", "features.3", "classifier"])
    with open_project(store) as project:
        tree = project.activations["acts"]
        assert set(tree.children) == {"features.0", "features.3", "classifier", "top_k"}
        first = tree["features.0"]["activation"]
        assert first.dims == ("sample", "channel", "y", "x") and first.shape == (40, 8, 2, 3) and first.dtype == np.float32
        np.testing.assert_allclose(first.values, F.adaptive_avg_pool2d(outputs["features.0"], (2, 3)).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tree["features.3"]["activation"].values, F.adaptive_avg_pool2d(outputs["features.3"], (2, 3)).numpy(),
                                   rtol=1e-5, atol=1e-6)
        flat = tree["classifier"]["activation"]
        assert flat.dims == ("sample", "feature")
        np.testing.assert_allclose(flat.values, logits.numpy(), rtol=1e-5, atol=1e-6)
        probabilities = torch.softmax(logits, 1).numpy()
        order = np.argsort(-probabilities, axis=1)[:, :3]
        np.testing.assert_array_equal(tree["top_k"]["top_class"].values, order)
        np.testing.assert_allclose(tree["top_k"]["top_score"].values, np.take_along_axis(probabilities, order, 1), rtol=1e-6)
        np.testing.assert_array_equal(tree["features.0"]["label"].values, project.inputs["label"].values)


def test_without_pooling_activations_keep_their_size(store):
    jobs.activations(store, layers=["features.3"], name="full", pool=None, top_k=99, progress=False)
    outputs, _ = hooked(store, ["features.3"])
    with open_project(store) as project:
        tree = project.activations["full"]
        np.testing.assert_allclose(tree["features.3"]["activation"].values, outputs["features.3"].numpy(), rtol=1e-5, atol=1e-6)
        assert tree["top_k"].sizes["rank"] == 5  # top_k is capped at the number of classes


def test_a_killed_activation_job_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(zstore, "INNER_CHUNK_BYTES", 8 * 4 * 4 * 4 * 2)  # 2 samples per chunk, 6 per block
    monkeypatch.setattr(zstore, "SHARD_BYTES", 8 * 4 * 4 * 4 * 6)
    a, b = make_store(tmp_path / "a" / "p.zarr", n=20), make_store(tmp_path / "b" / "p.zarr", n=20)
    jobs.activations(a, layers=["features.0", "classifier"], batch_size=4, progress=False)
    real_block = jobs.activation_block
    calls = []

    def dies_at_the_second_block(job, start, stop):
        calls.append(start)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_block(job, start, stop)

    monkeypatch.setattr(jobs, "activation_block", dies_at_the_second_block)
    with pytest.raises(KeyboardInterrupt):
        jobs.activations(b, layers=["features.0", "classifier"], batch_size=4, progress=False)
    with pytest.raises(IncompleteStoreError, match="1 of 4 blocks"), open_project(b) as project:
        project.activations["activations"]
    calls.clear()
    monkeypatch.setattr(jobs, "activation_block", lambda job, start, stop: calls.append(start) or real_block(job, start, stop))
    jobs.activations(b, layers=["features.0", "classifier"], batch_size=4, progress=False)
    assert calls == [6, 12, 18]

    def files(store):
        folder = store / "activations" / "activations"
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    assert files(a) == files(b) and len(files(a)) > 10
    with pytest.raises(RelaylabError, match="one written with other settings"):
        jobs.activations(b, layers=["features.0"], batch_size=4, progress=False)


@pytest.mark.parametrize(("arguments", "message"), [
    ({"layers": ["features.0", "feature.3"]}, "expected a layer of the model"),
    ({"layers": []}, "one or more distinct layer names"),
    ({"layers": ["features.0"], "pool": (0, 2)}, "pool: expected (height, width)"),
    ({"layers": ["features.0"], "top_k": 0}, "top_k: expected a positive number"),
    ({"layers": ["features.0"], "device": "tpu"}, "device: expected 'cpu', 'cuda' or 'cuda:N'"),
])
def test_bad_arguments_write_nothing(store, arguments, message):
    with pytest.raises(RelaylabError) as error:
        jobs.activations(store, name="bad", **arguments, progress=False)
    assert message in str(error.value)
    assert "bad" not in zstore.list_groups(store, "activations") and zstore.unfinished_groups(store) == []


def test_cli_model_layers_and_activations(tmp_path, capsys):
    store = make_store(tmp_path / "p.zarr", n=6)
    weights = save_weights(tmp_path / "other.pt", seed=5)
    assert main(["model", str(store), TINY, "--weights", str(weights), "--mean", "0.1", "0.2", "0.3", "--std", "1", "1", "1"]) == 0
    spec = zstore.store_metadata(store)["model"]["spec"]
    assert spec["weights"] == "other.pt" and spec["mean"] == [0.1, 0.2, 0.3] and spec["input_shape"] == [3, 16, 16]
    assert "recorded tests.helpers:TinyNet (7 layers" in capsys.readouterr().out

    assert main(["model", str(store), TINY, "--mean", "0.5"]) == 2
    assert "one number per input channel (3)" in capsys.readouterr().err
    assert zstore.store_metadata(store)["model"]["spec"]["mean"] == [0.1, 0.2, 0.3]

    assert main(["layers", TINY, "--input-shape", "3", "16", "16", "--kwargs", '{"n_classes": 4}']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "type", "output", "shape"] and lines[-1].split() == ["classifier", "Linear", "4"]
    assert lines[4].split() == ["features.3", "Conv2d", "16", "x", "8", "x", "8"]

    assert main(["activations", str(store), "--layers", "features.3", "--pool", "1", "1", "--top-k", "2", "-q"]) == 0
    with open_project(store) as project:
        assert project.activations["activations"]["features.3"]["activation"].shape == (6, 16, 1, 1)


def test_cli_ingest_then_model_takes_the_recorded_normalisation(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "images" / name / f"{i}.png")
    store = tmp_path / "p.zarr"
    assert main(["ingest", str(tmp_path / "images"), str(store), "--size", "16", "16", "--mean", "0.1", "0.2", "0.3", "-q"]) == 0
    with open_project(store) as project:
        assert project.inputs["input"].shape == (4, 3, 16, 16)
        assert list(project.label_map["name"].values) == ["cat", "dog"]
    assert main(["model", str(store), TINY, "--kwargs", '{"n_classes": 2}']) == 0
    spec = zstore.store_metadata(store)["model"]["spec"]
    assert spec["mean"] == [0.1, 0.2, 0.3] and spec["std"] == [0.229, 0.224, 0.225] and spec["weights"] is None
