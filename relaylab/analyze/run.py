"""`relaylab analyze`: SpRAy over every category of a project, one Dask task per category, each committed to the
project's Zarr store as it finishes, so a killed run re-run with the same command skips finished categories.

Workers read their category's attributions from the store themselves (chunk by chunk, as Dask arrays), so no large
array passes through the scheduler. Categories too small for the configured neighbours and eigenvectors are skipped
and listed in the analysis' attributes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from ..compute import dask_client
from ..data import store as zstore
from ..data.dims import SAMPLE
from ..data.labels import class_category
from ..data.project import open_project
from ..errors import Problem, RelaylabError, step
from .config import build_spray, config_fingerprint

log = logging.getLogger(__name__)


def category_name(label_map: xr.Dataset, cls: int) -> str:
    """ViRelAy's convention: the class's WordNet id, else (no id, or one that repeats) its zero-padded index."""
    return class_category(label_map, cls)


def categories(attributions: xr.Dataset, grouping: str, label_map: xr.Dataset) -> dict[str, np.ndarray]:
    """Category name → row positions in the attribution set."""
    if grouping == "all":
        return {"all": np.arange(attributions.sizes[SAMPLE])}
    if grouping == "predicted_label":
        classes = np.asarray(attributions["prediction"].argmax("class").values)
        member = lambda c: classes == c  # noqa: E731
        present = np.unique(classes)
    else:
        labels = np.asarray(attributions["label"].values)
        if labels.ndim == 2:  # multi-label: a sample belongs to the category of each of its labels
            member = lambda c: labels[:, c].astype(bool)  # noqa: E731
            present = np.flatnonzero(labels.any(axis=0))
        else:
            member = lambda c: labels == c  # noqa: E731
            present = np.unique(labels)
    return {category_name(label_map, int(c)): np.flatnonzero(member(c)) for c in present}


def run_category(store: str, attribution: str, rows: np.ndarray, config: dict) -> xr.DataTree:
    """One category's SpRAy, on a worker; reads its own heatmaps from the store."""
    heatmaps = zstore.open_group(store, f"attributions/{attribution}").isel({SAMPLE: rows})
    values = np.asarray(heatmaps["attribution"].values)
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad.any():
        raise RelaylabError(Problem(store, f"attributions/{attribution}/attribution", "finite heatmaps",
                                    f"NaN/inf at samples {heatmaps[SAMPLE].values[bad][:5].tolist()}"))
    spray = build_spray(config).fit(values)
    return spray.to_tree(heatmaps[SAMPLE].values)


def minimum_members(config: dict) -> int:
    return max(config["knn"].get("n_neighbors", 10), config["spectral"].get("n_components", 32)) + 1


PREDICTIONS = "model predictions ('prediction', (N, classes)) to group the samples by (--grouping predicted_label)"


def chosen_attribution(project, config: dict) -> str:
    """The attribution set the analysis runs on (the configured one, else the first), checked against the grouping:
    grouping by predicted label needs predictions, which CoRelAy's attribution files may not have."""
    attribution = config["attribution"] or next(iter(project.attributions), None)
    if attribution not in project.attributions:
        raise RelaylabError.at(project.path, f"attributions/{attribution}",
                               f"one of the project's attribution sets ({', '.join(project.attributions) or 'none'})", "no such set")
    attributions = project.attributions[attribution]
    if config["grouping"] == "predicted_label" and "prediction" not in attributions:
        instead = "; group by true_label or all instead"
        if project.metadata.get("format") == "relaylab-zarr":
            source = project.metadata.get("store", {}).get("source")
            raise RelaylabError.at(project.path, f"attributions/{attribution}/prediction", PREDICTIONS,
                                   f"none{f' (converted from {source}, which has none)' if source else ''}{instead}")
        files = ", ".join(attributions.attrs.get("sources", [])) or str(project.path)
        raise RelaylabError.at(files, "/prediction", PREDICTIONS, f"none{instead}")
    return attribution


def check_analysis(project_path: str | Path, config: dict, label_map: str | Path | None = None) -> None:
    """Everything `analyze` would refuse that is known before any work: unknown steps, an attribution set that is
    not there, a grouping the data cannot give. Run on a project's own files before they are converted to a store."""
    build_spray(config)
    with open_project(project_path, dask=False, label_map=label_map) as project:
        chosen_attribution(project, config)


def analyze(project_path: str | Path, name: str, config: dict, *, scheduler: str | None = None,
            n_workers: int | None = None, progress: bool = True) -> dict:
    """Run and commit every unfinished category of the store `project_path`; returns {"done": [...], "skipped":
    {category: reason}}. (`workstore.prepare_store` gives the store of a project's own files.)"""
    project = open_project(project_path)
    with project:
        if project.metadata.get("format") != "relaylab-zarr":
            raise RelaylabError.at(project_path, "", "a relaylab Zarr store to write the analysis into",
                                   "a project file; convert it first: relaylab convert PROJECT OUT.zarr")
        attribution = chosen_attribution(project, config)
        build_spray(config)  # unknown steps fail here, before anything is written
        groups = categories(project.attributions[attribution], config["grouping"], project.label_map)
    store = str(Path(project_path))
    small = minimum_members(config)
    skipped = {c: f"{len(rows)} samples, fewer than the {small} that {config['knn'].get('n_neighbors', 10)} neighbours "
                  f"and {config['spectral'].get('n_components', 32)} eigenvectors need"
               for c, rows in groups.items() if len(rows) < small}
    attrs = {"config": config_fingerprint(config), "attribution": attribution, "grouping": config["grouping"]}
    with zstore.begin_analysis(store, name, attrs) as writer:  # one that fails before any category is not kept
        todo = [c for c in writer.pending(groups) if c not in skipped]
        log.info("%s: %d categories to analyse, %d done before, %d skipped", name, len(todo), len(writer.done), len(skipped))
        if todo:
            run_tasks(writer, attribution, {c: groups[c] for c in todo}, config, scheduler, n_workers, progress)
        writer.finish(skipped=skipped)
    return {"done": sorted(writer.done), "skipped": skipped}


def run_tasks(writer: zstore.AnalysisWriter, attribution: str, groups: dict[str, np.ndarray], config: dict,
              scheduler: str | None, n_workers: int | None, progress: bool) -> None:
    """One Dask task per category, largest first, each committed as it finishes."""
    from distributed import as_completed

    store = str(writer.path)
    with dask_client(scheduler, store, local=True, n_workers=n_workers) as client:
        largest_first = sorted(groups, key=lambda c: -len(groups[c]))
        futures = {client.submit(run_category, store, attribution, groups[c], config, key=f"spray-{writer.name}-{c}", pure=False): c
                   for c in largest_first}
        with tqdm(total=len(futures), desc=writer.group, unit="category", disable=not progress) as bar:
            for future in as_completed(futures):
                category = futures[future]
                with step(f"analysing {writer.group}/{category}", store):
                    result = future.result()
                writer.commit(category, result)
                bar.set_postfix_str(category)
                bar.update()
