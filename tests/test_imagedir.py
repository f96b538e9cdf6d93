"""The image-folder backend reads real image folders lazily, with ViRelAy's labels and resampling (axes fixed)."""

from __future__ import annotations

import glob
import json
import math
import os
import pickle

import dask
import h5py
import numpy as np
import PIL.Image
import pytest
import xarray as xr
import yaml
from PIL import Image

from relaylab.data.imagedir import image_directory_problems, open_image_directory
from relaylab.data.labels import load_label_map
from relaylab.data.project import open_project
from relaylab.data.synthetic import write_image_directory_project
from relaylab.data.validate import validate
from relaylab.errors import RelaylabError

from .helpers import NUMPY_PADDING

# A non-square target, so that a swapped height and width cannot pass.
WIDTH, HEIGHT = 8, 6
CLASSES = [(0, "n01440764", "tench"), (1, "n01443537", "goldfish"), (2, "n01484850", "great white shark")]
WNID_REGEX = r".*/(n\d{8})/[^/]+$"
INDEX_REGEX = r".*/(\d+)/[^/]+$"
# (width, height): smaller in both, larger in both, exact, and each mix of smaller and larger; odd differences.
SIZES = [(5, 3), (11, 9), (8, 6), (6, 10), (13, 4), (3, 6), (8, 11), (1, 1)]


def random_image(width: int, height: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_png(path, pixels: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return str(path)


@pytest.fixture
def label_map_file(tmp_path):
    path = tmp_path / "label-map.json"
    path.write_text(json.dumps([{"index": i, "word_net_id": w, "name": n} for i, w, n in CLASSES]))
    return path


def imagenet_folder(root, sizes=SIZES, by="word_net_id") -> dict[str, tuple[np.ndarray, int]]:
    """Images in sub-folders named by WordNet id (or class index); returns {path: (pixels, class index)}."""
    written = {}
    for k, (width, height) in enumerate(sizes):
        index, wnid, _ = CLASSES[(k * 2) % len(CLASSES)]  # classes not in the order the files sort
        sub = wnid if by == "word_net_id" else str(index)
        name = f"img-{(len(sizes) - k):02d}.png"
        pixels = random_image(width, height, seed=k)
        written[write_png(root / sub / name, pixels)] = (pixels, index)
    return written


def expected_sample(pixels: np.ndarray, up: str, down: str) -> np.ndarray:
    """What ViRelAy's resampling gives, with height on axis 0: pad (ceil before) or resize, then crop or resize."""
    height, width = pixels.shape[:2]
    if height < HEIGHT or width < WIDTH:
        if up == "resize":
            pixels = np.asarray(Image.fromarray(pixels).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC))
        elif up in NUMPY_PADDING:
            pad_y, pad_x = max(0, HEIGHT - height), max(0, WIDTH - width)
            pixels = np.pad(pixels, ((math.ceil(pad_y / 2), math.floor(pad_y / 2)),
                                     (math.ceil(pad_x / 2), math.floor(pad_x / 2)), (0, 0)), **NUMPY_PADDING[up])
    height, width = pixels.shape[:2]
    if height > HEIGHT or width > WIDTH:
        if down == "resize":
            pixels = np.asarray(Image.fromarray(pixels).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC))
        elif down == "center_crop":
            top, left = math.ceil(max(0, height - HEIGHT) / 2), math.ceil(max(0, width - WIDTH) / 2)
            pixels = pixels[top:top + HEIGHT, left:left + WIDTH]
    return pixels.transpose(2, 0, 1)


def open_folder(folder, label_map, **settings) -> xr.Dataset:
    settings.setdefault("label_word_net_id_regex", WNID_REGEX)
    return open_image_directory(folder, label_map=label_map, input_width=WIDTH, input_height=HEIGHT, **settings)


# ------------------------------------------------------------------------------------------------- values


