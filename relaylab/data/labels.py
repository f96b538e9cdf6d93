"""Label maps: ViRelAy's JSON list of classes, as an xarray Dataset along the `class` dimension."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr

from ..errors import Problem, RelaylabError
from .dims import CLASS


def label_map_problems(entries: object, file: str) -> list[Problem]:
    """Every way a parsed label map differs from `[{"index": int, "word_net_id": str, "name": str}, ...]`."""
    if not isinstance(entries, list):
        return [Problem(file, "", "a JSON list of {index, word_net_id, name} objects", type(entries).__name__)]
    problems: list[Problem] = []
    seen_index: dict[int, int] = {}
    seen_wnid: dict[str, int] = {}
    for i, entry in enumerate(entries):
        where = f"[{i}]"
        if not isinstance(entry, dict):
            problems.append(Problem(file, where, "an object with index, word_net_id and name", type(entry).__name__))
            continue
        for key, kind, described in (("index", int, "an integer"), ("word_net_id", str, "a string"), ("name", str, "a string")):
            if key not in entry:
                problems.append(Problem(file, f"{where}.{key}", f"a key '{key}'", "it is missing"))
            elif not isinstance(entry[key], kind) or isinstance(entry[key], bool):
                problems.append(Problem(file, f"{where}.{key}", described, repr(entry[key])))
        index, wnid = entry.get("index"), entry.get("word_net_id")
        if isinstance(index, int) and not isinstance(index, bool):
            if index < 0:
                problems.append(Problem(file, f"{where}.index", "a non-negative class index", str(index)))
            if index in seen_index:
                problems.append(Problem(file, f"{where}.index", f"a unique class index, {index} is also at [{seen_index[index]}]"))
            seen_index.setdefault(index, i)
        if isinstance(wnid, str):
            if wnid in seen_wnid:
                problems.append(Problem(file, f"{where}.word_net_id", f"a unique WordNet id, '{wnid}' is also at [{seen_wnid[wnid]}]"))
            seen_wnid.setdefault(wnid, i)
    if not entries:
        problems.append(Problem(file, "", "at least one class", "an empty list"))
    return problems


def read_label_map_json(path: str | Path) -> object:
    """Parse the JSON file, turning a missing or malformed file into a `RelaylabError`."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RelaylabError.at(path, "", "an existing label map JSON file", "no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RelaylabError.at(path, "", "valid JSON", str(error)) from None


def label_map_from_entries(entries: list[dict]) -> xr.Dataset:
    """The canonical label map: coordinate `class` (the model's output index) with `word_net_id` and `name`."""
    entries = sorted(entries, key=lambda e: e["index"])
    return xr.Dataset(
        coords={
            CLASS: np.array([e["index"] for e in entries], dtype=np.int64),
            "word_net_id": (CLASS, np.array([e["word_net_id"] for e in entries], dtype=object)),
            "name": (CLASS, np.array([e["name"] for e in entries], dtype=object)),
        }
    )


def load_label_map(path: str | Path) -> xr.Dataset:
    """Read and check a ViRelAy label map; every problem is reported at once."""
    entries = read_label_map_json(path)
    problems = label_map_problems(entries, str(path))
    if problems:
        raise RelaylabError(problems)
    label_map = label_map_from_entries(entries)  # type: ignore[arg-type]
    label_map.attrs["source"] = str(path)
    return label_map


def label_map_entries(label_map: xr.Dataset) -> list[dict]:
    """Back to ViRelAy's JSON form."""
    return [
        {"index": int(i), "word_net_id": str(w), "name": str(n)}
        for i, w, n in zip(label_map[CLASS].values, label_map["word_net_id"].values, label_map["name"].values)
    ]


def category_display_name(label_map: xr.Dataset, category: str) -> str:
    """The human-readable class name for an analysis category named by WordNet id or (zero-padded) index."""
    wnids = label_map["word_net_id"].values
    hit = np.flatnonzero(wnids == category)
    if hit.size:
        return str(label_map["name"].values[hit[0]])
    if category.isdigit():
        hit = np.flatnonzero(label_map[CLASS].values == int(category))
        if hit.size:
            return str(label_map["name"].values[hit[0]])
    return category
