"""The HDF5 backend reads every ViRelAy layout, lazily, with the values h5py reads."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
import yaml

from relaylab.data import hdf5
from relaylab.data.project import open_project
from relaylab.data.synthetic import Variant, attributions_of, images_and_labels
from relaylab.data.validate import validate
from relaylab.errors import RelaylabError

from .helpers import virelay_resampled

LAYOUTS = [
    dict(layout="chw"),
    dict(layout="hwc"),
    dict(layout="hwc", dtype="float01", chunk_rows=None),
    dict(layout="chw", dtype="float11"),
    dict(data_as_group=True),
    dict(data_as_group=True, layout="hwc"),
    dict(multi_label=True),
    dict(multi_label=True, labels_as_group=True),
    dict(labels_as_group=True),
    dict(channels=1),
]


def h5_read(path, name):
    """What h5py reads, with groups of per-sample arrays stacked in sorted key order."""
    with h5py.File(path, "r") as h5:
        node = h5[name]
        if isinstance(node, h5py.Dataset):
            return node[()]
        return np.stack([node[k][()] for k in sorted(node)])


def as_chw(values, layout):
    return values.transpose(0, 3, 1, 2) if layout == "hwc" else values


@pytest.mark.parametrize("fields", LAYOUTS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_dataset_values_equal_h5py(make_project, fields):
    path = make_project(**fields)
    v = Variant(**fields)
    ds = xr.open_dataset(path.parent / "dataset.h5", engine="virelay")
    expected = as_chw(h5_read(path.parent / "dataset.h5", "data"), v.layout)
    assert ds["input"].dims == ("sample", "channel", "y", "x")
    np.testing.assert_array_equal(ds["input"].values, expected)
    np.testing.assert_array_equal(ds["input"][7, :, 3].values, expected[7, :, 3])
    np.testing.assert_array_equal(ds["input"].isel(sample=[9, 2, 5], x=4).values, expected[[9, 2, 5], :, :, 4])
    labels = h5_read(path.parent / "dataset.h5", "label")
    np.testing.assert_array_equal(ds["label"].values, labels)
    assert ds["label"].dims == (("sample", "class") if v.multi_label else ("sample",))
    expected_range = [0.0, 255.0] if v.dtype == "uint8" else None
    assert ds.attrs["value_range"] == expected_range


def test_greyscale_three_dimensional_data_gets_a_channel(tmp_path):
    data = np.arange(5 * 6 * 7, dtype=np.uint8).reshape(5, 6, 7)
    with h5py.File(tmp_path / "d.h5", "w") as h5:
        h5["data"], h5["label"] = data, np.zeros(5, dtype=np.int64)
    ds = xr.open_dataset(tmp_path / "d.h5", engine="virelay")
    assert ds["input"].shape == (5, 1, 6, 7)
    np.testing.assert_array_equal(ds["input"][:, 0].values, data)
    np.testing.assert_array_equal(ds["input"][2].values, data[2][None])


def test_declared_layout_and_range_override_the_guess(tmp_path):
    data = np.random.default_rng(0).random((4, 3, 3, 3), dtype=np.float32)  # ambiguous: both axes could be channels
    with h5py.File(tmp_path / "d.h5", "w") as h5:
        h5["data"], h5["label"] = data, np.zeros(4, dtype=np.int64)
    guessed = xr.open_dataset(tmp_path / "d.h5", engine="virelay")
    declared = xr.open_dataset(tmp_path / "d.h5", engine="virelay", layout="hwc", value_range=[0, 1])
    np.testing.assert_array_equal(guessed["input"].values, data)
    np.testing.assert_array_equal(declared["input"].values, data.transpose(0, 3, 1, 2))
    assert declared.attrs["value_range"] == [0.0, 1.0] and guessed.attrs["value_range"] is None


def test_dask_chunks_follow_hdf5_chunks(make_project, monkeypatch):
    path = make_project(n_samples=50, chunk_rows=8, layout="hwc")
    ds = xr.open_dataset(path.parent / "dataset.h5", engine="virelay", chunks={})
    assert ds["input"].data.chunks[0] == (8, 8, 8, 8, 8, 8, 2)
    assert ds["input"].data.chunks[1:] == ((3,), (16,), (16,))
    from relaylab.data import project as project_module

    sample_bytes = 3 * 16 * 16
    monkeypatch.setattr(project_module, "DASK_CHUNK_BYTES", 20 * sample_bytes)  # 20 samples: 2 whole HDF5 chunks
    with open_project(path) as project:
        assert project.inputs["input"].data.chunks[0] == (16, 16, 16, 2)
        assert project.inputs["label"].data.chunks[0] == (16, 16, 16, 2)


def test_opening_reads_no_array_data(make_project, monkeypatch):
    reads = []
    original = hdf5.H5Array._read_file
    monkeypatch.setattr(hdf5.H5Array, "_read_file", lambda self, key: reads.append(self.name) or original(self, key))
    path = make_project(attribution_files=2, analysis_files=2, data_as_group=True)
    with open_project(path) as project:
        sizes = [dict(node.dataset.sizes) for tree in project.analyses.values() for node in tree.subtree]
        assert reads == [] and {"member": 20} in sizes
        sample = project.inputs["input"][3].values
        assert reads == ["data"] and sample.shape == (3, 16, 16)


def test_arrays_pickle_and_compute_on_a_dask_cluster(make_project, dask_cluster):
    distributed = pytest.importorskip("distributed")
    path = make_project(layout="hwc", n_samples=40)
    with open_project(path) as project:
        clone = pickle.loads(pickle.dumps(project.inputs))
        np.testing.assert_array_equal(clone["input"].values, project.inputs["input"].values)
        with distributed.Client(dask_cluster) as client:
            total = client.compute(project.inputs["input"].astype("int64").sum(dim=("channel", "y", "x")).data).result()
        expected = as_chw(h5_read(path.parent / "dataset.h5", "data"), "hwc").astype(np.int64).sum(axis=(1, 2, 3))
        np.testing.assert_array_equal(total, expected)


def test_attributions_split_over_files_with_index(make_project):
    fields = dict(attribution_files=2, n_samples=45)
    path = make_project(**fields)
    v = Variant(**fields)
    images, labels = images_and_labels(v)
    with open_project(path) as project:
        attributions = project.attributions["lrp_epsilon_plus"]
        assert attributions.sizes["sample"] == 45
        ordered = attributions.sortby("sample")
        np.testing.assert_array_equal(ordered["sample"].values, np.arange(45))
        np.testing.assert_array_equal(ordered["attribution"].values, attributions_of(images, labels, v))
        np.testing.assert_array_equal(ordered["label"].values, labels)
        for part in (0, 1):
            file = path.parent / f"attribution-{part}.h5"
            index = h5_read(file, "index")
            np.testing.assert_array_equal(attributions.sel(sample=index)["attribution"].values, h5_read(file, "attribution"))
            np.testing.assert_array_equal(attributions.sel(sample=index)["prediction"].values, h5_read(file, "prediction"))
        assert list(attributions["class_name"].values) == ["class 0", "class 1", "class 2"]
        assert attributions.attrs["method"] == "lrp_epsilon_plus" and attributions.attrs["strategy"] == "true_label"


def test_analysis_sources_merge_and_categories_differ(make_project):
    path = make_project(analysis_files=2, n_classes=4)
    with open_project(path) as project:
        tree = project.analyses["spectral_analysis"]
        assert sorted(tree.children) == [f"n{c:08d}" for c in range(4)]
        last = tree["n00000003"]
        assert "tsne" not in last["embedding"].children and "tsne" in tree["n00000000/embedding"].children
        assert last.attrs["display_name"] == "class 3"
        for category in tree.children:
            file = path.parent / ("analysis-0.h5" if category in ("n00000000", "n00000001") else "analysis-1.h5")
            node = tree[category]
            np.testing.assert_array_equal(node["index"].values, h5_read(file, f"{category}/index"))
            spectral = node["embedding/spectral"]
            np.testing.assert_array_equal(spectral["embedding"].values, h5_read(file, f"{category}/embedding/spectral"))
            with h5py.File(file) as h5:
                np.testing.assert_allclose(spectral["eigenvalue"].values, h5[f"{category}/embedding/spectral"].attrs["eigenvalue"])
            np.testing.assert_array_equal(node["cluster"]["hdbscan"].values, h5_read(file, f"{category}/cluster/hdbscan"))
            assert node["cluster"]["hdbscan"].values.min() == -1


def test_open_datatree_entry_point(make_project):
    path = make_project()
    tree = xr.open_datatree(path.parent / "analysis-0.h5", engine="virelay")
    assert sorted(tree.children) == ["n00000000", "n00000001", "n00000002"]
    assert tree["n00000001/embedding/spectral"]["embedding"].dims == ("member", "component")


@pytest.mark.parametrize("chunks", [None, (4, 2, 3, 3)])
def test_readahead_byte_ranges_cover_the_rows_stored_bytes(tmp_path, chunks):
    """The ranges Readahead announces hold exactly the requested rows' bytes (uncompressed, so they can be read back)."""
    values = np.arange(10 * 2 * 3 * 3, dtype=np.float32).reshape(10, 2, 3, 3)
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("attribution", data=values, chunks=chunks)
    raw = path.read_bytes()
    with h5py.File(path, "r") as h5:
        ranges = hdf5.byte_ranges(h5["attribution"], slice(3, 7))
    if chunks is None:
        ((offset, size),) = ranges
        assert np.array_equal(np.frombuffer(raw[offset:offset + size], np.float32).reshape(4, 2, 3, 3), values[3:7])
    else:
        assert len(ranges) == 2  # rows 3..6 lie in the chunks starting at rows 0 and 4
        stored = [np.frombuffer(raw[o:o + s], np.float32).reshape(chunks) for o, s in ranges]  # in row order
        assert np.array_equal(np.concatenate(stored), values[0:8])


