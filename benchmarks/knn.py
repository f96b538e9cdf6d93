"""kNN graph on the CPU: relaylab's exact search against pynndescent, time and recall vs N and D.

    python -m benchmarks knn                          # N = 5,000, 10,000, 20,000 × D = 256, 1024
    python -m benchmarks knn --smoke                  # N = 2,000 × D = 256
    python -m benchmarks knn --sizes n=50000 d=256 --fresh 3

This is the command behind `relaylab.analyze.knn.EXACT_MAX_SAMPLES["cpu"]` and `APPROXIMATE_WIDTH`. Data (float32,
k = 10, generated in memory): "blobs", make_blobs with 10 centres and cluster_std 2 (isotropic Gaussian blobs in D
dimensions, the hard case for a graph method), and "attribution-like", 10 groups on a 16-dimensional subspace plus
isotropic noise (attributions vary along few directions). Per (kind, N, D), in this process:

- exact: `KNNGraph(method="exact")`, relaylab's chunked brute force on BLAS;
- pynndescent k+1: `pynndescent.NNDescent(n_neighbors=k + 1)`, pynndescent's default width for k neighbours, the
  neighbour graph only (what a plain pynndescent user runs);
- pynndescent 2k+1: the same at the module's width `APPROXIMATE_WIDTH * k + 1`;
- relaylab approximate: `KNNGraph(method="approximate")`, pynndescent at that width plus relaylab's re-ranking by
  exactly recomputed distances (what method="auto" runs above `EXACT_MAX_SAMPLES`).

pynndescent runs warm: numba compiles its kernels on the first call in a process, so a call on small data of each
width is made once before anything is measured. That first-call cost is measured separately in `--fresh` fresh child
processes (the first call, then a second one on the same data: compilation ≈ first − second), on the smallest N and
D of the blobs data (the compiled code depends on the dtypes only). Times: wall (perf_counter) and CPU (process_time:
user + system of all threads, the fairer figure on shared cores); median of `--repeats` after `--warmup` dropped
runs. recall@10 = the share of the exact k neighbours found, on up to 2,000 sampled rows. The ratios are
pynndescent / exact (< 1: pynndescent is faster); "+ first call" adds the compilation to pynndescent's CPU time, the
cost of a process (or Dask worker) that builds one graph. The crossover estimate is the N at which the exact search's
CPU time equals relaylab approximate's plus the first call, on power laws through the two largest N of each (kind, D):
an extrapolation, to be checked with `--sizes n=...` around it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from . import child_result, format_table, machine_info, parse_sizes, row, run_child, write_results

DESCRIPTION = "kNN graph on the CPU: relaylab's exact search vs pynndescent (warm and first call), time and recall@10"
DEFAULT_SIZES = {"n": [5000, 10000, 20000], "d": [256, 1024]}
SMOKE_SIZES = {"n": [2000], "d": [256]}
KINDS = ("blobs", "attribution-like")
K = 10
RECALL_ROWS = 2000
SEED = 0  # data, recall sample and pynndescent's random_state (relaylab's default configuration uses 0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="data kinds (default both)")
    parser.add_argument("--fresh", type=int, default=1, help="fresh child processes timing pynndescent's first call "
                        "(numba compilation); default 1, 0 skips it")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before a child process is killed (default 1800)")


# --------------------------------------------------------------------------------------------------------- data


def generate(kind: str, n: int, d: int, seed: int = SEED):
    """(n, d) float32 samples of `kind`."""
    import numpy as np

    if kind == "blobs":
        from sklearn.datasets import make_blobs

        X, _ = make_blobs(n_samples=n, n_features=d, centers=10, cluster_std=2.0, random_state=seed)
        return X.astype(np.float32)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    latent = rng.normal(scale=2.0, size=(10, 16))[labels] + rng.normal(size=(n, 16))
    basis = rng.normal(scale=16 ** -0.5, size=(16, d))
    return (latent @ basis + rng.normal(scale=0.3, size=(n, d))).astype(np.float32)


# -------------------------------------------------------------------------------------------------- the searches


def _without_self(indices, k: int):
    """(n, w) neighbour lists -> each row's first k entries other than the row itself."""
    import numpy as np

    n = len(indices)
    others = indices != np.arange(n)[:, None]
    others &= np.cumsum(others, axis=1) <= k
    return indices[others].reshape(n, k)


def exact(X):
    from relaylab.analyze.knn import KNNGraph

    return KNNGraph(n_neighbors=K, method="exact").fit(X).indices_


