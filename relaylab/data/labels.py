"""Label maps: ViRelAy's JSON list of classes, as an xarray Dataset along the `class` dimension.

Each class also has a category key, the name its category group has in analysis files: its WordNet id where that is
a non-empty string no other class carries, else its index zero-padded to eight digits (`00000003`), the name ViRelAy's
and CoRelAy's scripts give the group of a class without a WordNet id. So label maps of datasets that have no WordNet
ids (CIFAR- or MNIST-style maps with `word_net_id` absent, null, empty or repeated) are accepted as ViRelAy accepts
them, every class still has a category of its own, and `label_map_warnings` says what was assumed.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import xarray as xr

from ..errors import Problem, RelaylabError
from .dims import CLASS

log = logging.getLogger(__name__)

SHOWN = 5  # entries listed by name in a warning before "…"


def index_key(index: int) -> str:
    """The category key of a class keyed by index: ViRelAy's and CoRelAy's zero-padded group name."""
    return f"{index:08d}"


def label_map_problems(entries: object, file: str) -> list[Problem]:
    """Every way a parsed label map differs from `[{"index": int, "word_net_id": str, "name": str}, ...]` that stops
    it from being used. A `word_net_id` that is absent, null, empty or repeated is none of them: such classes are
    keyed by index (see `label_map_warnings`), as ViRelAy, which never checks the ids, still opens the map."""
    if not isinstance(entries, list):
        return [Problem(file, "", "a JSON list of {index, word_net_id, name} objects", type(entries).__name__)]
    problems: list[Problem] = []
    seen_index: dict[int, int] = {}
    for i, entry in enumerate(entries):
        where = f"[{i}]"
        if not isinstance(entry, dict):
            problems.append(Problem(file, where, "an object with index, word_net_id and name", type(entry).__name__))
            continue
        for key, kind, described in (("index", int, "an integer"), ("name", str, "a string")):
            if key not in entry:
                problems.append(Problem(file, f"{where}.{key}", f"a key '{key}'", "it is missing"))
            elif not isinstance(entry[key], kind) or isinstance(entry[key], bool):
                problems.append(Problem(file, f"{where}.{key}", described, repr(entry[key])))
        if entry.get("word_net_id") is not None and not isinstance(entry["word_net_id"], str):
            problems.append(Problem(file, f"{where}.word_net_id", "a string (or null, or no key, for a class without one)",
                                    repr(entry["word_net_id"])))
        index = entry.get("index")
        if isinstance(index, int) and not isinstance(index, bool):
            if index < 0:
                problems.append(Problem(file, f"{where}.index", "a non-negative class index", str(index)))
            if index in seen_index:
                problems.append(Problem(file, f"{where}.index", f"a unique class index, {index} is also at [{seen_index[index]}]"))
            seen_index.setdefault(index, i)
    if not entries:
        problems.append(Problem(file, "", "at least one class", "an empty list"))
    return problems


def word_net_id(entry: dict) -> str:
    """An entry's WordNet id, "" where it has none (key absent or null)."""
    return entry.get("word_net_id") or ""


def index_keyed(indices: list[int], wnids: list[str]) -> dict[int, str]:
    """Position → why that class is keyed by its index instead of its WordNet id: "missing" (no id), "repeated"
    (another class has the same id) or "clash" (the id is another class's index key, which would name two
    categories)."""
    counts = Counter(w for w in wnids if w)
    why = {n: "missing" if not w else "repeated" for n, w in enumerate(wnids) if not w or counts[w] > 1}
    while True:  # each round keys at least one more class by index, so this ends
        taken = {index_key(indices[n]) for n in why}
        clash = [n for n, w in enumerate(wnids) if n not in why and w in taken]
        if not clash:
            return why
        why.update(dict.fromkeys(clash, "clash"))


def category_keys(indices: list[int], wnids: list[str]) -> list[str]:
    """Each class's category key (see the module docstring); unique, since class indices are."""
    why = index_keyed(indices, wnids)
    return [index_key(i) if n in why else w for n, (i, w) in enumerate(zip(indices, wnids))]


def listed(items: list[str]) -> str:
    return ", ".join(items[:SHOWN]) + (", …" if len(items) > SHOWN else "")