@pytest.mark.parametrize("down", ["center_crop", "resize"])
@pytest.mark.parametrize("up", [*NUMPY_PADDING, "resize"])
def test_every_sampling_method_gives_the_numpy_and_pillow_result(tmp_path, label_map_file, up, down):
    written = imagenet_folder(tmp_path / "images")
    ds = open_folder(tmp_path / "images", label_map_file, up_sampling_method=up, down_sampling_method=down)
    files = sorted(written)
    expected = np.stack([expected_sample(written[f][0], up, down) for f in files])
    assert ds["input"].dims == ("sample", "channel", "y", "x")
    assert ds["input"].shape == (len(SIZES), 3, HEIGHT, WIDTH)
    assert ds["input"].dtype == np.uint8
    np.testing.assert_array_equal(ds["input"].values, expected)
    assert ds.attrs["sampling"] == {"up_sampling_method": up, "down_sampling_method": down}


def test_fill_ones_pads_with_the_value_one_and_centres_the_image(tmp_path, label_map_file):
    pixels = random_image(5, 3, seed=1) | 2  # no 0 or 1 inside, so the border is told apart
    write_png(tmp_path / "images" / CLASSES[0][1] / "a.png", pixels)
    values = open_folder(tmp_path / "images", label_map_file, up_sampling_method="fill_ones")["input"].values[0]
    top, left = math.ceil((HEIGHT - 3) / 2), math.ceil((WIDTH - 5) / 2)
    np.testing.assert_array_equal(values[:, top:top + 3, left:left + 5], pixels.transpose(2, 0, 1))
    border = np.ones(values.shape, dtype=bool)
    border[:, top:top + 3, left:left + 5] = False
    assert set(np.unique(values[border]).tolist()) == {1}


def test_center_crop_cuts_the_odd_pixel_before(tmp_path, label_map_file):
    pixels = random_image(11, 9, seed=2)
    write_png(tmp_path / "images" / CLASSES[0][1] / "a.png", pixels)
    values = open_folder(tmp_path / "images", label_map_file, down_sampling_method="center_crop")["input"].values[0]
    top, left = math.ceil((9 - HEIGHT) / 2), math.ceil((11 - WIDTH) / 2)
    np.testing.assert_array_equal(values, pixels[top:top + HEIGHT, left:left + WIDTH].transpose(2, 0, 1))
    assert not np.array_equal(values, pixels[top - 1:top - 1 + HEIGHT, left - 1:left - 1 + WIDTH].transpose(2, 0, 1))


def test_greyscale_and_rgba_images_are_read_as_rgb(tmp_path, label_map_file):
    grey = np.random.default_rng(3).integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
    rgba = np.random.default_rng(4).integers(0, 256, (HEIGHT, WIDTH, 4), dtype=np.uint8)
    write_png(tmp_path / "images" / CLASSES[0][1] / "a.png", grey)  # saved as mode L
    write_png(tmp_path / "images" / CLASSES[1][1] / "b.png", rgba)  # saved as mode RGBA
    values = open_folder(tmp_path / "images", label_map_file)["input"].values
    np.testing.assert_array_equal(values[0], np.stack([grey] * 3))
    np.testing.assert_array_equal(values[1], np.asarray(Image.fromarray(rgba).convert("RGB")).transpose(2, 0, 1))


def test_outer_indexing_reads_the_picked_samples(tmp_path, label_map_file):
    written = imagenet_folder(tmp_path / "images")
    ds = open_folder(tmp_path / "images", label_map_file, up_sampling_method="edge_repeat",
                     down_sampling_method="center_crop")
    expected = np.stack([expected_sample(written[f][0], "edge_repeat", "center_crop") for f in sorted(written)])
    np.testing.assert_array_equal(ds["input"].isel(sample=[5, 1], y=[0, 5], x=2).values, expected[[5, 1]][:, :, [0, 5], 2])
    np.testing.assert_array_equal(ds["input"].isel(sample=slice(1, None, 3), channel=1).values, expected[1::3, 1])
    np.testing.assert_array_equal(ds["input"][4, 2, 3, 7].values, expected[4, 2, 3, 7])


