"""The `many` case of the spray suite: a whole analysis of many categories, `relaylab analyze` against CoRelAy's loop.

    python -m benchmarks spray --only many                               # 1000 classes × 50 × 1024, and one class of 5000
    python -m benchmarks spray --only many --sizes many=200x50x1024 many_large=2000x1024
    python -m benchmarks spray --only many --smoke                       # 50 classes × 50 × 256, one class of 1000

Data: a CoRelAy-style attribution HDF5 file (`attribution` (N, 1, s, s) float32, `label`, `index`) and its label map,
with one planted strategy (relevance in a corner) in a fifth of every class, generated once per size into --work;
converted once (untimed) into a relaylab store. Then, each in a fresh process, from the same files:
- relaylab: `relaylab analyze STORE` with the default configuration (k-means k = 2..5 with 10 initialisations,
  HDBSCAN), start-up and LocalCluster included, as a user runs it;
- CoRelAy 1.0.0: the loop of the CoRelAy example in ../shared/reference/ (per class: read its rows from the HDF5
  file, `SpectralClustering` on the flattened heatmaps, write the analysis HDF5 as the example does), with its
  default clustering (k-means k = 2) and with the example's k-means k = 2..5 (without its t-SNE and UMAP, which
  relaylab's default does not run either). CoRelAy's k-means uses scikit-learn's default of one initialisation.
The ratio CoRelAy / relaylab is printed for both. A stage child then times one small and one large category inside
relaylab's own code (start-up, opening the store, reading the rows, each SpRAy stage, committing), so the fixed cost
per category can be read off beside the arithmetic.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from . import child_result, row, run_child

DEFAULT = {"many": [1000, 50, 1024], "many_large": [5000, 1024]}
SMOKE = {"many": [50, 50, 256], "many_large": [1000, 256]}
CORELAY_VARIANTS = {"k-means 2": [2], "k-means 2-5": [2, 3, 4, 5]}


def parse(tokens: list[str] | None, smoke: bool) -> dict[str, list[int]]:
    """`many=CxNxD` and `many_large=NxD` from --sizes (other suites' names are left to them)."""
    sizes = {k: list(v) for k, v in (SMOKE if smoke else DEFAULT).items()}
    for token in tokens or []:
        name, _, value = token.partition("=")
        if name in sizes:
            sizes[name] = [int(float(v)) for v in value.lower().split("x")]
    return sizes


def generate(work: Path, classes: int, per_class: int, d: int, seed: int = 0) -> Path:
    """A folder with attribution.h5 and label-map.json (reused when present)."""
    import h5py
    import numpy as np

    side = int(round(d ** 0.5))
    if side * side != d:
        raise SystemExit(f"many: D must be a square (heatmaps of side √D), got {d}")
    folder = work / f"many-{classes}x{per_class}x{d}-s{seed}"
    if (folder / "label-map.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = classes * per_class
    with h5py.File(folder / "attribution.tmp.h5", "w") as h5:
        out = h5.create_dataset("attribution", (n, 1, side, side), dtype="float32", chunks=(min(n, 1024), 1, side, side))
        for start in range(0, n, 65536):
            stop = min(start + 65536, n)
            block = rng.random((stop - start, 1, side, side), dtype=np.float32) * 0.1
            marked = (np.arange(start, stop) % per_class) < per_class // 5
            block[marked, :, : side // 4, : side // 4] += 1.0
            out[start:stop] = block
        h5["label"] = np.repeat(np.arange(classes), per_class)
        h5["index"] = np.arange(n)
    (folder / "attribution.tmp.h5").rename(folder / "attribution.h5")
    (folder / "label-map.json").write_text(json.dumps(
        [{"index": i, "word_net_id": f"n{i:08d}", "name": f"class {i}"} for i in range(classes)]))
    return folder


def relaylab_command() -> list[str]:
    return [sys.executable, "-m", "relaylab.cli"]


def prepare_store(folder: Path) -> Path:
    """The relaylab store of the folder's attribution file (converted once, untimed)."""
    import subprocess

    store = folder / "attribution.zarr"
    if not (store / "zarr.json").is_file():
        subprocess.run([*relaylab_command(), "convert", str(folder / "attribution.h5"), str(store),
                        "--label-map", str(folder / "label-map.json"), "-q"], check=True)
    return store


def fresh_analysis(store: Path, name: str) -> None:
    shutil.rmtree(store / "analyses" / name, ignore_errors=True)


def child_corelay_loop(folder: str, ks_json: str, out: str) -> None:
    """CoRelAy's example loop (see the module docstring); runs in CoRelAy's Python."""
    start = time.perf_counter()
    import h5py
    import numpy
    from corelay.pipeline.spectral import SpectralClustering
    from corelay.processor.clustering import KMeans
    from corelay.processor.flow import Parallel

    imported = time.perf_counter()
    ks = json.loads(ks_json)
    label_map = json.loads(Path(folder, "label-map.json").read_text())
    wordnet = {entry["index"]: entry["word_net_id"] for entry in label_map}
    pipeline = SpectralClustering(clustering=Parallel([KMeans(n_clusters=k) for k in ks], broadcast=True, is_output=True))
    with h5py.File(Path(folder, "attribution.h5"), "r") as attributions, h5py.File(out, "w") as analysis:
        labels = attributions["label"][:]
        for entry in label_map:
            rows, = numpy.nonzero(labels == entry["index"])
            data = attributions["attribution"][rows, :]
            (eigenvalues, eigenvectors), clusterings = pipeline(data.reshape(len(data), -1))
            group = analysis.require_group(wordnet.get(entry["index"], f"{entry['index']:08d}"))
            group["index"] = rows.astype(numpy.uint32)
            embedding = group.require_group("embedding")
            embedding["spectral"] = eigenvectors.astype(numpy.float32)
            embedding["spectral"].attrs["eigenvalue"] = eigenvalues.astype(numpy.float32)
            cluster = group.require_group("cluster")
            for k, clustering in zip(ks, clusterings):
                cluster[f"kmeans-{k:02d}"] = clustering
                cluster[f"kmeans-{k:02d}"].attrs["embedding"] = "spectral"
    child_result({"import_s": imported - start, "loop_s": time.perf_counter() - imported})


def child_stages(store: str, which: str) -> None:
    """relaylab's own code on one category of the store (the first, `which` = "small"/"large" only names it): start-up,
    opening the store, reading the rows, each SpRAy stage as `SpRAy.fit` runs it, committing; each stage repeated
    (median), so one-off costs show as start-up only."""
    import statistics

    start = time.perf_counter()
    import numpy as np
    from sklearn.base import clone

    from relaylab.analyze import run as analyze_run
    from relaylab.analyze.config import build_spray, load_config
    from relaylab.analyze.spray import _one_thread
    from relaylab.data import store as zstore
    from relaylab.data.project import open_project

    times: dict[str, list[float]] = {"start-up (imports)": [time.perf_counter() - start]}

    def timed(name, fn, *args):
        begin = time.perf_counter()
        out = fn(*args)
        times.setdefault(name, []).append(time.perf_counter() - begin)
        return out

    config = load_config(None)
    for repeat in range(5):
        project = timed("open the store, group the samples", open_project, store)
        with project:
            attribution = analyze_run.chosen_attribution(project, config)
            groups = analyze_run.categories(project.attributions[attribution], config["grouping"], project.label_map)
        category, members = next(iter(groups.items()))
        heatmaps = zstore.open_group(store, f"attributions/{attribution}", chunks=None)
        values = timed("read the category's rows", analyze_run.read_rows, heatmaps["attribution"], np.sort(members))
        spray = build_spray(config)
        spray.fit(values)  # parameters checked once per estimator, as in a batch
        with _one_thread(len(values)):
            features = timed("preprocess", lambda: np.asarray(clone(spray.preprocessing).fit_transform(values)).reshape(len(values), -1))
            graph = timed("kNN graph", clone(spray.knn).fit_transform, features)
            affinity = timed("affinity", clone(spray.affinity).fit_transform, graph)
            spectral = timed("eigensolver", clone(spray.spectral).fit, affinity)
            for name, estimator in spray.clusterings.items():
                timed(f"clustering {name}", clone(estimator).fit_predict, spectral.embedding_)
        timed("SpRAy.fit (all stages)", spray.fit, values)
        tree = timed("to_tree", spray.to_tree, members)
        with zstore.begin_analysis(store, "bench-stages", {"repeat": repeat}, replace=True) as writer:
            timed("commit, the first of its structure (through xarray)", writer.commit, category, tree)
            timed("commit", writer.commit, f"{category}-again", tree)
        zstore.remove_group(store, "analyses/bench-stages")
    child_result({"category": category, "members": int(len(members)),
                  "stages": {name: {"median_s": statistics.median(v), "values": v} for name, v in times.items()}})


def measure(args, work: Path) -> list[dict]:
    """Every row of the many case."""
    from .spray import corelay_python

    sizes = parse(args.sizes, args.smoke)
    classes, per_class, d = sizes["many"]
    large_n, large_d = sizes["many_large"]
    rows: list[dict] = []
    folder = generate(work, classes, per_class, d)
    large_folder = generate(work, 1, large_n, large_d)
    case = f"many {classes} classes × {per_class} × {d}"
    large_case = f"many 1 class × {large_n} × {large_d}"
    for label, path in ((case, folder), (large_case, large_folder)):
        store = prepare_store(path)
        fresh_analysis(store, "bench")
        print(f"{label}: relaylab analyze", flush=True)
        ours = run_child([*relaylab_command(), "analyze", str(store), "--name", "bench", "-q"], timeout=args.timeout)
        rows.append(row("spray", f"{label} relaylab", "relaylab analyze (whole command)", ours["wall_s"], "s",
                        note="fresh process: start-up, LocalCluster when more than one batch, read, SpRAy, commit"))
        rows.append(row("spray", f"{label} relaylab", "cpu (user + system)", ours["cpu_s"], "s"))
        python = corelay_python()
        if python is None:
            rows.append(row("spray", f"{label} corelay", "skipped", 0, "", note="no CoRelAy Python (.venv-corelay)"))
        else:
            for variant, ks in CORELAY_VARIANTS.items():
                print(f"{label}: CoRelAy loop ({variant})", flush=True)
                theirs = run_child([python, "-m", "benchmarks.spray_many", "child-corelay-loop", str(path), json.dumps(ks),
                                    str(work / "many-corelay-analysis.h5")], timeout=args.timeout)
                rows.append(row("spray", f"{label} corelay {variant}", "CoRelAy loop (whole process)", theirs["wall_s"], "s",
                                note=f"import {theirs['import_s']:.2f} s"))
                ratio = theirs["wall_s"] / ours["wall_s"]
                goal = ">= 5" if label == case else ""
                rows.append(row("spray", f"{label} corelay {variant}", "CoRelAy / relaylab default", ratio, "x", goal=goal,
                                ok=ratio >= 5 if goal else None))
                # the same clustering work as CoRelAy's loop: k-means on all 32 eigenvectors, one start each, no HDBSCAN
                same = work / f"many-corelay-work-{len(ks)}.yaml"
                same.write_text(json.dumps({"clusterings": {"kmeans": {"k": ks, "eigenvectors": 32, "n_init": 1}}}))
                fresh_analysis(store, "bench-same-work")
                print(f"{label}: relaylab analyze with CoRelAy's clustering work ({variant})", flush=True)
                alike = run_child([*relaylab_command(), "analyze", str(store), "--name", "bench-same-work", "--config", str(same),
                                   "-q"], timeout=args.timeout)
                fresh_analysis(store, "bench-same-work")
                rows.append(row("spray", f"{label} relaylab, CoRelAy's clustering work ({variant}, one start)",
                                "relaylab analyze (whole command)", alike["wall_s"], "s"))
                rows.append(row("spray", f"{label} corelay {variant}", "CoRelAy / relaylab with the same clustering work",
                                theirs["wall_s"] / alike["wall_s"], "x"))
        print(f"{label}: relaylab stages", flush=True)
        stages = run_child([sys.executable, "-m", "benchmarks.spray_many", "child-stages", str(store),
                            "small" if path == folder else "large"], timeout=args.timeout)
        stage_case = f"{label} stages of {stages['category']} ({stages['members']} samples)"
        for name, measured in stages["stages"].items():
            rows.append(row("spray", stage_case, name, [v * 1000 for v in measured["values"]], "ms"))
        fit = stages["stages"]["SpRAy.fit (all stages)"]["median_s"]
        if label == case:
            fixed = ours["wall_s"] * min(os.cpu_count() or 1, 2) / classes - fit
            rows.append(row("spray", f"{label} relaylab", "per category: command × cores / categories − SpRAy.fit",
                            fixed * 1000, "ms", goal="<= 5", ok=fixed <= 0.005,
                            note="the fixed cost per category: start-up, scheduling, reading, committing"))
            rows.append(row("spray", f"{label} relaylab", "SpRAy.fit of one category in-process", fit * 1000, "ms",
                            goal="<= 20" if (per_class, d) == (50, 1024) else "", ok=fit <= 0.02 if (per_class, d) == (50, 1024) else None))
        else:
            gap = ours["wall_s"] - fit
            rows.append(row("spray", f"{label} relaylab", "command − in-process SpRAy.fit", gap, "s", goal="<= 1.5", ok=gap <= 1.5))
    return rows


CHILD_TASKS = {"child-corelay-loop": child_corelay_loop, "child-stages": child_stages}

if __name__ == "__main__":
    task, *task_args = sys.argv[1:]
    CHILD_TASKS[task](*task_args)
