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
import traceback

from .errors import RelaylabError, failed_step

DESCRIPTION = """\
relaylab: dataset-wide explainable AI (attributions, Spectral Relevance Analysis, an explorer).

A PROJECT is any of:
  - a ViRelAy project YAML (its HDF5 dataset, attribution and analysis files are opened as they are),
  - a relaylab project YAML (ViRelAy's keys plus relaylab's, e.g. `store:`),
  - a relaylab Zarr store (what `relaylab convert` writes).

Exit status: 0 done; 1 a step failed unexpectedly (one line names the step and file, -v adds the traceback);
2 problems with the input (each listed with its file); 130 interrupted. A job that stopped (1 or 130) keeps what it
had committed: run the same command again to resume it.
"""

# EXIT_ERROR: an unexpected exception inside a step (a bug, a full disk, a library's failure), not the input's fault
EXIT_OK, EXIT_ERROR, EXIT_PROBLEMS, EXIT_INTERRUPTED = 0, 1, 2, 130
MESSAGE_CHARS = 400  # an unexpected exception's message is cut to this in its one-line report
RAW = argparse.RawDescriptionHelpFormatter
STAGES = ("data", "explain", "analyze", "fix", "explore", "demo")  # the order of the workflow, and of `relaylab --help`


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
        return EXIT_INTERRUPTED
    except Exception as error:  # a failure no check foresaw: one line, the traceback only when asked for
        if args.verbose:
            traceback.print_exception(error, file=sys.stderr)
        print(unexpected_error_line(args, error), file=sys.stderr)
        return EXIT_ERROR


def unexpected_error_line(args: argparse.Namespace, error: BaseException) -> str:
    """"relaylab COMMAND: STEP failed on FILE: TYPE: MESSAGE (run with -v for the traceback)", the step and file as
    the innermost `relaylab.errors.step` named them, else the command's own input; one line, however long the
    message."""
    message = " ".join(str(error).split())
    if len(message) > MESSAGE_CHARS:
        message = message[:MESSAGE_CHARS - 1] + "…"
    what = f"{type(error).__name__}: {message}" if message else type(error).__name__
    hint = "" if args.verbose else " (run with -v for the traceback)"
    named = failed_step(error)
    if named is not None:
        return f"relaylab {args.command}: {named[0]} failed on {named[1]}: {what}{hint}"
    given = next((value for key in ("project", "projects", "folder") if (value := getattr(args, key, None))), None)
    on = f" on {', '.join(map(str, given)) if isinstance(given, list) else given}" if given else ""
    return f"relaylab {args.command} failed{on}: {what}{hint}"


if __name__ == "__main__":
    sys.exit(main())
