"""relaylab's Zarr v3 project store: one store per project, written resumably, never read half-written.

Layout (documented in schemas/README.md, checked by schemas/store.schema.json)::

    project.zarr/                      root attrs["relaylab"]: format, version, status, project, dataset, label_map
      inputs/                          input (sample, channel, y, x), label, sample
      attributions/<name>/             attribution (sample, channel, y, x), prediction (sample, class), label, sample
      activations/<name>/<layer>/      activation (sample, ...)
      analyses/<name>/<category>/      index (member); embedding/<name>: embedding (member, component), eigenvalue;
                                       cluster: one (member,) variable per clustering
      analyses/<name>/_packs/<first>/  small categories written together: the same nodes, members concatenated,
                                       eigenvalues stacked along `category`; attrs: categories, members
      _progress/<group>                one bool per block already written (only while a group is being written)

Image-like arrays are sharded: one sample (or ~256 KiB of small samples) per inner chunk, so the viewer reads one sample
without touching its neighbours, and ~32 MiB per shard, so batch jobs read big sequential pieces. A group is written
in shard-aligned blocks; each block's completion is recorded in `_progress`, so a killed writer restarted with the
same input resumes after the last finished block. Groups carry attrs["relaylab"]["status"]: readers refuse a group
(or a store) that is not "complete".

A job that fails keeps what it committed (a block is recorded only after its data is stored) and removes what it
began and never got to commit to: a group it created with no block written, a store (`output_store`) it created
with nothing in it, so no "writing" group is left that nothing can finish. Each block is read and written inside a
`relaylab.errors.step`, so an unexpected exception says which group, which samples and which file it came from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path

import numcodecs
import numpy as np
import xarray as xr
import zarr
from tqdm.auto import tqdm
from zarr.storage import MemoryStore

from .. import __version__
from ..compute import usable_cores
from ..errors import IncompleteStoreError, Problem, RelaylabError, step
from .dims import SAMPLE
from .labels import label_map_entries, label_map_from_entries
from .shards import ShardWriter

log = logging.getLogger(__name__)

STORE_FORMAT = "relaylab-store"
FORMAT_VERSION = 1
INNER_CHUNK_BYTES = 256 * 2**10  # smaller inner chunks convert slower (a codec call each); a 224² RGB sample is 150 KB
SHARD_BYTES = 32 * 2**20
# a copy reads and writes several shards per block: each block has a fixed Python cost (xarray, checks, encoding)
# comparable to copying one shard (`python -m benchmarks io` measures both)
SHARDS_PER_COPY_BLOCK = 4
PROGRESS = "_progress"
# LZ4 with bit shuffle: on float32 attributions in 256 KiB chunks it compresses as well as Zstd with bit shuffle
# and encodes and decodes several times faster; on uint8 images it is faster for a slightly smaller ratio.
COMPRESSORS = {
    "lz4": zarr.codecs.BloscCodec(cname="lz4", clevel=1, shuffle="bitshuffle"),
    "zstd": zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),
}
COMPRESSIONS = ("auto", *COMPRESSORS, "none")
# "auto" stores a variable with LZ4 when LZ4 shrinks a sample of it by at least a fifth, and uncompressed otherwise
# (as ZFS and btrfs skip blocks that do not compress). Images and attributions rarely get there (photographs and
# heatmaps compress little); below it, LZ4 costs a few-core machine more time than the bytes it saves, since
# every viewer read decodes.
AUTO_MIN_RATIO = 1.25
AUTO_PROBE_CHUNKS = 8

BlockCheck = Callable[[xr.Dataset, slice], list[Problem]]


def is_store(path: str | Path) -> bool:
    return (Path(path) / "zarr.json").is_file()


def _root(path: str | Path, mode: str = "r") -> zarr.Group:
    path = Path(path)
    if not is_store(path):
        raise RelaylabError.at(path, "zarr.json", "a relaylab Zarr v3 store", "no zarr.json")
    root = zarr.open_group(str(path), mode=mode, zarr_format=3)
    meta = root.attrs.get("relaylab")
    if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
        raise RelaylabError.at(path, "zarr.json#attributes.relaylab", f"format '{STORE_FORMAT}'", "a Zarr group that relaylab did not write")
    if meta.get("version", 0) > FORMAT_VERSION:
        raise RelaylabError.at(path, "zarr.json#attributes.relaylab.version", f"version <= {FORMAT_VERSION}", str(meta.get("version")))
    return root


def store_metadata(path: str | Path) -> dict:
    return dict(_root(path).attrs["relaylab"])


def create_store(path: str | Path, *, project: dict, dataset: dict, label_map: xr.Dataset, source: str) -> dict:
    """Create the root group, or return the metadata of an unfinished store started from the same `source`."""
    path = Path(path)
    if is_store(path):
        meta = store_metadata(path)
        if meta.get("source") != source:
            raise RelaylabError.at(path, "zarr.json#attributes.relaylab.source", f"a store converted from {source}",
                                   f"one from {meta.get('source')}; choose another output or delete it")
        if meta.get("status") == "complete":
            raise RelaylabError.at(path, "", "a new output path", "a complete store already exists there")
        log.info("resuming the unfinished store %s", path)
        return meta
    if path.exists() and any(path.iterdir()):
        raise RelaylabError.at(path, "", "a new or empty output folder", "a non-empty folder that is not a relaylab store")
    meta = {
        "format": STORE_FORMAT, "version": FORMAT_VERSION, "status": "writing", "created_by": f"relaylab {__version__}",
        "source": source, "project": project, "dataset": dataset, "label_map": label_map_entries(label_map),
    }
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.attrs["relaylab"] = meta
    return meta


def update_store_metadata(path: str | Path, **changes) -> None:
    root = _root(path, mode="r+")
    root.attrs["relaylab"] = {**root.attrs["relaylab"], **changes}


def store_label_map(path: str | Path) -> xr.Dataset:
    return label_map_from_entries(store_metadata(path)["label_map"])


# ----------------------------------------------------------------------------------------------- sample-wise groups


def block_rows(ds: xr.Dataset) -> int:
    """Samples per shard (the unit of resumable writes): about SHARD_BYTES of the widest per-sample variable."""
    per_sample = max(
        (math.prod(v.shape) // max(1, v.sizes[SAMPLE])) * v.dtype.itemsize for v in ds.variables.values() if SAMPLE in v.dims
    )
    inner = inner_rows(per_sample)
    return max(inner, SHARD_BYTES // max(1, per_sample) // inner * inner)


def copy_block_rows(ds: xr.Dataset) -> int:
    """Samples per write block of a copy (`write_dataset`'s default): SHARDS_PER_COPY_BLOCK whole shards."""
    return block_rows(ds) * SHARDS_PER_COPY_BLOCK


def inner_rows(per_sample_bytes: int) -> int:
    return max(1, INNER_CHUNK_BYTES // max(1, per_sample_bytes))


def sample_variables(ds: xr.Dataset) -> list[str]:
    """Variables written block by block: every non-index variable along `sample`."""
    return [name for name, v in ds.variables.items() if SAMPLE in v.dims and name not in ds.indexes]


def zarr_encoding(ds: xr.Dataset, rows: int, compression: str | dict[str, str] = "lz4") -> dict:
    """Sharded, chunked encodings of the sample variables; `compression` names a key of COMPRESSORS or "none",
    for all image-like variables or per variable."""
    encoding = {}
    for name in sample_variables(ds):
        v = ds.variables[name]
        shard = tuple(rows if d == SAMPLE else s for d, s in zip(v.dims, v.shape))
        if v.ndim >= 3 and v.dtype != object:
            per_sample = math.prod(v.shape) // max(1, v.sizes[SAMPLE]) * v.dtype.itemsize
            inner_samples = min(rows, inner_rows(per_sample))
            while rows % inner_samples:  # inner chunks tile the shard (variables narrower than the widest, which sets `rows`)
                inner_samples -= 1
            inner = tuple(inner_samples if d == SAMPLE else s for d, s in zip(v.dims, v.shape))
            choice = compression.get(name, "lz4") if isinstance(compression, dict) else compression
            encoding[name] = {"chunks": inner, "shards": shard,
                              "compressors": [COMPRESSORS[choice]] if choice != "none" else []}
        else:
            encoding[name] = {"chunks": shard}
    return encoding


def choose_compression(ds: xr.Dataset, compression: str) -> dict[str, str]:
    """The compression of each image-like sample variable: `compression` itself, or for "auto" LZ4 or none,
    decided on the first AUTO_PROBE_CHUNKS inner chunks of the data (chunk by chunk, as they will be stored)."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, not {compression!r}")
    chosen = {}
    for name in sample_variables(ds):
        v = ds[name]
        if v.ndim < 3 or v.dtype == object:
            continue
        if compression != "auto":
            chosen[name] = compression
            continue
        per_chunk = inner_rows(math.prod(v.shape[1:]) * v.dtype.itemsize)
        probe = np.ascontiguousarray(v.isel({SAMPLE: slice(0, per_chunk * AUTO_PROBE_CHUNKS)}).load(scheduler="synchronous").values)
        codec = numcodecs.Blosc(cname="lz4", clevel=1, shuffle=numcodecs.Blosc.BITSHUFFLE)
        stored = sum(len(codec.encode(probe[i:i + per_chunk])) for i in range(0, len(probe), per_chunk))
        chosen[name] = "lz4" if probe.nbytes >= AUTO_MIN_RATIO * max(1, stored) else "none"
    return chosen


def fingerprint(ds: xr.Dataset, rows: int) -> str:
    """What a resumed write must match: variables, shapes, dtypes, block size, and the attributes that say where
    the data came from and how it was made (source files, sampling methods, provenance)."""
    description = {
        "rows": rows,
        "attrs": ds.attrs,  # source files, sampling methods, value range, provenance
        "variables": {n: [list(v.dims), list(v.shape), str(v.dtype), v.attrs] for n, v in ds.variables.items()},
    }
    return _digest(description)


def _digest(description) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:16]


def progress_key(group: str) -> str:
    return f"{PROGRESS}/{group.strip('/').replace('/', '.')}"


def read_group_meta(path: str | Path, group: str) -> dict | None:
    """attributes.relaylab of one group of the store at `path` (None if it is not there); `group_metas` lists all."""
    return group_meta(_root(path), group)


def group_meta(root: zarr.Group, group: str) -> dict | None:
    if group not in root:
        return None
    meta = root[group].attrs.get("relaylab")
    return dict(meta) if isinstance(meta, dict) else None


# ---------------------------------------------------------------------------------------- resumable sample groups


class SampleGroupWriter:
    """A group written block by block along `sample`, resumable: made by `begin_samples`.

    `pending()` lists the blocks an earlier (possibly killed) run did not commit, `commit(b, values)` writes block
    `b` and records it, `finish()` marks the group complete. Blocks are whole shards, so each lands in files of its
    own; a block's values are `{variable: array}` for a plain group, `{"child/variable": array}` for a group of groups.
    Coordinates along `sample` (e.g. `label`) left out of a block are taken from the data the group was begun with.

    Used as a context manager, a group this writer `created` is removed when the `with` body fails before any block
    was committed: nothing is lost, and no empty "writing" group is left to block a run with other settings.
    """

    def __init__(self, path: Path, group: str, variables: list[str], n: int, rows: int, meta: dict,
                 coords: dict[str, xr.DataArray] | None = None, created: bool = False):
        self.path, self.group, self.variables, self.n, self.rows, self.meta = path, group, variables, n, rows, meta
        self.coords = coords or {}
        self.created = created
        self.n_blocks = max(1, math.ceil(n / rows))
        self._root = _root(path, mode="r+")
        self._arrays = {name: self._root[f"{group}/{name}"] for name in variables}
        self._pool = ThreadPoolExecutor(max_workers=usable_cores())
        self._writers = {name: ShardWriter(array, self._pool) if ShardWriter.usable(array) else None
                         for name, array in self._arrays.items()}

    @property
    def complete(self) -> bool:
        return self.meta.get("status") == "complete"

    def rows_of(self, b: int) -> slice:
        return slice(b * self.rows, min(self.n, (b + 1) * self.rows))

    def pending(self) -> list[int]:
        if self.complete:
            return []
        return np.flatnonzero(~self._root[progress_key(self.group)][:]).tolist()

    def encode(self, b: int, values: dict[str, np.ndarray]) -> dict:
        """Block `b` made ready to store: whole shards encoded (on all cores), other variables as they are."""
        sl = self.rows_of(b)
        with step(f"encoding {self.group} {samples(sl)}", self.path):
            values = {**{name: coord[sl].values for name, coord in self.coords.items() if name not in values}, **values}
            missing = set(self.variables) - set(values)
            if missing:
                raise ValueError(f"block {b} of {self.group} lacks {', '.join(sorted(missing))}")
            return {name: encoded if writer is not None and (encoded := writer.encode(sl, values[name])) is not None else values[name]
                    for name, writer in self._writers.items()}

    def store(self, b: int, encoded: dict) -> None:
        """Write an encoded block, then record it as done (a kill or failure before that redoes the whole block)."""
        sl = self.rows_of(b)
        with step(f"writing {self.group} {samples(sl)}", self.path):
            for name, value in encoded.items():
                if isinstance(value, list):  # shards from `encode`
                    self._writers[name].store(value)
                else:
                    self._arrays[name][sl] = value
            self._root[progress_key(self.group)][b] = True

    def commit(self, b: int, values: dict[str, np.ndarray]) -> None:
        self.store(b, self.encode(b, values))

    def finish(self) -> None:
        """Every block is committed: status "complete", progress record removed."""
        if self.complete:
            return
        if self.pending():
            raise RuntimeError(f"{self.group}: blocks {self.pending()[:5]} are not committed")
        self.meta = {**group_meta(self._root, self.group), "status": "complete"}
        self._root[self.group].attrs["relaylab"] = self.meta
        del self._root[progress_key(self.group)]

    def close(self) -> None:
        self._pool.shutdown()

    def discard_if_unstarted(self) -> None:
        """Remove the group if this writer created it and no block of it is committed (after a failure)."""
        if not self.created or self.complete:
            return
        try:
            if len(self.pending()) == self.n_blocks:
                remove_group(self.path, self.group)
                log.info("removed %s/%s: the job stopped before writing any of it", self.path, self.group)
        except Exception as error:  # never hide the failure being handled behind one of cleaning up
            log.warning("could not remove the unstarted group %s/%s: %s", self.path, self.group, error)

    def __enter__(self) -> SampleGroupWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close()
        if error is not None:
            self.discard_if_unstarted()


def begin_samples(path: str | Path, group: str, data: xr.Dataset | Mapping[str, xr.Dataset], *, kind: str,
                  attrs: dict | None = None, rows: int | None = None, compression: str = "lz4") -> SampleGroupWriter:
    """Create `group` for a block-by-block write of `data`, or reopen the unfinished (or complete) group an earlier
    run wrote from the same data; a group from other data is an error.

    `data` is one Dataset, or child name → Dataset for a group of groups that share one block layout (an activation
    set: one child per layer); only its shapes, dtypes, coordinates and attributes are read here, so its sample
    variables may be lazy. `rows`: samples per block, whole shards (default `copy_block_rows`, for copies; a job
    that computes each block passes `block_rows`, so a kill loses at most one shard's work). `compression` (one of
    COMPRESSIONS) is settled when the group is created; a resumed write keeps it.
    """
    path = Path(path)
    root = _root(path, mode="r+")
    if isinstance(data, xr.Dataset):
        shard = block_rows(data)
        rows = rows or copy_block_rows(data)
        if rows % shard:
            raise ValueError(f"write blocks of {rows} samples are not whole shards of {shard}")
        stamp, children = fingerprint(data, rows), {"": data}
    else:
        children = dict(data)
        shard = rows = min(block_rows(ds) for ds in children.values())
        stamp = _digest({"attrs": attrs, "children": {c: fingerprint(ds, rows) for c, ds in children.items()}})
    n = next(iter(children.values())).sizes[SAMPLE]
    meta = group_meta(root, group)
    if meta is not None and meta.get("fingerprint") != stamp:
        raise RelaylabError.at(path, group, "a group written from the same source data and settings, to resume it",
                               "one written with other settings or from other data; delete it or write to another name")
    created = meta is None
    if created:
        try:
            with step(f"creating {group}", path):
                meta = _create_group(path, group, children, kind, attrs, stamp, n, rows, shard, compression)
        except BaseException:  # a half-made group (no metadata, or no progress record) is removed, not left behind
            try:
                remove_group(path, group)
            except Exception as error:
                log.warning("could not remove the half-made group %s/%s: %s", path, group, error)
            raise
    elif meta.get("status") == "complete":
        log.info("%s/%s is complete, skipping", path, group)
    variables = [f"{child}/{name}".lstrip("/") for child, ds in children.items() for name in sample_variables(ds)]
    coords = {f"{child}/{name}".lstrip("/"): ds[name] for child, ds in children.items() for name in sample_variables(ds)
              if name in ds.coords}
    return SampleGroupWriter(path, group, variables, n, rows, meta, coords, created=created)


def _create_group(path: Path, group: str, children: dict[str, xr.Dataset], kind: str, attrs: dict | None, stamp: str,
                  n: int, rows: int, shard: int, compression: str) -> dict:
    """Lay out a new group (empty arrays, a progress record of its blocks), its metadata written last; returns it."""
    root = _root(path, mode="r+")
    if "" not in children:
        root.create_group(group, overwrite=True)
    chosen = {}
    for child, ds in children.items():
        choice = choose_compression(ds, compression)
        _create_template(path, f"{group}/{child}".rstrip("/"), ds, shard, choice)
        chosen.update({f"{child}/{name}".lstrip("/"): value for name, value in choice.items()})
    root = _root(path, mode="r+")
    n_blocks = max(1, math.ceil(n / rows))
    root.create_array(progress_key(group), shape=(n_blocks,), chunks=(1,), dtype=bool, fill_value=False, overwrite=True,
                      attributes={"group": group})
    meta = {"kind": kind, "fingerprint": stamp, "block_rows": shard, "write_rows": rows, "compression": chosen,
            **(attrs or {}), "status": "writing", "blocks": n_blocks}
    root[group].attrs["relaylab"] = meta
    return meta


def _create_template(path: Path, group: str, ds: xr.Dataset, shard: int, compression: str | dict[str, str]) -> None:
    """The group's arrays, empty: shapes, dtypes, coordinates, attributes and encodings (sharded, `shard` samples per
    shard, inner chunks dividing it)."""
    import dask.array  # only when a group is created: reading a store needs no Dask

    template = ds.copy()
    template.attrs = {}
    for name in sample_variables(ds):  # placeholders: rechunking the real (lazy) data costs seconds of graph building
        var = template[name]
        chunks = tuple(shard if d == SAMPLE else s for d, s in zip(var.dims, var.shape))
        template[name] = var.copy(data=dask.array.empty(var.shape, dtype=var.dtype, chunks=chunks))
    template.to_zarr(str(path), group=group, mode="w", compute=False, encoding=zarr_encoding(ds, shard, compression),
                     consolidated=False, zarr_format=3)


def write_dataset(path: str | Path, group: str, ds: xr.Dataset, *, kind: str, attrs: dict | None = None,
                  check: BlockCheck | None = None, readahead: Callable[[slice], None] | None = None,
                  compression: str = "lz4", rows: int | None = None, progress: bool = True, source: str | None = None) -> None:
    """Copy `ds` into `group` block by block (`begin_samples`), resuming a killed copy of the same data.

    `check(block, rows)` may return problems found in a block (e.g. NaN); they stop the write before that block
    lands, and are raised as a RelaylabError. `readahead(rows)` is told each block's rows one block before they are
    read (e.g. `hdf5.Readahead`), so the source can fetch them while the current block is read. Block i is encoded
    while block i-1 is stored and block i+1 is read. `source` names the file an unexpected exception while reading
    or checking a block came from (default: `ds.attrs["source_file"]`, else the store).
    """
    source = source or ds.attrs.get("source_file") or str(path)
    with begin_samples(path, group, ds, kind=kind, attrs=attrs, rows=rows, compression=compression) as writer:
        todo = writer.pending()
        names = writer.variables
        with tqdm(total=writer.n, initial=writer.n - sum(_size(writer.rows_of(b)) for b in todo), unit="sample", desc=group,
                  disable=not progress, leave=False) as bar, ThreadPoolExecutor(max_workers=1) as storing, \
                closing(_prefetch(ds[names], [writer.rows_of(b) for b in todo], readahead)) as blocks:
            stored = None
            for b in range(len(todo)):
                with step(f"reading {group} {samples(writer.rows_of(todo[b]))}", source):
                    _, block = next(blocks)
                    problems = check(block, writer.rows_of(todo[b])) if check else []
                if problems:
                    raise RelaylabError(problems)  # leaving the `with` waits for the previous block to be stored
                encoded = writer.encode(todo[b], {name: block[name].values for name in names})
                if stored is not None:
                    stored.result()
                stored = storing.submit(lambda b=todo[b], encoded=encoded: (writer.store(b, encoded), bar.update(_size(writer.rows_of(b)))))
            if stored is not None:
                stored.result()
        writer.finish()


def _size(rows: slice) -> int:
    return rows.stop - rows.start


def samples(rows: slice) -> str:
    """Rows for a message: "samples 64–127", "sample 3"."""
    return f"sample {rows.start}" if _size(rows) == 1 else f"samples {rows.start}–{rows.stop - 1}"


def update_group_meta(path: str | Path, group: str, **changes) -> None:
    root = _root(path, mode="r+")
    root[group].attrs["relaylab"] = {**group_meta(root, group), **changes}


def remove_group(path: str | Path, group: str) -> None:
    """Delete `group` and its progress record from a relaylab store (e.g. an analysis made anew with other settings)."""
    root = _root(path, mode="r+")
    if progress_key(group) in root:
        del root[progress_key(group)]
    if group in root:
        del root[group]


def _prefetch(ds: xr.Dataset, blocks: list[slice], readahead: Callable[[slice], None] | None = None) -> Iterator[tuple[int, xr.Dataset]]:
    """(i, rows `blocks[i]` of `ds` loaded): block i+1 is read while block i is used, block i+2 announced."""
    def load(i: int) -> xr.Dataset:
        if readahead is not None and i + 1 < len(blocks):
            readahead(blocks[i + 1])
        # one reader thread beside the encoders: Dask's own thread pool here only adds contention (HDF5 reads are
        # serialised anyway)
        return ds.isel({SAMPLE: blocks[i]}).load(scheduler="synchronous")

    if readahead is not None and blocks:
        readahead(blocks[0])
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, 0) if blocks else None
        for i in range(len(blocks)):
            block = pending.result()
            pending = pool.submit(load, i + 1) if i + 1 < len(blocks) else None
            yield i, block


def require_complete(path: str | Path, group: str, meta: dict | None) -> None:
    if meta is None:
        raise RelaylabError.at(path, group, f"a group '{group}'", "it is missing")
    if meta.get("status") != "complete":
        try:
            done = int(_root(path)[progress_key(group)][:].sum())
        except KeyError:
            done = 0
        raise IncompleteStoreError(Problem(
            str(path), group, "a completely written group",
            f"status '{meta.get('status')}', {done} of {meta.get('blocks', '?')} blocks written by a job that did not finish; "
            "run the same command again to resume it"))


def open_group(path: str | Path, group: str, *, chunks: str | dict | None = "blocks") -> xr.Dataset:
    """A complete group as a lazy Dataset: Dask chunks of one write block (shard) by default, or `chunks=None`
    for plain lazy arrays that read single samples cheaply (the viewer's access pattern)."""
    root = _root(path)
    meta = group_meta(root, group)
    require_complete(path, group, meta)
    if chunks == "blocks":
        chunks = {SAMPLE: meta["block_rows"]} if "block_rows" in meta else {}
    ds = xr.open_zarr(str(path), group=group, consolidated=False, chunks=chunks, zarr_format=3)
    ds.attrs = {**ds.attrs, **{k: v for k, v in meta.items()
                               if k not in ("status", "fingerprint", "blocks", "block_rows", "write_rows", "compression")}}
    ds.attrs.pop("relaylab", None)
    return ds


def unfinished_groups(path: str | Path) -> list[str]:
    """Groups a killed job left in status 'writing' (their `_progress` arrays are still there)."""
    root = _root(path)
    if PROGRESS not in root:
        return []
    return sorted(array.attrs["group"] for _, array in root[PROGRESS].arrays())


def open_tree(path: str | Path, group: str, *, chunks: dict | None = {}) -> xr.DataTree:  # noqa: B006 (never mutated)
    """A complete group of groups (e.g. an activation set, one child per layer) as a lazy DataTree: Dask-backed
    (chunked as stored) by default, plain lazy arrays with `chunks=None`."""
    require_complete(path, group, group_meta(_root(path), group))
    tree = xr.open_datatree(str(path), engine="zarr", group=group, chunks=chunks, consolidated=False, zarr_format=3)
    for node in tree.subtree:
        node.attrs.pop("relaylab", None)
    return tree


def group_metas(path: str | Path) -> dict[str, dict]:
    """attributes.relaylab of every group relaylab wrote, keyed by group path."""
    metas = {}
    for name, member in _root(path).members(max_depth=None):
        meta = member.attrs.get("relaylab") if isinstance(member, zarr.Group) else None
        if isinstance(meta, dict):
            metas[name] = dict(meta)
    return metas


def list_groups(path: str | Path, parent: str) -> list[str]:
    root = _root(path)
    if parent not in root:
        return []
    return sorted(name for name, _ in root[parent].groups())


# ------------------------------------------------------------------------------------------------------- analyses


class TreeEncoder:
    """The Zarr v3 files (path → bytes) of a small DataTree, as xarray's `to_zarr` writes them, made fast for trees
    of one repeated structure: an analysis' categories.

    xarray and zarr pay about a millisecond of event-loop round trips per array, ten times the work of encoding a
    small category's ~10 arrays. So the first tree of each structure (nodes, variables, dtypes, dimensions,
    attributes) is written by xarray into memory and kept as a template; a later tree of that structure reuses the
    template's metadata documents with only the shapes replaced, and encodes each array's one chunk with the same
    codecs (little-endian bytes, then Zstandard, zarr's defaults). Arrays zarr would split into several chunks
    (over `SINGLE_CHUNK_BYTES`), and any other codec, go through xarray."""

    SINGLE_CHUNK_BYTES = 200 * 2**10  # zarr's chunk guess keeps an array whole below 256 KiB

    def __init__(self):
        self.templates: dict[str, dict | None] = {}

    def encode(self, tree: xr.DataTree, relaylab_attrs: dict | None = None) -> dict[str, bytes]:
        nodes = {node.relative_to(tree): _node_dataset(node) for node in tree.subtree}
        key = _structure(nodes, relaylab_attrs)
        template = self.templates.get(key)
        if template is not None:
            files = _from_template(template, nodes, self.SINGLE_CHUNK_BYTES)
            if files is not None:
                return files
        files = _with_xarray(nodes, relaylab_attrs)
        if key not in self.templates:
            self.templates[key] = _template(files, nodes)
        return files


def _node_dataset(node: xr.DataTree) -> xr.Dataset:
    ds = node.to_dataset(inherit=False)
    ds.attrs = {k: v for k, v in ds.attrs.items() if k != "source_file"}
    return ds


def _json_attrs(attrs: Mapping) -> dict:
    """Attributes as xarray stores them in Zarr (arrays as lists): comparable in full, unlike their repr."""
    from xarray.backends.zarr import encode_zarr_attr_value

    return {k: encode_zarr_attr_value(v) for k, v in attrs.items()}


def _structure(nodes: dict[str, xr.Dataset], relaylab_attrs: dict | None) -> str:
    """Everything but the values and sizes: two trees with the same structure get the same metadata from xarray."""
    return json.dumps([relaylab_attrs, [(path, _json_attrs(ds.attrs), sorted(ds.coords),
                                         [(name, var.dtype.str, var.dims, _json_attrs(var.attrs), var.encoding.get("dtype"))
                                          for name, var in sorted(ds.variables.items())]) for path, ds in nodes.items()]],
                      sort_keys=True, default=str)


def _with_xarray(nodes: dict[str, xr.Dataset], relaylab_attrs: dict | None) -> dict[str, bytes]:
    staged = MemoryStore()
    for path, ds in nodes.items():  # the root node comes first
        ds.to_zarr(staged, group=None if path == "." else path, mode="w", consolidated=False, zarr_format=3)
    if relaylab_attrs is not None:
        zarr.open_group(staged, mode="r+", zarr_format=3).attrs["relaylab"] = relaylab_attrs
    return {key: value.to_bytes() for key, value in staged._store_dict.items()}


def _array_key(path: str, name: str) -> str:
    return name if path == "." else f"{path}/{name}"


def _template(files: dict[str, bytes], nodes: dict[str, xr.Dataset]) -> dict | None:
    """The metadata documents of a tree xarray wrote, when every array is one chunk with the default codecs."""
    arrays = {}
    for path, ds in nodes.items():
        for name, var in ds.variables.items():
            key = _array_key(path, name)
            meta = json.loads(files[f"{key}/zarr.json"])
            codecs = meta.get("codecs", [])
            if (meta["chunk_grid"]["configuration"]["chunk_shape"] != list(var.shape) or var.size == 0 or var.ndim == 0
                    or [c["name"] for c in codecs] != ["bytes", "zstd"]
                    or codecs[0].get("configuration", {}).get("endian", "little") != "little"  # one-byte types name no endian
                    or codecs[1].get("configuration", {}).get("checksum")):
                return None
            arrays[key] = (path, name, meta, numcodecs.Zstd(level=codecs[1]["configuration"]["level"]))
    groups = {key: value for key, value in files.items()
              if key.endswith("zarr.json") and key.removesuffix("zarr.json").rstrip("/") not in arrays}
    return {"arrays": arrays, "groups": groups}


def _from_template(template: dict, nodes: dict[str, xr.Dataset], limit: int) -> dict[str, bytes] | None:
    files = dict(template["groups"])
    for key, (path, name, meta, codec) in template["arrays"].items():
        var = nodes[path].variables[name]
        values = np.ascontiguousarray(var.values)
        if values.dtype.str != np.dtype(meta["data_type"]).newbyteorder("<").str or values.nbytes > limit or values.size == 0:
            return None
        meta = {**meta, "shape": list(values.shape),
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(values.shape)}}}
        files[f"{key}/zarr.json"] = json.dumps(meta, indent=2).encode()
        files[f"{key}/c/" + "/".join("0" * values.ndim)] = bytes(codec.encode(values.astype(values.dtype.newbyteorder("<"), copy=False)))
    return files