# ------------------------------------------------------------------------------------------ samples and labels


def test_samples_are_every_file_with_an_extension_in_sorted_order(tmp_path, label_map_file):
    written = imagenet_folder(tmp_path / "images")
    nested = write_png(tmp_path / "images" / CLASSES[1][1] / "deeper" / "z.png", random_image(WIDTH, HEIGHT, seed=9))
    (tmp_path / "images" / CLASSES[0][1] / "README").write_text("no extension: not a sample")
    (tmp_path / "images" / CLASSES[0][1] / ".DS_Store").write_text("hidden: not a sample")
    ds = open_folder(tmp_path / "images", label_map_file, label_word_net_id_regex=r".*/(n\d{8})/",
                     up_sampling_method="wrap_around", down_sampling_method="resize")
    files = sorted([*written, nested])
    assert ds["path"].values.tolist() == files
    assert files != list(written)  # the construction order differs, so sorting is really tested
    np.testing.assert_array_equal(ds["sample"].values, np.arange(len(files)))
    assert ds["sample"].dtype == np.int64
    expected_labels = [written[f][1] if f in written else CLASSES[1][0] for f in files]
    np.testing.assert_array_equal(ds["label"].values, expected_labels)
    assert ds["label"].dtype == np.int64
    np.testing.assert_array_equal(ds["input"].values[files.index(nested)], random_image(WIDTH, HEIGHT, seed=9).transpose(2, 0, 1))


def test_labels_from_index_folders(tmp_path, label_map_file):
    written = imagenet_folder(tmp_path / "images", by="index")
    ds = open_folder(tmp_path / "images", label_map_file, label_word_net_id_regex=None, label_index_regex=INDEX_REGEX,
                     up_sampling_method="fill_zeros", down_sampling_method="center_crop")
    files = sorted(written)
    np.testing.assert_array_equal(ds["label"].values, [written[f][1] for f in files])
    assert len(set(ds["label"].values.tolist())) > 1
    np.testing.assert_array_equal(ds["input"].values[2], expected_sample(written[files[2]][0], "fill_zeros", "center_crop"))


def test_paths_txt_gives_the_samples_sorted_and_relative_to_its_folder(tmp_path, label_map_file):
    written = imagenet_folder(tmp_path / "images")
    relative = [os.path.relpath(f, tmp_path) for f in written]
    chosen = [relative[5], relative[0], relative[3]]  # a subset, not in sorted order
    (tmp_path / "images_paths.txt").write_text("\n".join(chosen[:2]) + "\n\n" + chosen[2] + "\n")
    ds = open_folder(tmp_path / "images", label_map_file, up_sampling_method="mirror_edge", down_sampling_method="resize")
    files = sorted(str(tmp_path / c) for c in chosen)
    assert ds["path"].values.tolist() == files
    assert ds.sizes["sample"] == 3 < len(written)
    np.testing.assert_array_equal(ds["label"].values, [written[f][1] for f in files])
    np.testing.assert_array_equal(ds["input"].values,
                                  np.stack([expected_sample(written[f][0], "mirror_edge", "resize") for f in files]))


# ----------------------------------------------------------------------------------------- laziness and Dask


def test_opening_decodes_no_image_and_a_corrupt_one_fails_only_when_read(tmp_path, label_map_file, monkeypatch):
    written = imagenet_folder(tmp_path / "images", sizes=[(WIDTH, HEIGHT)] * 3)
    corrupt = tmp_path / "images" / CLASSES[2][1] / "corrupt.png"
    corrupt.write_bytes(b"not an image at all")
    good = sorted(written)[0]
    truncated = tmp_path / "images" / CLASSES[2][1] / "truncated.png"
    truncated.write_bytes(open(good, "rb").read()[:60])

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was opened while opening the folder")

    with monkeypatch.context() as patch:
        patch.setattr(PIL.Image, "open", no_decoding)
        ds = open_folder(tmp_path / "images", label_map_file)
    files = ds["path"].values.tolist()
    assert str(corrupt) in files and str(truncated) in files
    np.testing.assert_array_equal(ds["input"][files.index(good)].values, written[good][0].transpose(2, 0, 1))
    for bad in (corrupt, truncated):
        with pytest.raises(RelaylabError, match="Pillow can read") as error:
            ds["input"][files.index(str(bad))].values
        assert error.value.problems[0].file == str(bad)
    with pytest.raises(RelaylabError, match=str(corrupt)):
        ds["input"].values


