"""The JSON Schemas in schemas/: project files (ViRelAy 0.6.1's keys plus relaylab's) and exported viewer states.

Fixtures are written as the YAML/JSON a user would have on disk, so each test reads like a real file.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


def load_schema(name: str) -> dict:
    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


@pytest.fixture(scope="module")
def project_validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(load_schema("project.schema.json"))


@pytest.fixture(scope="module")
def state_validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(load_schema("viewer-state.schema.json"))


def errors(validator, instance) -> list[jsonschema.ValidationError]:
    return sorted(validator.iter_errors(instance), key=lambda e: e.json_path)


def paths(validator, instance) -> list[str]:
    return [error.json_path for error in errors(validator, instance)]


# --------------------------------------------------------------------------------------------- the schemas themselves

@pytest.mark.parametrize("name", ["project.schema.json", "viewer-state.schema.json"])
def test_schema_is_valid_draft_2020_12_with_id_and_descriptions(name):
    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://relaylab.dev/schemas/{name}"

    def walk(node, where):  # every declared property has a description
        if isinstance(node, dict):
            for key, sub in node.get("properties", {}).items():
                assert "description" in sub or "$ref" in sub and "description" in resolve(schema, sub["$ref"]), \
                    f"{where}.properties.{key} has no description"
            for key, sub in node.items():
                if key != "if":  # conditions only test values; the properties they name are declared elsewhere
                    walk(sub, f"{where}.{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{where}[{i}]")

    walk(schema, name)


def resolve(schema: dict, ref: str) -> dict:
    node = schema
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


# -------------------------------------------------------------------------------------------------------- project file

VIRELAY_HDF5_PROJECT = """
project:
  name: VGG16 ILSVRC2012-small SG
  model: VGG16
  label_map: datasets/label-map.json
  dataset:
    name: ILSVRC2012-small
    type: hdf5
    path: datasets/input.h5
    input_width: 224
    input_height: 224
    down_sampling_method: none
    up_sampling_method: none
    label_index_regex: null
    label_word_net_id_regex: null
  attributions:
    attribution_method: smoothgrad
    attribution_strategy: true_label
    sources:
    - attribution/part-0.h5
    - attribution/part-1.h5
  analyses:
  - analysis_method: spectral_analysis
    sources:
    - analysis/spectral.h5
  - analysis_method: spectral_analysis_vgg16
    sources: [analysis/spectral-vgg16-a.h5, analysis/spectral-vgg16-b.h5]
"""

VIRELAY_IMAGE_DIRECTORY_PROJECT = """
project:
  name: Pascal VOC 2007 LRP
  model: VGG16
  label_map: label-map.json
  dataset:
    name: Pascal VOC 2007
    type: image_directory
    path: images
    input_width: 224
    input_height: 224
    down_sampling_method: center_crop
    up_sampling_method: fill_zeros
    label_index_regex: null
    label_word_net_id_regex: '^.*/(n\\d{8})/.*\\.JPEG$'
  attributions:
    attribution_method: lrp_epsilon_plus
    attribution_strategy: predicted_label
    sources: [attribution.h5]
"""

RELAYLAB_PROJECT = """
project:
  name: cifar10-resnet18
  description: Two attribution sets computed by relaylab's Explain stage.
  model: torchvision:resnet18
  label_map: label-map.json
  store: cifar10.zarr
  dataset:
    name: CIFAR-10 test
    type: hdf5
    path: cifar10.h5
    value_range: [0, 255]
    layout: hwc
  attributions:
  - name: lrp_epsilon_plus
    attribution_method: lrp_epsilon_plus
    attribution_strategy: true_label
    sources: [attribution-lrp.h5]
  - name: smoothgrad.v2
    attribution_method: smoothgrad
    attribution_strategy: predicted_label
    model: torchvision:resnet18-finetuned
    sources: [attribution-sg-0.h5, attribution-sg-1.h5]
  analyses:
  - analysis_method: spray-kmeans
    sources: [analysis/spray.h5]
"""


# As ViRelAy's docs/examples/make_project.py writes it (yaml.dump, sorted keys, no regex keys for hdf5).
VIRELAY_GENERATED_PROJECT = """
project:
  analyses:
  - analysis_method: Unknown Analysis
    sources:
    - analysis.h5
  attributions:
    attribution_method: LRP Epsilon Gamma Box
    attribution_strategy: true_label
    sources:
    - attribution.h5
  dataset:
    down_sampling_method: none
    input_height: 32
    input_width: 32
    name: CIFAR-10
    path: cifar-10.h5
    type: hdf5
    up_sampling_method: none
  label_map: label-map.json
  model: VGG16
  name: VGG16 CIFAR-10