def _write_files(folder: Path, files: dict[str, bytes], *, clear: bool = True) -> None:
    """`files` (path in `folder` → bytes) written with the folder's own zarr.json, which says "complete", last."""
    if clear:
        shutil.rmtree(folder, ignore_errors=True)  # stale nodes of a killed write
    made: set[Path] = set()
    for key in sorted(files, key=lambda k: k == "zarr.json"):
        target = folder / key
        if target.parent not in made:  # each directory created once
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        target.write_bytes(files[key])


PACKS = "_packs"  # analyses/<name>/_packs/<first category>/: small categories written together (AnalysisWriter.commit_pack)
PACK_MEMBERS = 4_000  # members per pack that write_analysis makes (relaylab analyze packs one task's categories)
MEMBER, PACKED = "member", "category"
ANALYSES = "analyses"
CATEGORY_ATTRS = "category_attrs"  # a pack's root attribute: each category's own root attributes


def in_groups(sizes: Mapping[str, int], limit: int) -> list[list[str]]:
    """The names of `sizes` in their order, cut into consecutive groups whose sizes add up to at most `limit` (a name
    larger than `limit` forms a group of its own)."""
    groups: list[list[str]] = []
    total = 0
    for name, size in sizes.items():
        if not groups or total + size > limit:
            groups.append([])
            total = 0
        groups[-1].append(name)
        total += size
    return groups


