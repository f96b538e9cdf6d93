"""The census report: `census.json` for scripts (every category ranked, schemas/census.schema.json) and `index.html`
with PNGs for people: the ranking, then for the highest-ranked categories the eigenvalue spectrum and, per cluster,
its prototype (mean and median relevance), its estimated artifact mask and its most typical samples.
"""

from __future__ import annotations

import html
import json
import logging
import os
from pathlib import Path

import numpy as np

from ..data.project import open_project
from ..data.store import read_group_meta
from .census import SEPARATION_MID, SPLIT_MID, UNUSED
from .census_job import CENSUS, VERSION, open_census, ranking

log = logging.getLogger(__name__)

FLAG_THRESHOLD = 0.75  # a category scoring above this is flagged in the report (see census_threshold in the docs)
TOP_SAMPLES = 20
COLORMAP = "black-fire-red"  # the explorer's default (ViRelAy's); zennit's palettes would import torch
PX = 96


def report_data(store: str | Path, analysis: str, census=None, names: dict[str, str] | None = None) -> dict:
    """The report's JSON object (see schemas/census.schema.json); `names`: each category's display name (read from the
    analysis when not given: opening an analysis of thousands of categories takes seconds)."""
    census = census if census is not None else open_census(store, analysis)
    rows = ranking(census)
    if names is None:
        with open_project(store, dask=False) as project:
            names = display_names(project.analyses[analysis], census)
    meta = read_group_meta(store, f"{CENSUS}/{analysis}") or {}
    categories = []
    for row in rows:
        ds = census[row["category"]].dataset
        used = np.flatnonzero(ds["cluster_id"].values != UNUSED)
        order = np.argsort(-ds["sample_score"].values, kind="stable")[:TOP_SAMPLES]
        categories.append({
            **row, "name": names[row["category"]], "flagged": row["score"] > FLAG_THRESHOLD,
            "clusters": [{"id": int(ds["cluster_id"].values[s]), "size": int(ds["cluster_size"].values[s]),
                          "score": float(ds["cluster_score"].values[s]), "concentration": float(ds["concentration"].values[s]),
                          "mask_pixels": int(ds["mask"].values[s].sum()),
                          "typical": [int(t) for t in ds["typical"].values[s] if t >= 0]} for s in used],
            "top_samples": [{"sample": int(ds["index"].values[i]), "score": float(ds["sample_score"].values[i])} for i in order],
        })
    return {"format": "relaylab-census", "version": VERSION, "store": str(store), "analysis": analysis,
            "attribution": meta.get("attribution"), "threshold": FLAG_THRESHOLD, "split_mid": SPLIT_MID,
            "separation_mid": SEPARATION_MID,
            "categories": categories}


def display_names(analysis_tree, census) -> dict[str, str]:
    return {category: str(analysis_tree[category].attrs.get("display_name", category)) for category in census.children}


def _png(path: Path, rgba: np.ndarray) -> str:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(rgba)).resize((PX, PX), Image.NEAREST).save(path, compress_level=1)
    return path.name


def _spectrum_png(path: Path, eigenvalues: np.ndarray, split_k: int) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(3.2, 2.0), dpi=100)
    values = np.sort(np.asarray(eigenvalues, dtype=np.float64))[:16]
    axes.bar(np.arange(1, len(values) + 1), values, color=["#c0392b" if i < split_k else "#7f8c8d" for i in range(len(values))])
    axes.set_xlabel("eigenvalue #", fontsize=8)
    axes.set_ylabel("λ", fontsize=8)
    axes.tick_params(labelsize=7)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path.name