@pytest.mark.parametrize("storage", [
    dict(chunks=(4, 2, 3, 3)),                       # whole rows per chunk: read straight from the file
    dict(chunks=None),                               # contiguous: likewise
    dict(chunks=(4, 1, 3, 3)),                       # chunks split a row: through HDF5
    dict(chunks=(4, 2, 3, 3), compression="gzip"),   # filtered: through HDF5
    dict(chunks=(4, 3, 4, 5), dtype=">f4"),          # big-endian: through HDF5
    dict(chunks=(4, 3, 4, 5), unwritten=True),       # chunks never written (fill value): through HDF5
])
def test_row_reads_equal_h5py_whether_read_from_the_file_directly_or_through_hdf5(tmp_path, storage):
    storage = dict(storage)
    unwritten, dtype = storage.pop("unwritten", False), storage.pop("dtype", "<f4")
    values = np.arange(10 * 3 * 4 * 5, dtype=np.float32).reshape(10, 3, 4, 5)
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as h5:
        if unwritten:
            h5.create_dataset("attribution", shape=values.shape, dtype=dtype, fillvalue=-1, **storage)[:4] = values[:4]
        else:
            h5.create_dataset("attribution", data=values.astype(dtype), **storage)
        h5["label"] = np.zeros(10, dtype=np.int64)
    expected = h5_read(path, "attribution")
    with h5py.File(path, "r") as h5:
        direct = hdf5.direct_ranges(h5["attribution"], slice(2, 9)) is not None
    assert direct == (storage.get("compression") is None and storage["chunks"] in (None, (4, 3, 4, 5))
                      and dtype == "<f4" and not unwritten)
    ds = xr.open_dataset(path, engine="virelay")
    for key in (slice(2, 9), slice(0, 10), slice(3, 4), 7, slice(9, 2)):
        np.testing.assert_array_equal(ds["attribution"][key].values, expected[key])
    np.testing.assert_array_equal(ds["attribution"].isel(sample=slice(1, 9), channel=1).values, expected[1:9, 1])