def test_preferred_chunks_give_dask_chunks_of_a_few_samples(tmp_path, label_map_file):
    written = imagenet_folder(tmp_path / "images", sizes=[(WIDTH, HEIGHT)] * 20)
    ds = xr.open_dataset(tmp_path / "images", engine="virelay_images", chunks={}, label_map=label_map_file,
                         label_word_net_id_regex=WNID_REGEX, input_width=WIDTH, input_height=HEIGHT)
    assert ds["input"].chunks == ((16, 4), (3,), (HEIGHT,), (WIDTH,))
    np.testing.assert_array_equal(ds["input"].values, np.stack([written[f][0].transpose(2, 0, 1) for f in sorted(written)]))


def test_pickled_dask_dataset_reads_the_same_values_in_other_processes(tmp_path, label_map_file):
    written = imagenet_folder(tmp_path / "images")
    ds = xr.open_dataset(tmp_path / "images", engine="virelay_images", chunks={}, label_map=label_map_file,
                         label_word_net_id_regex=WNID_REGEX, input_width=WIDTH, input_height=HEIGHT,
                         up_sampling_method="fill_ones", down_sampling_method="center_crop")
    restored = pickle.loads(pickle.dumps(ds))
    expected = np.stack([expected_sample(written[f][0], "fill_ones", "center_crop") for f in sorted(written)])
    np.testing.assert_array_equal(restored["input"].values, expected)
    with dask.config.set(scheduler="processes", num_workers=2):  # every task is pickled to a worker process
        np.testing.assert_array_equal(ds["input"].compute().values, expected)
    np.testing.assert_array_equal(restored["label"].values, [written[f][1] for f in sorted(written)])


def test_open_dataset_engine_takes_a_label_map_dataset_or_file(tmp_path, label_map_file):
    written = imagenet_folder(tmp_path / "images")
    settings = dict(engine="virelay_images", label_word_net_id_regex=WNID_REGEX, input_width=WIDTH,
                    input_height=HEIGHT, up_sampling_method="resize", down_sampling_method="resize")
    from_file = xr.open_dataset(tmp_path / "images", label_map=str(label_map_file), **settings)
    from_dataset = xr.open_dataset(tmp_path / "images", label_map=load_label_map(label_map_file),
                                   drop_variables=["path"], **settings)
    expected = np.stack([expected_sample(written[f][0], "resize", "resize") for f in sorted(written)])
    np.testing.assert_array_equal(from_file["input"].values, expected)
    np.testing.assert_array_equal(from_dataset["input"].values, expected)
    assert "path" in from_file.coords and "path" not in from_dataset.coords
    assert from_file.attrs["kind"] == "input"
    assert from_file.attrs["value_range"] == [0.0, 255.0]
    assert from_file.attrs["source_file"] == str((tmp_path / "images").resolve())


def test_the_engine_needs_a_label_map(tmp_path):
    imagenet_folder(tmp_path / "images")
    with pytest.raises(RelaylabError, match="label_map"):
        xr.open_dataset(tmp_path / "images", engine="virelay_images", label_word_net_id_regex=WNID_REGEX,
                        input_width=WIDTH, input_height=HEIGHT)


