"""SampleExplainer on a real Zarr store with a recorded model spec and a real (tiny) torch model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlus, EpsilonPlusFlat

from relaylab.data import store as zstore
from relaylab.data.labels import label_map_from_entries
from relaylab.data.project import open_project
from relaylab.errors import RelaylabError
from relaylab.explain import jobs, models
from relaylab.explain.cam import METHODS, cam
from relaylab.explain.live import LRP_COMPOSITES, SCORE_BINS, SampleExplainer

N_SAMPLES, N_CLASSES = 12, 3
NAMES = ["ant", "bee", "cat"]


class TinyNet(nn.Module):
    """conv → batch norm → ReLU → pool → conv → ReLU → global pool → linear: a BatchNorm for the canonizer to merge."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                                      nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(6, N_CLASSES))

    def forward(self, x):
        return self.classifier(self.features(x))


SPEC = {"model": "tests.test_live:TinyNet", "weights": "tiny.pt", "kwargs": {}, "input_shape": [1, 16, 16],
        "mean": [0.5], "std": [0.25], "canonizer": "auto"}


def make_store(folder, spec: dict | None) -> object:
    path = folder / "tiny.zarr"
    label_map = label_map_from_entries([{"index": i, "word_net_id": f"n{i:08d}", "name": n} for i, n in enumerate(NAMES)])
    zstore.create_store(path, project={"name": "tiny", "model": "TinyNet", "description": ""}, dataset={"name": "random"},
                        label_map=label_map, source="test_live")
    rng = np.random.default_rng(0)
    inputs = xr.Dataset({"input": (("sample", "channel", "y", "x"), rng.integers(0, 256, (N_SAMPLES, 1, 16, 16), dtype=np.uint8))},
                        coords={"sample": np.arange(N_SAMPLES), "label": ("sample", rng.integers(0, N_CLASSES, N_SAMPLES))},
                        attrs={"value_range": [0, 255]})
    zstore.write_dataset(path, "inputs", inputs, kind="inputs", attrs={"name": "random", "value_range": [0, 255]}, progress=False)
    if spec is not None:
        torch.manual_seed(0)
        model = TinyNet().eval()
        bn = model.features[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.3, 0.3)
        torch.save(model.state_dict(), folder / "tiny.pt")
        layers = models.list_layers(model, (1, 16, 16))
        zstore.update_store_metadata(path, model={"spec": spec, "layers": layers})
    zstore.update_store_metadata(path, status="complete")
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("live"), SPEC)


@pytest.fixture
def explainer(store):
    with open_project(store) as project:
        yield SampleExplainer(project)


def reference(store, sample: int):
    """The model and the preprocessed input, built independently of the explainer."""
    spec = models.model_spec_of(store)
    raw = zstore.open_group(store, "inputs")["input"].sel(sample=[sample]).values
    return models.load_model(spec), models.preprocess(raw, spec)


def test_layers_and_cam_layers(explainer):
    assert [layer["name"] for layer in explainer.layers] == [f"features.{i}" for i in range(7)] + ["classifier.0", "classifier.1"]
    assert explainer.cam_layers == [f"features.{i}" for i in range(7)]  # spatial outputs, input → output


@pytest.mark.parametrize("method", METHODS)
def test_live_cam_equals_cam_on_the_preprocessed_input(explainer, store, method):
    model, x = reference(store, 7)
    nonzero = 0
    for layer in explainer.cam_layers:
        expected, _ = cam(model, x, torch.tensor([2]), layer, method)
        got = explainer.cam(7, 2, layer, method)
        assert got.shape == (16, 16) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected[0].numpy(), rtol=1e-5, atol=1e-7)
        nonzero += bool(got.any())
    assert nonzero >= 3


@pytest.mark.parametrize("method, composite", [("epsilon_plus_flat", EpsilonPlusFlat), ("epsilon_plus", EpsilonPlus)])
def test_lrp_equals_zennits_own_call_with_batch_norm_merged(explainer, store, method, composite):
    model, x = reference(store, 3)
    def seed(logits):  # relaylab's LRP seed, as `relaylab attribute` stores it: the target logit
        return torch.eye(N_CLASSES)[[1]] * logits

    with Gradient(model=model, composite=composite(canonizers=[SequentialMergeBatchNorm()])) as attributor:
        _, expected = attributor(x, seed)
    got = explainer.lrp(3, 1, method)
    assert got.shape == (1, 16, 16) and got.dtype == np.float32 and got.any()
    np.testing.assert_allclose(got, expected[0].numpy(), rtol=1e-5, atol=1e-7)
    if method == "epsilon_plus":  # with the flat rule at the input, merging the BatchNorm changes little; here it shows
        with Gradient(model=model, composite=composite()) as attributor:
            _, unmerged = attributor(x, seed)
        assert not np.allclose(got, unmerged[0].numpy(), rtol=1e-2)