def pack_trees(trees: Mapping[str, xr.DataTree]) -> xr.DataTree | None:
    """Category trees of one structure as one tree: variables along `member` concatenated in the order of `trees`,
    the others (eigenvalues) stacked along a new `category` dimension, each category's root attributes listed in the
    pack's (CATEGORY_ATTRS); None when the structures differ.
    `unpack_tree` is the inverse (with the member counts and names the pack's metadata records)."""
    nodes = [{node.relative_to(tree): node.to_dataset(inherit=False).reset_coords() for node in tree.subtree}
             for tree in trees.values()]
    first = nodes[0]

    def structure(node_datasets: dict[str, xr.Dataset]) -> str:  # the root's attributes are each category's own
        return json.dumps({path: [_json_attrs(ds.attrs) if path != "." else None,
                                  {name: (var.dims, var.dtype.str, _json_attrs(var.attrs), {d: n for d, n in var.sizes.items() if d != MEMBER})
                                   for name, var in sorted(ds.variables.items())}]
                           for path, ds in sorted(node_datasets.items())}, sort_keys=True, default=str)

    shape = structure(first)
    if any(structure(other) != shape for other in nodes[1:]):
        return None
    packed = {}
    for path, ds in first.items():
        variables = {}
        for name, var in ds.variables.items():
            if MEMBER in var.dims:
                values = np.concatenate([n[path][name].values for n in nodes], axis=var.dims.index(MEMBER))
                variables[name] = (var.dims, values, var.attrs)
            else:
                variables[name] = ((PACKED, *var.dims), np.stack([n[path][name].values for n in nodes]), var.attrs)
        attrs = ds.attrs if path != "." else {  # each category's own (e.g. its display name), in order, as JSON values
            CATEGORY_ATTRS: [_json_attrs({k: v for k, v in n["."].attrs.items() if k != "source_file"}) for n in nodes]}
        packed["/" if path == "." else f"/{path}"] = xr.Dataset(variables, attrs=attrs)
    return xr.DataTree.from_dict(packed)