def test_a_viRelAy_project_with_an_image_directory_opens_and_validates(tmp_path, label_map_file):
    written = imagenet_folder(tmp_path / "datasets" / "images")
    project_file = tmp_path / "project.yaml"
    dataset = {"name": "images", "type": "image_directory", "path": "datasets/images", "input_width": WIDTH,
               "input_height": HEIGHT, "down_sampling_method": "center_crop", "up_sampling_method": "edge_repeat",
               "label_index_regex": None, "label_word_net_id_regex": WNID_REGEX}
    project_file.write_text(yaml.safe_dump({"project": {"name": "p", "model": "m", "label_map": "label-map.json",
                                                        "dataset": dataset}}))
    with open_project(project_file) as project:
        np.testing.assert_array_equal(
            project.inputs["input"].values,
            np.stack([expected_sample(written[f][0], "edge_repeat", "center_crop") for f in sorted(written)]))
    assert validate(project_file, progress=False) == []
    corrupt = tmp_path / "datasets" / "images" / CLASSES[0][1] / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 broken")
    assert [p.file for p in validate(project_file, progress=False)] == [str(corrupt)]


# ------------------------------------------------------------------------------------------------ bad input


def test_missing_and_empty_folders_are_named(tmp_path, label_map_file):
    with pytest.raises(RelaylabError, match="no such folder") as error:
        open_folder(tmp_path / "nowhere", label_map_file)
    assert error.value.problems[0].file == str(tmp_path / "nowhere")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(RelaylabError, match="at least one image file") as error:
        open_folder(tmp_path / "empty", label_map_file)
    assert error.value.problems[0].file == str(tmp_path / "empty")


@pytest.mark.parametrize("regexes, expected", [
    (dict(label_index_regex=INDEX_REGEX, label_word_net_id_regex=WNID_REGEX), "exactly one of the two label regexes"),
    (dict(label_index_regex=None, label_word_net_id_regex=None), "exactly one of the two label regexes"),
    (dict(label_word_net_id_regex="(unclosed"), "a valid regular expression"),
    (dict(label_word_net_id_regex=r".*/n\d{8}/"), "group 1 captures the label"),
])
def test_label_regex_settings_are_checked(tmp_path, label_map_file, regexes, expected):
    imagenet_folder(tmp_path / "images")
    with pytest.raises(RelaylabError, match=expected) as error:
        open_folder(tmp_path / "images", label_map_file, **regexes)
    assert error.value.problems[0].file == str(tmp_path / "images")


def test_unknown_sampling_methods_and_sizes_are_named(tmp_path, label_map_file):
    imagenet_folder(tmp_path / "images")
    with pytest.raises(RelaylabError) as error:
        open_image_directory(tmp_path / "images", label_map=label_map_file, label_word_net_id_regex=WNID_REGEX,
                             input_width=0, input_height=HEIGHT, up_sampling_method="stretch",
                             down_sampling_method="crop")
    by_key = {p.path: p for p in error.value.problems}
    assert set(by_key) == {"input_width", "up_sampling_method", "down_sampling_method"}
    assert by_key["up_sampling_method"].found == "'stretch'" and "mirror_edge" in by_key["up_sampling_method"].expected
    assert by_key["down_sampling_method"].found == "'crop'" and "center_crop" in by_key["down_sampling_method"].expected


def test_paths_the_regex_cannot_label_are_named(tmp_path, label_map_file):
    imagenet_folder(tmp_path / "images", sizes=[(WIDTH, HEIGHT)] * 3)
    stray = write_png(tmp_path / "images" / "misc" / "stray.png", random_image(WIDTH, HEIGHT, seed=5))
    unknown = write_png(tmp_path / "images" / "n09999999" / "x.png", random_image(WIDTH, HEIGHT, seed=6))
    with pytest.raises(RelaylabError) as error:
        open_folder(tmp_path / "images", label_map_file)
    problems = {p.file: p for p in error.value.problems}
    assert set(problems) == {stray, unknown}
    assert problems[stray].found == "no match" and WNID_REGEX in problems[stray].expected
    assert problems[unknown].found == "'n09999999'" and "WordNet id in the label map" in problems[unknown].expected


