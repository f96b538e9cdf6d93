"""`ingest`: real image files (PNG, JPEG, grey, RGBA, palette, broken ones) into a real Zarr store, read back."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from relaylab.data import store as zstore
from relaylab.data.project import open_project
from relaylab.errors import RelaylabError
from relaylab.explain.ingest import ingest

SIZE = (24, 32)  # (height, width): not square, so height and width cannot be swapped unnoticed


def noise(rng, height, width, channels=3) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return (rng.random(shape) * 255).astype(np.uint8)


@pytest.fixture
def image_folder(tmp_path):
    """Two WordNet-id classes with images of several sizes and modes, a truncated JPEG and a text file posing as one."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    fish, dog = root / "n01440764", root / "n02085620"
    fish.mkdir(parents=True)
    dog.mkdir()
    Image.fromarray(noise(rng, 48, 80)).save(fish / "a_wide.png")
    Image.fromarray(noise(rng, 90, 40, 1), mode="L").save(fish / "b_grey_tall.png")
    Image.fromarray(noise(rng, 24, 32, 4), mode="RGBA").save(fish / "c_rgba_exact.png")
    Image.fromarray(noise(rng, 30, 40)).convert("P").save(fish / "d_palette.png")
    Image.fromarray(noise(rng, 60, 64)).save(dog / "a.jpg", quality=95)
    Image.fromarray(noise(rng, 24, 40)).save(dog / "b_crop_only.png")
    Image.fromarray(noise(rng, 100, 120, 1), mode="L").save(dog / "c_grey.jpg", quality=95)
    whole = (dog / "a.jpg").read_bytes()
    (dog / "d_truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (dog / "e_text.jpg").write_text("not an image at all\n")
    (root / "README.txt").write_text("files beside the class folders are not samples")
    return root


def expected(path, height, width, resize_to=None) -> np.ndarray:
    """Pillow's own resize and crop of the original: the smallest size that covers (height, width), or the shorter
    side to `resize_to`, then a center crop."""
    with Image.open(path) as image:
        rgb = image.convert("RGBA").convert("RGB") if image.mode == "P" and "transparency" in image.info else image.convert("RGB")
    w, h = rgb.size
    scale = resize_to / min(w, h) if resize_to else max(height / h, width / w)
    size = (int(np.floor(w * scale + 1e-9)), int(np.floor(h * scale + 1e-9)))
    if size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    left, top = round((rgb.size[0] - width) / 2), round((rgb.size[1] - height) / 2)
    return np.asarray(rgb.crop((left, top, left + width, top + height))).transpose(2, 0, 1)


def test_ingest_reads_back_what_pillow_computes(image_folder, tmp_path, caplog, cli):
    out = tmp_path / "project.zarr"
    with caplog.at_level(logging.WARNING, logger="relaylab.explain.ingest"):
        ingest(image_folder, out, size=SIZE, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.25), progress=False)
    with open_project(out) as project:
        inputs = project.inputs
        paths = [str(p) for p in inputs["path"].values]
        assert paths == ["n01440764/a_wide.png", "n01440764/b_grey_tall.png", "n01440764/c_rgba_exact.png",
                         "n01440764/d_palette.png", "n02085620/a.jpg", "n02085620/b_crop_only.png", "n02085620/c_grey.jpg"]
        assert inputs["input"].dtype == np.uint8 and inputs["input"].shape == (7, 3, *SIZE)
        assert inputs["label"].values.tolist() == [0, 0, 0, 0, 1, 1, 1]
        values = inputs["input"].values
        for i, rel in enumerate(paths):
            np.testing.assert_array_equal(values[i], expected(image_folder / rel, *SIZE), err_msg=rel)
        # independent of the resize arithmetic: an image of the stored size is kept as it is, and one that is
        # only wider is cropped, not resampled
        np.testing.assert_array_equal(values[2], np.asarray(Image.open(image_folder / paths[2]).convert("RGB")).transpose(2, 0, 1))
        crop_only = np.asarray(Image.open(image_folder / paths[5])).transpose(2, 0, 1)
        np.testing.assert_array_equal(values[5], crop_only[:, :, 4:36])
        # grey images become three equal channels
        assert (values[1][0] == values[1][1]).all() and (values[1][1] == values[1][2]).all()
        assert project.label_map["word_net_id"].values.tolist() == ["n01440764", "n02085620"]
        assert project.label_map["name"].values.tolist() == ["n01440764", "n02085620"]
        dataset = project.metadata["store"]["dataset"]
    assert {item["path"] for item in dataset["skipped"]} == {"n02085620/d_truncated.jpg", "n02085620/e_text.jpg"}
    assert all(item["reason"] for item in dataset["skipped"])
    assert dataset["preprocessing"]["mean"] == [0.5, 0.4, 0.3] and dataset["preprocessing"]["std"] == [0.2, 0.2, 0.25]
    assert dataset["preprocessing"]["height"] == SIZE[0] and dataset["preprocessing"]["width"] == SIZE[1]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "d_truncated.jpg" in warned and "e_text.jpg" in warned
    result = cli("validate", "-q", out)
    assert result.returncode == 0, result.stdout + result.stderr


