"""`ingest`: an ImageNet-style folder of images (one sub-folder per class) → a relaylab Zarr store of model-sized inputs.

Images are decoded with Pillow, turned into RGB (grey, RGBA, palette and CMYK alike, as torchvision's `pil_loader`
does: alpha is dropped), resized and center-cropped the way ImageNet models are evaluated (torchvision's
`Resize(shorter side)` + `CenterCrop`, bilinear), and stored as uint8 (sample, 3, H, W). The model's normalisation
(mean, std) is recorded in the store's dataset metadata, not applied, so the stored images stay viewable.

Files Pillow cannot decode (not images, truncated, decompression bombs) are skipped, logged and listed in the
dataset metadata as `skipped: [{path, reason}]`; they never stop an ingest. They are found by a first pass that
decodes every image at the smallest scale the format allows (JPEG's DCT scaling: ~1/8 of the work) — a truncated
JPEG fails there as it would at full size — so the number of samples is known before the store is laid out.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from PIL import Image
from tqdm.auto import tqdm
from xarray.core import indexing

from ..compute import usable_cores
from ..data import store as zstore
from ..data.dims import IMAGE_DIMS, SAMPLE
from ..data.imagedir import READ_ERRORS, ImageFilesArray
from ..data.labels import class_by_word_net_id, label_map_from_entries, label_map_problems, read_label_map_json
from . import IMAGENET_MEAN, IMAGENET_STD
from ..errors import Problem, RelaylabError, name_step, step

log = logging.getLogger(__name__)

RESIZE_METHODS = ("shorter_side", "stretch")
RESAMPLE = Image.Resampling.BILINEAR  # torchvision's default for PIL images
WORDNET_ID = re.compile(r"n\d{8}")


@dataclass(frozen=True)
class Preprocessing:
    """How a decoded image becomes a stored sample, and the normalisation the model applies afterwards."""

    height: int
    width: int
    resize: str
    resize_to: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std), "resample": "bilinear",
                "channels": "RGB", "value_range": [0, 255]}


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, as torchvision's loader makes it; palette images with transparency go through RGBA (Pillow warns otherwise)."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image if image.mode == "RGB" else image.convert("RGB")


def prepare(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """One RGB image as (3, H, W) uint8: resized (bilinear) to just cover (H, W), or with its shorter side to
    `resize_to`, then center-cropped (torchvision's `Resize` + `CenterCrop` arithmetic); or, with
    `resize="stretch"`, resized to (H, W) directly."""
    if prep.resize == "stretch":
        image = image.resize((prep.width, prep.height), RESAMPLE)
    else:
        w, h = image.size
        if prep.resize_to is not None:
            new_size = (prep.resize_to, prep.resize_to * h // w) if w <= h else (prep.resize_to * w // h, prep.resize_to)
        elif prep.width * h >= prep.height * w:  # the width needs the larger scale
            new_size = (prep.width, h * prep.width // w)
        else:
            new_size = (w * prep.height // h, prep.height)
        if new_size != image.size:
            image = image.resize(new_size, RESAMPLE)
        w, h = image.size
        top, left = int(round((h - prep.height) / 2.0)), int(round((w - prep.width) / 2.0))
        image = image.crop((left, top, left + prep.width, top + prep.height))
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


def read_sample(file: str, prep: Preprocessing) -> np.ndarray:
    try:
        with Image.open(file) as image:
            return prepare(to_rgb(image), prep)
    except READ_ERRORS as error:  # the scan decoded it: the file changed since
        raise RelaylabError.at(file, "", "an image file Pillow can read (it could when the ingest began)",
                               f"{type(error).__name__}: {error}; run the same ingest again") from None
    except Exception as error:  # anything else is reported as this image's failure (see relaylab.errors.step)
        name_step(error, "decoding and resizing", file)
        raise


def scan_problem(file: str) -> str | None:
    """Why Pillow cannot decode `file` (None when it can), at the smallest scale the format decodes to."""
    try:
        with Image.open(file) as image:
            image.draft("RGB", (1, 1))  # JPEG: 1/8-scale DCT, still reads every byte of the entropy-coded data
            image.load()
    except READ_ERRORS as error:
        return f"{type(error).__name__}: {error}"
    return None


# ------------------------------------------------------------------------------------------ checks before any work


def preprocessing_of(folder: Path, size, resize: str, resize_to, mean, std) -> Preprocessing:
    problems = []
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
        problems.append(Problem(str(folder), "size", "(height, width), two positive integers", repr(size)))
        size = (1, 1)
    if resize not in RESIZE_METHODS:
        problems.append(Problem(str(folder), "resize", f"one of {', '.join(RESIZE_METHODS)}", repr(resize)))
    if resize_to is not None and (not isinstance(resize_to, int) or resize_to < max(size)):
        problems.append(Problem(str(folder), "resize_to", f"an integer >= the crop size {max(size)}", repr(resize_to)))
    for key, values in (("mean", mean), ("std", std)):
        if len(values) != 3 or not all(isinstance(v, (int, float)) for v in values):
            problems.append(Problem(str(folder), key, "three numbers, one per RGB channel", repr(values)))
    if all(isinstance(v, (int, float)) for v in std) and not all(v > 0 for v in std):
        problems.append(Problem(str(folder), "std", "positive numbers", repr(std)))
    if problems:
        raise RelaylabError(problems)
    return Preprocessing(size[0], size[1], resize, resize_to, tuple(map(float, mean)), tuple(map(float, std)))


def class_folders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise RelaylabError.at(folder, "", "a folder with one sub-folder of images per class",
                               "a file" if folder.exists() else "no such folder")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise RelaylabError.at(folder, "", "one sub-folder of images per class (e.g. n01440764/, or cat/ and dog/)", "no sub-folders")
    return classes


def class_entries(folder: Path, classes: list[Path], label_map: str | os.PathLike | None) -> tuple[list[dict], dict[str, int]]:
    """The label map to store and each class folder's index in it.

    Without a label map, classes are numbered in sorted folder order and the folder name is both WordNet id and
    name. With one (ViRelAy's JSON, e.g. ImageNet's 1000 classes), every folder must name an entry by WordNet id
    (or, failing that, by name), and the whole map is stored: it describes the model's outputs, not the folder.
    """
    if label_map is None:
        entries = [{"index": i, "word_net_id": c.name, "name": c.name} for i, c in enumerate(classes)]
        return entries, {c.name: i for i, c in enumerate(classes)}
    entries = read_label_map_json(label_map)
    problems = label_map_problems(entries, str(label_map))
    if problems:
        raise RelaylabError(problems)
    by_wnid = class_by_word_net_id(label_map_from_entries(entries))  # type: ignore[arg-type]
    by_name = {e["name"]: e["index"] for e in entries}
    index, unknown = {}, []
    for c in classes:
        hit = by_wnid.get(c.name, by_name.get(c.name))
        if hit is None:
            unknown.append(c.name)
        else:
            index[c.name] = hit
    if unknown:
        raise RelaylabError.at(label_map, "", f"an entry for every class folder of {folder} (by word_net_id or name)",
                               f"none for {len(unknown)} folders, e.g. {unknown[:5]}")
    return entries, index


def listed_files(folder: Path, classes: list[Path]) -> list[tuple[str, str]]:
    """(class folder name, path relative to `folder`) of every non-hidden file, sorted: the sample order."""
    files = []
    for c in classes:
        for root, dirs, names in os.walk(c):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [(c.name, os.path.relpath(os.path.join(root, n), folder)) for n in names if not n.startswith(".")]
    files.sort(key=lambda f: (f[0], Path(f[1]).parts))
    if not files:
        raise RelaylabError.at(folder, "", "image files in the class folders", "no files")
    return files


def check_output(out: Path, source: str) -> None:
    """Refuse an output that cannot take this ingest before decoding anything (create_store checks it again)."""
    if zstore.is_store(out):
        meta = zstore.store_metadata(out)
        if meta.get("source") != source:
            raise RelaylabError.at(out, "zarr.json#attributes.relaylab.source", f"a store ingested from {source}",
                                   f"one from {meta.get('source')}; choose another output or delete it")
        if meta.get("status") == "complete":
            raise RelaylabError.at(out, "", "a new output path", "a complete store already exists there")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RelaylabError.at(out, "", "a new or empty output folder", "a non-empty folder that is not a relaylab store")


# ------------------------------------------------------------------------------------------------------- public API


def ingest(folder: str | os.PathLike, out: str | os.PathLike, *, size: tuple[int, int] = (224, 224),
           resize: str = "shorter_side", resize_to: int | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
           label_map: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Build a relaylab store from an image folder with one sub-folder per class; returns `out`.

    `size` is the stored (height, width). `resize="shorter_side"` scales the image to just cover `size` (for a square
    size: its shorter side to the size), or its shorter side to `resize_to` (256 with size 224 is the usual ImageNet
    evaluation), and center-crops; `"stretch"` resizes to `size` directly. `mean`/`std` (per RGB channel, on 0..1 values) are recorded for the model spec.
    A killed ingest resumes when run again with the same arguments.
    """
    folder, out = Path(folder), Path(out)
    prep = preprocessing_of(folder, size, resize, resize_to, mean, std)
    classes = class_folders(folder)
    entries, class_index = class_entries(folder, classes, label_map)
    source = str(folder.resolve())
    check_output(out, source)
    listed = listed_files(folder, classes)

    paths = [str(folder / rel) for _, rel in listed]
    with ThreadPoolExecutor(max_workers=usable_cores()) as pool:
        reasons = list(tqdm(pool.map(scan_problem, paths), total=len(paths), desc="checking images", unit="image",
                            disable=not progress, leave=False))
    skipped = [{"path": rel, "reason": reason} for (_, rel), reason in zip(listed, reasons) if reason is not None]
    for item in skipped:
        log.warning("skipping %s: %s", folder / item["path"], item["reason"])
    kept = [(c, rel, path) for (c, rel), path, reason in zip(listed, paths, reasons) if reason is None]
    if not kept:
        raise RelaylabError.at(folder, "", "at least one image Pillow can read", f"{len(skipped)} files, none readable")

    dataset = {"name": folder.name, "source_folder": source, "preprocessing": prep.to_dict(), "skipped": skipped}
    # a failure keeps the blocks written (a changed image is fixed and the ingest resumed), and a store that has none
    # is removed
    with zstore.output_store(out, bad_input_removes=False):
        with step("creating the store", out):
            zstore.create_store(out, project={"name": folder.name, "model": "", "description": f"images of {source}"},
                                dataset=dataset, label_map=label_map_from_entries(entries), source=source)
            zstore.update_store_metadata(out, dataset=dataset)  # a resumed ingest records this scan's findings
        array = ImageFilesArray(tuple(path for _, _, path in kept), functools.partial(read_sample, prep=prep), (3, prep.height, prep.width))
        inputs = xr.Dataset(
            {"input": xr.Variable(IMAGE_DIMS, indexing.LazilyIndexedArray(array))},
            coords={SAMPLE: np.arange(len(kept), dtype=np.int64),
                    "label": (SAMPLE, np.array([class_index[c] for c, _, _ in kept], dtype=np.int64)),
                    "path": (SAMPLE, np.array([rel for _, rel, _ in kept], dtype=np.dtypes.StringDType()))},
            attrs={"kind": "input", "value_range": [0.0, 255.0], "source_file": source, "preprocessing": prep.to_dict()},
        )
        # one shard per write block: decoding, not copying, is the work here, and a kill loses at most one shard of it
        zstore.write_dataset(out, "inputs", inputs, kind="inputs", rows=zstore.block_rows(inputs), progress=progress,
                             attrs={"name": folder.name, "value_range": [0.0, 255.0]})
        zstore.update_store_metadata(out, status="complete")
    log.info("ingested %d images of %d classes from %s into %s (%d skipped)", len(kept), len(classes), folder, out, len(skipped))
    return out
