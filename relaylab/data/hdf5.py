"""xarray backend for ViRelAy/CoRelAy HDF5 files (dataset, attribution and analysis files), opened as they are.

`xr.open_dataset(path, engine="virelay")` gives the canonical inputs or attributions Dataset,
`xr.open_datatree(path, engine="virelay")` the canonical analysis tree. Arrays are lazy: opening reads only
metadata (and an attribution file's small `index` vector), and with `chunks={}` the Dask chunks follow the HDF5
chunks. File handles live in a `CachingFileManager`, so the arrays pickle and travel to Dask workers.

ViRelAy's per-sample groups exist for samples of different shapes. Given the project's input size and sampling
methods (`Sampling`), such samples are brought to that size when read, as ViRelAy brings image files to it; without
them the mixed shapes are an error found at opening, from metadata alone.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from collections import Counter
from contextlib import ExitStack
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import xarray as xr
from xarray.backends import BackendArray, BackendEntrypoint, CachingFileManager
from xarray.backends.locks import HDF5_LOCK
from xarray.core import indexing

from ..errors import Problem, RelaylabError
from .dims import CLASS, COMPONENT, IMAGE_DIMS, MEMBER, SAMPLE

if TYPE_CHECKING:  # imagedir (and Pillow) is imported only where samples are resampled
    from .imagedir import Sampling

CHANNEL_SIZES = (1, 3, 4)
TARGET_CHUNK_BYTES = 32 * 2**20


# What h5py raises for a damaged file (flipped bytes in its metadata, a truncated chunk, a broken checksum) anywhere
# past opening: the object headers and B-trees are read only when an object is first used.
H5_ERRORS = (OSError, RuntimeError, KeyError)


def damaged(file: str | os.PathLike, path: str, error: Exception) -> RelaylabError:
    return RelaylabError.at(file, path, "a readable HDF5 file (it is damaged: truncated or overwritten?)",
                            f"{type(error).__name__}: {error}")


def h5_errors(func):
    """Report what h5py raises for a damaged file inside `func` as a RelaylabError naming the file (the first path
    argument of `func`), not as h5py's own exception."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except H5_ERRORS as error:
            file = next((a for a in args if isinstance(a, (str, os.PathLike))), kwargs.get("path", ""))
            raise damaged(file, "", error) from None
    return wrapper


def open_h5(path: str | os.PathLike) -> h5py.File:
    """Open read-only, with errors that name the file and say what was expected."""
    path = Path(path)
    if not path.exists():
        raise RelaylabError.at(path, "", "an existing HDF5 file", "no such file")
    if path.is_dir():
        raise RelaylabError.at(path, "", "an HDF5 file", "a directory")
    if not h5py.is_hdf5(path):
        raise RelaylabError.at(path, "", "an HDF5 file", "no HDF5 signature (not HDF5, or empty)")
    try:
        h5 = h5py.File(path, "r")
    except OSError as error:
        raise RelaylabError.at(path, "", "a readable HDF5 file (truncated or damaged?)", str(error)) from None
    try:
        list(h5)  # the root group's links, read now: damage there is reported here, not by the first `name in h5`
    except H5_ERRORS as error:
        h5.close()
        raise damaged(path, "/", error) from None
    return h5


