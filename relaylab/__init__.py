"""relaylab: dataset-wide explainable AI.

`relaylab.open_project(path)` opens any project (ViRelAy/relaylab YAML, relaylab Zarr store). The stages live in
`relaylab.data`, `relaylab.explain`, `relaylab.analyze` and `relaylab.explore`; heavy libraries (xarray, zarr, Dask,
torch) load when something needs them, not on `import relaylab`.
"""

__version__ = "0.1.0"
__all__ = ["Project", "open_project", "open_projects", "__version__"]


def __getattr__(name: str):
    if name in ("Project", "open_project", "open_projects"):
        from .data import project

        return getattr(project, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
