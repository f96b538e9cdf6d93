"""`relaylab census`: the census (`relaylab.analyze.census`) of every category of a SpRAy analysis, written into the
store as `census/<analysis>/` category by category (small ones in packs, like the analysis), so a killed run re-run
with the same command keeps what it committed. Runs in this process, or as Dask tasks like `relaylab analyze`.

A census belongs to one analysis: the analysis' categories, members, spectra and clusterings, and the heatmaps of the
attribution set it was computed from. Re-running the analysis with other settings, or the census with another
clustering, makes the census anew.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ..data import store as zstore
from ..data.dims import SAMPLE
from ..data.project import open_project
from ..errors import RelaylabError, step
from .census import MIN_MEMBERS, UNUSED, census_category
from .run import batches, read_rows, run_tasks

log = logging.getLogger(__name__)

CENSUS = "census"  # the store's group of censuses: census/<analysis>/<category>
VERSION = 1  # a census of another version is made anew


def category_inputs(tree: xr.DataTree, positions: pd.Index) -> tuple[dict[str, dict], dict[str, str]]:
    """(category → what its census reads: heatmap rows, sample indices, eigenvalues, clusterings; category → why it
    is skipped) from an opened analysis. `positions` maps a sample index to its row in the attribution set."""
    inputs, skipped = {}, {}
    for category, node in tree.children.items():
        samples = np.asarray(node["index"].values, dtype=np.int64)
        if len(samples) < MIN_MEMBERS:
            skipped[category] = f"{len(samples)} members, fewer than the {MIN_MEMBERS} a census needs"
            continue
        eigenvalues = None
        if "embedding" in node.children and "spectral" in node["embedding"].children:
            spectral = node["embedding"]["spectral"].dataset
            if "eigenvalue" in spectral.variables:
                eigenvalues = np.asarray(spectral["eigenvalue"].values, dtype=np.float64)
        clusterings = {}
        if "cluster" in node.children:
            clusterings = {str(name): np.asarray(values.values) for name, values in node["cluster"].dataset.data_vars.items()}
        inputs[category] = {"rows": positions.get_indexer(samples), "samples": samples, "eigenvalues": eigenvalues,
                            "clusterings": clusterings}
    return inputs, skipped


def census_batch(store: str, group: str, attribution: str, batch: dict[str, dict], config: dict) -> Iterator[tuple[str, xr.DataTree]]:
    """(category, its census tree) for each category of `batch`; the batch's heatmaps are read in one selection."""
    heatmaps = zstore.open_group(store, f"attributions/{attribution}", chunks=None)
    with closing(heatmaps):
        rows = np.unique(np.concatenate([info["rows"] for info in batch.values()]))
        with step(f"reading {len(rows)} samples of attributions/{attribution} for {group}", store):
            values = read_rows(heatmaps["attribution"], rows)
    for category, info in batch.items():
        with step(f"taking the census of {group}/{category}", store):
            clustering = config.get("clustering")
            if clustering is not None and clustering not in info["clusterings"]:
                raise RelaylabError.at(store, f"analyses/{config['analysis']}/{category}/cluster",
                                       f"a clustering named {clustering!r}",
                                       f"only {', '.join(info['clusterings']) or 'none'}")
            yield category, census_category(values[np.searchsorted(rows, info["rows"])], info["samples"], info["eigenvalues"],
                                            info["clusterings"], clustering)


def census_task(writer: zstore.AnalysisWriter, attribution: str, batch: dict[str, dict], config: dict) -> list[str]:
    """`census_batch` as one Dask task that commits its categories itself (one pack); returns them."""
    trees = dict(census_batch(str(writer.path), writer.group, attribution, batch, config))
    writer.commit_pack(trees)
    return list(trees)