def label_map_warnings(entries: list[dict], file: str, path: str = "") -> list[Problem]:
    """What is assumed about a label map without (unique) WordNet ids: one warning (a `Problem` with level
    "warning") per reason, naming the entries and the category keys their classes get. `path` is where the list sits
    inside `file`. Call on entries free of `label_map_problems`."""
    indices = [e["index"] for e in entries]
    wnids = [word_net_id(e) for e in entries]
    groups: dict[str, list[int]] = {}
    for n, reason in index_keyed(indices, wnids).items():
        if reason == "missing" and entries[n].get("word_net_id") == "":
            reason = "empty"
        groups.setdefault(reason, []).append(n)
    described = {"missing": "no word_net_id (key absent or null)", "empty": "an empty word_net_id",
                 "repeated": "a word_net_id that another class also has", "clash": "a word_net_id that is another class's index key"}
    warnings = []
    for reason, positions in groups.items():
        where = [f"[{n}]" + (f" {wnids[n]!r}" if wnids[n] else "") for n in positions]
        keys = [repr(index_key(indices[n])) for n in positions]
        warnings.append(Problem(
            file, f"{path}[{positions[0]}].word_net_id", "a WordNet id that no other class has",
            f"{described[reason]} in {len(positions)} of {len(entries)} entries: {listed(where)}; assumed: these classes "
            f"are keyed by their zero-padded index, as ViRelAy and CoRelAy name their category groups: {listed(keys)}",
            level="warning"))
    return warnings


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
    """The canonical label map: coordinate `class` (the model's output index) with `word_net_id` ("" where an entry
    has none), `name` and `category` (the category key)."""
    entries = sorted(entries, key=lambda e: e["index"])
    indices = [e["index"] for e in entries]
    wnids = [word_net_id(e) for e in entries]
    return xr.Dataset(
        coords={
            CLASS: np.array(indices, dtype=np.int64),
            "word_net_id": (CLASS, np.array(wnids, dtype=object)),
            "name": (CLASS, np.array([e["name"] for e in entries], dtype=object)),
            "category": (CLASS, np.array(category_keys(indices, wnids), dtype=object)),
        }
    )


def load_label_map(path: str | Path) -> xr.Dataset:
    """Read and check a ViRelAy label map; every problem is reported at once."""
    entries = read_label_map_json(path)
    problems = label_map_problems(entries, str(path))
    if problems:
        raise RelaylabError(problems)
    for warning in label_map_warnings(entries, str(path)):  # type: ignore[arg-type]
        log.info("%s", warning)
    label_map = label_map_from_entries(entries)  # type: ignore[arg-type]
    label_map.attrs["source"] = str(path)
    return label_map


def label_map_entries(label_map: xr.Dataset) -> list[dict]:
    """Back to ViRelAy's JSON form, as read ("" for a class without WordNet id)."""
    return [
        {"index": int(i), "word_net_id": str(w), "name": str(n)}
        for i, w, n in zip(label_map[CLASS].values, label_map["word_net_id"].values, label_map["name"].values)
    ]


def virelay_label_map_entries(label_map: xr.Dataset) -> list[dict]:
    """ViRelAy's JSON form for an exported project: each class's `word_net_id` is its category key. ViRelAy finds a
    category's class name by WordNet id only, so a class keyed by index (no id, or a repeated one) gets its key as id
    and ViRelAy shows the class names of relaylab's categories; classes with a unique id keep it."""
    return [
        {"index": int(i), "word_net_id": str(k), "name": str(n)}
        for i, k, n in zip(label_map[CLASS].values, label_map["category"].values, label_map["name"].values)
    ]


def class_category(label_map: xr.Dataset, cls: int) -> str:
    """The category key of class index `cls` (its zero-padded index when the label map lacks the class)."""
    hit = np.flatnonzero(label_map[CLASS].values == cls)
    return str(label_map["category"].values[hit[0]]) if hit.size else index_key(cls)


def class_by_word_net_id(label_map: xr.Dataset) -> dict[str, int]:
    """WordNet id → class index, the first class for an id that repeats (as ViRelAy looks ids up); no empty ids."""
    found: dict[str, int] = {}
    for w, c in zip(label_map["word_net_id"].values.tolist(), label_map[CLASS].values.tolist()):
        if w:
            found.setdefault(w, c)
    return found


def category_display_name(label_map: xr.Dataset, category: str) -> str:
    """The human-readable class name of an analysis category: the class whose category key it is, else the first
    class with that WordNet id (ViRelAy's look-up), else the class a (zero-padded) index names; else the category."""
    names = label_map["name"].values
    if category:
        for coordinate in ("category", "word_net_id"):
            hit = np.flatnonzero(label_map[coordinate].values == category)
            if hit.size:
                return str(names[hit[0]])
    if category.isascii() and category.isdigit():
        hit = np.flatnonzero(label_map[CLASS].values == int(category))
        if hit.size:
            return str(names[hit[0]])
    return category
