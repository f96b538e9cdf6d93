"""Label maps without real WordNet ids (CIFAR- and MNIST-style: `word_net_id` absent, null, empty or repeated, and
indices that are not 0…n-1), accepted as ViRelAy 0.6.1 accepts them: classes keyed by their zero-padded index, a
`validate` warning that says so, and every stage working on such a map (open, convert, analyze, the explorer's
category names, the export back to ViRelAy and ViRelAy's own loader on it).

Projects are written by `write_virelay_project` (ViRelAy's layout); the label map is replaced by a CIFAR-style one,
and analysis groups are named as CoRelAy's SpRAy example names them (`wordnet_id_map.get(i, f'{i:08d}')`), by index
where a class has no id of its own. With RELAYLAB_VIRELAY_PYTHON set, ViRelAy's loader opens the source projects
(where it accepts them) and the exports.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap

import h5py
import numpy as np
import pytest
import yaml
from PIL import Image

from relaylab.analyze.run import categories as analysis_categories
from relaylab.data.labels import category_display_name, label_map_from_entries, label_map_warnings
from relaylab.data.project import open_project
from relaylab.explain.ingest import ingest
from relaylab.explore.state import categories as explorer_categories

VIRELAY_PYTHON = os.environ.get("RELAYLAB_VIRELAY_PYTHON")
needs_virelay = pytest.mark.skipif(not VIRELAY_PYTHON, reason="ViRelAy 0.6.1 environment not set up (RELAYLAB_VIRELAY_PYTHON)")

CIFAR = ["airplane", "automobile", "bird"]
ABSENT = object()  # no `word_net_id` key at all
PADDED = ["00000000", "00000001", "00000002"]
# variant: (each class's word_net_id as the JSON holds it, the category keys relaylab gives the classes, the warning)
MAPS = {
    "absent": ([ABSENT] * 3, PADDED, "no word_net_id (key absent or null) in 3 of 3 entries: [0], [1], [2]"),
    "null": ([None] * 3, PADDED, "no word_net_id (key absent or null) in 3 of 3 entries: [0], [1], [2]"),
    "empty": ([""] * 3, PADDED, "an empty word_net_id in 3 of 3 entries: [0], [1], [2]"),
    "repeated": (["n02691156", "n02958343", "n02958343"], ["n02691156", "00000001", "00000002"],
                 "a word_net_id that another class also has in 2 of 3 entries: [1] 'n02958343', [2] 'n02958343'"),
}
SPRAY = {"spectral": {"n_components": 8}, "knn": {"n_neighbors": 8, "method": "exact"}, "clusterings": {"kmeans": {"k": [2]}}}

VIRELAY_REPORT = textwrap.dedent("""
    import json, sys
    from virelay.model import Workspace

    workspace = Workspace()
    workspace.add_project(sys.argv[1])
    project = workspace.get_project(workspace.get_project_names()[0])
    report = {"categories": {}, "labels": {}}
    for method in project.get_analysis_methods():
        for category in project.get_analysis_categories(method):
            report["categories"][f"{method}/{category.name}"] = category.human_readable_name
    for index in json.loads(sys.argv[2]):
        report["labels"][index] = [[label.index, label.name] for label in project.get_sample(index).labels]
    project.close()
    print(json.dumps(report))
