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

