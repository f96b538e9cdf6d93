"""relaylab's Zarr store: layout, round trips, resumable writes, and refusing half-written stores."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import xarray as xr
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from relaylab.data import store as zstore
from relaylab.data.convert import convert_to_virelay, convert_to_zarr
from relaylab.data.labels import label_map_from_entries
from relaylab.data.project import open_project
from relaylab.errors import IncompleteStoreError, RelaylabError

from .helpers import make_store


def assert_projects_equal(a, b):
    """Every value of two projects, compared in the canonical form."""
    np.testing.assert_array_equal(a.inputs["input"].values, b.inputs["input"].values)
    np.testing.assert_array_equal(a.inputs["label"].values, b.inputs["label"].values)
    assert sorted(a.attributions) == sorted(b.attributions)
    for name in a.attributions:
        x, y = a.attributions[name].sortby("sample"), b.attributions[name].sortby("sample")
        for var in ("sample", "attribution", "prediction", "label"):
            np.testing.assert_array_equal(x[var].values, y[var].values)
    assert sorted(a.analyses) == sorted(b.analyses)
    for name in a.analyses:
        ta, tb = a.analyses[name], b.analyses[name]
        assert sorted(ta.children) == sorted(tb.children)
        for category in ta.children:
            np.testing.assert_array_equal(ta[category]["index"].values, tb[category]["index"].values)
            assert sorted(ta[category]["embedding"].children) == sorted(tb[category]["embedding"].children)
            for emb in ta[category]["embedding"].children:
                ea, eb = ta[category][f"embedding/{emb}"], tb[category][f"embedding/{emb}"]
                np.testing.assert_array_equal(ea["embedding"].values, eb["embedding"].values)
                if "eigenvalue" in ea.coords:
                    np.testing.assert_allclose(ea["eigenvalue"].values, eb["eigenvalue"].values, rtol=1e-6)
            ca, cb = ta[category]["cluster"].dataset, tb[category]["cluster"].dataset
            assert sorted(ca.data_vars) == sorted(cb.data_vars)
            for var in ca.data_vars:
                np.testing.assert_array_equal(ca[var].values, cb[var].values)


@pytest.mark.parametrize("fields", [dict(layout="hwc", attribution_files=2, analysis_files=2),
                                    dict(multi_label=True, dtype="float11", data_as_group=True)],
                         ids=["hwc-split", "multilabel-float-group"])
def test_hdf5_to_zarr_to_hdf5_round_trip_preserves_every_value(make_project, tmp_path, fields):
    path = make_project(**fields)
    convert_to_zarr(path, tmp_path / "p.zarr", progress=False)
    convert_to_virelay(tmp_path / "p.zarr", tmp_path / "back", progress=False)
    with open_project(path) as original, open_project(tmp_path / "p.zarr") as stored, \
            open_project(tmp_path / "back" / "project.yaml") as back:
        assert_projects_equal(original, stored)
        assert_projects_equal(original, back)
        assert stored.name == original.name and stored.model == original.model
        assert stored.dataset_name == original.dataset_name
        expected_range = [-1.0, 1.0] if fields.get("dtype") == "float11" else [0.0, 255.0]
        assert stored.inputs.attrs["value_range"] == expected_range
        np.testing.assert_array_equal(stored.label_map["name"].values, original.label_map["name"].values)


def test_store_layout_dimension_names_chunks_and_compression(make_project, tmp_path, monkeypatch):
    monkeypatch.setattr(zstore, "INNER_CHUNK_BYTES", 21 * 3 * 16 * 16 * 4)  # 21 float samples per inner chunk,
    monkeypatch.setattr(zstore, "SHARD_BYTES", 42 * 3 * 16 * 16 * 4)  # 42 (2 inner chunks) per shard
    path = make_project(n_samples=100)
    convert_to_zarr(path, tmp_path / "p.zarr", compression="lz4", progress=False)
    root = zarr.open_group(tmp_path / "p.zarr", mode="r")
    attribution = root["attributions/lrp_epsilon_plus/attribution"]
    assert attribution.metadata.dimension_names == ("sample", "channel", "y", "x")
    assert attribution.shards == (42, 3, 16, 16)
    assert attribution.chunks[0] * 3 * 16 * 16 * 4 <= zstore.INNER_CHUNK_BYTES  # a viewer read touches few samples
    assert attribution.compressors and "lz4" in str(attribution.compressors[0])
    assert root["inputs/input"].metadata.dimension_names == ("sample", "channel", "y", "x")
    assert root["analyses/spectral_analysis/n00000000/embedding/spectral/embedding"].metadata.dimension_names == ("member", "component")
    assert root.attrs["relaylab"]["status"] == "complete" and "_progress" not in root or not list(root["_progress"].arrays())
    with open_project(tmp_path / "p.zarr") as project:
        assert project.attributions["lrp_epsilon_plus"]["attribution"].data.chunks[0] == (42, 42, 16)
        single = zstore.open_group(tmp_path / "p.zarr", "inputs", chunks=None)
        np.testing.assert_array_equal(single["input"][17].values, project.inputs["input"][17].values)


def test_auto_compression_compresses_only_what_shrinks_by_a_fifth(tmp_path):
    """"auto" keeps LZ4 for data that shrinks (sparse heatmaps, flat images) and stores noise-like data raw; the
    choice is recorded in the group's metadata, and both read back exactly."""
    rng = np.random.default_rng(0)
    n = 64
    sparse = np.where(rng.random((n, 3, 16, 16)) < 0.1, rng.normal(size=(n, 3, 16, 16)), 0).astype(np.float32)
    noise = rng.normal(size=(n, 3, 16, 16)).astype(np.float32)
    path = tmp_path / "p.zarr"
    label_map = label_map_from_entries([{"index": 0, "word_net_id": "n0", "name": "zero"}])
    zstore.create_store(path, project={"name": "p"}, dataset={"name": "d"}, label_map=label_map, source="x")
    for group, values in (("attributions/sparse", sparse), ("attributions/noise", noise)):
        ds = xr.Dataset({"attribution": (("sample", "channel", "y", "x"), values)}, coords={"sample": np.arange(n)})
        zstore.write_dataset(path, group, ds, kind="attributions", compression="auto", progress=False)
    root = zarr.open_group(path, mode="r")
    assert "lz4" in str(root["attributions/sparse/attribution"].compressors)
    assert root["attributions/noise/attribution"].compressors == ()
    assert zstore.group_meta(root, "attributions/sparse")["compression"] == {"attribution": "lz4"}
    assert zstore.group_meta(root, "attributions/noise")["compression"] == {"attribution": "none"}
    np.testing.assert_array_equal(zstore.open_group(path, "attributions/sparse")["attribution"].values, sparse)
    np.testing.assert_array_equal(zstore.open_group(path, "attributions/noise")["attribution"].values, noise)
    stored = {g: sum(f.stat().st_size for f in (path / g / "attribution").rglob("*") if f.is_file()) for g in ("attributions/sparse", "attributions/noise")}
    assert stored["attributions/sparse"] * 1.25 < sparse.nbytes <= stored["attributions/noise"]


