"""CoRelAy's own scenario: an attribution HDF5 file and a label map, no dataset file, analysed from the command line.

The files are those of CoRelAy 1.0.0's SpRAy example ("Example Project" in CoRelAy's documentation; its script is
docs/examples/virelay_analysis.py in CoRelAy's repository): `label-map.json`, a list of {index, word_net_id, name}
(CIFAR-10's, as the example shows), and an attribution file holding `attribution` (N, C, H, W) float32 and `label`
(N,) integers, with no `prediction` and no `index` (the example reads nothing else). The example's script reads them
and writes `analysis.hdf5`; `relaylab analyze attributions.h5 --label-map label-map.json --export-virelay
analysis.h5` does the same job. Where the CoRelAy side environment is set up (RELAYLAB_CORELAY_PYTHON), the example's
own code runs on the same files first, which shows that they are what it reads, and gives the layout relaylab's
export is compared with; where ViRelAy's is (RELAYLAB_VIRELAY_PYTHON), ViRelAy 0.6.1's loader opens the result.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from html import unescape
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from relaylab.data.project import open_project
from relaylab.errors import RelaylabError

CORELAY = os.environ.get("RELAYLAB_CORELAY_PYTHON")
VIRELAY = os.environ.get("RELAYLAB_VIRELAY_PYTHON")

# the label map of the example's listing (CIFAR-10), its first three classes
LABEL_MAP = [{"index": 0, "word_net_id": "n02691156", "name": "Airplane"},
             {"index": 1, "word_net_id": "n02958343", "name": "Automobile"},
             {"index": 2, "word_net_id": "n01503061", "name": "Bird"}]
PER_CLASS = 40  # the example's pipeline needs more samples per class than its 32 eigenvectors (and t-SNE's perplexity 30)
SMALL = {"spectral": {"n_components": 8}, "knn": {"n_neighbors": 8, "method": "exact"},
         "clusterings": {"kmeans": {"k": [2, 3, 4, 5]}}}


def write_example_files(folder: Path, *, prediction: bool = False, seed: int = 0) -> tuple[Path, Path, np.ndarray]:
    """`attributions.h5` and `label-map.json` as CoRelAy's example reads them: labels in shuffled order (the example
    says attributions need not come in label order), one class-specific relevance pattern per class, and in a
    quarter of each class a corner "artifact" instead (what SpRAy is for). Returns the files and the artifact mask."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    labels = rng.permutation(np.repeat(np.arange(len(LABEL_MAP)), PER_CLASS))
    artifact = np.zeros(labels.size, dtype=bool)
    for c in range(len(LABEL_MAP)):
        artifact[np.flatnonzero(labels == c)[: PER_CLASS // 4]] = True
    attribution = rng.normal(scale=0.05, size=(labels.size, 3, 32, 32)).astype(np.float32)
    for i, c in enumerate(labels):
        if artifact[i]:
            attribution[i, :, -6:, -6:] += 1.0
        else:
            attribution[i, :, 8 * c:8 * c + 8, 4:28] += 1.0
    attribution = np.abs(attribution)  # the example normalises by the sum: positive relevance, as LRP's z+ gives
    path = folder / "attributions.h5"
    with h5py.File(path, "w") as h5:
        h5["attribution"] = attribution
        h5["label"] = labels.astype(np.int64)
        if prediction:
            h5["prediction"] = np.eye(len(LABEL_MAP), dtype=np.float32)[(labels + artifact) % len(LABEL_MAP)]
    label_map = folder / "label-map.json"
    label_map.write_text(json.dumps(LABEL_MAP, indent=4))
    return path, label_map, artifact


# The example's "Putting it All Together" listing, run as it stands but for what would not run: the pipeline call and
# the writes are inside the per-class loop (the listing's indentation puts them after it), `number_of_clusters_list`
# is defined, and UMAP is left out (the side environment has no umap-learn), so the clustering output is (kmeans, tsne).
CORELAY_EXAMPLE = textwrap.dedent("""
    import json
    from collections.abc import Sequence
    from typing import Annotated, Any, SupportsIndex

    import h5py
    import numpy

    from corelay.base import Param
    from corelay.pipeline.spectral import SpectralClustering
    from corelay.processor.base import Processor
    from corelay.processor.clustering import KMeans
    from corelay.processor.embedding import TSNEEmbedding
    from corelay.processor.flow import Sequential, Parallel


    class Flatten(Processor):
        def function(self, data: Any) -> Any:
            input_data: numpy.ndarray[Any, Any] = data
            return input_data.reshape(input_data.shape[0], numpy.prod(input_data.shape[1:]))


    class Normalize(Processor):
        axes: Annotated[SupportsIndex | Sequence[SupportsIndex], Param((SupportsIndex, Sequence), (1, 2))]

        def function(self, data: Any) -> Any:
            input_data: numpy.ndarray[Any, Any] = data
            return input_data / input_data.sum(self.axes, keepdims=True)


    number_of_clusters_list = [2, 3, 4, 5]
    pipeline = SpectralClustering(
        preprocessing=Sequential([
            Normalize(axes=(1, 2, 3)),
            Flatten()
        ]),
        clustering=Parallel([
            Parallel([KMeans(n_clusters=number_of_clusters) for number_of_clusters in number_of_clusters_list], broadcast=True),
            TSNEEmbedding()
        ], broadcast=True, is_output=True)
    )

    with open('label-map.json', 'r', encoding='utf-8') as label_map_file:
        label_map = json.load(label_map_file)
    class_indices = [label['index'] for label in label_map]
    wordnet_id_map = {label['index']: label['word_net_id'] for label in label_map}
    class_name_map = {label['index']: label['name'] for label in label_map}

    with h5py.File('attributions.h5', 'r') as attributions_file:
        labels = attributions_file['label'][:]

        for class_index in class_indices:
            indices_of_samples_in_class, = numpy.nonzero(labels == class_index)
            attribution_data = attributions_file['attribution'][indices_of_samples_in_class, :]

            (eigenvalues, eigenvectors), (kmeans, tsne) = pipeline(attribution_data)

            with h5py.File('analysis.hdf5', 'a') as analysis_file:

                analysis_name = wordnet_id_map.get(class_index, f'{class_index:08d}')

                analysis_group = analysis_file.require_group(analysis_name)
                analysis_group['index'] = indices_of_samples_in_class.astype(numpy.uint32)

                embedding_group = analysis_group.require_group('embedding')
                embedding_group['spectral'] = eigenvectors.astype(numpy.float32)
                embedding_group['spectral'].attrs['eigenvalue'] = eigenvalues.astype(numpy.float32)

                embedding_group['tsne'] = tsne.astype(numpy.float32)
                embedding_group['tsne'].attrs['embedding'] = 'spectral'

                cluster_group = analysis_group.require_group('cluster')
                for number_of_clusters, clustering in zip(number_of_clusters_list, kmeans):
                    clustering_dataset_name = f'kmeans-{number_of_clusters:02d}'
                    cluster_group[clustering_dataset_name] = clustering
                    cluster_group[clustering_dataset_name].attrs['embedding'] = 'spectral'
""")

LOAD_WITH_VIRELAY = textwrap.dedent("""
    import json, sys
    from virelay.model import Workspace

    workspace = Workspace()
    workspace.add_project(sys.argv[1])
    project = workspace.get_project(workspace.get_project_names()[0])
    report = {"categories": {}, "attributions": {}}
    for method in project.get_analysis_methods():
        for category in project.get_analysis_categories(method):
            shown = report["categories"][category.name] = {"human": category.human_readable_name}
            for clustering in project.get_analysis_clustering_names(method):
                analysis = project.get_analysis(method, category.name, clustering, "spectral")
                shown[clustering] = analysis.clustering.tolist()
                shown["index"] = analysis.attribution_indices.tolist()
                shown["spectral"] = analysis.embedding.tolist()
    for index in json.loads(sys.argv[2]):
        attribution = project.get_attribution(index)
        report["attributions"][index] = {"data": attribution.data.tolist(), "labels": [l.index for l in attribution.labels]}
    project.close()
    print(json.dumps(report))
""")


def virelay_project(folder: Path, analysis: str) -> Path:
    """The project file a ViRelAy user writes for these files. ViRelAy needs a dataset; with none, the attribution
    file stands in for it (ViRelAy reads only its `label` until an image is shown)."""
    path = folder / "project.yaml"
    path.write_text(yaml.safe_dump({"project": {
        "name": "CIFAR-10 SpRAy", "model": "unknown", "label_map": "label-map.json",
        "dataset": {"name": "CIFAR-10", "type": "hdf5", "path": "attributions.h5", "input_width": 32, "input_height": 32,
                    "down_sampling_method": "none", "up_sampling_method": "none",
                    "label_index_regex": None, "label_word_net_id_regex": None},
        "attributions": {"attribution_method": "lrp", "attribution_strategy": "true_label", "sources": ["attributions.h5"]},
        "analyses": [{"analysis_method": "spectral_analysis", "sources": [analysis]}],
    }}, sort_keys=False))
    return path


def h5_layout(path: Path) -> dict:
    """Every dataset of an HDF5 file: path → (shape minus the row count where rows are members, dtype kind, attrs)."""
    layout = {}

    def visit(name, item):
        if isinstance(item, h5py.Dataset):
            layout[name] = (item.shape[1:], item.dtype.kind, {k: np.asarray(v).dtype.kind for k, v in item.attrs.items()})

    with h5py.File(path, "r") as h5:
        h5.visititems(visit)
    return layout


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "spray.yaml"
    path.write_text(yaml.safe_dump({**SMALL, "embeddings": {"tsne": {"perplexity": 10}}}))
    return path


@pytest.mark.slow  # runs CoRelAy's example in its own environment, then ViRelAy's loader
def test_the_corelay_example_files_analyse_from_the_command_line_and_open_in_virelay(tmp_path, cli, dask_cluster, config):
    folder = tmp_path / "example"
    attributions, label_map, artifact = write_example_files(folder)
    with h5py.File(attributions) as h5:
        labels = h5["label"][()]
    if CORELAY:  # the example's own code reads these files (and shows the layout it writes)
        (folder / "example.py").write_text(CORELAY_EXAMPLE)
        ran = subprocess.run([CORELAY, "example.py"], cwd=folder, capture_output=True, text=True, timeout=600)
        assert ran.returncode == 0, ran.stderr

    result = cli("analyze", "-q", attributions, "--label-map", label_map, "--export-virelay", folder / "analysis.h5",
                 "--config", config, "--scheduler", dask_cluster.scheduler_address)
    assert result.returncode == 0, result.stderr
    store = folder / "attributions.zarr"
    assert f"analyses/spectral_analysis: 3 categories in {store}" in result.stdout

    with h5py.File(folder / "analysis.h5") as h5:
        assert sorted(h5) == sorted(entry["word_net_id"] for entry in LABEL_MAP)  # the example's category names
        for entry in LABEL_MAP:
            group = h5[entry["word_net_id"]]
            members = np.flatnonzero(labels == entry["index"])
            np.testing.assert_array_equal(group["index"][()], members)
            assert group["index"].dtype == np.uint32
            assert group["embedding/spectral"].attrs["eigenvalue"].dtype == np.float32
            assert group["embedding/tsne"].shape == (PER_CLASS, 2) and group["embedding/tsne"].attrs["embedding"] == "spectral"
            # SpRAy finds the planted strategy: 2-means splits the class into artifact and pattern
            split = group["cluster/kmeans-02"][()]
            truth = artifact[members]
            assert len(set(zip(split.tolist(), truth.tolist()))) == 2
    if CORELAY:
        theirs, ours = h5_layout(folder / "analysis.hdf5"), h5_layout(folder / "analysis.h5")
        for name, (shape, kind, attrs) in theirs.items():
            assert name in ours, f"{name} of the example's analysis is missing from relaylab's"
            if "spectral" not in name:  # relaylab's spectral embedding has the configured 8 eigenvectors, CoRelAy's 32
                assert ours[name][0] == shape, name
            assert ours[name][1] == kind and set(attrs) <= set(ours[name][2]), (name, ours[name], (shape, kind, attrs))
        with h5py.File(folder / "analysis.hdf5") as example, h5py.File(folder / "analysis.h5") as exported:
            for category in example:
                np.testing.assert_array_equal(example[category]["index"][()], exported[category]["index"][()])

    with open_project(store) as project:  # the store: labels of the samples, no images, no predictions
        assert not project.has_images and "prediction" not in project.attributions["attribution"]
        np.testing.assert_array_equal(project.inputs["label"].values, labels)
    if VIRELAY:
        report = load_with_virelay(virelay_project(folder, "analysis.h5"), [])
        assert sorted(report["categories"]) == sorted(entry["word_net_id"] for entry in LABEL_MAP)
        with h5py.File(folder / "analysis.h5") as h5:
            for entry in LABEL_MAP:
                shown = report["categories"][entry["word_net_id"]]
                assert shown["human"] == entry["name"]
                np.testing.assert_array_equal(shown["index"], h5[entry["word_net_id"]]["index"][()])
                np.testing.assert_array_equal(shown["kmeans-03"], h5[entry["word_net_id"]]["cluster/kmeans-03"][()])
                np.testing.assert_allclose(shown["spectral"], h5[entry["word_net_id"]]["embedding/spectral"][()])


def load_with_virelay(project_yaml: Path, indices: list[int]) -> dict:
    result = subprocess.run([VIRELAY, "-c", LOAD_WITH_VIRELAY, str(project_yaml), json.dumps(indices)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_with_predictions_grouping_by_prediction_works_and_virelay_shows_the_attributions(tmp_path, cli, dask_cluster, config):
    folder = tmp_path / "predicted"
    attributions, label_map, artifact = write_example_files(folder, prediction=True)
    with h5py.File(attributions) as h5:
        predicted, values = h5["prediction"][()].argmax(axis=1), h5["attribution"][()]
    result = cli("analyze", "-q", attributions, "--label-map", label_map, "--grouping", "predicted_label",
                 "--export-virelay", folder / "analysis.h5", "--config", config, "--scheduler", dask_cluster.scheduler_address)
    assert result.returncode == 0, result.stderr
    with h5py.File(folder / "analysis.h5") as h5:
        for entry in LABEL_MAP:
            np.testing.assert_array_equal(h5[entry["word_net_id"]]["index"][()], np.flatnonzero(predicted == entry["index"]))
    if VIRELAY:
        report = load_with_virelay(virelay_project(folder, "analysis.h5"), [0, 57])
        for index in (0, 57):
            # ViRelAy moves the channel axis last
            np.testing.assert_allclose(report["attributions"][str(index)]["data"], np.moveaxis(values[index], 0, -1))


def test_predicted_label_without_predictions_is_refused_before_anything_is_converted(tmp_path, cli):
    attributions, label_map, _ = write_example_files(tmp_path)
    result = cli("analyze", "-q", attributions, "--label-map", label_map, "--grouping", "predicted_label")
    assert result.returncode == 2
    assert f"{attributions}:/prediction: expected model predictions" in result.stderr and "true_label" in result.stderr
    assert not (tmp_path / "attributions.zarr").exists()
    # the same asked of the store made from the file names the store and the file it came from
    from relaylab.data.convert import convert_to_zarr

    store = convert_to_zarr(attributions, tmp_path / "made.zarr", label_map=label_map, progress=False)
    result = cli("analyze", "-q", store, "--grouping", "predicted_label")
    assert result.returncode == 2
    assert f"{store}:attributions/attribution/prediction: expected model predictions" in result.stderr
    assert f"converted from {attributions.resolve()}" in result.stderr


def test_a_rerun_reuses_the_store_and_a_store_of_other_or_changed_files_is_refused(tmp_path, cli, dask_cluster, config):
    attributions, label_map, _ = write_example_files(tmp_path / "a")
    command = ["analyze", "-q", attributions, "--label-map", label_map, "--config", config, "--name", "spray",
               "--scheduler", dask_cluster.scheduler_address]
    assert cli(*command).returncode == 0
    store = tmp_path / "a" / "attributions.zarr"
    converted = (store / "attributions/attribution/zarr.json").stat().st_mtime_ns
    def analysis_files():  # every file of the analysis but its own record, which each run's finish() rewrites
        return {p: p.stat().st_mtime_ns for p in (store / "analyses/spray").rglob("*")
                if p.is_file() and p != store / "analyses/spray/zarr.json"}

    analysed = analysis_files()
    assert analysed
    again = cli(*command)
    assert again.returncode == 0, again.stderr
    assert (store / "attributions/attribution/zarr.json").stat().st_mtime_ns == converted  # not converted again
    assert analysis_files() == analysed  # nor analysed again

    other, other_map, _ = write_example_files(tmp_path / "b", seed=1)
    refused = cli("analyze", "-q", other, "--label-map", other_map, "--store", store, "--config", config)
    assert refused.returncode == 2
    assert f"expected a store converted from {other.resolve()} (found one converted from {attributions.resolve()}" in refused.stderr
    assert "--store" in refused.stderr

    with h5py.File(attributions, "r+") as h5:  # the user recomputes the attributions in place
        h5["attribution"][0] = 0.0
    stale = cli(*command)
    assert stale.returncode == 2
    assert f"{store}:zarr.json#attributes.relaylab.source_files: expected a store converted from" in stale.stderr
    assert f"{os.path.abspath(attributions)} other or changed since the store was made" in stale.stderr
    assert (store / "attributions/attribution/zarr.json").stat().st_mtime_ns == converted  # left as it was

    renamed = cli("analyze", "-q", attributions, "--label-map", label_map, "--config", config, "--name", "spray",
                  "--store", tmp_path / "fresh.zarr", "--scheduler", dask_cluster.scheduler_address)
    assert renamed.returncode == 0, renamed.stderr
    with open_project(tmp_path / "fresh.zarr") as project:
        np.testing.assert_array_equal(project.attributions["attribution"]["attribution"].values[0], 0.0)


def test_bad_invocations_are_clear_errors(tmp_path, cli):
    attributions, label_map, _ = write_example_files(tmp_path)
    result = cli("analyze", "-q", attributions)
    assert result.returncode == 2 and f"{attributions}: expected a project YAML file or a relaylab Zarr store" in result.stderr
    assert "--label-map" in result.stderr
    gapped = tmp_path / "gapped.h5"
    shutil.copy(attributions, gapped)
    with h5py.File(gapped, "r+") as h5:
        h5["index"] = (np.arange(h5["label"].shape[0]) * 2).astype(np.uint32)
    result = cli("analyze", "-q", gapped, "--label-map", label_map)
    assert result.returncode == 2 and f"{gapped}:/index: expected sample indices 0..119 in any order" in result.stderr
    not_attributions = tmp_path / "data.h5"
    with h5py.File(not_attributions, "w") as h5:
        h5["data"] = np.zeros((2, 1, 4, 4), np.uint8)
    result = cli("analyze", "-q", not_attributions, "--label-map", label_map)
    assert result.returncode == 2 and f"{not_attributions}:/attribution: expected an attribution HDF5 file" in result.stderr
    from relaylab.data.convert import convert_to_zarr

    store = convert_to_zarr(attributions, tmp_path / "s.zarr", label_map=label_map, progress=False)
    result = cli("analyze", "-q", store, "--label-map", label_map)
    assert result.returncode == 2 and "a relaylab Zarr store, which is worked in directly" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_permuted_index_numbers_the_samples(tmp_path):
    attributions, label_map, _ = write_example_files(tmp_path)
    with h5py.File(attributions, "r+") as h5:
        n = h5["label"].shape[0]
        order = np.random.default_rng(2).permutation(n)
        h5["index"] = order.astype(np.uint32)
        labels = h5["label"][()]
    with open_project(attributions, label_map=label_map) as project:
        expected = np.empty(n, dtype=np.int64)
        expected[order] = labels
        np.testing.assert_array_equal(project.inputs["label"].values, expected)
        np.testing.assert_array_equal(project.attributions["attribution"]["sample"].values, order)


def test_info_validate_and_the_explorer_open_a_store_without_images(tmp_path, cli, dask_cluster, config):
    from relaylab.explore.app import ExplorerApp
    from relaylab.explore.render import render_rgba

    attributions, label_map, _ = write_example_files(tmp_path)
    assert cli("analyze", "-q", attributions, "--label-map", label_map, "--config", config,
               "--scheduler", dask_cluster.scheduler_address).returncode == 0
    store = tmp_path / "attributions.zarr"
    info = cli("info", store)
    assert info.returncode == 0, info.stderr
    assert "120 samples, single-label, no input images" in info.stdout and "no predictions" in info.stdout
    validated = cli("validate", "-q", store)
    assert validated.returncode == 0, validated.stdout
    exported = cli("convert", "-q", "--to", "virelay", store, tmp_path / "vr")  # back to ViRelAy: labels, no images
    assert exported.returncode == 0, exported.stderr
    with h5py.File(tmp_path / "vr" / "dataset.h5") as h5:
        assert sorted(h5) == ["label"]
    with h5py.File(tmp_path / "vr" / "attributions.h5") as h5:
        assert "prediction" not in h5 and h5["attribution"].shape == (120, 3, 32, 32)
    if VIRELAY:
        report = load_with_virelay(tmp_path / "vr" / "project.yaml", [])
        assert sorted(report["categories"]) == sorted(entry["word_net_id"] for entry in LABEL_MAP)

    app = ExplorerApp([store])
    assert not app.alert.visible, app.alert.object
    view = app.views[0]
    assert view.state.mode != "input" and "prediction" not in view.embedding.color_select.options
    view.embedding.select_cluster(0)
    html = view.grid._cards.html
    assert view.state.selection and "<img" in html and "no attribution" not in html and "rl-grid-error" not in html
    with open_project(store) as project:
        sample = view.state.selection[0]
        heatmap = render_rgba(project, sample, "attribution", "black-fire-red")
        np.testing.assert_array_equal(render_rgba(project, sample, "overlay", "black-fire-red"), heatmap)
        with pytest.raises(RelaylabError, match="no input images|none: the project holds attributions"):
            render_rgba(project, sample, "input", "black-fire-red")
    view.state.mode = "input"  # the mode button can still ask: a message, not a traceback
    assert "show 'attribution'" in unescape(view.grid._cards.html)
    view.embedding.hovered = view.state.selection[0]
    assert "<img" in view.embedding.hover_pane.object


def test_a_virelay_project_naming_the_attribution_file_as_its_dataset_opens_and_analyses(tmp_path, cli, dask_cluster, config):
    attributions, label_map, _ = write_example_files(tmp_path)
    spec = yaml.safe_load(virelay_project(tmp_path, "analysis.h5").read_text())
    del spec["project"]["analyses"]
    project_file = tmp_path / "project.yaml"
    project_file.write_text(yaml.safe_dump(spec))
    validated = cli("validate", "-q", project_file)
    assert validated.returncode == 0, validated.stdout
    with open_project(project_file) as project:
        assert not project.has_images and project.inputs.sizes["sample"] == 120
    result = cli("analyze", "-q", project_file, "--config", config, "--scheduler", dask_cluster.scheduler_address)
    assert result.returncode == 0, result.stderr
    with open_project(tmp_path / "project.zarr") as project:
        assert project.name == "CIFAR-10 SpRAy" and sorted(project.analyses["spectral_analysis"].children) == \
            sorted(entry["word_net_id"] for entry in LABEL_MAP)


def test_convert_and_info_take_the_label_map_of_an_attribution_file(tmp_path, cli):
    attributions, label_map, _ = write_example_files(tmp_path)
    info = cli("info", attributions, "--label-map", label_map)
    assert info.returncode == 0, info.stderr
    assert "attribution-hdf5" in info.stdout and "120 samples, single-label, no input images" in info.stdout
    converted = cli("convert", "-q", attributions, tmp_path / "c.zarr", "--label-map", label_map)
    assert converted.returncode == 0, converted.stderr
    with open_project(tmp_path / "c.zarr") as project, h5py.File(attributions) as h5:
        np.testing.assert_array_equal(project.attributions["attribution"]["attribution"].values, h5["attribution"][()])
        assert project.metadata["store"]["source_files"].keys() == {os.path.abspath(attributions), os.path.abspath(label_map)}
    exported = cli("convert", "-q", "--to", "virelay", attributions, tmp_path / "vr", "--label-map", label_map)
    assert exported.returncode == 0, exported.stderr
    with h5py.File(tmp_path / "vr" / "dataset.h5") as exported_labels, h5py.File(attributions) as h5:
        np.testing.assert_array_equal(exported_labels["label"][()], h5["label"][()])
    without = cli("convert", "-q", attributions, tmp_path / "d.zarr")
    assert without.returncode == 2 and "--label-map" in without.stderr and not (tmp_path / "d.zarr").exists()
