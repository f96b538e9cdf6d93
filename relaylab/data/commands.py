"""CLI commands of the data stage: validate, convert, info, synthetic (`relaylab COMMAND --help`).

Only argparse and the standard library load here, so `relaylab --help` starts at once; each command imports what it
runs when it runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import EXIT_OK, EXIT_PROBLEMS, RAW


def cmd_validate(args: argparse.Namespace) -> int:
    from .validate import errors, projects_problems

    found = projects_problems(args.projects, progress=not args.quiet)
    problems = errors(found)
    for problem in found:
        print(f"warning: {problem}" if problem.level == "warning" else problem)
    if problems:
        print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found", file=sys.stderr)
        return EXIT_PROBLEMS
    warned = len(found) - len(problems)
    print(f"ok: {', '.join(map(str, args.projects))}" + (f" ({warned} warning{'s' if warned != 1 else ''})" if warned else ""))
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert_to_virelay, convert_to_zarr

    if args.to == "zarr":
        out = convert_to_zarr(args.project, args.out, allow_nonfinite=args.allow_nonfinite,
                              compression=args.compression, progress=not args.quiet, label_map=args.label_map)
    else:
        out = convert_to_virelay(args.project, args.out, attribution=args.attribution, progress=not args.quiet,
                                 label_map=args.label_map)
    print(f"wrote {out}")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from .attributions_only import is_attribution_file
    from .project import open_project

    for i, path in enumerate(args.projects):
        label_map = args.label_map if args.label_map is not None and is_attribution_file(path) else None
        with open_project(path, label_map=label_map) as project:
            print(("\n" if i else "") + project.summary())
    return EXIT_OK


def cmd_synthetic(args: argparse.Namespace) -> int:
    from .synthetic import Variant, write_virelay_project

    variant = Variant(n_samples=args.samples, n_classes=args.classes, height=args.size, width=args.size,
                      layout=args.layout, attribution_files=args.attribution_files, seed=args.seed)
    print(f"wrote {write_virelay_project(args.out, variant, name=args.name)}")
    return EXIT_OK


def add_commands(commands) -> None:
    validate = commands.add_parser(
        "validate", help="check projects and list every problem",
        formatter_class=RAW,
        description="Check one or more projects and list every problem, each with its file, the path inside the\n"
                    "file and what was expected. Reads all arrays (labels against the label map, NaN/inf in\n"
                    "attributions, analysis indices in range). Projects given together must have distinct names.\n"
                    "Input that is accepted on an assumption (e.g. a label map without unique WordNet ids, whose\n"
                    "classes are then keyed by index) gets a line starting 'warning:' that says what was assumed.\n\n"
                    "Exit status: 0 when clean or only warned about, 2 when problems were found.")
    validate.add_argument("projects", nargs="+", type=Path, metavar="PROJECT")
    validate.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    validate.set_defaults(run=cmd_validate)

    convert = commands.add_parser(
        "convert", help="convert a project to a relaylab Zarr store, or back to ViRelAy's files",
        formatter_class=RAW,
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
    convert.add_argument("--label-map", type=Path, metavar="FILE",
                         help="with an attribution HDF5 file as PROJECT (CoRelAy's case, no dataset): its label map")
    convert.add_argument("--attribution", metavar="NAME", help="with --to virelay: the attribution set to export (default: the first)")
    convert.add_argument("--allow-nonfinite", action="store_true", help="copy attributions holding NaN/inf instead of stopping")
    convert.add_argument("--compression", choices=("auto", "lz4", "zstd", "none"), default="auto",
                         help="with --to zarr: compression of inputs and attributions (default auto: LZ4 where it "
                              "makes a sample of the data at least 20%% smaller, else none)")
    convert.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    convert.set_defaults(run=cmd_convert)

    info = commands.add_parser("info", help="summarise projects: dataset, classes, attribution sets, analyses",
                               description="Print what each PROJECT holds. Reads metadata only.")
    info.add_argument("projects", nargs="+", type=Path, metavar="PROJECT")
    info.add_argument("--label-map", type=Path, metavar="FILE",
                      help="the label map of the attribution HDF5 files among the PROJECTs (CoRelAy's case, no dataset)")
    info.set_defaults(run=cmd_info)

    synthetic = commands.add_parser(
        "synthetic", help="write a small synthetic project in ViRelAy's formats",
        formatter_class=RAW,
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