def unpack_tree(pack: xr.DataTree, categories: list[str], members: list[int]) -> dict[str, xr.DataTree]:
    """The category trees of a pack, in memory (packs hold small categories only)."""
    offsets = np.concatenate([[0], np.cumsum(members)])
    nodes = {node.relative_to(pack): node.to_dataset(inherit=False).load() for node in pack.subtree}
    out = {}
    for i, category in enumerate(categories):
        members_i = slice(int(offsets[i]), int(offsets[i + 1]))
        tree = {}
        for path, ds in nodes.items():
            variables = {name: (var.dims[1:], var.values[i], var.attrs) if var.dims[:1] == (PACKED,)
                         else (var.dims, var.isel({MEMBER: members_i}).values, var.attrs) for name, var in sorted(ds.variables.items())}
            attrs = ds.attrs if path != "." else ds.attrs.get(CATEGORY_ATTRS, [{}] * len(categories))[i]
            tree["/" if path == "." else f"/{path}"] = xr.Dataset(variables, attrs=attrs)
        out[category] = xr.DataTree.from_dict(tree)
    return out


class AnalysisWriter:
    """An analysis written category by category, resumable: made by `begin_analysis`. The same verbs as
    `SampleGroupWriter`, with categories for blocks: `pending(categories)`, `commit(category, tree)` (or
    `commit_pack(trees)` for several small ones), `finish()`; as a context manager, an analysis this writer `created`
    is removed if the `with` body fails before any category was committed."""

    def __init__(self, path: Path, name: str, done: set[str], created: bool = False, root: str = ANALYSES):
        self.path, self.name, self.group, self.done = path, name, f"{root}/{name}", done
        self.created, self.root = created, root
        self.encoder = TreeEncoder()

    def __enter__(self) -> AnalysisWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is not None and self.created and not self.done and not complete_categories(_root(self.path), self.group):
            try:
                remove_group(self.path, self.group)
                log.info("removed %s/%s: the job stopped before writing any of it", self.path, self.group)
            except Exception as cleanup:  # never hide the failure being handled behind one of cleaning up
                log.warning("could not remove the unstarted analysis %s/%s: %s", self.path, self.group, cleanup)

    def pending(self, categories: Iterable[str]) -> list[str]:
        return [c for c in categories if c not in self.done]

    def for_worker(self) -> AnalysisWriter:
        """A writer of the same analysis to send to a Dask worker, which commits its categories itself (in parallel
        with the other workers, and without sending them back); `done` is not shared: add what the worker reports."""
        return AnalysisWriter(self.path, self.name, set(), root=self.root)

    def commit(self, category: str, tree: xr.DataTree) -> None:
        """Write one category, then mark it complete (a category a kill interrupted is redone whole): its files are
        encoded in memory (`TreeEncoder`) and written with the category's own metadata, which carries status
        "complete", last."""
        with step(f"writing {self.group}/{category}", self.path):
            self._commit(category, tree)
        self.record([category])

    def record(self, categories: Iterable[str]) -> None:
        """Note categories as committed, by this writer or by a worker's (`for_worker`)."""
        self.done.update(categories)

    def _commit(self, category: str, tree: xr.DataTree) -> None:
        _write_files(self.path / self.group / category, self.encoder.encode(tree, {"kind": "category", "status": "complete"}))

    def commit_pack(self, trees: Mapping[str, xr.DataTree]) -> None:
        """Write several categories as one pack (`pack_trees`), then mark them complete; one category, or trees of
        different structures, are committed one by one instead. A category folder is ~40 files and folders, which
        on a slow file system cost more than analysing a small category; a pack of any number of categories is as
        many as one category's."""
        categories = list(trees)
        pack = pack_trees(trees) if len(trees) > 1 and all("index" in t.variables for t in trees.values()) else None
        if pack is None:
            for category, tree in trees.items():
                self.commit(category, tree)
            return
        with step(f"writing {self.group}/{PACKS}/{categories[0]} ({len(categories)} categories)", self.path):
            packs = self.path / self.group / PACKS
            if not (packs / "zarr.json").is_file():
                _write_files(packs, {"zarr.json": json.dumps({"attributes": {}, "zarr_format": 3, "node_type": "group"}).encode()},
                             clear=False)
            meta = {"kind": "category-pack", "status": "complete", "categories": categories,
                    "members": [int(trees[c]["index"].size) for c in categories]}
            _write_files(packs / categories[0], self.encoder.encode(pack, meta))
        self.record(categories)

    def finish(self, **attrs) -> None:
        """Every category is committed: status "complete", plus `attrs` (e.g. the categories skipped)."""
        update_group_meta(self.path, self.group, **attrs, status="complete")