class H5Array(BackendArray):
    """One HDF5 dataset, or a group of equally shaped per-sample datasets stacked along the first axis.

    `axes` presents the file's axes in another order (HWC files as CHW); `None` in it inserts a length-1 axis
    (a channel for greyscale (N, H, W) files). Doing this here keeps reads at h5py speed: xarray's own lazy
    transpose falls back to vectorized indexing.
    """

    def __init__(self, manager: CachingFileManager, name: str, shape, dtype, members: list[str] | None = None,
                 axes: tuple | None = None):
        self.manager = manager
        self.name = name
        self.file_shape = tuple(shape)
        self.axes = tuple(range(len(shape))) if axes is None else tuple(axes)
        self.shape = tuple(1 if a is None else self.file_shape[a] for a in self.axes)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind not in "biuf":  # strings, objects, compound records: nothing relaylab reads is one
            file = manager._args[0] if getattr(manager, "_args", None) else ""
            raise RelaylabError.at(file, name if name.startswith("/") else f"/{name}", "numbers (integers, floats or booleans)",
                                   f"dtype {self.dtype}")
        self.members = members
        self._node: tuple | None = None  # (h5py.File, its dataset or group): looked up once per open file

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_node": None}  # h5py objects do not pickle; the manager reopens the file

    def with_axes(self, axes: tuple) -> "H5Array":
        return H5Array(self.manager, self.name, self.file_shape, self.dtype, self.members, axes)

    def __getitem__(self, key):
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.BASIC, self._read)

    def _read(self, key: tuple):
        file_key = [slice(None)] * len(self.file_shape)
        for k, axis in zip(key, self.axes):
            if axis is not None:
                file_key[axis] = k
        file_key = tuple(file_key)
        try:
            with HDF5_LOCK:
                direct = self._direct_plan(file_key)
                values = None if direct else self._read_file(file_key)
        except H5_ERRORS as error:
            file = self.manager._args[0] if getattr(self.manager, "_args", None) else ""
            raise damaged(file, self.name if self.name.startswith("/") else f"/{self.name}", error) from None
        if direct:  # outside the lock: other threads read (and decode) while this one waits on the disk
            values = read_ranges(*direct)
            if isinstance(file_key[0], (int, np.integer)):
                values = values[0]
        kept_file_axes = [a for a, k in enumerate(file_key) if not isinstance(k, (int, np.integer))]
        wanted = [a for k, a in zip(key, self.axes) if not isinstance(k, (int, np.integer))]
        values = values.transpose([kept_file_axes.index(a) for a in wanted if a is not None])
        inserted = [i for i, a in enumerate(wanted) if a is None]
        return np.expand_dims(values, inserted) if inserted else values

    def _dataset(self):
        """The dataset (or group), looked up by name only when the file was (re)opened: `file[name]` costs
        as much as reading a few hundred KiB, and Dask reads one HDF5 chunk per task. Called under HDF5_LOCK."""
        file = self.manager.acquire()
        cached = self._node
        if cached is None or cached[0] is not file or not cached[1].id.valid:
            cached = self._node = (file, file[self.name])
        return cached[1]

    def _direct_plan(self, key: tuple) -> tuple | None:
        """(file, dataset path, byte ranges, shape, dtype) when `key` asks for whole rows that lie in the file as they are
        (`direct_ranges`); None otherwise. Called under HDF5_LOCK."""
        if self.members is not None or not key:
            return None
        rows = slice(key[0], key[0] + 1) if isinstance(key[0], (int, np.integer)) else key[0]
        if not isinstance(rows, slice) or any(not isinstance(k, slice) or k.indices(s) != (0, s, 1)
                                              for k, s in zip(key[1:], self.file_shape[1:])):
            return None
        start, stop, step = rows.indices(self.file_shape[0])
        if step != 1:
            return None
        stop = max(start, stop)
        node = self._dataset()
        ranges = direct_ranges(node, slice(start, stop))
        if ranges is None:
            return None
        return node.file.filename, node.name, ranges, (stop - start,) + self.file_shape[1:], self.dtype

    def _read_file(self, key: tuple) -> np.ndarray:
        node = self._dataset()
        if self.members is None:
            return np.asarray(node[key])
        rows, rest = key[0], key[1:]
        if isinstance(rows, (int, np.integer)):
            return np.asarray(node[self.members[rows]][rest], dtype=self.dtype)
        picked = range(self.file_shape[0])[rows]
        out = np.empty((len(picked),) + self.file_shape[1:], dtype=self.dtype)[(slice(None),) + rest]
        for i, row in enumerate(picked):
            out[i] = node[self.members[row]][rest]
        return out


def sorted_members(group: h5py.Group, file: str) -> list[str]:
    try:
        keys = list(group.keys())
    except (RuntimeError, KeyError, OSError) as error:  # a damaged group: its links cannot be listed
        raise RelaylabError.at(file, group.name, "a readable group of per-sample arrays", str(error)) from None
    undecodable = [key for key in keys if not isinstance(key, str)]  # h5py gives bytes for a name that is not UTF-8
    if undecodable:
        raise RelaylabError.at(file, group.name, "per-sample arrays named in UTF-8 text",
                               f"a member named {undecodable[0]!r} (a damaged name?)")
    keys = sorted(keys)
    if not keys:
        raise RelaylabError.at(file, group.name, "a non-empty group of per-sample arrays", "an empty group")
    return keys


@dataclass(frozen=True)
class Members:
    """A group of per-sample arrays: keys in ViRelAy's order (sorted; member k is sample k), shapes and dtypes."""

    file: str
    path: str
    keys: list[str]
    shapes: list[tuple[int, ...]]
    dtypes: list[np.dtype]

    @property
    def uniform(self) -> bool:
        return len(set(self.shapes)) == 1

    @property
    def dtype(self) -> np.dtype:
        return np.result_type(*set(self.dtypes))

    def where(self, key: str) -> str:
        return f"{self.path}/{key}"


def group_members(group: h5py.Group, file: str) -> Members:
    """Every member's shape and dtype, from metadata only (through HDF5's low-level API: `group[key]` costs about
    twice as much per member)."""
    keys = sorted_members(group, file)
    shapes, dtypes = [], []
    for key in keys:
        try:
            node = h5py.h5o.open(group.id, key.encode())
        except (KeyError, OSError, RuntimeError) as error:  # e.g. a link to nothing, a damaged object header
            raise RelaylabError.at(file, f"{group.name}/{key}", "a per-sample array", str(error)) from None
        if not isinstance(node, h5py.h5d.DatasetID):
            raise RelaylabError.at(file, f"{group.name}/{key}", "a per-sample array", "a group")
        shapes.append(tuple(node.shape))
        dtypes.append(node.dtype)
    return Members(file, group.name, keys, shapes, dtypes)