def test_class_indices_outside_the_label_map_are_named(tmp_path, label_map_file):
    imagenet_folder(tmp_path / "images", sizes=[(WIDTH, HEIGHT)] * 2, by="index")
    outside = write_png(tmp_path / "images" / "7" / "x.png", random_image(WIDTH, HEIGHT, seed=7))
    with pytest.raises(RelaylabError, match="class index in the label map") as error:
        open_folder(tmp_path / "images", label_map_file, label_word_net_id_regex=None, label_index_regex=INDEX_REGEX)
    assert [(p.file, p.found) for p in error.value.problems] == [(outside, "'7'")]


def test_a_regex_that_matches_no_path_is_one_problem_on_the_folder(tmp_path, label_map_file):
    imagenet_folder(tmp_path / "images")
    with pytest.raises(RelaylabError, match=f"matches none of the {len(SIZES)} paths") as error:
        open_folder(tmp_path / "images", label_map_file, label_word_net_id_regex=r"(n\d{8})/")
    assert [p.file for p in error.value.problems] == [str(tmp_path / "images")]


@pytest.mark.parametrize("up, down, size", [("none", "center_crop", (5, 3)), ("fill_zeros", "none", (11, 9)),
                                            ("none", "center_crop", (6, 10))])
def test_an_image_the_methods_cannot_bring_to_size_fails_when_read(tmp_path, label_map_file, up, down, size):
    fits = write_png(tmp_path / "images" / CLASSES[0][1] / "a.png", random_image(WIDTH, HEIGHT, seed=1))
    misfit = write_png(tmp_path / "images" / CLASSES[0][1] / "b.png", random_image(*size, seed=2))
    ds = open_folder(tmp_path / "images", label_map_file, up_sampling_method=up, down_sampling_method=down)
    np.testing.assert_array_equal(ds["input"][0].values, random_image(WIDTH, HEIGHT, seed=1).transpose(2, 0, 1))
    with pytest.raises(RelaylabError, match=f"becomes {WIDTH}x{HEIGHT}") as error:
        ds["input"][1].values
    assert error.value.problems[0].file == misfit != fits
    assert error.value.problems[0].found.startswith(f"{size[0]}x{size[1]}")
    problems = image_directory_problems(tmp_path / "images", label_map=label_map_file,
                                        label_word_net_id_regex=WNID_REGEX, input_width=WIDTH, input_height=HEIGHT,
                                        up_sampling_method=up, down_sampling_method=down)
    assert [(p.file, p.found) for p in problems] == [(misfit, error.value.problems[0].found)]


def test_problems_lists_every_file_problem_at_once(tmp_path, label_map_file):
    imagenet_folder(tmp_path / "images", sizes=[(WIDTH, HEIGHT), (11, 9)])
    corrupt = tmp_path / "images" / CLASSES[0][1] / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    small = write_png(tmp_path / "images" / CLASSES[1][1] / "small.png", random_image(4, 4, seed=3))
    unknown = write_png(tmp_path / "images" / "n09999999" / "x.png", random_image(WIDTH, HEIGHT, seed=4))
    stray = write_png(tmp_path / "images" / "misc" / "stray.png", random_image(WIDTH, HEIGHT, seed=5))
    settings = dict(label_map=load_label_map(label_map_file), label_word_net_id_regex=WNID_REGEX, input_width=WIDTH,
                    input_height=HEIGHT, down_sampling_method="center_crop")
    problems = image_directory_problems(tmp_path / "images", **settings)
    found = {(p.file, p.path) for p in problems}
    assert found == {(str(corrupt), ""), (small, ""), (unknown, "label_word_net_id_regex"),
                     (stray, "label_word_net_id_regex")}
    assert image_directory_problems(tmp_path / "images", **{**settings, "up_sampling_method": "fill_zeros"}) != problems