def take_census(store: str | Path, analysis: str, *, clustering: str | None = None, scheduler: str | None = None,
                n_workers: int | None = None, batch_samples: int | None = None, progress: bool = True) -> dict:
    """Take (or finish) the census of `analysis` in the relaylab store `store`; returns {"done": [...], "skipped":
    {category: reason}}. Categories go several to a task as in `relaylab analyze` (`batch_samples`: members per
    task)."""
    store = Path(store)
    with open_project(store, dask=False) as project:
        if project.metadata.get("format") != "relaylab-zarr":
            raise RelaylabError.at(store, "", "a relaylab Zarr store holding a SpRAy analysis",
                                   "a project file; convert and analyse it first: relaylab analyze PROJECT")
        if analysis not in project.analyses:
            raise RelaylabError.at(store, f"analyses/{analysis}", "a SpRAy analysis of the store "
                                   f"({', '.join(project.analyses) or 'none; run relaylab analyze'})", "no such analysis")
        meta = zstore.read_group_meta(store, f"analyses/{analysis}") or {}
        attribution = meta.get("attribution")
        if attribution is None and "layer" not in meta and "activation_set" not in meta:
            # converted from a ViRelAy/CoRelAy analysis file: it was computed on the project's attributions
            attribution = next(iter(project.attributions), None)
        if attribution not in project.attributions:
            raise RelaylabError.at(store, f"analyses/{analysis}", "an analysis of heatmaps (its attribution set recorded in "
                                   "attributes.relaylab.attribution)", f"{attribution!r}: not an attribution set of the store "
                                   "(an analysis of activations has no heatmaps to take a census of)")
        heatmap = project.attributions[attribution]["attribution"]
        sample_bytes = heatmap.dtype.itemsize * int(np.prod(heatmap.shape[1:]))
        positions = pd.Index(np.asarray(project.attributions[attribution][SAMPLE].values))
        with step(f"reading analyses/{analysis}", store):
            inputs, skipped = category_inputs(project.analyses[analysis], positions)
    missing = {c for c, info in inputs.items() if (info["rows"] < 0).any()}
    if missing:
        raise RelaylabError.at(store, f"analyses/{analysis}/{sorted(missing)[0]}/index", f"samples of attributions/{attribution}",
                               "sample indices that set does not hold")
    attrs = {"analysis_config": meta.get("config"), "attribution": attribution, "clustering": clustering or "auto",
             "version": VERSION}
    with zstore.begin_analysis(store, analysis, attrs, replace=True, root=CENSUS, kind="census") as writer:
        todo = writer.pending(inputs)
        log.info("census of %s: %d categories to do, %d done before, %d skipped", analysis, len(todo), len(writer.done), len(skipped))
        if todo:
            sizes = {c: inputs[c]["rows"] for c in todo}
            work = [{c: inputs[c] for c in batch} for batch in batches(sizes, sample_bytes, batch_samples)]
            run_tasks(writer, attribution, sizes, {"clustering": clustering, "analysis": analysis}, scheduler, n_workers, progress,
                      work=work, analyse=census_batch, task=census_task)
        writer.finish(skipped=skipped)
    return {"done": sorted(writer.done), "skipped": skipped}


def open_census(store: str | Path, analysis: str) -> xr.DataTree:
    """The complete census of `analysis` (one child per category), loaded."""
    if (zstore.read_group_meta(store, f"{CENSUS}/{analysis}") or {}).get("status") is None:
        raise RelaylabError.at(store, f"{CENSUS}/{analysis}", "a census of the analysis", f"none; run relaylab census {store} --analysis {analysis}")
    return zstore.open_analysis(store, analysis, root=CENSUS, chunks=None).load()


def ranking(census: xr.DataTree) -> list[dict]:
    """One row per category, highest census score first: the category's scores and its most suspicious cluster."""
    rows = []
    for category, node in census.children.items():
        ds = node.dataset
        used = np.flatnonzero(ds["cluster_id"].values != UNUSED)
        top = int(used[0]) if len(used) else None
        rows.append({
            "category": category, "score": float(ds["score"]), "split": float(ds["split"]), "split_k": int(ds["split_k"]),
            "separation": float(ds["separation"]), "members": int(ds.sizes[zstore.MEMBER]), "clustering": node.attrs.get("clustering"),
            "suspect_cluster": int(ds["cluster_id"].values[top]) if top is not None else None,
            "suspect_size": int(ds["cluster_size"].values[top]) if top is not None else 0,
            "suspect_concentration": float(ds["concentration"].values[top]) if top is not None else None,
        })
    rows.sort(key=lambda row: (-row["score"], row["category"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows
