"""xarray backend for ViRelAy `type: image_directory` datasets: a folder of images whose paths give their labels.

`open_image_directory(folder, ...)` (or `xr.open_dataset(folder, engine="virelay_images", ...)`) gives the same
canonical inputs Dataset as the HDF5 backend. Opening lists the files and derives every label from its path; no
image is decoded until its values are read. The lazy array holds only file paths and resampling settings, so it
pickles and travels to Dask workers.

Resampling follows ViRelAy 0.6.1 (pad or resize images that are too small, then crop or resize images that are too
large), but with height and width on the right axes: ViRelAy pads and crops `shape[0]` as if it were the width.
`resample` is the one implementation; the HDF5 backend uses it for per-sample arrays of different shapes.
"""

from __future__ import annotations

import functools
import glob
import logging
import math
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from PIL import Image
from xarray.backends import BackendArray, BackendEntrypoint
from xarray.core import indexing

from ..compute import usable_cores
from ..errors import Problem, RelaylabError
from .dims import CLASS, IMAGE_DIMS, SAMPLE
from .labels import class_by_word_net_id, load_label_map

log = logging.getLogger(__name__)

SAMPLES_PER_CHUNK = 16
MAX_PROBLEMS_RAISED = 20
CHANNELS = 3

# np.pad arguments per padding method. `fill_ones` pads uint8 images with the value 1 (nearly black), not 255:
# that is what ViRelAy does, and results must match it.
PADDING = {
    "fill_zeros": dict(mode="constant", constant_values=0),
    "fill_ones": dict(mode="constant", constant_values=1),
    "edge_repeat": dict(mode="edge"),
    "mirror_edge": dict(mode="reflect"),
    "wrap_around": dict(mode="wrap"),
}
UP_SAMPLING_METHODS = ("none", *PADDING, "resize")
DOWN_SAMPLING_METHODS = ("none", "center_crop", "resize")
# Pillow's default filter for RGB images, which ViRelAy relies on; named so a Pillow change cannot alter results.
RESIZE_FILTER = Image.Resampling.BICUBIC
READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Sampling:
    """The model's input size and how images of other sizes are brought to it."""

    width: int
    height: int
    up: str
    down: str

    def resampled_size(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) an image of this size ends with, known from its header alone."""
        if (width < self.width or height < self.height) and self.up != "none":
            width, height = (self.width, self.height) if self.up == "resize" else \
                (max(width, self.width), max(height, self.height))
        if (width > self.width or height > self.height) and self.down != "none":
            width, height = (self.width, self.height) if self.down == "resize" else \
                (min(width, self.width), min(height, self.height))
        return width, height


def size_problem(file: str, sampling: Sampling, size: tuple[int, int], resampled: tuple[int, int],
                 path: str = "") -> Problem:
    """An image (a file, or the array at `path` inside one) that the sampling methods cannot bring to the input size
    (e.g. a small one, up-sampling none)."""
    found = f"{size[0]}x{size[1]}" + (f", which becomes {resampled[0]}x{resampled[1]}" if resampled != size else "")
    return Problem(file, path, f"an image that becomes {sampling.width}x{sampling.height} (width x height) with "
                               f"up_sampling_method={sampling.up!r}, down_sampling_method={sampling.down!r}", found)


def resample(image: np.ndarray, sampling: Sampling, file: str, path: str = "") -> np.ndarray:
    """An (H, W, C) image brought to the input size: up-sampled where it is smaller, then down-sampled where it is
    larger. One the methods cannot bring to that size raises a RelaylabError naming `file` (and `path` inside it)."""
    height, width = image.shape[:2]
    if height < sampling.height or width < sampling.width:
        image = up_sample(image, sampling)
    if image.shape[0] > sampling.height or image.shape[1] > sampling.width:
        image = down_sample(image, sampling)
    if image.shape[:2] != (sampling.height, sampling.width):
        raise RelaylabError(size_problem(file, sampling, (width, height), (image.shape[1], image.shape[0]), path))
    return image


def up_sample(image: np.ndarray, sampling: Sampling) -> np.ndarray:
    """Pad (evenly, the odd pixel before) or resize an (H, W, C) image to at least the input size."""
    if sampling.up == "resize":
        return resize(image, sampling)
    if sampling.up == "none":
        return image
    height, width = image.shape[:2]
    pad_y, pad_x = max(0, sampling.height - height), max(0, sampling.width - width)
    padding = ((math.ceil(pad_y / 2), pad_y // 2), (math.ceil(pad_x / 2), pad_x // 2), (0, 0))
    return np.pad(image, padding, **PADDING[sampling.up])


def down_sample(image: np.ndarray, sampling: Sampling) -> np.ndarray:
    """Center-crop (the odd pixel cut before) or resize an (H, W, C) image to at most the input size."""
    if sampling.down == "resize":
        return resize(image, sampling)
    if sampling.down == "none":
        return image
    height, width = image.shape[:2]
    top, left = math.ceil(max(0, height - sampling.height) / 2), math.ceil(max(0, width - sampling.width) / 2)
    return image[top:top + sampling.height, left:left + sampling.width]


def resize(image: np.ndarray, sampling: Sampling) -> np.ndarray:
    """An (H, W, C) image resized to the input size with RESIZE_FILTER. uint8 RGB is resized as one Pillow RGB image,
    as ViRelAy does; any other image channel by channel (uint8 as Pillow "L" images, other numbers as 32-bit float
    "F" images, cast back to the image's dtype), so greyscale, RGBA and float images keep their channels and values."""
    size = (sampling.width, sampling.height)
    if image.dtype == np.uint8 and image.shape[2] == CHANNELS:
        return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(size, RESIZE_FILTER))
    return np.stack([resize_plane(image[..., c], size) for c in range(image.shape[2])], axis=-1)


