"""SpRAy benchmarks: one category's analysis end to end, per stage, against CoRelAy 1.0.0 and scikit-learn.

    python -m benchmarks spray                         # N = 1000..20000 × D = 256, 1024; CoRelAy/scikit-learn where they fit
    python -m benchmarks spray --smoke                 # N ≤ 2000, under a few minutes
    python -m benchmarks spray --sizes n=5000,10000 d=1024 --embeddings tsne
    python -m benchmarks spray --only target           # the 20,000 × 1024 goal, each variant run once
    python -m benchmarks spray --device cuda           # relaylab's kNN search, Laplacian and eigensolver on the GPU
    python -m benchmarks spray --only many             # 1000 classes × 50: `relaylab analyze` vs CoRelAy's loop (spray_many.py)

Data: attribution-like features, 4 planted groups of 40/30/20/10 % on a 16-dimensional subspace plus isotropic
noise (float32), generated once per (N, D) and kept in --work. Every implementation runs in its own child process
(peak memory = the child's ru_maxrss from wait4); inside it, `--warmup` runs (numba compilation, BLAS start-up) are
dropped and the median of `--repeats` is reported. Stages of relaylab (the steps `relaylab.analyze.config.build_spray`
builds from the default configuration, run one after the other as `SpRAy.fit` runs them): preprocess, kNN graph,
affinity + Laplacian + eigensolver ("spectral"), each clustering (k-means k = 2..5, HDBSCAN) and each 2-D embedding.
CoRelAy runs its own default processors (pdist, SparseKNN, SymmetricNormalLaplacian, EigenDecomposition(32),
KMeans) in the Python of RELAYLAB_CORELAY_PYTHON (./dev test sets it up in .venv-corelay); scikit-learn's
`SpectralClustering(affinity="nearest_neighbors", n_neighbors=10)` runs with eigen_solver "arpack" and, when pyamg
is importable, "amg". Each is compared with relaylab's "comparable" time (preprocess + kNN + spectral + k-means with
the planted k) and by the adjusted Rand index of its labels against relaylab's k-means-4 labels.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from . import parse_sizes, child_result, format_table, machine_info, row, run_child, write_results

DESCRIPTION = "SpRAy per category vs N and D, per stage, against CoRelAy 1.0.0 and scikit-learn's SpectralClustering"
MEASUREMENTS = ("scaling", "target", "many")
DEFAULT_SIZES = {"n": [1000, 5000, 10000, 20000], "d": [256, 1024], "target": [20000]}
SMOKE_SIZES = {"n": [500, 2000], "d": [256], "target": []}
GROUPS = (0.4, 0.3, 0.2, 0.1)  # planted group sizes
K = len(GROUPS)
TARGET_D = 1024
TARGET_S = 5.0
# largest N each competitor is run at by default (CoRelAy: dense N×N float64 distances and argsort, 20k took 229 s and
# 6.7 GB on 2 cores; scikit-learn arpack 20k 372 s; amg 30k 60 s, see /work/shared/LIBRARY-NOTES.md)
MAX_N = {"corelay": 10000, "sklearn-arpack": 10000, "sklearn-amg": 50000}
TARGET_VARIANTS = {"default": [], "pca-128": [{"pca": {"n_components": 128}}],
                   "random-projection-128": [{"random_projection": {"n_components": 128}}],
                   "pca-64": [{"pca": {"n_components": 64}}]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", nargs="+", choices=MEASUREMENTS, default=None, help="run only these measurements")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where relaylab's kNN search, Laplacian and "
                        "eigensolver run (default cpu; cuda needs CuPy: pip install 'relaylab[gpu]')")
    parser.add_argument("--embeddings", nargs="*", choices=("tsne", "umap"), default=None,
                        help="2-D embeddings to time (default tsne umap; tsne with --smoke; none: give the flag alone)")
    parser.add_argument("--competitors", nargs="*", choices=tuple(MAX_N), default=list(MAX_N),
                        help="implementations to compare with (default all that are installed)")
    for name, limit in MAX_N.items():
        parser.add_argument(f"--max-n-{name}", type=int, default=limit, help=f"largest N to run {name} at (default {limit:,})")
    parser.add_argument("--work", default=str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "relaylab" / "benchmarks"),
                        help="folder for the generated data (kept and reused; default ~/.cache/relaylab/benchmarks)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before a child process is killed (default 1800)")


# --------------------------------------------------------------------------------------------------------- data


def generate(work: Path, n: int, d: int, seed: int = 0) -> tuple[Path, Path]:
    """(n, d) float32 features and their planted group labels, as .npy files (reused when present)."""
    import numpy as np

    data, truth = work / f"spray-{n}x{d}-s{seed}.npy", work / f"spray-{n}x{d}-s{seed}-truth.npy"
    if data.is_file() and truth.is_file():
        return data, truth
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(K), np.diff(np.round(np.cumsum((0,) + GROUPS) * n).astype(int))))
    centres = rng.normal(scale=2.0, size=(K, 16))
    latent = centres[labels] + rng.normal(size=(n, 16))
    basis = rng.normal(scale=16 ** -0.5, size=(16, d))
    features = (latent @ basis + rng.normal(scale=0.3, size=(n, d))).astype(np.float32)
    work.mkdir(parents=True, exist_ok=True)
    np.save(data, features)
    np.save(truth, labels.astype(np.int64))
    return data, truth


# -------------------------------------------------------------------------------------------------- child tasks


def _vm_peak() -> int:
    """This process's peak resident memory so far (VmHWM), bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _timed(stages: dict, name: str, fn, *args):
    cpu, start = time.process_time(), time.perf_counter()
    out = fn(*args)
    stages[name] = {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu}
    return out


