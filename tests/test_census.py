"""The Clever-Hans census (relaylab census): a planted shortcut found without being told where, on relevance data
whose answer is known by construction; the pair-counting tau against a brute-force count; the report's JSON against
its schema; resuming; bad input."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from relaylab.analyze.census import ashman_separation, relevance_maps, robust_distances
from relaylab.analyze.census_job import open_census, ranking, take_census
from relaylab.analyze.census_report import write_report
from relaylab.analyze.config import load_config
from relaylab.analyze.run import analyze
from relaylab.analyze.score import tau_score
from relaylab.data import store as zstore
from relaylab.data.convert import convert_to_zarr
from relaylab.data.project import open_project
from relaylab.data.schema import schema_problems
from relaylab.errors import RelaylabError

N_CLASSES, PER_CLASS, SIDE, PLANTED = 6, 60, 16, 4


# ------------------------------------------------------------------------------------------------------ tau

@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-1, 4), st.integers(0, 2)), min_size=2, max_size=40))
def test_tau_equals_a_brute_force_pair_count(pairs):
    labels, truth = map(np.array, zip(*pairs))
    concordant = discordant = 0
    for i, j in itertools.combinations(range(len(labels)), 2):
        if (labels[i] == labels[j]) == (truth[i] == truth[j]):
            concordant += 1
        else:
            discordant += 1
    assert tau_score(labels, truth) == pytest.approx((concordant - discordant) / (concordant + discordant), abs=1e-12)


def test_tau_is_one_for_the_same_partition_under_other_names_and_below_for_another():
    truth = np.repeat([0, 1, 2], 10)
    assert tau_score(np.repeat([7, -1, 3], 10), truth) == 1.0
    assert tau_score(np.tile([0, 1, 2], 10), truth) < 0.2


# ------------------------------------------------------------------------------------------------------ synthetic relevance

def relevance(n: int, rng: np.random.Generator, planted: np.ndarray | None = None) -> np.ndarray:
    """(n, 1, SIDE, SIDE) heatmaps of a class using one strategy: a stroke-like blob near the centre whose position,
    width and strength vary from sample to sample, plus noise; the `planted` samples put most of their relevance on a
    3×3 mark in the top-left corner instead (what a shortcut looks like in LRP heatmaps)."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    out = np.empty((n, 1, SIDE, SIDE), np.float32)
    for i in range(n):
        cy, cx = rng.normal(SIDE / 2, 1.5, 2)
        width = rng.uniform(1.5, 3.5)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width ** 2)) * rng.uniform(0.5, 2)
        out[i, 0] = blob + rng.normal(0, 0.03, (SIDE, SIDE))
    if planted is not None:
        for i in np.flatnonzero(planted):
            mark = np.zeros((SIDE, SIDE), np.float32)
            mark[0:3, 0:3] = out[i, 0].sum() * rng.uniform(1.5, 2.5) / 9
            out[i, 0] = 0.3 * out[i, 0] + mark
    return out


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory):
    """A store of N_CLASSES classes whose heatmaps are replaced by `relevance`: class PLANTED has 10% marked samples;
    analysed with SpRAy's defaults. Returns (store, marked sample indices)."""
    from relaylab.data.synthetic import Variant, write_virelay_project

    folder = tmp_path_factory.mktemp("census")
    project = write_virelay_project(folder / "project", Variant(n_samples=N_CLASSES * PER_CLASS, n_classes=N_CLASSES, channels=1,
                                                                height=SIDE, width=SIDE, seed=3))
    store = folder / "planted.zarr"
    convert_to_zarr(project, store, progress=False)
    root = zarr.open_group(str(store), mode="r+")
    name = next(iter(name for name, _ in root["attributions"].groups()))
    labels = root[f"attributions/{name}/label"][:]
    rng = np.random.default_rng(0)
    values = np.empty((len(labels), 1, SIDE, SIDE), np.float32)
    marked = np.zeros(len(labels), bool)
    for c in range(N_CLASSES):
        members = np.flatnonzero(labels == c)
        planted = np.zeros(len(members), bool)
        if c == PLANTED:
            planted[rng.choice(len(members), max(3, len(members) // 10), replace=False)] = True
            marked[members[planted]] = True
        values[members] = relevance(len(members), rng, planted)
    root[f"attributions/{name}/attribution"][:] = values
    analyze(store, "spray", load_config(None), progress=False)
    return store, np.flatnonzero(marked)


def test_the_census_ranks_the_planted_category_first_and_its_marked_samples_on_top(planted_store, tmp_path):
    store, marked = planted_store
    store = shutil.copytree(store, tmp_path / "copy.zarr")
    result = take_census(store, "spray", progress=False)
    assert result["skipped"] == {} and len(result["done"]) == N_CLASSES
    census = open_census(store, "spray")
    rows = ranking(census)
    planted = next(c for c in census.children if int(marked[0]) in census[c]["index"].values)
    assert rows[0]["category"] == planted, rows
    assert rows[0]["score"] > rows[1]["score"]
    node = census[planted].dataset
    truth = np.isin(node["index"].values, marked)
    assert roc_auc_score(truth, node["sample_score"].values) >= 0.95
    # the most suspicious cluster's estimated mask lies in the corner where the mark is
    mask = node["mask"].values[0]
    assert mask.any() and mask[:4, :4].sum() / mask.sum() >= 0.5, mask.astype(int)


def test_the_report_follows_its_schema_and_shows_the_top_categories(planted_store, tmp_path):
    store, _ = planted_store
    store = shutil.copytree(store, tmp_path / "copy.zarr")
    take_census(store, "spray", progress=False)
    page = write_report(store, "spray", tmp_path / "report", top=2)
    data = json.loads((page.parent / "census.json").read_text())
    assert schema_problems("census", data, "census.json") == []
    assert [row["rank"] for row in data["categories"]] == list(range(1, N_CLASSES + 1))
    assert sorted(row["score"] for row in data["categories"])[::-1] == [row["score"] for row in data["categories"]]
    text = page.read_text()
    for row in data["categories"][:2]:  # the top two in detail: spectrum, prototypes, masks, typical samples
        assert f"id='{row['category']}'" in text
        for cluster_slot in range(len(row["clusters"])):
            key = row["category"]
            assert (page.parent / f"{key}-c{cluster_slot}-mean.png").is_file()
            assert (page.parent / f"{key}-c{cluster_slot}-mask.png").is_file()
        assert (page.parent / f"{row['category']}-spectrum.png").is_file()
    assert not (page.parent / f"{data['categories'][-1]['category']}-spectrum.png").exists()
    broken = dict(data, categories=[{**data["categories"][0], "score": "high"}])
    assert [p.path for p in schema_problems("census", broken, "census.json")] == ["categories[0].score"]


def test_a_census_cut_short_resumes_without_redoing_what_it_committed(planted_store, tmp_path):
    store, _ = planted_store
    store = shutil.copytree(store, tmp_path / "copy.zarr")
    take_census(store, "spray", progress=False)
    reference = {row["category"]: row["score"] for row in ranking(open_census(store, "spray"))}
    group = store / "census" / "spray"
    committed = sorted(p.name for p in group.iterdir() if p.is_dir())
    # as if killed: one category's folder gone, the census still "writing"
    victim = next(name for name in committed if name != zstore.PACKS)
    shutil.rmtree(group / victim)
    zstore.update_group_meta(store, "census/spray", status="writing")
    kept = {p.name: p.stat().st_mtime_ns for p in group.iterdir() if p.is_dir()}
    take_census(store, "spray", progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in group.iterdir() if p.is_dir() and p.name in kept} == kept  # not redone
    assert (group / victim).is_dir()
    assert {row["category"]: row["score"] for row in ranking(open_census(store, "spray"))} == pytest.approx(reference)


def test_a_census_on_a_dask_cluster_commits_the_same_results_as_in_this_process(planted_store, tmp_path, dask_cluster):
    store, _ = planted_store
    here, there = (shutil.copytree(store, tmp_path / name) for name in ("here.zarr", "there.zarr"))
    take_census(here, "spray", progress=False)
    # two categories to a task: several tasks, whose workers commit their packs side by side
    take_census(there, "spray", scheduler=dask_cluster.scheduler_address, batch_samples=2 * PER_CLASS, progress=False)
    assert len([p for p in (there / "census" / "spray" / zstore.PACKS).iterdir() if p.is_dir()]) >= 2
    a, b = open_census(here, "spray"), open_census(there, "spray")
    assert ranking(a) == ranking(b)
    for category in a.children:
        np.testing.assert_array_equal(a[category]["sample_score"].values, b[category]["sample_score"].values)


def test_the_command_prints_the_ranking_writes_the_report_and_refuses_an_unknown_analysis_in_one_line(planted_store, tmp_path, cli):
    store, marked = planted_store
    store = shutil.copytree(store, tmp_path / "copy.zarr")
    done = cli("census", store, "--analysis", "spray", "--report", tmp_path / "report", "-q")
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "report" / "census.json").read_text())
    top = data["categories"][0]
    assert f"#1 {top['name']}: score {top['score']:.3f}" in done.stdout and "FLAGGED" in done.stdout
    assert str(tmp_path / "report" / "index.html") in done.stdout
    again = cli("census", store, "--analysis", "spray", "--report", tmp_path / "report", "-q")  # resumes: nothing to redo
    assert again.returncode == 0 and json.loads((tmp_path / "report" / "census.json").read_text()) == data
    refused = cli("census", store, "--analysis", "nope")
    assert refused.returncode == 2 and "analyses/nope" in refused.stderr and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr


def test_a_virelay_projects_own_analysis_files_get_a_census(make_project, cli):
    """A ViRelAy project with CoRelAy-layout analysis files: converted once (as analyze does), its analysis ranked."""
    project = make_project(n_samples=240, n_classes=3, channels=1, height=16, width=16)
    done = cli("census", project, "-q")
    assert done.returncode == 0, done.stderr
    store = project.parent / "project.zarr"
    data = json.loads((project.parent / "project.census-spectral_analysis" / "census.json").read_text())
    assert schema_problems("census", data, "census.json") == []
    with open_project(store) as opened:
        assert sorted(row["category"] for row in data["categories"]) == sorted(opened.analyses["spectral_analysis"].children)
        assert data["attribution"] == next(iter(opened.attributions))


def test_bad_input_is_named_before_any_work(planted_store, tmp_path):
    store, _ = planted_store
    with pytest.raises(RelaylabError) as error:
        take_census(store, "nope", progress=False)
    assert "analyses/nope" in str(error.value) and "spray" in str(error.value)
    copy = shutil.copytree(store, tmp_path / "copy.zarr")
    with pytest.raises(RelaylabError) as error:
        take_census(copy, "spray", clustering="kmeans-99", progress=False)
    assert "kmeans-99" in str(error.value) and "kmeans-02" in str(error.value)


# ------------------------------------------------------------------------------------------------------ pieces

def test_relevance_maps_pool_sum_and_normalise():
    heatmaps = np.zeros((2, 3, 64, 48), np.float32)
    heatmaps[0, :, 0, 0] = 1.0  # all relevance in one pixel of the first map; the second map is empty
    maps = relevance_maps(heatmaps, max_side=32)
    assert maps.shape == (2, 32, 24)
    assert maps[0, 0, 0] == pytest.approx(1.0) and np.abs(maps[0]).sum() == pytest.approx(1.0)
    assert not maps[1].any()


def test_robust_distances_keep_a_thirty_percent_tight_group_far_from_the_majority():
    """A shortcut makes its samples' maps nearly identical: a tight 30% group must not become the main strategy."""
    rng = np.random.default_rng(1)
    majority = rng.normal(0, 1, (70, 64))
    group = rng.normal(0, 0.05, (30, 64)) + 4.0
    distances, _ = robust_distances(np.concatenate([majority, group]).reshape(100, 8, 8).astype(np.float32))
    assert roc_auc_score(np.r_[np.zeros(70), np.ones(30)], distances) == 1.0


def test_separation_is_high_for_a_far_group_and_low_for_a_continuous_tail():
    rng = np.random.default_rng(2)
    tail = np.exp(rng.normal(0, 0.5, 200))
    grouped = np.r_[tail[:190], np.exp(rng.normal(4, 0.2, 10))]
    assert ashman_separation(grouped)[1] > 4 > ashman_separation(tail)[1]
