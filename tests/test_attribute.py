"""The attribute job on a real tiny network and store: equal to zennit's own output, conserving relevance,
resumable to the same bytes, the same on a Dask cluster, and refusing bad input before writing anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from distributed import Client
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import COMPOSITES

from relaylab.cli import main
from relaylab.data import store as zstore
from relaylab.data.project import open_project
from relaylab.errors import IncompleteStoreError, RelaylabError
from relaylab.explain import jobs
from relaylab.explain.attribution import explain_batch
from relaylab.explain.methods import METHODS
from relaylab.explain.models import load_model, model_spec_of, preprocess

from .helpers import make_store, save_weights


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("attr") / "p.zarr")


def reference(store: Path):
    """The model and preprocessed inputs, rebuilt here without the job's code paths."""
    spec = model_spec_of(store)
    model = load_model(spec)
    with open_project(store) as project:
        raw = project.inputs["input"].values
        labels = project.inputs["label"].values
    return model, preprocess(raw, spec), labels


def read(store: Path, name: str):
    with open_project(store) as project:
        ds = project.attributions[name]
        return ds["attribution"].values, ds["prediction"].values, dict(ds.attrs)


def zennit_lrp(model, x, composite, targets, n_classes=5):
    with Gradient(model=model, composite=composite) as attributor:
        out, relevance = attributor(x, lambda output: torch.eye(n_classes)[targets] * output.detach())
    return relevance.numpy(), out.detach().numpy()


@pytest.mark.parametrize("method", ["epsilon_plus_flat", "epsilon_alpha2_beta1"])
def test_lrp_equals_zennit_for_the_true_label(store, method):
    jobs.attribute(store, name=f"t-{method}", method=method, target="true_label", batch_size=16, progress=False)
    attribution, prediction, attrs = read(store, f"t-{method}")
    model, x, labels = reference(store)
    expected, logits = zennit_lrp(model, x, COMPOSITES[method](), torch.as_tensor(labels))
    np.testing.assert_allclose(attribution, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prediction, logits, rtol=1e-5, atol=1e-6)
    assert attribution.dtype == np.float32 and attribution.shape == (40, 3, 16, 16)
    assert attrs["method"] == method and attrs["strategy"] == "true_label" and attrs["model"].endswith(":TinyNet")


def test_epsilon_gamma_box_uses_the_preprocessed_value_range(store):
    jobs.attribute(store, name="box", method="epsilon_gamma_box", target=2, progress=False)
    attribution, _, attrs = read(store, "box")
    model, x, _ = reference(store)
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    composite = COMPOSITES["epsilon_gamma_box"](low=(0 - mean) / std, high=(1 - mean) / std)
    expected, _ = zennit_lrp(model, x, composite, torch.full((40,), 2))
    np.testing.assert_allclose(attribution, expected, rtol=1e-5, atol=1e-6)
    assert attrs["strategy"] == 2


def test_batch_norm_is_merged_by_the_auto_canonizer(tmp_path):
    store = make_store(tmp_path / "p.zarr", n=12, kwargs={"batchnorm": True})
    jobs.attribute(store, name="lrp", method="epsilon_plus", progress=False)
    attribution, prediction, _ = read(store, "lrp")
    model, x, _ = reference(store)
    predicted = torch.as_tensor(model(x).argmax(1))
    expected, _ = zennit_lrp(model, x, COMPOSITES["epsilon_plus"](canonizers=[SequentialMergeBatchNorm()]), predicted)
    without, _ = zennit_lrp(model, x, COMPOSITES["epsilon_plus"](), predicted)
    np.testing.assert_allclose(attribution, expected, rtol=1e-4, atol=1e-6)
    assert not np.allclose(attribution, without, rtol=1e-3, atol=1e-5)  # the canonizer did change something
    np.testing.assert_array_equal(prediction.argmax(1), predicted.numpy())


@pytest.mark.parametrize("method", ["epsilon_plus_flat", "epsilon_plus"])
def test_epsilon_rules_conserve_the_target_logit(store, method):
    """TinyNet has no biases: the input relevance of each sample sums to the logit it explains."""
    jobs.attribute(store, name=f"c-{method}", method=method, progress=False)
    attribution, prediction, _ = read(store, f"c-{method}")
    explained = prediction.max(axis=1)
    assert np.abs(explained).min() > 1e-3  # non-trivial logits
    np.testing.assert_allclose(attribution.reshape(40, -1).sum(1), explained, rtol=1e-3, atol=1e-5)