def _measured_runs(options: dict, run_once) -> tuple[dict, object]:
    """`run_once(stages)` warm-up + repeats times (it times its stages into `stages` and returns its labels): the
    measured runs and the peak memory above what the process held before them, and the last run's labels."""
    baseline = _vm_peak()
    runs, labels = [], None
    for _ in range(options["warmup"] + options["repeats"]):
        stages: dict = {}
        labels = run_once(stages)
        runs.append(stages)
    return {"runs": runs[options["warmup"]:], "baseline_rss_bytes": baseline,
            "peak_above_baseline_bytes": _vm_peak() - baseline}, labels


def child_relaylab(data_path: str, labels_path: str, options_json: str) -> None:
    """relaylab's steps from the default configuration (with `options` overrides), stage by stage."""
    start = time.perf_counter()
    import numpy as np
    from sklearn.base import clone

    from relaylab.analyze.config import build_spray, load_config

    import_s = time.perf_counter() - start
    options = json.loads(options_json)
    config = load_config(None)
    config.update(device=options["device"], preprocessing=options["preprocessing"],
                  embeddings={name: {} for name in options["embeddings"]})
    data = np.load(data_path)
    spray = build_spray(config)
    width = {}

    def run_once(stages: dict) -> dict:
        features = _timed(stages, "preprocess", lambda: np.asarray(clone(spray.preprocessing).fit_transform(data)).reshape(len(data), -1))
        width["features"] = int(features.shape[1])
        graph = _timed(stages, "knn", clone(spray.knn).fit_transform, features)
        spectral = _timed(stages, "spectral", lambda: clone(spray.spectral).fit(clone(spray.affinity).fit_transform(graph)))
        labels = {name: _timed(stages, name, clone(est).fit_predict, spectral.embedding_) for name, est in spray.clusterings.items()}
        for name, est in spray.embeddings.items():
            _timed(stages, name, clone(est).fit_transform, spectral.embedding_)
        return labels

    measured, labels = _measured_runs(options, run_once)
    np.savez(labels_path, **labels)
    child_result({"import_s": import_s, **measured, **width, "knn_method": getattr(spray.knn, "method", None)})


