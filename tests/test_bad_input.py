"""Bad input: a clear message naming the file, the path inside it and what was expected; no traceback from the
CLI; and no half-written output. The commands run in-process (conftest's `cli`), where an uncaught exception fails
the test; `test_the_command_line_reports_bad_input_with_exit_2_and_no_traceback` runs the real command in a child
process."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import yaml

from relaylab.data.project import open_project, open_projects
from relaylab.errors import RelaylabError

from .helpers import run_cli


def edit_yaml(path, change):
    data = yaml.safe_load(path.read_text())
    change(data["project"])
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def edit_h5(file, change):
    with h5py.File(file, "r+") as h5:
        change(h5)


def replace(h5, name, values):
    del h5[name]
    h5[name] = values


def edit_label_map(file, change):
    entries = json.loads(file.read_text())
    change(entries)
    file.write_text(json.dumps(entries))


def truncate(file):
    size = file.stat().st_size
    with open(file, "r+b") as f:
        f.truncate(size // 2)


# (case, damage(folder), [substrings the validate report must contain], convert also fails)
CASES = [
    ("missing dataset file", lambda d: (d / "dataset.h5").unlink(), ["dataset.h5", "expected an existing HDF5 file"]),
    ("missing label map", lambda d: (d / "label-map.json").unlink(), ["label-map.json", "expected an existing label map JSON file"]),
    ("truncated HDF5", lambda d: truncate(d / "dataset.h5"), ["dataset.h5", "expected a readable HDF5 file"]),
    ("not HDF5", lambda d: (d / "attribution-0.h5").write_text("index,value\n1,2\n"),
     ["attribution-0.h5", "expected an HDF5 file", "no HDF5 signature"]),
    ("missing data", lambda d: edit_h5(d / "dataset.h5", lambda h5: h5.__delitem__("data")),
     ["dataset.h5:/data", "expected a 'data' array or group"]),
    ("missing label", lambda d: edit_h5(d / "dataset.h5", lambda h5: h5.__delitem__("label")),
     ["dataset.h5:/label", "expected a 'label' array or group"]),
    ("missing attribution", lambda d: edit_h5(d / "attribution-1.h5", lambda h5: h5.__delitem__("attribution")),
     ["attribution-1.h5:/attribution", "expected a 'attribution' array or group"]),
    ("attribution shape", lambda d: edit_h5(d / "attribution-0.h5", lambda h5: replace(
        h5, "attribution", np.zeros((h5["attribution"].shape[0], 3, 8, 8), np.float32))),
     ["attribution-0.h5:/attribution", "per-sample shape (3 or 1, 16, 16) like the inputs", "(3, 8, 8)"]),
    ("label outside label map", lambda d: edit_h5(d / "dataset.h5", lambda h5: h5["label"].__setitem__(3, 7)),
     ["dataset.h5:/label", "labels that are class indices of the label map", "[7] at samples [3]"]),
    ("label map missing key", lambda d: edit_label_map(d / "label-map.json", lambda e: e[1].pop("name")),
     ["label-map.json:[1].name", "expected a key 'name'"]),
    ("label map duplicate index", lambda d: edit_label_map(d / "label-map.json", lambda e: e[2].update(index=0)),
     ["label-map.json:[2].index", "unique class index, 0 is also at [0]"]),
    ("index out of range", lambda d: edit_h5(d / "attribution-1.h5", lambda h5: h5["index"].__setitem__(0, 999)),
     ["attribution-1.h5:/index", "sample indices below the dataset size 30", "[999]"]),
    ("NaN in attributions", lambda d: edit_h5(d / "attribution-0.h5", lambda h5: h5["attribution"].__setitem__(
        (2, 0, 5, 5), np.nan)), ["attribution-0.h5:/attribution", "finite values (no NaN or inf)", "1 samples with NaN/inf"]),
    ("category without index", lambda d: edit_h5(d / "analysis-0.h5", lambda h5: h5.__delitem__("n00000001/index")),
     ["analysis-0.h5:/n00000001/index", "expected an 'index' array"]),
    ("embedding length", lambda d: edit_h5(d / "analysis-0.h5", lambda h5: replace(
        h5, "n00000000/embedding/tsne", np.zeros((4, 2), np.float32))),
     ["analysis-0.h5:/n00000000/embedding/tsne", "shape (10, components), one row per index entry", "(4, 2)"]),
    ("analysis index out of range", lambda d: edit_h5(d / "analysis-0.h5", lambda h5: h5["n00000000/index"].__setitem__(0, 500)),
     ["analysis-0.h5:/n00000000/index", "sample indices below the dataset size 30"]),
    ("invalid YAML", lambda d: (d / "project.yaml").write_text("project:\n  name: [unclosed\n"), ["project.yaml:line", "expected valid YAML"]),
    ("wrong YAML type", lambda d: edit_yaml(d / "project.yaml", lambda p: p["attributions"].update(sources="attribution-0.h5")),
     ["project.yaml:project.attributions", "array"]),
    ("unknown dataset type", lambda d: edit_yaml(d / "project.yaml", lambda p: p["dataset"].update(type="csv")),
     ["project.yaml:project.dataset.type", "csv"]),
    ("unknown sampling method", lambda d: edit_yaml(d / "project.yaml", lambda p: p["dataset"].update(up_sampling_method="bicubic")),
     ["project.yaml:project.dataset.up_sampling_method", "bicubic"]),
]


@pytest.mark.parametrize("case,damage,expected", CASES, ids=[c[0] for c in CASES])
def test_validate_and_convert_report_bad_input_clearly(make_project, tmp_path, cli, case, damage, expected):
    path = make_project(n_samples=30, attribution_files=2)
    damage(path.parent)
    report = cli("validate", "-q", path)
    assert report.returncode == 2, report.stdout + report.stderr
    for text in expected:
        assert text in report.stdout, f"{text!r} not in:\n{report.stdout}"

    out = tmp_path / "out.zarr"
    converted = cli("convert", "-q", path, out)
    assert converted.returncode == 2 and converted.stderr.startswith("error: ")
    assert not out.exists(), "a failed conversion left output behind"
    virelay = cli("convert", "-q", "--to", "virelay", path, tmp_path / "vr")
    if virelay.returncode == 0:  # content checks belong to validate/convert-to-zarr; the export copies as is
        assert case in ("label outside label map", "NaN in attributions", "analysis index out of range")
    else:
        assert virelay.returncode == 2 and virelay.stderr.startswith("error: ") and not (tmp_path / "vr").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".vr")]


def test_the_command_line_reports_bad_input_with_exit_2_and_no_traceback(make_project, tmp_path):
    """The real `relaylab` command in a child process: exit statuses and a clean stderr across the process boundary."""
    path = make_project(n_samples=30)
    (path.parent / "dataset.h5").unlink()
    report = run_cli("validate", "-q", path)
    assert report.returncode == 2 and "expected an existing HDF5 file" in report.stdout and "Traceback" not in report.stderr
    converted = run_cli("convert", "-q", path, tmp_path / "out.zarr")
    assert converted.returncode == 2 and converted.stderr.startswith("error: ") and "Traceback" not in converted.stderr
    assert not (tmp_path / "out.zarr").exists()
    usage = run_cli("--help")
    assert usage.returncode == 0 and usage.stdout.startswith("usage: relaylab") and usage.stderr == ""


def test_every_problem_is_listed_at_once(make_project, cli):
    path = make_project(n_samples=30, attribution_files=2)
    edit_label_map(path.parent / "label-map.json", lambda e: e[1].pop("name"))
    (path.parent / "attribution-0.h5").write_text("not hdf5")
    edit_h5(path.parent / "analysis-0.h5", lambda h5: h5.__delitem__("n00000001/index"))
    report = cli("validate", "-q", path)
    assert report.returncode == 2
    for text in ("label-map.json:[1].name", "attribution-0.h5", "analysis-0.h5:/n00000001/index"):
        assert text in report.stdout
    assert "3 problems found" in report.stderr


def test_nonfinite_attributions_convert_only_when_allowed(make_project, tmp_path, cli):
    path = make_project(n_samples=30)
    edit_h5(path.parent / "attribution-0.h5", lambda h5: h5["attribution"].__setitem__((4, 1, 2, 2), np.inf))
    assert cli("convert", "-q", path, tmp_path / "a.zarr").returncode == 2
    allowed = cli("convert", "-q", "--allow-nonfinite", path, tmp_path / "a.zarr")
    assert allowed.returncode == 0, allowed.stderr
    with open_project(tmp_path / "a.zarr") as project:
        assert np.isinf(project.attributions["lrp_epsilon_plus"]["attribution"][4, 1, 2, 2].values)


def test_an_unknown_compression_is_refused_before_anything_is_written(make_project, tmp_path, cli):
    from relaylab.data.convert import convert_to_zarr

    path = make_project(n_samples=10)
    with pytest.raises(RelaylabError, match=r"a\.zarr: expected a compression of auto, lz4, zstd, none \(found 'gzip'\)"):
        convert_to_zarr(path, tmp_path / "a.zarr", compression="gzip", progress=False)
    assert not (tmp_path / "a.zarr").exists()
    refused = cli("convert", "-q", "--compression", "gzip", path, tmp_path / "a.zarr")
    assert refused.returncode == 2 and "invalid choice: 'gzip'" in refused.stderr and not (tmp_path / "a.zarr").exists()


def test_two_projects_with_the_same_name(make_project, cli):
    first, second = make_project(name="twin"), make_project(name="twin")
    report = cli("validate", "-q", first, second)
    assert report.returncode == 2
    assert f"{second}:project.name: expected a name not already used by {first}" in report.stdout
    with pytest.raises(RelaylabError, match="project.name: expected a project name not already used"):
        open_projects([first, second])
    assert sorted(open_projects([first, make_project(name="other")])) == ["other", "twin"]


def test_clean_projects_validate_with_exit_status_zero(make_project, tmp_path, cli):
    path = make_project(attribution_files=2, analysis_files=2)
    assert cli("validate", "-q", path).returncode == 0
    assert cli("convert", "-q", path, tmp_path / "p.zarr").returncode == 0
    report = cli("validate", "-q", tmp_path / "p.zarr")
    assert report.returncode == 0 and report.stdout.startswith("ok:")


def test_missing_project_file_and_folder_without_store(tmp_path, cli):
    report = cli("info", tmp_path / "nothing.yaml")
    assert report.returncode == 2 and "nothing.yaml: expected an existing project file" in report.stderr
    (tmp_path / "folder").mkdir()
    report = cli("validate", tmp_path / "folder")
    assert report.returncode == 2 and "expected a project YAML file or a relaylab Zarr store" in report.stdout


@pytest.mark.parametrize("command", [[], ["validate"], ["convert"], ["info"], ["synthetic"]])
def test_every_command_has_help(command, cli):
    result = cli(*command, "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: relaylab")
    if command:
        assert f"relaylab {command[0]}" in result.stdout


def test_info_summarises_each_project(make_project, cli):
    report = cli("info", make_project(name="alpha", attribution_files=2), make_project(name="beta", multi_label=True))
    assert report.returncode == 0
    assert "project   alpha" in report.stdout and "project   beta" in report.stdout
    assert "60 samples, 3×16×16 uint8, single-label" in report.stdout and "multi-label" in report.stdout
    assert report.stdout.count("attributions/lrp_epsilon_plus  60 samples, method lrp_epsilon_plus, strategy true_label") == 2
    assert "analyses/spectral_analysis  3 categories, 60 members; embeddings: spectral, tsne; clusterings: hdbscan, kmeans-02" in report.stdout


VIEWER_STATE = {
    "projectId": 0, "projectName": "synthetic", "modelName": "synthetic-cnn", "datasetName": "synthetic-data",
    "selectedAnalysisMethod": "spectral_analysis", "selectedAnalysisCategory": "n00000001",
    "selectedCategoryHumanReadableName": "class 1", "selectedEmbeddingName": "tsne", "selectedClustering": "kmeans-02",
    "numberOfClusters": 2, "selectedColorMap": "black-fire-red", "selectedImageMode": "overlay",
    "selectedEmbeddingVectorsIndices": [1, 4], "selectedEmbeddingVectorsClusters": [0, 1],
    "allEmbeddingVectorsIndices": [1, 4, 7], "allEmbeddingVectorsClusters": [0, 1, -1],
}


def test_validate_reads_exported_viewer_states_and_label_maps(tmp_path, cli):
    good = tmp_path / "state.json"
    good.write_text(json.dumps(VIEWER_STATE))
    assert cli("validate", good).returncode == 0
    bad = tmp_path / "bad-state.json"
    bad.write_text(json.dumps({**VIEWER_STATE, "selectedEmbeddingVectorsIndices": ["1", 4]}))
    report = cli("validate", bad)
    assert report.returncode == 2 and f"{bad}:selectedEmbeddingVectorsIndices[0]: expected a value of type integer" in report.stdout
    unpaired = tmp_path / "unpaired.json"
    unpaired.write_text(json.dumps({**VIEWER_STATE, "allEmbeddingVectorsClusters": [0, 1]}))
    report = cli("validate", unpaired)
    assert "allEmbeddingVectorsClusters: expected one cluster per entry of allEmbeddingVectorsIndices (3) (found 2)" in report.stdout
    label_map = tmp_path / "labels.json"
    label_map.write_text(json.dumps([{"index": 0, "word_net_id": "n1", "name": "a"}, {"index": "1", "word_net_id": "n2", "name": "b"}]))
    report = cli("validate", label_map)
    assert report.returncode == 2 and f"{label_map}:[1].index: expected an integer (found '1')" in report.stdout
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    report = cli("validate", broken)
    assert report.returncode == 2 and "expected valid JSON" in report.stdout
