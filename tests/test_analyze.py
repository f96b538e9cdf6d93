"""`relaylab analyze` and `relaylab score` on real Zarr stores with a real Dask LocalCluster, in-process (conftest's
`cli`). One test runs the command's own LocalCluster; the others share the session's cluster (`--scheduler`)."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import xarray as xr
import yaml
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import DBSCAN, AgglomerativeClustering

from relaylab.analyze.config import build_spray, load_config
from relaylab.analyze.score import score_analysis
from relaylab.analyze.spray import SelectEigenvectors
from relaylab.data import store as zstore
from relaylab.data.convert import convert_to_zarr
from relaylab.data.project import open_project
from relaylab.data.synthetic import Variant, write_virelay_project

CONFIG = {"spectral": {"n_components": 8}, "knn": {"n_neighbors": 8, "method": "exact"},
          "clusterings": {"kmeans": {"k": [2, 3]}, "hdbscan": {"min_cluster_size": 5, "eigenvectors": 4}}}


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory):
    """A store whose class 0 has 12 of 100 samples explained by a corner artifact instead of the class pattern, and
    the SpRAy configuration; written once for the module (tests get copies from `planted`)."""
    folder = tmp_path_factory.mktemp("planted")
    path = write_virelay_project(folder / "synthetic", Variant(n_samples=300, attribution_files=1), name="synthetic")
    with h5py.File(path.parent / "attribution-0.h5", "r+") as h5:
        attribution = h5["attribution"][()]
        marked = np.flatnonzero(np.arange(300) % 3 == 0)[:12]
        attribution[marked] *= 0.05
        attribution[marked, :, -4:, -4:] = 3.0
        h5["attribution"][...] = attribution
    convert_to_zarr(path, folder / "p.zarr", progress=False)
    config = folder / "spray.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    return folder / "p.zarr", config, marked


@pytest.fixture
def planted(planted_store, tmp_path):
    """A copy of the module's planted store, for one test to write into: (store, config, marked samples)."""
    store, config, marked = planted_store
    shutil.copytree(store, tmp_path / "p.zarr")
    return tmp_path / "p.zarr", config, marked


def test_analyze_isolates_a_planted_artifact_and_score_reports_it(planted, tmp_path, cli):
    store, config, marked = planted
    result = cli("analyze", "-q", store, "--name", "spray", "--config", config, "--workers", "2",
                     "--export-virelay", tmp_path / "spray.h5")
    assert result.returncode == 0, result.stderr
    with open_project(store) as project:
        tree = project.analyses["spray"]
        assert sorted(tree.children) == ["n00000000", "n00000001", "n00000002"]
        node = tree["n00000000"]
        assert node.attrs["display_name"] == "class 0"
        np.testing.assert_array_equal(node["index"].values, np.arange(0, 300, 3))
        report = score_analysis(node, np.isin(node["index"].values, marked))
        assert report["embedding"]["auroc"] > 0.99
        assert report["clusterings"]["kmeans-02"]["precision"] == 1.0 and report["clusterings"]["kmeans-02"]["recall"] == 1.0
        eigenvalues = node["embedding/spectral"]["eigenvalue"].values
        assert len(eigenvalues) == 8 and np.all(np.diff(eigenvalues) >= -1e-6)
    with h5py.File(tmp_path / "spray.h5") as h5:
        assert sorted(h5) == ["n00000000", "n00000001", "n00000002"]
        assert sorted(h5["n00000000/cluster"]) == ["hdbscan", "kmeans-02", "kmeans-03"]
        assert h5["n00000000/embedding/spectral"].attrs["eigenvalue"].shape == (8,)
    marked_file = tmp_path / "marked.json"
    marked_file.write_text(str(marked.tolist()))
    scored = cli("score", store, "--analysis", "spray", "--marked", marked_file)
    assert scored.returncode == 0, scored.stderr
    assert "n00000000 (class 0): 12 of 100 marked" in scored.stdout
    assert "kmeans-02          ARI 1.000" in scored.stdout