def child_corelay(data_path: str, labels_path: str, options_json: str) -> None:
    """CoRelAy 1.0.0's default SpRAy processors, called one after the other as its SpectralClustering pipeline does."""
    start = time.perf_counter()
    import numpy as np
    from corelay.processor.affinity import SparseKNN
    from corelay.processor.clustering import KMeans
    from corelay.processor.distance import SciPyPDist
    from corelay.processor.embedding import EigenDecomposition
    from corelay.processor.laplacian import SymmetricNormalLaplacian

    import_s = time.perf_counter() - start
    options = json.loads(options_json)
    data = np.load(data_path)

    def run_once(stages: dict):
        distances = _timed(stages, "distance", SciPyPDist(metric="euclidean"), data)
        affinity = _timed(stages, "knn", SparseKNN(n_neighbors=10, symmetric=True), distances)
        del distances
        _, vectors = _timed(stages, "spectral", lambda: EigenDecomposition(n_eigval=32)(SymmetricNormalLaplacian()(affinity)))
        return _timed(stages, f"kmeans-{K:02d}", KMeans(n_clusters=K, kwargs={"n_init": 10, "random_state": 0}), vectors)

    measured, labels = _measured_runs(options, run_once)
    np.save(labels_path, labels)
    child_result({"import_s": import_s, **measured})


def child_sklearn(data_path: str, labels_path: str, options_json: str) -> None:
    """scikit-learn's SpectralClustering on a 10-nearest-neighbour graph."""
    start = time.perf_counter()
    import numpy as np
    from sklearn.cluster import SpectralClustering

    import_s = time.perf_counter() - start
    options = json.loads(options_json)
    data = np.load(data_path)

    def run_once(stages: dict):
        model = SpectralClustering(n_clusters=K, affinity="nearest_neighbors", n_neighbors=10, eigen_solver=options["solver"],
                                   random_state=0, n_jobs=1)
        return _timed(stages, "total", model.fit_predict, data)

    measured, labels = _measured_runs(options, run_once)
    np.save(labels_path, labels)
    child_result({"import_s": import_s, **measured})


CHILD_TASKS = {"child-relaylab": child_relaylab, "child-corelay": child_corelay, "child-sklearn": child_sklearn}


# ------------------------------------------------------------------------------------------------- measurements


def _median(values) -> float:
    return statistics.median(values)


def _stage_rows(case: str, result: dict, note: str = "") -> list[dict]:
    rows = []
    for stage in result["runs"][0]:
        rows.append(row("spray", case, f"{stage} wall", [r[stage]["wall_s"] for r in result["runs"]], "s", note=note))
        rows.append(row("spray", case, f"{stage} cpu", [r[stage]["cpu_s"] for r in result["runs"]], "s"))
    return rows


def _memory_rows(case: str, result: dict) -> list[dict]:
    return [row("spray", case, "peak RSS", result["peak_rss_bytes"] / 1e6, "MB", note="child's ru_maxrss (wait4)"),
            row("spray", case, "peak RSS above imports + data", result["peak_above_baseline_bytes"] / 1e6, "MB",
                note="VmHWM at the end minus VmHWM before the first run")]


def comparable(run: dict) -> float:
    """relaylab's time for what the competitors do: features → kNN → spectral → k-means with the planted k."""
    return sum(run[s]["wall_s"] for s in ("preprocess", "knn", "spectral", f"kmeans-{K:02d}"))


def corelay_python() -> str | None:
    python = os.environ.get("RELAYLAB_CORELAY_PYTHON")
    if python:
        return python
    local = Path(__file__).resolve().parent.parent / ".venv-corelay" / "bin" / "python"
    return str(local) if local.is_file() else None


def has_pyamg() -> bool:
    import importlib.util

    return importlib.util.find_spec("pyamg") is not None


