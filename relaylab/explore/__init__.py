"""Explore: the Panel/HoloViews/Datashader explorer (`panel serve apps/explorer.py`, `relaylab serve`), and
`Explorer(project)`, the same component for a Jupyter notebook cell."""


def __getattr__(name: str):
    if name == "Explorer":  # Panel and HoloViews load only when the explorer is asked for
        from .app import Explorer

        return Explorer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Explorer"]
