"""`relaylab analyze` killed with SIGKILL part-way resumes: finished categories are kept, the result is the same.
The killed run is the real command in a child process; the resumed and the reference run are in-process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from relaylab.data.convert import convert_to_zarr
from relaylab.data.project import open_project

# t-SNE makes each category take about a second, so the run is still busy when the first category lands
CONFIG = {"spectral": {"n_components": 8}, "knn": {"n_neighbors": 8, "method": "exact"},
          "clusterings": {"kmeans": {"k": [2, 3]}, "hdbscan": {"min_cluster_size": 5, "eigenvectors": 4}},
          "embeddings": {"tsne": {}}}
CATEGORIES = 4


def committed(store, name: str) -> dict[str, int]:
    """Categories marked complete in the store (read from their zarr.json, as a separate reader would see them),
    with the modification time of their spectral embedding's metadata."""
    done = {}
    folder = store / "analyses" / name
    for category in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
        try:
            meta = json.loads((category / "zarr.json").read_text())["attributes"].get("relaylab", {})
        except (OSError, ValueError, KeyError):  # being written
            continue
        if meta.get("status") == "complete":
            done[category.name] = (category / "embedding/spectral/embedding/zarr.json").stat().st_mtime_ns
    return done


def arrays(store, name: str) -> dict[str, np.ndarray]:
    with open_project(store) as project:
        tree = project.analyses[name]
        return {f"{node.path}/{var}": node[var].values for node in tree.subtree for var in node.variables}


@pytest.fixture
def store_and_config(make_project, tmp_path):
    store = tmp_path / "p.zarr"
    convert_to_zarr(make_project(n_samples=150 * CATEGORIES, n_classes=CATEGORIES), store, progress=False)
    config = tmp_path / "spray.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    return store, config


@pytest.mark.slow
def test_a_killed_analyze_resumes_without_redoing_finished_categories(store_and_config, tmp_path, cli):
    store, config = store_and_config
    reference = tmp_path / "reference.zarr"
    shutil.copytree(store, reference)
    command = [sys.executable, "-m", "relaylab.cli", "analyze", "-q", str(store), "--name", "spray", "--config", str(config),
               "--workers", "1", "--batch-samples", "1"]  # a task and a folder per category
    # its own session, so that the kill reaches the Dask workers it starts too
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (done := committed(store, "spray")) and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        _, stderr = run.communicate()
    assert done, f"no category was committed before the run ended (exit {run.returncode}): {stderr.decode()[-2000:]}"
    assert run.returncode == -signal.SIGKILL
    killed_with = committed(store, "spray")
    assert 1 <= len(killed_with) < CATEGORIES, killed_with
    with pytest.raises(Exception, match="status 'writing'"):
        open_project(store).analyses["spray"]

    again = cli(*command[3:])
    assert again.returncode == 0, again.stderr
    after = committed(store, "spray")
    assert len(after) == CATEGORIES
    assert {c: after[c] for c in killed_with} == killed_with  # not written again

    uninterrupted = cli(*[str(reference) if part == str(store) else part for part in command[3:]])
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    resumed, expected = arrays(store, "spray"), arrays(reference, "spray")
    assert sorted(resumed) == sorted(expected) and any(key.endswith("/tsne/embedding") for key in expected)
    for key, values in expected.items():
        np.testing.assert_array_equal(resumed[key], values, err_msg=key)
