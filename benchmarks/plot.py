"""Scaling-curve PNGs for the suites: one line per series, the median with a min–max band, log axes.

matplotlib is imported here only (the `bench` extra); a suite calls `scaling_png` after writing its JSON/CSV, and a
missing matplotlib costs the picture, never the numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)


def scaling_png(rows: Sequence[dict], path: str | Path, *, x: Callable[[dict], float], series: Callable[[dict], str],
                title: str, xlabel: str, ylabel: str, logx: bool = True, logy: bool = True) -> Path | None:
    """Plot the median (and min–max band) of `rows` against `x(row)`, one line per `series(row)`."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'relaylab[bench]'): no plot written to %s", path)
        return None
    lines: dict[str, list[tuple[float, float, float, float]]] = {}
    for r in rows:
        lines.setdefault(series(r), []).append((x(r), r["median"], r["min"], r["max"]))
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, points in sorted(lines.items()):
        points.sort()
        xs, med, lo, hi = zip(*points)
        ax.plot(xs, med, marker="o", label=name)
        ax.fill_between(xs, lo, hi, alpha=0.2)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xscale="log" if logx else "linear", yscale="log" if logy else "linear")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
