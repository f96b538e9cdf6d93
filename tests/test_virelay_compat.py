"""What `convert --to virelay` writes loads in ViRelAy 0.6.1's own loader, with the same values.

ViRelAy pins versions that clash with relaylab's, so it lives in its own environment; `./dev test` creates it and
sets RELAYLAB_VIRELAY_PYTHON. Without it these tests are skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap

import numpy as np
import pytest
from PIL import Image

from relaylab.data.project import open_project
from relaylab.data.synthetic import write_image_directory_project

VIRELAY_PYTHON = os.environ.get("RELAYLAB_VIRELAY_PYTHON")
pytestmark = [pytest.mark.virelay,
              pytest.mark.skipif(not VIRELAY_PYTHON, reason="ViRelAy 0.6.1 environment not set up (RELAYLAB_VIRELAY_PYTHON)")]

LOAD_WITH_VIRELAY = textwrap.dedent("""
    import json, sys
    import numpy
    from virelay.model import Workspace

    workspace = Workspace()
    workspace.add_project(sys.argv[1])
    project = workspace.get_project(workspace.get_project_names()[0])
    report = {"name": project.name, "model": project.model, "samples": {}, "attributions": {}, "analyses": {}}
    for index in json.loads(sys.argv[2]):
        sample = project.get_sample(index)
        report["samples"][index] = {"data": sample.data.tolist(), "labels": [label.index for label in sample.labels]}
        attribution = project.get_attribution(index)
        report["attributions"][index] = {"data": attribution.data.tolist(), "prediction": attribution.prediction.tolist(),
                                         "labels": [label.index for label in attribution.labels]}
    for method in project.get_analysis_methods():
        for category in project.get_analysis_categories(method):
            for embedding in ("spectral", "tsne"):
                for clustering in project.get_analysis_clustering_names(method):
                    try:
                        analysis = project.get_analysis(method, category.name, clustering, embedding)
                    except LookupError:
                        continue
                    report["analyses"][f"{method}/{category.name}/{embedding}/{clustering}"] = {
                        "human": category.human_readable_name,
                        "embedding": analysis.embedding.tolist(), "clustering": analysis.clustering.tolist(),
                        "index": analysis.attribution_indices.tolist(),
                        "eigenvalues": None if analysis.eigenvalues is None else analysis.eigenvalues.tolist()}
    project.close()
    print(json.dumps(report))