def test_a_rerun_redoes_only_unfinished_categories_with_the_same_result(planted, cli, dask_cluster, monkeypatch):
    from relaylab.analyze import run as analyze_run

    monkeypatch.setattr(analyze_run, "BATCH_SAMPLES", 100)  # one category per task: each in its own folder
    store, config, _ = planted
    command = ["analyze", "-q", store, "--name", "spray", "--config", config, "--scheduler", dask_cluster.scheduler_address]
    assert cli(*command).returncode == 0
    with open_project(store) as project:
        first = {c: project.analyses["spray"][c]["embedding/spectral"]["embedding"].values for c in ("n00000000", "n00000001")}
    root = zarr.open_group(store, mode="r+")
    del root["analyses/spray/n00000001"]  # as if the run had been killed before committing this category
    root["analyses/spray"].attrs["relaylab"] = {**root["analyses/spray"].attrs["relaylab"], "status": "writing"}
    with pytest.raises(Exception, match="status 'writing'"):
        open_project(store).analyses["spray"]
    before = (store / "analyses/spray/n00000000/embedding/spectral/embedding/zarr.json").stat().st_mtime_ns
    again = cli(*command)
    assert again.returncode == 0, again.stderr
    assert (store / "analyses/spray/n00000000/embedding/spectral/embedding/zarr.json").stat().st_mtime_ns == before
    with open_project(store) as project:
        for category, values in first.items():
            np.testing.assert_array_equal(project.analyses["spray"][category]["embedding/spectral"]["embedding"].values, values)


def test_analyze_on_a_given_scheduler(planted, cli, dask_cluster):
    store, config, _ = planted
    result = cli("analyze", "-q", store, "--name", "remote", "--config", config, "--grouping", "all",
                 "--scheduler", dask_cluster.scheduler_address)
    assert result.returncode == 0, result.stderr
    with open_project(store) as project:
        assert list(project.analyses["remote"].children) == ["all"]
        assert project.analyses["remote"]["all"]["index"].size == 300


def test_unknown_step_and_small_categories(planted, tmp_path, cli, dask_cluster):
    store, _, _ = planted
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"clusterings": {"spectral_magic": {}}}))
    result = cli("analyze", "-q", store, "--name", "bad", "--config", bad)
    assert result.returncode == 2 and "clusterings.spectral_magic: expected one of kmeans, hdbscan, dbscan, agglomerative" in result.stderr
    assert "bad" not in zarr.open_group(store)["analyses"]
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"knnn": {}}))
    result = cli("analyze", "-q", store, "--config", typo)
    assert result.returncode == 2 and "knnn: expected one of attribution, grouping" in result.stderr
    big = tmp_path / "big.yaml"
    big.write_text(yaml.safe_dump({**CONFIG, "spectral": {"n_components": 150}}))
    result = cli("analyze", "-q", store, "--name", "big", "--config", big, "--scheduler", dask_cluster.scheduler_address)
    assert result.returncode == 0, result.stderr
    assert "skipped n00000000: 100 samples, fewer than the 151 that 8 neighbours and 150 eigenvectors need" in result.stdout


def test_analyze_of_a_project_yaml_converts_it_once_into_a_store_beside_it(make_project, tmp_path, cli, dask_cluster):
    project = make_project()
    config = tmp_path / "spray.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    command = ["analyze", "-q", project, "--name", "spray", "--config", config, "--scheduler", dask_cluster.scheduler_address]
    result = cli(*command)
    assert result.returncode == 0, result.stderr
    store = project.with_suffix(".zarr")
    assert f"analyses/spray: 3 categories in {store}" in result.stdout
    converted = (store / "inputs/zarr.json").stat().st_mtime_ns
    assert cli(*command).returncode == 0
    assert (store / "inputs/zarr.json").stat().st_mtime_ns == converted
    with open_project(store) as project:
        assert sorted(project.analyses) == ["spectral_analysis", "spray"]  # the YAML's own analysis came along


def test_score_reports_unreadable_marked_samples_clearly(planted_store, tmp_path, cli):
    store, _, _ = planted_store  # only read
    garbled = tmp_path / "marked.txt"
    garbled.write_text("3 seven 9")
    result = cli("score", store, "--marked", garbled)
    assert result.returncode == 2
    assert f"{garbled}: expected sample indices: a JSON list, a .npy array or one integer per line" in result.stderr
    missing = cli("score", store, "--marked", tmp_path / "absent.json")
    assert missing.returncode == 2 and "absent.json: expected sample indices" in missing.stderr
    coord = cli("score", store, "--marked-coord", "artifact")
    assert coord.returncode == 2 and "inputs/artifact: expected a boolean coordinate of the inputs" in coord.stderr


