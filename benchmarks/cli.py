"""Start-up of the command line: how long a user waits before relaylab does anything.

    python -m benchmarks cli                 # every command's --help, import, validate of a small project
    python -m benchmarks cli --smoke         # fewer repeats
    python -m benchmarks cli --commands attribute analyze

Each case is a fresh process (wall time spawn to exit, as the shell sees it; CPU time and peak RSS from wait4):

- `python -c pass`: the interpreter alone, the floor every case stands on (the peer of the ratios);
- `import relaylab`: the package itself (heavy modules load when a command needs them);
- `relaylab --help` and `relaylab COMMAND --help` for every command (the parser is built without torch, xarray,
  zarr or dask);
- `relaylab validate` of a small ViRelAy project (`relaylab synthetic`, 60 samples: the fixed cost of opening and
  checking a project, which the arrays' size does not change) and of its converted Zarr store, beside the import of
  the libraries it reads with (xarray, which imports dask.array itself when Dask is installed; zarr; h5py).

The goals are those of the codebase issue: import ≤ 0.3 s, each --help and validate ≤ 0.5 s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from . import REPO, format_table, machine_info, row, write_results

DESCRIPTION = "start-up: import relaylab, relaylab [COMMAND] --help, validate of a small project (fresh processes)"
GOALS = {"import": 0.3, "help": 0.5, "validate": 0.5}
SAMPLES = 60
FLOOR_IMPORTS = "import xarray, dask.array, zarr, h5py, jsonschema, tqdm"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--commands", nargs="+", default=None, metavar="COMMAND",
                        help="the commands whose --help is timed (default: all of `relaylab --help`)")
    parser.add_argument("--work", default=None, help="folder for the small project (default: a temporary folder)")


def relaylab_command() -> list[str]:
    """`relaylab` as installed beside this Python (the console script), else `python -m relaylab`."""
    script = Path(sys.executable).with_name("relaylab")
    return [str(script)] if script.exists() else [sys.executable, "-m", "relaylab"]


def timed(argv: list[str], warmup: int, repeats: int) -> tuple[list[float], list[float], int]:
    """Wall and CPU seconds of `argv` over the repeats (after `warmup` dropped runs), and the largest peak RSS."""
    walls, cpus, peak = [], [], 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    for i in range(warmup + repeats):
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        proc.stderr.close()
        if i >= warmup:
            walls.append(wall)
            cpus.append(usage.ru_utime + usage.ru_stime)
            peak = max(peak, usage.ru_maxrss * 1024)
    return walls, cpus, peak


def commands(relaylab: list[str]) -> list[str]:
    """The subcommands `relaylab` offers, read from its parser (no heavy import)."""
    sys.path.insert(0, str(REPO))
    from relaylab.cli import parser

    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def small_project(work: Path, relaylab: list[str]) -> tuple[Path, Path]:
    """A 60-sample ViRelAy project (as `relaylab synthetic` writes it) and its converted store."""
    project = work / "project" / "project.yaml"
    if not project.exists():
        subprocess.run([*relaylab, "synthetic", str(project.parent), "--samples", str(SAMPLES)], check=True,
                       stdout=subprocess.DEVNULL)
    store = work / "project.zarr"
    if not store.exists():
        subprocess.run([*relaylab, "convert", str(project), str(store), "-q"], check=True, stdout=subprocess.DEVNULL)
    return project, store


def run(args) -> int:
    import tempfile

    relaylab = relaylab_command()
    names = args.commands or commands(relaylab)
    repeats = max(args.repeats, 5 if not args.smoke else 3)
    machine = machine_info()
    rows: list[dict] = []

    def measure(case: str, argv: list[str], goal_key: str | None, floor: float | None) -> float:
        walls, cpus, peak = timed(argv, args.warmup, repeats)
        median = sorted(walls)[len(walls) // 2]
        goal = GOALS.get(goal_key) if goal_key else None
        rows.append(row("cli", case, "wall", walls, "s", goal=f"<= {goal} s" if goal else "",
                        ok=(median <= goal) if goal else None))
        rows.append(row("cli", case, "cpu", cpus, "s"))
        rows.append(row("cli", case, "peak_rss", peak / 2**20, "MiB"))
        if floor:
            rows.append(row("cli", case, "wall / python -c pass", median / floor, "x"))
        return median

    with tempfile.TemporaryDirectory(prefix="relaylab-cli-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        project, store = small_project(work, relaylab)
        floor = measure("python -c pass", [sys.executable, "-c", "pass"], None, None)
        measure("import relaylab", [sys.executable, "-c", "import relaylab"], "import", floor)
        measure("relaylab --help", [*relaylab, "--help"], "help", floor)
        for name in names:
            measure(f"relaylab {name} --help", [*relaylab, name, "--help"], "help", floor)
        # the floor of any validate built on xarray: xarray imports dask.array itself whenever Dask is installed
        measure("import xarray, dask.array, zarr, h5py, jsonschema", [sys.executable, "-c", FLOOR_IMPORTS], None, floor)
        measure(f"relaylab validate (ViRelAy project, {SAMPLES} samples)", [*relaylab, "validate", str(project), "-q"],
                "validate", floor)
        measure(f"relaylab validate (Zarr store, {SAMPLES} samples)", [*relaylab, "validate", str(store), "-q"],
                "validate", floor)
    print(format_table(rows))
    json_path, _ = write_results("cli", rows, out=args.out, machine=machine,
                                 config={"repeats": repeats, "warmup": args.warmup, "commands": names,
                                         "relaylab": relaylab})
    print(f"results: {json_path}")
    return 0