def begin_analysis(path: str | Path, name: str, attrs: dict | None = None, *, replace: bool = False, root: str = ANALYSES,
                   kind: str = "analysis") -> AnalysisWriter:
    """Create `analyses/<name>`, or reopen the one an earlier run with the same settings (`attrs`) began or finished.
    One made with other settings is an error, or with `replace` removed and begun anew. `root` and `kind`: another
    per-category result written the same way (a census: `census/<analysis>`, kind "census")."""
    path, group = Path(path), f"{root}/{name}"
    store_root = _root(path, mode="r+")
    meta = group_meta(store_root, group)
    if meta is not None and attrs and any(meta.get(k) != v for k, v in attrs.items()):
        if not replace:
            raise RelaylabError.at(path, group, f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} run with the same settings, to resume it",
                                   "one with other settings; choose another name or delete it")
        log.info("%s/%s was made with other settings; making it anew", path, group)
        remove_group(path, group)
        meta = None
    if meta is None:
        store_root.create_group(group, overwrite=True, attributes={"relaylab": {"kind": kind, "status": "writing", **(attrs or {})}})
        return AnalysisWriter(path, name, set(), created=True, root=root)
    for pack, pack_meta in pack_metas(store_root, group).items():  # a pack a kill interrupted is redone whole
        if (pack_meta or {}).get("status") != "complete":
            shutil.rmtree(path / group / PACKS / pack, ignore_errors=True)
    return AnalysisWriter(path, name, complete_categories(store_root, group), root=root)


