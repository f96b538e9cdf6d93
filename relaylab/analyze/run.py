"""`relaylab analyze`: SpRAy over every category of a project, as Dask tasks of one or several categories (small
ones are batched), each task's categories committed to the project's Zarr store together (`AnalysisWriter.commit_pack`)
as the task ends, so a killed run re-run with the same command skips finished categories. Work that fits in one task
runs in this process, without a cluster, committed category by category.

Workers read their batch's attributions from the store themselves, so no large array passes through the scheduler.
Categories too small for the configured neighbours and eigenvectors are skipped and listed in the analysis'
attributes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import closing
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


# Small categories go several to a task, so the fixed costs of a task (scheduling, opening the store, sending the
# results back) are paid per batch, not per category: at most BATCH_SAMPLES samples and BATCH_BYTES of heatmaps.
BATCH_SAMPLES = zstore.PACK_MEMBERS  # a task's categories are written as one pack
BATCH_BYTES = 256 * 2**20


def batches(groups: dict[str, np.ndarray], sample_bytes: int = 0, samples: int | None = None) -> list[dict[str, np.ndarray]]:
    """The categories largest first, packed in that order into batches of at most `samples` (default BATCH_SAMPLES)
    samples and BATCH_BYTES of heatmaps (a category larger than a batch forms one of its own)."""
    size = max(1, min(samples or BATCH_SAMPLES, BATCH_BYTES // max(sample_bytes, 1)))
    largest_first = {c: len(groups[c]) for c in sorted(groups, key=lambda c: -len(groups[c]))}
    return [{c: groups[c] for c in names} for names in zstore.in_groups(largest_first, size)]


def analyse_batch(store: str, group: str, attribution: str, batch: dict[str, np.ndarray], config: dict) -> Iterator[tuple[str, xr.DataTree]]:
    """(category, its SpRAy as a tree) for each category of `batch`, in order; reads the batch's heatmaps from the
    store in one selection. One estimator serves the batch, so its parameters are checked once."""
    heatmaps = zstore.open_group(store, f"attributions/{attribution}", chunks=None)
    with closing(heatmaps):
        rows = np.unique(np.concatenate(list(batch.values())))
        with step(f"reading {len(rows)} samples of attributions/{attribution} for {group}", store):
            values = read_rows(heatmaps["attribution"], rows)
            samples = np.asarray(heatmaps[SAMPLE].values)
    spray = build_spray(config)
    for category, members in batch.items():
        with step(f"analysing {group}/{category}", store):
            x = values[np.searchsorted(rows, members)]
            bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
            if bad.any():
                raise RelaylabError(Problem(store, f"attributions/{attribution}/attribution", "finite heatmaps",
                                            f"NaN/inf at samples {samples[members][bad][:5].tolist()}"))
            yield category, spray.fit(x).to_tree(samples[members])


def read_rows(variable: xr.DataArray, rows: np.ndarray, budget: int = BATCH_BYTES) -> np.ndarray:
    """`variable`'s rows `rows` (sorted, unique). Read as the one slice spanning them when that reads at most
    `budget` bytes or twice what is needed: a Zarr selection of scattered rows costs a file read per row, a slice one per
    shard (a category's samples are usually stored together)."""
    span = slice(int(rows[0]), int(rows[-1]) + 1)
    row_bytes = variable.dtype.itemsize * int(np.prod(variable.shape[1:]))
    if (span.stop - span.start) * row_bytes <= max(budget, 2 * len(rows) * row_bytes):
        return np.asarray(variable.isel({SAMPLE: span}).values)[rows - span.start]
    return np.asarray(variable.isel({SAMPLE: rows}).values)


def run_batch(writer: zstore.AnalysisWriter, attribution: str, batch: dict[str, np.ndarray], config: dict) -> list[str]:
    """`analyse_batch` as one Dask task that commits its categories itself, as one pack (`AnalysisWriter.commit_pack`);
    returns the categories committed."""
    trees = dict(analyse_batch(str(writer.path), writer.group, attribution, batch, config))
    writer.commit_pack(trees)
    return list(trees)


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
            n_workers: int | None = None, batch_samples: int | None = None, progress: bool = True) -> dict:
    """Run and commit every unfinished category of the store `project_path`; returns {"done": [...], "skipped":
    {category: reason}}. (`workstore.prepare_store` gives the store of a project's own files.)"""
    project = open_project(project_path, dask=False)  # labels only: the workers read the heatmaps themselves
    with project:
        if project.metadata.get("format") != "relaylab-zarr":
            raise RelaylabError.at(project_path, "", "a relaylab Zarr store to write the analysis into",
                                   "a project file; convert it first: relaylab convert PROJECT OUT.zarr")
        attribution = chosen_attribution(project, config)
        build_spray(config)  # unknown steps fail here, before anything is written
        groups = categories(project.attributions[attribution], config["grouping"], project.label_map)
        heatmap = project.attributions[attribution]["attribution"]
        sample_bytes = heatmap.dtype.itemsize * int(np.prod(heatmap.shape[1:]))
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
            run_tasks(writer, attribution, {c: groups[c] for c in todo}, config, scheduler, n_workers, progress, sample_bytes,
                      batch_samples)
        writer.finish(skipped=skipped)
    return {"done": sorted(writer.done), "skipped": skipped}


def run_tasks(writer: zstore.AnalysisWriter, attribution: str, groups: dict[str, np.ndarray], config: dict,
              scheduler: str | None, n_workers: int | None, progress: bool, sample_bytes: int = 0,
              batch_samples: int | None = None, *, work: list[dict] | None = None, analyse: Callable | None = None,
              task: Callable | None = None) -> None:
    """Batches of categories (`batches`) as Dask tasks, largest first; each worker commits its batch as one pack
    (the store is on a file system the workers share). Work that fits in one batch runs in this process, committed
    category by category, when neither a scheduler nor a number of workers is given: starting a LocalCluster would
    cost more than the work.

    Another per-category job (the census) passes its own batches (`work`: category → whatever its `analyse` reads),
    `analyse(store, group, attribution, batch, config)` yielding (category, tree), and `task(writer, attribution,
    batch, config)`, its Dask task, which commits and returns the categories done."""
    store = str(writer.path)
    work = work if work is not None else batches(groups, sample_bytes, batch_samples)
    analyse, task = analyse or analyse_batch, task or run_batch
    with tqdm(total=len(groups), desc=writer.group, unit="category", disable=not progress) as bar:
        def committed(categories: list[str]) -> None:
            bar.set_postfix_str(categories[-1])
            bar.update(len(categories))

        if scheduler is None and n_workers is None and len(work) == 1:
            for category, tree in analyse(store, writer.group, attribution, work[0], config):
                writer.commit(category, tree)
                committed([category])
            return
        from distributed import as_completed

        with dask_client(scheduler, store, local=True, n_workers=n_workers) as client:
            remote = writer.for_worker()
            futures = [client.submit(task, remote, attribution, batch, config,
                                     key=f"{writer.root}-{writer.name}-{i}-{next(iter(batch))}", pure=False) for i, batch in enumerate(work)]
            for future in as_completed(futures):
                done = future.result()
                writer.record(done)
                committed(done)
