"""The array backend of the analysis steps: NumPy/SciPy on "cpu", CuPy/cupyx on "cuda".

The kNN search, the Laplacian and the eigensolver are written once against the namespace these functions return
(`xp.argpartition`, `xsp.csr_matrix`, `linalg.eigsh`, ...), so CPU tests exercise the same code the GPU runs.
CuPy is imported only when a step asks for "cuda", so the CPU install never needs it.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

DEVICES = ("cpu", "cuda")


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    return device


def _cupy():
    try:
        import cupy
    except ImportError as error:  # also raised by CuPy when its CUDA libraries are missing
        raise RuntimeError(f"device='cuda' needs the package cupy, which is not importable ({error}); "
                           "install it with the relaylab[gpu] extra: pip install 'relaylab[gpu]'") from error
    return cupy


def array_namespace(device: str = "cpu"):
    """numpy for "cpu", cupy for "cuda"."""
    return np if check_device(device) == "cpu" else _cupy()


def sparse_namespace(device: str = "cpu"):
    """scipy.sparse for "cpu", cupyx.scipy.sparse for "cuda"."""
    if check_device(device) == "cpu":
        return scipy.sparse
    _cupy()
    import cupyx.scipy.sparse

    return cupyx.scipy.sparse


def linalg_namespace(device: str = "cpu"):
    """scipy.sparse.linalg for "cpu", cupyx.scipy.sparse.linalg for "cuda" (eigsh, lobpcg)."""
    if check_device(device) == "cpu":
        import scipy.sparse.linalg

        return scipy.sparse.linalg
    _cupy()
    import cupyx.scipy.sparse.linalg

    return cupyx.scipy.sparse.linalg


def to_device(x, device: str = "cpu"):
    """`x` (dense or SciPy/cupyx sparse) as an array of `device`; no copy when it is already there."""
    if check_device(device) == "cpu":
        return to_numpy(x)
    cupy = _cupy()
    if scipy.sparse.issparse(x):
        import cupyx.scipy.sparse

        return cupyx.scipy.sparse.csr_matrix(x.tocsr())
    return cupy.asarray(x)


def to_numpy(x):
    """`x` as a NumPy array (or SciPy sparse matrix), copying it from the GPU when it is there."""
    if isinstance(x, np.ndarray) or scipy.sparse.issparse(x):
        return x
    if hasattr(x, "get") and type(x).__module__.startswith(("cupy", "cupyx")):
        return x.get()  # cupy.ndarray.get() -> numpy; cupyx sparse .get() -> scipy.sparse
    return np.asarray(x)
