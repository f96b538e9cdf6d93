"""`relaylab analyze` and `relaylab score` on real Zarr stores with a real Dask LocalCluster."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import yaml
import zarr

from relaylab.analyze.score import score_analysis
from relaylab.data.convert import convert_to_zarr
from relaylab.data.project import open_project

from .conftest import run_cli

CONFIG = {"spectral": {"n_components": 8}, "knn": {"n_neighbors": 8, "method": "exact"},
          "clusterings": {"kmeans": {"k": [2, 3]}, "hdbscan": {"min_cluster_size": 5, "eigenvectors": 4}}}


@pytest.fixture
def planted(make_project, tmp_path):
    """A store whose class 0 has 12 of 100 samples explained by a corner artifact instead of the class pattern."""
    path = make_project(n_samples=300, attribution_files=1)
    with h5py.File(path.parent / "attribution-0.h5", "r+") as h5:
        attribution = h5["attribution"][()]
        marked = np.flatnonzero(np.arange(300) % 3 == 0)[:12]
        attribution[marked] *= 0.05
        attribution[marked, :, -4:, -4:] = 3.0
        h5["attribution"][...] = attribution
    convert_to_zarr(path, tmp_path / "p.zarr", progress=False)
    config = tmp_path / "spray.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    return tmp_path / "p.zarr", config, marked


def test_analyze_isolates_a_planted_artifact_and_score_reports_it(planted, tmp_path):
    store, config, marked = planted
    result = run_cli("analyze", "-q", store, "--name", "spray", "--config", config, "--workers", "2",
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
    scored = run_cli("score", store, "--analysis", "spray", "--marked", marked_file)
    assert scored.returncode == 0, scored.stderr
    assert "n00000000 (class 0): 12 of 100 marked" in scored.stdout
    assert "kmeans-02          ARI 1.000" in scored.stdout


def test_a_rerun_redoes_only_unfinished_categories_with_the_same_result(planted):
    store, config, _ = planted
    assert run_cli("analyze", "-q", store, "--name", "spray", "--config", config, "--workers", "1").returncode == 0
    with open_project(store) as project:
        first = {c: project.analyses["spray"][c]["embedding/spectral"]["embedding"].values for c in ("n00000000", "n00000001")}
    root = zarr.open_group(store, mode="r+")
    del root["analyses/spray/n00000001"]  # as if the run had been killed before committing this category
    root["analyses/spray"].attrs["relaylab"] = {**root["analyses/spray"].attrs["relaylab"], "status": "writing"}
    with pytest.raises(Exception, match="status 'writing'"):
        open_project(store).analyses["spray"]
    before = (store / "analyses/spray/n00000000/embedding/spectral/embedding/zarr.json").stat().st_mtime_ns
    again = run_cli("analyze", "-q", store, "--name", "spray", "--config", config, "--workers", "1")
    assert again.returncode == 0, again.stderr
    assert (store / "analyses/spray/n00000000/embedding/spectral/embedding/zarr.json").stat().st_mtime_ns == before
    with open_project(store) as project:
        for category, values in first.items():
            np.testing.assert_array_equal(project.analyses["spray"][category]["embedding/spectral"]["embedding"].values, values)


def test_analyze_on_a_given_scheduler(planted):
    distributed = pytest.importorskip("distributed")
    store, config, _ = planted
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        result = run_cli("analyze", "-q", store, "--name", "remote", "--config", config, "--grouping", "all",
                         "--scheduler", cluster.scheduler_address)
    assert result.returncode == 0, result.stderr
    with open_project(store) as project:
        assert list(project.analyses["remote"].children) == ["all"]
        assert project.analyses["remote"]["all"]["index"].size == 300


def test_unknown_step_and_small_categories(planted, tmp_path):
    store, _, _ = planted
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"clusterings": {"spectral_magic": {}}}))
    result = run_cli("analyze", "-q", store, "--name", "bad", "--config", bad)
    assert result.returncode == 2 and "clusterings.spectral_magic: expected one of kmeans, hdbscan, dbscan, agglomerative" in result.stderr
    assert "bad" not in zarr.open_group(store)["analyses"]
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"knnn": {}}))
    result = run_cli("analyze", "-q", store, "--config", typo)
    assert result.returncode == 2 and "knnn: expected one of attribution, grouping" in result.stderr
    big = tmp_path / "big.yaml"
    big.write_text(yaml.safe_dump({**CONFIG, "spectral": {"n_components": 150}}))
    result = run_cli("analyze", "-q", store, "--name", "big", "--config", big, "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert "skipped n00000000: 100 samples, fewer than the 151 that 8 neighbours and 150 eigenvectors need" in result.stdout


def test_analyze_needs_a_store(make_project):
    result = run_cli("analyze", make_project())
    assert result.returncode == 2 and "expected a relaylab Zarr store to write the analysis into" in result.stderr


def test_score_reports_unreadable_marked_samples_clearly(make_project, tmp_path):
    store = tmp_path / "p.zarr"
    convert_to_zarr(make_project(), store, progress=False)
    garbled = tmp_path / "marked.txt"
    garbled.write_text("3 seven 9")
    result = run_cli("score", store, "--marked", garbled)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{garbled}: expected sample indices: a JSON list, a .npy array or one integer per line" in result.stderr
    missing = run_cli("score", store, "--marked", tmp_path / "absent.json")
    assert missing.returncode == 2 and "absent.json: expected sample indices" in missing.stderr
    coord = run_cli("score", store, "--marked-coord", "artifact")
    assert coord.returncode == 2 and "inputs/artifact: expected a boolean coordinate of the inputs" in coord.stderr
