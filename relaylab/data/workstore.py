"""The store a command works in when it is given a project's own files (a project YAML, or an attribution HDF5 file
and its label map) rather than a relaylab Zarr store: made by converting them once, reused after that.

A store records the files it was converted from (`source_files` in its metadata: each file's absolute path, size and
modification time). A later command given the same files reuses the store without converting again; one whose files
differ (other files, or the same files changed since) is refused rather than silently mixed with the new input.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import RelaylabError
from . import store as zstore

log = logging.getLogger(__name__)


def default_store_path(project: str | os.PathLike) -> Path:
    """Beside the project file: `project.yaml` → `project.zarr`, `attributions.h5` → `attributions.zarr`."""
    return Path(project).with_suffix(".zarr")


def referenced_files(project: Path, label_map: Path | None) -> list[Path]:
    """The files a project reads: the file itself, its label map and, for a YAML, its dataset, attribution and
    analysis sources (an image folder counts as the folder: its modification time changes as files come and go)."""
    files = [project]
    if label_map is not None:
        return files + [label_map]
    from .project import attribution_blocks, read_project_yaml

    try:
        spec = (read_project_yaml(project) or {}).get("project") or {}
    except (RelaylabError, AttributeError):
        return files  # opening the project reports what is wrong with it
    folder = project.parent
    named = [spec.get("label_map"), (spec.get("dataset") or {}).get("path")]
    try:
        named += [s for block in attribution_blocks(spec) for s in block.get("sources") or []]
        named += [s for block in spec.get("analyses") or [] for s in block.get("sources") or []]
    except (AttributeError, TypeError):
        pass
    if spec.get("store"):
        named.append(f"{spec['store']}/zarr.json")
    return files + [folder / str(name) for name in named if name]


def source_files(project: str | os.PathLike, label_map: str | os.PathLike | None = None) -> dict[str, list[int]]:
    """Absolute path → [size, modification time in ns] of every file the project reads ([-1, -1]: missing)."""
    out = {}
    for file in referenced_files(Path(project), Path(label_map) if label_map is not None else None):
        try:
            stat = file.stat()
            out[os.path.abspath(file)] = [stat.st_size, stat.st_mtime_ns]
        except OSError:
            out[os.path.abspath(file)] = [-1, -1]
    return out


def prepare_store(project: str | os.PathLike, *, label_map: str | os.PathLike | None = None,
                  store: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """The relaylab store to work in for `project`: the project itself when it is a store; otherwise `store`
    (default: `default_store_path`), converted from the project's files the first time, resumed when a conversion
    was killed, reused as it is when complete and made from the same, unchanged files.

    A store made from other files, or from these files before they changed, is refused: the user deletes it or
    names another with `store`."""
    project = Path(project)
    if zstore.is_store(project):
        if label_map is not None or store is not None:
            given = "--label-map" if label_map is not None else "--store"
            raise RelaylabError.at(project, "", f"a project YAML or an attribution HDF5 file with {given}",
                                   f"a relaylab Zarr store, which is worked in directly ({given} is only for converting)")
        return project
    if label_map is None and project.suffix.lower() in (".h5", ".hdf5", ".hdf") and project.is_file():
        raise RelaylabError.at(project, "", "a label map for an attribution HDF5 file: --label-map FILE (ViRelAy's JSON list "
                               "of {index, word_net_id, name})", "none given")
    from .convert import convert_to_zarr

    target = Path(store) if store is not None else default_store_path(project)
    source = str(project.resolve())
    files = source_files(project, label_map)
    if zstore.is_store(target):
        meta = zstore.store_metadata(target)
        if meta.get("source") != source:
            raise RelaylabError.at(target, "zarr.json#attributes.relaylab.source", f"a store converted from {source}",
                                   f"one converted from {meta.get('source')}; delete it, or pass --store with another path")
        recorded = meta.get("source_files")
        if recorded is None:
            log.warning("%s records no source files: reusing it without checking that %s is unchanged", target, project)
        elif recorded != files:
            changed = sorted(set(recorded) ^ set(files) | {f for f in files if recorded.get(f) != files[f]})
            raise RelaylabError.at(target, "zarr.json#attributes.relaylab.source_files",
                                   f"a store converted from {source} and files unchanged since",
                                   f"{', '.join(changed[:3])}{' and more' if len(changed) > 3 else ''} other or changed since the "
                                   "store was made; delete it to convert again, or pass --store with another path")
        if meta.get("status") == "complete":
            log.info("reusing %s, converted from %s", target, source)
            return target
        log.info("resuming the conversion of %s into %s", source, target)
    convert_to_zarr(project, target, label_map=label_map, progress=progress)
    return target
