"""What a ViRelAy project holds, read with h5py, json, yaml and Pillow alone: the reference that
tests/test_generated_projects.py and tests/test_mutations.py hold relaylab's readings against. Written apart from
relaylab's readers on purpose (nothing here imports them), following docs/formats.md and ViRelAy 0.6.1's loader:
per-sample groups in sorted key order, rows of attribution files at their `index`, categories of an analysis method
merged over its sources (the first source with a name gives it), image folders listed recursively and sorted.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import yaml
from PIL import Image

from .helpers import virelay_resampled


@dataclass
class Reference:
    name: str
    model: str
    dataset_name: str
    inputs: np.ndarray                      # (N, C, H, W)
    labels: np.ndarray                      # (N,) or (N, classes)
    label_map: dict[int, tuple[str, str]]   # index -> (word_net_id, name)
    attribution_method: str | None = None
    attributions: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = field(default_factory=dict)
    analyses: dict[str, dict[str, dict]] = field(default_factory=dict)
    paths: list[str] | None = None          # image folders: the sample files


def read_array(h5: h5py.File, name: str) -> np.ndarray:
    node = h5[name]
    if isinstance(node, h5py.Group):
        return np.stack([np.asarray(node[key][()]) for key in sorted(node)])
    return np.asarray(node[()])


def to_chw(values: np.ndarray, layout: str) -> np.ndarray:
    if layout == "hwc":
        return values.transpose(0, 3, 1, 2)
    if layout == "hw":
        return values[:, None]
    return values


def value_range(values: np.ndarray) -> list[float]:
    """ViRelAy's guess from the values: uint8 is 0..255; floats [-1, 1] when negative, [0, 255] above 1, else [0, 1]."""
    if values.dtype == np.uint8:
        return [0.0, 255.0]
    low, high = float(values.min()), float(values.max())
    return [-1.0, 1.0] if low < 0 else [0.0, 255.0] if high > 1 else [0.0, 1.0]


def read_reference(yaml_path: Path, layout: str = "chw") -> Reference:
    """The project at `yaml_path` as ViRelAy's loader sees it; `layout` is the HDF5 arrays' axis order."""
    folder = yaml_path.parent
    spec = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))["project"]
    entries = json.loads((folder / spec["label_map"]).read_text(encoding="utf-8"))
    label_map = {int(e["index"]): (e["word_net_id"], e["name"]) for e in entries}
    dataset = spec["dataset"]
    paths = None
    if dataset["type"] == "hdf5":
        with h5py.File(folder / dataset["path"], "r") as h5:
            inputs, labels = to_chw(read_array(h5, "data"), layout), read_array(h5, "label")
    else:
        inputs, labels, paths = read_image_folder(folder / dataset["path"], dataset, label_map)
    ref = Reference(spec["name"], spec["model"], dataset["name"], inputs, labels, label_map, paths=paths)
    if spec.get("attributions"):
        block = spec["attributions"]
        ref.attribution_method = block["attribution_method"]
        for source in block["sources"]:
            with h5py.File(folder / source, "r") as h5:
                attribution = to_chw(read_array(h5, "attribution"), layout)
                rows = read_array(h5, "label")
                prediction = read_array(h5, "prediction") if "prediction" in h5 else None
                index = read_array(h5, "index").astype(np.int64) if "index" in h5 else np.arange(len(attribution))
            for row, sample in enumerate(index.tolist()):
                assert sample not in ref.attributions, f"sample {sample} in two attribution files"
                ref.attributions[sample] = (attribution[row], rows[row], None if prediction is None else prediction[row])
    for block in spec.get("analyses") or []:
        method = ref.analyses.setdefault(block["analysis_method"], {})
        for source in block["sources"]:
            with h5py.File(folder / source, "r") as h5:
                for category, group in h5.items():
                    node = method.setdefault(category, {"index": group["index"][()], "embedding": {}, "cluster": {}})
                    assert np.array_equal(node["index"], group["index"][()])
                    for name, item in group.get("embedding", {}).items():
                        attrs = dict(item.attrs)
                        node["embedding"].setdefault(name, (item[()], attrs.pop("eigenvalue", None), attrs))
                    for name, item in group.get("cluster", {}).items():
                        node["cluster"].setdefault(name, (item[()], dict(item.attrs)))
    return ref