def measure_case(args, work: Path, n: int, d: int, out_dir: Path) -> tuple[list[dict], dict]:
    """relaylab and each competitor that fits at (n, d); returns rows and a summary for the plot."""
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    data, truth_path = generate(work, n, d)
    truth = np.load(truth_path)
    options = {"warmup": args.warmup, "repeats": args.repeats}
    case = f"N={n} D={d}"
    print(f"{case}: relaylab ({args.device})", flush=True)
    ours_labels = out_dir / f"relaylab-{n}x{d}.npz"
    ours = run_child([sys.executable, "-m", "benchmarks.spray", "child-relaylab", str(data), str(ours_labels),
                      json.dumps({**options, "device": args.device, "preprocessing": [], "embeddings": args.embeddings})],
                     timeout=args.timeout)
    with np.load(ours_labels) as saved:
        reference = saved[f"kmeans-{K:02d}"]
    ours_comparable = [comparable(r) for r in ours["runs"]]
    ours_total = [sum(s["wall_s"] for s in r.values()) for r in ours["runs"]]
    label = f"{case} relaylab {args.device}"
    rows = _stage_rows(label, ours, note=f"kNN {ours['knn_method']}") + _memory_rows(label, ours)
    rows += [row("spray", label, "end to end (all stages)", ours_total, "s"),
             row("spray", label, f"comparable (preprocess+knn+spectral+kmeans-{K:02d})", ours_comparable, "s"),
             row("spray", label, f"ARI kmeans-{K:02d} vs planted", adjusted_rand_score(truth, reference), "ARI")]
    summary = {"relaylab": _median(ours_comparable)}
    python = corelay_python()
    sklearn = [sys.executable, "-m", "benchmarks.spray", "child-sklearn"]
    # name → (child command, its options) or the reason it cannot run
    competitors = {"corelay": ([python, "-m", "benchmarks.spray", "child-corelay"], {}) if python
                   else "RELAYLAB_CORELAY_PYTHON is not set and there is no .venv-corelay",
                   "sklearn-arpack": (sklearn, {"solver": "arpack"}),
                   "sklearn-amg": (sklearn, {"solver": "amg"}) if has_pyamg() else "pyamg is not installed"}
    for name in args.competitors:
        limit = getattr(args, f"max_n_{name.replace('-', '_')}")
        if isinstance(competitors[name], str) or n > limit:
            why = competitors[name] if isinstance(competitors[name], str) else f"N > --max-n-{name} {limit:,}"
            print(f"{case}: {name} skipped ({why})", flush=True)
            rows.append(row("spray", f"{case} {name}", "skipped", 0, "", note=why))
            continue
        argv, extra = competitors[name]
        print(f"{case}: {name}", flush=True)
        labels_path = out_dir / f"{name}-{n}x{d}.npy"
        try:
            theirs = run_child([*argv, str(data), str(labels_path), json.dumps({**options, **extra})], timeout=args.timeout)
        except Exception as error:  # a competitor running out of memory or time is a result, not a crash of the suite
            print(f"{case}: {name} failed: {error}", flush=True)
            rows.append(row("spray", f"{case} {name}", "failed", 0, "", note=str(error).splitlines()[0][:200]))
            continue
        totals = [sum(s["wall_s"] for s in r.values()) for r in theirs["runs"]]
        ari = adjusted_rand_score(reference, np.load(labels_path))
        label = f"{case} {name}"
        rows += _stage_rows(label, theirs) + _memory_rows(label, theirs)
        rows += [row("spray", label, "end to end", totals, "s"),
                 row("spray", label, "time / relaylab comparable", [t / _median(ours_comparable) for t in totals], "ratio",
                     note="> 1: relaylab is faster"),
                 row("spray", label, f"ARI vs relaylab kmeans-{K:02d}", ari, "ARI"),
                 row("spray", label, "ARI vs planted", adjusted_rand_score(truth, np.load(labels_path)), "ARI")]
        summary[name] = _median(totals)
    return rows, summary