def test_predicted_label_grouping_follows_the_models_predictions(planted, cli, dask_cluster):
    store, config, _ = planted
    prediction = zarr.open_array(store / "attributions/lrp_epsilon_plus/prediction", mode="r+")
    logits = prediction[...]
    labels = zarr.open_array(store / "attributions/lrp_epsilon_plus/label", mode="r")[...]
    rows = np.flatnonzero(np.arange(300) % 5 == 0)  # every fifth sample predicted as the next class instead of its own
    logits[rows] = np.roll(logits[rows], 1, axis=1)
    prediction[...] = logits
    predicted = logits.argmax(axis=1)
    assert (predicted != labels).sum() >= 50  # so grouping by prediction differs from grouping by label
    result = cli("analyze", "-q", store, "--name", "predicted", "--config", config, "--grouping", "predicted_label",
                 "--scheduler", dask_cluster.scheduler_address)
    assert result.returncode == 0, result.stderr
    assert zstore.group_meta(zarr.open_group(store, mode="r"), "analyses/predicted")["grouping"] == "predicted_label"
    with open_project(store) as project:
        tree = project.analyses["predicted"]
        assert sorted(tree.children) == ["n00000000", "n00000001", "n00000002"]
        for c in range(3):
            node = tree[f"n{c:08d}"]
            np.testing.assert_array_equal(np.sort(node["index"].values), np.flatnonzero(predicted == c))
            assert node["embedding/spectral"]["embedding"].shape[0] == node["index"].size


def test_dbscan_and_agglomerative_clusterings_built_from_the_config(planted, tmp_path, cli, dask_cluster):
    store, _, marked = planted
    config = tmp_path / "clusterings.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "clusterings": {"dbscan": {"eps": 0.1, "min_samples": 5, "eigenvectors": 4},
                                                                "agglomerative": {"k": [2, 3], "eigenvectors": 4}}}))
    clusterings = build_spray(load_config(config)).clusterings
    assert sorted(clusterings) == ["agglomerative-02", "agglomerative-03", "dbscan-eps=0.1"]
    select, dbscan = clusterings["dbscan-eps=0.1"].steps
    assert isinstance(select[1], SelectEigenvectors) and select[1].n == 4
    assert type(dbscan[1]) is DBSCAN and dbscan[1].eps == 0.1 and dbscan[1].min_samples == 5
    for k in (2, 3):
        select, agglomerative = clusterings[f"agglomerative-{k:02d}"].steps
        assert isinstance(select[1], SelectEigenvectors) and select[1].n == 4
        assert type(agglomerative[1]) is AgglomerativeClustering and agglomerative[1].n_clusters == k

    result = cli("analyze", "-q", store, "--name", "clusters", "--config", config, "--scheduler", dask_cluster.scheduler_address)
    assert result.returncode == 0, result.stderr
    with open_project(store) as project:
        tree = project.analyses["clusters"]
        for category, node in tree.children.items():
            index, cluster = node["index"].values, node["cluster"].dataset
            assert sorted(cluster.data_vars) == ["agglomerative-02", "agglomerative-03", "dbscan-eps=0.1"]
            for name, labels in cluster.data_vars.items():
                assert labels.dims == ("member",) and labels.size == index.size and labels.dtype.kind == "i", (category, name)
            assert set(cluster["agglomerative-02"].values.tolist()) == {0, 1}
            assert set(cluster["agglomerative-03"].values.tolist()) == {0, 1, 2}
            dbscan_labels = cluster["dbscan-eps=0.1"].values
            is_marked = np.isin(index, marked)
            # at eps 0.1 only the artifact samples (all in class 0) are dense enough for a cluster; the rest is noise
            assert (dbscan_labels[~is_marked] == -1).all(), category
            if category == "n00000000":
                assert is_marked.sum() == 12 and len(set(dbscan_labels[is_marked].tolist())) == 1
                assert dbscan_labels[is_marked][0] >= 0
                report = score_analysis(node, is_marked)["clusterings"]["agglomerative-03"]
                assert report["precision"] == 1.0 and report["recall"] == 1.0  # one of the three clusters is exactly the artifact
            else:
                assert not is_marked.any()


def analysis_values(store, name: str) -> dict[str, np.ndarray]:
    with open_project(store) as project:
        tree = project.analyses[name]
        return {f"{node.path}/{var}": node[var].values for node in tree.subtree for var in node.variables}


def test_in_process_and_batched_dask_runs_write_the_same_analysis(planted, cli, dask_cluster, monkeypatch):
    """One batch without a scheduler runs in this process, a folder per category; on a cluster the three categories
    are one task, read in one selection and committed by the worker as one pack: the analyses read back identical."""
    store, config, _ = planted
    assert cli("analyze", "-q", store, "--name", "here", "--config", config).returncode == 0
    result = cli("analyze", "-q", store, "--name", "there", "--config", config, "--scheduler", dask_cluster.scheduler_address)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (store / "analyses/here").iterdir()) == ["n00000000", "n00000001", "n00000002", "zarr.json"]
    assert sorted(p.name for p in (store / "analyses/there").iterdir()) == ["_packs", "zarr.json"]
    here, there = analysis_values(store, "here"), analysis_values(store, "there")
    assert sorted(here) == sorted(there) and len(here) > 10
    for key, values in here.items():
        np.testing.assert_array_equal(there[key], values, err_msg=key)


