"""The `relaylab` command line: `relaylab COMMAND --help` documents each command.

Each stage registers its commands from its own `commands.py` (data, analyze, explain, explore, demo), which loads
only argparse and the standard library: `relaylab --help` starts at once, and a command imports what it runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from .errors import RelaylabError

DESCRIPTION = """\
relaylab: dataset-wide explainable AI (attributions, Spectral Relevance Analysis, an explorer).

A PROJECT is any of:
  - a ViRelAy project YAML (its HDF5 dataset, attribution and analysis files are opened as they are),
  - a relaylab project YAML (ViRelAy's keys plus relaylab's, e.g. `store:`),
  - a relaylab Zarr store (what `relaylab convert` writes).
"""

EXIT_OK, EXIT_ERROR, EXIT_PROBLEMS = 0, 1, 2
RAW = argparse.RawDescriptionHelpFormatter
STAGES = ("data", "explain", "analyze", "explore", "demo")  # the order of the workflow, and of `relaylab --help`


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="relaylab", description=DESCRIPTION, formatter_class=RAW)
    top.add_argument("-v", "--verbose", action="store_true", help="log what relaylab does (INFO level)")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in STAGES:
        importlib.import_module(f"relaylab.{stage}.commands").add_commands(commands)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    # distributed sets its loggers from Dask's config when first imported (later, by the command, if at all)
    if "dask" in sys.modules:
        sys.modules["dask"].config.set({"logging.distributed": logging.getLevelName(level).lower()})
    else:
        os.environ["DASK_LOGGING__DISTRIBUTED"] = logging.getLevelName(level).lower()
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
