"""Analyze: Spectral Relevance Analysis (SpRAy) as scikit-learn estimators, its Dask runner, activation maps, scores.

Every step is an estimator, so the pieces plug into `sklearn.pipeline` and SpRAy takes any scikit-learn clusterer::

    from relaylab.analyze import SpRAy, KNNGraph, Affinity, SpectralEmbedding
    spray = SpRAy(clusterings={"mine": AgglomerativeClustering(4)}).fit(heatmaps)

Names load on first use (scikit-learn and SciPy are not imported by `import relaylab.analyze`).
"""

from importlib import import_module

_EXPORTS = {
    "ChannelReduce": "preprocess", "Pool": "preprocess", "Normalize": "preprocess", "Flatten": "preprocess",
    "KNNGraph": "knn", "Affinity": "graph", "SpectralEmbedding": "spectral",
    "SpRAy": "spray", "SelectEigenvectors": "spray", "Subsampled": "spray", "kmeans": "spray", "hdbscan": "spray",
    "build_spray": "config", "load_config": "config",
    "analyze": "run", "analyze_activations": "activations",
    "score_analysis": "score",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