def complete_categories(root: zarr.Group, group: str) -> set[str]:
    """The categories of the analysis `group` whose commit finished: complete category folders, and the categories of
    complete packs."""
    done = {c for c, _ in root[group].groups() if c != PACKS and (group_meta(root, f"{group}/{c}") or {}).get("status") == "complete"}
    for meta in pack_metas(root, group).values():
        if (meta or {}).get("status") == "complete":
            done.update(meta.get("categories", []))
    return done


def pack_metas(root: zarr.Group, group: str) -> dict[str, dict]:
    """attributes.relaylab of each pack of the analysis `group` (None for one a kill left without it)."""
    if PACKS not in root[group]:
        return {}
    return {name: group_meta(root, f"{group}/{PACKS}/{name}") for name, _ in root[group][PACKS].groups()}


def write_analysis(path: str | Path, name: str, tree: xr.DataTree, *, attrs: dict | None = None, replace: bool = False,
                   progress: bool = True) -> None:
    """Write an analysis, small categories together as packs of up to PACK_MEMBERS members (`commit_pack`), larger
    ones in a folder each; finished categories and packs are kept when a killed write is resumed."""
    with begin_analysis(path, name, attrs, replace=replace) as writer:
        todo = writer.pending(tree.children)
        members = {c: tree[c]["index"].size if "index" in tree[c].variables else PACK_MEMBERS for c in todo}
        groups = [{c: tree[c] for c in names} for names in in_groups(members, PACK_MEMBERS)]
        # writing is mostly waiting on the file system: packs and folders are written side by side
        with ThreadPoolExecutor(max_workers=8) as pool, \
                tqdm(total=len(todo), desc=f"analyses/{name}", unit="category", disable=not progress, leave=False) as bar:
            for group in pool.map(lambda group: writer.commit_pack(group) or group, groups):
                bar.update(len(group))
        writer.finish()


