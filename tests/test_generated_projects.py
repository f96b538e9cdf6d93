"""Generated projects, not hand-picked ones: hypothesis draws ViRelAy projects from the whole format space
(synthetic.FormatPoint: CHW/HWC/greyscale, uint8/float16/float32/float64, contiguous, chunked, compressed and
per-sample-group arrays, single and multi-label, attributions split over files with permuted `index`, analyses split
over files with overlapping categories, optional keys missing, names with '-', spaces and non-ASCII; image folders with
both regex kinds and every sampling method) and checks that relaylab reads what h5py and Pillow read (tests/generated.py,
written apart from relaylab's readers), that `validate` says ok, and that convert -> `--to virelay` gives back every value.

The number of examples follows the hypothesis profile (tests/conftest.py): "ci" by default, "long" with
`pytest --hypothesis-profile long`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaylab.data.convert import convert_to_virelay, convert_to_zarr
from relaylab.data.project import open_project
from relaylab.data.synthetic import FormatPoint, write_format_point, write_image_directory_project
from relaylab.data.validate import errors, validate
from relaylab.errors import RelaylabError

from .generated import assert_matches, assert_same_reference, read_reference, value_range

BASE = settings().max_examples  # the profile's count; each test takes a multiple of it
STORAGE = st.sampled_from(["contiguous", "chunked", "compressed", "group"])


@st.composite
def format_points(draw) -> FormatPoint:
    n = draw(st.integers(2, 7))
    layout = draw(st.sampled_from(["chw", "hwc", "hw"]))
    files = draw(st.integers(0, min(3, n)))
    return FormatPoint(
        n_samples=n,
        n_classes=draw(st.integers(1, 4)),
        # 5..9 pixels: never a channel count (1, 3, 4), so the layout is not ambiguous to guess
        height=draw(st.integers(5, 9)), width=draw(st.integers(5, 9)),
        layout=layout, channels=draw(st.sampled_from([1, 3, 4])),
        dtype=draw(st.sampled_from(["uint8", "float16", "float32", "float64"])), signed=draw(st.booleans()),
        storage=draw(STORAGE), label_storage=draw(STORAGE),
        label_dtype=draw(st.sampled_from(["int64", "int32", "uint8"])), multi_label=draw(st.booleans()),
        attribution_files=files, attribution_index=draw(st.booleans()),
        attribution_coverage=draw(st.sampled_from([1.0, 1.0, 0.6])),
        attribution_channels=0 if layout == "hw" else draw(st.sampled_from([0, 1])),
        attribution_dtype=draw(st.sampled_from(["float32", "float16", "float64"])),
        attribution_storage=draw(STORAGE), predictions=draw(st.booleans()),
        analysis_files=tuple(draw(st.lists(st.integers(1, 2), max_size=2))), overlapping=draw(st.booleans()),
        category_names=draw(st.sampled_from(["wnid", "index", "odd"])),
        declare_size=draw(st.booleans()), declare_sampling=draw(st.booleans()), declare_regexes=draw(st.booleans()),
        odd_names=draw(st.booleans()), member_keys=draw(st.sampled_from(["padded", "shuffled"])),
        seed=draw(st.integers(0, 2**16)),
    )


def round_trip(yaml_path: Path, work: Path):
    """convert -> store -> `--to virelay`, in process; the exported project's reference reading."""
    store = convert_to_zarr(yaml_path, work / "store.zarr", progress=False)
    back = convert_to_virelay(store, work / "back", progress=False)
    return store, read_reference(back / "project.yaml", "chw")


def stored_value_range(store: Path) -> list[float] | None:
    meta = json.loads((store / "inputs" / "zarr.json").read_text())
    return meta["attributes"]["relaylab"].get("value_range")


# A conversion costs about 0.4 s of fixed overhead even for these tiny projects, so every project is read and
# validated and one in three (drawn) also makes the round trip: 250 + 60 projects, ~100 round trips per "ci" run.
ROUND_TRIP = st.sampled_from([True, False, False])


@pytest.mark.slow  # over a minute: ./dev test --fast leaves it out; the examples below stay in
@settings(max_examples=int(2.5 * BASE))
@given(point=format_points(), trip=ROUND_TRIP)
def test_generated_hdf5_projects_read_as_h5py_reads_them_and_round_trip(point, trip, tmp_path_factory):
    with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp()) as folder:
        work = Path(folder)
        yaml_path = write_format_point(work / "project", point)
        ref = read_reference(yaml_path, point.layout)

        assert errors(validate(yaml_path, progress=False)) == []
        with open_project(yaml_path, dask=False) as project:
            assert (project.name, project.model, project.dataset_name) == (ref.name, ref.model, ref.dataset_name)
            assert_matches(project, ref)
        if not trip:
            return
        with open_project(yaml_path) as project:  # Dask-backed, chunked like the files: the same values
            np.testing.assert_array_equal(project.inputs["input"].values, ref.inputs)

        store, back = round_trip(yaml_path, work)
        assert stored_value_range(store) == value_range(ref.inputs)
        assert_same_reference(ref, back)
        with h5py.File(work / "back" / "dataset.h5", "r") as h5:
            assert list(h5["data"].attrs["value_range"]) == value_range(ref.inputs)