def resize_plane(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One (H, W) channel resized to `size` (width, height); integers are rounded and clipped to their dtype."""
    if plane.dtype == np.uint8:
        return np.asarray(Image.fromarray(np.ascontiguousarray(plane)).resize(size, RESIZE_FILTER))
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32)).resize(size, RESIZE_FILTER))
    if np.issubdtype(plane.dtype, np.integer):
        limits = np.iinfo(plane.dtype)
        return np.clip(np.rint(resized), limits.min, limits.max).astype(plane.dtype)
    return resized.astype(plane.dtype)


def read_image(file: str, sampling: Sampling) -> np.ndarray:
    """One sample as (3, H, W) uint8: decoded as RGB, then resampled to the input size."""
    try:
        with Image.open(file) as image:
            rgb = np.asarray(image.convert("RGB"))
    except READ_ERRORS as error:
        raise RelaylabError.at(file, "", "an image file Pillow can read", f"{type(error).__name__}: {error}") from None
    return np.ascontiguousarray(resample(rgb, sampling, file).transpose(2, 0, 1))


class ImageFilesArray(BackendArray):
    """Samples read one at a time (image files, or per-sample HDF5 arrays of different shapes) as a lazy
    (sample, channel, y, x) array, uint8 unless told otherwise. `read(name)` reads one sample to (C, H, W); only the
    names and the reader (a module-level function or a functools.partial of one, so the array pickles) are stored.
    A block of rows is read by a pool of threads: Pillow releases the GIL while decoding and resizing."""

    def __init__(self, files: tuple[str, ...], read: Callable[[str], np.ndarray], shape: tuple[int, int, int],
                 dtype: np.dtype | type = np.uint8):
        self.files = files
        self.read = read
        self.shape = (len(files), *shape)
        self.dtype = np.dtype(dtype)

    def __getitem__(self, key):
        # OUTER, so that picking a few samples decodes those images only, not every image between them.
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.OUTER, self._read)

    def _read(self, key: tuple) -> np.ndarray:
        rows, rest = key[0], key[1:]
        if isinstance(rows, (int, np.integer)):
            values, axis = self.read(self.files[rows]), 0
        else:
            picked = list(range(len(self.files))[rows]) if isinstance(rows, slice) else list(rows)
            values, axis = np.empty((len(picked),) + self.shape[1:], dtype=self.dtype), 1
            with ThreadPoolExecutor(max_workers=usable_cores()) as pool:
                for i, image in enumerate(pool.map(lambda row: self.read(self.files[row]), picked)):
                    values[i] = image
        for k in rest:  # one axis at a time gives outer (orthogonal) indexing
            values = values[(slice(None),) * axis + (k,)]
            axis += not isinstance(k, (int, np.integer))
        return values


# ---------------------------------------------------------------------------------------- settings, files, labels


LABEL_REGEX_KEYS = ("label_index_regex", "label_word_net_id_regex")


def regex_problems(folder: str, label_index_regex: str | None, label_word_net_id_regex: str | None) -> list[Problem]:
    """Exactly one label regex, valid, with a group 1 to capture the label."""
    regexes = dict(zip(LABEL_REGEX_KEYS, (label_index_regex, label_word_net_id_regex)))
    given = [key for key, regex in regexes.items() if regex is not None]
    if len(given) != 1:
        return [Problem(folder, " / ".join(LABEL_REGEX_KEYS), "exactly one of the two label regexes",
                        "both" if given else "neither")]
    key, regex = given[0], regexes[given[0]]
    try:
        groups = re.compile(regex).groups
    except (re.error, TypeError) as error:
        return [Problem(folder, key, "a valid regular expression", f"'{regex}': {error}")]
    if groups < 1:
        return [Problem(folder, key, "a regular expression whose group 1 captures the label",
                        f"'{regex}' has no group")]
    return []


def sampling_problems(folder: str, input_width, input_height, down_sampling_method,
                      up_sampling_method) -> list[Problem]:
    """A positive input size and known sampling method names."""
    problems = []
    for key, size in (("input_width", input_width), ("input_height", input_height)):
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            problems.append(Problem(folder, key, "a positive integer", repr(size)))
    for key, method, known in (("down_sampling_method", down_sampling_method, DOWN_SAMPLING_METHODS),
                               ("up_sampling_method", up_sampling_method, UP_SAMPLING_METHODS)):
        if method not in known:
            problems.append(Problem(folder, key, f"one of {', '.join(known)}", repr(method)))
    return problems


def paths_file(folder: str) -> str:
    """ViRelAy's optional list of samples, `<folder>_paths.txt` beside the folder."""
    return folder + "_paths.txt"


def sample_files(folder: str) -> list[str]:
    """The sample paths in ViRelAy's order: the lines of `<folder>_paths.txt`, else every `**/*.*` file, sorted."""
    listing = paths_file(folder)
    if os.path.isfile(listing):
        try:
            with open(listing, encoding="utf-8") as stream:
                lines = [line.strip() for line in stream]
        except (OSError, UnicodeDecodeError) as error:
            raise RelaylabError.at(listing, "", "a readable UTF-8 list of image paths", str(error)) from None
        files = sorted(os.path.join(os.path.dirname(folder), line) for line in lines if line)
        source = listing
    elif os.path.isdir(folder):
        pattern = os.path.join(glob.escape(folder), "**", "*.*")
        files = sorted(f for f in glob.glob(pattern, recursive=True) if os.path.isfile(f))
        source = folder
    elif os.path.exists(folder):
        raise RelaylabError.at(folder, "", "a folder of images", "a file")
    else:
        raise RelaylabError.at(folder, "", f"an existing folder of images (or a list of them in {listing})",
                               "no such folder")
    if not files:
        raise RelaylabError.at(source, "", "at least one image file (a name with an extension)", "none")
    log.debug("%d samples listed by %s", len(files), source)
    return files


def label_problems_and_classes(files: list[str], folder: str, label_map: xr.Dataset, label_index_regex: str | None,
                               label_word_net_id_regex: str | None) -> tuple[list[Problem], np.ndarray]:
    """The class index of each file from group 1 of the label regex (ViRelAy's `re.match` on the whole path), and
    a problem for every file where that fails."""
    if label_index_regex is not None:
        key, regex, what = LABEL_REGEX_KEYS[0], re.compile(label_index_regex), "an integer class index in the label map"
        known = set(label_map[CLASS].values.tolist())

        def class_of(captured: str | None) -> int | None:
            try:
                index = int(captured)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return None
            return index if index in known else None
    else:
        key, regex, what = LABEL_REGEX_KEYS[1], re.compile(label_word_net_id_regex), "a WordNet id in the label map"
        class_of = class_by_word_net_id(label_map).get  # a repeated id names its first class, as in ViRelAy
    classes = np.full(len(files), -1, dtype=np.int64)
    problems, matched = [], 0
    for i, file in enumerate(files):
        match = regex.match(file)
        if match is None:
            problems.append(Problem(file, key, f"a path that '{regex.pattern}' matches (from its start)", "no match"))
            continue
        matched += 1
        label = class_of(match.group(1))
        if label is None:
            problems.append(Problem(file, key, f"group 1 of the match to be {what}", repr(match.group(1))))
        else:
            classes[i] = label
    if not matched:  # one problem instead of one per file: the regex does not fit these paths at all
        return [Problem(folder, key, f"a regex that matches the sample paths from their start, e.g. '{files[0]}'",
                        f"'{regex.pattern}' matches none of the {len(files)} paths")], classes
    return problems, classes


def as_label_map(label_map: xr.Dataset | str | os.PathLike) -> xr.Dataset:
    return label_map if isinstance(label_map, xr.Dataset) else load_label_map(label_map)


def first_problems(problems: list[Problem], where: str) -> list[Problem]:
    """The first MAX_PROBLEMS_RAISED problems (a wrong setting can affect every one of a million samples), and one
    more on `where` that counts the rest."""
    shown = problems[:MAX_PROBLEMS_RAISED]
    if len(problems) > len(shown):
        shown.append(Problem(where, "", "no further problems", f"{len(problems) - len(shown)} more like these"))
    return shown


def raise_problems(problems: list[Problem], folder: str) -> None:
    """Raise the first problems and count the rest (`first_problems`)."""
    if problems:
        raise RelaylabError(first_problems(problems, folder))


# ------------------------------------------------------------------------------------------------- public API


def open_image_directory(path: str | os.PathLike, *, label_map: xr.Dataset | str | os.PathLike,
                         label_index_regex: str | None = None, label_word_net_id_regex: str | None = None,
                         input_width: int, input_height: int, down_sampling_method: str = "none",
                         up_sampling_method: str = "none") -> xr.Dataset:
    """The images of a ViRelAy image folder as the canonical lazy inputs Dataset (uint8, 0..255).

    Settings and labels are checked here; an unreadable image, or one the sampling methods cannot bring to the
    input size, raises a RelaylabError naming the file when its values are read.
    """
    folder = str(Path(path))
    raise_problems(regex_problems(folder, label_index_regex, label_word_net_id_regex)
                   + sampling_problems(folder, input_width, input_height, down_sampling_method, up_sampling_method),
                   folder)
    label_map = as_label_map(label_map)
    files = sample_files(folder)
    problems, classes = label_problems_and_classes(files, folder, label_map, label_index_regex, label_word_net_id_regex)
    raise_problems(problems, folder)
    sampling = Sampling(input_width, input_height, up_sampling_method, down_sampling_method)
    array = ImageFilesArray(tuple(files), functools.partial(read_image, sampling=sampling), (CHANNELS, sampling.height, sampling.width))
    source = os.path.abspath(folder)
    variable = xr.Variable(IMAGE_DIMS, indexing.LazilyIndexedArray(array), attrs={"source_file": source})
    chunks = (min(SAMPLES_PER_CHUNK, len(files)),) + array.shape[1:]
    variable.encoding["preferred_chunks"] = dict(zip(IMAGE_DIMS, chunks))
    coords = {
        SAMPLE: np.arange(len(files), dtype=np.int64),
        "label": (SAMPLE, classes),
        # NumPy's variable-length strings, as `ingest` has them: an object array's dtype is not known until its
        # values are read, and the store's empty template of it would become a float array
        "path": (SAMPLE, np.array(files, dtype=np.dtypes.StringDType())),
    }
    attrs = {
        "kind": "input",
        "value_range": [0.0, 255.0],
        "source_file": source,
        "sampling": {"up_sampling_method": up_sampling_method, "down_sampling_method": down_sampling_method},
    }
    return xr.Dataset({"input": variable}, coords=coords, attrs=attrs)


def image_directory_problems(path: str | os.PathLike, *, label_map: xr.Dataset | str | os.PathLike,
                             label_index_regex: str | None = None, label_word_net_id_regex: str | None = None,
                             input_width, input_height, down_sampling_method="none",
                             up_sampling_method="none") -> list[Problem]:
    """Everything wrong with an image folder, all at once, without raising (for `validate`).

    Images are checked from their headers and Pillow's `verify()`; damage deeper in an image's data that these do
    not reveal is reported when the image is read.
    """
    folder = str(Path(path))
    label_trouble = regex_problems(folder, label_index_regex, label_word_net_id_regex)
    size_trouble = sampling_problems(folder, input_width, input_height, down_sampling_method, up_sampling_method)
    problems = label_trouble + size_trouble
    try:
        label_map = as_label_map(label_map)
        files = sample_files(folder)
    except RelaylabError as error:
        return problems + error.problems
    if not label_trouble:
        problems += label_problems_and_classes(files, folder, label_map, label_index_regex, label_word_net_id_regex)[0]
    sampling = None if size_trouble else Sampling(input_width, input_height, up_sampling_method, down_sampling_method)
    for file in files:
        problems += image_file_problems(file, sampling)
    return problems


def image_file_problems(file: str, sampling: Sampling | None) -> list[Problem]:
    """Whether Pillow can read the image, and whether its size can become the input size (when settings are valid)."""
    try:
        with Image.open(file) as image:
            width, height = image.size
            image.verify()
    except READ_ERRORS as error:
        return [Problem(file, "", "an image file Pillow can read", f"{type(error).__name__}: {error}")]
    if sampling is None or sampling.resampled_size(width, height) == (sampling.width, sampling.height):
        return []
    return [size_problem(file, sampling, (width, height), sampling.resampled_size(width, height))]


class ImageDirectoryBackendEntrypoint(BackendEntrypoint):
    """ViRelAy image folders; needs `engine="virelay_images"` and the project file's dataset settings as arguments."""

    description = "ViRelAy image_directory datasets (labels from file paths) in relaylab's canonical form"
    url = "https://github.com/relaylab/relaylab"
    open_dataset_parameters = ("filename_or_obj", "drop_variables", "label_map", "label_index_regex",
                               "label_word_net_id_regex", "input_width", "input_height", "down_sampling_method",
                               "up_sampling_method")

    def open_dataset(self, filename_or_obj, *, drop_variables=None, label_map=None, label_index_regex=None,
                     label_word_net_id_regex=None, input_width=None, input_height=None, down_sampling_method="none",
                     up_sampling_method="none"):
        if label_map is None:
            raise RelaylabError.at(filename_or_obj, "label_map",
                                   "a label map: label_map=<xr.Dataset or ViRelAy JSON file>", "none given")
        ds = open_image_directory(filename_or_obj, label_map=label_map, label_index_regex=label_index_regex,
                                  label_word_net_id_regex=label_word_net_id_regex, input_width=input_width,
                                  input_height=input_height, down_sampling_method=down_sampling_method,
                                  up_sampling_method=up_sampling_method)
        return ds.drop_vars(drop_variables or [], errors="ignore")

    def guess_can_open(self, filename_or_obj) -> bool:
        return False  # any folder could be one; the label settings must be given anyway
