"""Dask scaling: the same SpRAy analysis of a many-class project on a LocalCluster of 1, 2, … workers, and on a
scheduler address when one is given; wall time per worker count, and a check that every run's result is identical.

    python -m benchmarks dask                                  # 10 classes × 2000 samples, 1 and 2 workers
    python -m benchmarks dask --smoke                          # 4 classes × 300 samples, under a minute
    python -m benchmarks dask --workers 1 2 4 8 --sizes classes=20 per_class=5000
    python -m benchmarks dask --scheduler tcp://host:8786      # also on a real cluster (workers must see the store)

Each run is a fresh child process running `relaylab analyze STORE --name RUN --workers W` on one store converted
once from a synthetic ViRelAy project (`relaylab synthetic`), so cluster start-up is part of the wall time, as a
user sees it. Identity: each run's eigenvalues and k-means labels are compared with the 1-worker run's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from . import format_table, machine_info, row, run_child, write_results

DESCRIPTION = "one many-class SpRAy analysis on LocalClusters of 1, 2, … workers (and a scheduler address): time and identity"
DEFAULT_SIZES = {"classes": 10, "per_class": 2000, "size": 32}
SMOKE_SIZES = {"classes": 4, "per_class": 300, "size": 16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", nargs="+", type=int, default=None, help="LocalCluster worker counts (default 1 2; "
                        "more than the machine's cores only oversubscribes it)")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS", help="also run on this Dask scheduler")
    parser.add_argument("--work", default=str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "relaylab" / "benchmarks"),
                        help="folder for the generated project (kept and reused)")


def parse_sizes(tokens, smoke: bool) -> dict[str, int]:
    sizes = dict(SMOKE_SIZES if smoke else DEFAULT_SIZES)
    for token in tokens or []:
        name, _, value = token.partition("=")
        if name not in sizes or not value:
            raise SystemExit(f"--sizes: expected NAME=N with NAME in {', '.join(sizes)}, got {token!r}")
        sizes[name] = int(float(value))
    return sizes


def ensure_store(work: Path, sizes: dict[str, int]) -> Path:
    """A converted synthetic project of `classes` × `per_class` samples (built once, reused)."""
    folder = work / f"dask-{sizes['classes']}x{sizes['per_class']}-{sizes['size']}"
    store = folder / "project.zarr"
    if (store / "zarr.json").exists():
        for stale in (store / "analyses").glob("bench-*"):  # left by an interrupted run
            shutil.rmtree(stale)
        return store
    from relaylab.cli import main as relaylab

    shutil.rmtree(folder, ignore_errors=True)
    n = sizes["classes"] * sizes["per_class"]
    assert relaylab(["synthetic", str(folder / "source"), "--samples", str(n), "--classes", str(sizes["classes"]),
                     "--size", str(sizes["size"]), "--attribution-files", "1"]) == 0
    assert relaylab(["convert", str(folder / "source" / "project.yaml"), str(store), "-q"]) == 0
    return store


def child_analyze(store: str, name: str, workers: str, scheduler: str) -> None:
    """In a fresh process: one analysis run."""
    from benchmarks import child_result
    from relaylab.cli import main as relaylab

    argv = ["analyze", store, "--name", name, "-q"]
    argv += ["--scheduler", scheduler] if scheduler else ["--workers", workers]
    start = time.perf_counter()
    code = relaylab(argv)
    child_result({"analyze_s": time.perf_counter() - start, "code": code})
    if code:
        sys.exit(code)


def fingerprints(store: Path, name: str) -> dict[str, tuple]:
    """Per category: eigenvalues and k-means labels, the parts a different worker count must not change."""
    import numpy as np

    from relaylab.data.project import open_project

    with open_project(store) as project:
        tree = project.analyses[name]
        return {c: (np.round(node["embedding/spectral"]["eigenvalue"].values, 6).tobytes(),
                    {k: node["cluster"][k].values.tobytes() for k in node["cluster"].data_vars if k.startswith("kmeans")})
                for c, node in tree.children.items()}


def run(args) -> int:
    sizes = parse_sizes(args.sizes, args.smoke)
    workers = args.workers or [1, 2]
    work = Path(args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    machine = machine_info(work)
    print(f"dask: {sizes['classes']} classes × {sizes['per_class']} samples, 3×{sizes['size']}×{sizes['size']} heatmaps", flush=True)
    store = ensure_store(work, sizes)
    targets = [(f"local-{w}", str(w), "") for w in workers] + ([("scheduler", "", args.scheduler)] if args.scheduler else [])
    rows, reference, identical = [], None, {}
    started = time.perf_counter()
    for label, w, scheduler in targets:
        times = []
        for i in range(args.warmup + args.repeats):
            name = f"bench-{label}-{i}"
            result = run_child([sys.executable, "-m", "benchmarks.dask", "analyze", str(store), name, w, scheduler])
            if i >= args.warmup:
                times.append(result["wall_s"])
            prints = fingerprints(store, name)
            shutil.rmtree(store / "analyses" / name)  # each run computes from scratch: none may find another's categories
            reference = reference or prints
            identical[label] = identical.get(label, True) and prints == reference
            print(f"  {label} run {i}: {result['wall_s']:.1f} s{' (warm-up)' if i < args.warmup else ''}", flush=True)
        rows.append(row("dask", label, "wall", times, "s", workers=int(w) if w else None, identical=identical[label],
                        classes=sizes["classes"], per_class=sizes["per_class"]))
    base = rows[0]["median"]
    for r in rows:
        r["speedup_vs_first"] = base / r["median"]
    notes = [f"each run: a fresh process running `relaylab analyze` (cluster start-up included); {args.warmup} warm-up "
             f"dropped, median of {args.repeats}", "identical: eigenvalues (6 decimals) and k-means labels equal the first run's"]
    config = {"sizes": sizes, "workers": workers, "scheduler": args.scheduler, "repeats": args.repeats, "warmup": args.warmup,
              "store": str(store), "elapsed_s": time.perf_counter() - started}
    json_path, csv_path = write_results("dask", rows, out=args.out, config=config, machine=machine, notes=notes)
    from .plot import scaling_png

    local = [r for r in rows if r["workers"]]
    png = scaling_png(local, json_path.with_suffix(".png"), x=lambda r: r["workers"], series=lambda r: "relaylab analyze",
                      title=f"SpRAy of {sizes['classes']} classes × {sizes['per_class']} on a LocalCluster",
                      xlabel="workers", ylabel="wall time (s)")
    print(format_table(rows))
    for r in rows:
        print(f"{r['case']}: speed-up {r['speedup_vs_first']:.2f}x, identical result: {'yes' if r['identical'] else 'NO'}")
    print(f"\n{json_path}\n{csv_path}" + (f"\n{png}" if png else ""))
    return 0 if all(identical.values()) else 1


if __name__ == "__main__":
    task, *task_args = sys.argv[1:]
    {"analyze": child_analyze}[task](*task_args)