def read_image_folder(folder: Path, dataset: dict, label_map: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every file under `folder`, sorted; its label from its parent folder's name (a WordNet id or a class index,
    as the generated projects name them); its pixels as RGB, resampled as ViRelAy does. Raises ValueError for an
    image the sampling methods cannot bring to the input size."""
    files = sorted(str(Path(root) / name) for root, _, names in os.walk(folder) for name in names)
    by_wnid = {wnid: index for index, (wnid, _) in sorted(label_map.items(), reverse=True)}
    width, height = dataset["input_width"], dataset["input_height"]
    images, labels = [], []
    for file in files:
        parent = Path(file).parent.name
        labels.append(by_wnid[parent] if dataset.get("label_word_net_id_regex") else int(parent))
        with Image.open(file) as image:
            rgb = np.asarray(image.convert("RGB"))
        resampled = virelay_resampled(rgb, width, height, dataset["up_sampling_method"], dataset["down_sampling_method"])
        if resampled.shape[:2] != (height, width):
            raise ValueError(f"{file}: {rgb.shape[1]}x{rgb.shape[0]} does not become {width}x{height}")
        images.append(resampled.transpose(2, 0, 1))
    return np.stack(images), np.asarray(labels, dtype=np.int64), files


# ------------------------------------------------------------------------------------------- relaylab vs reference


def assert_matches(project, ref: Reference, *, exact_dtypes: bool = True) -> None:
    """relaylab's opened project holds exactly the reference's values (and dtypes, where the file decides them)."""
    inputs = project.inputs["input"].values
    assert inputs.shape == ref.inputs.shape, (inputs.shape, ref.inputs.shape)
    if exact_dtypes:
        assert inputs.dtype == ref.inputs.dtype, (inputs.dtype, ref.inputs.dtype)
    np.testing.assert_array_equal(inputs, ref.inputs)
    np.testing.assert_array_equal(project.inputs["label"].values, ref.labels)
    assert {int(c): (str(w), str(n)) for c, w, n in zip(project.label_map["class"].values, project.label_map["word_net_id"].values,
                                                         project.label_map["name"].values)} == ref.label_map
    if ref.paths is not None and "path" in project.inputs.coords:
        assert [os.path.abspath(p) for p in project.inputs["path"].values.tolist()] == [os.path.abspath(p) for p in ref.paths]
    assert len(project.attributions) == (1 if ref.attribution_method is not None else 0)
    for ds in project.attributions.values():
        ds = ds.sortby("sample")
        samples = sorted(ref.attributions)
        np.testing.assert_array_equal(ds["sample"].values, samples)
        expected = np.stack([ref.attributions[s][0] for s in samples])
        if exact_dtypes:
            assert ds["attribution"].dtype == expected.dtype
        np.testing.assert_array_equal(ds["attribution"].values, expected)
        np.testing.assert_array_equal(ds["label"].values, np.stack([ref.attributions[s][1] for s in samples]))
        predictions = [ref.attributions[s][2] for s in samples]
        given = [p for p in predictions if p is not None]
        assert ("prediction" in ds) == bool(given)
        if given:  # rows of a file without predictions (when another file has them) are NaN
            nan = np.full_like(given[0], np.nan, dtype=np.float64)
            np.testing.assert_array_equal(ds["prediction"].values, np.stack([nan if p is None else p for p in predictions]))
    assert sorted(project.analyses) == sorted(ref.analyses)
    for method, categories in ref.analyses.items():
        tree = project.analyses[method]
        assert sorted(tree.children) == sorted(categories)
        for category, node in categories.items():
            got = tree[category]
            np.testing.assert_array_equal(got["index"].values, node["index"])
            embeddings = got["embedding"].children if "embedding" in got.children else {}
            assert sorted(embeddings) == sorted(node["embedding"])
            for name, (values, eigenvalue, attrs) in node["embedding"].items():
                emb = got[f"embedding/{name}"]
                np.testing.assert_array_equal(emb["embedding"].values, values)
                assert ("eigenvalue" in emb.coords) == (eigenvalue is not None)
                if eigenvalue is not None:
                    np.testing.assert_allclose(emb["eigenvalue"].values, eigenvalue, rtol=1e-6)
                assert {k: emb.attrs[k] for k in attrs if k in emb.attrs} == {k: plain(v) for k, v in attrs.items()}
            clusters = got["cluster"].dataset if "cluster" in got.children else {}
            assert sorted(clusters) == sorted(node["cluster"])
            for name, (values, _) in node["cluster"].items():
                np.testing.assert_array_equal(clusters[name].values, values)


def plain(value):
    return value.tolist() if isinstance(value, np.ndarray) else value.item() if isinstance(value, np.generic) else value


def assert_same_reference(a: Reference, b: Reference) -> None:
    """Every value of two readings equal (the round trip), dtypes of the images and attributions included."""
    assert (a.name, a.model, a.dataset_name) == (b.name, b.model, b.dataset_name)
    assert a.inputs.dtype == b.inputs.dtype and a.inputs.shape == b.inputs.shape
    np.testing.assert_array_equal(a.inputs, b.inputs)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.label_map == b.label_map
    assert a.attribution_method == b.attribution_method
    assert sorted(a.attributions) == sorted(b.attributions)
    for sample, (attribution, label, prediction) in a.attributions.items():
        other = b.attributions[sample]
        assert attribution.dtype == other[0].dtype
        np.testing.assert_array_equal(attribution, other[0])
        np.testing.assert_array_equal(label, other[1])
        assert (prediction is None) == (other[2] is None)
        if prediction is not None:
            np.testing.assert_array_equal(prediction, other[2])
    assert sorted(a.analyses) == sorted(b.analyses)
    for method, categories in a.analyses.items():
        assert sorted(categories) == sorted(b.analyses[method])
        for category, node in categories.items():
            other = b.analyses[method][category]
            np.testing.assert_array_equal(node["index"], other["index"])
            assert sorted(node["embedding"]) == sorted(other["embedding"])
            for name, (values, eigenvalue, _) in node["embedding"].items():
                np.testing.assert_array_equal(values, other["embedding"][name][0])
                assert (eigenvalue is None) == (other["embedding"][name][1] is None)
                if eigenvalue is not None:
                    np.testing.assert_allclose(eigenvalue, other["embedding"][name][1], rtol=1e-6)
            assert sorted(node["cluster"]) == sorted(other["cluster"])
            for name, (values, _) in node["cluster"].items():
                np.testing.assert_array_equal(values, other["cluster"][name][0])