def open_analysis(path: str | Path, name: str, *, chunks: dict | None = {}, root: str = ANALYSES) -> xr.DataTree:  # noqa: B006
    """A complete analysis (one child per category) as a lazy DataTree; `chunks` as in `open_tree`; `root` as in
    `begin_analysis`."""
    group = f"{root}/{name}"
    require_complete(path, group, group_meta(_root(path), group))
    tree = xr.open_datatree(str(path), engine="zarr", group=group, chunks=chunks, consolidated=False, zarr_format=3)
    unpacked: set[str] = set()
    if PACKS in tree.children:  # small categories written together: unpacked into one child each
        packs = tree[PACKS]
        children = {category: child for category, child in tree.children.items() if category != PACKS}
        for pack in packs.children.values():
            meta = pack.attrs.get("relaylab")
            require_complete(path, f"{group}/{PACKS}/{pack.name}", meta)
            children.update(unpack_tree(pack, meta["categories"], meta["members"]))
            unpacked.update(meta["categories"])
        tree = xr.DataTree(dataset=tree.to_dataset(inherit=False), children=dict(sorted(children.items())))
    for node in tree.subtree:
        meta = node.attrs.pop("relaylab", None)
        if node is not tree and node.parent is tree and node.name not in unpacked:
            require_complete(path, f"{group}/{node.name}", meta)
        if "index" in node.data_vars:
            node.dataset = node.dataset.set_coords("index")
        if "eigenvalue" in node.data_vars:
            node.dataset = node.dataset.set_coords("eigenvalue")
    return tree


