"""Synthetic projects in ViRelAy's on-disk formats, in every layout variant users have.

Tests build each variant from here, benchmarks build million-sample projects, and until the trained demo exists the
quick start converts one of these. Images are class-dependent patterns, so attributions and analyses look plausible.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import yaml


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


def write_array(h5: h5py.File, name: str, values: np.ndarray, as_group: bool, chunk_rows: int | None) -> None:
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
    with h5py.File(folder / "dataset.h5", "w") as h5:
        write_array(h5, "data", encoded(images, v), v.data_as_group, v.chunk_rows)
        write_array(h5, "label", label_array(labels, v), v.labels_as_group, v.chunk_rows)

    attribution = attributions_of(images, labels, v)
    prediction = np.eye(v.n_classes, dtype=np.float32)[labels] * 5 + np.random.default_rng(v.seed + 2).normal(
        size=(v.n_samples, v.n_classes)).astype(np.float32)
    order = np.random.default_rng(v.seed + 3).permutation(v.n_samples) if v.attribution_files > 1 else np.arange(v.n_samples)
    sources = []
    for part, rows in enumerate(np.array_split(order, v.attribution_files)):
        rows = np.sort(rows)
        file = f"attribution-{part}.h5"
        with h5py.File(folder / file, "w") as h5:
            write_array(h5, "attribution", attribution[rows], v.data_as_group, v.chunk_rows)
            h5["prediction"] = prediction[rows]
            write_array(h5, "label", label_array(labels, v)[rows], v.labels_as_group, None)
            if v.attribution_files > 1 or v.attribution_index:
                h5["index"] = rows.astype(np.uint32)
        sources.append(file)

    analysis_sources = write_analysis_files(folder, labels, attribution.reshape(v.n_samples, -1), v)
    project = {
        "project": {
            "name": name, "model": "synthetic-cnn", "label_map": "label-map.json",
            "dataset": {"name": f"{name}-data", "type": "hdf5", "path": "dataset.h5",
                        "input_width": v.width, "input_height": v.height,
                        "down_sampling_method": "none", "up_sampling_method": "none",
                        "label_index_regex": None, "label_word_net_id_regex": None},
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