def test_gradient_is_the_input_gradient_of_the_predicted_logit(store):
    jobs.attribute(store, name="grad", method="gradient", batch_size=7, progress=False)
    attribution, prediction, _ = read(store, "grad")
    model, x, _ = reference(store)
    x = x.clone().requires_grad_(True)
    logits = model(x)
    logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    np.testing.assert_allclose(attribution, x.grad.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(prediction, logits.detach().numpy(), rtol=1e-5, atol=1e-6)


def hand_gradcam(model, x, targets, layer):
    found = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: found.setdefault("a", o))
    logits = model(x)
    handle.remove()
    activation = found["a"]
    gradient, = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), activation)
    small = F.relu((gradient.mean(dim=(2, 3), keepdim=True) * activation).sum(1))
    return F.interpolate(small[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0].detach()


def test_gradcam_and_guided_gradcam_follow_their_formulas(store):
    jobs.attribute(store, name="cam", method="gradcam", layer="features.3", target="true_label", progress=False)
    jobs.attribute(store, name="guided", method="guided_gradcam", layer="features.3", target="true_label", progress=False)
    cam, _, attrs = read(store, "cam")
    guided, _, _ = read(store, "guided")
    model, x, labels = reference(store)
    targets = torch.as_tensor(labels)
    expected = hand_gradcam(model, x, targets, "features.3")
    assert cam.shape == (40, 1, 16, 16) and attrs["layer"] == "features.3"
    np.testing.assert_allclose(cam[:, 0], expected.numpy(), rtol=1e-5, atol=1e-6)
    assert (cam > 0).any()
    with Gradient(model=model, composite=COMPOSITES["guided_backprop"]()) as attributor:
        _, backprop = attributor(x, torch.eye(5)[targets])
    np.testing.assert_allclose(guided[:, 0], (backprop.sum(1) * expected).numpy(), rtol=1e-4, atol=1e-6)


def test_smoothgrad_noise_is_seeded_per_batch(store):
    model, x, _ = reference(store)
    first, _ = explain_batch(model, x[:8], "predicted_label", "smoothgrad", seed=8)
    again, _ = explain_batch(model, x[:8], "predicted_label", "smoothgrad", seed=8)
    other, _ = explain_batch(model, x[:8], "predicted_label", "smoothgrad", seed=9)
    plain, _ = explain_batch(model, x[:8], "predicted_label", "gradient")
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other) and not np.allclose(first, plain)


def test_every_registered_method_runs_through_explain_batch(store):
    model, x, _ = reference(store)
    bounds = (x.amin(dim=(0, 2, 3), keepdim=True), x.amax(dim=(0, 2, 3), keepdim=True))
    for name, method in METHODS.items():
        layer = "features.3" if method.kind in ("cam", "guided_gradcam") else None
        attribution, logits = explain_batch(model, x[:4], 1, name, layer, bounds=bounds)
        assert attribution.shape == ((4, 1, 16, 16) if layer else (4, 3, 16, 16)), name
        assert np.isfinite(attribution).all() and np.abs(attribution).sum() > 0, name
        assert logits.shape == (4, 5)
    with pytest.raises(RelaylabError, match="classes of the model's 5 outputs"):
        explain_batch(model, x[:4], 5, "gradient")


def small_blocks(monkeypatch):
    """8 samples per write block (5 blocks for 40 samples), so a job can stop in the middle."""
    monkeypatch.setattr(zstore, "INNER_CHUNK_BYTES", 3 * 16 * 16 * 4 * 4)
    monkeypatch.setattr(zstore, "SHARD_BYTES", 3 * 16 * 16 * 4 * 8)


def group_files(store: Path, group: str) -> dict[str, bytes]:
    folder = store / group
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_killed_job_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    small_blocks(monkeypatch)
    a, b = make_store(tmp_path / "a" / "p.zarr"), make_store(tmp_path / "b" / "p.zarr")
    jobs.attribute(a, name="sg", method="smoothgrad", batch_size=3, progress=False)

    computed = []
    real_block = jobs.attribution_block

    def dies_at_the_second_block(job, start, stop):
        if computed:
            raise KeyboardInterrupt
        computed.append(start)
        return real_block(job, start, stop)

    monkeypatch.setattr(jobs, "attribution_block", dies_at_the_second_block)
    with pytest.raises(KeyboardInterrupt):
        jobs.attribute(b, name="sg", method="smoothgrad", batch_size=3, progress=False)
    with pytest.raises(IncompleteStoreError, match="1 of 5 blocks"), open_project(b) as project:
        project.attributions["sg"]

    resumed = []
    monkeypatch.setattr(jobs, "attribution_block", lambda job, start, stop: resumed.append(start) or real_block(job, start, stop))
    jobs.attribute(b, name="sg", method="smoothgrad", batch_size=3, progress=False)
    assert resumed == [8, 16, 24, 32]
    assert group_files(a, "attributions/sg") == group_files(b, "attributions/sg")
    assert read(a, "sg")[0].tobytes() == read(b, "sg")[0].tobytes()