def pynndescent_default(X):
    from pynndescent import NNDescent

    found, _ = NNDescent(X, n_neighbors=K + 1, metric="euclidean", random_state=SEED).neighbor_graph
    return _without_self(found, K)


def pynndescent_wide(X):
    """pynndescent alone at relaylab's width; the k nearest of its neighbours by pynndescent's own distances."""
    from pynndescent import NNDescent

    from relaylab.analyze.knn import APPROXIMATE_WIDTH

    found, _ = NNDescent(X, n_neighbors=APPROXIMATE_WIDTH * K + 1, metric="euclidean", random_state=SEED).neighbor_graph
    return _without_self(found, K)


def relaylab_approximate(X):
    from relaylab.analyze.knn import KNNGraph

    return KNNGraph(n_neighbors=K, method="approximate", random_state=SEED).fit(X).indices_


def recall(found, truth, rows) -> float:
    return sum(len(set(found[i]) & set(truth[i])) for i in rows) / (len(rows) * truth.shape[1])


def timed(fn, X, warmup: int, repeats: int):
    """`fn(X)` warmup + repeats times: ([wall s], [CPU s]) of the measured runs and the last result."""
    walls, cpus, out = [], [], None
    for i in range(warmup + repeats):
        cpu, start = time.process_time(), time.perf_counter()
        out = fn(X)
        if i >= warmup:
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - cpu)
    return walls, cpus, out


# -------------------------------------------------------------------------------------------------- child task


