"""Suite runner: `python -m benchmarks <suite> [options]`, e.g. `python -m benchmarks io --smoke`.

A suite is a module with `run(args) -> int` and, optionally, `add_arguments(parser)` for its own options and
`DESCRIPTION`. Register it in SUITES (name → module path). Suite modules import only the standard library at module
level (heavy imports go inside functions, which also lets child processes time their own imports); a suite whose
module fails to import is still listed and reports the error when it is run, so it never breaks the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import DEFAULT_OUT

SUITES: dict[str, str] = {
    "io": "benchmarks.io",
    "spray": "benchmarks.spray",
    "dask": "benchmarks.dask",
    "explain": "benchmarks.explain",
    "render": "benchmarks.render",
    "gpu": "benchmarks.gpu",
    "knn": "benchmarks.knn",
    "cli": "benchmarks.cli",
    "serve": "benchmarks.serve",
    "poisoning": "benchmarks.poisoning",
}


def common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", nargs="+", default=None, metavar="NAME=N[,N...]",
                        help="problem sizes per measurement, e.g. open=1000000 convert=20000 (suite-specific)")
    parser.add_argument("--repeats", type=int, default=None, help="measured repeats per case (median reported); "
                        "default 3, 2 with --smoke")
    parser.add_argument("--warmup", type=int, default=1, help="unreported warm-up runs per case; default 1")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"folder for the JSON + CSV results (default {DEFAULT_OUT})")
    parser.add_argument("--smoke", action="store_true", help="small sizes that finish in under a minute (CI)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="relaylab benchmark suites")
    sub = parser.add_subparsers(dest="suite", metavar="SUITE", required=True)
    for name, module_path in SUITES.items():
        try:
            module = importlib.import_module(module_path)
        except ImportError as error:
            module, broken = None, f"unavailable: {error}"
        description = getattr(module, "DESCRIPTION", "") if module else broken
        suite = sub.add_parser(name, help=description, description=description)
        common_arguments(suite)
        if module is not None and hasattr(module, "add_arguments"):
            module.add_arguments(suite)
        suite.set_defaults(module=module_path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.smoke else 3
    if args.repeats < 1 or args.warmup < 0:
        raise SystemExit("--repeats must be >= 1 and --warmup >= 0")
    module = importlib.import_module(args.module)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