""")


def virelay_report(project_yaml, indices) -> dict:
    """ViRelAy 0.6.1's loader on a project: each analysis category's human-readable name, and the labels (index,
    name) of the given samples."""
    result = subprocess.run([VIRELAY_PYTHON, "-c", VIRELAY_REPORT, str(project_yaml), json.dumps(indices)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def cifar_project(make_project, wnids: list, keys: list[str], indices=(0, 1, 2)):
    """A synthetic ViRelAy project (60 samples, class of sample k = k % 3) with a CIFAR-style label map: the given
    `word_net_id`s, class indices `indices` (labels and prediction columns follow them) and analysis groups named
    by `keys`."""
    path = make_project("cifar-style", n_samples=60)
    folder = path.parent
    entries = [{"index": i, **({} if w is ABSENT else {"word_net_id": w}), "name": n} for i, w, n in zip(indices, wnids, CIFAR)]
    (folder / "label-map.json").write_text(json.dumps(entries, indent=2))
    with h5py.File(folder / "analysis-0.h5", "r+") as h5:
        for position, key in enumerate(keys):
            h5.move(f"n{position:08d}", key)
    if tuple(indices) != (0, 1, 2):
        index = np.array(indices)
        for file in ("dataset.h5", "attribution-0.h5"):
            with h5py.File(folder / file, "r+") as h5:
                labels = index[h5["label"][()]]
                del h5["label"]
                h5["label"] = labels
                if "prediction" in h5:
                    prediction = np.zeros((len(labels), index.max() + 1), np.float32)
                    prediction[:, index] = h5["prediction"][()]
                    del h5["prediction"]
                    h5["prediction"] = prediction
    return path


@pytest.mark.parametrize("variant", list(MAPS))
def test_a_map_without_unique_ids_validates_with_a_warning_and_opens(make_project, cli, variant):
    wnids, keys, reason = MAPS[variant]
    path = cifar_project(make_project, wnids, keys)
    label_map = path.parent / "label-map.json"
    report = cli("validate", "-q", path)
    assert report.returncode == 0, report.stdout + report.stderr
    warnings = [line for line in report.stdout.splitlines() if line.startswith("warning: ")]
    index_keys = [k for k in keys if k in PADDED]
    assert warnings == [f"warning: {label_map}:[{keys.index(index_keys[0])}].word_net_id: expected a WordNet id that no other "
                        f"class has (found {reason}; assumed: these classes are keyed by their zero-padded index, as ViRelAy "
                        f"and CoRelAy name their category groups: {', '.join(map(repr, index_keys))})"]
    assert report.stdout.splitlines()[-1] == f"ok: {path} (1 warning)"
    alone = cli("validate", label_map)  # the label map on its own
    assert alone.returncode == 0 and alone.stdout.splitlines() == [*warnings, f"ok: {label_map} (1 warning)"]

    with open_project(path) as project:
        assert project.label_map["category"].values.tolist() == keys
        assert project.label_map["name"].values.tolist() == CIFAR
        assert explorer_categories(project, "spectral_analysis") == dict(zip(keys, CIFAR))  # the explorer's names
        members = analysis_categories(project.attributions["lrp_epsilon_plus"], "true_label", project.label_map)
        assert list(members) == keys  # `relaylab analyze` names its categories by the same keys
        for position, key in enumerate(keys):
            np.testing.assert_array_equal(members[key], np.arange(position, 60, 3))
    if VIRELAY_PYTHON and variant != "absent":  # ViRelAy reads `label['word_net_id']`: only an absent key stops it
        loaded = virelay_report(path, [0, 1, 2])
        assert loaded["labels"] == {str(i): [[i, CIFAR[i]]] for i in range(3)}
        assert set(loaded["categories"]) == {f"spectral_analysis/{k}" for k in keys}


@pytest.mark.parametrize("variant", ["absent", "repeated"])
def test_index_keyed_classes_through_convert_analyze_and_back_to_virelay(make_project, tmp_path, cli, dask_cluster, variant):
    wnids, keys, _ = MAPS[variant]
    path = cifar_project(make_project, wnids, keys)
    store = tmp_path / "p.zarr"
    assert cli("convert", "-q", path, store).returncode == 0
    checked = cli("validate", "-q", store)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # the store keeps the map as read ("" for an absent id), and validate says the same about it
    assert f"warning: {store}:zarr.json#attributes.relaylab.label_map[" in checked.stdout
    config = tmp_path / "spray.yaml"
    config.write_text(yaml.safe_dump(SPRAY))
    result = cli("analyze", "-q", store, "--name", "spray", "--config", config, "--scheduler", dask_cluster.scheduler_address)
    assert result.returncode == 0, result.stderr
    with open_project(store) as project:
        assert project.label_map["category"].values.tolist() == keys
        assert sorted(project.analyses["spray"].children) == sorted(keys)
        for position, key in enumerate(keys):
            np.testing.assert_array_equal(project.analyses["spray"][key]["index"].values, np.arange(position, 60, 3))
        for analysis in ("spectral_analysis", "spray"):
            assert explorer_categories(project, analysis) == dict(zip(keys, CIFAR))

    out = tmp_path / "vr"
    exported = cli("convert", "-q", "--to", "virelay", store, out)
    assert exported.returncode == 0, exported.stderr
    # ViRelAy finds a category's class name by word_net_id only: the export writes each class's key as its id
    assert json.loads((out / "label-map.json").read_text()) == [
        {"index": i, "word_net_id": k, "name": n} for i, (k, n) in enumerate(zip(keys, CIFAR))]
    assert cli("validate", "-q", out / "project.yaml").stdout.splitlines() == [f"ok: {out / 'project.yaml'}"]
    if VIRELAY_PYTHON:
        loaded = virelay_report(out / "project.yaml", [0, 1, 2, 31])
        assert loaded["categories"] == {f"{m}/{k}": n for m in ("spectral_analysis", "spray") for k, n in zip(keys, CIFAR)}
        assert loaded["labels"] == {"0": [[0, "airplane"]], "1": [[1, "automobile"]], "2": [[2, "bird"]], "31": [[1, "automobile"]]}


def test_indices_that_are_not_contiguous(make_project, tmp_path, cli):
    """A map of a model's outputs 1, 4 and 7 only (ViRelAy looks labels up by index value, so it accepts one):
    labels, categories and names follow the indices, and the export loads in ViRelAy with the same labels."""
    keys = ["00000001", "00000004", "00000007"]
    path = cifar_project(make_project, [None] * 3, keys, indices=(1, 4, 7))
    report = cli("validate", "-q", path)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "'00000001', '00000004', '00000007'" in report.stdout
    with open_project(path) as project:
        assert project.label_map["class"].values.tolist() == [1, 4, 7]
        assert project.inputs["label"].values[:4].tolist() == [1, 4, 7, 1]
        assert explorer_categories(project, "spectral_analysis") == dict(zip(keys, CIFAR))
        attributions = project.attributions["lrp_epsilon_plus"]
        assert attributions.sizes["class"] == 8 and "class_name" not in attributions.coords  # 8 outputs, 3 named
        assert list(analysis_categories(attributions, "true_label", project.label_map)) == keys
    if VIRELAY_PYTHON:
        assert virelay_report(path, [0, 1, 2])["labels"] == {"0": [[1, "airplane"]], "1": [[4, "automobile"]], "2": [[7, "bird"]]}
    store, out = tmp_path / "p.zarr", tmp_path / "vr"
    assert cli("convert", "-q", path, store).returncode == 0
    assert cli("convert", "-q", "--to", "virelay", store, out).returncode == 0
    with h5py.File(out / "dataset.h5") as h5:
        assert h5["label"][:4].tolist() == [1, 4, 7, 1]
    if VIRELAY_PYTHON:
        loaded = virelay_report(out / "project.yaml", [0, 1, 2, 59])
        assert loaded["labels"] == {"0": [[1, "airplane"]], "1": [[4, "automobile"]], "2": [[7, "bird"]], "59": [[7, "bird"]]}
        assert loaded["categories"] == {f"spectral_analysis/{k}": n for k, n in zip(keys, CIFAR)}


def test_keys_stay_unique_when_an_id_looks_like_an_index_key():
    """A class whose WordNet id is another class's index key would give two classes one category: it is keyed by
    its own index too. A category still finds its class by id (the first with that id, as in ViRelAy) or by index."""
    label_map = label_map_from_entries([{"index": 0, "name": "zero"}, {"index": 1, "word_net_id": "00000000", "name": "one"},
                                        {"index": 2, "word_net_id": "n2", "name": "two"}, {"index": 3, "word_net_id": "n2", "name": "three"}])
    assert label_map["category"].values.tolist() == ["00000000", "00000001", "00000002", "00000003"]
    assert label_map["word_net_id"].values.tolist() == ["", "00000000", "n2", "n2"]
    assert [category_display_name(label_map, c) for c in ("00000000", "00000001", "n2", "3", "other")] == [
        "zero", "one", "two", "three", "other"]
    entries = [{"index": 0, "name": "zero"}, {"index": 1, "word_net_id": "00000000", "name": "one"}]
    assert [(w.path, w.level) for w in label_map_warnings(entries, "m.json")] == [("[0].word_net_id", "warning"),
                                                                                 ("[1].word_net_id", "warning")]


def test_ids_of_the_wrong_type_and_repeated_indices_are_still_errors(tmp_path, cli):
    label_map = tmp_path / "labels.json"
    label_map.write_text(json.dumps([{"index": 0, "word_net_id": 7, "name": "a"}, {"index": 0, "name": "b"}]))
    report = cli("validate", label_map)
    assert report.returncode == 2
    assert report.stdout.splitlines() == [
        f"{label_map}:[0].word_net_id: expected a string (or null, or no key, for a class without one) (found 7)",
        f"{label_map}:[1].index: expected a unique class index, 0 is also at [0]"]


def test_ingest_with_a_map_without_ids_finds_classes_by_name(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("bird", "airplane"):
        (tmp_path / "images" / name).mkdir(parents=True)
        Image.fromarray((rng.random((20, 20, 3)) * 255).astype(np.uint8)).save(tmp_path / "images" / name / "x.png")
    label_map = tmp_path / "labels.json"
    label_map.write_text(json.dumps([{"index": i, "name": n} for i, n in enumerate(CIFAR)]))
    out = ingest(tmp_path / "images", tmp_path / "p.zarr", size=(16, 16), label_map=label_map, progress=False)
    with open_project(out) as project:
        assert project.inputs["label"].values.tolist() == [0, 2]  # airplane/x.png, bird/x.png
        assert project.label_map["category"].values.tolist() == PADDED