"""


def project(text: str = VIRELAY_HDF5_PROJECT) -> dict:
    return yaml.safe_load(text)


def test_full_virelay_hdf5_project_is_valid(project_validator):
    assert paths(project_validator, project()) == []


def test_project_written_by_virelays_generator_is_valid(project_validator):
    assert paths(project_validator, project(VIRELAY_GENERATED_PROJECT)) == []


def test_minimal_virelay_project_is_valid(project_validator):
    minimal = project("""
        project:
          name: minimal
          model: none
          label_map: label-map.json
          dataset: {name: d, type: hdf5, path: d.h5}
    """.replace("\n        ", "\n"))
    assert paths(project_validator, minimal) == []


def test_image_directory_project_is_valid_with_either_regex(project_validator):
    data = project(VIRELAY_IMAGE_DIRECTORY_PROJECT)
    assert paths(project_validator, data) == []

    dataset = data["project"]["dataset"]
    dataset.update(label_index_regex=r"^.*/class-(\d+)/.*$", label_word_net_id_regex=None)
    assert paths(project_validator, data) == []

    del dataset["label_word_net_id_regex"]  # relaylab reads an absent regex as null
    assert paths(project_validator, data) == []


def test_image_directory_with_both_regexes_is_invalid(project_validator):
    data = project(VIRELAY_IMAGE_DIRECTORY_PROJECT)
    data["project"]["dataset"]["label_index_regex"] = r"^.*/(\d+)/.*$"
    assert paths(project_validator, data) == ["$.project.dataset.label_word_net_id_regex"]


def test_image_directory_with_neither_regex_is_invalid(project_validator):
    data = project(VIRELAY_IMAGE_DIRECTORY_PROJECT)
    dataset = data["project"]["dataset"]
    dataset["label_word_net_id_regex"] = None  # both written as null
    [error] = errors(project_validator, data)
    assert error.json_path == "$.project.dataset.label_word_net_id_regex" and error.validator == "type"

    del dataset["label_index_regex"], dataset["label_word_net_id_regex"]  # both left out
    [error] = errors(project_validator, data)
    assert error.json_path == "$.project.dataset" and error.validator == "required"
    assert "label_word_net_id_regex" in error.message


@pytest.mark.parametrize("key", ["input_width", "input_height", "down_sampling_method", "up_sampling_method"])
def test_image_directory_needs_size_and_sampling_methods(project_validator, key):
    data = project(VIRELAY_IMAGE_DIRECTORY_PROJECT)
    del data["project"]["dataset"][key]
    [error] = errors(project_validator, data)
    assert error.validator == "required"
    assert list(error.absolute_path) == ["project", "dataset"]
    assert key in error.message


def test_hdf5_dataset_does_not_need_image_directory_keys(project_validator):
    data = project()
    dataset = data["project"]["dataset"]
    for key in ("input_width", "input_height", "down_sampling_method", "up_sampling_method",
                "label_index_regex", "label_word_net_id_regex"):
        del dataset[key]
    assert paths(project_validator, data) == []


@pytest.mark.parametrize("edit, path", [
    # unknown enum values
    ("dataset: {type: csv}", ["project", "dataset", "type"]),
    ("dataset: {up_sampling_method: bicubic}", ["project", "dataset", "up_sampling_method"]),
    ("dataset: {down_sampling_method: crop}", ["project", "dataset", "down_sampling_method"]),
    ("attributions: {attribution_strategy: label}", ["project", "attributions", "attribution_strategy"]),
    ("dataset: {layout: nchw}", ["project", "dataset", "layout"]),
    # wrong YAML types
    ("name: 42", ["project", "name"]),
    ("name: ''", ["project", "name"]),
    ("model: [VGG16]", ["project", "model"]),
    ("label_map: null", ["project", "label_map"]),
    ("dataset: {input_width: '224'}", ["project", "dataset", "input_width"]),
    ("dataset: {input_height: 0}", ["project", "dataset", "input_height"]),
    ("dataset: {input_width: 224.5}", ["project", "dataset", "input_width"]),
    ("dataset: {label_index_regex: 3}", ["project", "dataset", "label_index_regex"]),
    ("dataset: {value_range: [0, 1, 2]}", ["project", "dataset", "value_range"]),
    ("dataset: {value_range: [low, 1]}", ["project", "dataset", "value_range", 0]),
    ("attributions: {sources: attribution/part-0.h5}", ["project", "attributions", "sources"]),
    ("attributions: {sources: []}", ["project", "attributions", "sources"]),
    ("attributions: {attribution_method: 7}", ["project", "attributions", "attribution_method"]),
    ("attributions: {name: 'my set'}", ["project", "attributions", "name"]),
    ("attributions: null", ["project", "attributions"]),
    ("analyses: {analysis_method: spectral_analysis, sources: [a.h5]}", ["project", "analyses"]),
    ("analyses: [{analysis_method: spectral_analysis, sources: analysis/spectral.h5}]", ["project", "analyses", 0, "sources"]),
    ("analyses: [{analysis_method: spectral_analysis, sources: [analysis/spectral.h5, 5]}]", ["project", "analyses", 0, "sources", 1]),
    ("store: ''", ["project", "store"]),
    ("description: [a, b]", ["project", "description"]),
])
def test_malformed_value_is_reported_at_its_key(project_validator, edit, path):
    data = project()
    for key, value in yaml.safe_load(edit).items():
        if isinstance(value, dict) and isinstance(data["project"].get(key), dict):
            data["project"][key].update(value)
        else:
            data["project"][key] = value
    [error] = errors(project_validator, data)
    assert list(error.absolute_path) == path, error.message


@pytest.mark.parametrize("text, path, typo", [
    (VIRELAY_HDF5_PROJECT.replace("  dataset:", "  datset:"), ["project"], "datset"),
    (VIRELAY_HDF5_PROJECT.replace("    input_width:", "    inputwidth:"), ["project", "dataset"], "inputwidth"),
    (VIRELAY_HDF5_PROJECT.replace("    attribution_strategy:", "    attribution_stratgy:"), ["project", "attributions"],
     "attribution_stratgy"),
    (VIRELAY_HDF5_PROJECT.replace("  - analysis_method: spectral_analysis\n", "  - analysis_methods: spectral_analysis\n"),
     ["project", "analyses", 0], "analysis_methods"),
    ("projct:\n" + VIRELAY_HDF5_PROJECT.split("project:\n", 1)[1], [], "projct"),
])
def test_misspelled_key_is_reported_where_it_is(project_validator, text, path, typo):
    found = errors(project_validator, yaml.safe_load(text))
    unknown = [e for e in found if e.validator == "additionalProperties"]
    assert len(unknown) == 1 and list(unknown[0].absolute_path) == path
    assert repr(typo) in unknown[0].message
    # the misspelled key is also missing under its right name (except where the key is optional)
    assert all(e.validator in ("additionalProperties", "required") for e in found)
    assert all(list(e.absolute_path) == path for e in found)


def test_analysis_method_with_hyphen_is_accepted_and_documented(project_validator):
    data = project()
    data["project"]["analyses"][0]["analysis_method"] = "spectral-analysis"
    assert paths(project_validator, data) == []
    schema = project_validator.schema
    description = schema["$defs"]["analysis"]["properties"]["analysis_method"]["description"]
    assert "'-'" in description and "ViRelAy" in description


def test_relaylab_project_with_named_attribution_sets_is_valid(project_validator):
    assert paths(project_validator, project(RELAYLAB_PROJECT)) == []


def test_attribution_list_entry_without_name_is_invalid(project_validator):
    data = project(RELAYLAB_PROJECT)
    del data["project"]["attributions"][1]["name"]
    [error] = errors(project_validator, data)
    assert error.validator == "required" and "'name'" in error.message
    assert list(error.absolute_path) == ["project", "attributions", 1]


def test_attribution_list_errors_point_into_the_entry(project_validator):
    data = project(RELAYLAB_PROJECT)
    data["project"]["attributions"][0]["sources"] = "attribution-lrp.h5"
    data["project"]["attributions"][1]["atribution_method"] = data["project"]["attributions"][1].pop("attribution_method")
    assert paths(project_validator, data) == ["$.project.attributions[0].sources", "$.project.attributions[1]",
                                              "$.project.attributions[1]"]


def test_empty_attribution_list_is_invalid(project_validator):
    data = project(RELAYLAB_PROJECT)
    data["project"]["attributions"] = []
    assert paths(project_validator, data) == ["$.project.attributions"]


def test_project_key_must_be_an_object(project_validator):
    assert paths(project_validator, yaml.safe_load("project: my-project")) == ["$.project"]
    assert paths(project_validator, yaml.safe_load("- project: {}")) == ["$"]


# -------------------------------------------------------------------------------------------------------- viewer state

VIRELAY_EXPORT = """
{
  "projectId": 0,
  "projectName": "VGG16 ILSVRC2012-small SG",
  "modelName": "VGG16",
  "datasetName": "ILSVRC2012-small",
  "selectedAnalysisMethod": "spectral-analysis",
  "selectedAnalysisCategory": "n01443537",
  "selectedCategoryHumanReadableName": "goldfish",
  "selectedEmbeddingName": "tsne",
  "selectedClustering": "kmeans-03",
  "numberOfClusters": 4,
  "selectedColorMap": "black-fire-red",
  "selectedImageMode": "overlay",
  "selectedEmbeddingVectorsIndices": [12, 40, 41],
  "selectedEmbeddingVectorsClusters": [1, 1, -1],
  "allEmbeddingVectorsIndices": [3, 12, 27, 40, 41, 58],
  "allEmbeddingVectorsClusters": [0, 1, 2, 1, -1, 0]
}
"""


def state() -> dict:
    return json.loads(VIRELAY_EXPORT)


def test_virelay_export_is_valid(state_validator):
    assert paths(state_validator, state()) == []


@pytest.mark.parametrize("mode", ["input", "attribution", "overlay"])
def test_every_virelay_image_mode_is_valid(state_validator, mode):
    assert paths(state_validator, {**state(), "selectedImageMode": mode}) == []


def test_color_maps_beyond_virelays_are_valid(state_validator):
    assert paths(state_validator, {**state(), "selectedColorMap": "viridis"}) == []
    description = state_validator.schema["properties"]["selectedColorMap"]["description"]
    for name in ("gray-red", "black-green", "black-fire-red", "black-yellow", "blue-white-red", "afm-hot", "jet", "seismic"):
        assert name in description


@pytest.mark.parametrize("key, value, path", [
    ("selectedEmbeddingVectorsIndices", [12, "40"], ["selectedEmbeddingVectorsIndices", 1]),
    ("selectedEmbeddingVectorsIndices", "12,40,41", ["selectedEmbeddingVectorsIndices"]),
    ("allEmbeddingVectorsIndices", [3, -1], ["allEmbeddingVectorsIndices", 1]),
    ("allEmbeddingVectorsIndices", [3, 1.5], ["allEmbeddingVectorsIndices", 1]),
    ("selectedEmbeddingVectorsClusters", [1, -2], ["selectedEmbeddingVectorsClusters", 1]),
    ("allEmbeddingVectorsClusters", [0, "noise"], ["allEmbeddingVectorsClusters", 1]),
    ("projectId", "0", ["projectId"]),
    ("projectId", -1, ["projectId"]),
    ("numberOfClusters", "4", ["numberOfClusters"]),
    ("selectedImageMode", "heatmap", ["selectedImageMode"]),
    ("selectedColorMap", None, ["selectedColorMap"]),
    ("selectedClustering", 3, ["selectedClustering"]),
    ("projectName", ["a"], ["projectName"]),
])
def test_viewer_state_with_wrong_type_is_invalid(state_validator, key, value, path):
    [error] = errors(state_validator, {**state(), key: value})
    assert list(error.absolute_path) == path, error.message


def test_indices_as_strings_are_invalid_each_at_its_position(state_validator):
    data = {**state(), "selectedEmbeddingVectorsIndices": ["12", "40", "41"]}
    assert paths(state_validator, data) == [f"$.selectedEmbeddingVectorsIndices[{i}]" for i in range(3)]
    assert {error.validator for error in errors(state_validator, data)} == {"type"}


def test_viewer_state_needs_a_project_id_or_name(state_validator):
    data = state()
    del data["projectId"]
    assert paths(state_validator, data) == []
    del data["projectName"]
    assert paths(state_validator, data) == ["$"]


def test_unknown_top_level_keys_are_allowed(state_validator):
    assert paths(state_validator, {**state(), "someFutureKey": {"x": 1}}) == []


def test_relaylab_block_is_valid(state_validator):
    data = state()
    data["relaylab"] = {
        "version": 1,
        "firstEmbeddingDimension": 0,
        "secondEmbeddingDimension": 1,
        "colorBy": "kmeans-03",
        "imageSampling": "pixelated",
        "page": 2,
        "pageSize": 50,
        "selectedLayer": None,
        "selectedSample": 41,
    }
    assert paths(state_validator, data) == []
    data["relaylab"].update(selectedLayer="features.28", selectedSample=None)
    assert paths(state_validator, data) == []
    assert paths(state_validator, {**state(), "relaylab": {}}) == []


@pytest.mark.parametrize("block, path", [
    ({"version": 1, "zoom": 2.0}, ["relaylab"]),
    ({"version": "1"}, ["relaylab", "version"]),
    ({"firstEmbeddingDimension": -1}, ["relaylab", "firstEmbeddingDimension"]),
    ({"imageSampling": "nearest"}, ["relaylab", "imageSampling"]),
    ({"page": -1}, ["relaylab", "page"]),
    ({"pageSize": 0}, ["relaylab", "pageSize"]),
    ({"selectedLayer": 3}, ["relaylab", "selectedLayer"]),
    ({"selectedSample": "41"}, ["relaylab", "selectedSample"]),
    ({"colorBy": None}, ["relaylab", "colorBy"]),
    ([1, 2], ["relaylab"]),
])
def test_relaylab_block_rejects_unknown_keys_and_wrong_types(state_validator, block, path):
    [error] = errors(state_validator, {**state(), "relaylab": block})
    assert list(error.absolute_path) == path, error.message
    if path == ["relaylab"] and isinstance(block, dict):
        assert error.validator == "additionalProperties" and "'zoom'" in error.message