def test_a_truncated_file_is_reported_by_the_direct_read(tmp_path):
    values = np.ones((64, 3, 8, 8), dtype=np.float32)
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("attribution", data=values, chunks=(16, 3, 8, 8))
        h5["label"] = np.zeros(64, dtype=np.int64)
    ds = xr.open_dataset(path, engine="virelay")
    with h5py.File(path, "r") as h5:
        (offset, _), *_ = hdf5.direct_ranges(h5["attribution"], slice(48, 64))
    with open(path, "r+b") as f:
        f.truncate(offset + 100)
    with pytest.raises(hdf5.RelaylabError, match=r"a\.h5.*/attribution.*ends before it"):
        ds["attribution"][48:64].values


# ------------------------------------------------------------------ per-sample groups with samples of different shapes


def members_hwc(path, name, layout):
    """Each per-sample array of group `name`, as h5py reads it, with its axes in (H, W, C) order."""
    with h5py.File(path, "r") as h5:
        arrays = [h5[name][key][()] for key in sorted(h5[name])]
    return [a[..., None] if a.ndim == 2 else a.transpose(1, 2, 0) if layout == "chw" else a for a in arrays]


def write_group_project(folder, samples: dict, *, sizes: dict | None = None, labels=None) -> Path:
    """A ViRelAy project whose dataset is a group of per-sample arrays (ViRelAy's hdf5_structure example builds them
    so: one array per key, a group of scalar labels), `sizes` the project file's input size and sampling methods."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "label-map.json").write_text(json.dumps([{"index": i, "word_net_id": f"n{i:08d}", "name": f"c{i}"}
                                                       for i in range(2)]))
    with h5py.File(folder / "dataset.h5", "w") as h5:
        for key, values in samples.items():
            h5[f"data/{key}"] = values
        for k, key in enumerate(samples):
            h5[f"label/{key}"] = np.uint8(k % 2) if labels is None else labels[key]
    dataset = {"name": "d", "type": "hdf5", "path": "dataset.h5", **(sizes or {})}
    path = folder / "project.yaml"
    path.write_text(yaml.safe_dump({"project": {"name": "p", "model": "m", "label_map": "label-map.json",
                                                "dataset": dataset}}))
    return path


MIXED = [
    dict(layout="chw", up_sampling="fill_zeros", down_sampling="center_crop"),
    dict(layout="hwc", dtype="float01", up_sampling="edge_repeat", down_sampling="resize"),
    dict(layout="chw", dtype="float11", up_sampling="resize", down_sampling="center_crop"),
    dict(layout="hwc", up_sampling="resize", down_sampling="resize"),
    dict(channels=1, up_sampling="mirror_edge", down_sampling="resize"),
]


@pytest.mark.parametrize("fields", MIXED, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_per_sample_images_of_different_shapes_are_brought_to_the_input_size(make_project, fields):
    # a non-square input size, so that swapped axes cannot pass; samples 3 pixels smaller to 3 larger in each direction
    fields = dict(data_as_group=True, size_jitter=3, height=12, width=16, n_samples=14, **fields)
    path = make_project(**fields)
    v = Variant(**fields)
    shapes = {a.shape[:2] for a in members_hwc(path.parent / "dataset.h5", "data", v.layout)}
    assert any(h < 12 and w > 16 for h, w in shapes) and any(h > 12 and w < 16 for h, w in shapes)

    def expected(file, name):
        return np.stack([virelay_resampled(a, 16, 12, v.up_sampling, v.down_sampling).transpose(2, 0, 1)
                         for a in members_hwc(file, name, v.layout)])

    inputs = expected(path.parent / "dataset.h5", "data")
    assert validate(path, progress=False) == []
    with open_project(path) as project:
        assert project.inputs["input"].shape == (14, v.channels, 12, 16)
        assert project.inputs["input"].dtype == (np.uint8 if v.dtype == "uint8" else np.float32)
        np.testing.assert_array_equal(project.inputs["input"].values, inputs)
        np.testing.assert_array_equal(project.inputs["input"].isel(sample=[9, 2], x=3).values, inputs[[9, 2], :, :, 3])
        np.testing.assert_array_equal(project.inputs["label"].values, h5_read(path.parent / "dataset.h5", "label"))
        attributions = project.attributions["lrp_epsilon_plus"]["attribution"]
        np.testing.assert_array_equal(attributions.values, expected(path.parent / "attribution-0.h5", "attribution"))
        assert project.inputs.attrs["sampling"] == {"up_sampling_method": v.up_sampling,
                                                    "down_sampling_method": v.down_sampling}
        clone = pickle.loads(pickle.dumps(project.inputs))  # the lazy array travels to Dask workers
        np.testing.assert_array_equal(clone["input"][5].values, inputs[5])


def test_a_project_of_mixed_shape_samples_converts_and_exports_with_the_same_values(make_project, tmp_path, cli):
    path = make_project(data_as_group=True, size_jitter=2, up_sampling="wrap_around", down_sampling="center_crop")
    with open_project(path) as project:
        inputs, attributions = project.inputs["input"].values, project.attributions["lrp_epsilon_plus"]["attribution"].values
    assert cli("convert", "-q", path, tmp_path / "p.zarr").returncode == 0
    assert cli("convert", "-q", "--to", "virelay", tmp_path / "p.zarr", tmp_path / "vr").returncode == 0
    for converted in (tmp_path / "p.zarr", tmp_path / "vr" / "project.yaml"):
        with open_project(converted) as project:
            np.testing.assert_array_equal(project.inputs["input"].values, inputs)
            np.testing.assert_array_equal(project.attributions["lrp_epsilon_plus"]["attribution"].values, attributions)
    with h5py.File(tmp_path / "vr" / "dataset.h5") as h5:
        assert isinstance(h5["data"], h5py.Dataset) and h5["data"].shape == inputs.shape


def test_mixed_shapes_without_an_input_size_are_reported_before_anything_is_read(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    shapes = {"a": (3, 6, 6), "b": (3, 6, 6), "c": (3, 7, 5), "d": (3, 6, 6), "e": (3, 4, 4)}
    path = write_group_project(tmp_path, {k: rng.random(s, dtype=np.float32) for k, s in shapes.items()})
    file = str(path.parent / "dataset.h5")

    def no_reading(*args, **kwargs):
        raise AssertionError("sample values were read")

    monkeypatch.setattr(hdf5.H5Array, "_read_file", no_reading)
    monkeypatch.setattr(hdf5, "read_member", no_reading)
    problems = validate(path, progress=False)
    assert [(p.file, p.path, p.found) for p in problems] == [(file, "/data/c", "shape (3, 7, 5)"),
                                                             (file, "/data/e", "shape (3, 4, 4)")]
    assert all("shape (3, 6, 6)" in p.expected and "input_width" in p.expected for p in problems)
    with pytest.raises(RelaylabError) as error:
        open_project(path)
    assert error.value.problems == problems
    with pytest.raises(RelaylabError) as error:
        xr.open_dataset(file, engine="virelay")
    assert error.value.problems == problems


def test_mixed_shapes_open_with_an_input_size_given_to_the_engine(tmp_path):
    rng = np.random.default_rng(1)
    samples = {"a": rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), "b": rng.integers(0, 256, (9, 5, 3), dtype=np.uint8)}
    path = write_group_project(tmp_path, samples)
    ds = xr.open_dataset(path.parent / "dataset.h5", engine="virelay", input_width=8, input_height=6,
                         up_sampling_method="fill_ones", down_sampling_method="center_crop")
    expected = [virelay_resampled(a, 8, 6, "fill_ones", "center_crop").transpose(2, 0, 1) for a in samples.values()]
    np.testing.assert_array_equal(ds["input"].values, np.stack(expected))
    assert ds["input"].attrs["source_layout"] == "hwc"
    with pytest.raises(RelaylabError, match="up_sampling_method") as error:
        xr.open_dataset(path.parent / "dataset.h5", engine="virelay", input_width=8, input_height=6,
                        up_sampling_method="stretch")
    assert error.value.problems[0].path == "up_sampling_method"


def test_samples_the_sampling_methods_cannot_bring_to_the_input_size_are_named(tmp_path):
    rng = np.random.default_rng(2)
    samples = {"big": rng.random((3, 9, 11), dtype=np.float32), "fits": rng.random((3, 6, 8), dtype=np.float32),
               "small": rng.random((3, 4, 8), dtype=np.float32)}
    sizes = dict(input_width=8, input_height=6, up_sampling_method="none", down_sampling_method="center_crop")
    path = write_group_project(tmp_path, samples, sizes=sizes)
    problems = validate(path, progress=False)
    assert [(p.path, p.found) for p in problems] == [("/data/small", "8x4")]
    assert "becomes 8x6" in problems[0].expected and "up_sampling_method='none'" in problems[0].expected
    with pytest.raises(RelaylabError) as error:
        open_project(path)
    assert error.value.problems == problems


def test_greyscale_samples_among_colour_ones_get_their_channels_and_other_counts_are_named(tmp_path):
    rng = np.random.default_rng(3)
    samples = {"a": rng.integers(0, 256, (3, 6, 8), dtype=np.uint8), "b": rng.integers(0, 256, (7, 9), dtype=np.uint8),
               "c": rng.integers(0, 256, (1, 5, 8), dtype=np.uint8), "d": rng.integers(0, 256, (3, 4, 10), dtype=np.uint8)}
    sizes = dict(input_width=8, input_height=6, up_sampling_method="edge_repeat", down_sampling_method="resize")
    path = write_group_project(tmp_path / "grey", samples, sizes=sizes)
    expected = []
    for key in "abcd":
        hwc = samples[key][..., None] if samples[key].ndim == 2 else samples[key].transpose(1, 2, 0)
        expected.append(np.repeat(virelay_resampled(hwc, 8, 6, "edge_repeat", "resize"), 3 // hwc.shape[2], axis=2))
    with open_project(path) as project:
        np.testing.assert_array_equal(project.inputs["input"].values, np.stack(expected).transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(expected[1][..., 0], expected[1][..., 2])

    rgba = write_group_project(tmp_path / "rgba", {**samples, "e": rng.integers(0, 256, (4, 6, 8), dtype=np.uint8)},
                               sizes=sizes)
    problems = validate(rgba, progress=False)
    assert [(p.path, p.found) for p in problems] == [("/data/e", "shape (4, 6, 8)")]
    assert "3 channels (or 1)" in problems[0].expected


def test_a_label_group_of_mixed_shapes_is_a_problem_not_a_traceback(tmp_path):
    samples = {k: np.zeros((3, 4, 4), dtype=np.uint8) for k in "abc"}
    labels = {"a": np.array([True, False]), "b": np.array([False, True]), "c": np.array([True, False, True])}
    path = write_group_project(tmp_path, samples, labels=labels)
    with pytest.raises(RelaylabError) as error:
        open_project(path)
    assert [(p.file, p.path, p.found) for p in error.value.problems] == [(str(path.parent / "dataset.h5"), "/label/c", "shape (3,)")]
    assert [p.path for p in validate(path, progress=False)] == ["/label/c"]
