"""I/O benchmarks: opening big projects, HDF5 → Zarr conversion throughput against the disk, single-sample reads.

    python -m benchmarks io                      # open 1,000,000 samples, convert 20,000 and 100,000 3×64×64, 1000 reads
    python -m benchmarks io --smoke              # small sizes, under a minute
    python -m benchmarks io --sizes open=100000,1000000 convert=20000 --only open convert

Every measurement runs in a fresh child process (`python -m benchmarks.io <task> ...`), so import time, page cache
and allocator state of one repeat never leak into the next; peak memory is the child's ru_maxrss from wait4.
Warm-up runs are made and dropped; the median of the repeats is reported (all repeats are in the JSON/CSV).
MB = 10^6 bytes.

The synthetic projects are written by a streaming generator (block by block with h5py, never the whole array in
memory) in ViRelAy's layout: `dataset.h5` (data (N, C, H, W) uint8, label (N,) int64), `attribution-0.h5`
(attribution (N, C, H, W) float32, prediction (N, classes) float32, label), `analysis-0.h5` (one group per
category: index, embedding/spectral (n, 32) + @eigenvalue, embedding/tsne and umap (n, 2), cluster/kmeans-02..05
and hdbscan), project.yaml and label-map.json. Images are smooth class patterns with per-sample variation and
noise, so they compress like real images and heatmaps rather than like random bytes. Generated projects are kept in
--work and reused while their parameters are unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import (parse_sizes, child_result, evict, format_table, machine_info, proc_io, row, run_child, tree_bytes,
               write_results)

DESCRIPTION = "open 1M-sample projects (HDF5 and Zarr), HDF5 → Zarr conversion vs disk read rate, single-sample reads"
MEASUREMENTS = ("disk", "open", "convert", "reads")
DEFAULT_SIZES = {"open": [1_000_000], "convert": [20_000, 100_000], "reads": [1000], "disk": [1024, 8192]}
SMOKE_SIZES = {"open": [10_000], "convert": [500], "reads": [100], "disk": [64]}
OPEN_GOAL_S = 2.0
CONVERT_GOAL_RATIO = 0.5
MB = 1e6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", nargs="+", choices=MEASUREMENTS, default=None,
                        help="run only these measurements (disk is measured whenever convert is)")
    parser.add_argument("--work", default=str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "relaylab" / "benchmarks"),
                        help="folder for the generated projects (kept and reused; default ~/.cache/relaylab/benchmarks)")
    parser.add_argument("--open-image", default="3x8x8", help="C×H×W of the open benchmark's samples (default 3x8x8)")
    parser.add_argument("--convert-image", default="3x64x64", help="C×H×W of the conversion benchmark's samples (default 3x64x64)")
    parser.add_argument("--h5-chunk-rows", type=int, default=16, help="samples per HDF5 chunk of data/attribution (default 16, "
                        "as relaylab.data.synthetic; 0 = contiguous)")
    parser.add_argument("--h5-compression", default="none", choices=("none", "gzip", "lzf"),
                        help="compression of the generated HDF5 sources (default none, as CoRelAy/h5py write them)")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-page-cache variants of open and reads "
                        "(--smoke implies it)")
    parser.add_argument("--no-diagnostics", action="store_true", help="skip the read-sources-only pass of convert "
                        "(--smoke implies it)")


# --------------------------------------------------------------------------------------------------- generator


@dataclass(frozen=True)
class Spec:
    """A synthetic ViRelAy project."""

    n: int
    channels: int = 3
    height: int = 8
    width: int = 8
    n_classes: int = 10
    spectral_dims: int = 32
    chunk_rows: int = 16
    compression: str = "none"
    seed: int = 0
    generator: int = 1  # bump when the generator changes, so cached projects are rebuilt

    @property
    def name(self) -> str:
        c = "" if self.compression == "none" else f"-{self.compression}"
        return f"virelay-{self.n}-{self.channels}x{self.height}x{self.width}-c{self.chunk_rows}{c}"


BLOCK_BYTES = 64 * 2**20


def _class_patterns(spec: Spec, rng):
    """(classes, C, H, W) float32 smooth patterns in [0, 1]: two sinusoids and a blob placed by class."""
    import numpy as np

    y = np.linspace(0, 1, spec.height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, spec.width, dtype=np.float32)[None, :]
    patterns = np.empty((spec.n_classes, spec.channels, spec.height, spec.width), np.float32)
    for k in range(spec.n_classes):
        cy, cx = rng.uniform(0.2, 0.8, 2)
        blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 0.05)
        for c in range(spec.channels):
            fy, fx, phase = rng.uniform(0.5, 3, 2).tolist() + [rng.uniform(0, 6.28)]
            wave = 0.5 + 0.5 * np.sin(2 * np.pi * (fy * y + fx * x) + phase)
            patterns[k, c] = 0.35 * wave + 0.55 * blob + 0.05 * c
    return np.clip(patterns, 0, 1)


def _blocks(spec: Spec, labels, patterns, rng):
    """Yield (start, images uint8, attributions float32) blocks of about BLOCK_BYTES of attributions."""
    import numpy as np

    per_sample = spec.channels * spec.height * spec.width
    rows = max(1, BLOCK_BYTES // (per_sample * 4))
    factor = max(1, min(spec.height, spec.width) // 8)
    for start in range(0, spec.n, rows):
        lab = labels[start:start + rows]
        b = len(lab)
        gain = rng.uniform(0.6, 1.0, (b, 1, 1, 1)).astype(np.float32)
        offset = rng.uniform(-0.1, 0.1, (b, spec.channels, 1, 1)).astype(np.float32)
        coarse = rng.random((b, spec.channels, -(-spec.height // factor), -(-spec.width // factor)), dtype=np.float32)
        smooth = coarse.repeat(factor, axis=2).repeat(factor, axis=3)[:, :, :spec.height, :spec.width]
        images = patterns[lab] * gain + offset + 0.2 * smooth
        images += rng.standard_normal(images.shape, dtype=np.float32) * 0.02
        np.clip(images, 0, 1, out=images)
        pixels = (images * 255).round().astype(np.uint8)
        mask = patterns[lab].mean(axis=1, keepdims=True)
        relevance = (images - images.mean(axis=(1, 2, 3), keepdims=True)) * mask * (0.5 + smooth)
        relevance += rng.standard_normal(images.shape, dtype=np.float32) * 0.01
        yield start, pixels, relevance.astype(np.float32)


def generate_project(folder: Path, spec: Spec) -> Path:
    """Write the project (streaming, block by block) unless `folder` already holds one made from `spec`."""
    import h5py
    import numpy as np
    import yaml

    folder = Path(folder)
    marker = folder / "spec.json"
    if marker.is_file() and json.loads(marker.read_text()) == asdict(spec):
        return folder / "project.yaml"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(spec.seed)
    n, shape = spec.n, (spec.channels, spec.height, spec.width)
    labels = (np.arange(n) % spec.n_classes)[rng.permutation(n)].astype(np.int64)
    patterns = _class_patterns(spec, rng)
    options = {} if spec.compression == "none" else {"compression": spec.compression}
    chunks = (min(spec.chunk_rows, n),) + shape if spec.chunk_rows else None
    label_chunks = (min(n, 65536),)
    (folder / "label-map.json").write_text(json.dumps(
        [{"index": k, "word_net_id": f"n{k:08d}", "name": f"class {k}"} for k in range(spec.n_classes)], indent=1))
    with h5py.File(folder / "dataset.h5", "w") as data_file, h5py.File(folder / "attribution-0.h5", "w") as attr_file:
        data = data_file.create_dataset("data", (n,) + shape, np.uint8, chunks=chunks, **options)
        data_file.create_dataset("label", data=labels, chunks=label_chunks)
        attribution = attr_file.create_dataset("attribution", (n,) + shape, np.float32, chunks=chunks, **options)
        prediction = attr_file.create_dataset("prediction", (n, spec.n_classes), np.float32,
                                              chunks=(min(n, 8192), spec.n_classes))
        attr_file.create_dataset("label", data=labels, chunks=label_chunks)
        for start, pixels, relevance in _blocks(spec, labels, patterns, rng):
            stop = start + len(pixels)
            data[start:stop] = pixels
            attribution[start:stop] = relevance
            lab = labels[start:stop]
            logits = rng.standard_normal((len(lab), spec.n_classes), dtype=np.float32)
            logits[np.arange(len(lab)), lab] += 5
            prediction[start:stop] = logits
    with h5py.File(folder / "analysis-0.h5", "w") as h5:  # contiguous, as CoRelAy's example writes them
        for k in range(spec.n_classes):
            members = np.flatnonzero(labels == k)
            m = len(members)
            group = h5.create_group(f"n{k:08d}")
            group["index"] = members.astype(np.uint32)
            spectral = group.create_dataset("embedding/spectral", data=rng.standard_normal((m, spec.spectral_dims), dtype=np.float32))
            spectral.attrs["eigenvalue"] = np.linspace(0, 0.9, spec.spectral_dims, dtype=np.float32)
            for name in ("tsne", "umap"):
                emb = group.create_dataset(f"embedding/{name}", data=rng.standard_normal((m, 2), dtype=np.float32))
                emb.attrs["embedding"] = "spectral"
            for clusters in (2, 3, 4, 5):
                cl = group.create_dataset(f"cluster/kmeans-{clusters:02d}", data=rng.integers(0, clusters, m, dtype=np.int32))
                cl.attrs["embedding"] = "spectral"
            group["cluster/hdbscan"] = rng.integers(-1, 7, m, dtype=np.int64)
    project = {"project": {
        "name": spec.name, "model": "synthetic-cnn", "label_map": "label-map.json",
        "dataset": {"name": f"{spec.name}-data", "type": "hdf5", "path": "dataset.h5",
                    "input_width": spec.width, "input_height": spec.height,
                    "down_sampling_method": "none", "up_sampling_method": "none",
                    "label_index_regex": None, "label_word_net_id_regex": None},
        "attributions": {"attribution_method": "lrp_epsilon_plus", "attribution_strategy": "true_label",
                         "sources": ["attribution-0.h5"]},
        "analyses": [{"analysis_method": "spectral_analysis", "sources": ["analysis-0.h5"]}],
    }}
    (folder / "project.yaml").write_text(yaml.safe_dump(project, sort_keys=False))
    evict(folder)  # written data leaves the page cache in a known (empty) state, and is on disk
    marker.write_text(json.dumps(asdict(spec)))
    return folder / "project.yaml"


def source_bytes(folder: Path) -> int:
    """Logical (uncompressed) bytes of every HDF5 dataset of the project: what a conversion has to move."""
    import h5py

    total = 0
    for file in sorted(Path(folder).glob("*.h5")):
        with h5py.File(file, "r") as h5:
            def visit(_, node):
                nonlocal total
                if isinstance(node, h5py.Dataset):
                    total += node.size * node.dtype.itemsize
            h5.visititems(visit)
    return total


def project_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.is_file())


def ensure_store(yaml_path: Path) -> tuple[Path, dict]:
    """The project converted to a Zarr store (kept beside it); converting in a child process on first use."""
    store = yaml_path.parent.with_name(yaml_path.parent.name + ".zarr")
    marker = store.with_name(store.name + ".json")
    spec_text = (yaml_path.parent / "spec.json").read_text()
    if marker.is_file() and json.loads(marker.read_text()).get("spec") == spec_text and (store / "zarr.json").is_file():
        return store, json.loads(marker.read_text())
    shutil.rmtree(store, ignore_errors=True)
    result = run_child([sys.executable, "-m", "benchmarks.io", "child-convert", str(yaml_path), str(store)])
    evict(store)
    info = {"spec": spec_text, "convert_s": result["convert_s"], "peak_rss_bytes": result["peak_rss_bytes"]}
    marker.write_text(json.dumps(info))
    return store, info


# ------------------------------------------------------------------------------------------------ child tasks


def _imports() -> float:
    start = time.perf_counter()
    import dask.array  # noqa: F401  (xarray's .chunk() needs it; imported here so it is not counted as open time)
    import h5py  # noqa: F401
    import numpy  # noqa: F401
    import xarray  # noqa: F401
    import zarr  # noqa: F401

    import relaylab.data.convert  # noqa: F401
    import relaylab.data.project  # noqa: F401
    return time.perf_counter() - start


class ReadCounter:
    """Counts array reads during a block: h5py dataset reads and Zarr chunk/shard reads (not zarr.json)."""

    def __init__(self):
        self.h5_reads = self.h5_bytes = self.zarr_reads = self.zarr_bytes = self.zarr_meta_reads = 0
        self.h5_names: set[str] = set()
        self.zarr_keys: set[str] = set()

    def __enter__(self):
        import h5py
        import zarr.storage._local as local

        self._saved = (h5py.Dataset.__getitem__, h5py.Dataset.read_direct, local._get)
        getitem, read_direct, get = self._saved
        counter = self

        def counting_getitem(dataset, *args, **kwargs):
            out = getitem(dataset, *args, **kwargs)
            counter.h5_reads += 1
            counter.h5_bytes += getattr(out, "nbytes", 0)
            counter.h5_names.add(dataset.name)
            return out

        def counting_read_direct(dataset, dest, *args, **kwargs):
            counter.h5_reads += 1
            counter.h5_bytes += dest.nbytes
            counter.h5_names.add(dataset.name)
            return read_direct(dataset, dest, *args, **kwargs)

        def counting_get(path, prototype, byte_range=None):
            out = get(path, prototype, byte_range)
            if Path(path).name == "zarr.json":
                counter.zarr_meta_reads += 1
            else:
                counter.zarr_reads += 1
                counter.zarr_bytes += len(out) if out is not None else 0
                counter.zarr_keys.add(str(path))
            return out

        h5py.Dataset.__getitem__, h5py.Dataset.read_direct, local._get = counting_getitem, counting_read_direct, counting_get
        return self

    def __exit__(self, *exc):
        import h5py
        import zarr.storage._local as local

        h5py.Dataset.__getitem__, h5py.Dataset.read_direct, local._get = self._saved


def child_open(path: str, analysis: str) -> None:
    """Open a project, open one analysis and every attribution set, touch metadata (never values)."""
    import_s = _imports()
    from relaylab.data.project import open_project

    io0 = proc_io()
    with ReadCounter() as counter:
        t0 = time.perf_counter()
        project = open_project(path)
        n_samples = project.inputs.sizes["sample"]
        t1 = time.perf_counter()
        tree = project.analyses[analysis]
        members = nodes = 0
        for category, node in tree.children.items():
            members += node["index"].shape[0]
            _ = dict(node.attrs), node.attrs.get("display_name")
            for sub in node.subtree:
                nodes += 1
                for var in sub.dataset.variables.values():
                    _ = var.dims, var.shape, var.dtype, dict(var.attrs)
        t2 = time.perf_counter()
        for name in project.attributions:
            ds = project.attributions[name]
            _ = ds.sizes, ds["attribution"].shape, ds["prediction"].dtype
        t3 = time.perf_counter()
    io1 = proc_io()
    project.close()
    child_result({
        "import_s": import_s, "open_s": t1 - t0, "analysis_s": t2 - t1, "attributions_s": t3 - t2, "total_s": t3 - t0,
        "rchar": io1.get("rchar", 0) - io0.get("rchar", 0), "read_bytes": io1.get("read_bytes", 0) - io0.get("read_bytes", 0),
        "h5_reads": counter.h5_reads, "h5_bytes": counter.h5_bytes, "h5_names": sorted(counter.h5_names)[:20],
        "zarr_reads": counter.zarr_reads, "zarr_bytes": counter.zarr_bytes, "zarr_meta_reads": counter.zarr_meta_reads,
        "zarr_keys": sorted(counter.zarr_keys)[:20], "n_samples": n_samples, "members": members, "nodes": nodes,
    })


def child_convert(project_path: str, out: str) -> None:
    import_s = _imports()
    import zarr

    from relaylab.data import store as zstore
    from relaylab.data.convert import convert_to_zarr

    io0 = proc_io()
    cpu0 = os.times()
    t0 = time.perf_counter()
    convert_to_zarr(project_path, out, progress=False)
    t1 = time.perf_counter()
    cpu1 = os.times()
    os.sync()
    t2 = time.perf_counter()
    io1 = proc_io()
    child_result({
        "import_s": import_s, "convert_s": t1 - t0, "sync_s": t2 - t1,
        "convert_cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
        **{k: io1.get(k, 0) - io0.get(k, 0) for k in ("rchar", "wchar", "read_bytes", "write_bytes")},
        "compression": {group: meta.get("compression") for group, meta in zstore.group_metas(out).items()
                        if meta.get("compression")},
        "zarr_config": {k: zarr.config.get(k) for k in ("async", "threading")},
        "verified_samples": verify_store(project_path, out),
    })


def verify_store(project_path: str, out: str, count: int = 25) -> int:
    """Compare random samples (every variable) and all labels of the store with the source project; returns the
    number of samples compared, raises on a difference."""
    import numpy as np

    from relaylab.data.project import open_project

    with open_project(project_path) as source, open_project(out) as stored:
        pairs = [(source.inputs, stored.inputs)]
        pairs += [(source.attributions[name], stored.attributions[name]) for name in source.attributions]
        for a, b in pairs:
            n = a.sizes["sample"]
            rows = np.random.default_rng(n).choice(n, min(n, count), replace=False)
            rows = np.unique(np.concatenate([rows, [0, n - 1]]))
            for name in a.data_vars:
                np.testing.assert_array_equal(a[name].isel(sample=rows).values, b[name].isel(sample=rows).values, err_msg=name)
            np.testing.assert_array_equal(a["label"].values, b["label"].values)
    return len(pairs) * len(rows)


def child_read_source(project_path: str) -> None:
    """Diagnostic: read every sample-wise source array block by block, as the conversion does (same reader, same
    readahead), writing nothing."""
    import_s = _imports()
    from relaylab.data import store as zstore
    from relaylab.data.hdf5 import Readahead
    from relaylab.data.dims import SAMPLE
    from relaylab.data.project import open_project

    io0 = proc_io()
    t0 = time.perf_counter()
    with open_project(project_path, dask=False) as project:
        for ds in [project.inputs, *project.attributions.values()]:
            rows = zstore.copy_block_rows(ds)
            n = ds.sizes[SAMPLE]
            with Readahead(ds) as readahead:
                for _ in zstore._prefetch(ds[zstore.sample_variables(ds)], list(range(-(-n // rows))), rows, n, readahead):
                    pass
    t1 = time.perf_counter()
    io1 = proc_io()
    child_result({"import_s": import_s, "read_s": t1 - t0, "read_bytes": io1.get("read_bytes", 0) - io0.get("read_bytes", 0)})


def child_reads(config_json: str) -> None:
    """Random single-sample reads, one case after another; cold cases evict their files first."""
    import numpy as np

    config = json.loads(config_json)
    import_s = _imports()
    import h5py

    from relaylab.data.hdf5 import open_virelay_dataset
    from relaylab.data.store import open_group

    results = {}
    for case in config["cases"]:
        files = [Path(f) for f in case["files"]]
        if case["cold"]:
            evict(files)
        else:
            for f in files:  # pull every file into the page cache
                for p in ([f] if f.is_file() else [q for q in f.rglob("*") if q.is_file()]):
                    with open(p, "rb") as handle:
                        while handle.read(16 * 2**20):
                            pass
        t0 = time.perf_counter()
        if case["reader"] == "zarr":
            ds = open_group(case["path"], case["group"], chunks=None)
            array = ds[case["variable"]].variable
            read = lambda i: array[i].values  # noqa: E731
        elif case["reader"] == "hdf5-xarray":
            ds = open_virelay_dataset(case["path"], kind=case["kind"])
            array = ds[case["variable"]].variable
            read = lambda i: array[i].values  # noqa: E731
        else:
            ds = h5py.File(case["path"], "r")
            dataset = ds[case["variable"]]
            read = lambda i: dataset[i]  # noqa: E731
        open_s = time.perf_counter() - t0
        rng = np.random.default_rng(config["seed"])
        n = int(config["n_samples"])
        indices = rng.integers(0, n, config["reads"] + config["skip"])
        latencies = []
        checksum = 0.0
        for i in indices.tolist():
            t = time.perf_counter()
            values = read(i)
            latencies.append(time.perf_counter() - t)
            checksum += float(values.flat[0])
        ds.close()
        measured = np.array(latencies[config["skip"]:])
        results[case["name"]] = {"open_s": open_s, "median_s": float(np.median(measured)),
                                 "p95_s": float(np.percentile(measured, 95)), "per_s": len(measured) / measured.sum(),
                                 "shape": list(values.shape), "dtype": str(values.dtype), "sample_bytes": int(values.nbytes)}
    child_result({"import_s": import_s, "cases": results})


CHILD_TASKS = {"child-open": child_open, "child-convert": child_convert, "child-read-source": child_read_source,
               "child-reads": child_reads}


# ------------------------------------------------------------------------------------------------ measurements


def repeated(args, label: str, measure) -> list[dict]:
    """Run `measure()` warm-up + repeats times; return the measured (non-warm-up) results."""
    results = []
    for i in range(args.warmup + args.repeats):
        warm = i < args.warmup
        print(f"  {label}: {'warm-up' if warm else f'repeat {i - args.warmup + 1}/{args.repeats}'} ...", flush=True, end="")
        start = time.perf_counter()
        result = measure()
        print(f" {time.perf_counter() - start:.1f} s", flush=True)
        if not warm:
            results.append(result)
    return results


def measure_disk(args, work: Path, sizes_mib: list[int]) -> tuple[list[dict], float, float]:
    """The disk's rates in this run: sequential write with fsync of a fresh file of each size, and sequential read
    (after eviction) of the first. Returns the rows, the read rate and the largest file's write rate (a file larger
    than the page cache's dirty limit shows the rate the disk sustains, not its cache's)."""
    import numpy as np

    block = 8 * 2**20
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, block, dtype=np.uint8).tobytes()
    rows, read_rate, write_rate = [], 0.0, 0.0
    for i, size_mib in enumerate(sizes_mib):
        probe = work / "disk-probe.bin"
        t0 = time.perf_counter()
        with open(probe, "wb", buffering=0) as f:
            for k in range(size_mib * 2**20 // block):
                f.write(data[k % 7:] + data[:k % 7])  # not identical blocks, in case the storage deduplicates
            os.fsync(f.fileno())
        size = probe.stat().st_size
        write_rate = size / (time.perf_counter() - t0) / MB
        rows.append(row("disk", f"sequential write + fsync, {size / MB:.0f} MB", "write_rate", write_rate, "MB/s",
                        note="single run"))
        if i == 0:
            def read_once() -> float:
                evict(probe)
                return sequential_read_rate([probe])

            rates = repeated(args, f"disk read {size / MB:.0f} MB", read_once)
            rows.insert(0, row("disk", f"sequential read, {size / MB:.0f} MB file, evicted", "read_rate", rates, "MB/s"))
            read_rate = sorted(rates)[len(rates) // 2]
        probe.unlink()
    return rows, read_rate, write_rate


def sequential_read_rate(files: list[Path], block: int = 8 * 2**20) -> float:
    """MB/s of reading `files` one after the other, start to end, in `block`-sized reads (what `cat` does)."""
    buffer = bytearray(block)
    size = 0
    start = time.perf_counter()
    for file in files:
        with open(file, "rb", buffering=0) as f:
            while got := f.readinto(buffer):
                size += got
    return size / (time.perf_counter() - start) / MB


def dirty_limit_bytes() -> float | None:
    """About how much written data the kernel holds in the page cache before it makes writers wait for the disk
    (the midpoint of vm.dirty_background_ratio and vm.dirty_ratio of available memory); None where unknown."""
    try:
        ratios = [int(Path(f"/proc/sys/vm/{name}").read_text()) for name in ("dirty_background_ratio", "dirty_ratio")]
        available = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                         if line.startswith("MemAvailable:"))
    except (OSError, ValueError, StopIteration):
        return None
    return available * sum(ratios) / 2 / 100


def measure_open(args, work: Path, n: int, image: tuple[int, int, int]) -> list[dict]:
    spec = Spec(n=n, channels=image[0], height=image[1], width=image[2], chunk_rows=args.h5_chunk_rows,
                compression=args.h5_compression)
    print(f"open: {spec.name}", flush=True)
    t0 = time.perf_counter()
    yaml_path = generate_project(work / spec.name, spec)
    generate_s = time.perf_counter() - t0
    store, store_info = ensure_store(yaml_path)
    data_bytes = tree_bytes(yaml_path.parent)
    rows = [row("open", f"setup N={n}", "generate_s", generate_s, "s", note="0 when reused from --work"),
            row("open", f"setup N={n}", "convert_to_zarr_s", store_info["convert_s"], "s", note="single run, when the store was built"),
            row("open", f"setup N={n}", "hdf5_bytes", data_bytes / MB, "MB"),
            row("open", f"setup N={n}", "zarr_bytes", tree_bytes(store) / MB, "MB")]
    states = ["warm"] if args.no_cold else ["warm", "cold"]
    for fmt, path, files in (("hdf5-yaml", yaml_path, [yaml_path.parent]), ("zarr", store, [store])):
        for state in states:
            def once():
                if state == "cold":
                    evict(files)
                return run_child([sys.executable, "-m", "benchmarks.io", "child-open", str(path), "spectral_analysis"])
            results = repeated(args, f"open {fmt} ({state} cache)", once)
            case = f"{fmt} N={n} {state} cache"
            total = [r["total_s"] for r in results]
            rows += [
                row("open", case, "open+analysis+attributions", total, "s", goal=f"< {OPEN_GOAL_S:g} s",
                    ok=sorted(total)[len(total) // 2] < OPEN_GOAL_S),
                row("open", case, "open_project", [r["open_s"] for r in results], "s"),
                row("open", case, "analyses[name]+touch", [r["analysis_s"] for r in results], "s"),
                row("open", case, "attributions[name]", [r["attributions_s"] for r in results], "s"),
                row("open", case, "imports (separate)", [r["import_s"] for r in results], "s"),
                row("open", case, "child process wall", [r["wall_s"] for r in results], "s", note="interpreter + imports + open"),
                row("open", case, "rchar during open", [r["rchar"] / MB for r in results], "MB",
                    note=f"data on disk {data_bytes / MB:.0f} MB (hdf5)"),
                row("open", case, "disk reads during open", [r["read_bytes"] / MB for r in results], "MB"),
                row("open", case, "h5py dataset reads", [r["h5_reads"] for r in results], "count",
                    note=", ".join(results[-1]["h5_names"][:5])),
                row("open", case, "h5py bytes read", [r["h5_bytes"] / MB for r in results], "MB"),
                row("open", case, "zarr chunk reads", [r["zarr_reads"] for r in results], "count",
                    note=", ".join(k.split(store.name + "/")[-1] for k in results[-1]["zarr_keys"][:5])),
                row("open", case, "zarr chunk bytes", [r["zarr_bytes"] / MB for r in results], "MB"),
                row("open", case, "peak RSS", [r["peak_rss_bytes"] / MB for r in results], "MB"),
            ]
    return rows


def measure_convert(args, work: Path, n: int, image: tuple[int, int, int], disk_rate: float,
                    write_rate: float) -> tuple[list[dict], Path, Path]:
    spec = Spec(n=n, channels=image[0], height=image[1], width=image[2], chunk_rows=args.h5_chunk_rows,
                compression=args.h5_compression)
    print(f"convert: {spec.name}", flush=True)
    t0 = time.perf_counter()
    yaml_path = generate_project(work / spec.name, spec)
    generate_s = time.perf_counter() - t0
    logical = source_bytes(yaml_path.parent)
    on_disk = tree_bytes(yaml_path.parent)
    out = work / f"{spec.name}.converted.zarr"
    sources = project_files(yaml_path.parent)

    def once():
        shutil.rmtree(out, ignore_errors=True)
        os.sync()  # the previous repeat's write-back does not overlap this one
        evict(sources)
        result = run_child([sys.executable, "-m", "benchmarks.io", "child-convert", str(yaml_path), str(out)])
        result["store_bytes"] = tree_bytes(out)
        # the same files read plainly, evicted again, right after: the disk's rate for these bytes in the state it
        # was in for this conversion (a virtual disk's rate varies with what its host has cached; a fresh probe
        # file, as in `disk`, may be served from there)
        evict(sources)
        result["source_read_rate"] = sequential_read_rate(sources)
        return result

    results = repeated(args, f"convert {logical / MB:.0f} MB", once)
    rates = [logical / r["convert_s"] / MB for r in results]
    median_rate = sorted(rates)[len(rates) // 2]

    def read_only():
        evict(sources)
        return run_child([sys.executable, "-m", "benchmarks.io", "child-read-source", str(yaml_path)])

    source_reads = [] if args.no_diagnostics else repeated(args, "read sources only (diagnostic)", read_only)
    case = f"N={n} {'x'.join(map(str, image))}, {logical / MB:.0f} MB"
    limit = dirty_limit_bytes()
    regime = ("unknown page-cache dirty limit" if limit is None else
              f"{'within' if logical < limit else 'beyond'} the page cache's dirty limit (~{limit / MB:.0f} MB): "
              + ("the disk's write rate does not bind" if logical < limit else "writes wait for the disk"))
    rows = [
        row("convert", case, "generate_s", generate_s, "s", note="0 when reused from --work"),
        row("convert", case, "source bytes (logical)", logical / MB, "MB", note=f"{on_disk / MB:.0f} MB of files"),
        row("convert", case, "convert_s", [r["convert_s"] for r in results], "s", note="sources evicted from page cache"),
        row("convert", case, "throughput", rates, "MB/s", note="logical source MB / convert_s"),
        row("convert", case, "throughput / disk read rate", [r / disk_rate for r in rates], "ratio",
            goal=f">= {CONVERT_GOAL_RATIO:g}", ok=median_rate / disk_rate >= CONVERT_GOAL_RATIO,
            note=f"disk {disk_rate:.0f} MB/s"),
        row("convert", case, "sources read plainly (cat), right after", [r["source_read_rate"] for r in results], "MB/s",
            note="the converted files, evicted, read start to end in 8 MiB reads"),
        row("convert", case, "throughput / plain read of the sources", [r * on_disk / (r_["source_read_rate"] * logical)
                                                                        for r, r_ in zip(rates, results)], "ratio",
            note="plain read time of the files / convert time, each repeat with its own plain read"),
        row("convert", case, "throughput / disk write rate", [r / write_rate for r in rates], "ratio",
            note=f"the largest disk probe wrote {write_rate:.0f} MB/s with fsync; {regime}"),
        row("convert", case, "sync after convert", [r["sync_s"] for r in results], "s", note="os.sync() of the written store"),
        row("convert", case, "throughput incl. sync", [logical / (r["convert_s"] + r["sync_s"]) / MB for r in results], "MB/s"),
        row("convert", case, "disk reads", [r["read_bytes"] / MB for r in results], "MB", note="shows the sources came from disk"),
        row("convert", case, "store size", [r["store_bytes"] / MB for r in results], "MB",
            note=f"compression {logical / results[-1]['store_bytes']:.2f}x, chosen: {results[-1]['compression']}"),
        row("convert", case, "peak RSS", [r["peak_rss_bytes"] / MB for r in results], "MB"),
        row("convert", case, "CPU busy during convert", [r["convert_cpu_s"] / r["convert_s"] for r in results],
            "cores", note=f"(user+sys CPU s) / convert_s, of {machine_cores()} cores"),
        row("convert", case, "samples verified against source", [r["verified_samples"] for r in results], "count",
            note="random samples of every variable + all labels equal"),
    ]
    if source_reads:
        rows.append(row("convert", case, "read sources only (diagnostic)", [logical / r["read_s"] / MB for r in source_reads],
                        "MB/s", note="open_project + load every write block, nothing written"))
    return rows, yaml_path, out


def machine_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def measure_reads(args, yaml_path: Path, store: Path, n_reads: int) -> list[dict]:
    """Random single-sample reads from the converted store and from the HDF5 sources."""
    import numpy as np  # noqa: F401

    folder = yaml_path.parent
    spec = json.loads((folder / "spec.json").read_text())
    attribution_group = "attributions/lrp_epsilon_plus"
    readers = [
        ("zarr", "input", dict(reader="zarr", path=str(store), group="inputs", variable="input", files=[str(store / "inputs")])),
        ("zarr", "attribution", dict(reader="zarr", path=str(store), group=attribution_group, variable="attribution",
                                     files=[str(store / attribution_group)])),
        ("hdf5-xarray", "input", dict(reader="hdf5-xarray", path=str(folder / "dataset.h5"), kind="input", variable="input",
                                      files=[str(folder / "dataset.h5")])),
        ("hdf5-xarray", "attribution", dict(reader="hdf5-xarray", path=str(folder / "attribution-0.h5"), kind="attribution",
                                            variable="attribution", files=[str(folder / "attribution-0.h5")])),
        ("h5py", "input", dict(reader="h5py", path=str(folder / "dataset.h5"), variable="data", files=[str(folder / "dataset.h5")])),
        ("h5py", "attribution", dict(reader="h5py", path=str(folder / "attribution-0.h5"), variable="attribution",
                                     files=[str(folder / "attribution-0.h5")])),
    ]
    states = ["warm"] if args.no_cold else ["warm", "cold"]
    cases = [{**config, "name": f"{reader} {variable} {state}", "cold": state == "cold"}
             for state in states for reader, variable, config in readers]
    print(f"reads: {n_reads} random samples per case from {store.name} and {folder.name}", flush=True)
    seeds = iter(range(1000))

    def once():
        config = {"cases": cases, "reads": n_reads, "skip": 10, "seed": next(seeds), "n_samples": spec["n"]}
        return run_child([sys.executable, "-m", "benchmarks.io", "child-reads", json.dumps(config)])

    results = repeated(args, "random reads", once)
    rows = []
    for case in cases:
        per = [r["cases"][case["name"]] for r in results]
        shape = "x".join(map(str, per[0]["shape"]))
        label = f"{case['name']} cache, N={spec['n']}, {shape} {per[0]['dtype']}"
        rows += [row("reads", label, "latency median", [p["median_s"] * 1e3 for p in per], "ms",
                     note="first 10 reads of each case dropped"),
                 row("reads", label, "latency p95", [p["p95_s"] * 1e3 for p in per], "ms"),
                 row("reads", label, "samples/s", [p["per_s"] for p in per], "1/s", note="one thread, one sample at a time"),
                 row("reads", label, "open", [p["open_s"] for p in per], "s")]
    return rows


# ------------------------------------------------------------------------------------------------------ driver


def parse_image(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.lower().replace("×", "x").split("x"))
    if len(parts) != 3:
        raise SystemExit(f"expected C×H×W such as 3x64x64, got {text!r}")
    return parts


def run(args) -> int:
    sizes = parse_sizes(args.sizes, SMOKE_SIZES if args.smoke else DEFAULT_SIZES)
    if args.smoke:
        args.no_cold = args.no_diagnostics = True
    only = set(args.only or MEASUREMENTS)
    if "convert" in only:
        only.add("disk")
    work = Path(args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    machine = machine_info(work)
    started = time.perf_counter()
    rows: list[dict] = []
    notes = [
        f"each case: {args.warmup} warm-up run(s) dropped, median of {args.repeats} repeats; every run in a fresh process",
        "open: time from open_project(path) to the analysis tree's category metadata touched and every attribution "
        "set opened; imports of numpy/xarray/zarr/h5py/dask/relaylab are timed separately, before it",
        "cold cache = the project's files evicted with posix_fadvise(DONTNEED) before the run; warm = left in the page cache",
        "convert: sources evicted before each repeat, the previous output deleted and os.sync()ed; "
        "the disk rate is a fresh file's sequential read after fsync + eviction in this run; each conversion is also "
        "compared with a plain read of its own source files, evicted, right after it (this virtual disk's read rate "
        "varies with what its host caches: the same files read at 1.1 to 3.6 GB/s from one run to the next)",
        "disk: write rates of fresh files with fsync at each size; a file beyond the page cache's dirty limit shows "
        "what the disk sustains, which bounds any copy of incompressible data larger than that limit",
        "MB = 10^6 bytes",
    ]
    disk_rate = write_rate = None
    if "disk" in only:
        print(f"disk: sequential rate in {work}", flush=True)
        disk_rows, disk_rate, write_rate = measure_disk(args, work, sizes["disk"])
        rows += disk_rows
    if "open" in only:
        for n in sizes["open"]:
            rows += measure_open(args, work, n, parse_image(args.open_image))
    converted = None
    if "convert" in only:
        for n in sizes["convert"]:
            convert_rows, yaml_path, out = measure_convert(args, work, n, parse_image(args.convert_image), disk_rate,
                                                           write_rate)
            rows += convert_rows
            converted = (yaml_path, out)
    if "reads" in only:
        if converted is None:
            image = parse_image(args.convert_image)
            spec = Spec(n=sizes["convert"][0], channels=image[0], height=image[1], width=image[2],
                        chunk_rows=args.h5_chunk_rows, compression=args.h5_compression)
            yaml_path = generate_project(work / spec.name, spec)
            converted = (yaml_path, ensure_store(yaml_path)[0])
        for n_reads in sizes["reads"]:
            rows += measure_reads(args, *converted, n_reads)
    elapsed = time.perf_counter() - started
    config = {"sizes": sizes, "repeats": args.repeats, "warmup": args.warmup, "smoke": args.smoke, "work": str(work),
              "open_image": args.open_image, "convert_image": args.convert_image, "h5_chunk_rows": args.h5_chunk_rows,
              "h5_compression": args.h5_compression, "cold_variants": not args.no_cold, "only": sorted(only),
              "elapsed_s": elapsed}
    json_path, csv_path = write_results("io", rows, out=args.out, config=config, machine=machine, notes=notes)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print()
    print(f"{machine['cpu_model']}, {machine['cores_usable']} cores, {machine['memory_bytes'] / 2**30:.0f} GiB, "
          f"{machine['os']}, Python {machine['versions']['python']}, "
          + ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if k != "python"))
    if load is not None:
        print(f"load average (1 min) at start {machine['load_average_at_start'][0]:.1f}, at end {load[0]:.1f}: "
              "other processes on this machine share its cores" if max(machine['load_average_at_start'][0], load[0]) > 1.5
              else f"load average (1 min) at start {machine['load_average_at_start'][0]:.1f}, at end {load[0]:.1f}")
    print(f"data in {work} ({machine.get('data_filesystem', {}).get('fstype', '?')}); "
          f"{args.warmup} warm-up dropped, median of {args.repeats}; MB = 10^6 bytes")
    print(format_table(rows))
    print(f"\n{json_path}\n{csv_path}\n({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    task, *task_args = sys.argv[1:]
    CHILD_TASKS[task](*task_args)