def test_label_map_names_and_indices(image_folder, tmp_path):
    label_map = tmp_path / "labels.json"
    label_map.write_text(json.dumps([
        {"index": 0, "word_net_id": "n00000001", "name": "unused"},
        {"index": 1, "word_net_id": "n01440764", "name": "tench"},
        {"index": 2, "word_net_id": "n02085620", "name": "Chihuahua"},
    ]))
    out = ingest(image_folder, tmp_path / "mapped.zarr", size=(16, 16), resize="stretch", label_map=label_map, progress=False)
    with open_project(out) as project:
        assert project.inputs["label"].values.tolist() == [1, 1, 1, 1, 2, 2, 2]
        assert project.label_map["name"].values.tolist() == ["unused", "tench", "Chihuahua"]
        with Image.open(image_folder / "n01440764" / "a_wide.png") as image:
            stretched = np.asarray(image.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
        np.testing.assert_array_equal(project.inputs["input"].values[0], stretched)


def test_plain_class_names(tmp_path):
    rng = np.random.default_rng(1)
    for name in ("dog", "cat"):
        (tmp_path / "pets" / name).mkdir(parents=True)
        Image.fromarray(noise(rng, 30, 45)).save(tmp_path / "pets" / name / "x.png")
    out = ingest(tmp_path / "pets", tmp_path / "pets.zarr", size=(16, 16), resize_to=20, progress=False)
    with open_project(out) as project:
        assert project.label_map["name"].values.tolist() == ["cat", "dog"]
        assert project.inputs["label"].values.tolist() == [0, 1]
        for i, name in enumerate(("cat", "dog")):  # shorter side 30 -> 20, longer 45 -> 30, then 16 x 16 from the middle
            np.testing.assert_array_equal(project.inputs["input"].values[i], expected(tmp_path / "pets" / name / "x.png", 16, 16, resize_to=20))
        assert project.metadata["store"]["dataset"]["preprocessing"]["resize_to"] == 20
        assert project.metadata["store"]["dataset"]["skipped"] == []


def test_bad_arguments_fail_before_writing(image_folder, tmp_path):
    out = tmp_path / "never.zarr"
    with pytest.raises(RelaylabError, match="size"):
        ingest(image_folder, out, size=(0, 32), progress=False)
    with pytest.raises(RelaylabError, match="resize"):
        ingest(image_folder, out, resize="squash", progress=False)
    with pytest.raises(RelaylabError, match="std"):
        ingest(image_folder, out, std=(0.2, 0.0, 0.2), progress=False)
    with pytest.raises(RelaylabError, match="no such folder"):
        ingest(tmp_path / "missing", out, progress=False)
    partial_map = tmp_path / "partial.json"
    partial_map.write_text(json.dumps([{"index": 0, "word_net_id": "n01440764", "name": "tench"}]))
    with pytest.raises(RelaylabError, match="n02085620"):
        ingest(image_folder, out, label_map=partial_map, progress=False)
    assert not out.exists()


def test_resumes_a_killed_ingest(image_folder, tmp_path, monkeypatch):
    """A write killed part-way leaves an unfinished store; the same call again completes it with the same values."""
    out = tmp_path / "resumed.zarr"
    calls = {"n": 0}
    original = zstore.ShardWriter.store

    def dying_store(self, shards):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        original(self, shards)

    monkeypatch.setattr(zstore, "INNER_CHUNK_BYTES", 1)  # one sample per shard block: several blocks
    monkeypatch.setattr(zstore, "SHARD_BYTES", 3 * 24 * 32 * 2)
    monkeypatch.setattr(zstore.ShardWriter, "store", dying_store)
    with pytest.raises(KeyboardInterrupt):
        ingest(image_folder, out, size=SIZE, progress=False)
    assert zstore.store_metadata(out)["status"] == "writing"
    with pytest.raises(RelaylabError, match="complete"):
        open_project(out)
    ingest(image_folder, out, size=SIZE, progress=False)
    with open_project(out) as project:
        for i, rel in enumerate(project.inputs["path"].values):
            np.testing.assert_array_equal(project.inputs["input"].values[i], expected(image_folder / str(rel), *SIZE))