def test_lrp_with_input_bounds(explainer):
    """epsilon_gamma_box's input rule needs the lowest and highest model input: the value range, preprocessed."""
    box = explainer.lrp(3, 1, "epsilon_gamma_box")
    assert box.shape == (1, 16, 16) and box.any() and not np.allclose(box, explainer.lrp(3, 1))


def test_focus_layercam_is_its_own_map(explainer):
    """Before the BatchNorm, ReLU and max pool the gradient's sign varies within a channel, so Focus LayerCAM leaves out
    channels that LayerCAM counts; after the last conv (→ ReLU → global pool) each channel's gradient has one sign."""
    maps = {method: explainer.cam(7, 2, "features.0", method) for method in METHODS}
    assert maps["focus_layercam"].any()
    assert not np.allclose(maps["focus_layercam"], maps["layercam"]) and not np.allclose(maps["focus_layercam"], maps["gradcam"])
    np.testing.assert_array_equal(explainer.cam(7, 2, "features.4", "focus_layercam"), explainer.cam(7, 2, "features.4", "layercam"))


def stored(store, name: str, label: int, **options) -> np.ndarray:
    """attribution (sample, channel, y, x) as `relaylab attribute` writes it for every sample with target `label`."""
    jobs.attribute(store, name=name, target=label, progress=False, **options)
    with open_project(store) as project:
        return project.attributions[name]["attribution"].values


def test_guided_backprop_is_what_attribute_stores(explainer, store):
    expected = stored(store, "guided_backprop", 2, method="guided_backprop")
    got = explainer.guided_backprop(7, 2)
    assert got.shape == (1, 16, 16) and got.dtype == np.float32 and got.any()
    np.testing.assert_allclose(got, expected[7], rtol=1e-5, atol=1e-6 * np.abs(expected[7]).max())
    assert not np.allclose(got, expected[6])  # the sample matters
    assert not np.allclose(got, explainer.guided_backprop(7, 0))  # and so does the label


@pytest.mark.parametrize("layer", ["features.0", "features.4"])
def test_guided_gradcam_is_what_attribute_stores(explainer, store, layer):
    expected = stored(store, f"guided_gradcam_{layer}", 1, method="guided_gradcam", layer=layer)[:, 0]
    got = explainer.guided_gradcam(7, 1, layer)
    assert got.shape == (16, 16) and got.dtype == np.float32 and got.any()
    np.testing.assert_allclose(got, expected[7], rtol=1e-5, atol=1e-6 * np.abs(expected[7]).max())
    np.testing.assert_allclose(got, explainer.guided_backprop(7, 1).sum(0) * explainer.cam(7, 1, layer), rtol=1e-6)
    assert not np.allclose(got, explainer.guided_gradcam(7, 1, "features.2" if layer == "features.0" else "features.0"))


def test_lrp_composites_are_the_epsilon_ones(explainer):
    assert LRP_COMPOSITES == ("epsilon_plus", "epsilon_plus_flat", "epsilon_alpha2_beta1", "epsilon_alpha2_beta1_flat", "epsilon_gamma_box")
    for method in ("guided_backprop", "excitation_backprop"):  # composites too, but not LRP
        with pytest.raises(RelaylabError, match="an LRP composite: epsilon_plus, "):
            explainer.lrp(0, 0, method)
    assert explainer.lrp(0, 0, "epsilon_alpha2_beta1_flat").any()


def test_predictions_are_the_models_softmax(explainer, store):
    model, x = reference(store, 5)
    with torch.no_grad():
        probabilities = torch.softmax(model(x)[0].double(), dim=0).numpy()
    top = explainer.predictions(5)
    assert len(top) == N_CLASSES
    scores = [p["score"] for p in top]
    assert scores == sorted(scores, reverse=True) and sum(scores) <= 1 + 1e-9
    assert [p["class"] for p in top] == np.argsort(-probabilities).tolist()
    np.testing.assert_allclose(scores, probabilities[[p["class"] for p in top]], rtol=1e-9)
    assert [p["name"] for p in top] == [NAMES[p["class"]] for p in top]
    assert explainer.predictions(5, top=2) == top[:2]