class Crash(Exception):
    """Stands in for a process dying between two blocks."""


def test_interrupted_write_resumes_without_redoing_finished_blocks(make_project, tmp_path, monkeypatch):
    monkeypatch.setattr(zstore, "INNER_CHUNK_BYTES", 5 * 3 * 16 * 16)  # 5 uint8 samples per chunk,
    monkeypatch.setattr(zstore, "SHARD_BYTES", 10 * 3 * 16 * 16)  # 10 per shard
    monkeypatch.setattr(zstore, "SHARDS_PER_COPY_BLOCK", 1)  # = per write block
    path = make_project(n_samples=95)
    with open_project(path) as project:
        zstore.create_store(tmp_path / "p.zarr", project={"name": "p"}, dataset={"name": "d"},
                            label_map=project.label_map, source="test")
        seen = []

        def crash_at_block_4(block, rows):
            if rows.start == 40:
                raise Crash
            seen.append(rows.start)
            return []

        with pytest.raises(Crash):
            zstore.write_dataset(tmp_path / "p.zarr", "inputs", project.inputs, kind="inputs", check=crash_at_block_4, progress=False)
        assert seen == [0, 10, 20, 30]
        with pytest.raises(IncompleteStoreError, match="4 of 10 blocks"):
            zstore.open_group(tmp_path / "p.zarr", "inputs")
        assert zstore.unfinished_groups(tmp_path / "p.zarr") == ["inputs"]

        resumed = []
        zstore.write_dataset(tmp_path / "p.zarr", "inputs", project.inputs, kind="inputs",
                             check=lambda block, rows: resumed.append(rows.start) or [], progress=False)
        assert resumed == [40, 50, 60, 70, 80, 90]
        stored = zstore.open_group(tmp_path / "p.zarr", "inputs")
        np.testing.assert_array_equal(stored["input"].values, project.inputs["input"].values)
        np.testing.assert_array_equal(stored["label"].values, project.inputs["label"].values)
        assert zstore.unfinished_groups(tmp_path / "p.zarr") == []


