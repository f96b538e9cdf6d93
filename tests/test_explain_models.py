"""Model specs: building, loading weights, rejecting what does not fit, listing layers, canonizers, preprocessing.

Also home of the tiny real network and store that the other explain tests use (`TinyNet`, `make_store`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from relaylab.data import store as zstore
from relaylab.data.labels import label_map_from_entries
from relaylab.errors import RelaylabError
from relaylab.explain.models import ModelSpec, canonizers_for, input_bounds, list_layers, load_model, model_spec_of, preprocess, record_model

TINY = "tests.test_explain_models:TinyNet"


class TinyNet(nn.Module):
    """Two convolutions and a linear layer; 16×16 inputs only (the linear layer fixes the size)."""

    def __init__(self, n_classes: int = 5, bias: bool = False, batchnorm: bool = False):
        super().__init__()
        layers = [nn.Conv2d(3, 8, 3, padding=1, bias=bias)] + ([nn.BatchNorm2d(8)] if batchnorm else [])
        layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(16 * 4 * 4, n_classes, bias=bias)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def save_weights(path: Path, seed: int = 0, **kwargs) -> Path:
    torch.manual_seed(seed)
    model = TinyNet(**kwargs)
    if kwargs.get("batchnorm"):  # non-trivial statistics, so merging the batch norm changes the weights
        model.features[1].running_mean.uniform_(-0.5, 0.5)
        model.features[1].running_var.uniform_(0.5, 2.0)
        model.features[1].weight.data.uniform_(0.5, 1.5)
    torch.save(model.state_dict(), path)
    return path


def make_store(path: Path, *, n: int = 40, n_classes: int = 5, seed: int = 0, kwargs: dict | None = None,
               mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)) -> Path:
    """A complete store of random uint8 3×16×16 images with a TinyNet spec and weights file beside it."""
    rng = np.random.default_rng(seed)
    label_map = label_map_from_entries([{"index": i, "word_net_id": f"n{i:08d}", "name": f"class {i}"} for i in range(n_classes)])
    zstore.create_store(path, project={"name": "tiny", "model": TINY, "description": ""}, dataset={"name": "random"},
                        label_map=label_map, source="test")
    inputs = xr.Dataset({"input": (("sample", "channel", "y", "x"), rng.integers(0, 256, (n, 3, 16, 16), dtype=np.uint8))},
                        coords={"sample": np.arange(n), "label": ("sample", rng.integers(0, n_classes, n))})
    zstore.write_dataset(path, "inputs", inputs, kind="inputs", attrs={"name": "random", "value_range": [0.0, 255.0]}, progress=False)
    kwargs = {"n_classes": n_classes, **(kwargs or {})}
    save_weights(path.parent / "tiny.pt", seed, **kwargs)
    record_model(path, ModelSpec(TINY, weights="tiny.pt", kwargs=kwargs, input_shape=(3, 16, 16), mean=mean, std=std,
                                 base=str(path.parent)))
    zstore.update_store_metadata(path, status="complete")
    return path


def test_spec_round_trips_and_defaults():
    spec = ModelSpec.from_dict({"model": "resnet18", "input_shape": [3, 32, 32]})
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)  # torchvision: ImageNet statistics
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert ModelSpec(TINY, input_shape=(1, 16, 16)).mean == (0.0,)


def test_bad_spec_fields_are_all_reported():
    with pytest.raises(RelaylabError) as error:
        ModelSpec.from_dict({"model": 3, "input_shape": [3, 16], "canonizer": "magic", "colour": 1})
    text = str(error.value)
    for part in ("only the keys", ".model", ".input_shape", ".canonizer"):
        assert part in text


def test_load_model_with_weights_reproduces_the_saved_network(tmp_path):
    weights = save_weights(tmp_path / "w.pt", seed=3)
    model = load_model(ModelSpec(TINY, weights=str(weights), input_shape=(3, 16, 16)))
    torch.manual_seed(3)
    reference = TinyNet().eval()
    x = torch.randn(2, 3, 16, 16)
    assert not model.training
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_torchvision_architecture_by_name():
    model = load_model(ModelSpec("resnet18", kwargs={"num_classes": 3}, input_shape=(3, 32, 32)))
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
    assert type(canonizers_for(model)[0]).__name__ == "ResNetCanonizer"


@pytest.mark.parametrize(("spec", "message"), [
    (ModelSpec("tests.no_such_module:Net", input_shape=(3, 16, 16)), "an importable module 'tests.no_such_module'"),
    (ModelSpec("tests.test_explain_models:NoSuchNet", input_shape=(3, 16, 16)), "a callable 'NoSuchNet' in module 'tests.test_explain_models'"),
    (ModelSpec("resnet_18", input_shape=(3, 16, 16)), "did you mean resnet18"),
    (ModelSpec(TINY, kwargs={"colour": 1}, input_shape=(3, 16, 16)), "keyword arguments that tests.test_explain_models:TinyNet accepts"),
    (ModelSpec(TINY, input_shape=(3, 20, 20)), "input_shape: expected an input size tests.test_explain_models:TinyNet accepts"),
    (ModelSpec(TINY, input_shape=(1, 16, 16)), "[1, 16, 16]: "),
])
def test_specs_that_cannot_work_are_rejected_by_name(spec, message):
    with pytest.raises(RelaylabError, match=None) as error:
        load_model(spec)
    assert message in str(error.value)


def test_weights_that_do_not_fit_list_the_keys(tmp_path):
    weights = save_weights(tmp_path / "w.pt", n_classes=7, bias=True)  # other classifier shape, biases the model lacks
    with pytest.raises(RelaylabError) as error:
        load_model(ModelSpec(TINY, weights=str(weights), input_shape=(3, 16, 16)))
    text = str(error.value)
    assert "unexpected: features.0.bias" in text
    assert "classifier.weight (7, 256) vs (5, 256)" in text
    with pytest.raises(RelaylabError, match="no such file"):
        load_model(ModelSpec(TINY, weights=str(tmp_path / "missing.pt"), input_shape=(3, 16, 16)))


def test_cuda_unavailable_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RelaylabError, match="a CUDA device"):
        load_model(ModelSpec(TINY, input_shape=(3, 16, 16)), device="cuda")


def test_list_layers_records_leaves_in_call_order_with_shapes():
    layers = list_layers(TinyNet(batchnorm=True).eval(), (3, 16, 16))
    assert [(entry["name"], entry["type"], entry["output_shape"]) for entry in layers] == [
        ("features.0", "Conv2d", [8, 16, 16]), ("features.1", "BatchNorm2d", [8, 16, 16]), ("features.2", "ReLU", [8, 16, 16]),
        ("features.3", "MaxPool2d", [8, 8, 8]), ("features.4", "Conv2d", [16, 8, 8]), ("features.5", "ReLU", [16, 8, 8]),
        ("features.6", "MaxPool2d", [16, 4, 4]), ("classifier", "Linear", [5])]


def test_auto_canonizer_merges_batch_norm_only_where_there_is_one():
    assert canonizers_for(TinyNet().eval()) == []
    assert type(canonizers_for(TinyNet(batchnorm=True).eval())[0]).__name__ == "SequentialMergeBatchNorm"
    assert canonizers_for(TinyNet(batchnorm=True).eval(), "none") == []


def test_preprocess_and_bounds_follow_the_spec():
    spec = ModelSpec(TINY, input_shape=(3, 16, 16), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    raw = np.array([0, 255, 51], dtype=np.uint8).reshape(1, 3, 1, 1).repeat(2, axis=2)
    x = preprocess(raw, spec)
    np.testing.assert_allclose(x[0, :, 0, 0].numpy(), [(0 - 0.5) / 0.2, (1 - 0.4) / 0.25, (0.2 - 0.3) / 0.3], rtol=1e-6)
    floats = preprocess(raw.astype(np.float32) / 255, spec)  # floats are taken as they are (scale 1)
    torch.testing.assert_close(floats, x)
    low, high = input_bounds(spec, [0.0, 255.0], np.uint8)
    np.testing.assert_allclose(low.flatten().numpy(), [-2.5, -1.6, -1.0], rtol=1e-6)
    np.testing.assert_allclose(high.flatten().numpy(), [2.5, 2.4, 7 / 3], rtol=1e-6)


def test_record_model_stores_spec_and_layers_and_finds_relative_weights(tmp_path):
    store = make_store(tmp_path / "p.zarr")
    meta = zstore.store_metadata(store)["model"]
    assert meta["spec"]["weights"] == "tiny.pt" and meta["spec"]["input_shape"] == [3, 16, 16]
    assert meta["layers"][0] == {"name": "features.0", "type": "Conv2d", "output_shape": [8, 16, 16]}
    spec = model_spec_of(store)
    assert spec.weights_path() == tmp_path / "tiny.pt"
    load_model(spec)


def test_record_model_refuses_a_model_for_other_images(tmp_path):
    store = make_store(tmp_path / "p.zarr")
    before = zstore.store_metadata(store)["model"]
    with pytest.raises(RelaylabError, match=r"input shape \[3, 32, 32\]"):
        record_model(store, ModelSpec("resnet18", input_shape=(3, 32, 32)))
    assert zstore.store_metadata(store)["model"] == before


def test_model_spec_of_a_store_without_one_is_an_error(tmp_path):
    path = tmp_path / "p.zarr"
    zstore.create_store(path, project={"name": "p"}, dataset={"name": "d"}, source="x",
                        label_map=label_map_from_entries([{"index": 0, "word_net_id": "n0", "name": "a"}]))
    with pytest.raises(RelaylabError, match="a model spec, recorded with `relaylab model"):
        model_spec_of(path)
