"""relaylab benchmarks: `python -m benchmarks <suite> [--repeats N] [--out DIR] [--smoke]`.

Shared helpers for every suite: the machine description, child processes measured by the OS (wall time, peak
RSS from `wait4`), page-cache eviction, medians, and writing results as JSON + CSV plus a table on stdout.
Only the standard library is imported here, so a child process can time its own imports.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results"
LIBRARIES = ("numpy", "xarray", "zarr", "numcodecs", "h5py", "dask", "relaylab")


# --------------------------------------------------------------------------------------------- machine description


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _filesystem(path: Path) -> dict:
    """Mount point, device and filesystem type of the mount holding `path` (from /proc/mounts)."""
    path = path.resolve()
    best: dict = {}
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, fstype = line.split()[:3]
            if (str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best.get("mount", "")):
                best = {"mount": mount, "device": device, "fstype": fstype}
    except OSError:
        pass
    return best


def _versions() -> dict:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except OSError:
        return {}


def machine_info(data_dir: str | Path | None = None) -> dict:
    """Cores, memory, OS, CPU model, Python and library versions, and the filesystem the data lives on."""
    info = {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": _versions(),
        "git": _git(),
    }
    if data_dir is not None:
        info["data_dir"] = str(data_dir)
        info["data_filesystem"] = _filesystem(Path(data_dir))
    return info


# ------------------------------------------------------------------------------------------------ measuring helpers


def proc_io() -> dict[str, int]:
    """This process's I/O counters (rchar/wchar: bytes through read/write syscalls, cached or not)."""
    try:
        return {k: int(v) for k, v in (line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())}
    except OSError:
        return {}


def evict(paths: str | Path | Iterable[str | Path]) -> int:
    """Drop files (or every file under folders) from the page cache; returns the bytes evicted.

    Dirty pages cannot be dropped, so each file is fsynced first. Works without root (POSIX_FADV_DONTNEED).
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    total = 0
    for path in map(Path, paths):
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
        for file in files:
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                total += os.fstat(fd).st_size
            finally:
                os.close(fd)
    return total


def tree_bytes(path: str | Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class ChildError(RuntimeError):
    pass


def run_child(argv: Sequence[str], *, timeout: float = 3600, env: dict | None = None) -> dict:
    """Run `argv` (a Python program that writes a JSON object to the file named by $BENCH_RESULT) in a fresh
    process; returns that object plus `wall_s` (spawn to exit, as seen by the parent), `cpu_s` (user + system)
    and `peak_rss_bytes` (the child's ru_maxrss), both from wait4."""
    with tempfile.NamedTemporaryFile("r", suffix=".json", prefix="bench-") as result:
        child_env = {**os.environ, **(env or {}), "BENCH_RESULT": result.name}
        child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), child_env.get("PYTHONPATH")]))
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), env=child_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output: list[bytes] = []
        reader = threading.Thread(target=lambda: output.append(proc.stdout.read()), daemon=True)
        reader.start()
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        reader.join()
        text = b"".join(output).decode(errors="replace")
        if proc.returncode != 0:
            raise ChildError(f"{' '.join(map(str, argv))} exited with {proc.returncode}:\n{text[-4000:]}")
        data = json.loads(Path(result.name).read_text() or "{}")
    data["wall_s"] = wall
    data["cpu_s"] = usage.ru_utime + usage.ru_stime
    data["peak_rss_bytes"] = usage.ru_maxrss * 1024  # Linux reports KiB
    return data


def child_result(data: dict) -> None:
    """Called in a child started by `run_child`: hand the measurements back."""
    Path(os.environ["BENCH_RESULT"]).write_text(json.dumps(data))


def parse_sizes(tokens: list[str] | None, defaults: dict[str, list[int]]) -> dict[str, list[int]]:
    """`--sizes NAME=N[,N...]` tokens over a suite's defaults (NAME one of theirs; 1e6 and 1_000_000 both read)."""
    sizes = {k: list(v) for k, v in defaults.items()}
    for token in tokens or []:
        name, _, values = token.partition("=")
        if name not in sizes or not values:
            raise SystemExit(f"--sizes: expected NAME=N[,N...] with NAME in {', '.join(sizes)}, got {token!r}")
        sizes[name] = [int(float(v.replace("_", ""))) for v in values.split(",")]
    return sizes


def stats(values: Sequence[float]) -> dict:
    values = [float(v) for v in values]
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "values": values}


# ---------------------------------------------------------------------------------------------------- results


def row(benchmark: str, case: str, metric: str, values: Sequence[float] | float, unit: str, *,
        goal: str = "", ok: bool | None = None, **extra) -> dict:
    """One result line: a metric of one case, with all repeats and their median."""
    values = [values] if isinstance(values, (int, float)) else list(values)
    return {"benchmark": benchmark, "case": case, "metric": metric, "unit": unit, **stats(values), "goal": goal,
            "ok": ok, **extra}


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if value == 0:
            return "0"
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 100:
            return f"{value:.0f}"
        if magnitude >= 10:
            return f"{value:.1f}"
        if magnitude >= 0.01:
            return f"{value:.3f}"
        return f"{value:.2e}"
    return str(value)


def format_table(rows: Sequence[dict]) -> str:
    columns = ["benchmark", "case", "metric", "median", "min", "max", "n", "unit", "goal", "ok"]
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    numeric = {"median", "min", "max", "n"}
    def fmt_line(values):
        return "  ".join(v.rjust(w) if c in numeric else v.ljust(w) for v, w, c in zip(values, widths, columns)).rstrip()
    lines = [fmt_line(columns), fmt_line(["-" * w for w in widths])]
    lines += [fmt_line(line) for line in cells]
    return "\n".join(lines)


def write_results(suite: str, rows: list[dict], *, out: str | Path, config: dict, machine: dict,
                  notes: Sequence[str] = ()) -> tuple[Path, Path]:
    """`<out>/<suite>-<timestamp>.json` (everything) and `.csv` (one line per row, repeats joined by ';')."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = out / f"{suite}-{stamp}"
    if hasattr(os, "getloadavg"):
        machine = {**machine, "load_average_at_end": list(os.getloadavg())}
    document = {"suite": suite, "finished": _dt.datetime.now().isoformat(timespec="seconds"), "command": sys.argv,
                "config": config, "machine": machine, "notes": list(notes), "results": rows}
    json_path = base.with_suffix(".json")
    json_path.write_text(json.dumps(document, indent=2, default=str))
    flat_machine = machine_columns(machine)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    keys += list(flat_machine)
    csv_path = base.with_suffix(".csv")
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for r in rows:
            line = {k: ";".join(f"{v:.6g}" for v in r[k]) if k == "values" else r.get(k) for k in keys}
            writer.writerow({**line, **flat_machine})
    return json_path, csv_path


def machine_columns(machine: dict) -> dict:
    """The machine description as flat `machine_*` columns, repeated on each CSV line."""
    columns = {f"machine_{k}": machine.get(k) for k in ("cpu_model", "cores_usable", "memory_bytes", "os")}
    columns.update({f"version_{k}": v for k, v in machine.get("versions", {}).items()})
    columns["machine_fs"] = machine.get("data_filesystem", {}).get("fstype")
    for key in ("load_average_at_start", "load_average_at_end"):
        columns[f"machine_{key}"] = (machine.get(key) or [None])[0]
    columns["git_commit"] = machine.get("git", {}).get("commit")
    return columns