def write_report(store: str | Path, analysis: str, out: str | Path, *, top: int = 20) -> Path:
    """Write `out/census.json`, `out/index.html` and its PNGs (written to a temporary folder, then moved into place);
    returns the HTML's path."""
    from ..explore.render import heatmap_rgba, input_rgb, mask_rgba, overlay_rgba

    out = Path(out)
    tmp = out.with_name(f".{out.name}.writing-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    census = open_census(store, analysis)
    project = open_project(store, dask=False)  # opened once: names, spectra and the typical samples' heatmaps
    try:
        analysis_tree = project.analyses[analysis]
        data = report_data(store, analysis, census, names=display_names(analysis_tree, census))
    except BaseException:
        project.close()
        raise
    (tmp / "census.json").write_text(json.dumps(data, indent=1))
    parts = [f"<h1>Census of {html.escape(analysis)}</h1>",
             f"<p>{html.escape(str(store))} · {len(data['categories'])} categories, ranked by census score "
             f"(flagged above {FLAG_THRESHOLD}). JSON: <a href='census.json'>census.json</a></p>",
             "<table><tr><th>rank</th><th>category</th><th>score</th><th>split (k)</th><th>separation</th><th>members</th>"
             "<th>most suspicious cluster (size, concentration)</th></tr>"]
    for row in data["categories"]:
        flag = " class='flagged'" if row["flagged"] else ""
        concentration = "" if row["suspect_concentration"] is None else f"{row['suspect_concentration']:.2f}"
        parts.append(f"<tr{flag}><td>{row['rank']}</td><td><a href='#{html.escape(row['category'])}'>{html.escape(row['name'])}</a></td>"
                     f"<td>{row['score']:.3f}</td><td>{row['split']:.2f} ({row['split_k']})</td><td>{row['separation']:.2f}</td>"
                     f"<td>{row['members']}</td><td>{row['suspect_cluster']} ({row['suspect_size']}, {concentration})</td></tr>")
    parts.append("</table>")
    with project:
        shown = data["categories"][:top]
        wanted = sorted({t for row in shown for cluster in row["clusters"] for t in cluster["typical"]})
        heatmaps = dict(zip(wanted, project.attributions[data["attribution"]]["attribution"].sel(sample=wanted).values)) if wanted else {}
        for row in shown:
            category, ds = row["category"], census[row["category"]].dataset
            key = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in category)
            parts.append(f"<h2 id='{html.escape(category)}'>#{row['rank']} {html.escape(row['name'])} — score {row['score']:.3f}</h2>")
            node = analysis_tree[category]
            if "embedding" in node.children and "spectral" in node["embedding"].children:
                spectrum = _spectrum_png(tmp / f"{key}-spectrum.png", node["embedding"]["spectral"]["eigenvalue"].values, row["split_k"])
                parts.append(f"<img class='spectrum' src='{spectrum}' alt='eigenvalues'>")
            parts.append("<table class='clusters'><tr><th>cluster</th><th>mean relevance</th><th>median relevance</th>"
                         "<th>estimated mask</th><th>most typical samples</th></tr>")
            for slot, cluster in enumerate(row["clusters"]):
                images = [_png(tmp / f"{key}-c{slot}-mean.png", heatmap_rgba(ds["prototype_mean"].values[slot], COLORMAP)),
                          _png(tmp / f"{key}-c{slot}-median.png", heatmap_rgba(ds["prototype_median"].values[slot], COLORMAP)),
                          _png(tmp / f"{key}-c{slot}-mask.png", mask_rgba(ds["mask"].values[slot]))]
                typical = []
                for sample in cluster["typical"]:
                    attribution = heatmaps[sample]
                    rgba = overlay_rgba(input_rgb(project, sample), attribution, COLORMAP) if project.has_images else heatmap_rgba(attribution, COLORMAP)
                    typical.append(_png(tmp / f"{key}-s{sample}.png", rgba))
                cells = "".join(f"<td><img src='{name}'></td>" for name in images)
                samples = "".join(f"<img src='{name}' title='sample {s}'>" for name, s in zip(typical, cluster["typical"]))
                parts.append(f"<tr><td>{cluster['id']}<br>{cluster['size']} samples<br>score {cluster['score']:.2f}<br>"
                             f"concentration {cluster['concentration']:.2f}</td>{cells}<td>{samples}</td></tr>")
            parts.append("</table>")
    style = ("body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} td,th{padding:2px 6px;border-bottom:1px solid #ddd}"
             " tr.flagged{background:#fde2e2} img{image-rendering:pixelated;margin:1px}")
    (tmp / "index.html").write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>Census of {html.escape(analysis)}</title>"
                                    f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        import shutil

        shutil.rmtree(old, ignore_errors=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    return out / "index.html"


__all__ = ["CENSUS", "FLAG_THRESHOLD", "report_data", "write_report"]
