"""Synthetic projects in ViRelAy's on-disk formats, in every layout variant users have.

Tests build each variant from here, benchmarks build million-sample projects, and until the trained demo exists the
quick start converts one of these. Images are class-dependent patterns, so attributions and analyses look plausible.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np
import yaml
from PIL import Image


@dataclass
class Variant:
    """Which of ViRelAy's layout choices to use."""

    n_samples: int = 60
    n_classes: int = 3
    channels: int = 3
    height: int = 16
    width: int = 16
    layout: str = "chw"                 # chw | hwc
    dtype: str = "uint8"                # uint8 | float01 | float11
    data_as_group: bool = False         # per-sample arrays in a group instead of one array
    multi_label: bool = False           # n-hot boolean labels
    labels_as_group: bool = False
    attribution_files: int = 1          # > 1 splits the attributions, each file with an `index`
    attribution_index: bool = False     # give a single attribution file an `index` too
    analysis_files: int = 1             # > 1 spreads the categories over several sources of one method
    chunk_rows: int | None = 16         # HDF5 chunk rows (None: contiguous)
    seed: int = 0
    # > 0 with data_as_group: samples (and their attributions) of different heights and widths, up to this many pixels
    # smaller or larger than height x width, which is what ViRelAy's per-sample groups exist for
    size_jitter: int = 0
    up_sampling: str = "none"           # the project file's sampling methods
    down_sampling: str = "none"
    declare_size: bool = True           # whether the project file gives input_width and input_height


def images_and_labels(v: Variant) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W) float images in [0, 1] with a class-specific bright square, and integer labels."""
    rng = np.random.default_rng(v.seed)
    labels = np.arange(v.n_samples) % v.n_classes
    images = rng.random((v.n_samples, v.channels, v.height, v.width), dtype=np.float32) * 0.3
    size = max(2, v.height // 4)
    for c in range(v.n_classes):
        y = (c * size) % max(1, v.height - size)
        images[labels == c, :, y:y + size, :size] += 0.7
    return np.clip(images, 0, 1), labels


def encoded(images: np.ndarray, v: Variant) -> np.ndarray:
    if v.dtype == "uint8":
        out = (images * 255).round().astype(np.uint8)
    elif v.dtype == "float11":
        out = images * 2 - 1
    else:
        out = images
    return out.transpose(0, 2, 3, 1) if v.layout == "hwc" else out


def jittered(images: np.ndarray, v: Variant) -> list[np.ndarray]:
    """Each (C, H, W) image grown or cut at its bottom and right edge by up to `v.size_jitter` pixels (new pixels are
    dim noise), so that the samples have several different heights and widths, some smaller and some larger."""
    rng = np.random.default_rng(v.seed + 5)
    span = 2 * v.size_jitter + 1
    out = []
    for k, image in enumerate(images):
        height, width = v.height + k % span - v.size_jitter, v.width + (3 * k + 1) % span - v.size_jitter
        grown = rng.random((v.channels, height, width), dtype=np.float32) * 0.3
        h, w = min(height, v.height), min(width, v.width)
        grown[:, :h, :w] = image[:, :h, :w]
        out.append(grown)
    return out


def write_array(h5: h5py.File, name: str, values: np.ndarray | list[np.ndarray], as_group: bool,
                chunk_rows: int | None) -> None:
    if as_group:
        group = h5.create_group(name)
        width = len(str(len(values)))
        for i, row in enumerate(values):
            group[str(i).zfill(width)] = row
    else:
        chunks = (min(chunk_rows, len(values)),) + values.shape[1:] if chunk_rows else None
        h5.create_dataset(name, data=values, chunks=chunks)


def label_array(labels: np.ndarray, v: Variant) -> np.ndarray:
    if not v.multi_label:
        return labels.astype(np.int64)
    hot = np.zeros((len(labels), v.n_classes), dtype=bool)
    hot[np.arange(len(labels)), labels] = True
    hot[np.arange(0, len(labels), 5), (labels[::5] + 1) % v.n_classes] = True  # some samples carry two labels
    return hot


def label_map(v: Variant) -> list[dict]:
    return [{"index": i, "word_net_id": f"n{i:08d}", "name": f"class {i}"} for i in range(v.n_classes)]


def attributions_of(images: np.ndarray, labels: np.ndarray, v: Variant) -> np.ndarray:
    """Relevance on the class square, signed noise elsewhere: float32, same layout as the inputs."""
    rng = np.random.default_rng(v.seed + 1)
    relevance = (images - 0.3) * (rng.random(images.shape, dtype=np.float32) + 0.5)
    relevance = relevance.astype(np.float32)
    return relevance.transpose(0, 2, 3, 1) if v.layout == "hwc" else relevance


def write_virelay_project(folder: str | Path, v: Variant | None = None, name: str = "synthetic") -> Path:
    """Write label map, dataset, attribution and analysis files and the project YAML; returns the YAML path."""
    v = v or Variant()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = images_and_labels(v)
    (folder / "label-map.json").write_text(json.dumps(label_map(v), indent=2))
    samples = jittered(images, v) if v.size_jitter else None
    with h5py.File(folder / "dataset.h5", "w") as h5:
        data = [encoded(x[None], v)[0] for x in samples] if samples else encoded(images, v)
        write_array(h5, "data", data, v.data_as_group, v.chunk_rows)
        write_array(h5, "label", label_array(labels, v), v.labels_as_group, v.chunk_rows)

    if samples:  # each attribution the shape of its sample, as ViRelAy's per-sample groups have them
        attribution = [attributions_of(x[None], labels[k:k + 1], replace(v, seed=v.seed + k))[0] for k, x in enumerate(samples)]
    else:
        attribution = attributions_of(images, labels, v)
    prediction = np.eye(v.n_classes, dtype=np.float32)[labels] * 5 + np.random.default_rng(v.seed + 2).normal(
        size=(v.n_samples, v.n_classes)).astype(np.float32)
    order = np.random.default_rng(v.seed + 3).permutation(v.n_samples) if v.attribution_files > 1 else np.arange(v.n_samples)
    sources = []
    for part, rows in enumerate(np.array_split(order, v.attribution_files)):
        rows = np.sort(rows)
        file = f"attribution-{part}.h5"
        with h5py.File(folder / file, "w") as h5:
            write_array(h5, "attribution", [attribution[r] for r in rows] if samples else attribution[rows],
                        v.data_as_group, v.chunk_rows)
            h5["prediction"] = prediction[rows]
            write_array(h5, "label", label_array(labels, v)[rows], v.labels_as_group, None)
            if v.attribution_files > 1 or v.attribution_index:
                h5["index"] = rows.astype(np.uint32)
        sources.append(file)

    features = np.zeros((v.n_samples, 1)) if samples else attribution.reshape(v.n_samples, -1)
    analysis_sources = write_analysis_files(folder, labels, features, v)
    dataset = {"name": f"{name}-data", "type": "hdf5", "path": "dataset.h5",
               "input_width": v.width, "input_height": v.height,
               "down_sampling_method": v.down_sampling, "up_sampling_method": v.up_sampling,
               "label_index_regex": None, "label_word_net_id_regex": None}
    if not v.declare_size:
        del dataset["input_width"], dataset["input_height"]
    project = {
        "project": {
            "name": name, "model": "synthetic-cnn", "label_map": "label-map.json",
            "dataset": dataset,
            "attributions": {"attribution_method": "lrp_epsilon_plus", "attribution_strategy": "true_label",
                             "sources": sources},
            "analyses": [{"analysis_method": "spectral_analysis", "sources": analysis_sources}],
        }
    }
    path = folder / "project.yaml"
    path.write_text(yaml.safe_dump(project, sort_keys=False))
    return path


def write_analysis_files(folder: Path, labels: np.ndarray, features: np.ndarray, v: Variant) -> list[str]:
    """One category per class, named by WordNet id; the last category deliberately lacks `tsne` (ViRelAy assumes
    every category has the same embeddings; relaylab must not)."""
    rng = np.random.default_rng(v.seed + 4)
    categories = [(f"n{c:08d}", np.flatnonzero(labels == c)) for c in range(v.n_classes)]
    files = []
    for part, chunk in enumerate(np.array_split(np.arange(len(categories)), v.analysis_files)):
        file = f"analysis-{part}.h5"
        with h5py.File(folder / file, "w") as h5:
            for c in chunk:
                wnid, members = categories[c]
                group = h5.create_group(wnid)
                group["index"] = members.astype(np.uint32)
                n = len(members)
                spectral = group.create_dataset("embedding/spectral", data=rng.normal(size=(n, 8)).astype(np.float32))
                spectral.attrs["eigenvalue"] = np.linspace(0, 0.5, 8, dtype=np.float32)
                if c != len(categories) - 1:
                    tsne = group.create_dataset("embedding/tsne", data=rng.normal(size=(n, 2)).astype(np.float32))
                    tsne.attrs["embedding"] = "spectral"
                group["cluster/kmeans-02"] = (np.arange(n) % 2).astype(np.int64)
                group["cluster/hdbscan"] = np.where(np.arange(n) % 7 == 0, -1, np.arange(n) % 3).astype(np.int64)
        files.append(file)
    return files


WORD_NET_ID_REGEX = r".*/(n\d{8})/[^/]+$"
LABEL_INDEX_REGEX = r".*/(\d+)/[^/]+$"


def write_image_directory_project(folder: str | Path, sizes: list[tuple[int, int]], *, input_width: int,
                                  input_height: int, up_sampling_method: str = "fill_zeros",
                                  down_sampling_method: str = "center_crop", label_by: str = "word_net_id",
                                  n_classes: int = 3, name: str = "images", seed: int = 0) -> Path:
    """A ViRelAy `image_directory` project as users have them; returns the YAML path.

    One PNG image per entry of `sizes` ((width, height), random pixels), `images/<class>/img<k>.png`, in one folder
    per class named by WordNet id (`label_by="word_net_id"`) or by class index (`"index"`), labelled by the matching
    regex; a label map; an attribution file (input-sized float32 attributions, predictions, labels) and an analysis
    file, whose rows follow ViRelAy's sample order: the sorted image paths, not the order they were written in.
    """
    if label_by not in ("word_net_id", "index"):
        raise ValueError(f"label_by must be 'word_net_id' or 'index', not {label_by!r}")
    v = Variant(n_samples=len(sizes), n_classes=n_classes, height=input_height, width=input_width, seed=seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = label_map(v)
    (folder / "label-map.json").write_text(json.dumps(entries, indent=2))
    rng = np.random.default_rng(seed)
    written = []
    for k, (width, height) in enumerate(sizes):
        label = (2 * k + 1) % n_classes  # classes not in the order the folders sort
        sub = entries[label]["word_net_id"] if label_by == "word_net_id" else str(label)
        path = folder / "images" / sub / f"img{k:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        written.append((str(path), label))
    labels = np.array([label for _, label in sorted(written)], dtype=np.int64)
    n = len(labels)
    with h5py.File(folder / "attribution.h5", "w") as h5:
        h5["attribution"] = rng.normal(size=(n, 3, input_height, input_width)).astype(np.float32)
        h5["prediction"] = (np.eye(n_classes, dtype=np.float32)[labels] * 5
                            + rng.normal(size=(n, n_classes)).astype(np.float32))
        h5["label"] = labels
    dataset = {"name": f"{name}-data", "type": "image_directory", "path": "images",
               "input_width": input_width, "input_height": input_height,
               "down_sampling_method": down_sampling_method, "up_sampling_method": up_sampling_method,
               "label_index_regex": LABEL_INDEX_REGEX if label_by == "index" else None,
               "label_word_net_id_regex": WORD_NET_ID_REGEX if label_by == "word_net_id" else None}
    project = {"project": {
        "name": name, "model": "synthetic-cnn", "label_map": "label-map.json", "dataset": dataset,
        "attributions": {"attribution_method": "smoothgrad", "attribution_strategy": "true_label",
                         "sources": ["attribution.h5"]},
        "analyses": [{"analysis_method": "spectral_analysis",
                      "sources": write_analysis_files(folder, labels, np.zeros((n, 1)), v)}],
    }}
    path = folder / "project.yaml"
    path.write_text(yaml.safe_dump(project, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------ any point of the format space

ODD_NAMES = ("Prüfung-α 1", "dog - ψ", "naïve set-2", "日本 語", "a b-c")


@dataclass
class FormatPoint:
    """One point of the whole space of ViRelAy project files, for property-based tests (tests/test_generated_projects.py
    draws them) and the mutation fuzzer. Unlike `Variant`, every choice a user's files may make is a field, and the
    values are random, so a reader that confuses axes, rows or files is found out. Keep them tiny."""

    n_samples: int = 5
    n_classes: int = 3
    height: int = 5
    width: int = 6
    layout: str = "chw"                 # chw | hwc | hw (greyscale without a channel axis)
    channels: int = 3                   # chw and hwc: 1, 3 or 4
    dtype: str = "uint8"                # uint8 | float16 | float32 | float64
    signed: bool = False                # floats in [-1, 1] (else [0, 1])
    storage: str = "contiguous"         # `data`: contiguous | chunked | compressed | group (per-sample arrays)
    label_storage: str = "contiguous"   # `label`, the same choices
    label_dtype: str = "int64"          # single-label integer dtype
    multi_label: bool = False           # (N, classes) booleans
    attribution_files: int = 1          # 0: no attributions block
    attribution_index: bool = False     # an `index` in a single attribution file too (split ones always have one)
    attribution_coverage: float = 1.0   # the share of samples with an attribution (at least one)
    attribution_channels: int = 0       # 0: like the inputs; 1: one channel
    attribution_dtype: str = "float32"
    attribution_storage: str = "contiguous"
    predictions: bool = True
    analysis_files: tuple[int, ...] = (1,)  # files per analysis method (); no analyses block
    overlapping: bool = False           # a second file of a method repeats categories with other embeddings
    category_names: str = "wnid"        # wnid | index (zero-padded) | odd (with '-', spaces and non-ASCII)
    declare_size: bool = True           # input_width, input_height
    declare_sampling: bool = True       # up_sampling_method, down_sampling_method
    declare_regexes: bool = True        # label_index_regex, label_word_net_id_regex (null)
    odd_names: bool = False             # project, dataset, file, folder and method names with '-', spaces, non-ASCII
    member_keys: str = "padded"         # group members: padded (sorted = written order) | shuffled (sorted order differs)
    seed: int = 0


def _point_name(p: FormatPoint, plain: str, k: int = 0) -> str:
    return f"{ODD_NAMES[(p.seed + k) % len(ODD_NAMES)]} {plain}" if p.odd_names else plain


def _point_values(rng: np.random.Generator, shape: tuple, dtype: str, signed: bool) -> np.ndarray:
    if dtype == "uint8":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    values = rng.random(shape)
    return (values * 2 - 1 if signed else values).astype(dtype)


def _point_array(h5: h5py.File, name: str, values: np.ndarray, storage: str, p: FormatPoint,
                 rng: np.random.Generator) -> None:
    """`values` (one row per sample) stored as `storage` says; group members are keyed so that member k in sorted
    order is row k, written in random order."""
    n = len(values)
    if storage == "group":
        if p.member_keys == "shuffled":  # numbers of 1 to 3 digits: sorted order is not numeric order ("s10" < "s2")
            numbers = np.concatenate([np.arange(1, 10), np.arange(10, 100, 7), np.arange(100, 1000, 37)])
            keys = sorted(f"s{k}" for k in rng.choice(numbers, size=n, replace=False))
        else:
            keys = [str(k).zfill(len(str(n))) for k in range(n)]
        group = h5.create_group(name)
        for k in rng.permutation(n):
            group[keys[k]] = values[k]
    elif storage == "chunked":
        rows = int(rng.integers(1, n + 1))
        chunks = (rows,) + tuple(int(rng.integers(1, s + 1)) for s in values.shape[1:])
        h5.create_dataset(name, data=values, chunks=chunks)
    elif storage == "compressed":
        options = [dict(compression="gzip", compression_opts=4), dict(compression="lzf"),
                   dict(compression="gzip", shuffle=True), dict(compression="lzf", fletcher32=True)]
        h5.create_dataset(name, data=values, **options[int(rng.integers(len(options)))])
    else:
        h5.create_dataset(name, data=values)


def _point_layout(values: np.ndarray, layout: str) -> np.ndarray:
    """(N, C, H, W) values in the file's layout."""
    if layout == "hwc":
        return values.transpose(0, 2, 3, 1)
    if layout == "hw":
        return values[:, 0]
    return values


def write_format_point(folder: str | Path, p: FormatPoint) -> Path:
    """Write the ViRelAy project of point `p` into `folder` (which may exist); returns the YAML path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(p.seed)
    n, channels = p.n_samples, 1 if p.layout == "hw" else p.channels
    sub = _point_name(p, "files")
    (folder / sub).mkdir(exist_ok=True)

    entries = [{"index": i, "word_net_id": f"n{i:08d}", "name": _point_name(p, f"class {i}", i)} for i in range(p.n_classes)]
    label_map_file = f"{sub}/{_point_name(p, 'label-map')}.json"
    (folder / label_map_file).write_text(json.dumps([entries[i] for i in rng.permutation(p.n_classes)], ensure_ascii=False),
                                         encoding="utf-8")
    images = _point_values(rng, (n, channels, p.height, p.width), p.dtype, p.signed)
    if p.multi_label:
        labels = rng.random((n, p.n_classes)) < 0.4
        labels[np.arange(n), rng.integers(0, p.n_classes, n)] = True
    else:
        labels = rng.integers(0, p.n_classes, n).astype(p.label_dtype)
    dataset_file = f"{sub}/{_point_name(p, 'data set')}.h5"
    with h5py.File(folder / dataset_file, "w") as h5:
        _point_array(h5, "data", _point_layout(images, p.layout), p.storage, p, rng)
        _point_array(h5, "label", labels, p.label_storage, p, rng)

    dataset: dict = {"name": _point_name(p, "dataset"), "type": "hdf5", "path": dataset_file}
    if p.declare_size:
        dataset.update(input_width=p.width, input_height=p.height)
    if p.declare_sampling:
        dataset.update(down_sampling_method="none", up_sampling_method="none")
    if p.declare_regexes:
        dataset.update(label_index_regex=None, label_word_net_id_regex=None)
    spec: dict = {"name": _point_name(p, "project"), "model": _point_name(p, "model"), "label_map": label_map_file,
                  "dataset": dataset}

    attributed = np.arange(0)
    if p.attribution_files:
        count = max(p.attribution_files, int(round(p.attribution_coverage * n)))
        attributed = rng.permutation(n)[:count]
        a_channels = p.attribution_channels or channels
        relevance = _point_values(rng, (n, a_channels, p.height, p.width), p.attribution_dtype, True)
        prediction = rng.normal(size=(n, p.n_classes)).astype(np.float32)
        sources = []
        for part, rows in enumerate(np.array_split(attributed, p.attribution_files)):
            file = f"{sub}/{_point_name(p, f'attribution-{part}', part)}.h5"
            indexed = p.attribution_files > 1 or p.attribution_index or count < n
            rows = rows if indexed else np.sort(rows)
            with h5py.File(folder / file, "w") as h5:
                _point_array(h5, "attribution", _point_layout(relevance[rows], p.layout), p.attribution_storage, p, rng)
                _point_array(h5, "label", labels[rows], p.label_storage, p, rng)
                if p.predictions:
                    h5["prediction"] = prediction[rows]
                if indexed:
                    h5["index"] = rows.astype(np.uint32)
            sources.append(file)
        spec["attributions"] = {"attribution_method": _point_name(p, "lrp-epsilon"), "attribution_strategy": "true_label",
                                "sources": sources}

    analyses = []
    for m, files in enumerate(p.analysis_files if len(attributed) else ()):
        method = _point_name(p, f"spectral-analysis {m}", m)
        analyses.append({"analysis_method": method, "sources": _point_analysis(folder, sub, p, rng, m, files, attributed, labels)})
    if analyses:
        spec["analyses"] = analyses
    path = folder / f"{_point_name(p, 'project')}.yaml"
    path.write_text(yaml.safe_dump({"project": spec}, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def _point_analysis(folder: Path, sub: str, p: FormatPoint, rng: np.random.Generator, m: int, files: int,
                    attributed: np.ndarray, labels: np.ndarray) -> list[str]:
    """The files of analysis method `m`: one category per class with attributed members, spread over `files`;
    with `overlapping`, the second file repeats the first file's categories (same index) with other embeddings."""
    categories = []
    for c in range(p.n_classes):
        members = attributed[labels[attributed, c]] if p.multi_label else attributed[labels[attributed] == c]
        if len(members):
            name = {"wnid": f"n{c:08d}", "index": f"{c:08d}"}.get(p.category_names, f"{ODD_NAMES[c % len(ODD_NAMES)]}-{c}")
            categories.append((name, rng.permutation(members)))
    parts = [list(chunk) for chunk in np.array_split(np.arange(len(categories)), min(files, len(categories)))]
    if p.overlapping and len(parts) > 1:
        parts[1] = sorted(set(parts[1]) | set(parts[0]))
    sources = []
    for part, chunk in enumerate(parts):
        file = f"{sub}/{_point_name(p, f'analysis-{m}-{part}', part)}.h5"
        with h5py.File(folder / file, "w") as h5:
            for c in chunk:
                name, members = categories[c]
                group = h5.create_group(name)
                group.create_dataset("index", data=members.astype(rng.choice(["uint32", "int64"])))
                k = len(members)
                emb = "spectral" if part == 0 else f"umap-{part}"
                d = int(rng.integers(1, 5))
                embedding = group.create_dataset(f"embedding/{emb}", data=rng.normal(size=(k, d)).astype(np.float32))
                if rng.random() < 0.5:
                    embedding.attrs["eigenvalue"] = np.sort(rng.random(d)).astype(np.float32)
                if rng.random() < 0.5:
                    tsne = group.create_dataset(f"embedding/tsne{'' if part == 0 else part}", data=rng.normal(size=(k, 2)).astype(np.float32))
                    tsne.attrs["embedding"] = emb
                clusters = group.create_dataset(f"cluster/{'kmeans-02' if part == 0 else f'dbscan-eps=0.{part}'}",
                                                data=rng.integers(-1 if part else 0, 2, k).astype(rng.choice(["int32", "int64"])))
                clusters.attrs["k"] = 2
        sources.append(file)
    return sources