def test_layer_activations_and_their_scores(explainer, store):
    model, x = reference(store, 4)
    recorded = {}
    handle = model.features[0].register_forward_hook(lambda m, i, out: recorded.setdefault("a", out.detach().clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    activations, scores = explainer.layer_activations(4, "features.0")
    assert activations.shape == (4, 16, 16) and activations.dtype == np.float32 and scores.shape == (4,)
    np.testing.assert_allclose(activations, recorded["a"][0].numpy(), rtol=1e-6)  # pre-BN, full resolution
    channel = activations[2].ravel().astype(np.float64)
    edges = np.linspace(channel.min(), channel.max(), SCORE_BINS + 1)
    counts, _ = np.histogram(channel, bins=edges)
    entropy = -sum(c / channel.size * np.log(c / channel.size) for c in counts if c)
    assert entropy > 0
    assert scores[2] == pytest.approx(entropy * np.abs(channel).mean(), rel=1e-6)
    flat, flat_scores = explainer.layer_activations(4, "classifier.1")
    assert flat.shape == (N_CLASSES, 1, 1) and not flat_scores.any()  # one value per unit: entropy 0


def test_one_pass_serves_every_depth_and_results_are_cached(explainer):
    calls = []
    handle = explainer.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        first = explainer.cam(9, 0, "features.4")
        assert len(calls) == 1
        for layer in explainer.cam_layers:  # the depth slider: no further pass
            explainer.cam(9, 0, layer, "layercam")
        explainer.predictions(9)
        explainer.layer_activations(9, "features.2")
        assert len(calls) == 1
        assert explainer.cam(9, 0, "features.4") is first
        assert not first.flags.writeable
        heatmap = explainer.lrp(9, 0)
        assert explainer.lrp(9, 0) is heatmap and len(calls) == 2
        pair = explainer.layer_activations(9, "features.2")
        assert explainer.layer_activations(9, "features.2")[0] is pair[0]
        assert explainer.cam(9, 1, "features.4") is not first and len(calls) == 3  # another label: a new pass
        guided = explainer.guided_gradcam(9, 1, "features.4")  # Grad-CAM cached; guided backprop needs one pass
        assert len(calls) == 4 and not guided.flags.writeable
        backprop = explainer.guided_backprop(9, 1)
        assert not backprop.flags.writeable and explainer.guided_backprop(9, 1) is backprop
        assert explainer.guided_gradcam(9, 1, "features.4") is guided
        explainer.guided_gradcam(9, 1, "features.1")  # another depth: both halves cached
        assert len(calls) == 4
    finally:
        handle.remove()


@pytest.mark.parametrize("call, message", [
    (lambda e: e.cam(12, 0, "features.0"), "sample index"),
    (lambda e: e.predictions(-1), "sample index"),
    (lambda e: e.layer_activations("a", "features.0"), "sample index"),
    (lambda e: e.lrp(1.0, 0), "sample index"),
    (lambda e: e.cam(0, 3, "features.0"), "class index"),
    (lambda e: e.lrp(0, 1.5), "class index"),
    (lambda e: e.cam(0, 0, "classifier.1"), "spatial output"),
    (lambda e: e.cam(0, 0, "features.9"), "spatial output"),
    (lambda e: e.layer_activations(0, "nope"), "recorded layer"),
    (lambda e: e.cam(0, 0, "features.0", "scorecam"), "gradcam"),
    (lambda e: e.lrp(0, 0, "lrp_magic"), "epsilon_plus_flat"),
    (lambda e: e.guided_backprop(12, 0), "sample index"),
    (lambda e: e.guided_backprop(0, 3), "class index"),
    (lambda e: e.guided_gradcam(0, -1, "features.0"), "class index"),
    (lambda e: e.guided_gradcam(0, 0, "classifier.1"), "spatial output"),
    (lambda e: e.guided_gradcam(0, 0, "features.9"), "spatial output"),
    (lambda e: e.guided_gradcam("0", 0, "features.0"), "sample index"),
    (lambda e: e.predictions(0, top=0), "positive"),
])
def test_bad_requests(explainer, call, message):
    with pytest.raises(RelaylabError, match=message):
        call(explainer)


def test_store_without_a_model_spec(tmp_path):
    with open_project(make_store(tmp_path, None)) as project, pytest.raises(RelaylabError, match="model spec"):
        SampleExplainer(project)