def measure_target(args, work: Path, n: int, out_dir: Path) -> list[dict]:
    """The goal of issue 3: SpRAy of N × 1024 in ≤ 5 s on 2 cores and ≥ 40× faster than CoRelAy in the same run;
    each variant (and CoRelAy, when installed) runs once (no warm-up, no repeats)."""
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    data, truth_path = generate(work, n, TARGET_D)
    truth = np.load(truth_path)
    rows, reference, comparables = [], None, {}
    for variant, preprocessing in TARGET_VARIANTS.items():
        print(f"target N={n} D={TARGET_D}: {variant} (once)", flush=True)
        labels_path = out_dir / f"target-{variant}-{n}.npz"
        result = run_child([sys.executable, "-m", "benchmarks.spray", "child-relaylab", str(data), str(labels_path),
                            json.dumps({"warmup": 0, "repeats": 1, "device": args.device, "preprocessing": preprocessing,
                                        "embeddings": []})], timeout=args.timeout)
        with np.load(labels_path) as saved:
            labels = saved[f"kmeans-{K:02d}"]
        reference = labels if reference is None else reference
        run = result["runs"][0]
        core = sum(run[s]["wall_s"] for s in ("preprocess", "knn", "spectral"))
        everything = sum(s["wall_s"] for s in run.values())
        case = f"target N={n} D={TARGET_D} {variant} {args.device}"
        rows += _stage_rows(case, result, note=f"kNN {result['knn_method']}, {result['features']} features") + _memory_rows(case, result)
        rows += [row("spray", case, "preprocess+knn+spectral", core, "s", goal=f"<= {TARGET_S:g} s", ok=core <= TARGET_S),
                 row("spray", case, "with clusterings (kmeans 2-5, hdbscan)", everything, "s", goal=f"<= {TARGET_S:g} s",
                     ok=everything <= TARGET_S),
                 row("spray", case, f"ARI kmeans-{K:02d} vs default", adjusted_rand_score(reference, labels), "ARI"),
                 row("spray", case, f"ARI kmeans-{K:02d} vs planted", adjusted_rand_score(truth, labels), "ARI")]
        comparables[variant] = comparable(run)
    python = corelay_python()
    if "corelay" in args.competitors and python:  # the goal is stated against CoRelAy in the same run: once, at this N
        print(f"target N={n} D={TARGET_D}: corelay (once)", flush=True)
        labels_path = out_dir / f"target-corelay-{n}.npy"
        theirs = run_child([python, "-m", "benchmarks.spray", "child-corelay", str(data), str(labels_path),
                            json.dumps({"warmup": 0, "repeats": 1})], timeout=args.timeout)
        total = sum(s["wall_s"] for s in theirs["runs"][0].values())
        case = f"target N={n} D={TARGET_D} corelay"
        rows += _stage_rows(case, theirs) + _memory_rows(case, theirs)
        rows += [row("spray", case, "end to end", total, "s"),
                 row("spray", case, f"ARI vs default kmeans-{K:02d}", adjusted_rand_score(reference, np.load(labels_path)), "ARI")]
        rows += [row("spray", f"target N={n} D={TARGET_D} {variant} {args.device}", "CoRelAy time / this (comparable stages)",
                     total / seconds, "ratio", goal=">= 40", ok=total / seconds >= 40) for variant, seconds in comparables.items()]
    return rows


# ------------------------------------------------------------------------------------------------------- plot


def plot(path: Path, summaries: dict[int, dict[int, dict[str, float]]], title: str) -> None:
    """Log-log seconds vs N, one panel per D, one line per implementation (Pillow: no plotting library needed)."""
    import math

    from PIL import Image, ImageDraw

    colours = {"relaylab": (31, 119, 180), "corelay": (214, 39, 40), "sklearn-arpack": (44, 160, 44), "sklearn-amg": (148, 103, 189)}
    panels = sorted(summaries)
    width, height, margin = 460, 360, 60
    image = Image.new("RGB", (width * len(panels), height + 30), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 5), title, fill="black")
    points = [(n, t) for d in panels for n, times in summaries[d].items() for t in times.values() if t > 0]
    if not points:
        return
    lo_n, hi_n = math.log10(min(p[0] for p in points)), math.log10(max(p[0] for p in points))
    lo_t, hi_t = math.floor(math.log10(min(p[1] for p in points))), math.ceil(math.log10(max(p[1] for p in points)))
    hi_n, hi_t = max(hi_n, lo_n + 1e-9), max(hi_t, lo_t + 1)
    for i, d in enumerate(panels):
        x0, y0, x1, y1 = i * width + margin, 30 + 20, (i + 1) * width - 20, height - 20

        def xy(n, t):
            return (x0 + (math.log10(n) - lo_n) / (hi_n - lo_n) * (x1 - x0), y1 - (math.log10(t) - lo_t) / (hi_t - lo_t) * (y1 - y0))

        draw.rectangle((x0, y0, x1, y1), outline="black")
        draw.text((x0, y0 - 16), f"D = {d}: seconds vs N (log-log)", fill="black")
        for e in range(lo_t, hi_t + 1):
            y = xy(10 ** lo_n, 10.0 ** e)[1]
            draw.line((x0, y, x1, y), fill=(225, 225, 225))
            draw.text((x0 - 45, y - 6), f"{10.0 ** e:g} s", fill="black")
        for n in sorted(summaries[d]):
            x = xy(n, 10.0 ** lo_t)[0]
            draw.text((x - 12, y1 + 4), f"{n:,}", fill="black")
        for j, (name, colour) in enumerate(colours.items()):
            line = [xy(n, times[name]) for n, times in sorted(summaries[d].items()) if times.get(name, 0) > 0]
            if line:
                if len(line) > 1:
                    draw.line(line, fill=colour, width=2)
                for x, y in line:
                    draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
                draw.text((x0 + 8, y0 + 6 + 14 * j), name, fill=colour)
    image.save(path)


