"""SpRAy configuration: a YAML mapping turned into a `SpRAy` estimator.

The defaults are CoRelAy's SpRAy defaults (10 neighbours, binary kNN affinity, symmetric normalised Laplacian, 32
eigenvectors) with relaylab's default clusterings (k-means for k = 2..5 on k eigenvectors, HDBSCAN).
`examples/spray.yaml` documents every key. Unknown keys are errors that name the key and the known ones.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import yaml
from sklearn.cluster import DBSCAN, AgglomerativeClustering
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.random_projection import GaussianRandomProjection

from ..compute import check_device
from ..errors import RelaylabError
from .graph import Affinity
from .preprocess import ChannelReduce, Flatten, Normalize, Pool
from .spectral import SpectralEmbedding
from .spray import SelectEigenvectors, SpRAy, hdbscan, kmeans

DEFAULTS: dict = {
    "attribution": None,
    "grouping": "true_label",
    "preprocessing": [],
    "knn": {"n_neighbors": 10, "method": "auto"},
    "affinity": {"kernel": "binary"},
    "spectral": {"n_components": 32, "laplacian": "symmetric", "solver": "eigsh"},
    "clusterings": {"kmeans": {"k": [2, 3, 4, 5]}, "hdbscan": {"min_cluster_size": 10, "eigenvectors": 8}},
    "embeddings": {},
    "random_state": 0,
    "device": "cpu",
}
GROUPINGS = ("true_label", "predicted_label", "all")


def _tsne(random_state, **kwargs):
    from openTSNE.sklearn import TSNE

    return TSNE(random_state=random_state, n_jobs=1, **kwargs)


def _umap(random_state, **kwargs):
    from umap import UMAP

    # a fixed seed makes UMAP single-threaded, which it announces on every fit; relaylab seeds it on purpose
    warnings.filterwarnings("ignore", message=r"n_jobs value \d+ overridden to 1 by setting random_state", category=UserWarning)

    return UMAP(random_state=random_state, **kwargs)


PREPROCESSING = {
    "channel_reduce": lambda rs, method="sum": ChannelReduce(method),
    "pool": lambda rs, size=(8, 8), reduce="sum": Pool(tuple(size), reduce),
    "normalize": lambda rs, norm="sum": Normalize(norm),
    "flatten": lambda rs: Flatten(),
    "pca": lambda rs, **kw: make_pipeline(Flatten(), PCA(random_state=rs, **kw)),
    "random_projection": lambda rs, **kw: make_pipeline(Flatten(), GaussianRandomProjection(random_state=rs, **kw)),
}
EMBEDDINGS = {
    "tsne": _tsne,
    "umap": _umap,
    "pca": lambda rs, n_components=2: PCA(n_components, random_state=rs),
}


def _clusterings(spec: dict, rs, where: str) -> dict:
    out = {}
    for kind, params in spec.items():
        params = dict(params or {})
        if kind in ("kmeans", "agglomerative"):
            ks = params.pop("k", [2])
            for k in [ks] if isinstance(ks, int) else ks:
                if kind == "kmeans":
                    out[f"kmeans-{k:02d}"] = kmeans(k, params.get("eigenvectors"), random_state=rs, n_init=params.get("n_init", 10))
                else:
                    out[f"agglomerative-{k:02d}"] = Pipeline([("select", SelectEigenvectors(params.get("eigenvectors") or k)),
                                                              ("agglomerative", AgglomerativeClustering(k))])
        elif kind == "hdbscan":
            out["hdbscan"] = hdbscan(**{"random_state": rs, **params})
        elif kind == "dbscan":
            eps = params.get("eps", 0.3)
            out[f"dbscan-eps={eps}"] = Pipeline([("select", SelectEigenvectors(params.get("eigenvectors", 8))),
                                                 ("dbscan", DBSCAN(eps=eps, min_samples=params.get("min_samples", 5)))])
        else:
            raise RelaylabError.at(where, f"clusterings.{kind}", "one of kmeans, hdbscan, dbscan, agglomerative", repr(kind))
    return out


def load_config(path: str | Path | None) -> dict:
    """DEFAULTS updated by the file's top-level keys; the file's sections replace the defaults' sections."""
    config = copy.deepcopy(DEFAULTS)
    if path is None:
        return config
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise RelaylabError.at(path, "", "an existing SpRAy configuration YAML file", "no such file") from None
    except yaml.YAMLError as error:
        raise RelaylabError.at(path, "", "valid YAML", str(error)) from None
    if not isinstance(data, dict):
        raise RelaylabError.at(path, "", "a mapping of configuration keys", type(data).__name__)
    unknown = set(data) - set(DEFAULTS)
    if unknown:
        raise RelaylabError.at(path, sorted(unknown)[0], f"one of {', '.join(DEFAULTS)}", "an unknown key")
    config.update(data)
    config["source"] = str(path)
    return config


def build_spray(config: dict) -> SpRAy:
    """The configured estimator; raises a RelaylabError naming any unknown step or parameter."""
    where = config.get("source", "configuration")
    rs = config["random_state"]
    if config["grouping"] not in GROUPINGS:
        raise RelaylabError.at(where, "grouping", f"one of {', '.join(GROUPINGS)}", repr(config["grouping"]))
    try:
        steps = []
        for i, step in enumerate(config["preprocessing"] or []):
            name, params = (step, {}) if isinstance(step, str) else next(iter(step.items()))
            if name not in PREPROCESSING:
                raise RelaylabError.at(where, f"preprocessing[{i}]", f"one of {', '.join(PREPROCESSING)}", repr(name))
            params = params if isinstance(params, dict) else {"method" if name == "channel_reduce" else "norm": params}
            steps.append(PREPROCESSING[name](rs, **params))
        steps.append(Flatten())
        embeddings = {}
        for name, params in (config["embeddings"] or {}).items():
            if name not in EMBEDDINGS:
                raise RelaylabError.at(where, f"embeddings.{name}", f"one of {', '.join(EMBEDDINGS)}", repr(name))
            embeddings[name] = EMBEDDINGS[name](rs, **(params or {}))
        from .knn import KNNGraph

        device = check_device(config.get("device", "cpu"), where)  # the kNN search, Laplacian and eigensolver run there; the rest on the CPU
        return SpRAy(preprocessing=make_pipeline(*steps), knn=KNNGraph(random_state=rs, **{"device": device, **config["knn"]}),
                     affinity=Affinity(**config["affinity"]),
                     spectral=SpectralEmbedding(random_state=rs, **{"device": device, **config["spectral"]}),
                     clusterings=_clusterings(config["clusterings"] or {}, rs, where), embeddings=embeddings)
    except TypeError as error:  # an unknown parameter name
        raise RelaylabError.at(where, "", "parameters the steps know", str(error)) from None


def config_fingerprint(config: dict) -> str:
    """What a resumed run must match."""
    return json.dumps({k: v for k, v in config.items() if k != "source"}, sort_keys=True, default=str)