def mixed_shape_problems(members: Members, hint: str = "") -> list[Problem]:
    """One problem per member whose shape differs from the most common one (the first and a count of the rest)."""
    from .imagedir import first_problems

    common = Counter(members.shapes).most_common(1)[0][0]
    odd = [Problem(members.file, members.where(key), f"shape {common} like the other per-sample arrays of "
                                                     f"{members.path}{hint}", f"shape {shape}")
           for key, shape in zip(members.keys, members.shapes) if shape != common]
    return first_problems(odd, members.file)


def group_array(manager: CachingFileManager, name: str, members: Members) -> H5Array:
    """Equally shaped per-sample arrays as one lazy array, stacked along the first axis."""
    if not members.uniform:
        raise RelaylabError(mixed_shape_problems(members))
    return H5Array(manager, name, (len(members.keys),) + members.shapes[0], members.dtype, members.keys)


def h5_array(manager: CachingFileManager, file: str, name: str) -> tuple[H5Array, tuple | None]:
    """A lazy array for `name` (dataset or group of equally shaped per-sample arrays) and the HDF5 chunk shape, if any."""
    node = manager.acquire()[name]
    if isinstance(node, h5py.Dataset):
        return H5Array(manager, name, node.shape, node.dtype), node.chunks
    return group_array(manager, name, group_members(node, file)), None


# ------------------------------------------------------------------------------ per-sample images of mixed shapes

SAMPLING_HINT = ", or input_width and input_height in the project file (a size to bring them all to)"


@dataclass(frozen=True)
class ImagePlan:
    """How per-sample images of different shapes are read: the axis order of the 3-D ones ('chw' or 'hwc'; 2-D ones
    are greyscale), the channels every sample ends with (greyscale ones are repeated to it, as Pillow converts L to
    RGB) and the dtype they are read as."""

    layout: str
    channels: int
    dtype: np.dtype


def member_channels(shape: tuple[int, ...], layout: str) -> int:
    return 1 if len(shape) == 2 else shape[0] if layout == "chw" else shape[-1]


def image_plan(members: Members, declared_layout: str | None, sampling: Sampling | None) -> tuple[ImagePlan | None, list[Problem]]:
    """How to read a group of per-sample images of different shapes at the input size of `sampling`, or the problems
    that prevent it: no input size, arrays that are not images, channel counts that differ (other than greyscale),
    sizes the sampling methods cannot bring to the input size. From metadata only."""
    from .imagedir import first_problems, size_problem

    if sampling is None:
        return None, mixed_shape_problems(members, SAMPLING_HINT)
    problems = [Problem(members.file, members.where(key), "a (C, H, W), (H, W, C) or (H, W) image array", f"shape {shape}")
                for key, shape in zip(members.keys, members.shapes) if len(shape) not in (2, 3)]
    if problems:
        return None, first_problems(problems, members.file)
    three_d = [shape for shape in members.shapes if len(shape) == 3]

    def fits(axis: int) -> bool:
        counts = {shape[axis] for shape in three_d}
        return counts <= set(CHANNEL_SIZES) and len(counts - {1}) <= 1

    if declared_layout is not None:
        layout = str(declared_layout).lower()
        if layout not in ("chw", "hwc"):
            return None, [Problem(members.file, members.path, "layout 'chw' or 'hwc'", repr(declared_layout))]
    else:
        layout = "hwc" if fits(-1) and not fits(0) else "chw"
    counts = [member_channels(shape, layout) for shape in members.shapes]
    colour = Counter(c for c in counts if c != 1).most_common(1)
    channels = colour[0][0] if colour else 1
    for key, shape, count in zip(members.keys, members.shapes, counts):
        height, width = (shape[0], shape[1]) if len(shape) == 2 or layout == "hwc" else (shape[1], shape[2])
        if count not in (1, channels) or count not in CHANNEL_SIZES:
            problems.append(Problem(members.file, members.where(key), f"{channels} channels (or 1) like the other "
                                    f"samples, layout {layout}", f"shape {shape}"))
        elif sampling.resampled_size(width, height) != (sampling.width, sampling.height):
            problems.append(size_problem(members.file, sampling, (width, height), sampling.resampled_size(width, height),
                                         members.where(key)))
    if problems:
        return None, first_problems(problems, members.file)
    return ImagePlan(layout, channels, members.dtype), []


