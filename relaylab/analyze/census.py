"""Clever-Hans census: rank every category of an analysed dataset by how strongly its relevance splits into separate
strategies, and the samples inside each by how far they sit from the category's main strategy, without being told
where to look.

Per category (its members' heatmaps and its SpRAy result, `relaylab analyze`):

- **Sample score** — robust Mahalanobis distance of each member's relevance map to the category's main strategy.
  Maps are the heatmaps summed over channels, sum-pooled to at most `MAX_SIDE`² pixels and divided by their total
  absolute relevance (so a map says *where* the model looked, not how confident it was), projected on their first
  `N_COMPONENTS` principal components. The centre and covariance are those of the half of the members closest to the
  coordinate-wise median, refined by C-steps (Rousseeuw & Van Driessen 1999, "A fast algorithm for the minimum
  covariance determinant estimator"). Started from the median rather than searched for the smallest determinant, as
  FAST-MCD does: a shortcut makes its samples' maps nearly identical, and a group that tight (30% of a class) has a
  smaller determinant than the real majority and would become the "main strategy" (measured on the poisoning
  benchmark). Any clean majority holds the median, so a minority group of up to about half the category sits far.
- **Split** — the relative eigengap of SpRAy's normalized-Laplacian spectrum (`score.split_score`; the eigengap
  heuristic of von Luxburg 2007 §8.3, SpRAy's own criterion in Lapuschkin et al. 2019): near 1 when the kNN graph of
  the heatmaps falls apart into pieces. It sees large groups; it misses groups smaller than the kNN neighbourhood.
- **Separation** — how far the most separated group of high sample scores sits from the rest: Ashman's D of the two
  sides of the log sample scores, D = √2 |μ₁ − μ₂| / √(σ₁² + σ₂²) (Ashman, Bird & Zepf 1994; D > 2 is a clean
  separation), at the split that maximises it, the upper side holding at least 2 samples and at most half. A shortcut
  used by a few samples gives a small, far upper group; a class's natural variety a continuous tail.
- **Score** — the larger of the two views, each mapped to 0..1 by a logistic curve that gives 0.5 at the highest
  value clean categories reached on the poisoning benchmark (`python -m benchmarks poisoning`): split 0.9 (width
  0.03), separation 5 (width 0.75). Categories are ranked by it; the report flags those above 0.75.

When the spectrum falls apart (split ≥ SPLIT_CORE), the C-steps start from the largest cluster of the spectral
clustering instead of the median: a shortcut held by a third of a class can pull the median towards itself when its
maps are tight and the class's own maps vary (measured: a frame artifact in 30% of a class scored AUROC 0.07 from
the median, as the main strategy), while SpRAy's graph has already cut the two apart. Starting always from the larger
side of SpRAy's k-means (k = 2) clustering was measured on the whole poisoning grid too: it mends the two-class tasks
with a third of a class poisoned (AUROC 0.08 → 0.97) but flagged a clean class in 3 of 10 clean trials (0 with the
median), lowered the worst AUROC at 2% from 0.943 to 0.909 and ranked fewer poisoned classes first (28 vs 33 of 53).

Per cluster of one SpRAy clustering (by default the k-means one with the k the spectrum suggests): its size, median
sample score, **prototype** (mean and median relevance map), its `TYPICAL` most typical members (closest to the
cluster's mean in the score's component space) and an **estimated artifact mask**: the pixels where the cluster's
mean map exceeds the rest of the category's by at least half the largest such excess; `concentration` is the share of
the cluster's relevance inside the mask minus the rest's share there (near 0 for a style variant, up to 1 for a
shortcut that holds all of the cluster's relevance in one spot). Clusters are listed most suspicious first (by
median sample score), at most `MAX_CLUSTERS`.

Large categories: components and the covariance are fitted on `FIT_SAMPLES` members drawn at random, every member is
scored in chunks; medians come from at most `MEDIAN_SAMPLES` members of a cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import xarray as xr

from ..data.store import MEMBER
from .score import split_score

log = logging.getLogger(__name__)

MAX_SIDE = 32
N_COMPONENTS = 10
C_STEPS = 3
TYPICAL = 8
MAX_CLUSTERS = 8
FIT_SAMPLES = 20_000
MEDIAN_SAMPLES = 2_000
SPLIT_MID, SPLIT_WIDTH = 0.9, 0.03  # split of 0.9 scores 0.5, 0.93 0.73 (clean classes reached 0.84-0.95)
SEPARATION_MID, SEPARATION_WIDTH = 5.0, 0.75  # Ashman's D of 5 scores 0.5 (clean classes' tails reached 3.5-5.2)
SPLIT_CORE = 0.9  # a spectrum split at least this strongly: its largest cluster is the main strategy
MASK_FRACTION = 0.5
UNUSED = -2  # cluster id of an unused slot (-1 is HDBSCAN's noise)
MIN_MEMBERS = 5

__all__ = ["ashman_separation", "census_category", "category_score", "cluster_summaries", "relevance_maps",
           "robust_distances", "choose_clustering"]


# ------------------------------------------------------------------------------------------------------ sample scores

def relevance_maps(heatmaps: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """(n, h', w') float32: `heatmaps` (n, [channel,] h, w) summed over channels, sum-pooled by the smallest integer
    factor that brings each side to at most `max_side` (edges cropped to a multiple), each divided by its total absolute
    relevance (an all-zero map stays zero)."""
    x = np.asarray(heatmaps, dtype=np.float32)
    if x.ndim == 4:
        x = x.sum(axis=1)
    elif x.ndim != 3:
        raise ValueError(f"heatmaps must be (n, channel, y, x) or (n, y, x), got shape {x.shape}")
    n, h, w = x.shape
    fy, fx = -(-h // max_side), -(-w // max_side)
    if fy > 1 or fx > 1:
        x = x[:, : h - h % fy, : w - w % fx].reshape(n, h // fy, fy, w // fx, fx).sum(axis=(2, 4))
    total = np.abs(x).sum(axis=(1, 2), keepdims=True)
    return np.divide(x, total, out=np.zeros_like(x), where=total > 0)


def _components(maps: np.ndarray, n_components: int, random_state: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, components (p, d)): principal axes of `maps` (rows flattened), fitted on at most FIT_SAMPLES rows."""
    from sklearn.decomposition import PCA

    flat = maps.reshape(len(maps), -1)
    rows = flat
    if len(flat) > FIT_SAMPLES:
        rows = flat[np.sort(np.random.default_rng(random_state).choice(len(flat), FIT_SAMPLES, replace=False))]
    p = max(1, min(n_components, len(rows) // 5, rows.shape[1]))
    pca = PCA(p, svd_solver="randomized" if rows.shape[1] > 4 * p else "full", random_state=random_state).fit(rows)
    return pca.mean_, pca.components_


def robust_distances(maps: np.ndarray, n_components: int = N_COMPONENTS, steps: int = C_STEPS,
                     random_state: int = 0, core: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(distances (n,), coordinates (n, p)): each map's robust Mahalanobis distance to the category's main strategy
    (see the module's docstring) and its coordinates on the principal components. The C-steps start from the members
    nearest the coordinate-wise median, or from `core` (a boolean mask, e.g. the largest cluster of a spectrum that
    falls apart) when given."""
    if len(maps) < MIN_MEMBERS:
        raise ValueError(f"a census of a category needs at least {MIN_MEMBERS} members, got {len(maps)}")
    mean, axes = _components(maps, n_components, random_state)
    z = np.concatenate([(chunk.reshape(len(chunk), -1) - mean) @ axes.T
                        for chunk in np.array_split(maps, max(1, len(maps) // 50_000))]).astype(np.float64)
    n, p = z.shape
    h = (n + p + 1) // 2
    centre = np.median(z, axis=0)
    scale = 1.4826 * np.median(np.abs(z - centre), axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    d2 = (((z - centre) / scale) ** 2).sum(axis=1)
    if core is not None and np.count_nonzero(core) > p:
        d2 = np.where(np.asarray(core, dtype=bool), 0.0, 1.0 + d2)  # the core first, the rest by their distance
    for _ in range(max(1, steps)):
        core = z[np.argpartition(d2, h - 1)[:h]]
        mu = core.mean(axis=0)
        cov = np.atleast_2d(np.cov(core, rowvar=False))
        cov += np.eye(p) * max(1e-12, 1e-9 * float(np.trace(cov)) / p)  # a flat direction (identical maps) stays finite
        centred = z - mu
        d2 = np.einsum("ij,ij->i", centred @ np.linalg.pinv(cov, hermitian=True), centred)
    return np.sqrt(np.maximum(d2, 0.0)), z


def ashman_separation(scores: np.ndarray) -> tuple[float, float]:
    """(threshold, D): the split of log(scores) into a lower side of at least half the samples and an upper side of at
    least 2 whose Ashman's D is largest, and that D; (inf, 0.0) for fewer than 4 scores or all equal."""
    values = np.log(np.maximum(np.asarray(scores, dtype=np.float64), 1e-12))
    order = np.sort(values)
    n = len(order)
    if n < 4 or order[-1] - order[0] <= 0:
        return float("inf"), 0.0
    s1, s2 = np.cumsum(order), np.cumsum(order ** 2)
    cuts = np.arange(max(1, (n + 1) // 2) - 1, n - 2)  # lower side order[:i+1]
    n1, n2 = cuts + 1.0, n - cuts - 1.0
    m1, m2 = s1[cuts] / n1, (s1[-1] - s1[cuts]) / n2
    v1 = np.maximum(s2[cuts] / n1 - m1 ** 2, 0.0)
    v2 = np.maximum((s2[-1] - s2[cuts]) / n2 - m2 ** 2, 0.0)
    spread = np.sqrt(v1 + v2)
    d = np.where(spread > 0, np.sqrt(2) * (m2 - m1) / np.where(spread > 0, spread, 1.0), 1e6)
    best = int(np.argmax(d))
    i = int(cuts[best])
    return float(np.exp((order[i] + order[i + 1]) / 2)), float(min(d[best], 1e6))


def _logistic(x: float, mid: float, width: float) -> float:
    return float(1.0 / (1.0 + np.exp(-(x - mid) / width)))


def category_score(split: float, separation: float) -> float:
    """The census score in 0..1 from the two views (see the module's docstring): each view mapped through a logistic
    curve that is 0.5 at the highest value clean categories reached on the poisoning benchmark (SPLIT_MID,
    SEPARATION_MID), the larger of the two."""
    return max(_logistic(split, SPLIT_MID, SPLIT_WIDTH), _logistic(separation, SEPARATION_MID, SEPARATION_WIDTH))


# ------------------------------------------------------------------------------------------------------ clusters

def choose_clustering(clusterings: Mapping[str, np.ndarray], split_k: int) -> str | None:
    """The clustering the report shows: the k-means one with the spectrum's k (or the nearest k), else the first."""
    if not clusterings:
        return None
    kmeans = {name: int(name.rsplit("-", 1)[1]) for name in clusterings
              if name.startswith("kmeans-") and name.rsplit("-", 1)[1].isdigit()}
    if kmeans:
        return min(kmeans, key=lambda name: (abs(kmeans[name] - max(split_k, 2)), kmeans[name]))
    return next(iter(clusterings))


def cluster_summaries(maps: np.ndarray, labels: np.ndarray, distances: np.ndarray, coords: np.ndarray,
                      samples: np.ndarray, max_clusters: int = MAX_CLUSTERS, typical: int = TYPICAL,
                      random_state: int = 0) -> dict[str, np.ndarray]:
    """Per cluster of `labels` (at most `max_clusters`, most suspicious first; unused slots have id UNUSED): id, size,
    median score, mean and median map, mask, concentration, the `typical` members closest to its mean (sample indices,
    -1 padded)."""
    shape = maps.shape[1:]
    ids = [c for c in np.unique(labels)]
    medians = {c: float(np.median(distances[labels == c])) for c in ids}
    ids = sorted(ids, key=lambda c: -medians[c])[:max_clusters]
    out = {"cluster_id": np.full(max_clusters, UNUSED, np.int32), "cluster_size": np.zeros(max_clusters, np.int64),
           "cluster_score": np.full(max_clusters, np.nan, np.float32), "concentration": np.full(max_clusters, np.nan, np.float32),
           "typical": np.full((max_clusters, typical), -1, np.int64),
           "prototype_mean": np.zeros((max_clusters, *shape), np.float32), "prototype_median": np.zeros((max_clusters, *shape), np.float32),
           "mask": np.zeros((max_clusters, *shape), bool)}
    total = maps.sum(axis=0, dtype=np.float64)
    rng = np.random.default_rng(random_state)
    for slot, c in enumerate(ids):
        inside = np.flatnonzero(labels == c)
        mean = maps[inside].mean(axis=0, dtype=np.float64)
        some = inside if len(inside) <= MEDIAN_SAMPLES else np.sort(rng.choice(inside, MEDIAN_SAMPLES, replace=False))
        rest = (total - maps[inside].sum(axis=0, dtype=np.float64)) / max(len(maps) - len(inside), 1)
        excess = mean - rest
        mask = (excess > 0) & (excess >= MASK_FRACTION * excess.max()) if excess.max() > 0 else np.zeros(shape, bool)
        own = np.abs(mean).sum()
        share = lambda m: float(np.clip(m, 0, None)[mask].sum() / own) if own > 0 else 0.0  # noqa: E731
        nearest = inside[np.argsort(((coords[inside] - coords[inside].mean(axis=0)) ** 2).sum(axis=1), kind="stable")[:typical]]
        out["cluster_id"][slot] = int(c)
        out["cluster_size"][slot] = len(inside)
        out["cluster_score"][slot] = medians[c]
        out["concentration"][slot] = share(mean) - (share(rest) if len(maps) > len(inside) else 0.0)
        out["typical"][slot, : len(nearest)] = samples[nearest]
        out["prototype_mean"][slot] = mean
        out["prototype_median"][slot] = np.median(maps[some], axis=0)
        out["mask"][slot] = mask
    return out


# ------------------------------------------------------------------------------------------------------ category

def census_category(heatmaps: np.ndarray, samples: np.ndarray, eigenvalues: np.ndarray | None,
                    clusterings: Mapping[str, np.ndarray], clustering: str | None = None, *,
                    random_state: int = 0) -> xr.DataTree:
    """One category's census as a tree (one node; `member` variables in the order of `samples`): sample scores,
    the category's scores (0-d variables) and the chosen clustering's cluster summaries (`slot` dimension)."""
    maps = relevance_maps(heatmaps)
    k, split = split_score(eigenvalues) if eigenvalues is not None and len(eigenvalues) >= 3 else (0, 0.0)
    spectral = choose_clustering(clusterings, k)
    name = clustering if clustering is not None else spectral
    if name is not None and name not in clusterings:
        raise KeyError(name)
    core = None
    if split >= SPLIT_CORE and spectral is not None:  # the graph falls apart: its largest piece is the main strategy
        found = np.asarray(clusterings[spectral])
        values, counts = np.unique(found[found >= 0], return_counts=True)
        if len(values):
            core = found == values[np.argmax(counts)]
    distances, coords = robust_distances(maps, random_state=random_state, core=core)
    threshold, separation = ashman_separation(distances)
    labels = np.asarray(clusterings[name]) if name is not None else (distances > threshold).astype(np.int32)
    clusters = cluster_summaries(maps, labels, distances, coords, np.asarray(samples))
    dims = {"cluster_id": ("slot",), "cluster_size": ("slot",), "cluster_score": ("slot",), "concentration": ("slot",),
            "typical": ("slot", "rank"), "prototype_mean": ("slot", "y", "x"), "prototype_median": ("slot", "y", "x"),
            "mask": ("slot", "y", "x")}
    data = {key: (dims[key], value) for key, value in clusters.items()}
    data.update({
        "index": ((MEMBER,), np.asarray(samples, dtype=np.int64)),
        "sample_score": ((MEMBER,), distances.astype(np.float32)),
        "cluster": ((MEMBER,), labels.astype(np.int32)),
        "score": ((), np.float64(category_score(split, separation))),
        "split": ((), np.float64(split)),
        "split_k": ((), np.int64(k)),
        "separation": ((), np.float64(separation)),
        "threshold": ((), np.float64(threshold)),
    })
    return xr.DataTree(xr.Dataset(data, attrs={"clustering": name or "census-threshold"}))
