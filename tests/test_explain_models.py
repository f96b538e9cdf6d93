"""Model specs: building, loading weights, rejecting what does not fit, listing layers, canonizers, preprocessing.

The tiny real network and store are tests/helpers.py's (`TinyNet`, `make_store`), shared with the other explain tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relaylab.data import store as zstore
from relaylab.data.labels import label_map_from_entries
from relaylab.errors import RelaylabError
from relaylab.explain.models import ModelSpec, canonizers_for, input_bounds, list_layers, load_model, model_spec_of, preprocess, record_model

from .helpers import TINY, TinyNet, make_store, save_weights

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
    (ModelSpec("tests.helpers:NoSuchNet", input_shape=(3, 16, 16)), "a callable 'NoSuchNet' in module 'tests.helpers'"),
    (ModelSpec("resnet_18", input_shape=(3, 16, 16)), "did you mean resnet18"),
    (ModelSpec(TINY, kwargs={"colour": 1}, input_shape=(3, 16, 16)), "keyword arguments that tests.helpers:TinyNet accepts"),
    (ModelSpec(TINY, input_shape=(3, 20, 20)), "input_shape: expected an input size tests.helpers:TinyNet accepts"),
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