def test_a_rerun_keeps_complete_packs_and_redoes_one_a_kill_left_unfinished(planted, cli, dask_cluster, monkeypatch):
    from relaylab.analyze import run as analyze_run

    monkeypatch.setattr(analyze_run, "BATCH_SAMPLES", 200)  # tasks: n00000000 + n00000001 (a pack), n00000002 (a folder)
    store, config, _ = planted
    command = ["analyze", "-q", store, "--name", "spray", "--config", config, "--scheduler", dask_cluster.scheduler_address]
    assert cli(*command).returncode == 0
    folder = store / "analyses/spray"
    assert sorted(p.name for p in folder.iterdir()) == ["_packs", "n00000002", "zarr.json"]
    assert sorted(p.name for p in (folder / "_packs").iterdir()) == ["n00000000", "zarr.json"]
    first = analysis_values(store, "spray")
    assert sorted({key.split("/")[1] for key in first}) == ["n00000000", "n00000001", "n00000002"]
    meta = zstore.group_metas(store)["analyses/spray/_packs/n00000000"]
    assert meta["categories"] == ["n00000000", "n00000001"] and meta["members"] == [100, 100]
    root = zarr.open_group(store, mode="r+")
    root["analyses/spray"].attrs["relaylab"] = {**root["analyses/spray"].attrs["relaylab"], "status": "writing"}
    (folder / "_packs/n00000000/zarr.json").unlink()  # as if killed while writing the pack: its record is written last
    before = (folder / "n00000002/zarr.json").stat().st_mtime_ns
    again = cli(*command)
    assert again.returncode == 0, again.stderr
    assert (folder / "n00000002/zarr.json").stat().st_mtime_ns == before  # complete: not redone
    assert (folder / "_packs/n00000000/zarr.json").is_file()
    resumed = analysis_values(store, "spray")
    assert sorted(resumed) == sorted(first)
    for key, values in first.items():
        np.testing.assert_array_equal(resumed[key], values, err_msg=key)


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 500), min_size=1, max_size=40), sample_bytes=st.sampled_from([0, 4096, 2**20, 2**30]))
def test_batches_hold_every_category_once_largest_first_and_within_the_limit(sizes, sample_bytes):
    from relaylab.analyze import run as analyze_run

    groups = {f"c{i}": np.arange(n) for i, n in enumerate(sizes)}
    work = analyze_run.batches(groups, sample_bytes)
    limit = max(1, min(analyze_run.BATCH_SAMPLES, analyze_run.BATCH_BYTES // max(sample_bytes, 1)))
    assert sorted(c for batch in work for c in batch) == sorted(groups)
    flat = [len(groups[c]) for batch in work for c in batch]
    assert flat == sorted(flat, reverse=True)
    for batch in work:
        assert len(batch) == 1 or sum(len(rows) for rows in batch.values()) <= limit


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_read_rows_returns_the_selected_rows_whichever_way_it_reads(data):
    from relaylab.analyze import run as analyze_run
    from relaylab.data.dims import SAMPLE

    n = data.draw(st.integers(1, 400))
    rows = np.unique(np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=60))))
    values = np.arange(n * 6, dtype=np.float32).reshape(n, 2, 3)
    variable = xr.DataArray(values, dims=(SAMPLE, "a", "b"))
    budget = data.draw(st.sampled_from([0, analyze_run.BATCH_BYTES]))  # 0: a scattered selection reads row by row
    np.testing.assert_array_equal(analyze_run.read_rows(variable, rows, budget), values[rows])


def test_kmeans_starts_come_from_the_config():
    """`n_init` chooses how many k-means++ starts each k-means keeps the best of; the default stays ten."""
    config = load_config(None)
    config["clusterings"] = {"kmeans": {"k": [3], "n_init": 1, "eigenvectors": 8}}
    step = build_spray(config).clusterings["kmeans-03"]
    assert step.named_steps["kmeans"].n_init == 1 and step.named_steps["select"].n == 8
    assert build_spray(load_config(None)).clusterings["kmeans-02"].named_steps["kmeans"].n_init == 10
