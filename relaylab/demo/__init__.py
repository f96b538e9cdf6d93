"""The built-in demo: scikit-learn's digits with a planted "Clever Hans" mark, a small CNN that learns it, and every
stage of relaylab run on it (attributions, activations, SpRAy, per-layer maps, a ViRelAy export).

It lives beside the stages, not inside one, because it orchestrates all of them. `build_demo(DIR)` builds it,
`ensure_demo()` builds it once into a cache folder and reuses it (the explorer's default project).
"""

__all__ = ["build_demo", "ensure_demo"]


def __getattr__(name: str):
    if name in __all__:  # torch and the whole pipeline load only when the demo is built or looked up
        from . import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