def read_member(key: str, *, manager: CachingFileManager, file: str, path: str, plan: ImagePlan,
                sampling: Sampling) -> np.ndarray:
    """One per-sample image at the input size, (C, H, W): read whole, resampled as image files are."""
    from .imagedir import resample

    with HDF5_LOCK:
        values = np.asarray(manager.acquire()[path][key][()], dtype=plan.dtype)
    image = values[..., None] if values.ndim == 2 else values.transpose(1, 2, 0) if plan.layout == "chw" else values
    image = resample(image, sampling, file, f"{path}/{key}")
    if image.shape[2] != plan.channels:
        image = np.repeat(image, plan.channels, axis=2)
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def resampled_variable(manager: CachingFileManager, members: Members, plan: ImagePlan, sampling: Sampling,
                       attrs: dict) -> xr.Variable:
    """Per-sample images of different shapes as a lazy (sample, channel, y, x) variable at the input size."""
    from .imagedir import ImageFilesArray

    read = functools.partial(read_member, manager=manager, file=members.file, path=members.path, plan=plan, sampling=sampling)
    array = ImageFilesArray(tuple(members.keys), read, (plan.channels, sampling.height, sampling.width), plan.dtype)
    variable = xr.Variable(IMAGE_DIMS, indexing.LazilyIndexedArray(array), attrs={**attrs, "source_layout": plan.layout})
    variable.encoding["preferred_chunks"] = dict(zip(IMAGE_DIMS, preferred_chunks(array.shape, array.dtype, None)))
    return variable


def image_group_problems(path: str | os.PathLike, name: str, declared_layout: str | None,
                         sampling: Sampling | None) -> list[Problem]:
    """What stops the per-sample group `name` of an HDF5 file from being read as images (for `validate`): nothing
    when it is an array, missing, or a group of equally shaped arrays, or when the file does not open (its own
    problem, reported where its keys are checked)."""
    try:
        h5 = open_h5(path)
    except RelaylabError:
        return []
    try:
        with h5:
            node = h5.get(name)
            if not isinstance(node, h5py.Group):
                return []
            members = group_members(node, str(path))
            if members.uniform:
                return []
            return image_plan(members, declared_layout or node.attrs.get("layout"), sampling)[1]
    except RelaylabError as error:
        return error.problems