# ------------------------------------------------------------------------------------------------------ driver


def run(args) -> int:
    own = [t for t in args.sizes or [] if not t.startswith("many")]  # many= and many_large= are spray_many's
    sizes = parse_sizes(own, SMOKE_SIZES if args.smoke else DEFAULT_SIZES)
    if args.embeddings is None:
        args.embeddings = ["tsne"] if args.smoke else ["tsne", "umap"]
    only = set(args.only or MEASUREMENTS)
    work = Path(args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    labels_dir = work / "spray-labels"
    labels_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info(work)
    machine["corelay_python"] = corelay_python()
    started = time.perf_counter()
    rows: list[dict] = []
    summaries: dict[int, dict[int, dict[str, float]]] = {}
    if "scaling" in only:
        for d in sizes["d"]:
            for n in sizes["n"]:
                case_rows, summary = measure_case(args, work, n, d, labels_dir)
                rows += case_rows
                summaries.setdefault(d, {})[n] = summary
    if "target" in only:
        for n in sizes["target"]:
            rows += measure_target(args, work, n, labels_dir)
    if "many" in only:
        from . import spray_many

        rows += spray_many.measure(args, work)
    elapsed = time.perf_counter() - started
    notes = [
        f"{args.warmup} warm-up run(s) dropped inside each child process, median of {args.repeats}; target variants run once",
        "wall = perf_counter, cpu = process_time (all threads of the child); stages as SpRAy.fit runs them",
        f"comparable = relaylab preprocess + knn + spectral + kmeans-{K:02d}, what CoRelAy's pipeline and SpectralClustering do",
        f"data: {K} planted groups ({', '.join(f'{g:.0%}' for g in GROUPS)}) on a 16-dim subspace + noise, float32",
        "MB = 10^6 bytes",
    ]
    config = {"sizes": sizes, "repeats": args.repeats, "warmup": args.warmup, "smoke": args.smoke, "device": args.device,
              "embeddings": args.embeddings, "competitors": args.competitors, "only": sorted(only), "elapsed_s": elapsed,
              "max_n": {name: getattr(args, f"max_n_{name.replace('-', '_')}") for name in MAX_N}}
    json_path, csv_path = write_results("spray", rows, out=out, config=config, machine=machine, notes=notes)
    png_path = json_path.with_suffix(".png")
    if summaries:
        plot(png_path, summaries, f"SpRAy of one category ({args.device}): relaylab comparable stages vs competitors, median seconds")
    print()
    print(f"{machine['cpu_model']}, {machine['cores_usable']} cores, {machine['memory_bytes'] / 2**30:.0f} GiB, "
          f"load average (1 min) at start {machine['load_average_at_start'][0]:.1f}, at end {os.getloadavg()[0]:.1f}")
    print(format_table(rows))
    print(f"\n{json_path}\n{csv_path}" + (f"\n{png_path}" if summaries else "") + f"\n({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    task, *task_args = sys.argv[1:]
    CHILD_TASKS[task](*task_args)
