"""The HDF5 backend reads every ViRelAy layout, lazily, with the values h5py reads."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import xarray as xr

from relaylab.data import hdf5
from relaylab.data.project import open_project
from relaylab.data.synthetic import Variant, attributions_of, images_and_labels

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