""")


def load_with_virelay(project_yaml, indices):
    result = subprocess.run([VIRELAY_PYTHON, "-c", LOAD_WITH_VIRELAY, str(project_yaml), json.dumps(indices)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def hwc(values):
    """ViRelAy moves the channel axis last when it is the smallest."""
    return np.moveaxis(values, 0, -1)


@pytest.mark.parametrize("fields", [dict(layout="hwc", attribution_files=2, analysis_files=2), dict(multi_label=True)],
                         ids=["single-label-split", "multi-label"])
def test_export_from_a_zarr_store_loads_in_virelay(make_project, tmp_path, cli, fields):
    source = make_project(**fields)
    assert cli("convert", "-q", source, tmp_path / "p.zarr").returncode == 0
    exported = cli("convert", "-q", "--to", "virelay", tmp_path / "p.zarr", tmp_path / "vr")
    assert exported.returncode == 0, exported.stderr
    indices = [0, 7, 33, 59]
    report = load_with_virelay(tmp_path / "vr" / "project.yaml", indices)
    with open_project(source) as project:
        assert report["name"] == project.name and report["model"] == project.model
        attributions = project.attributions["lrp_epsilon_plus"]
        for index in indices:
            sample = report["samples"][str(index)]
            np.testing.assert_array_equal(np.array(sample["data"]), hwc(project.inputs["input"][index].values))
            label = project.inputs["label"][index].values
            assert sample["labels"] == (np.flatnonzero(label).tolist() if label.ndim else [int(label)])
            attribution = report["attributions"][str(index)]
            row = attributions.sel(sample=index)
            np.testing.assert_array_equal(np.array(attribution["data"], dtype=np.float32), hwc(row["attribution"].values))
            np.testing.assert_array_equal(np.array(attribution["prediction"], dtype=np.float32), row["prediction"].values)
        tree = project.analyses["spectral_analysis"]
        expected_keys = set()
        for category, node in tree.children.items():
            for embedding in node["embedding"].children:
                for clustering in node["cluster"].dataset.data_vars:
                    expected_keys.add(f"spectral_analysis/{category}/{embedding}/{clustering}")
                    got = report["analyses"][f"spectral_analysis/{category}/{embedding}/{clustering}"]
                    assert got["human"] == node.attrs["display_name"]
                    np.testing.assert_array_equal(np.array(got["embedding"], dtype=np.float32),
                                                  node[f"embedding/{embedding}"]["embedding"].values)
                    np.testing.assert_array_equal(got["clustering"], node["cluster"][clustering].values)
                    np.testing.assert_array_equal(got["index"], node["index"].values)
                    if embedding == "spectral":
                        np.testing.assert_allclose(got["eigenvalues"], node["embedding/spectral"]["eigenvalue"].values, rtol=1e-6)
        assert set(report["analyses"]) == expected_keys


@pytest.mark.parametrize("label_by, up, down", [
    ("word_net_id", "fill_zeros", "center_crop"),
    ("index", "edge_repeat", "resize"),
    ("word_net_id", "resize", "center_crop"),
    ("index", "mirror_edge", "resize"),
])
def test_an_image_directory_project_shows_the_same_in_virelay_after_conversion(tmp_path, cli, label_by, up, down):
    # a square input size: ViRelAy pads and crops the height as if it were the width, harmless only when they are equal
    sizes = [(5, 3), (11, 9), (8, 8), (6, 10), (13, 4), (3, 6), (8, 11), (10, 12)]
    source = write_image_directory_project(tmp_path / "project", sizes, input_width=8, input_height=8,
                                           up_sampling_method=up, down_sampling_method=down, label_by=label_by)
    assert cli("convert", "-q", source, tmp_path / "p.zarr").returncode == 0
    exported = cli("convert", "-q", "--to", "virelay", tmp_path / "p.zarr", tmp_path / "vr")
    assert exported.returncode == 0, exported.stderr
    indices = list(range(len(sizes)))
    original = load_with_virelay(source, indices)
    report = load_with_virelay(tmp_path / "vr" / "project.yaml", indices)
    resized = 0
    with open_project(source) as project:
        for index in indices:
            sample = report["samples"][str(index)]
            np.testing.assert_array_equal(np.array(sample["data"]), hwc(project.inputs["input"][index].values))
            with Image.open(str(project.inputs["path"][index].values)) as image:
                width, height = image.size
            # for some sizes Pillow's bicubic resize gives values a few levels apart in ViRelAy's Pillow 10.4 and in
            # relaylab's, so only padded and cropped samples are compared with ViRelAy's own reading of the folder
            if (up == "resize" and min(width, height) < 8) or (down == "resize" and max(width, height) > 8):
                resized += 1
                assert sample["labels"] == original["samples"][str(index)]["labels"]
            else:
                assert sample == original["samples"][str(index)]  # pixels and labels as ViRelAy reads the folder
            assert sample["labels"] == [int(project.inputs["label"][index])]
            assert report["attributions"][str(index)] == original["attributions"][str(index)]
    assert len({tuple(s["labels"]) for s in report["samples"].values()}) == 3
    assert resized < len(indices)
    assert report["analyses"] and report["analyses"] == original["analyses"]


def test_samples_of_different_shapes_load_in_virelay_at_the_input_size_after_conversion(make_project, tmp_path, cli):
    source = make_project(data_as_group=True, size_jitter=3, n_samples=20, up_sampling="edge_repeat", down_sampling="resize")
    assert cli("convert", "-q", source, tmp_path / "p.zarr").returncode == 0
    exported = cli("convert", "-q", "--to", "virelay", tmp_path / "p.zarr", tmp_path / "vr")
    assert exported.returncode == 0, exported.stderr
    indices = [0, 3, 11, 19]
    report = load_with_virelay(tmp_path / "vr" / "project.yaml", indices)
    original = load_with_virelay(source, [3])  # ViRelAy reads the per-sample group as it is; sample 3 has the input size
    with open_project(source) as project:
        attributions = project.attributions["lrp_epsilon_plus"]
        for index in indices:
            sample = report["samples"][str(index)]
            np.testing.assert_array_equal(np.array(sample["data"]), hwc(project.inputs["input"][index].values))
            assert sample["labels"] == [int(project.inputs["label"][index])]
            np.testing.assert_array_equal(np.array(report["attributions"][str(index)]["data"], dtype=np.float32),
                                          hwc(attributions.sel(sample=index)["attribution"].values))
        assert np.array(original["samples"]["3"]["data"]).shape == (16, 16, 3)
        assert original["samples"]["3"] == report["samples"]["3"]