def preferred_chunks(shape: tuple, dtype: np.dtype, h5_chunks: tuple | None) -> tuple:
    """HDF5's chunks where it has them; otherwise whole samples, about TARGET_CHUNK_BYTES per chunk."""
    if h5_chunks is not None:
        return tuple(h5_chunks)
    sample_bytes = max(1, math.prod(shape[1:]) * np.dtype(dtype).itemsize)
    rows = max(1, min(shape[0], TARGET_CHUNK_BYTES // sample_bytes)) if shape[0] else 1
    return (rows,) + tuple(shape[1:])


def image_layout(shape: tuple, declared: str | None, file: str, name: str) -> str:
    """'chw' or 'hwc' for a 4-D array, 'hw' for 3-D; an explicit declaration wins over the shape-based guess."""
    if len(shape) == 3:
        return "hw"
    if len(shape) != 4:
        raise RelaylabError.at(file, name, "an array of shape (N, C, H, W), (N, H, W, C) or (N, H, W)", f"shape {shape}")
    if declared is not None:
        declared = declared.lower()
        if declared not in ("chw", "hwc"):
            raise RelaylabError.at(file, name, "layout 'chw' or 'hwc'", repr(declared))
        return declared
    first, last = shape[1] in CHANNEL_SIZES, shape[3] in CHANNEL_SIZES
    return "hwc" if last and not first else "chw"


LAYOUT_AXES = {"chw": (0, 1, 2, 3), "hwc": (0, 3, 1, 2), "hw": (0, None, 1, 2)}


def to_image_variable(array: H5Array, layout: str, h5_chunks: tuple | None, attrs: dict) -> xr.Variable:
    """Present the array with the canonical dims (sample, channel, y, x), reordering axes lazily."""
    axes = LAYOUT_AXES[layout]
    file_chunks = preferred_chunks(array.shape, array.dtype, h5_chunks)
    chunks = tuple(1 if a is None else file_chunks[a] for a in axes)
    variable = xr.Variable(IMAGE_DIMS, indexing.LazilyIndexedArray(array.with_axes(axes)), attrs=attrs)
    variable.encoding["preferred_chunks"] = dict(zip(IMAGE_DIMS, chunks))
    variable.attrs["source_layout"] = layout
    return variable


def label_variable(manager: CachingFileManager, file: str, n_samples: int, h5: h5py.File) -> xr.Variable:
    """`label (sample)` for integer labels, `label (sample, class)` booleans for n-hot labels."""
    if "label" not in h5:
        raise RelaylabError.at(file, "/label", "a 'label' array or group", "it is missing")
    array, h5_chunks = h5_array(manager, file, "label")
    if not array.shape or array.shape[0] != n_samples:
        raise RelaylabError.at(file, "/label", f"{n_samples} labels, one per sample", f"{array.shape[0]}" if array.shape else "a scalar")
    lazy = indexing.LazilyIndexedArray(array)
    if len(array.shape) == 1:
        if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
            raise RelaylabError.at(file, "/label", "integer class indices", f"dtype {array.dtype}")
        variable = xr.Variable((SAMPLE,), lazy, attrs={"multi_label": 0})
    elif len(array.shape) == 2:
        prediction = h5.get("prediction")
        if isinstance(prediction, h5py.Dataset) and prediction.ndim == 2 and prediction.shape[1] != array.shape[1]:
            raise RelaylabError.at(file, "/label", f"n-hot labels with a column per class of /prediction ({prediction.shape[1]})",
                                   f"shape {array.shape}")
        variable = xr.Variable((SAMPLE, CLASS), lazy, attrs={"multi_label": 1})
    else:
        raise RelaylabError.at(file, "/label", "shape (N,) or (N, classes)", f"shape {array.shape}")
    variable.encoding["preferred_chunks"] = dict(zip(variable.dims, preferred_chunks(array.shape, array.dtype, h5_chunks)))
    return variable


def declared_value_range(dtype: np.dtype, declared: Iterable[float] | None, h5_attrs, file: str = "",
                         path: str = "/data") -> list[float] | None:
    """The range of input values: declared by the user or the file (`path`'s attribute), implied by uint8, else
    unknown until read."""
    if declared is not None:
        return value_range_pair(declared, file, "value_range")
    if "value_range" in h5_attrs:
        return value_range_pair(h5_attrs["value_range"], file, f"{path}@value_range")
    if np.dtype(dtype) == np.uint8:
        return [0.0, 255.0]
    return None


def value_range_pair(value, file: str, path: str) -> list[float]:
    """[low, high] from a declared value range, or a RelaylabError at `path` of `file`."""
    try:
        low, high = (float(v) for v in np.asarray(value).reshape(-1))
        usable = bool(np.isfinite([low, high]).all() and low < high)
    except (TypeError, ValueError):
        usable = False
    if not usable:
        raise RelaylabError.at(file, path, "a value range of two finite numbers [low, high], low < high",
                               repr(value.tolist() if isinstance(value, np.ndarray) else value))
    return [low, high]


def guess_value_range(minimum: float, maximum: float) -> list[float]:
    """ViRelAy's rule, applied to values actually read: [-1, 1] when negative, [0, 255] above 1, else [0, 1]."""
    if minimum < 0:
        return [-1.0, 1.0]
    if maximum > 1:
        return [0.0, 255.0]
    return [0.0, 1.0]


def detect_kind(h5: h5py.File, file: str) -> str:
    if "attribution" in h5:
        return "attribution"
    if "data" in h5:
        return "input"
    if len(h5) and all("index" in g for g in h5.values() if isinstance(g, h5py.Group)):
        raise RelaylabError.at(file, "/", "a dataset or attribution file for open_dataset",
                               "an analysis file: open it with xr.open_datatree(path, engine='virelay')")
    raise RelaylabError.at(file, "/", "a 'data' array (dataset file) or an 'attribution' array (attribution file)", "neither")


@h5_errors
def open_virelay_dataset(path, kind: str = "auto", layout: str | None = None,
                         value_range: Iterable[float] | None = None, sampling: Sampling | None = None) -> xr.Dataset:
    """A dataset or attribution file as the canonical Dataset. `sampling` (the project's input size and sampling
    methods) brings per-sample images of different shapes to one size; without it such samples are an error."""
    file = str(path)
    open_h5(path).close()
    manager = CachingFileManager(h5py.File, file, mode="r")
    with ExitStack() as on_error:
        on_error.callback(manager.close)
        h5 = manager.acquire()
        kind = detect_kind(h5, file) if kind == "auto" else kind
        if kind not in ("input", "attribution"):
            raise RelaylabError.at(file, "/", "kind 'input', 'attribution' or 'auto'", repr(kind))
        name = "data" if kind == "input" else "attribution"
        if name not in h5:
            raise RelaylabError.at(file, f"/{name}", f"a '{name}' array or group", "it is missing")
        attrs = {"source_file": os.path.abspath(file), "source_path": f"/{name}"}
        ds_attrs = {"kind": kind, "source_file": os.path.abspath(file)}
        declared = layout or h5[name].attrs.get("layout")
        members = group_members(h5[name], file) if isinstance(h5[name], h5py.Group) else None
        if members is not None and not members.uniform:
            plan, problems = image_plan(members, declared, sampling)
            if problems:
                raise RelaylabError(problems)
            image = resampled_variable(manager, members, plan, sampling, attrs)
            ds_attrs["sampling"] = {"up_sampling_method": sampling.up, "down_sampling_method": sampling.down}
        else:
            if members is None:
                array, h5_chunks = h5_array(manager, file, name)
            else:
                array, h5_chunks = group_array(manager, name, members), None
            image = to_image_variable(array, image_layout(array.shape, declared, file, f"/{name}"), h5_chunks, attrs)
        n = image.shape[0]
        variables = {name if kind == "attribution" else "input": image}
        coords = {"label": label_variable(manager, file, n, h5)}
        if kind == "input":
            ds_attrs["value_range"] = declared_value_range(image.dtype, value_range, h5[name].attrs, file, f"/{name}")
            coords[SAMPLE] = np.arange(n, dtype=np.int64)
        else:
            if "prediction" in h5:
                prediction, p_chunks = h5_array(manager, file, "prediction")
                if len(prediction.shape) != 2 or prediction.shape[0] != n:
                    raise RelaylabError.at(file, "/prediction", f"shape ({n}, classes)", f"shape {prediction.shape}")
                var = xr.Variable((SAMPLE, CLASS), indexing.LazilyIndexedArray(prediction))
                var.encoding["preferred_chunks"] = dict(zip((SAMPLE, CLASS), preferred_chunks(prediction.shape, prediction.dtype, p_chunks)))
                variables["prediction"] = var
            coords[SAMPLE] = sample_index(h5, file, n)
        ds = xr.Dataset(variables, coords=coords, attrs=ds_attrs)
        on_error.pop_all()
    ds.set_close(manager.close)
    return ds


class Readahead:
    """Asks the kernel to read rows of a Dataset's HDF5 sources before they are wanted (POSIX_FADV_WILLNEED), for
    the sources that HDF5 itself reads (compressed or oddly chunked: not `direct_ranges`).

    HDF5 reads a chunked dataset one chunk at a time, so a cold sequential copy waits on one disk request after
    another; announcing the next block's chunks lets the disk serve them together (about twice the rate,
    `python -m benchmarks io --only convert`). Only variables read row for row from one HDF5 dataset (attrs
    `source_file`, `source_path`) are announced; the rest are read through HDF5 alone. Advice only: it never changes what is read.
    """

    def __init__(self, ds: xr.Dataset):
        self.sources: list[tuple[int, h5py.File, h5py.Dataset]] = []
        n = ds.sizes.get(SAMPLE)
        if not hasattr(os, "posix_fadvise"):
            return
        for var in ds.data_vars.values():
            file, path = var.attrs.get("source_file"), var.attrs.get("source_path")
            if not file or not path or var.dims[:1] != (SAMPLE,):
                continue
            with HDF5_LOCK:
                h5 = h5py.File(file, "r")
                node = h5.get(path)
            # rows read straight from the file come in requests of many MB, which the kernel reads ahead by
            # itself; announcing them (posix_fadvise) only adds work: the pages are allocated there and then
            if isinstance(node, h5py.Dataset) and node.shape[:1] == (n,) and direct_ranges(node, slice(0, 1)) is None:
                self.sources.append((os.open(file, os.O_RDONLY), h5, node))
            else:
                h5.close()

    def __call__(self, rows: slice) -> None:
        for fd, _, node in self.sources:
            with HDF5_LOCK:
                ranges = byte_ranges(node, rows)
            for offset, size in ranges:
                os.posix_fadvise(fd, offset, size, os.POSIX_FADV_WILLNEED)

    def close(self) -> None:
        for fd, h5, _ in self.sources:
            os.close(fd)
            h5.close()
        self.sources = []

    def __enter__(self) -> "Readahead":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def direct_ranges(node: h5py.Dataset, rows: slice) -> list[tuple[int, int]] | None:
    """(file offset, size) of exactly the bytes of `rows`, in row order, when they are stored as they are in memory:
    no filters (compression, shuffle, checksums), whole rows per chunk (or contiguous storage), native numbers, the
    default (sec2) driver and every chunk written. Else None, and the rows are read through HDF5.

    Reading these ranges with `os.preadv` skips HDF5's per-chunk selection and copy, which limits a cold copy of
    uncompressed samples to a fraction of the disk's read rate (`python -m benchmarks io --only convert`)."""
    dtype = node.dtype
    if dtype.kind not in "iufb" or not (dtype.isnative or dtype.itemsize == 1) or node.file.driver != "sec2" \
            or node.file.userblock_size:
        return None
    plist = node.id.get_create_plist()
    if plist.get_nfilters() or plist.get_external_count():
        return None
    row_bytes = math.prod(node.shape[1:]) * dtype.itemsize
    if rows.stop <= rows.start:
        return []
    if node.chunks is None:
        offset = node.id.get_offset()
        return None if offset is None else [(offset + rows.start * row_bytes, (rows.stop - rows.start) * row_bytes)]
    if tuple(node.chunks[1:]) != tuple(node.shape[1:]):
        return None
    step = node.chunks[0]
    ranges: list[tuple[int, int]] = []
    for first in range(rows.start - rows.start % step, rows.stop, step):
        offset = node.id.get_chunk_info_by_coord((first,) + (0,) * (len(node.shape) - 1)).byte_offset
        if offset is None:  # never written: HDF5 supplies the fill value
            return None
        lo, hi = max(first, rows.start), min(first + step, rows.stop)
        offset, size = offset + (lo - first) * row_bytes, (hi - lo) * row_bytes
        if ranges and ranges[-1][0] + ranges[-1][1] == offset:
            ranges[-1] = (ranges[-1][0], ranges[-1][1] + size)
        else:
            ranges.append((offset, size))
    return ranges


def read_ranges(file: str, path: str, ranges: list[tuple[int, int]], shape: tuple, dtype: np.dtype) -> np.ndarray:
    """The bytes at `ranges` of `file` (dataset `path`'s rows), one after the other, as an array of `shape` (see `direct_ranges`)."""
    out = np.empty(shape, dtype=dtype)
    view = memoryview(out.reshape(-1).view(np.uint8))
    fd = os.open(file, os.O_RDONLY)
    try:
        position = 0
        for offset, size in ranges:
            while size:
                got = os.preadv(fd, [view[position:position + size]], offset)
                if not got:
                    raise RelaylabError.at(file, path, f"stored data up to byte {offset + size}",
                                           "the file ends before it (truncated?)")
                position, offset, size = position + got, offset + got, size - got
    finally:
        os.close(fd)
    return out


def byte_ranges(node: h5py.Dataset, rows: slice) -> list[tuple[int, int]]:
    """(file offset, size) of the stored bytes holding `rows` of an HDF5 dataset: its chunks, or its contiguous
    slab. Unallocated and compressed-away nothing is skipped."""
    if node.chunks is None:
        offset = node.id.get_offset()
        row_bytes = math.prod(node.shape[1:]) * node.dtype.itemsize
        return [] if offset is None else [(offset + rows.start * row_bytes, (rows.stop - rows.start) * row_bytes)]
    first = rows.start - rows.start % node.chunks[0]
    starts = [range(first, rows.stop, node.chunks[0])] + [range(0, s, c) for s, c in zip(node.shape[1:], node.chunks[1:])]
    ranges = []
    for coord in itertools.product(*starts):
        info = node.id.get_chunk_info_by_coord(coord)
        if info.byte_offset is not None:
            ranges.append((info.byte_offset, info.size))
    return ranges


def sample_index(h5: h5py.File, file: str, n: int) -> np.ndarray:
    """The dataset index of each row: the file's `index` when present, else the row number."""
    if "index" not in h5:
        return np.arange(n, dtype=np.int64)
    index = h5["index"]
    if not isinstance(index, h5py.Dataset) or index.shape != (n,) or not np.issubdtype(index.dtype, np.integer):
        raise RelaylabError.at(file, "/index", f"({n},) integer sample indices", f"{getattr(index, 'shape', 'a group')}")
    values = index[()].astype(np.int64)
    if values.size and values.min() < 0:
        raise RelaylabError.at(file, "/index", "non-negative sample indices", f"minimum {values.min()}")
    if np.unique(values).size != values.size:
        raise RelaylabError.at(file, "/index", "unique sample indices", "repeated values")
    return values


# ----------------------------------------------------------------------------------------------------- analyses


@h5_errors
def analysis_problems(h5: h5py.File, file: str) -> list[Problem]:
    """Structural problems of an analysis file, all at once (metadata only)."""
    problems = []
    if not len(h5):
        problems.append(Problem(file, "/", "at least one category group", "an empty file"))
    for category, group in h5.items():
        where = f"/{category}"
        if not isinstance(group, h5py.Group):
            problems.append(Problem(file, where, "a category group", "an array"))
            continue
        if "index" not in group:
            problems.append(Problem(file, f"{where}/index", "an 'index' array of the category's sample indices", "it is missing"))
            continue
        index = group["index"]
        n = index.shape[0] if isinstance(index, h5py.Dataset) and index.ndim == 1 else None
        if n is None:
            problems.append(Problem(file, f"{where}/index", "a 1-D array", f"shape {index.shape}" if isinstance(index, h5py.Dataset) else "a group"))
            continue
        for kind, ndim in (("embedding", 2), ("cluster", 1)):
            if kind in group and not isinstance(group[kind], h5py.Group):
                problems.append(Problem(file, f"{where}/{kind}", f"a group of {kind} arrays", "an array"))
                continue
            for name, item in group.get(kind, {}).items():
                at = f"{where}/{kind}/{name}"
                if not isinstance(item, h5py.Dataset):
                    problems.append(Problem(file, at, "an array", "a group"))
                elif item.ndim != ndim or item.shape[0] != n:
                    shape = f"({n}, components)" if ndim == 2 else f"({n},)"
                    problems.append(Problem(file, at, f"shape {shape}, one row per index entry", f"shape {item.shape}"))
                elif kind == "embedding" and "eigenvalue" in item.attrs and np.size(item.attrs["eigenvalue"]) != item.shape[1]:
                    problems.append(Problem(file, f"{at}@eigenvalue", f"{item.shape[1]} eigenvalues, one per component",
                                            f"{np.size(item.attrs['eigenvalue'])}"))
    return problems


def plain_attrs(attrs) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}


def analysis_nodes(manager: CachingFileManager, file: str, prefix: str = "") -> dict[str, xr.Dataset]:
    """`{'/<category>': ..., '/<category>/embedding/<name>': ..., '/<category>/cluster': ...}`, all lazy."""
    h5 = manager.acquire()
    problems = analysis_problems(h5, file)
    if problems:
        raise RelaylabError(problems)
    nodes: dict[str, xr.Dataset] = {}
    for category, group in h5.items():
        base = f"{prefix}/{category}"
        index, _ = h5_array(manager, file, f"/{category}/index")
        nodes[base] = xr.Dataset(
            coords={"index": xr.Variable((MEMBER,), indexing.LazilyIndexedArray(index))},
            attrs={"source_file": os.path.abspath(file)},
        )
        for name, item in group.get("embedding", {}).items():
            array, _ = h5_array(manager, file, item.name)
            attrs = plain_attrs(item.attrs)
            eigenvalue = attrs.pop("eigenvalue", None)
            coords = {"eigenvalue": (COMPONENT, np.asarray(eigenvalue, dtype=np.float64))} if eigenvalue is not None else {}
            nodes[f"{base}/embedding/{name}"] = xr.Dataset(
                {"embedding": xr.Variable((MEMBER, COMPONENT), indexing.LazilyIndexedArray(array))}, coords=coords, attrs=attrs
            )
        clusters = {}
        for name, item in group.get("cluster", {}).items():
            array, _ = h5_array(manager, file, item.name)
            clusters[name] = xr.Variable((MEMBER,), indexing.LazilyIndexedArray(array), attrs=plain_attrs(item.attrs))
        if clusters:
            nodes[f"{base}/cluster"] = xr.Dataset(clusters)
    return nodes


@h5_errors
def open_virelay_analysis(path) -> xr.DataTree:
    file = str(path)
    open_h5(path).close()
    manager = CachingFileManager(h5py.File, file, mode="r")
    with ExitStack() as on_error:
        on_error.callback(manager.close)
        tree = xr.DataTree.from_dict(analysis_nodes(manager, file))
        on_error.pop_all()
    tree.attrs["source_file"] = os.path.abspath(file)
    tree.set_close(manager.close)
    return tree


class VirelayBackendEntrypoint(BackendEntrypoint):
    """ViRelAy/CoRelAy HDF5: dataset and attribution files as Datasets, analysis files as DataTrees."""

    description = "ViRelAy/CoRelAy HDF5 dataset, attribution and analysis files in relaylab's canonical form"
    url = "https://github.com/relaylab/relaylab"
    open_dataset_parameters = ("filename_or_obj", "drop_variables", "kind", "layout", "value_range", "input_width",
                               "input_height", "down_sampling_method", "up_sampling_method")

    def open_dataset(self, filename_or_obj, *, drop_variables=None, kind="auto", layout=None, value_range=None,
                     input_width=None, input_height=None, down_sampling_method="none", up_sampling_method="none"):
        """`input_width`/`input_height` and the sampling methods, as in a project file, bring per-sample images of
        different shapes to one size."""
        sampling = None
        if input_width is not None or input_height is not None:
            from .imagedir import Sampling, raise_problems, sampling_problems

            raise_problems(sampling_problems(str(filename_or_obj), input_width, input_height, down_sampling_method,
                                             up_sampling_method), str(filename_or_obj))
            sampling = Sampling(input_width, input_height, up_sampling_method, down_sampling_method)
        ds = open_virelay_dataset(filename_or_obj, kind=kind, layout=layout, value_range=value_range, sampling=sampling)
        return ds.drop_vars(drop_variables or [], errors="ignore")

    def open_datatree(self, filename_or_obj, *, drop_variables=None, **kwargs):
        return open_virelay_analysis(filename_or_obj)

    def open_groups_as_dict(self, filename_or_obj, **kwargs):
        return open_virelay_analysis(filename_or_obj).to_dict()

    def guess_can_open(self, filename_or_obj) -> bool:
        try:
            path = Path(filename_or_obj)
        except TypeError:
            return False
        if path.suffix.lower() not in (".h5", ".hdf5", ".hdf"):
            return False
        try:
            with h5py.File(path, "r") as h5:
                return any(k in h5 for k in ("data", "attribution"))
        except OSError:
            return False