@pytest.mark.parametrize("method", ["epsilon_plus_flat", "smoothgrad"])
def test_a_dask_cluster_writes_the_same_bytes(tmp_path, monkeypatch, dask_cluster, method):
    small_blocks(monkeypatch)
    local, remote = make_store(tmp_path / "a" / "p.zarr"), make_store(tmp_path / "b" / "p.zarr")
    jobs.attribute(local, name="x", method=method, batch_size=5, progress=False)
    jobs.attribute(remote, name="x", method=method, batch_size=5, scheduler=dask_cluster.scheduler_address, progress=False)
    assert group_files(local, "attributions/x") == group_files(remote, "attributions/x")
    with Client(dask_cluster) as client:  # the blocks were computed by the workers, each with its own cached model
        assert sum(client.run(lambda: len(__import__("relaylab.explain.jobs").explain.jobs._MODELS)).values()) >= 1


def nothing_written(store: Path) -> bool:
    return zstore.list_groups(store, "attributions") == [] and zstore.unfinished_groups(store) == []


@pytest.mark.parametrize(("arguments", "message"), [
    ({"method": "lrp_magic"}, "method: expected one of epsilon_plus, epsilon_plus_flat"),
    ({"target": 5}, "target: expected a class of the label map (0…4, 5 classes) (found 5)"),
    ({"target": "most_likely"}, "target: expected true_label or predicted_label, or a class index"),
    ({"method": "gradcam"}, "layer: expected a layer for gradcam"),
    ({"method": "gradcam", "layer": "features.9"}, "expected a layer of the model"),
    ({"method": "gradcam", "layer": "classifier"}, "a layer with a spatial output (C, h, w) for gradcam"),
    ({"method": "gradient", "layer": "features.3"}, "only CAM methods take one"),
    ({"batch_size": 0}, "batch_size: expected a positive number"),
    ({"name": "a/b"}, "a set name without '/'"),
])
def test_bad_arguments_are_refused_before_anything_is_written(store, arguments, message):
    with pytest.raises(RelaylabError) as error:
        jobs.attribute(store, **{"name": "bad", **arguments}, progress=False)
    assert message in str(error.value)
    assert "bad" not in zstore.list_groups(store, "attributions")


def spec_changed(store: Path, **changes) -> None:
    meta = zstore.store_metadata(store)["model"]
    zstore.update_store_metadata(store, model={**meta, "spec": {**meta["spec"], **changes}})


def test_bad_model_records_are_refused_before_anything_is_written(tmp_path):
    store = make_store(tmp_path / "p.zarr", n=8)
    good = zstore.store_metadata(store)["model"]["spec"]
    cases = [
        ({"model": "tests.not_a_module:Net"}, "an importable module 'tests.not_a_module'"),
        ({"kwargs": {"n_classes": 5, "bias": True}}, "3 missing: features.0.bias, features.3.bias, classifier.bias"),
        ({"model": "torch.nn:Linear", "kwargs": {"in_features": 10, "out_features": 5}, "weights": None},
         "input_shape: expected an input size torch.nn:Linear accepts (found [3, 16, 16]: mat1 and mat2"),
        ({"input_shape": [3, 20, 20]}, "images of the model's input shape [3, 20, 20]"),
        ({"kwargs": {"n_classes": 3}}, "classifier.weight (5, 256) vs (3, 256)"),
    ]
    for changes, message in cases:
        spec_changed(store, **changes)
        with pytest.raises(RelaylabError) as error:
            jobs.attribute(store, progress=False)
        assert message in str(error.value), changes
        assert nothing_written(store)
        spec_changed(store, **good)
    save_weights(tmp_path / "tiny.pt", n_classes=3)  # a 3-class model for a 5-class label map
    spec_changed(store, kwargs={"n_classes": 3})
    with pytest.raises(RelaylabError, match=r"classes the model outputs \(0…2\)"):
        jobs.attribute(store, progress=False)
    assert nothing_written(store)


def test_reusing_a_name_with_other_settings_is_refused(tmp_path):
    store = make_store(tmp_path / "p.zarr", n=8)
    jobs.attribute(store, name="lrp", progress=False)
    before = group_files(store, "attributions/lrp")
    with pytest.raises(RelaylabError, match="one written with other settings or from other data"):
        jobs.attribute(store, name="lrp", method="epsilon_plus", progress=False)
    jobs.attribute(store, name="lrp", progress=False)  # the same settings: already complete, left as it is
    assert group_files(store, "attributions/lrp") == before


def test_cli_attribute_and_its_errors(store, capsys):
    assert main(["attribute", str(store), "--name", "cli", "--method", "gradient", "--target", "3", "-q"]) == 0
    attribution, _, attrs = read(store, "cli")
    assert attrs["strategy"] == 3 and attribution.shape == (40, 3, 16, 16)
    assert "wrote attributions/cli (gradient, target 3)" in capsys.readouterr().out
    assert main(["attribute", str(store), "--name", "cli2", "--target", "9"]) == 2
    assert "target: expected a class of the label map" in capsys.readouterr().err
    assert "cli2" not in zstore.list_groups(store, "attributions")
