"""The `relaylab` command line: `relaylab COMMAND --help` documents each command."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

import numpy as np

from .errors import RelaylabError

DESCRIPTION = """\
relaylab: dataset-wide explainable AI (attributions, Spectral Relevance Analysis, an explorer).

A PROJECT is any of:
  - a ViRelAy project YAML (its HDF5 dataset, attribution and analysis files are opened as they are),
  - a relaylab project YAML (ViRelAy's keys plus relaylab's, e.g. `store:`),
  - a relaylab Zarr store (what `relaylab convert` writes).
"""

EXIT_OK, EXIT_ERROR, EXIT_PROBLEMS = 0, 1, 2


def cmd_validate(args: argparse.Namespace) -> int:
    from .data.validate import projects_problems

    problems = projects_problems(args.projects, progress=not args.quiet)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found", file=sys.stderr)
        return EXIT_PROBLEMS
    print(f"ok: {', '.join(map(str, args.projects))}")
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    from .data.convert import convert_to_virelay, convert_to_zarr

    if args.to == "zarr":
        out = convert_to_zarr(args.project, args.out, allow_nonfinite=args.allow_nonfinite,
                              compression=args.compression, progress=not args.quiet)
    else:
        out = convert_to_virelay(args.project, args.out, attribution=args.attribution, progress=not args.quiet)
    print(f"wrote {out}")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from .data.project import open_project

    for i, path in enumerate(args.projects):
        with open_project(path) as project:
            print(("\n" if i else "") + project.summary())
    return EXIT_OK


def cmd_synthetic(args: argparse.Namespace) -> int:
    from .data.synthetic import Variant, write_virelay_project

    variant = Variant(n_samples=args.samples, n_classes=args.classes, height=args.size, width=args.size,
                      layout=args.layout, attribution_files=args.attribution_files, seed=args.seed)
    print(f"wrote {write_virelay_project(args.out, variant, name=args.name)}")
    return EXIT_OK


def cmd_analyze(args: argparse.Namespace) -> int:
    from .analyze.config import load_config
    from .analyze.run import analyze

    config = load_config(args.config)
    for key in ("grouping", "attribution", "device"):
        if getattr(args, key):
            config[key] = getattr(args, key)
    result = analyze(args.project, args.name, config, scheduler=args.scheduler, n_workers=args.workers,
                     progress=not args.quiet)
    print(f"analyses/{args.name}: {len(result['done'])} categories in {args.project}")
    for category, reason in result["skipped"].items():
        print(f"skipped {category}: {reason}")
    if args.export_virelay:
        from .data.convert import export_virelay_analysis
        from .data.project import open_project

        with open_project(args.project) as project:
            export_virelay_analysis(project.analyses[args.name], args.export_virelay)
        print(f"wrote {args.export_virelay}")
    return EXIT_OK


def cmd_analyze_layers(args: argparse.Namespace) -> int:
    from .analyze.activations import analyze_activations

    names = analyze_activations(args.project, args.activations, args.layers, method=args.method, variance=args.variance,
                                progress=not args.quiet)
    print(f"{len(names)} per-layer embeddings in {args.project}: {', '.join(f'analyses/{n}' for n in names)}")
    return EXIT_OK


def cmd_score(args: argparse.Namespace) -> int:
    from .analyze.score import score_analysis
    from .data.project import open_project

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


def read_marked(args: argparse.Namespace, project) -> np.ndarray:
    """Dataset indices of the marked samples: from a file (JSON list, .npy, or one index per line) or a boolean
    coordinate of the inputs (e.g. `artifact`, which the demo records)."""
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


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="relaylab", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("-v", "--verbose", action="store_true", help="log what relaylab does (INFO level)")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser(
        "validate", help="check projects and list every problem",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Check one or more projects and list every problem, each with its file, the path inside the\n"
                    "file and what was expected. Reads all arrays (labels against the label map, NaN/inf in\n"
                    "attributions, analysis indices in range). Projects given together must have distinct names.\n\n"
                    "Exit status: 0 when clean, 2 when problems were found.")
    validate.add_argument("projects", nargs="+", type=Path, metavar="PROJECT")
    validate.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    validate.set_defaults(run=cmd_validate)

    convert = commands.add_parser(
        "convert", help="convert a project to a relaylab Zarr store, or back to ViRelAy's files",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert PROJECT into OUT.\n\n"
                    "--to zarr (default): a relaylab Zarr v3 store holding inputs, attribution sets and analyses,\n"
                    "  sharded for fast single-sample reads, compressed where that pays. A killed conversion is resumed by\n"
                    "  running the same command again; a store left unfinished is never read as complete.\n"
                    "--to virelay: a folder with project.yaml, label-map.json and HDF5 files that ViRelAy 0.6.1\n"
                    "  opens (`python -m virelay OUT/project.yaml`). Written to a temporary folder and renamed.\n\n"
                    "Bad content (labels outside the label map, NaN/inf in attributions) stops the conversion\n"
                    "and leaves no output behind.")
    convert.add_argument("project", type=Path, metavar="PROJECT")
    convert.add_argument("out", type=Path, metavar="OUT")
    convert.add_argument("--to", choices=("zarr", "virelay"), default="zarr", help="output format (default: zarr)")
    convert.add_argument("--attribution", metavar="NAME", help="with --to virelay: the attribution set to export (default: the first)")
    convert.add_argument("--allow-nonfinite", action="store_true", help="copy attributions holding NaN/inf instead of stopping")
    convert.add_argument("--compression", choices=("auto", "lz4", "zstd", "none"), default="auto",
                         help="with --to zarr: compression of inputs and attributions (default auto: LZ4 where it "
                              "makes a sample of the data at least 20%% smaller, else none)")
    convert.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    convert.set_defaults(run=cmd_convert)

    synthetic = commands.add_parser(
        "synthetic", help="write a small synthetic project in ViRelAy's formats",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write a synthetic ViRelAy project into OUT (project.yaml, label-map.json, dataset, attribution\n"
                    "and analysis HDF5 files): class-dependent images, plausible attributions, one analysis category\n"
                    "per class. For trying relaylab's data layer, and for tests and benchmarks.")
    synthetic.add_argument("out", type=Path, metavar="OUT")
    synthetic.add_argument("--name", default="synthetic", help="project name (default: synthetic)")
    synthetic.add_argument("--samples", type=int, default=300, help="number of samples (default: 300)")
    synthetic.add_argument("--classes", type=int, default=3, help="number of classes (default: 3)")
    synthetic.add_argument("--size", type=int, default=32, help="image height and width (default: 32)")
    synthetic.add_argument("--layout", choices=("chw", "hwc"), default="chw", help="array layout in the HDF5 files")
    synthetic.add_argument("--attribution-files", type=int, default=2, help="split the attributions over this many files, each with an index")
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.set_defaults(run=cmd_synthetic)

    analyze = commands.add_parser(
        "analyze", help="run SpRAy over every category and write the analysis into the project's store",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Spectral Relevance Analysis of an attribution set, per category: preprocessing, kNN graph,\n"
                    "affinity, graph Laplacian, eigenvectors, clusterings and 2-D embeddings (see\n"
                    "examples/spray.yaml; the defaults are CoRelAy's). Categories run as Dask tasks on a\n"
                    "LocalCluster, or on the scheduler given with --scheduler. Each finished category is committed to\n"
                    "PROJECT (a relaylab Zarr store), so a killed run re-run with the same command skips them.")
    analyze.add_argument("project", type=Path, metavar="PROJECT", help="a relaylab Zarr store")
    analyze.add_argument("--config", type=Path, help="SpRAy configuration YAML (default: CoRelAy's defaults)")
    analyze.add_argument("--name", default="spectral_analysis", help="analysis name (default: spectral_analysis)")
    analyze.add_argument("--grouping", choices=("true_label", "predicted_label", "all"), help="override the config's grouping")
    analyze.add_argument("--attribution", metavar="NAME", help="attribution set to analyse (default: the first)")
    analyze.add_argument("--device", choices=("cpu", "cuda"), help="where the kNN search, Laplacian and eigensolver run "
                         "(default: the config's, cpu); cuda needs CuPy (pip install 'relaylab[gpu]')")
    analyze.add_argument("--scheduler", metavar="ADDRESS", help="a Dask scheduler, e.g. tcp://host:8786 (default: a LocalCluster)")
    analyze.add_argument("--workers", type=int, help="LocalCluster workers (default: one per core)")
    analyze.add_argument("--export-virelay", type=Path, metavar="FILE.h5", help="also write ViRelAy's analysis HDF5 layout")
    analyze.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    analyze.set_defaults(run=cmd_analyze)

    layers = commands.add_parser(
        "analyze-layers", help="2-D embeddings of every sample per layer, from recorded activations",
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="For every category holding marked samples: adjusted Rand index and best-cluster precision,\n"
                    "recall and F1 of each clustering, AUROC of the best spectral coordinate, and the eigengap.")
    score.add_argument("project", type=Path, metavar="PROJECT")
    score.add_argument("--analysis", default="spectral_analysis", help="analysis name (default: spectral_analysis)")
    marked = score.add_mutually_exclusive_group(required=True)
    marked.add_argument("--marked", metavar="FILE", help="dataset indices of the marked samples (JSON list, .npy, or one per line)")
    marked.add_argument("--marked-coord", metavar="NAME", help="a boolean coordinate of the inputs marking them")
    score.set_defaults(run=cmd_score)

    info = commands.add_parser("info", help="summarise projects: dataset, classes, attribution sets, analyses",
                               description="Print what each PROJECT holds. Reads metadata only.")
    info.add_argument("projects", nargs="+", type=Path, metavar="PROJECT")
    info.set_defaults(run=cmd_info)

    for stage in ("explain", "explore"):  # each stage registers its own commands (relaylab/<stage>/commands.py)
        try:
            module = importlib.import_module(f"relaylab.{stage}.commands")
        except ModuleNotFoundError as error:
            if error.name != f"relaylab.{stage}.commands":
                raise
            continue
        module.add_commands(commands)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    # distributed sets its loggers from Dask's config when first imported (later, by the command): INFO unless told
    import dask

    dask.config.set({"logging.distributed": logging.getLevelName(level).lower()})
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("distributed").setLevel(level)  # Dask logs every worker start and stop at INFO
    try:
        return args.run(args)
    except RelaylabError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_PROBLEMS
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
