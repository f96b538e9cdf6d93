"""SpRAy's GPU stages at sizes the CPU cannot reach: kNN graph, affinity, eigensolver, k-means, per (N, D).

    python -m benchmarks gpu                                   # 20,000 × 1024, 1,000,000 × 256, 1,000,000 × 1024
    python -m benchmarks gpu --sizes n=100000 d=256 --device cpu

In-process (the GPU context and CuPy's kernels are warmed up once on a small problem first, not reported); data are
8 Gaussian clusters in D dimensions (float32), generated in memory; ARI of k-means-8 against the clusters checks
each run. This is the command behind the README's GPU figures; `tests/test_gpu.py` checks the GPU results against
the CPU's.
"""

from __future__ import annotations

import argparse
import time

from . import format_table, machine_info, row, write_results

DESCRIPTION = "SpRAy stages on the GPU (kNN, affinity, eigensolver, k-means) at up to 1,000,000 × 1024"
DEFAULT_SIZES = [(20_000, 1024), (1_000_000, 256), (1_000_000, 1024)]
SMOKE_SIZES = [(2_000, 64), (20_000, 256)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda", help="where the kNN search and eigensolver run (default cuda)")


def blobs(n: int, d: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 4, (8, d)).astype(np.float32)
    labels = rng.integers(0, 8, n)
    return centers[labels] + rng.standard_normal((n, d), dtype=np.float32), labels


def stages(n: int, d: int, device: str) -> dict:
    from sklearn.metrics import adjusted_rand_score

    from relaylab.analyze.graph import Affinity
    from relaylab.analyze.knn import KNNGraph
    from relaylab.analyze.spectral import SpectralEmbedding
    from relaylab.analyze.spray import kmeans

    X, labels = blobs(n, d)
    times = {}
    start = time.perf_counter()
    graph = KNNGraph(n_neighbors=10, method="exact", device=device).fit_transform(X)
    times["knn"] = time.perf_counter() - start
    start = time.perf_counter()
    affinity = Affinity().fit_transform(graph)
    times["affinity"] = time.perf_counter() - start
    start = time.perf_counter()
    embedding = SpectralEmbedding(n_components=32, device=device).fit(affinity).embedding_
    times["eigensolver"] = time.perf_counter() - start
    start = time.perf_counter()
    found = kmeans(8).fit_predict(embedding)
    times["kmeans-08"] = time.perf_counter() - start
    return {"times": times, "ari": adjusted_rand_score(labels, found)}


def run(args) -> int:
    sizes = SMOKE_SIZES if args.smoke else DEFAULT_SIZES
    if args.sizes:
        values = {k: [int(float(v)) for v in vs.split(",")] for k, _, vs in (t.partition("=") for t in args.sizes)}
        sizes = [(n, d) for n in values.get("n", [20_000]) for d in values.get("d", [1024])]
    machine = machine_info()
    if args.device == "cuda":
        import cupy

        machine["gpu"] = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
        stages(2_000, 64, args.device)  # CUDA context, cuBLAS and kernel compilation: not reported
    rows = []
    for n, d in sizes:
        runs = [stages(n, d, args.device) for _ in range(args.repeats)]
        case = f"N={n:,} D={d} {args.device}"
        for stage in runs[0]["times"]:
            rows.append(row("gpu", case, stage, [r["times"][stage] for r in runs], "s"))
        rows.append(row("gpu", case, "total", [sum(r["times"].values()) for r in runs], "s"))
        rows.append(row("gpu", case, "ARI kmeans-08 vs clusters", [r["ari"] for r in runs], "ARI"))
        print(f"{case}: {rows[-2]['median']:.1f} s, ARI {rows[-1]['median']:.3f}", flush=True)
    config = {"sizes": sizes, "device": args.device, "repeats": args.repeats}
    notes = ["in-process; one warm-up on 2,000 × 64 first; exact kNN (k = 10), 32 eigenvectors"]
    json_path, csv_path = write_results("gpu", rows, out=args.out, config=config, machine=machine, notes=notes)
    from .plot import scaling_png

    png = scaling_png([r for r in rows if r["metric"] == "total"], json_path.with_suffix(".png"),
                      x=lambda r: float(r["case"].split()[0][2:].replace(",", "")), series=lambda r: r["case"].split()[1],
                      title=f"SpRAy stages on {machine.get('gpu', args.device)}", xlabel="samples", ylabel="seconds")
    print(format_table(rows))
    print(f"\n{json_path}\n{csv_path}" + (f"\n{png}" if png else ""))
    return 0