SIZES = st.lists(st.tuples(st.integers(3, 9), st.integers(3, 9)), min_size=1, max_size=5)
UP = st.sampled_from(["none", "fill_zeros", "fill_ones", "edge_repeat", "mirror_edge", "wrap_around", "resize"])
DOWN = st.sampled_from(["none", "center_crop", "resize"])


@pytest.mark.slow  # over a minute: ./dev test --fast leaves it out; the examples below stay in
@settings(max_examples=int(0.6 * BASE))
@given(sizes=SIZES, width=st.integers(4, 7), height=st.integers(4, 7), up=UP, down=DOWN,
       label_by=st.sampled_from(["word_net_id", "index"]), odd=st.booleans(), seed=st.integers(0, 2**16), trip=ROUND_TRIP)
def test_generated_image_folders_read_as_pillow_reads_them_and_round_trip(sizes, width, height, up, down, label_by, odd,
                                                                          seed, trip, tmp_path_factory):
    with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp()) as folder:
        work = Path(folder)
        yaml_path = write_image_directory_project(work / ("Bilder-ü ψ" if odd else "images"), sizes, input_width=width,
                                                  input_height=height, up_sampling_method=up, down_sampling_method=down,
                                                  label_by=label_by, n_classes=3, seed=seed,
                                                  name="Bilder ü-1" if odd else "images")
        try:
            ref = read_reference(yaml_path)
        except ValueError:  # an image the sampling methods cannot bring to the input size: refused, no output
            assert errors(validate(yaml_path, progress=False))
            with pytest.raises(RelaylabError) as caught:
                convert_to_zarr(yaml_path, work / "store.zarr", progress=False)
            assert all(p.file for p in caught.value.problems)
            assert not (work / "store.zarr").exists()
            return
        assert errors(validate(yaml_path, progress=False)) == []
        with open_project(yaml_path, dask=False) as project:
            assert_matches(project, ref)
        if trip:
            _, back = round_trip(yaml_path, work)
            assert_same_reference(ref, back)


def test_the_format_point_generator_covers_what_it_claims(tmp_path):
    """The generator itself: shuffled group keys sort away from numeric order, split attribution files hold permuted
    indices, overlapping analysis files repeat a category, odd names reach file names."""
    point = FormatPoint(n_samples=6, storage="group", member_keys="shuffled", attribution_files=2, analysis_files=(2,),
                        overlapping=True, odd_names=True, seed=3)
    path = write_format_point(tmp_path, point)
    assert any(ord(c) > 127 for c in path.name) and " " in path.name
    spec = read_reference(path)
    with h5py.File(next(tmp_path.rglob("*data set.h5")), "r") as h5:
        keys = list(h5["data"])
        assert sorted(keys) != sorted(keys, key=lambda k: int(k[1:]))
    indices = []
    for file in sorted(tmp_path.rglob("*attribution-*.h5")):
        with h5py.File(file, "r") as h5:
            indices.append(h5["index"][()].astype(np.int64))
    assert len(indices) == 2 and any((np.diff(i) < 0).any() for i in indices if len(i) > 1)
    categories = []
    for file in sorted(tmp_path.rglob("*analysis-0-*.h5")):
        with h5py.File(file, "r") as h5:
            categories.append(set(h5))
    assert categories[0] & categories[1]
    assert sorted(spec.attributions) == list(range(6))


def test_overlapping_categories_with_different_indices_are_refused(tmp_path):
    """A category repeated in two sources of one method merges only when both give the same `index`."""
    path = write_format_point(tmp_path, FormatPoint(n_samples=6, n_classes=2, analysis_files=(2,), overlapping=True))
    second = next(tmp_path.rglob("*analysis-0-1.h5"))
    with h5py.File(second, "r+") as h5:
        h5["n00000000/index"][0] = (h5["n00000000/index"][0] + 1) % 6
    with pytest.raises(RelaylabError) as caught:
        open_project(path)
    problem = caught.value.problems[0]
    assert problem.file.endswith("analysis-0-1.h5") and problem.path == "/n00000000/index"
    assert "the same sample indices" in problem.expected
    assert errors(validate(path, progress=False))