def child_first_call(kind: str, n: str, d: str) -> None:
    """pynndescent's first call in this fresh process (relaylab's width), then a second, warm one on the same data."""
    from relaylab.analyze.knn import APPROXIMATE_WIDTH

    X = generate(kind, int(n), int(d))
    cpu, start = time.process_time(), time.perf_counter()
    from pynndescent import NNDescent

    import_s, import_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    calls = []
    for _ in range(2):
        cpu, start = time.process_time(), time.perf_counter()
        NNDescent(X, n_neighbors=APPROXIMATE_WIDTH * K + 1, metric="euclidean", random_state=SEED).neighbor_graph
        calls.append({"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu})
    child_result({"import_s": import_s, "import_cpu_s": import_cpu_s, "first": calls[0], "warm": calls[1]})


CHILD_TASKS = {"child-first-call": child_first_call}
APPROXIMATE = {"pynndescent k+1": pynndescent_default, "pynndescent 2k+1": pynndescent_wide,
               "relaylab approximate 2k+1": relaylab_approximate}


# ------------------------------------------------------------------------------------------------------ driver


def first_call_rows(args, n: int, d: int) -> tuple[list[dict], float | None]:
    """`--fresh` fresh processes: rows, and the median compilation CPU seconds (None when not measured)."""
    results = []
    for i in range(args.fresh):
        print(f"pynndescent first call, fresh process {i + 1}/{args.fresh} (blobs n={n:,} d={d})", flush=True)
        results.append(run_child([sys.executable, "-m", "benchmarks.knn", "child-first-call", "blobs", str(n), str(d)],
                                 timeout=args.timeout))
    if not results:
        return [], None
    case = f"fresh process, blobs n={n:,} d={d}"
    compile_cpu = [r["first"]["cpu_s"] - r["warm"]["cpu_s"] for r in results]
    rows = [row("knn", case, "import pynndescent", [r["import_s"] for r in results], "s"),
            row("knn", case, "first call wall", [r["first"]["wall_s"] for r in results], "s"),
            row("knn", case, "first call cpu", [r["first"]["cpu_s"] for r in results], "s"),
            row("knn", case, "second (warm) call wall", [r["warm"]["wall_s"] for r in results], "s"),
            row("knn", case, "second (warm) call cpu", [r["warm"]["cpu_s"] for r in results], "s"),
            row("knn", case, "first-call cost (first - warm) wall",
                [r["first"]["wall_s"] - r["warm"]["wall_s"] for r in results], "s", note="numba compilation"),
            row("knn", case, "first-call cost (first - warm) cpu", compile_cpu, "s", note="numba compilation"),
            row("knn", case, "whole child process cpu", [r["cpu_s"] for r in results], "s", note="wait4")]
    return rows, statistics.median(compile_cpu)


def measure_case(args, kind: str, n: int, d: int, compile_cpu: float | None) -> tuple[list[dict], dict]:
    import numpy as np

    X = generate(kind, n, d)
    sample = np.sort(np.random.default_rng(SEED).choice(n, min(n, RECALL_ROWS), replace=False))
    case = f"{kind} n={n:,} d={d}"
    print(f"{case}: exact", flush=True)
    exact_wall, exact_cpu, truth = timed(exact, X, args.warmup, args.repeats)
    rows = [row("knn", case, "exact wall", exact_wall, "s"), row("knn", case, "exact cpu", exact_cpu, "s")]
    summary = {"kind": kind, "n": n, "d": d, "exact_cpu": statistics.median(exact_cpu),
               "exact_wall": statistics.median(exact_wall)}
    for name, fn in APPROXIMATE.items():
        print(f"{case}: {name}", flush=True)
        wall, cpu, found = timed(fn, X, args.warmup, args.repeats)
        hit = recall(found, truth, sample)
        ratio_wall = statistics.median(wall) / statistics.median(exact_wall)
        ratio_cpu = statistics.median(cpu) / statistics.median(exact_cpu)
        rows += [row("knn", case, f"{name} wall", wall, "s"),
                 row("knn", case, f"{name} cpu", cpu, "s"),
                 row("knn", case, f"{name} recall@{K}", hit, "", note=f"vs exact, {len(sample):,} rows"),
                 row("knn", case, f"{name} / exact wall", ratio_wall, "ratio", note="< 1: pynndescent faster"),
                 row("knn", case, f"{name} / exact cpu", ratio_cpu, "ratio", note="< 1: pynndescent faster")]
        summary[name] = {"cpu": statistics.median(cpu), "wall": statistics.median(wall), "recall": hit,
                         "ratio_cpu": ratio_cpu, "ratio_wall": ratio_wall}
        if compile_cpu is not None:
            cold = (statistics.median(cpu) + compile_cpu) / statistics.median(exact_cpu)
            rows.append(row("knn", case, f"{name} + first call / exact cpu", cold, "ratio",
                            note="compilation of a fresh process added"))
            summary[name]["ratio_cold_cpu"] = cold
    return rows, summary


def summary_table(summaries: list[dict], compile_cpu: float | None) -> str:
    """One line per case: CPU seconds, ratio to exact and recall of each pynndescent variant."""
    head = ["kind", "d", "n", "exact cpu s", "wall s"]
    short = {"pynndescent k+1": "k+1", "pynndescent 2k+1": "2k+1", "relaylab approximate 2k+1": "relaylab"}
    for name in APPROXIMATE:
        head += [f"{short[name]} cpu s", "/exact", "recall"]
    if compile_cpu is not None:
        head.append("relaylab+1st /exact")
    lines = [head]
    for s in summaries:
        line = [s["kind"], str(s["d"]), f"{s['n']:,}", f"{s['exact_cpu']:.2f}", f"{s['exact_wall']:.2f}"]
        for name in APPROXIMATE:
            r = s[name]
            line += [f"{r['cpu']:.2f}", f"{r['ratio_cpu']:.2f}", f"{r['recall']:.3f}"]
        if compile_cpu is not None:
            line.append(f"{s['relaylab approximate 2k+1']['ratio_cold_cpu']:.2f}")
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines)


def crossover(summaries: list[dict], compile_cpu: float) -> list[dict]:
    """Per (kind, d) with two N or more: the N where exact CPU = relaylab approximate CPU + first call, on power
    laws t = a·N^b through the two largest N (None when the exponents do not let them cross above the largest N)."""
    import math

    estimates = []
    for kind, d in dict.fromkeys((s["kind"], s["d"]) for s in summaries):
        cases = sorted((s for s in summaries if (s["kind"], s["d"]) == (kind, d)), key=lambda s: s["n"])
        if len(cases) < 2:
            continue
        (n1, e1, a1), (n2, e2, a2) = [(c["n"], c["exact_cpu"], c["relaylab approximate 2k+1"]["cpu"]) for c in cases[-2:]]
        b_exact, b_approx = math.log(e2 / e1) / math.log(n2 / n1), math.log(a2 / a1) / math.log(n2 / n1)

        def gap(n):  # > 0 while the exact search is the cheaper one
            return a2 * (n / n2) ** b_approx + compile_cpu - e2 * (n / n2) ** b_exact

        found, relation = None, "~"
        if gap(n2) <= 0:
            found, relation = n2, "<="
        elif gap(1000 * n2) < 0:
            lo, hi = n2, 1000 * n2
            while hi - lo > max(1, lo // 1000):
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if gap(mid) > 0 else (lo, mid)
            found = int(float(f"{hi:.2g}"))
        estimates.append({"kind": kind, "d": d, "crossover": found, "relation": relation, "exponent_exact": b_exact,
                          "exponent_approximate": b_approx})
    return estimates


def run(args) -> int:
    import numpy as np

    from relaylab.analyze.knn import APPROXIMATE_WIDTH

    sizes = parse_sizes(args.sizes, SMOKE_SIZES if args.smoke else DEFAULT_SIZES)
    machine = machine_info()
    started = time.perf_counter()
    rows, compile_cpu = first_call_rows(args, min(sizes["n"]), min(sizes["d"]))
    print("pynndescent warm-up (numba compilation, not reported)", flush=True)
    warm = generate("blobs", 2000, 16)
    for fn in APPROXIMATE.values():
        fn(warm)
    summaries = []
    for d in sizes["d"]:
        for kind in args.kinds:
            for n in sizes["n"]:
                case_rows, summary = measure_case(args, kind, n, d, compile_cpu)
                rows += case_rows
                summaries.append(summary)
    estimates = crossover(summaries, compile_cpu) if compile_cpu is not None else []
    for e in (e for e in estimates if e["crossover"] is not None):
        rows.append(row("knn", f"{e['kind']} d={e['d']}", f"crossover N {e['relation']} (exact = relaylab approximate + 1st call)",
                        float(e["crossover"]), "samples", exponent_exact=e["exponent_exact"],
                        exponent_approximate=e["exponent_approximate"], note="power-law extrapolation of CPU seconds"))
    elapsed = time.perf_counter() - started
    notes = [f"float32, k = {K}; {args.warmup} warm-up run(s) dropped, median of {args.repeats}; pynndescent warm "
             "(compiled by a call on small data first) except in the fresh-process rows",
             "wall = perf_counter, cpu = process_time (user + system, all threads); ratios are pynndescent / exact",
             f"k+1 = NNDescent(n_neighbors=k + 1) alone; 2k+1 = KNNGraph(method='approximate'), width "
             f"APPROXIMATE_WIDTH * k + 1 = {APPROXIMATE_WIDTH * K + 1}, distances recomputed",
             f"recall@{K} vs the exact search on up to {RECALL_ROWS:,} sampled rows",
             f"numpy {np.__version__}; BLAS threads follow OMP/OPENBLAS_NUM_THREADS "
             f"({os.environ.get('OPENBLAS_NUM_THREADS') or os.environ.get('OMP_NUM_THREADS') or 'unset'})"]
    if compile_cpu is not None:
        notes.append(f"'+ first call' adds the median first-call cost of {args.fresh} fresh process(es), "
                     f"{compile_cpu:.1f} CPU s, to pynndescent's CPU time")
    config = {"sizes": sizes, "kinds": args.kinds, "k": K, "repeats": args.repeats, "warmup": args.warmup,
              "fresh": args.fresh, "smoke": args.smoke, "approximate_width": APPROXIMATE_WIDTH, "elapsed_s": elapsed}
    for name in ("pynndescent", "numba", "scikit-learn", "scipy"):
        machine["versions"].setdefault(name, _version(name))
    json_path, csv_path = write_results("knn", rows, out=args.out, config=config, machine=machine, notes=notes)
    load = os.getloadavg()
    print()
    print(f"{machine['cpu_model']}, {machine['cores_usable']} cores, {machine['memory_bytes'] / 2**30:.0f} GiB, "
          f"load average (1 min) at start {machine['load_average_at_start'][0]:.1f}, at end {load[0]:.1f}; "
          f"pynndescent {machine['versions']['pynndescent']}, numba {machine['versions']['numba']}")
    print(format_table(rows))
    print()
    print(f"CPU seconds, ratios pynndescent / exact (< 1: pynndescent faster), recall@{K}"
          + (f"; +1st adds {compile_cpu:.1f} CPU s of first-call compilation" if compile_cpu is not None else ""))
    print(summary_table(summaries, compile_cpu))
    for e in estimates:
        at = f"{e['relation']} {e['crossover']:,}" if e["crossover"] is not None else "beyond 1000x the largest N"
        print(f"{e['kind']} d={e['d']}: exact CPU = relaylab approximate + first call at N {at} "
              f"(power laws through the two largest N: exact N^{e['exponent_exact']:.2f}, approximate N^{e['exponent_approximate']:.2f})")
    print(f"\n{json_path}\n{csv_path}\n({elapsed:.0f} s)")
    return 0


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    task, *task_args = sys.argv[1:]
    CHILD_TASKS[task](*task_args)
