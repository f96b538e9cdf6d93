"""CLI commands of the analyze stage: analyze (SpRAy), analyze-layers, score (`relaylab COMMAND --help`).

Only argparse and the standard library load here; each command imports what it runs when it runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..cli import EXIT_OK, RAW
from ..errors import RelaylabError

if TYPE_CHECKING:
    import numpy as np


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of samples, 1 or more, got {text!r}")
    return value


def cmd_analyze(args: argparse.Namespace) -> int:
    from ..data import store as zstore
    from ..data.workstore import prepare_store
    from .config import load_config
    from .run import analyze, check_analysis

    config = load_config(args.config)
    for key in ("grouping", "attribution", "device"):
        if getattr(args, key):
            config[key] = getattr(args, key)
    if not zstore.is_store(args.project) and (args.label_map is not None or args.project.is_file()):
        check_analysis(args.project, config, label_map=args.label_map)  # before a conversion, not after it
    store = prepare_store(args.project, label_map=args.label_map, store=args.store, progress=not args.quiet)
    result = analyze(store, args.name, config, scheduler=args.scheduler, n_workers=args.workers,
                     batch_samples=args.batch_samples, progress=not args.quiet)
    print(f"analyses/{args.name}: {len(result['done'])} categories in {store}")
    for category, reason in result["skipped"].items():
        print(f"skipped {category}: {reason}")
    if args.export_virelay:
        from ..data.convert import export_virelay_analysis
        from ..data.project import open_project

        with open_project(store) as project:
            export_virelay_analysis(project.analyses[args.name], args.export_virelay)
        print(f"wrote {args.export_virelay}")
    return EXIT_OK


def cmd_analyze_layers(args: argparse.Namespace) -> int:
    from .activations import analyze_activations

    names = analyze_activations(args.project, args.activations, args.layers, method=args.method, variance=args.variance,
                                progress=not args.quiet)
    print(f"{len(names)} per-layer embeddings in {args.project}: {', '.join(f'analyses/{n}' for n in names)}")
    return EXIT_OK


def cmd_score(args: argparse.Namespace) -> int:
    import numpy as np

    from ..data.project import open_project
    from .score import score_analysis

    with open_project(args.project) as project:
        marked_samples = read_marked(args, project)
        tree = project.analyses[args.analysis]
        for category, node in tree.children.items():
            index = np.asarray(node["index"].values)
            marked = np.isin(index, marked_samples)
            if marked.all() or not marked.any():
                continue
            report = score_analysis(node, marked)
            print(f"{category} ({node.attrs.get('display_name', category)}): {int(marked.sum())} of {len(index)} marked")
            spectral = report.get("embedding") or {}
            if spectral:
                print(f"  spectral: best coordinate {spectral['component']} AUROC {spectral['auroc']:.3f}, "
                      f"eigengap k={spectral['eigengap_k']} ({spectral['eigengap']:.3f}), components {spectral['connected_components']}")
            for name, c in report.get("clusterings", {}).items():
                print(f"  {name:<18} ARI {c['ari']:.3f}  best cluster {c['cluster']}: precision {c['precision']:.3f} "
                      f"recall {c['recall']:.3f} F1 {c['f1']:.3f}")
    return EXIT_OK


def cmd_census(args: argparse.Namespace) -> int:
    from ..data.workstore import prepare_store
    from .census_job import take_census
    from .census_report import write_report

    store = prepare_store(args.project, store=args.store, progress=not args.quiet)  # a project's own files: converted once
    result = take_census(store, args.analysis, clustering=args.clustering, scheduler=args.scheduler,
                         n_workers=args.workers, progress=not args.quiet)
    report = args.report or store.resolve().parent / f"{store.name.removesuffix('.zarr')}.census-{args.analysis}"
    page = write_report(store, args.analysis, report, top=args.top)
    data = json.loads((page.parent / "census.json").read_text())
    print(f"census/{args.analysis}: {len(result['done'])} categories in {store}; report {page}")
    for row in data["categories"][:5]:
        print(f"  #{row['rank']} {row['name']}: score {row['score']:.3f}{'  FLAGGED' if row['flagged'] else ''}")
    for category, reason in result["skipped"].items():
        print(f"skipped {category}: {reason}")
    return EXIT_OK


def read_marked(args: argparse.Namespace, project) -> np.ndarray:
    """Dataset indices of the marked samples: from a file (JSON list, .npy, or one index per line) or a boolean
    coordinate of the inputs (e.g. `artifact`, which the demo records)."""
    import numpy as np

    if args.marked_coord:
        if args.marked_coord not in project.inputs.coords:
            raise RelaylabError.at(project.path, f"inputs/{args.marked_coord}", "a boolean coordinate of the inputs",
                                   f"no such coordinate (have: {', '.join(map(str, project.inputs.coords))})")
        return project.inputs["sample"].values[np.asarray(project.inputs[args.marked_coord].values, dtype=bool)]
    path = Path(args.marked)
    try:
        if path.suffix == ".npy":
            return np.load(path).astype(np.int64).ravel()
        text = path.read_text()
        return np.asarray(json.loads(text) if text.lstrip().startswith("[") else text.split(), dtype=np.int64)
    except (OSError, ValueError) as error:
        raise RelaylabError.at(path, "", "sample indices: a JSON list, a .npy array or one integer per line", str(error)) from None


def add_commands(commands) -> None:
    analyze = commands.add_parser(
        "analyze", help="run SpRAy over every category and write the analysis into the project's store",
        formatter_class=RAW,
        description="Spectral Relevance Analysis of an attribution set, per category: preprocessing, kNN graph,\n"
                    "affinity, graph Laplacian, eigenvectors, clusterings and 2-D embeddings (see\n"
                    "examples/spray.yaml; the defaults are CoRelAy's). Categories run as Dask tasks (small ones\n"
                    "several to a task) on a LocalCluster, or on the scheduler given with --scheduler; work that fits\n"
                    "in one task runs in this process. Each finished category is committed to a relaylab Zarr store,\n"
                    "so a killed run re-run with the same command skips them.\n\n"
                    "PROJECT is that store, or a project's own files, converted once into a store beside them\n"
                    "(project.yaml -> project.zarr, attributions.h5 -> attributions.zarr) or at --store:\n"
                    "  - a ViRelAy or relaylab project YAML;\n"
                    "  - an attribution HDF5 file with --label-map, CoRelAy's case: `attribution` (N, C, H, W),\n"
                    "    `label` (N,), optionally `prediction` (N, classes) and `index`, and no dataset file.\n"
                    "A later run reuses the store; one made from other files, or from these before they changed,\n"
                    "is refused. Without predictions, group by true_label (the default) or all.\n\n"
                    "  relaylab analyze attributions.h5 --label-map label-map.json --export-virelay analysis.h5")
    analyze.add_argument("project", type=Path, metavar="PROJECT",
                         help="a relaylab Zarr store, a project YAML, or an attribution HDF5 file (with --label-map)")
    analyze.add_argument("--label-map", type=Path, metavar="FILE",
                         help="the label map (ViRelAy's JSON) of an attribution HDF5 file given as PROJECT")
    analyze.add_argument("--store", type=Path, metavar="PATH",
                         help="where the store of a project YAML or attribution file is made or reused "
                              "(default: beside it, with the suffix .zarr)")
    analyze.add_argument("--config", type=Path, help="SpRAy configuration YAML (default: CoRelAy's defaults)")
    analyze.add_argument("--name", default="spectral_analysis", help="analysis name (default: spectral_analysis)")
    analyze.add_argument("--grouping", choices=("true_label", "predicted_label", "all"), help="override the config's grouping")
    analyze.add_argument("--attribution", metavar="NAME", help="attribution set to analyse (default: the first)")
    analyze.add_argument("--device", help="where the kNN search, Laplacian and eigensolver run: cpu, cuda or cuda:N "
                         "(default: the config's, cpu); cuda needs CuPy (pip install 'relaylab[gpu]')")
    analyze.add_argument("--scheduler", metavar="ADDRESS", help="a Dask scheduler, e.g. tcp://host:8786 (default: a LocalCluster)")
    analyze.add_argument("--workers", type=int, help="LocalCluster workers (default: one per core)")
    analyze.add_argument("--batch-samples", type=_at_least_one, metavar="N", help="categories are analysed several to a task, up to "
                         "N samples, and written together (default 4000); 1: one task and one folder per category")
    analyze.add_argument("--export-virelay", type=Path, metavar="FILE.h5", help="also write ViRelAy's analysis HDF5 layout")
    analyze.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    analyze.set_defaults(run=cmd_analyze)

    layers = commands.add_parser(
        "analyze-layers", help="2-D embeddings of every sample per layer, from recorded activations",
        formatter_class=RAW,
        description="Activation-space analysis: for each layer of an activation set (`relaylab activations`), the\n"
                    "activations are average-pooled to at most 4096 values per sample, reduced by PCA to the\n"
                    "components that keep --variance of the variance, then embedded in 2-D by t-SNE (or PCA). Each\n"
                    "layer becomes an analysis `activation-<layer>` with one category `all`, which the explorer shows\n"
                    "coloured by class in its per-layer view. Layers already done with the same settings are skipped.")
    layers.add_argument("project", type=Path, metavar="PROJECT", help="a relaylab Zarr store")
    layers.add_argument("--activations", default="activations", metavar="NAME", help="activation set (default: activations)")
    layers.add_argument("--layers", nargs="+", metavar="LAYER", help="layers to embed (default: all of the set)")
    layers.add_argument("--method", choices=("tsne", "pca"), default="tsne", help="2-D embedding (default: tsne)")
    layers.add_argument("--variance", type=float, default=0.9, help="variance PCA keeps before the 2-D step (default: 0.9)")
    layers.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    layers.set_defaults(run=cmd_analyze_layers)

    score = commands.add_parser(
        "score", help="how well an analysis isolates known samples (e.g. a planted artifact)",
        formatter_class=RAW,
        description="For every category holding marked samples: adjusted Rand index and best-cluster precision,\n"
                    "recall and F1 of each clustering, AUROC of the best spectral coordinate, and the eigengap.")
    score.add_argument("project", type=Path, metavar="PROJECT")
    score.add_argument("--analysis", default="spectral_analysis", help="analysis name (default: spectral_analysis)")
    marked = score.add_mutually_exclusive_group(required=True)
    marked.add_argument("--marked", metavar="FILE", help="dataset indices of the marked samples (JSON list, .npy, or one per line)")
    marked.add_argument("--marked-coord", metavar="NAME", help="a boolean coordinate of the inputs marking them")
    score.set_defaults(run=cmd_score)

    census = commands.add_parser(
        "census", help="rank every category by how strongly its relevance splits into separate strategies",
        formatter_class=RAW,
        description="Where to look first, without marked samples: every category of a SpRAy analysis ranked by its\n"
                    "census score (the spectrum's relative eigengap, or a small group of samples whose relevance sits\n"
                    "far from the category's main strategy), and the samples inside each ranked by that distance.\n"
                    "Results go into the store (census/<analysis>/, resumable: re-run the same command after a kill)\n"
                    "and into a report: census.json for scripts, index.html with each top category's spectrum and,\n"
                    "per cluster, its mean and median relevance, an estimated artifact mask and its typical samples.\n\n"
                    "  relaylab census project.zarr                      # census of spectral_analysis, report beside the store\n"
                    "  relaylab census virelay/project.yaml --analysis spectral_analysis   # a ViRelAy project's own analysis\n"
                    "  relaylab census project.zarr --top 50 --report out/census")
    census.add_argument("project", type=Path, metavar="PROJECT", help="a relaylab store with a SpRAy analysis, or a ViRelAy/CoRelAy "
                        "project with its analysis files (converted once to a work store, as analyze does)")
    census.add_argument("--store", type=Path, metavar="PATH", help="where a project's files are converted to (default: beside "
                        "the project, as analyze does)")
    census.add_argument("--analysis", default="spectral_analysis", help="analysis name (default: spectral_analysis)")
    census.add_argument("--clustering", metavar="NAME", help="clustering whose clusters the report shows (default: per category, "
                        "the k-means one with the k the spectrum suggests)")
    census.add_argument("--report", type=Path, metavar="DIR", help="report folder (default: beside the store, <store name>.census-<analysis>)")
    census.add_argument("--top", type=int, default=20, metavar="N", help="categories shown in detail in the HTML (default: 20)")
    census.add_argument("--scheduler", metavar="ADDRESS", help="a Dask scheduler, e.g. tcp://host:8786 (default: this process, "
                        "or a LocalCluster with --workers)")
    census.add_argument("--workers", type=int, help="LocalCluster workers")
    census.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    census.set_defaults(run=cmd_census)