def remove(path: str | Path) -> None:
    """Delete an output this run created (used when bad input is found part-way, so nothing half-written remains)."""
    shutil.rmtree(path, ignore_errors=True)


def committed_anything(path: str | Path) -> bool:
    """Whether the store at `path` holds committed work: a complete group (or analysis category), or a block
    recorded in `_progress`. A store too broken to tell holds none."""
    try:
        root = _root(path)
        if PROGRESS in root and any(bool(np.any(array[:])) for _, array in root[PROGRESS].arrays()):
            return True
        return any(meta.get("status") == "complete" for meta in group_metas(path).values())
    except (RelaylabError, OSError, KeyError, ValueError, TypeError):
        return False


@contextmanager
def output_store(path: str | Path, *, bad_input_removes: bool = True) -> Iterator[Path]:
    """Guard a job that makes the store at `path` (convert, ingest): when the body fails, a store this run created
    is removed if nothing in it was committed, or, with `bad_input_removes`, on bad input (a RelaylabError, which
    would stop a re-run at the same place anyway). A store that was there before stays as it is, resumable; so does
    one with committed blocks, whatever stopped it (a bug, a full disk, Ctrl-C)."""
    path = Path(path)
    resuming = is_store(path)
    try:
        yield path
    except BaseException as error:
        if not resuming and is_store(path) and ((bad_input_removes and isinstance(error, RelaylabError))
                                                or not committed_anything(path)):
            remove(path)
            log.info("removed %s: the job that created it stopped (%s)", path, type(error).__name__)
        raise