def test_resuming_with_different_data_is_refused(make_project, tmp_path):
    first, second = make_project(n_samples=30), make_project(n_samples=31)
    with open_project(first) as a, open_project(second) as b:
        zstore.create_store(tmp_path / "p.zarr", project={"name": "p"}, dataset={"name": "d"}, label_map=a.label_map, source="x")
        zstore.write_dataset(tmp_path / "p.zarr", "inputs", a.inputs, kind="inputs", progress=False)
        with pytest.raises(RelaylabError, match="inputs: expected a group written from the same source data"):
            zstore.write_dataset(tmp_path / "p.zarr", "inputs", b.inputs, kind="inputs", progress=False)


CHUNK_BYTES, SHARD_BYTES = 4 * 3 * 32 * 32 * 4, 8 * 3 * 32 * 32 * 4  # small chunks and shards: many blocks to kill in
KILLABLE = textwrap.dedent(f"""
    import sys, time
    from relaylab.data import store
    store.INNER_CHUNK_BYTES = {CHUNK_BYTES}
    store.SHARD_BYTES = {SHARD_BYTES}
    original = store._prefetch
    def slow(*args):                                  # slow enough that the kill lands part-way
        for item in original(*args):
            time.sleep(0.05)
            yield item
    store._prefetch = slow
    from relaylab.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_killed_conversion_is_reported_then_resumed_by_the_same_command(make_project, tmp_path, monkeypatch, cli):
    """Killed in a child process; reported, resumed and converted uninterrupted in-process, with the same chunking."""
    path = make_project(n_samples=400, height=32, width=32)
    script = tmp_path / "convert.py"
    script.write_text(KILLABLE)
    out = tmp_path / "p.zarr"
    child = subprocess.Popen([sys.executable, script, "convert", "-q", path, out])
    deadline = time.time() + 60
    while time.time() < deadline:
        progress = out / "_progress"
        if progress.exists() and sum(1 for _ in progress.rglob("c/*")) >= 3:
            break
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()

    with pytest.raises(IncompleteStoreError, match="run the same command again"):
        open_project(out)
    report = cli("validate", "-q", out)
    assert report.returncode == 2 and "left unfinished" in report.stdout
    info = cli("info", out)
    assert info.returncode == 2 and "status 'writing'" in info.stderr

    monkeypatch.setattr(zstore, "INNER_CHUNK_BYTES", CHUNK_BYTES)  # as in the killed run
    monkeypatch.setattr(zstore, "SHARD_BYTES", SHARD_BYTES)
    resumed = cli("convert", "-q", path, out)
    assert resumed.returncode == 0, resumed.stderr
    reference = tmp_path / "reference.zarr"
    assert cli("convert", "-q", path, reference).returncode == 0
    with open_project(out) as resumed_project, open_project(reference) as uninterrupted, open_project(path) as source:
        assert_projects_equal(resumed_project, uninterrupted)
        assert_projects_equal(resumed_project, source)
    chunk = "attributions/lrp_epsilon_plus/attribution/c/0/0/0/0"
    assert (out / chunk).read_bytes() == (reference / chunk).read_bytes()


def test_convert_refuses_an_existing_complete_store_and_foreign_folders(make_project, tmp_path):
    path = make_project()
    convert_to_zarr(path, tmp_path / "p.zarr", progress=False)
    with pytest.raises(RelaylabError, match="a complete store already exists"):
        convert_to_zarr(path, tmp_path / "p.zarr", progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(RelaylabError, match="non-empty folder that is not a relaylab store"):
        convert_to_zarr(path, tmp_path / "busy", progress=False)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_zarr_group_that_relaylab_did_not_write_is_refused(tmp_path):
    zarr.open_group(tmp_path / "other.zarr", mode="w", zarr_format=3)
    with pytest.raises(RelaylabError, match="a Zarr group that relaylab did not write"):
        open_project(tmp_path / "other.zarr")


def test_virelay_export_is_atomic(make_project, tmp_path, monkeypatch):
    path = make_project()
    from relaylab.data import convert

    def fail(*args, **kwargs):
        raise Crash

    monkeypatch.setattr(convert, "write_virelay_analysis", fail)
    with pytest.raises(Crash):
        convert_to_virelay(path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_validate_checks_group_metadata_against_its_schema(make_project, tmp_path, cli):
    path = make_project()
    convert_to_zarr(path, tmp_path / "p.zarr", progress=False)
    group = zarr.open_group(tmp_path / "p.zarr", mode="r+")["attributions/lrp_epsilon_plus"]
    group.attrs["relaylab"] = {**group.attrs["relaylab"], "blocks": 0}
    report = cli("validate", "-q", tmp_path / "p.zarr")
    assert report.returncode == 2
    assert "attributions/lrp_epsilon_plus/zarr.json#attributes.relaylab.blocks: expected 0 is less than the minimum of 1" in report.stdout


def test_errors_pickle_whole_for_dask_workers():
    import pickle

    error = RelaylabError.at("a.h5", "/label", "integer labels", "floats")
    clone = pickle.loads(pickle.dumps(error))
    assert clone.problems == error.problems and str(clone) == "a.h5:/label: expected integer labels (found floats)"
    incomplete = pickle.loads(pickle.dumps(IncompleteStoreError(error.problems)))
    assert isinstance(incomplete, IncompleteStoreError) and incomplete.problems == error.problems


def test_resuming_with_differently_made_data_is_refused(make_project, tmp_path):
    path = make_project(n_samples=30)
    with open_project(path) as project:
        zstore.create_store(tmp_path / "p.zarr", project={"name": "p"}, dataset={"name": "d"}, label_map=project.label_map, source="x")
        zstore.write_dataset(tmp_path / "p.zarr", "inputs", project.inputs, kind="inputs", progress=False)
        resampled = project.inputs.assign_attrs(sampling={"up": "mirror_edge", "down": "resize"})
        with pytest.raises(RelaylabError, match="from the same source data"):
            zstore.write_dataset(tmp_path / "p.zarr", "inputs", resampled, kind="inputs", progress=False)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_shard_writer_stores_the_bytes_zarr_itself_would(tmp_path, dtype):
    """relaylab encodes whole shards outside zarr's per-chunk path for speed; the files must be zarr's own."""
    rng = np.random.default_rng(0)
    values = (rng.random((23, 3, 8, 8)) * 200).astype(dtype)
    values[8:12] = 0  # inner chunks equal to the fill value are left out, as zarr does
    root = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=3)
    kwargs = dict(shape=values.shape, dtype=dtype, chunks=(2, 3, 8, 8), shards=(10, 3, 8, 8),
                  compressors=[zstore.COMPRESSORS["lz4"]], fill_value=0, dimension_names=("sample", "channel", "y", "x"))
    ours, theirs = root.create_array("ours", **kwargs), root.create_array("theirs", **kwargs)
    assert zstore.ShardWriter.usable(ours)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        writer = zstore.ShardWriter(ours, pool)
        assert writer.write(slice(0, 20), values[:20]) and writer.write(slice(20, 23), values[20:])  # last shard partial
        assert not writer.write(slice(5, 15), values[5:15])  # not shard-aligned: left to zarr
    theirs[:] = values
    files = sorted(p.relative_to(tmp_path / "s.zarr" / "theirs") for p in (tmp_path / "s.zarr" / "theirs" / "c").rglob("*") if p.is_file())
    assert len(files) == 3
    for file in files:
        assert (tmp_path / "s.zarr" / "ours" / file).read_bytes() == (tmp_path / "s.zarr" / "theirs" / file).read_bytes()
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "s.zarr" / "ours")[:], values)


@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_tree_encoder_writes_what_xarray_writes(data):
    """Categories of one structure reuse the first one's metadata: every file equals xarray's own `to_zarr` output,
    byte for byte, for any sizes, including arrays too large for one chunk (which go through xarray)."""
    clusterings = data.draw(st.lists(st.sampled_from(["kmeans-02", "kmeans-03", "hdbscan"]), min_size=1, unique=True))
    encoder = zstore.TreeEncoder()
    for _ in range(3):
        n = data.draw(st.integers(1, 2500))
        k = data.draw(st.sampled_from([2, 8, 32]))
        rng = np.random.default_rng(n)
        nodes = {"/": xr.Dataset(coords={"index": ("member", rng.integers(0, 10**6, n).astype(np.uint32))}),
                 "/embedding/spectral": xr.Dataset({"embedding": (("member", "component"), rng.random((n, k), dtype=np.float32))},
                                                   coords={"eigenvalue": ("component", rng.random(k, dtype=np.float32))}),
                 "/cluster": xr.Dataset({c: ("member", rng.integers(-1, 5, n), {"embedding": "spectral"}) for c in clusterings})}
        tree = xr.DataTree.from_dict(nodes)
        attrs = {"kind": "category", "status": "complete"}
        expected = zstore._with_xarray({node.relative_to(tree): zstore._node_dataset(node) for node in tree.subtree}, attrs)
        assert encoder.encode(tree, attrs) == expected


def category_tree(n: int, k: int, clusterings: list[str], seed: int) -> xr.DataTree:
    rng = np.random.default_rng(seed)
    return xr.DataTree.from_dict({
        "/": xr.Dataset(coords={"index": ("member", rng.integers(0, 10**6, n).astype(np.uint32))}),
        "/embedding/spectral": xr.Dataset({"embedding": (("member", "component"), rng.random((n, k), dtype=np.float32))},
                                          coords={"eigenvalue": ("component", rng.random(k, dtype=np.float32))}),
        "/cluster": xr.Dataset({c: ("member", rng.integers(-1, 5, n), {"embedding": "spectral"}) for c in clusterings})})


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 60), min_size=2, max_size=6), k=st.sampled_from([1, 2, 8]),
       clusterings=st.lists(st.sampled_from(["kmeans-02", "kmeans-03", "hdbscan"]), min_size=1, unique=True))
def test_a_pack_unpacks_into_the_categories_it_was_made_of(sizes, k, clusterings):
    trees = {f"c{i}": category_tree(n, k, clusterings, i) for i, n in enumerate(sizes)}
    pack = zstore.pack_trees(trees)
    assert pack["index"].size == sum(sizes) and pack["embedding/spectral"]["eigenvalue"].shape == (len(sizes), k)
    unpacked = zstore.unpack_tree(pack, list(trees), sizes)
    assert list(unpacked) == list(trees)
    for name, tree in trees.items():
        for node in tree.subtree:
            got = unpacked[name][node.relative_to(tree)].to_dataset(inherit=False)
            for var, values in node.to_dataset(inherit=False).variables.items():
                assert got[var].dims == values.dims and got[var].attrs == values.attrs
                np.testing.assert_array_equal(got[var].values, values.values)


def test_trees_of_different_structures_are_not_packed():
    assert zstore.pack_trees({"a": category_tree(5, 2, ["kmeans-02"], 0), "b": category_tree(5, 3, ["kmeans-02"], 1)}) is None
    assert zstore.pack_trees({"a": category_tree(5, 2, ["kmeans-02"], 0), "b": category_tree(5, 2, ["hdbscan"], 1)}) is None
    assert zstore.pack_trees({"a": category_tree(5, 2, ["kmeans-02"], 0), "b": category_tree(9, 2, ["kmeans-02"], 1)}) is not None


def test_write_analysis_packs_small_categories_and_reads_them_back(tmp_path):
    """A ViRelAy analysis of many small categories converts into a few packs, not a folder each; their root
    attributes (a display name) and values come back per category."""
    path = make_store(tmp_path / "p.zarr", n=10)
    trees = {f"c{i:02d}": category_tree(3 + i, 4, ["kmeans-02"], i) for i in range(12)}
    for i, tree in enumerate(trees.values()):
        tree.attrs["display_name"] = f"class {i}"
    trees = {"a-empty": category_tree(0, 4, ["kmeans-02"], 50), **trees}  # a category with no members comes first
    trees["big"] = category_tree(zstore.PACK_MEMBERS + 1, 4, ["kmeans-02"], 99)  # too big to share a pack
    zstore.write_analysis(path, "spray", xr.DataTree(children=trees), progress=False)
    folder = path / "analyses/spray"
    assert sorted(p.name for p in folder.iterdir()) == ["_packs", "big", "zarr.json"]
    back = zstore.open_analysis(path, "spray")
    assert sorted(back.children) == sorted(trees)
    for name, tree in trees.items():
        assert back[name].attrs.get("display_name") == tree.attrs.get("display_name")
        for node in tree.subtree:
            for var, values in node.to_dataset(inherit=False).variables.items():
                np.testing.assert_array_equal(back[name][node.relative_to(tree)][var].values, values.values)


def test_tree_encoder_tells_apart_attributes_whose_repr_is_cut_short():
    """Array attributes are compared in full: two trees whose long attribute arrays differ only in the middle (where
    NumPy's repr prints "...") do not share a template, so each keeps its own attribute."""
    encoder, attrs = zstore.TreeEncoder(), {"kind": "category", "status": "complete"}
    for changed in (None, 1000):
        marks = np.arange(2000)
        if changed is not None:
            marks[changed] = -1
        tree = category_tree(5, 2, ["kmeans-02"], 0)
        tree["cluster"]["kmeans-02"].attrs["marks"] = marks
        expected = zstore._with_xarray({node.relative_to(tree): zstore._node_dataset(node) for node in tree.subtree}, attrs)
        assert encoder.encode(tree, attrs) == expected