def test_problems_lists_setting_problems_with_file_problems(tmp_path, label_map_file):
    imagenet_folder(tmp_path / "images", sizes=[(WIDTH, HEIGHT)])
    corrupt = tmp_path / "images" / CLASSES[0][1] / "corrupt.png"
    corrupt.write_bytes(b"")
    problems = image_directory_problems(tmp_path / "images", label_map=label_map_file, label_index_regex=INDEX_REGEX,
                                        label_word_net_id_regex=WNID_REGEX, input_width=WIDTH, input_height=None,
                                        up_sampling_method="stretch")
    assert {(p.file, p.path) for p in problems} == {
        (str(tmp_path / "images"), "label_index_regex / label_word_net_id_regex"),
        (str(tmp_path / "images"), "input_height"),
        (str(tmp_path / "images"), "up_sampling_method"),
        (str(corrupt), ""),
    }
    assert [p.found for p in image_directory_problems(tmp_path / "gone", label_map=label_map_file,
                                                      label_word_net_id_regex=WNID_REGEX, input_width=WIDTH,
                                                      input_height=HEIGHT)] == ["no such folder"]


# ------------------------------------------------------------------------------------------- convert and back


@pytest.mark.parametrize("label_by, up, down", [
    ("word_net_id", "fill_zeros", "center_crop"),  # the project the issue reports
    ("index", "edge_repeat", "resize"),
    ("word_net_id", "resize", "resize"),
    ("index", "resize", "center_crop"),
])
def test_an_image_directory_project_converts_and_comes_back_as_virelay_hdf5(tmp_path, cli, label_by, up, down):
    path = write_image_directory_project(tmp_path / "project", SIZES, input_width=WIDTH, input_height=HEIGHT,
                                         up_sampling_method=up, down_sampling_method=down, label_by=label_by)
    files = sorted(glob.glob(str(tmp_path / "project" / "images" / "*" / "*.png")))
    assert len(files) == len(SIZES)
    classes = {str(i): i for i, _, _ in CLASSES} if label_by == "index" else {f"n{i:08d}": i for i, _, _ in CLASSES}
    labels = [classes[os.path.basename(os.path.dirname(f))] for f in files]
    assert len(set(labels)) == len(CLASSES)
    pixels = []
    for file in files:
        with Image.open(file) as image:
            pixels.append(expected_sample(np.asarray(image.convert("RGB")), up, down))
    pixels = np.stack(pixels)
    with h5py.File(path.parent / "attribution.h5") as h5:
        attribution, prediction = h5["attribution"][()], h5["prediction"][()]
    assert validate(path, progress=False) == []

    converted = cli("convert", "-q", path, tmp_path / "p.zarr")
    assert converted.returncode == 0, converted.stderr
    assert validate(tmp_path / "p.zarr", progress=False) == []
    with open_project(tmp_path / "p.zarr") as project:
        assert project.metadata["store"]["status"] == "complete"
        np.testing.assert_array_equal(project.inputs["input"].values, pixels)
        np.testing.assert_array_equal(project.inputs["label"].values, labels)
        assert [str(p) for p in project.inputs["path"].values] == files
        attributions = project.attributions["smoothgrad"]
        np.testing.assert_array_equal(attributions["attribution"].values, attribution)
        np.testing.assert_array_equal(attributions["prediction"].values, prediction)
        np.testing.assert_array_equal(attributions["label"].values, labels)
        assert sorted(project.analyses["spectral_analysis"].children) == [f"n{i:08d}" for i, _, _ in CLASSES]

    exported = cli("convert", "-q", "--to", "virelay", tmp_path / "p.zarr", tmp_path / "vr")
    assert exported.returncode == 0, exported.stderr
    with h5py.File(tmp_path / "vr" / "dataset.h5") as h5:
        np.testing.assert_array_equal(h5["data"][()], pixels)
        np.testing.assert_array_equal(h5["label"][()], labels)
    with open_project(tmp_path / "vr" / "project.yaml") as project:
        np.testing.assert_array_equal(project.attributions["smoothgrad"]["attribution"].values, attribution)
        tree = project.analyses["spectral_analysis"]
        for category, node in tree.children.items():
            members = node["index"].values
            assert members.size and (np.asarray(labels)[members] == int(category[1:])).all()
