"""relaylab's Zarr v3 project store: one store per project, written resumably, never read half-written.

Layout (documented in schemas/README.md, checked by schemas/store.schema.json)::

    project.zarr/                      root attrs["relaylab"]: format, version, status, project, dataset, label_map
      inputs/                          input (sample, channel, y, x), label, sample
      attributions/<name>/             attribution (sample, channel, y, x), prediction (sample, class), label, sample
      activations/<name>/<layer>/      activation (sample, ...)
      analyses/<name>/<category>/      index (member); embedding/<name>: embedding (member, component), eigenvalue;
                                       cluster: one (member,) variable per clustering
      _progress/<group>                one bool per block already written (only while a group is being written)

Image-like arrays are sharded: one sample (or ~256 KiB of small samples) per inner chunk, so the viewer reads one sample
without touching its neighbours, and ~32 MiB per shard, so batch jobs read big sequential pieces. A group is written
in shard-aligned blocks; each block's completion is recorded in `_progress`, so a killed writer restarted with the
same input resumes after the last finished block. Groups carry attrs["relaylab"]["status"]: readers refuse a group
(or a store) that is not "complete".
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask.array
import numcodecs
import numpy as np
import xarray as xr
import zarr
from tqdm.auto import tqdm
from zarr.codecs import BytesCodec, ShardingCodec
from zarr.core.buffer import BufferPrototype, default_buffer_prototype
from zarr.core.buffer.cpu import Buffer as CpuBuffer
from zarr.core.chunk_grids import RegularChunkGrid
from zarr.core.codec_pipeline import fill_value_or_default
from zarr.core.sync import sync
from zarr.storage import LocalStore, MemoryStore

from .. import __version__
from ..errors import IncompleteStoreError, Problem, RelaylabError
from .dims import SAMPLE
from .labels import label_map_entries, label_map_from_entries

log = logging.getLogger(__name__)

STORE_FORMAT = "relaylab-store"
FORMAT_VERSION = 1
INNER_CHUNK_BYTES = 256 * 2**10  # 64 KiB measured 1.3x slower to convert (per-chunk codec calls); a 224² RGB sample is 150 KB
SHARD_BYTES = 32 * 2**20
# a copy reads and writes several shards at a time: each block costs ~10 ms of Python (xarray, checks, encoding)
# besides the copying, about as long as copying 32 MiB at ~3 GB/s
SHARDS_PER_COPY_BLOCK = 4
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
PROGRESS = "_progress"
# LZ4 with bit shuffle: on float32 attributions in 256 KiB chunks it compresses as well as Zstd level 1 with bit
# shuffle (1.14x) and encodes 3.6x faster (1.8 vs 0.5 GB/s per core), decodes 2.5x faster; on uint8 images it is
# 4.5x faster for 1.07x instead of 1.14x.
COMPRESSORS = {
    "lz4": zarr.codecs.BloscCodec(cname="lz4", clevel=1, shuffle="bitshuffle"),
    "zstd": zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),
}
COMPRESSIONS = ("auto", *COMPRESSORS, "none")
# "auto" stores a variable with LZ4 when LZ4 shrinks a sample of it by at least a fifth, and uncompressed otherwise
# (as ZFS and btrfs skip blocks that do not compress). Images and attributions rarely get there: the demo's LRP
# heatmaps compress 1.16x, its images 1.20x, photographs less. Below it, LZ4 costs a 2-core machine more time than
# the bytes it saves (encoding runs at half the disk's read rate per core, and every viewer read decodes).
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
            inner = tuple(min(rows, inner_rows(per_sample)) if d == SAMPLE else s for d, s in zip(v.dims, v.shape))
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
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:16]


def progress_key(group: str) -> str:
    return f"{PROGRESS}/{group.strip('/').replace('/', '.')}"


def group_meta(root: zarr.Group, group: str) -> dict | None:
    if group not in root:
        return None
    meta = root[group].attrs.get("relaylab")
    return dict(meta) if isinstance(meta, dict) else None


def write_dataset(path: str | Path, group: str, ds: xr.Dataset, *, kind: str, attrs: dict | None = None,
                  check: BlockCheck | None = None, readahead: Callable[[slice], None] | None = None,
                  compression: str = "lz4", rows: int | None = None, progress: bool = True) -> None:
    """Write `ds` into `group` block by block, resuming a killed write of the same data.

    `compression` (one of COMPRESSIONS) is settled when the group is created; a resumed write keeps it. `rows`:
    samples per write block, whole shards (default `copy_block_rows`; a job that computes each shard passes
    `block_rows`, so a kill loses at most one shard's work).

    `check(block, rows)` may return problems found in a block (e.g. NaN); they stop the write before that block
    lands, and are raised as a RelaylabError. `readahead(rows)` is told each block's rows one block before they are
    read (e.g. `hdf5.Readahead`), so the source can fetch them while the current block is read.
    """
    root = _root(path, mode="r+")
    n = ds.sizes[SAMPLE]
    shard = block_rows(ds)
    rows = rows or copy_block_rows(ds)
    if rows % shard:
        raise ValueError(f"write blocks of {rows} samples are not whole shards of {shard}")
    n_blocks = max(1, math.ceil(n / rows))
    stamp = fingerprint(ds, rows)
    meta = resumable_meta(path, root, group, stamp, "a group written from the same source data",
                          "a group from different data; delete it or write to another name")
    if meta is not None and meta.get("status") == "complete":
        return
    lazy = sample_variables(ds)
    if meta is None:
        template = ds.copy()
        for name in lazy:  # shapes, dtypes, attrs and encodings only: rechunking the real data costs seconds of graph building
            var = template[name]
            chunks = tuple(shard if d == SAMPLE else s for d, s in zip(var.dims, var.shape))
            template[name] = var.copy(data=dask.array.empty(var.shape, dtype=var.dtype, chunks=chunks))
        template.attrs = {}
        chosen = choose_compression(ds, compression)
        template.to_zarr(str(path), group=group, mode="w", compute=False, encoding=zarr_encoding(ds, shard, chosen),
                         consolidated=False, zarr_format=3)
        root = _root(path, mode="r+")
        begin_blocks(root, group, n_blocks, {"kind": kind, "fingerprint": stamp, "block_rows": shard,
                                             "write_rows": rows, "compression": chosen, **(attrs or {})})
    done = root[progress_key(group)]
    todo = [b for b in np.flatnonzero(~done[:]).tolist()]
    arrays = {name: root[f"{group}/{name}"] for name in lazy}
    with tqdm(total=n, initial=n - sum(min(rows, n - b * rows) for b in todo), unit="sample", desc=group,
              disable=not progress, leave=False) as bar, ThreadPoolExecutor(max_workers=usable_cores()) as pool, \
            ThreadPoolExecutor(max_workers=1) as storing:
        writers = {name: ShardWriter(array, pool) if ShardWriter.usable(array) else None for name, array in arrays.items()}

        def store(b: int, sl: slice, values: dict[str, np.ndarray], shards: dict[str, list]) -> None:
            """Blocks are stored one after the other, in order; a block is marked done once all of it is written."""
            for name in lazy:
                if name in shards:
                    writers[name].store(shards[name])
                else:
                    arrays[name][sl] = values[name]
            done[b] = True
            bar.update(sl.stop - sl.start)

        stored = None  # block i is compressed while block i-1 is stored and block i+1 is read
        for b, block in _prefetch(ds[lazy], todo, rows, n, readahead):
            sl = slice(b * rows, min(n, (b + 1) * rows))
            problems = check(block, sl) if check else []
            if problems:
                raise RelaylabError(problems)  # leaving the `with` waits for the previous block to be stored
            values = {name: block[name].values for name in lazy}
            shards = {name: encoded for name in lazy if writers[name] is not None
                      and (encoded := writers[name].encode(sl, values[name])) is not None}
            if stored is not None:
                stored.result()
            stored = storing.submit(store, b, sl, values, shards)
        if stored is not None:
            stored.result()
    finish_blocks(root, group)


def resumable_meta(path: str | Path, root: zarr.Group, group: str, stamp: str, expected: str, found: str) -> dict | None:
    """The metadata of a group being written from data with fingerprint `stamp`: None for a new group; a group
    written from other data is an error (`expected`/`found` say what, for the writer's kind of group)."""
    meta = group_meta(root, group)
    if meta is not None and meta.get("fingerprint") != stamp:
        raise RelaylabError.at(path, group, expected, found)
    if meta is not None and meta.get("status") == "complete":
        log.info("%s/%s is complete, skipping", path, group)
    return meta


def begin_blocks(root: zarr.Group, group: str, n_blocks: int, meta: dict) -> None:
    """Mark `group` as being written in `n_blocks` blocks: an all-False progress record and status "writing"."""
    root.create_array(progress_key(group), shape=(n_blocks,), chunks=(1,), dtype=bool, fill_value=False, overwrite=True,
                      attributes={"group": group})
    root[group].attrs["relaylab"] = {**meta, "status": "writing", "blocks": n_blocks}


def finish_blocks(root: zarr.Group, group: str) -> None:
    """Every block of `group` is written: status "complete", progress record removed."""
    root[group].attrs["relaylab"] = {**group_meta(root, group), "status": "complete"}
    del root[progress_key(group)]


def usable_cores() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class ShardWriter:
    """Writes whole shards of a sharded Zarr v3 array: the inner chunks are encoded in parallel by the array's own
    codecs (Blosc releases the GIL), zarr's sharding codec lays out the shard and its index, and the shard is
    stored with one write.

    zarr-python encodes each inner chunk of a shard as its own asyncio task, with ~1 ms of Python overhead per
    chunk on the event-loop thread; with one-sample inner chunks that overhead, not compression, limited the write
    path to ~30 MB/s. The bytes written here are the ones zarr writes for the same data: same codecs, same chunk
    order and index, and chunks equal to the fill value are left out unless the array's `write_empty_chunks` is set.
    Anything that is not a whole shard (or the last, partial shard) goes through zarr as before.
    """

    def __init__(self, array: zarr.Array, pool: ThreadPoolExecutor, workers: int | None = None):
        self.array = array
        self.pool = pool
        self.workers = workers or usable_cores()
        meta = array.metadata
        self.sharding: ShardingCodec = meta.codecs[0]
        self.shard_shape = tuple(meta.chunk_grid.chunk_shape)
        self.inner_shape = tuple(self.sharding.chunk_shape)
        self.chunks_per_shard = tuple(s // c for s, c in zip(self.shard_shape, self.inner_shape))
        self.prototype = default_buffer_prototype()
        shard_spec = meta.get_chunk_spec((0,) * len(self.shard_shape), array.config, self.prototype)
        self.chunk_spec = self.sharding._get_chunk_spec(shard_spec)
        self.fill_value = fill_value_or_default(self.chunk_spec)
        self.keep_empty = bool(array.config.write_empty_chunks)
        self.dtype = np.dtype(array.dtype)
        self.fill_bytes = np.asarray(self.fill_value, dtype=self.dtype).tobytes()
        endian = self.sharding.codecs[0].endian
        # BytesCodec leaves data already in its byte order as it is: a view of the chunk's bytes
        self.plain_bytes = self.dtype.itemsize == 1 or endian is None or (self.dtype.isnative and endian.value == sys.byteorder)

    @staticmethod
    def usable(array: zarr.Array) -> bool:
        meta = array.metadata
        if getattr(meta, "zarr_format", None) != 3 or not isinstance(meta.chunk_grid, RegularChunkGrid):
            return False
        if len(meta.codecs) != 1 or not isinstance(meta.codecs[0], ShardingCodec):
            return False
        sharding = meta.codecs[0]
        inner = sharding.codecs
        if not inner or not isinstance(inner[0], BytesCodec) or not all(hasattr(c, "_encode_sync") for c in inner):
            return False
        return all(s % c == 0 for s, c in zip(meta.chunk_grid.chunk_shape, sharding.chunk_shape))

    def write(self, sl: slice, values: np.ndarray) -> bool:
        """Write `values` into rows `sl`; False (nothing written) unless they are whole shards along the first axis."""
        shards = self.encode(sl, values)
        if shards is None:
            return False
        self.store(shards)
        return True

    def encode(self, sl: slice, values: np.ndarray) -> list[tuple[int, dict]] | None:
        """The encoded inner chunks of each shard in rows `sl`, or None unless they are whole shards (the last
        shard of the array may be partial)."""
        rows, n = self.shard_shape[0], self.array.shape[0]
        if (sl.start % rows or (sl.stop % rows and sl.stop != n) or values.shape[0] != sl.stop - sl.start
                or tuple(values.shape[1:]) != tuple(self.array.shape[1:]) or tuple(self.shard_shape[1:]) != tuple(self.array.shape[1:])):
            return None
        values = np.asarray(values, dtype=self.dtype)
        return [(start // rows, self._encode_shard(values[start - sl.start:min(sl.stop, start + rows) - sl.start]))
                for start in range(sl.start, sl.stop, rows)]

    def store(self, shards: list[tuple[int, dict]]) -> None:
        """Lay out each shard (chunks and index, by zarr's sharding codec) and store it with one write: on a local
        store straight from the encoded chunks (`write_pieces`), elsewhere through the store's own `set`."""
        for index, encoded in shards:
            shard = sync(self.sharding._encode_shard_dict(encoded, chunks_per_shard=self.chunks_per_shard,
                                                          buffer_prototype=PIECES))
            key = self.array.store_path / self.array.metadata.encode_chunk_key((index,) + (0,) * (len(self.shard_shape) - 1))
            if shard is None:
                sync(key.delete())
            elif isinstance(key.store, LocalStore):
                write_pieces(Path(key.store.root) / key.path, shard.pieces)
            else:
                sync(key.set(self.prototype.buffer.create_zero_length().combine(shard.pieces)))

    def _encode_shard(self, values: np.ndarray) -> dict:
        valid = values.shape[0]
        if valid < self.shard_shape[0]:  # the last shard: zarr fills the rows past the end, skips chunks beyond it
            padded = np.full(self.shard_shape, self.fill_value, dtype=values.dtype)
            padded[:valid] = values
            values = padded
        coords = [c for c in np.ndindex(*self.chunks_per_shard) if c[0] * self.inner_shape[0] < valid]
        parts = [coords[i::self.workers] for i in range(self.workers)]
        encoded: dict = {}
        for result in self.pool.map(lambda part: self._encode(values, part), parts):
            encoded.update(result)
        return encoded

    def _encode(self, values: np.ndarray, coords: list[tuple[int, ...]]) -> dict:
        out = {}
        codecs = self.sharding.codecs
        for chunk_coords in coords:
            chunk = values[tuple(slice(i * c, (i + 1) * c) for i, c in zip(chunk_coords, self.inner_shape))]
            if not self.keep_empty and self._all_fill(chunk):
                continue
            if self.plain_bytes and chunk.flags.c_contiguous:  # what BytesCodec._encode_sync returns, without its overhead
                encoded, rest = self.prototype.buffer.from_array_like(chunk.reshape(-1).view(np.uint8)), codecs[1:]
            else:
                encoded, rest = self.prototype.nd_buffer.from_numpy_array(chunk), codecs
            for codec in rest:
                encoded = codec._encode_sync(encoded, self.chunk_spec)
                if encoded is None:
                    break
            if encoded is not None:
                out[chunk_coords] = encoded
        return out

    def _all_fill(self, chunk: np.ndarray) -> bool:
        """zarr's test (NDBuffer.all_equal), after a look at the first element that settles almost every chunk:
        for integers, booleans and floats (NaNs aside) zarr's equality is equality of the bytes."""
        if self.dtype.kind in "iubf":
            first = chunk.reshape(-1)[:1]
            if first.tobytes() != self.fill_bytes and not (self.dtype.kind == "f" and np.isnan(first[0])):
                return False
        return self.prototype.nd_buffer.from_numpy_array(chunk).all_equal(self.fill_value)


class Pieces(CpuBuffer):
    """A shard as the list of its parts (encoded chunks, index) in file order: zarr's sharding codec lays the shard
    out and calls `combine`, which here keeps the parts instead of copying them into one buffer."""

    pieces: list

    @classmethod
    def create_zero_length(cls) -> "Pieces":
        return cls(np.empty(0, dtype="B"))

    def combine(self, others) -> "Pieces":
        combined = Pieces(np.empty(0, dtype="B"))
        combined.pieces = [p for p in others if len(p)]
        return combined


PIECES = BufferPrototype(buffer=Pieces, nd_buffer=default_buffer_prototype().nd_buffer)


def write_pieces(path: Path, pieces: list) -> None:
    """Write the parts one after the other into `path` with `os.writev`, as zarr's LocalStore writes a key (to a
    temporary name, renamed into place): no concatenated copy of a 32 MiB shard on the way."""
    views = [memoryview(p.as_buffer_like()).cast("B") for p in pieces]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{uuid.uuid4().hex}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        first = 0
        while first < len(views):
            written = os.writev(fd, views[first:first + IOV_MAX])
            while first < len(views) and written >= len(views[first]):
                written -= len(views[first])
                first += 1
            if written:  # a short write ended inside this view
                views[first] = views[first][written:]
        os.close(fd)
        fd = -1
        os.replace(partial, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        partial.unlink(missing_ok=True)
        raise


def update_group_meta(path: str | Path, group: str, **changes) -> None:
    root = _root(path, mode="r+")
    root[group].attrs["relaylab"] = {**group_meta(root, group), **changes}


def _prefetch(ds: xr.Dataset, blocks: list[int], rows: int, n: int,
              readahead: Callable[[slice], None] | None = None) -> Iterator[tuple[int, xr.Dataset]]:
    """Read block i+1 from the source while block i is compressed and written, and announce block i+2."""
    def rows_of(i: int) -> slice:
        return slice(blocks[i] * rows, min(n, (blocks[i] + 1) * rows))

    def load(i: int) -> xr.Dataset:
        if readahead is not None and i + 1 < len(blocks):
            readahead(rows_of(i + 1))
        # one reader thread beside the encoders: Dask's own thread pool here only adds contention (HDF5 reads are
        # serialised anyway); warm reads of 3x64x64 float32 blocks ran at 0.65 GB/s threaded, 1.6 GB/s synchronous
        return ds.isel({SAMPLE: rows_of(i)}).load(scheduler="synchronous")

    if readahead is not None and blocks:
        readahead(rows_of(0))
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, 0) if blocks else None
        for i, b in enumerate(blocks):
            block = pending.result()
            pending = pool.submit(load, i + 1) if i + 1 < len(blocks) else None
            yield b, block


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


def open_tree(path: str | Path, group: str) -> xr.DataTree:
    """A complete group of groups (e.g. an activation set, one child per layer) as a lazy DataTree."""
    require_complete(path, group, group_meta(_root(path), group))
    tree = xr.open_datatree(str(path), engine="zarr", group=group, chunks={}, consolidated=False, zarr_format=3)
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


def begin_analysis(path: str | Path, name: str, attrs: dict | None = None) -> set[str]:
    """Create `analyses/<name>` (or find the unfinished one) and return the categories already complete in it."""
    group = f"analyses/{name}"
    root = _root(path, mode="r+")
    meta = group_meta(root, group)
    if meta is None:
        root.create_group(group, overwrite=True, attributes={"relaylab": {"kind": "analysis", "status": "writing", **(attrs or {})}})
        return set()
    if attrs and any(meta.get(k) != v for k, v in attrs.items()):
        raise RelaylabError.at(path, group, "an analysis run with the same settings, to resume it",
                               "one with other settings; choose another name or delete it")
    return {c for c, g in root[group].groups() if (group_meta(root, f"{group}/{c}") or {}).get("status") == "complete"}


def write_category(path: str | Path, name: str, category: str, tree: xr.DataTree) -> None:
    """Commit one category: its nodes are written, then it is marked complete (a killed write is redone whole).

    The nodes are encoded by xarray into an in-memory Zarr store, then copied to disk file by file with the
    category's own metadata (which carries status "complete") last: through zarr's local store each of the ~60
    small arrays of a 10-category analysis cost ~10 ms of event-loop round trips, in memory ~3 ms."""
    staged = MemoryStore()
    for node in tree.subtree:  # the category's own node comes first
        node_ds = node.to_dataset(inherit=False)
        node_ds.attrs = {k: v for k, v in node_ds.attrs.items() if k != "source_file"}
        relative = node.relative_to(tree)
        node_ds.to_zarr(staged, group=None if relative == "." else relative, mode="w", consolidated=False, zarr_format=3)
    zarr.open_group(staged, mode="r+", zarr_format=3).attrs["relaylab"] = {"kind": "category", "status": "complete"}
    folder = Path(path) / "analyses" / name / category
    shutil.rmtree(folder, ignore_errors=True)  # stale nodes of a killed write
    made: set[Path] = set()
    for key in sorted(staged._store_dict, key=lambda k: k == "zarr.json"):
        target = folder / key
        if target.parent not in made:  # a directory operation costs ~0.5 ms on this kind of disk: each one once
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        target.write_bytes(staged._store_dict[key].to_bytes())


def finish_analysis(path: str | Path, name: str) -> None:
    update_group_meta(path, f"analyses/{name}", status="complete")


def write_analysis(path: str | Path, name: str, tree: xr.DataTree, *, attrs: dict | None = None,
                   progress: bool = True) -> None:
    """Write an analysis category by category; finished categories are kept when a killed write is resumed."""
    done = begin_analysis(path, name, attrs)
    todo = [c for c in tree.children if c not in done]
    # each node costs ~10 small file operations, mostly waiting: categories are written side by side
    with ThreadPoolExecutor(max_workers=8) as pool, \
            tqdm(total=len(todo), desc=f"analyses/{name}", unit="category", disable=not progress, leave=False) as bar:
        for _ in pool.map(lambda category: write_category(path, name, category, tree[category]), todo):
            bar.update()
    finish_analysis(path, name)


def open_analysis(path: str | Path, name: str) -> xr.DataTree:
    group = f"analyses/{name}"
    root = _root(path)
    require_complete(path, group, group_meta(root, group))
    tree = xr.open_datatree(str(path), engine="zarr", group=group, chunks={}, consolidated=False, zarr_format=3)
    for node in tree.subtree:
        meta = node.attrs.pop("relaylab", None)
        if node is not tree and node.parent is tree:
            require_complete(path, f"{group}/{node.name}", meta)
        if "index" in node.data_vars:
            node.dataset = node.dataset.set_coords("index")
        if "eigenvalue" in node.data_vars:
            node.dataset = node.dataset.set_coords("eigenvalue")
    return tree


def remove(path: str | Path) -> None:
    """Delete an output this run created (used when bad input is found part-way, so nothing half-written remains)."""
    shutil.rmtree(path, ignore_errors=True)
