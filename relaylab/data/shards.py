"""Whole shards of a sharded Zarr v3 array written fast and atomically (`ShardWriter`), for the store's block writes.

zarr-python encodes each inner chunk of a shard as its own asyncio task, with a fixed Python cost per chunk on the
event-loop thread; with one-sample inner chunks that cost, not compression, limits zarr's own write path. Here the
inner chunks are encoded in parallel by the array's own codecs (Blosc releases the GIL), zarr's sharding codec lays
out the shard and its index, and the shard is stored with one `os.writev`. The bytes are the ones zarr writes for the
same data (tests/test_store.py compares them).
"""

from __future__ import annotations

import os
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BytesCodec, ShardingCodec
from zarr.core.buffer import BufferPrototype, default_buffer_prototype
from zarr.core.buffer.cpu import Buffer as CpuBuffer
from zarr.core.chunk_grids import RegularChunkGrid
from zarr.core.codec_pipeline import fill_value_or_default
from zarr.core.sync import sync
from zarr.storage import LocalStore

from ..compute import usable_cores

IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


class ShardWriter:
    """Writes whole shards of a sharded Zarr v3 array (see the module's docstring): same codecs, chunk order and
    index as zarr, and chunks equal to the fill value are left out unless the array's `write_empty_chunks` is set.
    Anything that is not a whole shard (or the last, partial shard) is for zarr itself to write (`write` says so)."""

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
    with ExitStack() as on_error:
        on_error.callback(partial.unlink, missing_ok=True)
        with open(partial, "wb", buffering=0) as file:
            first = 0
            while first < len(views):
                written = os.writev(file.fileno(), views[first:first + IOV_MAX])
                while first < len(views) and written >= len(views[first]):
                    written -= len(views[first])
                    first += 1
                if written:  # a short write ended inside this view
                    views[first] = views[first][written:]
        os.replace(partial, path)
        on_error.pop_all()
